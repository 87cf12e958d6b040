//! `s3sftp serve --check`, like `sshd -t`: checks the settings, the users file, the host keys
//! and access to S3 the way a start would, and reports every mistake, one line each, without
//! listening anywhere or creating anything (a missing host key is reported, not generated).

use std::time::Duration;

use crate::cli::ServeArgs;
use crate::server::{add_user_command, ServerConfig};
use crate::ssh::{bucket_hostkey, hostkey};
use crate::storage::client::{self, S3Settings};
use crate::storage::s3::{ObjectOptions, S3};
use crate::storage::{Storage, TransferSettings, UploadChecksum};
use crate::users::remote::{check_outside_prefixes, ObjectLocation, RemoteUsers};
use crate::users::{UsersError, UsersFile};

/// What the check found: lines about what is right, and one line per mistake.
#[derive(Debug, Default)]
pub struct Findings {
    pub found: Vec<String>,
    pub mistakes: Vec<String>,
}

/// Longest time one S3 request of the check may take: it fails fast rather than retrying.
const S3_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks what `serve` with `args` would start with.
pub async fn check(args: &ServeArgs) -> Findings {
    let mut findings = Findings::default();
    if let Some(path) = &args.config {
        findings
            .found
            .push(format!("config file {}: read", path.display()));
    }
    let config = match crate::config::from_args(args) {
        Ok(config) => {
            findings.found.push(format!(
                "settings: valid (SSH on {}, state directory {})",
                config.listen,
                config.state_dir.display()
            ));
            Some(config)
        }
        Err(e) => {
            findings
                .mistakes
                .push(format!("{}: {}", args.setting_name(e.flag), e.message));
            None
        }
    };
    let mut users = check_users(args, &mut findings);
    let (key_objects, key_files) = split_host_keys(&args.host_keys, &mut findings);
    if key_objects.is_empty() || !key_files.is_empty() {
        for line in hostkey::inspect(&args.state_dir, &key_files) {
            match line {
                Ok(line) => findings.found.push(line),
                Err(e) => findings.mistakes.push(e.to_string()),
            }
        }
    }
    if let Some(config) = config {
        if let Some(s3) = &config.s3 {
            users = check_bucket_objects(args, s3, users, &key_objects, &mut findings).await;
        }
        check_storage(&config, users.as_ref(), &mut findings).await;
    } else {
        findings
            .found
            .push("S3: not checked, the settings above are wrong".to_owned());
    }
    findings
}

/// The `--host-key` settings split into objects in the bucket and local files.
fn split_host_keys(
    settings: &[std::path::PathBuf],
    findings: &mut Findings,
) -> (Vec<ObjectLocation>, Vec<std::path::PathBuf>) {
    let mut objects = Vec::new();
    let mut files = Vec::new();
    for setting in settings {
        match ObjectLocation::parse(setting) {
            Ok(Some(location)) => objects.push(location),
            Ok(None) => files.push(setting.clone()),
            Err(e) => findings.mistakes.push(e.to_string()),
        }
    }
    (objects, files)
}

