//! The integration suite: one test binary whose modules are the suites, so the AWS SDK and
//! the shared helpers (`common`) are compiled and linked once. Each suite drives a real
//! s3sftp server over a real S3 HTTP server (the embedded store, or the external one named
//! by `S3SFTP_TEST_S3_*`) with real clients, or the admin CLI and the users file.
//!
//! Run one suite with a filter on its module: `cargo test --test integration sftp_protocol::`.

mod common;

mod audit_log;
mod control;
mod dir_markers;
mod folder_rename;
mod freshness;
mod fuzz_corpus;
mod gateway_kill;
mod hardening;
mod host_keys;
mod hostile_memory;
mod hostile_ssh;
mod inplace_writes;
mod mtimes;
mod operations;
mod pipelining;
mod proxy_protocol;
mod s3_fault_logs;
mod s3_faults;
mod s3_production;
mod s3_requests;
mod scale_out;
mod scp_legacy;
mod secrets_in_logs;
mod serve_cli;
mod sftp_openssh;
mod sftp_protocol;
mod sshfs;
mod upload_order;
mod users_cli;
mod users_file;
mod users_live;
mod writing_visible;
