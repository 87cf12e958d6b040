//! Turns command-line settings into a validated [`ServerConfig`], with errors that say
//! which flag to change.

use std::time::Duration;

use crate::cli::{ServeArgs, SseMode};
use crate::server::ServerConfig;
use crate::sftp::SessionLimits;
use crate::ssh::{GuardSettings, ProxySettings, SshSettings};
use crate::storage::client::S3Settings;
use crate::storage::{Encryption, ObjectSettings, TransferSettings};

const MIB: u64 = 1024 * 1024;

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub message: String,
}

fn bad(flag: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        message: message.into(),
    }
}

/// Validates `args` and builds the server configuration.
pub fn from_args(args: &ServeArgs) -> Result<ServerConfig, ConfigError> {
    if !(5..=5120).contains(&args.part_size_mib) {
        return Err(bad(
            "--part-size-mib",
            "S3 parts must be between 5 MiB and 5 GiB",
        ));
    }
    if args.transfer_budget_mib < args.part_size_mib {
        return Err(bad(
            "--transfer-budget-mib",
            format!(
                "must be at least the part size ({} MiB)",
                args.part_size_mib
            ),
        ));
    }
    if args.memory_budget_mib < args.transfer_budget_mib {
        return Err(bad(
            "--memory-budget-mib",
            format!(
                "must be at least the transfer budget ({} MiB)",
                args.transfer_budget_mib
            ),
        ));
    }
    if args.download_chunk_mib == 0 || args.download_chunk_mib > args.transfer_budget_mib {
        return Err(bad(
            "--download-chunk-mib",
            "must be between 1 and the transfer budget",
        ));
    }
    if !args.embedded_listen.ip().is_loopback() {
        return Err(bad(
            "--embedded-listen",
            "the embedded store must listen on loopback (127.0.0.1 or ::1)",
        ));
    }
    if args.max_handles == 0 {
        return Err(bad("--max-handles", "must be at least 1"));
    }
    if args
        .session_threads
        .is_some_and(|n| !(1..=1024).contains(&n))
    {
        return Err(bad("--session-threads", "must be between 1 and 1024"));
    }
    if args.bucket.is_none() && (args.s3_endpoint.is_some() || args.s3_access_key.is_some()) {
        return Err(bad(
            "--bucket",
            "S3 settings were given without a bucket; set --bucket (S3SFTP_BUCKET)",
        ));
    }
    if let Some(endpoint) = &args.s3_endpoint {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(bad("--s3-endpoint", "must be an http:// or https:// URL"));
        }
    }
    if args.proxy_protocol && args.proxy_trusted_cidrs.is_empty() {
        return Err(bad(
            "--proxy-protocol",
            "needs --proxy-trusted-cidrs (S3SFTP_PROXY_TRUSTED_CIDRS), the load balancers' networks; \
             a PROXY header from anyone else could claim any client address",
        ));
    }
    let objects = object_settings(args)?;
    let s3 = args.bucket.as_ref().map(|bucket| S3Settings {
        bucket: bucket.clone(),
        endpoint: args.s3_endpoint.clone(),
        region: args.s3_region.clone(),
        path_style: args.s3_path_style,
        credentials: args.s3_access_key.clone().zip(args.s3_secret_key.clone()),
        checksum: args.s3_checksum,
        payload_signing: args.s3_payload_signing,
        max_attempts: args.s3_max_attempts.max(1),
        attempt_timeout: Duration::from_secs(args.s3_timeout.max(1)),
        connect_timeout: Duration::from_secs(10),
    });
    let mut config = ServerConfig::new(&args.state_dir, &args.users_file);
    config.listen = args.listen;
    config.s3 = s3;
    config.embedded_listen = args.embedded_listen;
    if let Some(dir) = &args.data_dir {
        config.embedded_data_dir = dir.clone();
    }
    config.transfer = TransferSettings {
        part_size: args.part_size_mib * MIB,
        transfer_budget: args.transfer_budget_mib * MIB,
        global_budget: args.memory_budget_mib * MIB,
        download_chunk: args.download_chunk_mib * MIB,
        metadata_ttl: Duration::from_secs(args.metadata_cache_secs),
        objects,
        ..TransferSettings::default()
    };
    config.ssh = SshSettings {
        auth_failure_delay: Duration::from_millis(args.auth_failure_delay_ms),
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
        auth_deadline: Duration::from_secs(args.auth_deadline.max(1)),
        guard: GuardSettings {
            ban_threshold: args.ban_threshold,
            ban_time: Duration::from_secs(args.ban_time),
            max_ban_time: Duration::from_secs(args.ban_max_time.max(args.ban_time)),
            max_per_ip: args.max_connections_per_ip,
            max_total: args.max_connections,
            ..GuardSettings::default()
        },
        proxy_protocol: args
            .proxy_protocol
            .then(|| ProxySettings::new(args.proxy_trusted_cidrs.clone())),
        ..SshSettings::default()
    };
    config.sftp = SessionLimits {
        max_handles: args.max_handles,
        max_uploads: args.max_uploads.max(1),
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
    };
    config.shutdown_grace = Duration::from_secs(args.shutdown_grace);
    if let Some(threads) = args.session_threads {
        config.session_threads = threads;
    }
    config.orphan_age = Duration::from_secs(args.orphan_age_hours * 3600);
    config.orphan_sweep_every =
        (args.orphan_sweep_hours > 0).then(|| Duration::from_secs(args.orphan_sweep_hours * 3600));
    Ok(config)
}

