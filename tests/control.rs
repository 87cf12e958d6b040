//! The admin commands of a running server (`sessions`, `kick`, `bans`, `unban`): the
//! `s3sftp` binary against a live in-process server, over its control socket.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::common::*;
use russh_sftp::protocol::{FileAttributes, OpenFlags};
use serde_json::Value;

fn state_dir(t: &TestServer) -> PathBuf {
    t.dir.path().join("state")
}

/// Runs `s3sftp ARGS --state-dir <the server's>`.
async fn admin(state: &Path, args: &[&str]) -> Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_s3sftp"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output();
    tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("the command finished in time")
        .expect("the command runs")
}

/// `s3sftp sessions --json`, parsed.
async fn sessions(t: &TestServer) -> Vec<Value> {
    let out = admin(&state_dir(t), &["sessions", "--json"]).await;
    assert!(out.status.success(), "sessions: {}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("sessions --json is JSON");
    v.as_array().expect("an array").clone()
}

fn of_user<'a>(sessions: &'a [Value], user: &str) -> Vec<&'a Value> {
    sessions.iter().filter(|s| s["user"] == user).collect()
}

async fn eventually(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 10 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_lists_a_live_upload_with_its_bytes() {
    let t = TestServer::start().await;
    let socket = t
        .server()
        .control_socket()
        .expect("control socket")
        .to_owned();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the control socket is private");
    assert!(sessions(&t).await.is_empty(), "nobody logged in yet");

    let s = t.russh_sftp(&t.alice).await;
    let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
    let h = s
        .raw
        .open("growing.bin", flags, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    let chunk = vec![7u8; 32 * 1024];
    for i in 0..2u64 {
        s.raw.write(&h, i * 32 * 1024, chunk.clone()).await.unwrap();
    }
    let all = sessions(&t).await;
    let alice = of_user(&all, "alice");
    assert_eq!(alice.len(), 1, "{all:?}");
    let a = alice[0];
    assert!(a["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{a}");
    assert!(a["id"].as_u64().unwrap() > 0);
    assert!(a["since"].as_str().unwrap().ends_with('Z'), "{a}");
    assert_eq!(a["open_files"], 1, "{a}");
    assert_eq!(a["bytes_up"], 64 * 1024, "{a}");
    let transfers = a["transfers"].as_array().unwrap();
    assert_eq!(transfers.len(), 1, "{a}");
    assert!(transfers[0]["path"]
        .as_str()
        .unwrap()
        .ends_with("growing.bin"));
    assert_eq!(transfers[0]["direction"], "upload");
    assert_eq!(transfers[0]["bytes"], 64 * 1024);

    // More data: the transfer's bytes grow.
    for i in 2..5u64 {
        s.raw.write(&h, i * 32 * 1024, chunk.clone()).await.unwrap();
    }
    let all = sessions(&t).await;
    let a = of_user(&all, "alice")[0];
    assert_eq!(a["transfers"][0]["bytes"], 5 * 32 * 1024, "{a}");
    assert_eq!(a["bytes_up"], 5 * 32 * 1024, "{a}");

    // The table names her too.
    let out = admin(&state_dir(&t), &["sessions"]).await;
    assert!(out.status.success());
    let table = stdout(&out);
    assert!(table.starts_with("SESSION"), "{table}");
    assert!(
        table.contains("alice") && table.contains("growing.bin"),
        "{table}"
    );

    // Closed: no file open, the bytes stay counted.
    s.raw.close(&h).await.unwrap();
    let all = sessions(&t).await;
    let a = of_user(&all, "alice")[0];
    assert_eq!(a["open_files"], 0, "{a}");
    assert!(a["transfers"].as_array().unwrap().is_empty());
    assert_eq!(a["bytes_up"], 5 * 32 * 1024, "{a}");
    drop(s);
    t.shutdown().await;
    assert!(!socket.exists(), "the socket is removed at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kick_user_ends_all_her_sessions_and_she_can_come_back() {
    let t = TestServer::start().await;
    let a1 = t.russh_login(&t.alice).await;
    let a2 = t.russh_login(&t.alice).await;
    let b = t.russh_login(&t.bob).await;
    assert_eq!(of_user(&sessions(&t).await, "alice").len(), 2);

    let out = admin(&state_dir(&t), &["kick", "alice"]).await;
    assert!(out.status.success(), "kick: {}", stderr(&out));
    assert!(
        stderr(&out).contains("2 session(s) of alice"),
        "{}",
        stderr(&out)
    );
    assert!(
        eventually(15, || a1.is_closed() && a2.is_closed()).await,
        "both of alice's connections end"
    );
    assert!(!b.is_closed(), "bob is left alone");
    let mut gone = false;
    for _ in 0..50 {
        if of_user(&sessions(&t).await, "alice").is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "alice has no session left");
    assert_eq!(of_user(&sessions(&t).await, "bob").len(), 1);

    // She may log in again at once.
    let s = t.russh_sftp(&t.alice).await;
    s.upload("back.txt", b"hello").await.unwrap();

    // A user with no session: an error, with a non-zero status.
    let out = admin(&state_dir(&t), &["kick", "carol"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("carol has no session"),
        "{}",
        stderr(&out)
    );
    drop((s, b));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kick_session_ends_only_that_one() {
    let t = TestServer::start().await;
    let first = t.russh_login(&t.alice).await;
    let second = t.russh_login(&t.alice).await;
    let all = sessions(&t).await;
    let mut ids: Vec<u64> = of_user(&all, "alice")
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids.len(), 2);
    // Sessions are numbered in connection order.
    let out = admin(&state_dir(&t), &["kick", &ids[0].to_string()]).await;
    assert!(out.status.success(), "kick: {}", stderr(&out));
    assert!(
        eventually(15, || first.is_closed()).await,
        "the kicked one ends"
    );
    assert!(!second.is_closed(), "the other one stays");
    let left: Vec<u64> = of_user(&sessions(&t).await, "alice")
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    assert_eq!(left, [ids[1]]);
    let out = admin(&state_dir(&t), &["kick", "999999"]).await;
    assert!(!out.status.success(), "no such session");
    assert!(
        stderr(&out).contains("no logged-in session 999999"),
        "{}",
        stderr(&out)
    );
    let out = admin(&state_dir(&t), &["kick", "--user", &ids[1].to_string()]).await;
    assert!(
        stderr(&out).contains(&format!("user {} has no session", ids[1])),
        "--user takes digits as a user name: {}",
        stderr(&out)
    );
    assert!(!second.is_closed());
    drop(second);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bans_lists_a_banned_address_and_unban_lifts_it() {
    let t = TestServer::start_with(|c| {
        c.ssh.guard.ban_threshold = 3;
        c.ssh.guard.ban_time = Duration::from_secs(600);
    })
    .await;
    let out = admin(&state_dir(&t), &["bans"]).await;
    assert_eq!(stdout(&out), "no bans\n");
    let attacker = [127, 0, 0, 12];
    for _ in 0..3 {
        assert_eq!(password_ok(&t, attacker, "wrong").await, Ok(false));
    }
    assert!(
        !matches!(password_ok(&t, attacker, PASSWORD).await, Ok(true)),
        "banned"
    );
    let out = admin(&state_dir(&t), &["bans", "--json"]).await;
    assert!(out.status.success(), "bans: {}", stderr(&out));
    let bans: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bans = bans.as_array().unwrap();
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0]["source"], "127.0.0.12");
    assert_eq!(bans[0]["bans"], 1);
    let left = bans[0]["seconds_left"].as_u64().unwrap();
    assert!(left > 500 && left <= 601, "{left}");
    let table = stdout(&admin(&state_dir(&t), &["bans"]).await);
    assert!(table.contains("127.0.0.12"), "{table}");

    let out = admin(&state_dir(&t), &["unban", "127.0.0.12"]).await;
    assert!(out.status.success(), "unban: {}", stderr(&out));
    assert!(stderr(&out).contains("lifted"), "{}", stderr(&out));
    assert_eq!(stdout(&admin(&state_dir(&t), &["bans"]).await), "no bans\n");
    assert_eq!(
        password_ok(&t, attacker, PASSWORD).await,
        Ok(true),
        "a new connection gets in"
    );
    let out = admin(&state_dir(&t), &["unban", "not-an-ip"]).await;
    assert!(!out.status.success());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_socket_is_replaced() {
    let t = TestServer::start_with(|c| {
        std::fs::create_dir_all(&c.state_dir).unwrap();
        let path = c.state_dir.join("control.sock");
        // A socket nobody listens on any more, as a crashed server leaves it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
    })
    .await;
    assert!(t.server().control_socket().is_some());
    assert!(sessions(&t).await.is_empty(), "the new socket answers");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_socket_in_a_state_dir_others_can_write() {
    let t = TestServer::start_with(|c| {
        std::fs::create_dir_all(&c.state_dir).unwrap();
        std::fs::set_permissions(&c.state_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    })
    .await;
    assert!(
        t.server().control_socket().is_none(),
        "refused, with a warning"
    );
    assert!(!state_dir(&t).join("control.sock").exists());
    // The server itself runs.
    let s = t.russh_sftp(&t.alice).await;
    s.upload("ok.txt", b"x").await.unwrap();
    let out = admin(&state_dir(&t), &["sessions"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("control socket"), "{}", stderr(&out));
    drop(s);
    t.shutdown().await;
}
