//! The audit log in `--log-format json`: a session doing every kind of operation yields
//! exactly the expected events, parsed field by field, with the connection's span (session
//! id, peer, user) on each.

use std::time::Duration;

use serde_json::Value;

use crate::common::log_capture::Capture;
use crate::common::*;

/// The audit events captured so far, parsed.
fn audit_events(capture: &Capture) -> Vec<Value> {
    capture
        .text()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("every log line is JSON"))
        .filter(|v| v["target"] == "s3sftp::audit")
        .collect()
}

/// The one event with `event` = `kind` and `file_path` = `path` (or any path if `None`).
fn one<'a>(events: &'a [Value], kind: &str, path: Option<&str>) -> &'a Value {
    let found: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == kind && path.is_none_or(|p| e["file_path"] == p))
        .collect();
    assert_eq!(found.len(), 1, "one {kind} {path:?} event in {events:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_operation_yields_its_json_event() {
    let Some(capture) = Capture::alone_json("info").await else {
        return;
    };
    let t = TestServer::start().await;
    let data = random_bytes(300_000, 9);
    let local = write_local(t.dir.path(), "a.bin", &data);
    let back = t.dir.path().join("b.back");
    let batch = format!(
        "mkdir d\nput {} d/a.bin\nrename d/a.bin d/b.bin\nget d/b.bin {}\nchmod 600 d/b.bin\nrm d/b.bin\nrmdir d\n",
        local.display(),
        back.display()
    );
    let out = t.sftp(&t.alice, &batch).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(t
        .russh_sftp_password("bob", "wrong password")
        .await
        .is_err());
    let exec = t.ssh_exec(&t.alice, "sha256sum nothing.bin", b"").await;
    assert!(!exec.status.success(), "no such file");

    // Logouts are logged when the connection task ends, just after the client has gone.
    let mut events = Vec::new();
    for _ in 0..100 {
        events = audit_events(capture);
        if events.iter().filter(|e| e["event"] == "logout").count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let upload = one(&events, "upload", Some("/d/a.bin"));
    assert_eq!(upload["protocol"], "SFTP");
    assert_eq!(upload["size_bytes"], data.len() as u64);
    assert_eq!(upload["status"], "ok");
    assert!(upload["elapsed_ms"].is_u64());
    assert!(upload["speed_bytes_per_sec"].is_u64());
    assert_eq!(upload["span"]["user"], "alice");
    assert!(upload["span"]["peer"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));
    assert!(upload["span"]["id"].is_u64());
    let session = upload["span"]["id"].clone();

    let download = one(&events, "download", Some("/d/b.bin"));
    assert_eq!(download["size_bytes"], data.len() as u64);
    assert_eq!(download["status"], "ok");
    assert_eq!(download["span"]["id"], session);

    let rename = one(&events, "rename", Some("/d/a.bin"));
    assert_eq!(rename["target_path"], "/d/b.bin");
    assert_eq!(rename["status"], "ok");
    for (kind, path) in [
        ("mkdir", "/d"),
        ("rmdir", "/d"),
        ("delete", "/d/b.bin"),
        ("setstat", "/d/b.bin"),
    ] {
        let e = one(&events, kind, Some(path));
        assert_eq!(e["status"], "ok", "{kind}");
        assert_eq!(e["protocol"], "SFTP", "{kind}");
        assert_eq!(e["span"]["id"], session, "{kind}");
        assert_eq!(e["span"]["user"], "alice", "{kind}");
    }

    let logins: Vec<&Value> = events.iter().filter(|e| e["event"] == "login").collect();
    assert_eq!(logins.len(), 2, "alice's sftp and exec connections");
    assert!(logins
        .iter()
        .all(|e| e["username"] == "alice" && e["method"] == "publickey" && e["status"] == "ok"));
    let failed = one(&events, "login_failed", None);
    assert_eq!(failed["username"], "bob");
    assert_eq!(failed["method"], "password");
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"].as_str().is_some_and(|e| !e.is_empty()));

    let exec = one(&events, "exec", None);
    assert_eq!(exec["command"], "sha256sum nothing.bin");
    assert_eq!(exec["protocol"], "SSH");
    assert_eq!(exec["span"]["user"], "alice");

    let logouts: Vec<&Value> = events.iter().filter(|e| e["event"] == "logout").collect();
    assert_eq!(
        logouts.len(),
        2,
        "one per logged-in connection: {events:#?}"
    );
    assert!(logouts.iter().any(|e| e["span"]["id"] == session));
    assert!(logouts.iter().all(|e| e["elapsed_ms"].is_u64()));

    // Nothing else: every event is one of the above.
    let expected = 1 + 1 + 1 + 4 + 2 + 1 + 1 + 2;
    assert_eq!(events.len(), expected, "{events:#?}");
    t.shutdown().await;
}
