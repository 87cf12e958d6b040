//! s3sftp: an SFTP and SCP server whose storage is S3 object storage.
//!
//! The layers, from the wire inwards: [`ssh`] accepts connections and authenticates
//! against [`users`]; the front end [`sftp`] turns protocol requests into
//! calls on a [`storage::UserStore`], the only code that knows S3. With no bucket
//! configured, [`embedded`] runs an S3-compatible store on loopback. Connections run on
//! [`lanes`], single-threaded runtimes.

pub mod admin;
pub mod cli;
pub mod config;
/// The embedded S3 store ([`s3_store`]), built in with the default `embedded-store` feature.
#[cfg(feature = "embedded-store")]
pub use s3_store as embedded;
pub mod exec;
pub mod lanes;
pub mod reload;
pub mod scp;
pub mod server;
pub mod sftp;
pub mod ssh;
pub mod storage;
pub mod users;
