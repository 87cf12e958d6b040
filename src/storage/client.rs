//! Building the aws-sdk-s3 client from our settings, and the start-up check that the
//! bucket is there and reachable.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use aws_sdk_s3::config::{
    IdentityCache, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::Client;

use super::signing::{PayloadSigning, UnsignedUploads};

/// When the SDK computes request checksums. Many S3-compatible servers reject the
/// streamed CRC32 trailers the SDK sends by default, so custom endpoints default to
/// `WhenRequired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChecksumMode {
    WhenRequired,
    WhenSupported,
}

/// Where the bucket is and how to talk to it.
#[derive(Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// Custom endpoint (MinIO, Garage, Ceph, the embedded store); `None` means AWS.
    pub endpoint: Option<String>,
    /// `None` takes the region from the standard AWS chain (env, profile, IMDS).
    pub region: Option<String>,
    pub path_style: bool,
    /// Explicit keys; `None` uses the standard AWS credential chain.
    pub credentials: Option<(String, String)>,
    /// `None` picks `WhenRequired` for custom endpoints and `WhenSupported` for AWS.
    pub checksum: Option<ChecksumMode>,
    /// Whether PutObject/UploadPart bodies are hashed into the signature.
    pub payload_signing: PayloadSigning,
    /// Attempts per request, including the first (standard retry mode: exponential
    /// backoff with full jitter).
    pub max_attempts: u32,
    /// Time allowed for one attempt of one request.
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field(
                "credentials",
                &self
                    .credentials
                    .as_ref()
                    .map(|(ak, _)| format!("{ak}:<secret>")),
            )
            .field("checksum", &self.checksum)
            .field("payload_signing", &self.payload_signing)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

impl S3Settings {
    /// When the SDK computes request checksums: as set, else `WhenRequired` for custom
    /// endpoints and `WhenSupported` for AWS.
    pub fn checksum_mode(&self) -> ChecksumMode {
        self.checksum.unwrap_or(if self.endpoint.is_some() {
            ChecksumMode::WhenRequired
        } else {
            ChecksumMode::WhenSupported
        })
    }

    /// Settings for a custom endpoint with explicit keys (tests, the embedded store).
    pub fn custom(endpoint: &str, bucket: &str, region: &str, key: &str, secret: &str) -> Self {
        S3Settings {
            bucket: bucket.to_string(),
            endpoint: Some(endpoint.to_string()),
            region: Some(region.to_string()),
            path_style: true,
            credentials: Some((key.to_string(), secret.to_string())),
            checksum: None,
            payload_signing: PayloadSigning::default(),
            max_attempts: 5,
            attempt_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the server cannot use the configured bucket; each says which setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bucket {bucket:?} does not exist at {where_}: check --bucket (S3SFTP_BUCKET){hint}")]
    NoSuchBucket {
        bucket: String,
        where_: String,
        hint: &'static str,
    },
    #[error("access to bucket {bucket:?} was denied ({message}): check --s3-access-key/--s3-secret-key (S3SFTP_S3_ACCESS_KEY/S3SFTP_S3_SECRET_KEY) or the AWS credential chain, and the bucket policy")]
    AccessDenied { bucket: String, message: String },
    #[error("cannot reach S3 at {where_} ({message}): check --s3-endpoint (S3SFTP_S3_ENDPOINT), --s3-region and the network")]
    Unreachable { where_: String, message: String },
    #[error("S3 refused HeadBucket on {bucket:?} ({message}): check --s3-region (S3SFTP_S3_REGION) and --s3-path-style")]
    Other { bucket: String, message: String },
}

/// Builds the client. Reads the standard AWS chain only for what is not set explicitly.
pub async fn build_client(settings: &S3Settings) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some((key, secret)) = &settings.credentials {
        loader = loader.credentials_provider(Credentials::new(
            key.clone(),
            secret.clone(),
            None,
            None,
            "s3sftp-settings",
        ));
    }
    let shared = loader.load().await;
    let checksum = settings.checksum_mode();
    let mut builder = aws_sdk_s3::config::Builder::from(&shared)
        // Explicit, so that the per-session-thread clients made from this configuration
        // share one credentials cache (see `Clients`).
        .identity_cache(IdentityCache::lazy().build())
        .force_path_style(settings.path_style)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(settings.max_attempts.max(1))
                .with_initial_backoff(Duration::from_millis(100))
                .with_max_backoff(Duration::from_secs(5)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(settings.connect_timeout)
                .operation_attempt_timeout(settings.attempt_timeout)
                .build(),
        );
    if shared.region().is_none() {
        builder = builder.region(Region::new("us-east-1"));
    }
    builder = builder.interceptor(super::observe::S3Metrics);
    if let Some(endpoint) = &settings.endpoint {
        builder = builder
            .endpoint_url(endpoint)
            .interceptor(super::compat::MultipartRootFix);
    }
    builder = match checksum {
        ChecksumMode::WhenRequired => builder
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired),
        ChecksumMode::WhenSupported => builder
            .request_checksum_calculation(RequestChecksumCalculation::WhenSupported)
            .response_checksum_validation(ResponseChecksumValidation::WhenSupported),
    };
    if !settings.payload_signing.signs(settings.endpoint.as_deref()) {
        builder = builder.interceptor(UnsignedUploads);
    }
    Client::from_conf(builder.build())
}

