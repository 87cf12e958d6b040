//! The command line: `serve`, `users hash-password`. Every `serve` flag has an
//! `S3SFTP_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::storage::client::ChecksumMode;

#[derive(Debug, Parser)]
#[command(
    name = "s3sftp",
    version,
    about = "An SFTP and SCP server whose storage is S3"
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `s3sftp=debug`.
    #[arg(long, global = true, env = "S3SFTP_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Manage the users file.
    #[command(subcommand)]
    Users(UsersCommand),
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Read a password (from the terminal, or one line of stdin) and print its argon2id hash
    /// for the users file's `password` field.
    HashPassword,
    /// Validate a users file and list every problem (exit 1 if there is any).
    Check {
        /// The users file.
        #[arg(env = "S3SFTP_USERS_FILE", default_value = "users.json")]
        file: PathBuf,
    },
}

/// `s3sftp serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on for SSH.
    #[arg(long, env = "S3SFTP_LISTEN", default_value = "127.0.0.1:2222")]
    pub listen: SocketAddr,
    /// Directory for the host key (and the embedded store's data).
    #[arg(long, env = "S3SFTP_STATE_DIR", default_value = "state")]
    pub state_dir: PathBuf,
    /// The users file (JSON; see docs/users.md).
    #[arg(long, env = "S3SFTP_USERS_FILE", default_value = "users.json")]
    pub users_file: PathBuf,

    /// S3 bucket. Without it, an embedded S3 store on loopback is used (not for production).
    #[arg(long, env = "S3SFTP_BUCKET")]
    pub bucket: Option<String>,
    /// S3 endpoint URL for MinIO, Garage, Ceph and others; omit for AWS.
    #[arg(long, env = "S3SFTP_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region; default from the AWS chain, else us-east-1.
    #[arg(long, env = "S3SFTP_S3_REGION")]
    pub s3_region: Option<String>,
    /// Path-style addressing (endpoint/bucket/key), needed by most self-hosted servers.
    #[arg(long, env = "S3SFTP_S3_PATH_STYLE")]
    pub s3_path_style: bool,
    /// Access key id; without it the standard AWS credential chain is used.
    #[arg(long, env = "S3SFTP_S3_ACCESS_KEY", requires = "s3_secret_key")]
    pub s3_access_key: Option<String>,
    /// Secret access key (prefer the environment variable to the flag).
    #[arg(
        long,
        env = "S3SFTP_S3_SECRET_KEY",
        hide_env_values = true,
        requires = "s3_access_key"
    )]
    pub s3_secret_key: Option<String>,
    /// When to send request checksums: default when-required for custom endpoints,
    /// when-supported for AWS.
    #[arg(long, env = "S3SFTP_S3_CHECKSUM", value_enum)]
    pub s3_checksum: Option<ChecksumMode>,
    /// Attempts per S3 request, retries with jittered exponential backoff included.
    #[arg(long, env = "S3SFTP_S3_MAX_ATTEMPTS", default_value_t = 5)]
    pub s3_max_attempts: u32,
    /// Seconds allowed for one attempt of one S3 request.
    #[arg(long, env = "S3SFTP_S3_TIMEOUT", default_value_t = 120)]
    pub s3_timeout: u64,

    /// Address of the embedded S3 store (loopback only; port 0 picks a free one).
    #[arg(long, env = "S3SFTP_EMBEDDED_LISTEN", default_value = "127.0.0.1:0")]
    pub embedded_listen: SocketAddr,
    /// Data folder of the embedded S3 store [default: STATE_DIR/data].
    #[arg(long, env = "S3SFTP_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Multipart part size in MiB (at least 5; grows for very large files).
    #[arg(long, env = "S3SFTP_PART_SIZE_MIB", default_value_t = 8)]
    pub part_size_mib: u64,
    /// Buffer ceiling of one transfer in MiB.
    #[arg(long, env = "S3SFTP_TRANSFER_BUDGET_MIB", default_value_t = 64)]
    pub transfer_budget_mib: u64,
    /// Buffer ceiling of all transfers together in MiB.
    #[arg(long, env = "S3SFTP_MEMORY_BUDGET_MIB", default_value_t = 1024)]
    pub memory_budget_mib: u64,
    /// Size of one ranged GET of the download read-ahead, in MiB.
    #[arg(long, env = "S3SFTP_DOWNLOAD_CHUNK_MIB", default_value_t = 8)]
    pub download_chunk_mib: u64,
    /// Open files and directories per SFTP session.
    #[arg(long, env = "S3SFTP_MAX_HANDLES", default_value_t = 256)]
    pub max_handles: usize,
    /// Minimum time of a failed login, in milliseconds.
    #[arg(long, env = "S3SFTP_AUTH_FAILURE_DELAY_MS", default_value_t = 500)]
    pub auth_failure_delay_ms: u64,
    /// Files open for writing at once per SFTP session.
    #[arg(long, env = "S3SFTP_MAX_UPLOADS", default_value_t = 16)]
    pub max_uploads: usize,
    /// Close SFTP sessions with no request for this many seconds (keepalives don't count),
    /// and SSH connections with no traffic at all for as long.
    #[arg(long, env = "S3SFTP_IDLE_TIMEOUT", default_value_t = 600)]
    pub idle_timeout: u64,
    /// Seconds a connection has to log in before it is dropped.
    #[arg(long, env = "S3SFTP_AUTH_DEADLINE", default_value_t = 60)]
    pub auth_deadline: u64,
    /// Failed logins from one address (within 10 minutes) that ban it; 0 disables bans.
    #[arg(long, env = "S3SFTP_BAN_THRESHOLD", default_value_t = 10)]
    pub ban_threshold: u32,
    /// Seconds of the first ban of an address; each further ban doubles, up to --ban-max-time.
    #[arg(long, env = "S3SFTP_BAN_TIME", default_value_t = 300)]
    pub ban_time: u64,
    /// Longest ban, in seconds.
    #[arg(long, env = "S3SFTP_BAN_MAX_TIME", default_value_t = 86400)]
    pub ban_max_time: u64,
    /// Open connections allowed from one address; 0 means no limit.
    #[arg(long, env = "S3SFTP_MAX_CONNECTIONS_PER_IP", default_value_t = 50)]
    pub max_connections_per_ip: usize,
    /// Open connections allowed in total; 0 means no limit.
    #[arg(long, env = "S3SFTP_MAX_CONNECTIONS", default_value_t = 2000)]
    pub max_connections: usize,
    /// On SIGTERM/SIGINT: seconds to let transfers in flight finish (new connections are
    /// refused, idle sessions closed at once); then the rest are disconnected and their
    /// uploads aborted.
    #[arg(long, env = "S3SFTP_SHUTDOWN_GRACE", default_value_t = 60)]
    pub shutdown_grace: u64,
    /// Multipart uploads under the users' prefixes older than this many hours are
    /// aborted by the orphan sweep (at start, and every --orphan-sweep-hours).
    #[arg(long, env = "S3SFTP_ORPHAN_AGE_HOURS", default_value_t = 24)]
    pub orphan_age_hours: u64,
    /// Hours between orphan sweeps after the one at start; 0 sweeps only at start.
    #[arg(long, env = "S3SFTP_ORPHAN_SWEEP_HOURS", default_value_t = 0)]
    pub orphan_sweep_hours: u64,
}
