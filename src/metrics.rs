//! Prometheus metrics: the names, their labels and one function per event, so call sites
//! stay one line and the names live in one place. Events go through the `metrics` facade:
//! with no recorder installed (no `--metrics-listen`) they cost a few atomic loads and
//! record nothing. [`install`] sets up the Prometheus recorder; [`crate::ops_http`] serves
//! its rendering on `/metrics`.

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of the S3 request latency histogram, in seconds: loopback stores answer in
/// well under a millisecond, a distant region in tens to hundreds.
const S3_LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot set up the metrics recorder: {0}")]
    Build(String),
}

/// Installs the process-wide Prometheus recorder. Only the first call installs one;
/// later calls (several servers in one test process) get a handle to a new, unshared
/// recorder, which is not fed.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("s3sftp_s3_request_duration_seconds".into()),
            S3_LATENCY_BUCKETS,
        )
        .map_err(|e| MetricsError::Build(e.to_string()))?;
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::debug!("a metrics recorder is already installed in this process");
        return Ok(global_handle().unwrap_or(handle));
    }
    let _ = GLOBAL.set(handle.clone());
    describe();
    Ok(handle)
}

static GLOBAL: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();

/// The handle of the recorder [`install`] installed, if any.
fn global_handle() -> Option<PrometheusHandle> {
    GLOBAL.get().cloned()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!("s3sftp_connections_active", "SSH connections open now");
    describe_counter!("s3sftp_connections_total", "SSH connections accepted");
    describe_counter!(
        "s3sftp_connections_refused_total",
        "connections refused, by reason"
    );
    describe_counter!(
        "s3sftp_logins_total",
        "login attempts, by method and result"
    );
    describe_gauge!("s3sftp_bans_active", "client addresses banned now");
    describe_counter!(
        "s3sftp_sftp_requests_total",
        "SFTP requests, by type and status"
    );
    describe_counter!(
        "s3sftp_transfers_total",
        "files uploaded or downloaded, by protocol, direction and result"
    );
    describe_counter!(
        "s3sftp_transfer_bytes_total",
        Unit::Bytes,
        "bytes of files uploaded or downloaded, by protocol, direction and result"
    );
    describe_counter!(
        "s3sftp_s3_requests_total",
        "S3 requests, by operation and HTTP status (\"error\" when no answer came)"
    );
    describe_histogram!(
        "s3sftp_s3_request_duration_seconds",
        Unit::Seconds,
        "time from sending an S3 request to its answer, retries included"
    );
    describe_counter!(
        "s3sftp_s3_retries_total",
        "S3 request attempts beyond the first, by operation"
    );
    describe_gauge!(
        "s3sftp_memory_budget_in_use_bytes",
        Unit::Bytes,
        "transfer buffer memory reserved from the global budget"
    );
    describe_gauge!(
        "s3sftp_memory_budget_bytes",
        Unit::Bytes,
        "size of the global transfer buffer budget"
    );
    describe_gauge!("s3sftp_ready", "1 while /readyz answers 200");
}

/// Counts an accepted connection while it lives: in the total at once, among the active
/// ones until dropped.
#[derive(Debug)]
pub struct OpenConnection(());

impl OpenConnection {
    pub fn count() -> Self {
        counter!("s3sftp_connections_total").increment(1);
        gauge!("s3sftp_connections_active").increment(1.0);
        OpenConnection(())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        gauge!("s3sftp_connections_active").decrement(1.0);
    }
}

/// A connection was refused before or during login (`reason`: banned, per_ip, total, ...).
pub fn connection_refused(reason: &'static str) {
    counter!("s3sftp_connections_refused_total", "reason" => reason).increment(1);
}

/// A login attempt ended (`method`: password, publickey; `result`: ok, refused).
pub fn login(method: &str, result: &'static str) {
    let method = match method {
        "password" => "password",
        "publickey" => "publickey",
        _ => "other",
    };
    counter!("s3sftp_logins_total", "method" => method, "result" => result).increment(1);
}

/// The number of banned addresses now.
pub fn bans_active(count: usize) {
    gauge!("s3sftp_bans_active").set(count as f64);
}

/// An SFTP request was answered with `status` (ok, no_such_file, failure, ...).
pub fn sftp_request(kind: &'static str, status: &'static str) {
    counter!("s3sftp_sftp_requests_total", "type" => kind, "status" => status).increment(1);
}

/// Which way a transfer went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Upload,
    Download,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
        }
    }
}

fn transfer_labels(
    protocol: &'static str,
    direction: Direction,
    ok: bool,
) -> [(&'static str, &'static str); 3] {
    [
        ("protocol", protocol),
        ("direction", direction.label()),
        ("result", if ok { "ok" } else { "failed" }),
    ]
}

/// A file transfer ended (`ok`: it completed) after moving `bytes` (counted here, or
/// already as they went with [`transfer_bytes`]: then pass 0).
pub fn transfer(protocol: &'static str, direction: Direction, ok: bool, bytes: u64) {
    let labels = transfer_labels(protocol, direction, ok);
    counter!("s3sftp_transfers_total", &labels).increment(1);
    if bytes > 0 {
        counter!("s3sftp_transfer_bytes_total", &labels).increment(bytes);
    }
}

/// Bytes of a transfer still going on, counted as they are served.
pub fn transfer_bytes(protocol: &'static str, direction: Direction, bytes: u64) {
    counter!(
        "s3sftp_transfer_bytes_total",
        &transfer_labels(protocol, direction, true)
    )
    .increment(bytes);
}

/// An S3 request ended after `elapsed` (retries included) with HTTP `status`, or with no
/// answer at all (`None`: connection failure, timeout).
pub fn s3_request(operation: &str, status: Option<u16>, elapsed: Duration) {
    let operation = operation.to_string();
    let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
    counter!("s3sftp_s3_requests_total", "operation" => operation.clone(), "status" => status)
        .increment(1);
    histogram!("s3sftp_s3_request_duration_seconds", "operation" => operation)
        .record(elapsed.as_secs_f64());
}

/// An S3 request was tried again.
pub fn s3_retry(operation: &str) {
    counter!("s3sftp_s3_retries_total", "operation" => operation.to_string()).increment(1);
}

/// The memory budget, sampled when metrics are rendered.
pub fn memory_budget(in_use: u64, total: u64) {
    gauge!("s3sftp_memory_budget_in_use_bytes").set(in_use as f64);
    gauge!("s3sftp_memory_budget_bytes").set(total as f64);
}

/// Whether the server is ready, sampled when metrics are rendered.
pub fn ready(ready: bool) {
    gauge!("s3sftp_ready").set(if ready { 1.0 } else { 0.0 });
}