/// The shared client, and one more per session thread ([`crate::lanes`]).
///
/// Each is made from the same configuration, which sets no HTTP client: every
/// `Client::from_conf` then gets the SDK's default HTTPS client (same TLS, proxy and
/// timeout settings) with a connection pool of its own. The credentials cache is in the
/// configuration, so all of them share it.
pub(crate) struct Clients {
    shared: Client,
    /// The lane set the per-lane clients belong to.
    set: u64,
    lanes: Vec<Client>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("set", &self.set)
            .field("lanes", &self.lanes.len())
            .finish()
    }
}

impl Clients {
    pub(crate) fn shared_only(shared: Client) -> Self {
        Clients {
            shared,
            set: 0,
            lanes: Vec::new(),
        }
    }

    pub(crate) fn per_lane(shared: Client, set: u64, count: usize) -> Self {
        let lanes = (0..count)
            .map(|_| Client::from_conf(shared.config().clone()))
            .collect();
        Clients { shared, set, lanes }
    }

    /// The calling thread's lane client when it is a lane of this set, else the shared one.
    pub(crate) fn current(&self) -> &Client {
        self.for_lane(crate::lanes::current())
    }

    fn for_lane(&self, lane: Option<crate::lanes::LaneId>) -> &Client {
        match lane {
            Some(id) if id.set == self.set => self.lanes.get(id.index).unwrap_or(&self.shared),
            _ => &self.shared,
        }
    }
}

/// HeadBucket, with an error that names the setting to fix.
///
/// The bucket's Object Lock setting, which decides what `--s3-upload-checksum auto`
/// sends (needs `s3:GetBucketObjectLockConfiguration`; without it, Content-MD5).
pub async fn object_lock(client: &Client, bucket: &str) -> super::ObjectLock {
    super::s3::object_lock(client, bucket).await
}

/// Whether the store refuses a body whose `x-amz-checksum-crc32c` is wrong (some take
/// the header and check nothing: Ceph RGW before Squid, moto), probed with one small
/// PutObject at `key`, deleted again if the store took it. `None`: the probe failed.
pub async fn checks_crc32c(client: &Client, bucket: &str, key: &str) -> Option<bool> {
    super::s3::checks_crc32c(client, bucket, key).await
}

/// HeadBucket needs `s3:ListBucket` without conditions. Under a least-privilege policy
/// (`s3sftp policy`) that grants it only under the users' prefixes, S3 answers 403;
/// then a one-key ListObjectsV2 under `probe_prefix` (a user's prefix) tells whether the
/// bucket is reachable with these keys.
pub async fn check_bucket(
    client: &Client,
    settings: &S3Settings,
    probe_prefix: Option<&str>,
) -> Result<(), ConnectError> {
    let where_ = settings
        .endpoint
        .clone()
        .unwrap_or_else(|| "AWS S3".to_string());
    let Err(failure) = super::s3::head_bucket(client, &settings.bucket).await else {
        return Ok(());
    };
    if let (Some(403), Some(prefix)) = (failure.status, probe_prefix) {
        let s3 = super::s3::S3::new(
            client.clone(),
            settings.bucket.as_str().into(),
            super::UploadChecksum::None,
        );
        if s3.list_page(prefix, None, 1, None).await.is_ok() {
            tracing::info!(
                bucket = %settings.bucket,
                prefix,
                "HeadBucket was denied but a listing under a user's prefix works: \
                 going on with a prefix-scoped s3:ListBucket"
            );
            return Ok(());
        }
    }
    let bucket = settings.bucket.clone();
    Err(match failure.status {
        None => ConnectError::Unreachable {
            where_,
            message: failure.message,
        },
        Some(404) => ConnectError::NoSuchBucket {
            bucket,
            where_,
            hint: if settings.path_style || settings.endpoint.is_none() {
                ""
            } else {
                " (or try --s3-path-style: most self-hosted S3 servers need it)"
            },
        },
        Some(401 | 403) => ConnectError::AccessDenied {
            bucket,
            message: failure.message,
        },
        Some(_) => ConnectError::Other {
            bucket,
            message: failure.message,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lanes::LaneId;

    fn client() -> Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .build();
        Client::from_conf(conf)
    }

    #[test]
    fn each_lane_of_the_set_gets_its_own_client_and_everyone_else_the_shared_one() {
        let clients = Clients::per_lane(client(), 7, 2);
        let lane = |index| Some(LaneId { set: 7, index });
        let shared: *const Client = &clients.shared;
        let zero: *const Client = clients.for_lane(lane(0));
        let one: *const Client = clients.for_lane(lane(1));
        assert!(!std::ptr::eq(zero, one));
        assert!(!std::ptr::eq(zero, shared) && !std::ptr::eq(one, shared));
        // Off a lane, on another server's lane, or past the end: the shared client.
        assert!(std::ptr::eq(clients.for_lane(None), shared));
        assert!(std::ptr::eq(
            clients.for_lane(Some(LaneId { set: 8, index: 0 })),
            shared
        ));
        assert!(std::ptr::eq(clients.for_lane(lane(2)), shared));
        assert!(
            std::ptr::eq(clients.current(), shared),
            "the test thread is no lane"
        );
        // The per-lane clients keep the configuration (region here).
        assert_eq!(
            clients.lanes[1].config().region().map(|r| r.as_ref()),
            Some("us-east-1")
        );
    }

    #[test]
    fn without_lanes_there_is_only_the_shared_client() {
        let clients = Clients::shared_only(client());
        assert!(std::ptr::eq(
            clients.for_lane(Some(LaneId { set: 0, index: 0 })),
            &clients.shared
        ));
    }
}