/// The users object and the host keys kept in the bucket, read (nothing created). Returns
/// the users read from the object, or `users` when the users file is local.
async fn check_bucket_objects(
    args: &ServeArgs,
    settings: &S3Settings,
    users: Option<UsersFile>,
    key_objects: &[ObjectLocation],
    findings: &mut Findings,
) -> Option<UsersFile> {
    let users_object = ObjectLocation::parse(&args.users_file).ok().flatten();
    if users_object.is_none() && key_objects.is_empty() {
        return users;
    }
    let settings = S3Settings {
        max_attempts: 1,
        attempt_timeout: settings.attempt_timeout.min(S3_CHECK_TIMEOUT),
        ..settings.clone()
    };
    let client = client::build_client(&settings).await;
    let s3 = S3::new(client, settings.bucket.as_str().into(), UploadChecksum::Md5);
    let mut users = users;
    if let Some(location) = users_object {
        let read = match location.check_bucket(&settings.bucket) {
            Ok(()) => {
                RemoteUsers::new(s3.clone(), location.clone(), ObjectOptions::default())
                    .load()
                    .await
            }
            Err(e) => Err(e),
        };
        match read {
            Ok((file, _)) => {
                findings.found.push(format!(
                    "users object {location}: {} users",
                    file.users().len()
                ));
                users = Some(file);
            }
            Err(e) => findings.mistakes.push(e.to_string()),
        }
    }
    for location in key_objects {
        let line = match location.check_bucket(&settings.bucket) {
            Ok(()) => bucket_hostkey::inspect(&s3, location)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let inside = users.as_ref().and_then(|u| {
            check_outside_prefixes(location, u.users())
                .err()
                .map(|e| e.to_string())
        });
        match (line, inside) {
            (_, Some(e)) | (Err(e), None) => findings.mistakes.push(e),
            (Ok(line), None) => findings.found.push(line),
        }
    }
    users
}

fn check_users(args: &ServeArgs, findings: &mut Findings) -> Option<UsersFile> {
    let path = &args.users_file;
    match ObjectLocation::parse(path) {
        Ok(None) => {}
        // Read with the bucket, below.
        Ok(Some(_)) => return None,
        Err(e) => {
            findings.mistakes.push(e.to_string());
            return None;
        }
    }
    match UsersFile::load_empty_ok(path) {
        Ok(users) => {
            let count = users.users().len();
            findings.found.push(if count == 0 {
                format!(
                    "users file {}: no users yet, nobody can log in (add one with: {})",
                    path.display(),
                    add_user_command(path)
                )
            } else {
                format!("users file {}: {count} users", path.display())
            });
            Some(users)
        }
        Err(UsersError::Read { path, source }) if source.kind() == std::io::ErrorKind::NotFound => {
            findings.mistakes.push(format!(
                "users file {} does not exist; create it with a first user: {}",
                path.display(),
                add_user_command(&path)
            ));
            None
        }
        Err(e) => {
            findings.mistakes.push(e.to_string());
            None
        }
    }
}

/// The bucket as the server would first use it: HeadBucket (or its stand-in under a
/// prefix-scoped policy), then a one-key listing under a user's prefix, as the readiness
/// probe does. One attempt per request, so an unreachable endpoint fails at once.
async fn check_storage(config: &ServerConfig, users: Option<&UsersFile>, findings: &mut Findings) {
    let Some(settings) = &config.s3 else {
        if cfg!(feature = "embedded-store") {
            findings.found.push(format!(
                "S3: no bucket, the embedded store would keep its data in {}; nothing to check remotely",
                config.embedded_data_dir.display()
            ));
        } else {
            findings.mistakes.push(
                "no bucket configured, and this s3sftp was built without the embedded S3 store: \
                 set --bucket (S3SFTP_BUCKET)"
                    .to_owned(),
            );
        }
        return;
    };
    let settings = S3Settings {
        max_attempts: 1,
        attempt_timeout: settings.attempt_timeout.min(S3_CHECK_TIMEOUT),
        ..settings.clone()
    };
    let where_ = settings.endpoint.as_deref().unwrap_or("AWS S3").to_owned();
    let client = client::build_client(&settings).await;
    let prefix = users.and_then(|u| u.users().first().map(|u| u.key_prefix.clone()));
    if let Err(e) = client::check_bucket(&client, &settings, prefix.as_deref()).await {
        findings.mistakes.push(e.to_string());
        return;
    }
    let Some(prefix) = prefix else {
        findings.found.push(format!(
            "S3: bucket {:?} at {where_} reachable (no user prefix to list under yet)",
            settings.bucket
        ));
        return;
    };
    let storage = Storage::new(client, settings.bucket.clone(), TransferSettings::default());
    match storage.user_store(&prefix).first_keys(&prefix, 1).await {
        Ok(_) => findings.found.push(format!(
            "S3: bucket {:?} at {where_} reachable, listing under {prefix:?} allowed",
            settings.bucket
        )),
        Err(e) => findings.mistakes.push(format!(
            "S3: cannot list bucket {:?} under the prefix {prefix:?}: {e}; check the credentials and \
             the IAM policy (s3sftp policy prints the one needed)",
            settings.bucket
        )),
    }
}
