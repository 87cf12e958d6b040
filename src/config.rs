//! Turns command-line settings into a validated [`ServerConfig`], with errors that say
//! which flag to change.

use std::time::Duration;

use crate::cli::{ServeArgs, SseMode};
use crate::server::{OpsSettings, ServerConfig};
use crate::sftp::SessionLimits;
use crate::ssh::{GuardSettings, ProxySettings, SshSettings};
use crate::storage::client::S3Settings;
use crate::storage::{Encryption, ObjectSettings, TransferSettings};
use crate::units;

const MIB: u64 = 1024 * 1024;
/// The shortest timeout: a 0 given for one is taken as this.
const SECOND: Duration = Duration::from_secs(1);

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
    if !(5 * MIB..=5120 * MIB).contains(&args.part_size) {
        return Err(bad(
            "--part-size-mib",
            "S3 parts must be between 5 MiB and 5 GiB",
        ));
    }
    if args.transfer_budget < args.part_size {
        return Err(bad(
            "--transfer-budget-mib",
            format!(
                "must be at least the part size ({})",
                units::show_size(args.part_size)
            ),
        ));
    }
    if args.memory_budget < args.transfer_budget {
        return Err(bad(
            "--memory-budget-mib",
            format!(
                "must be at least the transfer budget ({})",
                units::show_size(args.transfer_budget)
            ),
        ));
    }
    if args.download_chunk == 0 || args.download_chunk > args.transfer_budget {
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
    if args
        .max_password_checks
        .is_some_and(|n| !(1..=1024).contains(&n))
    {
        return Err(bad("--max-password-checks", "must be between 1 and 1024"));
    }
    if args.max_auth_attempts == 0 {
        return Err(bad("--max-auth-attempts", "must be at least 1"));
    }
    if args.max_channels == 0 {
        return Err(bad("--max-channels", "must be at least 1"));
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
        attempt_timeout: args.s3_timeout.max(SECOND),
        connect_timeout: Duration::from_secs(10),
    });
    let mut config = ServerConfig::new(&args.state_dir, &args.users_file);
    config.listen = args.listen;
    config.host_keys = args.host_keys.clone();
    config.users_poll = args.users_poll.max(SECOND);
    config.s3 = s3;
    config.embedded_listen = args.embedded_listen;
    if let Some(dir) = &args.data_dir {
        config.embedded_data_dir = dir.clone();
    }
    config.transfer = TransferSettings {
        part_size: args.part_size,
        transfer_budget: args.transfer_budget,
        global_budget: args.memory_budget,
        download_chunk: args.download_chunk,
        metadata_ttl: args.metadata_cache,
        list_mtimes: args.list_mtimes,
        objects,
        dir_markers: args.s3_dir_markers,
        max_rename_objects: args.max_rename_objects,
        system_prefix: crate::storage::intent::normalize_system_prefix(&args.system_prefix),
        ..TransferSettings::default()
    };
    config.ssh = SshSettings {
        auth_failure_delay: args.auth_failure_delay,
        idle_timeout: args.idle_timeout.max(SECOND),
        auth_deadline: args.auth_deadline.max(SECOND),
        max_auth_attempts: args.max_auth_attempts,
        max_channels: args.max_channels,
        max_password_checks: args
            .max_password_checks
            .unwrap_or_else(crate::ssh::default_password_checks),
        guard: GuardSettings {
            ban_threshold: args.ban_threshold,
            ban_time: args.ban_time,
            max_ban_time: args.ban_max_time.max(args.ban_time),
            max_per_ip: args.max_connections_per_ip,
            max_total: args.max_connections,
            max_unauthenticated: args.max_unauthenticated,
            max_unauthenticated_per_source: args.max_unauthenticated_per_ip,
            exempt: args.penalty_exempt_cidrs.clone(),
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
        idle_timeout: args.idle_timeout.max(SECOND),
    };
    config.shutdown_grace = args.shutdown_grace;
    if let Some(threads) = args.session_threads {
        config.session_threads = threads;
    }
    config.orphan_age = args.orphan_age;
    config.orphan_sweep_every =
        (!args.orphan_sweep_every.is_zero()).then_some(args.orphan_sweep_every);
    config.ops = args.metrics_listen.map(|listen| OpsSettings {
        listen,
        probe_every: args.readiness_probe_every.max(SECOND),
        drain_delay: args.drain_delay,
    });
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
    fn connection_hardening_flags() {
        let config = from_args(&serve_args(&[])).expect("valid");
        assert_eq!(config.ssh.max_channels, 10);
        assert_eq!(config.ssh.max_auth_attempts, 6);
        assert!((1..=4).contains(&config.ssh.max_password_checks));
        assert_eq!(config.ssh.guard.max_unauthenticated, 256);
        assert_eq!(config.ssh.guard.max_unauthenticated_per_source, 32);
        assert!(config.ssh.guard.exempt.is_empty());
        let config = from_args(&serve_args(&[
            "--max-channels",
            "3",
            "--max-password-checks",
            "2",
            "--max-unauthenticated",
            "50",
            "--max-unauthenticated-per-ip",
            "5",
            "--penalty-exempt-cidrs",
            "10.1.0.0/16, 2001:db8::/48",
        ]))
        .expect("valid");
        assert_eq!(config.ssh.max_channels, 3);
        assert_eq!(config.ssh.max_password_checks, 2);
        assert_eq!(config.ssh.guard.max_unauthenticated, 50);
        assert_eq!(config.ssh.guard.max_unauthenticated_per_source, 5);
        assert_eq!(config.ssh.guard.exempt.len(), 2);
        for (flag, value) in [
            ("--max-channels", "0"),
            ("--max-password-checks", "0"),
            ("--max-auth-attempts", "0"),
        ] {
            let err = from_args(&serve_args(&[flag, value])).expect_err("refused");
            assert_eq!(err.flag, flag);
        }
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
    fn listen_takes_a_bare_port() {
        let config = from_args(&serve_args(&["--listen", ":2222"])).expect("valid");
        assert_eq!(config.listen, "[::]:2222".parse().expect("addr"));
        let config = from_args(&serve_args(&[])).expect("valid");
        assert_eq!(config.listen, "127.0.0.1:2222".parse().expect("addr"));
    }

    #[test]
    fn durations_take_units_or_the_old_plain_numbers() {
        for (flags, secs) in [
            (&["--idle-timeout", "10m"][..], 600),
            (&["--idle-timeout", "600"][..], 600),
            (&["--idle-timeout", "1h"][..], 3600),
            (&[][..], 600),
        ] {
            let config = from_args(&serve_args(flags)).expect("valid");
            assert_eq!(
                config.ssh.idle_timeout,
                Duration::from_secs(secs),
                "{flags:?}"
            );
            assert_eq!(
                config.sftp.idle_timeout,
                Duration::from_secs(secs),
                "{flags:?}"
            );
        }
        let config = from_args(&serve_args(&[
            "--auth-failure-delay-ms",
            "1s",
            "--shutdown-grace",
            "2m",
            "--ban-time",
            "30s",
            "--ban-max-time",
            "1d",
            "--metadata-cache-secs",
            "0",
            "--orphan-age-hours",
            "36",
            "--orphan-sweep-hours",
            "30m",
            "--s3-timeout",
            "1m",
            "--bucket",
            "b",
        ]))
        .expect("valid");
        assert_eq!(config.ssh.auth_failure_delay, Duration::from_secs(1));
        assert_eq!(config.shutdown_grace, Duration::from_secs(120));
        assert_eq!(config.ssh.guard.ban_time, Duration::from_secs(30));
        assert_eq!(config.ssh.guard.max_ban_time, Duration::from_secs(86400));
        assert_eq!(config.transfer.metadata_ttl, Duration::ZERO);
        assert_eq!(config.orphan_age, Duration::from_secs(36 * 3600));
        assert_eq!(config.orphan_sweep_every, Some(Duration::from_secs(1800)));
        let s3 = config.s3.expect("bucket");
        assert_eq!(s3.attempt_timeout, Duration::from_secs(60));
        let config = from_args(&serve_args(&[])).expect("valid");
        assert_eq!(config.orphan_sweep_every, None);
        assert_eq!(config.ssh.auth_failure_delay, Duration::from_millis(500));
        let argv = ["s3sftp", "serve", "--idle-timeout", "10 minuets"];
        let err = Cli::try_parse_from(argv).expect_err("refused");
        assert!(err.to_string().contains("--idle-timeout"), "{err}");
    }

    #[test]
    fn sizes_take_units_or_the_old_plain_mib() {
        let config = from_args(&serve_args(&[
            "--part-size-mib",
            "16MiB",
            "--transfer-budget-mib",
            "128",
            "--memory-budget-mib",
            "2GiB",
            "--download-chunk-mib",
            "4MiB",
        ]))
        .expect("valid");
        assert_eq!(config.transfer.part_size, 16 * MIB);
        assert_eq!(config.transfer.transfer_budget, 128 * MIB);
        assert_eq!(config.transfer.global_budget, 2048 * MIB);
        assert_eq!(config.transfer.download_chunk, 4 * MIB);
        let config = from_args(&serve_args(&[])).expect("valid");
        assert_eq!(config.transfer.part_size, 8 * MIB);
        assert_eq!(config.transfer.global_budget, 1024 * MIB);
        let err = from_args(&serve_args(&["--part-size-mib", "5MB"])).expect_err("< 5 MiB");
        assert_eq!(err.flag, "--part-size-mib");
        let err = from_args(&serve_args(&["--transfer-budget-mib", "6MiB"])).expect_err("small");
        assert!(err.message.contains("(8.0 MiB)"), "{err}");
    }

    #[test]
    fn boolean_flags_still_work_alone() {
        let config = from_args(&serve_args(&["--bucket", "b", "--s3-path-style"])).expect("ok");
        assert!(config.s3.expect("bucket").path_style);
        let config = from_args(&serve_args(&["--bucket", "b"])).expect("ok");
        assert!(!config.s3.expect("bucket").path_style);
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

    #[test]
    fn dir_markers_default_to_a_probe_and_can_be_set() {
        use crate::storage::DirMarkers;
        let config = from_args(&serve_args(&[])).expect("valid");
        assert_eq!(config.transfer.dir_markers, DirMarkers::Auto);
        for (value, want) in [("on", DirMarkers::On), ("off", DirMarkers::Off)] {
            let config = from_args(&serve_args(&["--s3-dir-markers", value])).expect("valid");
            assert_eq!(config.transfer.dir_markers, want);
        }
        let argv = ["s3sftp", "serve", "--s3-dir-markers", "maybe"];
        assert!(Cli::try_parse_from(argv).is_err());
    }
}
