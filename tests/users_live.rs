//! Permissions, per-user limits and live reload, through the admin CLI (as a process),
//! a running server, and real clients (OpenSSH `sftp`, `scp -O`, the russh client).

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use crate::common::*;
use russh_sftp::protocol::{FileAttributes, OpenFlags};

fn users_file(t: &TestServer) -> PathBuf {
    t.dir.path().join("users.json")
}

/// Runs `s3sftp users <args>` on the test server's users file.
fn admin(t: &TestServer, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_s3sftp"))
        .arg("users")
        .arg("--users-file")
        .arg(users_file(t))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("s3sftp runs");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "users {args:?}: {}", stderr(&out));
    out
}

/// Waits (up to `secs`) until `check` holds.
async fn eventually<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..secs * 10 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_account_ends_its_sessions_and_aborts_uploads() {
    let t = TestServer::start().await;
    let s = t.russh_sftp(&t.alice).await;
    let h = s
        .raw
        .open(
            "/interrupted.bin",
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
            FileAttributes::empty(),
        )
        .await
        .expect("open")
        .handle;
    let data = random_bytes(PART + 100, 7);
    for (i, chunk) in data.chunks(32 * 1024).enumerate() {
        s.raw
            .write(&h, (i * 32 * 1024) as u64, chunk.to_vec())
            .await
            .expect("write");
    }
    assert!(
        eventually(10, || async {
            !t.s3.pending_uploads(&t.alice.prefix).await.is_empty()
        })
        .await,
        "a multipart upload is under way"
    );
    let bob = t.russh_sftp(&t.bob).await;

    // Alice becomes read-only: her live session ends within 5 s, the upload leaves nothing.
    admin(
        &t,
        &["set", "alice", "--permission", "/=list,download"],
        None,
    );
    assert!(
        eventually(5, || async { s.raw.realpath(".").await.is_err() }).await,
        "alice's session was closed"
    );
    assert!(
        t.s3.wait_no_pending_uploads(&t.alice.prefix)
            .await
            .is_empty(),
        "her upload was aborted"
    );
    assert_eq!(
        t.s3.object_size(&format!("{}interrupted.bin", t.alice.prefix))
            .await,
        None
    );
    // Bob was not touched.
    bob.raw.realpath(".").await.expect("bob's session lives on");

    // Her new session is read-only.
    t.s3.put(&format!("{}readme.txt", t.alice.prefix), b"hello\n")
        .await;
    let up = write_local(t.dir.path(), "up.txt", b"new\n");
    let out = t
        .sftp(
            &t.alice,
            &format!(
                "ls -l\nget readme.txt {dir}/got.txt\n-put {up} new.txt\n-rm readme.txt\n-mkdir d\n",
                dir = t.dir.path().display(),
                up = up.display()
            ),
        )
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(t.dir.path().join("got.txt")).unwrap(),
        b"hello\n"
    );
    assert!(
        stderr(&out).to_lowercase().contains("permission denied"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        t.s3.object_size(&format!("{}new.txt", t.alice.prefix))
            .await,
        None
    );
    assert!(t
        .s3
        .object(&format!("{}readme.txt", t.alice.prefix))
        .await
        .is_some());

    // A new user logs in within 2 s of being added; a removed user is cut off.
    let carol_prefix = format!("{}carol/", t.alice.prefix.trim_end_matches("alice/"));
    admin(
        &t,
        &[
            "add",
            "carol",
            "--prefix",
            &carol_prefix,
            "--password-stdin",
        ],
        Some("carol's password\n"),
    );
    assert!(
        eventually(3, || async {
            t.russh_sftp_password("carol", "carol's password")
                .await
                .is_ok()
        })
        .await,
        "carol can log in"
    );
    admin(&t, &["rm", "bob"], None);
    assert!(
        eventually(5, || async { bob.raw.realpath(".").await.is_err() }).await,
        "bob's session was closed"
    );
    let out = t.sftp(&t.bob, "ls\n").await;
    assert!(!out.status.success(), "bob can no longer log in");

    // A broken file is not applied: the last good one stays.
    std::fs::write(users_file(&t), b"{ not json").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let out = t.sftp(&t.alice, "ls\n").await;
    assert!(
        out.status.success(),
        "alice still logs in: {}",
        stderr(&out)
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_only_drop_box_and_a_read_only_subfolder() {
    let t = TestServer::start().await;
    admin(
        &t,
        &["set", "alice", "--permission", "/=upload,create_dirs"],
        None,
    );
    admin(
        &t,
        &[
            "set",
            "bob",
            "--permission",
            "/=*",
            "--permission",
            "/reference=list,download",
        ],
        None,
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // alice: a drop box. Upload yes; list, download, overwrite no.
    let f = write_local(t.dir.path(), "drop.txt", b"dropped\n");
    let out = t
        .sftp(&t.alice, &format!("put {} drop.txt\n", f.display()))
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        t.s3.object(&format!("{}drop.txt", t.alice.prefix))
            .await
            .as_deref(),
        Some(&b"dropped\n"[..])
    );
    // `get` stats the file first; STAT needs `list` (issue 18), and OpenSSH `sftp` reports
    // any refused STAT as "not found". The download must not happen either way.
    let got = t.dir.path().join("x");
    let out = t
        .sftp(&t.alice, &format!("get drop.txt {}\n", got.display()))
        .await;
    assert!(
        stderr(&out).contains("Permission denied") || stderr(&out).contains("not found"),
        "get must be refused: {} {}",
        stdout(&out),
        stderr(&out)
    );
    assert!(!got.exists(), "nothing was downloaded");
    for denied in [
        "ls\n".to_string(),
        format!("put {} drop.txt\n", f.display()),
    ] {
        let out = t.sftp(&t.alice, &denied).await;
        // OpenSSH sftp reports a refused `ls` but still exits 0.
        assert!(
            stderr(&out).contains("Permission denied"),
            "{denied} must be refused: {} {}",
            stdout(&out),
            stderr(&out)
        );
    }
    let out = t
        .scp(
            &t.alice,
            &["-O", f.to_str().unwrap(), "REMOTE:/via-scp.txt"],
        )
        .await;
    assert!(out.status.success(), "scp -O upload: {}", stderr(&out));
    let out = t
        .scp(
            &t.alice,
            &[
                "-O",
                "REMOTE:/via-scp.txt",
                t.dir.path().join("back").to_str().unwrap(),
            ],
        )
        .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );

    // bob: everything, except that /reference is read-only.
    t.s3.put(&format!("{}reference/manual.txt", t.bob.prefix), b"rtfm\n")
        .await;
    let out = t
        .sftp(
            &t.bob,
            &format!(
                "put {f} mine.txt\nget reference/manual.txt {d}/manual.txt\n",
                d = t.dir.path().display(),
                f = f.display()
            ),
        )
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    for denied in [
        format!("put {} reference/new.txt\n", f.display()),
        "rm reference/manual.txt\n".to_string(),
        "rename reference/manual.txt moved.txt\n".to_string(),
    ] {
        let out = t.sftp(&t.bob, &denied).await;
        assert!(
            stderr(&out).contains("Permission denied"),
            "{denied} must be refused: {}",
            stderr(&out)
        );
    }
    let out = t
        .scp(
            &t.bob,
            &["-O", f.to_str().unwrap(), "REMOTE:/reference/x.txt"],
        )
        .await;
    assert!(!out.status.success(), "scp -O into /reference is refused");
    assert_eq!(
        t.s3.object(&format!("{}reference/manual.txt", t.bob.prefix))
            .await
            .as_deref(),
        Some(&b"rtfm\n"[..])
    );
    assert_eq!(
        t.s3.object_size(&format!("{}reference/x.txt", t.bob.prefix))
            .await,
        None
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_user_limits_refuse_logins_like_a_wrong_password() {
    let t = TestServer::start().await;
    admin(&t, &["set", "alice", "--max-sessions", "1"], None);
    admin(&t, &["set", "bob", "--allowed-ip", "10.0.0.0/8"], None);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let first = t
        .russh_sftp_password("alice", PASSWORD)
        .await
        .expect("first session");
    assert!(
        t.russh_sftp_password("alice", PASSWORD).await.is_err(),
        "max_sessions 1"
    );
    drop(first);
    assert!(
        eventually(5, || async {
            t.russh_sftp_password("alice", PASSWORD).await.is_ok()
        })
        .await,
        "a slot frees when the session ends"
    );
    assert!(
        t.russh_sftp_password("bob", PASSWORD).await.is_err(),
        "127.0.0.1 is not in bob's allowed_ips"
    );
    admin(
        &t,
        &[
            "set",
            "bob",
            "--any-ip",
            "--expires-at",
            "2020-01-01T00:00:00Z",
        ],
        None,
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        t.russh_sftp_password("bob", PASSWORD).await.is_err(),
        "expired account"
    );
    admin(&t, &["set", "bob", "--no-expiry"], None);
    assert!(
        eventually(3, || async {
            t.russh_sftp_password("bob", PASSWORD).await.is_ok()
        })
        .await,
        "bob is back"
    );
    t.shutdown().await;
}