/// Storage class, encryption and upload checksum of new objects.
fn object_settings(args: &ServeArgs) -> Result<ObjectSettings, ConfigError> {
    let kms_extras = args.s3_sse_kms_key_id.is_some() || args.s3_sse_bucket_key;
    let encryption =
        match args.s3_sse {
            None if kms_extras => return Err(bad(
                "--s3-sse",
                "--s3-sse-kms-key-id and --s3-sse-bucket-key need --s3-sse aws:kms (S3SFTP_S3_SSE)",
            )),
            Some(SseMode::Aes256) if kms_extras => {
                return Err(bad(
                    "--s3-sse",
                    "--s3-sse-kms-key-id and --s3-sse-bucket-key go with aws:kms, not aes256",
                ))
            }
            None => Encryption::BucketDefault,
            Some(SseMode::Aes256) => Encryption::Aes256,
            Some(SseMode::AwsKms) => Encryption::Kms {
                key_id: args.s3_sse_kms_key_id.clone(),
                bucket_key: args.s3_sse_bucket_key,
            },
        };
    Ok(ObjectSettings {
        storage_class: args.s3_storage_class,
        encryption,
        upload_checksum: args.s3_upload_checksum,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn serve_args(flags: &[&str]) -> ServeArgs {
        let argv = ["s3sftp", "serve"].iter().chain(flags);
        match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Command::Serve(args)) => *args,
            Ok(_) => panic!("not serve"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn proxy_protocol_is_off_by_default() {
        let config = from_args(&serve_args(&[])).expect("valid");
        assert!(config.ssh.proxy_protocol.is_none());
        let config = from_args(&serve_args(&["--proxy-trusted-cidrs", "10.0.0.0/8"]))
            .expect("trusted networks alone change nothing");
        assert!(config.ssh.proxy_protocol.is_none());
    }

    #[test]
    fn proxy_protocol_needs_trusted_networks() {
        let err = from_args(&serve_args(&["--proxy-protocol"])).expect_err("refused");
        assert_eq!(err.flag, "--proxy-protocol");
        assert!(err.message.contains("--proxy-trusted-cidrs"), "{err}");
    }

    #[test]
    fn proxy_trusted_cidrs_are_a_comma_separated_list() {
        let config = from_args(&serve_args(&[
            "--proxy-protocol",
            "--proxy-trusted-cidrs",
            "10.0.0.0/8, 192.0.2.10/32,2001:db8::/32",
        ]))
        .expect("valid");
        let proxy = config.ssh.proxy_protocol.expect("on");
        assert_eq!(proxy.trusted.len(), 3);
        assert!(proxy.trusts("192.0.2.10".parse().expect("ip")));
        assert!(!proxy.trusts("192.0.2.11".parse().expect("ip")));
        let argv = ["s3sftp", "serve", "--proxy-trusted-cidrs", "10.0.0.1"];
        let err = Cli::try_parse_from(argv).expect_err("a bare address is refused");
        assert!(err.to_string().contains("10.0.0.1/32"), "{err}");
    }

    #[test]
    fn session_threads_default_to_the_cpus_and_take_1_to_1024() {
        let config = from_args(&serve_args(&[])).expect("valid");
        assert_eq!(
            config.session_threads,
            crate::server::default_session_threads()
        );
        assert!(config.session_threads >= 1);
        let config = from_args(&serve_args(&["--session-threads", "3"])).expect("valid");
        assert_eq!(config.session_threads, 3);
        for bad in ["0", "1025"] {
            let err = from_args(&serve_args(&["--session-threads", bad])).expect_err("refused");
            assert_eq!(err.flag, "--session-threads");
        }
    }

    #[test]
    fn object_settings_come_from_the_flags() {
        let config = from_args(&serve_args(&[])).expect("valid");
        assert_eq!(config.transfer.objects, ObjectSettings::default());
        let config = from_args(&serve_args(&[
            "--s3-storage-class",
            "standard_ia",
            "--s3-sse",
            "aws:kms",
            "--s3-sse-kms-key-id",
            "alias/sftp",
            "--s3-sse-bucket-key",
            "--s3-upload-checksum",
            "none",
        ]))
        .expect("valid");
        let objects = config.transfer.objects;
        assert_eq!(
            objects.storage_class,
            Some(crate::storage::StorageClass::StandardIa)
        );
        assert_eq!(
            objects.encryption,
            Encryption::Kms {
                key_id: Some("alias/sftp".into()),
                bucket_key: true
            }
        );
        assert_eq!(
            objects.upload_checksum,
            crate::storage::UploadChecksum::None
        );
        let err = from_args(&serve_args(&["--s3-sse-kms-key-id", "k"])).expect_err("refused");
        assert_eq!(err.flag, "--s3-sse");
        let argv = ["s3sftp", "serve", "--s3-storage-class", "DEEP_ARCHIVE"];
        let err = Cli::try_parse_from(argv).expect_err("archive classes are refused");
        assert!(err.to_string().contains("archive class"), "{err}");
    }
}
