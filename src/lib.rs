//! s3sftp: an SFTP and SCP server whose storage is S3 object storage.
//!
//! The layers, from the wire inwards (`ARCHITECTURE.md` at the repository root has the
//! full map, the path of one upload and one download, and the invariants):
//!
//! - [`ssh`] accepts connections, authenticates them against [`users`] and routes each
//!   channel to a front end.
//! - The front ends speak a protocol and know nothing of S3: [`sftp`], [`scp`] (the
//!   legacy SCP protocol) and [`exec`] (SSH `exec`: `scp` and the checksum commands).
//! - [`storage`] is the only code that knows S3: a [`storage::UserStore`] is one user's
//!   view of the bucket, jailed to their prefix.
//!
//! Around them: [`server`] wires everything together at start-up and shuts it down;
//! [`lanes`] runs the connections on single-threaded runtimes (session threads);
//! [`reload`] applies a changed users file live; [`config`] and [`cli`] turn the command
//! line into settings; [`admin`] implements the `users` admin commands; [`control`] is the
//! control socket of `sessions`, `kick`, `bans` and `unban`, fed by [`activity`]. With no bucket
//! configured, the server starts an embedded S3-compatible store on loopback and talks to
//! it through the same S3 client as to a real bucket.

pub mod activity;
pub mod admin;
pub mod audit;
pub mod cli;
pub mod config;
pub mod config_check;
pub mod config_file;
pub mod control;
/// The embedded S3 store ([`s3_store`]), built in with the default `embedded-store` feature.
#[cfg(feature = "embedded-store")]
pub use s3_store as embedded;
pub mod exec;
pub mod lanes;
pub mod log_text;
pub mod logging;
pub mod metrics;
pub mod ops_http;
pub mod readiness;
pub mod reload;
pub mod scp;
pub mod server;
pub mod sftp;
pub mod ssh;
pub mod storage;
pub mod units;
pub mod users;
