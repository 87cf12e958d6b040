//! Whether the store can hold empty `dir/` marker objects, by setting or by a probe at
//! start.
//!
//! Some stores that speak S3 keep objects as files (`rclone serve s3` over a local
//! folder): an empty `dir/` marker becomes a *file* named `dir`, after which nothing can
//! be stored under `dir/`. On such a store mkdir must write no marker; the server keeps
//! empty directories in memory instead ([`super::empty_dirs`]).
//!
//! The probe writes a marker `<prefix>.s3sftp-probe-<random>/` and a key under it, under
//! a prefix the gateway may write (the first user's), then removes both. The random name
//! never collides with user data, and a least-privilege policy (`s3sftp policy`) allows
//! the writes there.

use bytes::Bytes;

use super::object_settings::ObjectSettings;
use super::s3::{ObjectOptions, S3};
use super::DIRECTORY_CONTENT_TYPE;

/// `--s3-dir-markers`: whether mkdir writes `dir/` marker objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DirMarkers {
    /// Probe the store at start.
    #[default]
    Auto,
    /// Write markers (S3, MinIO, Garage, Ceph, moto).
    On,
    /// Write none; keep empty directories in memory until a file is written under them.
    Off,
}

impl DirMarkers {
    /// Whether mkdir writes a marker; `Auto` not yet resolved counts as on.
    pub fn writes_markers(self) -> bool {
        self != DirMarkers::Off
    }
}

/// What the probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSeen {
    /// The marker PutObject; `Err` holds the error's text.
    pub marker_put: Result<(), String>,
    /// Whether a listing under the marker's prefix showed the marker itself (not tried
    /// when the marker failed).
    pub marker_listed: Option<Result<bool, String>>,
    /// The PutObject of a key under the marker (tried only when the marker was listed).
    pub child_put: Option<Result<(), String>>,
}

/// What the probe concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeVerdict {
    /// The store keeps markers and keys under them.
    Keeps,
    /// The store cannot keep a marker (not listed) or refuses keys under one.
    Refuses(String),
    /// The probe itself failed (no right to write there, store unreachable): nothing is
    /// known, markers stay on as before.
    Unknown(String),
}

impl ProbeVerdict {
    /// The setting this verdict resolves `auto` to.
    pub fn markers(&self) -> DirMarkers {
        match self {
            ProbeVerdict::Refuses(_) => DirMarkers::Off,
            ProbeVerdict::Keeps | ProbeVerdict::Unknown(_) => DirMarkers::On,
        }
    }
}

/// The verdict of what the probe saw.
pub fn judge(seen: &ProbeSeen) -> ProbeVerdict {
    if let Err(e) = &seen.marker_put {
        return ProbeVerdict::Unknown(format!("the probe marker could not be written: {e}"));
    }
    match &seen.marker_listed {
        Some(Ok(true)) => {}
        Some(Ok(false)) => {
            return ProbeVerdict::Refuses("an empty directory marker is not listed".into())
        }
        Some(Err(e)) => {
            return ProbeVerdict::Unknown(format!("the probe marker could not be listed: {e}"))
        }
        None => return ProbeVerdict::Unknown("the probe did not finish".into()),
    }
    match &seen.child_put {
        Some(Ok(())) => ProbeVerdict::Keeps,
        Some(Err(e)) => ProbeVerdict::Refuses(format!(
            "a key under an empty directory marker was refused: {e}"
        )),
        None => ProbeVerdict::Unknown("the probe did not finish".into()),
    }
}

/// The probe's marker key under `prefix` (a user's prefix, ending in `/`, or empty).
pub fn probe_key(prefix: &str) -> String {
    let n: u64 = rand::random();
    format!("{prefix}.s3sftp-probe-{n:016x}/")
}

/// The setting to run with: `setting` unless it is `Auto`, else what a probe under
/// `prefix` (with the options every new object gets) tells. `known_to_keep`: the store
/// is the embedded one, which keeps markers: no probe.
pub async fn resolve(
    setting: DirMarkers,
    client: &aws_sdk_s3::Client,
    bucket: &str,
    objects: &ObjectSettings,
    prefix: &str,
    known_to_keep: bool,
) -> DirMarkers {
    if setting != DirMarkers::Auto {
        tracing::info!(dir_markers = ?setting, "directory markers as set");
        return setting;
    }
    if known_to_keep {
        return DirMarkers::On;
    }
    let s3 = S3::new(client.clone(), bucket.into(), objects.upload_checksum);
    let verdict = probe(&s3, &ObjectOptions::from_settings(objects), prefix).await;
    let markers = verdict.markers();
    match &verdict {
        ProbeVerdict::Keeps => {
            tracing::info!("the store keeps empty directory markers: mkdir writes them")
        }
        ProbeVerdict::Refuses(why) => tracing::warn!(
            "the store cannot hold empty directory markers ({why}): empty directories are \
             kept in this server's memory until a file is written in them; they are lost on \
             restart and other gateways do not see them (set --s3-dir-markers to decide)"
        ),
        ProbeVerdict::Unknown(why) => tracing::warn!(
            "could not tell whether the store keeps empty directory markers ({why}): \
             mkdir writes them (set --s3-dir-markers to decide)"
        ),
    }
    markers
}

