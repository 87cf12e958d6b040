//! A gateway killed (SIGKILL) in the middle of uploads loses nothing acknowledged: every
//! upload whose CLOSE was answered is in the bucket byte for byte, the upload it was
//! receiving leaves no object, its pending multipart upload is aborted by the orphan sweep
//! of the gateway that takes over, and the client, reconnected there, sees the same host
//! key and finishes its work.

use std::process::Stdio;
use std::time::{Duration, Instant};

use russh_sftp::protocol::{FileAttributes, OpenFlags};
use s3sftp::storage::client::S3Settings;

use crate::common::own_store::own_store;
use crate::common::{
    random_bytes, russh_sftp_password_at, scanned_host_key, sha256, test_hash, RusshSftp,
    TestServer, PASSWORD,
};

/// A free loopback port (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The `s3sftp serve` binary as a child process over `settings`, on `port`, with the host
/// key at `host_key` (an `s3://` location) and the users file at `users`; killed if the
/// test ends early.
fn child_gateway(
    settings: &S3Settings,
    users: &std::path::Path,
    host_key: &str,
    state: &std::path::Path,
    port: u16,
) -> tokio::process::Child {
    let (key, secret) = settings.credentials.clone().expect("keys");
    tokio::process::Command::new(env!("CARGO_BIN_EXE_s3sftp"))
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(state)
        .arg("--users-file")
        .arg(users)
        .args(["--host-key", host_key])
        .args(["--bucket", &settings.bucket])
        .args([
            "--s3-endpoint",
            settings.endpoint.as_deref().expect("an endpoint"),
        ])
        .args([
            "--s3-region",
            settings.region.as_deref().unwrap_or("us-east-1"),
        ])
        .arg("--s3-path-style")
        .args(["--part-size-mib", "5", "--log", "warn"])
        .env("S3SFTP_S3_ACCESS_KEY", key)
        .env("S3SFTP_S3_SECRET_KEY", secret)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("s3sftp serve runs")
}

/// Logs in to the gateway on `port` as `user` with the test password; waits (up to a
/// generous deadline) for a gateway that is still starting.
async fn login(port: u16, user: &str) -> RusshSftp {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match russh_sftp_password_at(port, user, PASSWORD).await {
            Ok(s) => return s,
            Err(e) => assert!(Instant::now() < deadline, "no login on port {port}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_loses_no_acknowledged_upload() {
    let (settings, view) = own_store("gateway-kill").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = format!("kill-{:08x}/alice/", rand::random::<u32>());
    let users = dir.path().join("users.json");
    let json = serde_json::json!({ "users": [
        { "username": "alice", "password": test_hash(PASSWORD), "key_prefix": prefix },
    ]});
    std::fs::write(&users, json.to_string()).expect("users file");
    // Its own key object: other suites share the bucket of an external S3 server.
    let host_key_location = format!(
        "s3://{}/.s3sftp/host-kill-{:08x}",
        settings.bucket,
        rand::random::<u32>()
    );

    // Gateway A, a real process, takes some uploads.
    let port = free_port();
    let state = dir.path().join("state-a");
    let mut a = child_gateway(&settings, &users, &host_key_location, &state, port);
    let s = login(port, "alice").await;
    let key_a = scanned_host_key(port);
    let mut acked = Vec::new();
    for (i, len) in [1_000usize, 300_000, 6 * 1024 * 1024, 11 * 1024 * 1024]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(len, 40 + i as u64);
        let name = format!("done-{i}.bin");
        s.upload(&format!("/{name}"), &data)
            .await
            .expect("upload acknowledged");
        acked.push((name, data));
    }

    // One more upload under way: two parts in S3, no CLOSE, when A dies.
    let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
    let h = s
        .raw
        .open("/cut.bin", flags, FileAttributes::default())
        .await
        .expect("open")
        .handle;
    let cut = random_bytes(12 * 1024 * 1024, 50);
    for (i, chunk) in cut.chunks(32 * 1024).enumerate() {
        s.raw
            .write(&h, (i * 32 * 1024) as u64, chunk.to_vec())
            .await
            .expect("write");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while view.pending_uploads(&prefix).await.is_empty() {
        assert!(Instant::now() < deadline, "no multipart upload began");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.start_kill().expect("SIGKILL");
    a.wait().await.expect("gateway A gone");
    drop(s);

    // What was acknowledged is there; the cut-off upload left no object, only its
    // pending multipart upload, which A could not abort.
    for (name, data) in &acked {
        let stored = view.object(&format!("{prefix}{name}")).await;
        assert_eq!(stored.as_deref().map(sha256), Some(sha256(data)), "{name}");
    }
    assert_eq!(view.object_size(&format!("{prefix}cut.bin")).await, None);
    assert!(!view.pending_uploads(&prefix).await.is_empty());

    // Gateway B takes over (in process; same bucket, users file and host key). Its orphan
    // sweep at start aborts A's upload, here older than the 1 s age it is given.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b_settings = settings.clone();
    let b = TestServer::start_with(move |c| {
        c.s3 = Some(b_settings);
        c.users_file = users.clone();
        c.host_keys = vec![host_key_location.into()];
        c.orphan_age = Duration::from_secs(1);
    })
    .await;
    assert_eq!(scanned_host_key(b.port), key_a, "the same host identity");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending = view.pending_uploads(&prefix).await;
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A's multipart upload still pending: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The client reconnects, now to B, and sends the cut-off file again.
    let s = login(b.port, "alice").await;
    s.upload("/cut.bin", &cut).await.expect("upload through B");
    acked.push(("cut.bin".into(), cut));
    let mut keys = view.keys(&prefix).await;
    keys.sort();
    let mut want: Vec<String> = acked
        .iter()
        .map(|(name, _)| format!("{prefix}{name}"))
        .collect();
    want.sort();
    assert_eq!(
        keys, want,
        "exactly the acknowledged files, nothing partial"
    );
    for (name, data) in &acked {
        let stored = view.object(&format!("{prefix}{name}")).await;
        assert_eq!(stored.as_deref().map(sha256), Some(sha256(data)), "{name}");
    }
    drop(s);
    b.shutdown().await;
}
