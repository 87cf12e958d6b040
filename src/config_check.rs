//! `s3sftp serve --check`, like `sshd -t`: checks the settings, the users file, the host keys
//! and access to S3 the way a start would, and reports every mistake, one line each, without
//! listening anywhere or creating anything (a missing host key is reported, not generated).

use std::time::Duration;

use crate::cli::ServeArgs;
use crate::server::{add_user_command, ServerConfig};
use crate::ssh::hostkey;
use crate::storage::client::{self, S3Settings};
use crate::storage::{Storage, TransferSettings};
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
    let users = check_users(args, &mut findings);
    for line in hostkey::inspect(&args.state_dir, &args.host_keys) {
        match line {
            Ok(line) => findings.found.push(line),
            Err(e) => findings.mistakes.push(e.to_string()),
        }
    }
    if let Some(config) = config {
        check_storage(&config, users.as_ref(), &mut findings).await;
    } else {
        findings
            .found
            .push("S3: not checked, the settings above are wrong".to_owned());
    }
    findings
}

fn check_users(args: &ServeArgs, findings: &mut Findings) -> Option<UsersFile> {
    let path = &args.users_file;
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