/// Probes the store at a fresh marker under `prefix`, then removes what it wrote.
pub(crate) async fn probe(s3: &S3, options: &ObjectOptions, prefix: &str) -> ProbeVerdict {
    let marker = probe_key(prefix);
    let child = format!("{marker}probe");
    let marker_options = ObjectOptions {
        content_type: Some(DIRECTORY_CONTENT_TYPE),
        ..options.clone()
    };
    let marker_put = s3
        .put_object(&marker, Bytes::new(), &marker_options)
        .await
        .map_err(|e| e.to_string());
    let mut seen = ProbeSeen {
        marker_listed: None,
        child_put: None,
        marker_put,
    };
    if seen.marker_put.is_ok() {
        let listed = s3
            .list_page(&marker, None, 2, None)
            .await
            .map(|page| page.objects.iter().any(|o| o.key == marker))
            .map_err(|e| e.to_string());
        // A store that lost the marker fails keys under it slowly (errors retried).
        if listed == Ok(true) {
            let child_put = s3
                .put_object(&child, Bytes::from_static(b"s3sftp"), options)
                .await
                .map_err(|e| e.to_string());
            seen.child_put = Some(child_put);
        }
        seen.marker_listed = Some(listed);
        for key in [&child, &marker] {
            if let Err(e) = s3.delete_object(key).await {
                tracing::warn!(key = %key, "could not remove the directory marker probe: {e}");
            }
        }
    }
    let verdict = judge(&seen);
    tracing::debug!(?seen, ?verdict, key = %marker, "directory marker probe");
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(
        marker_put: Result<(), &str>,
        marker_listed: Option<Result<bool, &str>>,
        child_put: Option<Result<(), &str>>,
    ) -> ProbeSeen {
        ProbeSeen {
            marker_put: marker_put.map_err(str::to_string),
            marker_listed: marker_listed.map(|r| r.map_err(str::to_string)),
            child_put: child_put.map(|r| r.map_err(str::to_string)),
        }
    }

    #[test]
    fn a_store_that_keeps_markers_keeps_them_on() {
        let v = judge(&seen(Ok(()), Some(Ok(true)), Some(Ok(()))));
        assert_eq!(v, ProbeVerdict::Keeps);
        assert_eq!(v.markers(), DirMarkers::On);
    }

    #[test]
    fn rclone_serve_s3_turns_them_off() {
        // What rclone serve s3 does: the marker is written (as a file named like the
        // directory) and is not listed under its prefix; a key under it would fail.
        let v = judge(&seen(Ok(()), Some(Ok(false)), None));
        assert!(matches!(v, ProbeVerdict::Refuses(ref why) if why.contains("not listed")));
        assert_eq!(v.markers(), DirMarkers::Off);
        // A store that lists the marker but refuses keys under it.
        let v = judge(&seen(
            Ok(()),
            Some(Ok(true)),
            Some(Err("InternalError: Internal Error")),
        ));
        assert!(matches!(v, ProbeVerdict::Refuses(ref why) if why.contains("refused")));
        assert_eq!(v.markers(), DirMarkers::Off);
    }

    #[test]
    fn a_failed_probe_changes_nothing() {
        let v = judge(&seen(Err("AccessDenied"), None, None));
        assert!(matches!(v, ProbeVerdict::Unknown(ref why) if why.contains("AccessDenied")));
        assert_eq!(v.markers(), DirMarkers::On);
        let v = judge(&seen(Ok(()), Some(Err("AccessDenied")), None));
        assert!(matches!(v, ProbeVerdict::Unknown(ref why) if why.contains("listed")));
        assert_eq!(v.markers(), DirMarkers::On);
        assert_eq!(
            judge(&seen(Ok(()), Some(Ok(true)), None)).markers(),
            DirMarkers::On,
            "unfinished"
        );
    }

    #[test]
    fn probe_keys_are_fresh_hidden_markers_under_the_prefix() {
        let a = probe_key("users/alice/");
        let b = probe_key("users/alice/");
        assert_ne!(a, b);
        assert!(a.starts_with("users/alice/.s3sftp-probe-"), "{a}");
        assert!(a.ends_with('/'));
        assert_eq!(a.matches('/').count(), 3, "one level under the prefix");
        assert!(probe_key("").starts_with(".s3sftp-probe-"));
    }

    #[test]
    fn only_off_stops_markers() {
        assert!(DirMarkers::Auto.writes_markers());
        assert!(DirMarkers::On.writes_markers());
        assert!(!DirMarkers::Off.writes_markers());
    }
}
