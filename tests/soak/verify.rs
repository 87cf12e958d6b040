//! The end-of-run checks, made on the bucket directly (not through the server or the
//! fault proxy): every acknowledged file is there byte for byte, nothing else is, and no
//! multipart upload is left pending.

use std::collections::BTreeMap;

use super::ledger::{Ledger, State};
use super::server::SoakUser;
use super::DIRS;
use crate::common::bucket::BucketView;
use crate::common::sha256;

#[derive(Debug, Default)]
pub struct Checks {
    pub keys_in_bucket: u64,
    pub bytes_in_bucket: u64,
    pub acked_files: u64,
    pub acked_intact: u64,
    pub dirs: u64,
    pub absent_ok: u64,
    pub uncertain_present: u64,
    pub uncertain_absent: u64,
    pub pending_uploads: Vec<String>,
    pub violations: Vec<String>,
}

fn key_of(prefix: &str, path: &str) -> String {
    let rel = path.trim_start_matches('/');
    if DIRS.contains(&path) {
        format!("{prefix}{rel}/")
    } else {
        format!("{prefix}{rel}")
    }
}

async fn sha_of(view: &BucketView, key: &str) -> Option<String> {
    view.object(key).await.as_deref().map(sha256)
}

pub async fn verify(
    view: &BucketView,
    root: &str,
    users: &[SoakUser],
    ledgers: &[Ledger],
) -> Checks {
    let mut c = Checks::default();
    for (user, ledger) in users.iter().zip(ledgers) {
        let mut in_bucket: BTreeMap<String, u64> =
            view.objects(&user.prefix).await.into_iter().collect();
        c.keys_in_bucket += in_bucket.len() as u64;
        c.bytes_in_bucket += in_bucket.values().sum::<u64>();
        for (path, state) in &ledger.paths {
            let key = key_of(&user.prefix, path);
            let size = in_bucket.remove(&key);
            match (state, size) {
                (State::Acked { sha, size: want }, Some(got)) => {
                    c.acked_files += 1;
                    let actual = if got == *want {
                        sha_of(view, &key).await
                    } else {
                        None
                    };
                    if actual.as_deref() == Some(sha.as_str()) {
                        c.acked_intact += 1;
                    } else {
                        c.violations.push(format!(
                            "acknowledged {key}: {got} bytes (sha {actual:?}), expected {want} bytes (sha {sha})"
                        ));
                    }
                }
                (State::Acked { .. }, None) => {
                    c.acked_files += 1;
                    c.violations
                        .push(format!("acknowledged {key} is missing from the bucket"));
                }
                (State::Dir, Some(_)) => c.dirs += 1,
                (State::Dir, None) => c
                    .violations
                    .push(format!("directory marker {key} is missing")),
                (State::Absent { .. }, None) => c.absent_ok += 1,
                (State::Absent { why }, Some(got)) => c.violations.push(format!(
                    "{key} ({got} bytes) is in the bucket but must not be: {why}"
                )),
                (State::Uncertain { .. }, None) => c.uncertain_absent += 1,
                (State::Uncertain { sha, why }, Some(_)) => {
                    c.uncertain_present += 1;
                    let actual = sha_of(view, &key).await;
                    if actual.as_deref() != Some(sha.as_str()) {
                        c.violations.push(format!(
                            "{key} ({why}) holds other bytes than the client sent (sha {actual:?})"
                        ));
                    }
                }
            }
        }
        for (key, size) in in_bucket {
            c.violations.push(format!(
                "{key} ({size} bytes) is in the bucket but no client made it"
            ));
        }
    }
    c.pending_uploads = view.pending_uploads(root).await;
    for key in &c.pending_uploads {
        c.violations
            .push(format!("multipart upload still pending for {key}"));
    }
    c
}
