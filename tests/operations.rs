//! The operations listener: `/metrics` scraped and parsed around real transfers, `/healthz`,
//! and `/readyz` following S3 (through the fault proxy) and the shutdown drain.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use s3sftp::server::{OpsSettings, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::alone::in_own_process;
use crate::common::fault_proxy::{quick_retries, start_behind_proxy, Fault, Op};
use crate::common::*;

fn ops_on(c: &mut ServerConfig, drain_delay: Duration) {
    c.ops = Some(OpsSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        probe_every: Duration::from_millis(500),
        drain_delay,
    });
}

/// GET `path` from the operations listener: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("an HTTP status line");
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// Polls `path` until it answers `want` (up to 30 s); whether it did.
async fn until_status(addr: SocketAddr, path: &str, want: u16) -> bool {
    for _ in 0..300 {
        if get(addr, path).await.0 == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// One sample of the Prometheus text: name and labels.
type Series = (String, BTreeMap<String, String>);

/// Parses the Prometheus text format (the lines s3sftp's exporter writes).
fn parse(text: &str) -> Vec<(Series, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("label=value");
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            let value = value.parse().expect("a number");
            ((name.to_string(), labels), value)
        })
        .collect()
}

/// The sum of the samples named `name` whose labels include `labels` (0 when none).
fn value(samples: &[(Series, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|((n, l), _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

async fn scrape(addr: SocketAddr) -> Vec<(Series, f64)> {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_move_by_the_right_amounts_around_transfers() {
    // The recorder is one per process: alone, no other test's server feeds it.
    if !in_own_process().await {
        return;
    }
    let t = TestServer::start_with(|c| ops_on(c, Duration::ZERO)).await;
    let ops = t.server().ops_addr().expect("operations listener");
    assert_eq!(get(ops, "/healthz").await.0, 200);
    assert!(
        until_status(ops, "/readyz", 200).await,
        "ready once S3 answered"
    );

    let before = scrape(ops).await;
    let data = random_bytes(3 * MIB + 17, 5);
    let s = t.russh_sftp(&t.alice).await;
    s.upload("/m.bin", &data).await.expect("upload");
    let local = t.dir.path().join("m.back");
    let out = t
        .sftp(&t.alice, &format!("get m.bin {}", local.display()))
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&local).unwrap(), data);
    drop(s);
    let after = scrape(ops).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let size = data.len() as f64;
    let upload = [
        ("protocol", "sftp"),
        ("direction", "upload"),
        ("result", "ok"),
    ];
    let download = [
        ("protocol", "sftp"),
        ("direction", "download"),
        ("result", "ok"),
    ];
    assert_eq!(delta("s3sftp_transfers_total", &upload), 1.0);
    assert_eq!(delta("s3sftp_transfer_bytes_total", &upload), size);
    assert_eq!(delta("s3sftp_transfers_total", &download), 1.0);
    assert_eq!(delta("s3sftp_transfer_bytes_total", &download), size);
    assert_eq!(
        delta(
            "s3sftp_logins_total",
            &[("method", "publickey"), ("result", "ok")]
        ),
        2.0
    );
    assert_eq!(delta("s3sftp_connections_total", &[]), 2.0);
    assert!(
        delta(
            "s3sftp_sftp_requests_total",
            &[("type", "open"), ("status", "ok")]
        ) >= 2.0
    );
    assert!(
        delta(
            "s3sftp_sftp_requests_total",
            &[("type", "write"), ("status", "ok")]
        ) >= 96.0
    );
    // 3 MiB is under the test servers' 5 MiB part: one PutObject.
    assert_eq!(
        delta(
            "s3sftp_s3_requests_total",
            &[("operation", "PutObject"), ("status", "200")]
        ),
        1.0
    );
    assert!(
        delta("s3sftp_s3_requests_total", &[("operation", "GetObject")]) >= 1.0,
        "the download's ranged GETs are counted"
    );
    assert_eq!(
        delta(
            "s3sftp_s3_request_duration_seconds_count",
            &[("operation", "PutObject")]
        ),
        1.0
    );
    assert_eq!(value(&after, "s3sftp_ready", &[]), 1.0);
    assert!(value(&after, "s3sftp_memory_budget_bytes", &[]) > 0.0);
    let (status, _) = get(ops, "/nowhere").await;
    assert_eq!(status, 404);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_follows_s3_and_turns_503_first_on_shutdown() {
    let (t, proxy, _view) = start_behind_proxy(|c| {
        quick_retries(c, 1, Duration::from_secs(5));
        ops_on(c, Duration::from_secs(3));
    })
    .await;
    let ops = t.server().ops_addr().expect("operations listener");
    assert!(
        until_status(ops, "/readyz", 200).await,
        "ready once S3 answered"
    );

    // S3 stops answering the probe's listing: not ready within a few probes.
    proxy.add(Op::ListObjectsV2, Fault::Status(503), 100_000);
    assert!(
        until_status(ops, "/readyz", 503).await,
        "503 while S3 fails"
    );
    let (_, body) = get(ops, "/readyz").await;
    assert!(body.contains("S3"), "{body}");
    assert_eq!(get(ops, "/healthz").await.0, 200, "alive all the same");
    proxy.clear();
    assert!(until_status(ops, "/readyz", 200).await, "ready again");

    // Shutdown: /readyz fails first, while SSH still accepts for the drain delay.
    let ssh = t.server().local_addr();
    let port = t.port;
    let mut t = t;
    let server = t.server.take().expect("running");
    let stopping = tokio::spawn(server.shutdown());
    assert!(
        until_status(ops, "/readyz", 503).await,
        "503 during the drain"
    );
    let (_, body) = get(ops, "/readyz").await;
    assert!(body.contains("draining"), "{body}");
    let still = tokio::net::TcpStream::connect(ssh).await;
    assert!(
        still.is_ok(),
        "SSH on port {port} still accepts during the drain delay"
    );
    stopping.await.expect("shutdown");
}
