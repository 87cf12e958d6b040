//! Hostile SSH clients (issue 18, the SSH side): raw TCP sockets and russh clients written
//! here that flood unclaimed channels, storm the password check, sit on the handshake,
//! open too many channels or outlive their account, each asserting the bound the server
//! keeps, not just that it survives. Deadlines are generous; no test asserts speed.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use russh::keys::PrivateKeyWithHashAlg;
use russh::MethodKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A TCP connection to the server from a chosen loopback address (Linux routes all of
/// 127/8 to lo), so a test can act as several client addresses.
async fn tcp_from(t: &TestServer, from: [u8; 4]) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind((Ipv4Addr::from(from), 0).into()).expect("bind");
    socket
        .connect(([127, 0, 0, 1], t.port).into())
        .await
        .expect("connect")
}

/// A russh client connection from `from`.
async fn ssh_from(
    t: &TestServer,
    from: [u8; 4],
) -> Result<russh::client::Handle<AcceptAll>, String> {
    let stream = tcp_from(t, from).await;
    let config = Arc::new(russh::client::Config::default());
    tokio::time::timeout(
        Duration::from_secs(30),
        russh::client::connect_stream(config, stream, AcceptAll),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| e.to_string())
}

/// Sends a banner only, then waits for the server to close the socket; returns what the
/// server sent, or `None` if it was still open after `secs`.
async fn banner_then_wait_for_close(mut socket: TcpStream, secs: u64) -> Option<Vec<u8>> {
    let _ = socket.write_all(b"SSH-2.0-hostile_test\r\n").await;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(secs), read_all)
        .await
        .ok()?;
    Some(received)
}

/// Polls `check` every 100 ms for up to `secs` seconds.
async fn eventually(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 10 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check()
}

/// Rewrites the users file with `edit` applied to the entry of `name`, reloads it, and
/// waits until the server uses it.
async fn edit_user(
    t: &TestServer,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
    applied: impl Fn(&s3sftp::users::User) -> bool,
) {
    let path = t.dir.path().join("users.json");
    let mut users: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read users")).expect("json");
    let entry = users["users"]
        .as_array_mut()
        .expect("users")
        .iter_mut()
        .find(|u| u["username"] == name)
        .expect("user");
    edit(entry);
    let tmp = t.dir.path().join("users.json.new");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&users).expect("json")).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    t.server().reload_users();
    let shared = t.server().shared().clone();
    let done = eventually(10, || shared.users().get(name).is_some_and(&applied)).await;
    assert!(done, "the users file was reloaded");
}

/// The resident memory of this process (the server runs in it), in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// Item 2: a channel with no subsystem flooded with data must not wedge its connection,
/// and is closed when no request comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooded_unclaimed_channel_does_not_wedge_the_connection() {
    let t = TestServer::start_with(|c| c.ssh.channel_claim_timeout = Duration::from_secs(2)).await;
    let handle = t.russh_login(&t.alice).await;
    let mut idle = handle.channel_open_session().await.expect("open");
    // Far more messages than russh queues for a channel nobody reads (100).
    for _ in 0..400 {
        idle.data_bytes(vec![b'x'; 256]).await.expect("data");
    }
    // The same connection still serves a new SFTP session.
    let sftp = tokio::time::timeout(Duration::from_secs(30), RusshSftp::open(handle))
        .await
        .expect("the connection is not wedged")
        .expect("sftp");
    let cwd = tokio::time::timeout(Duration::from_secs(30), sftp.raw.realpath("."))
        .await
        .expect("answered")
        .expect("realpath");
    assert_eq!(cwd.files.len(), 1);
    // The channel that never asked for anything is closed by the server.
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match idle.wait().await {
                None | Some(russh::ChannelMsg::Close) => return,
                Some(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the unclaimed channel was closed");
    sftp.raw
        .realpath(".")
        .await
        .expect("the SFTP session goes on");
    t.shutdown().await;
}

/// Item 2: kicking a user (disabled in the users file) ends its connection, mid-flood,
/// and frees its session registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kick_ends_a_flooding_connection_and_frees_its_registration() {
    let t = TestServer::start().await;
    let handle = t.russh_login(&t.bob).await;
    let flood = handle.channel_open_session().await.expect("open");
    let flooder = tokio::spawn(async move {
        loop {
            if flood.data_bytes(vec![b'x'; 1024]).await.is_err() {
                return;
            }
        }
    });
    let shared = t.server().shared().clone();
    assert!(
        eventually(10, || shared
            .registry
            .logged_in()
            .contains(&"bob".to_string()))
        .await,
        "bob is registered"
    );
    edit_user(&t, "bob", |u| u["enabled"] = false.into(), |u| !u.enabled).await;
    assert!(
        eventually(15, || handle.is_closed()).await,
        "the kicked connection is gone"
    );
    assert!(
        eventually(15, || !shared
            .registry
            .logged_in()
            .contains(&"bob".to_string()))
        .await,
        "the registration is freed"
    );
    flooder.abort();
    // Others are unaffected.
    let s = t.russh_sftp(&t.alice).await;
    s.raw.realpath(".").await.expect("alice works");
    t.shutdown().await;
}

/// Item 4: 100 concurrent wrong passwords (each an argon2 check at the OWASP settings,
/// 19 MiB) cost a bounded amount of memory: the checks wait for a permit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_password_storm_costs_bounded_memory() {
    let t = TestServer::start_with(|c| {
        c.ssh.max_password_checks = 2;
        c.ssh.guard.ban_threshold = 0;
        c.ssh.guard.max_per_ip = 0;
        c.ssh.guard.max_unauthenticated = 0;
        c.ssh.guard.max_unauthenticated_per_source = 0;
        c.ssh.auth_deadline = Duration::from_secs(300);
    })
    .await;
    // Warm up: one check, so the allocator's arenas for argon2 exist before the baseline.
    let mut h = t.russh_connect().await.expect("connect");
    let r = h
        .authenticate_password("nobody", "wrong")
        .await
        .expect("auth");
    assert!(!r.success());
    drop(h);
    let baseline = rss_bytes();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let port = t.port;
    let attempts: Vec<_> = (0..100)
        .map(|i| {
            tokio::spawn(async move {
                let config = Arc::new(russh::client::Config::default());
                let mut h = russh::client::connect(config, ("127.0.0.1", port), AcceptAll)
                    .await
                    .map_err(|e| e.to_string())?;
                // Unknown users are checked against the dummy hash: the full argon2 cost.
                h.authenticate_password(format!("nobody{i}"), "wrong")
                    .await
                    .map(|r| r.success())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let mut refused = 0;
    for a in attempts {
        let result = tokio::time::timeout(Duration::from_secs(300), a)
            .await
            .expect("every attempt is answered")
            .expect("task");
        assert_eq!(result, Ok(false), "a wrong password is refused");
        refused += 1;
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.await.expect("sampler");
    let grew = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(baseline);
    eprintln!(
        "password storm: {refused} refused, RSS grew {} MiB",
        grew / MIB as u64
    );
    assert!(
        grew < 200 * MIB as u64,
        "100 wrong passwords grew RSS by {} MiB (bound 200 MiB)",
        grew / MIB as u64
    );
    t.shutdown().await;
}

/// Item 10: after a wrong password the server still offers `password`, so a user who
/// mistyped is asked again; every attempt counts and the cap ends the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_wrong_password_is_still_asked() {
    let t = TestServer::start_with(|c| {
        c.ssh.max_auth_attempts = 3;
        c.ssh.guard.ban_threshold = 0;
    })
    .await;
    let mut h = ssh_from(&t, [127, 0, 10, 1]).await.expect("connect");
    for attempt in 1..=2 {
        match h
            .authenticate_password("alice", "wrong")
            .await
            .expect("auth")
        {
            russh::client::AuthResult::Failure {
                remaining_methods, ..
            } => assert!(
                remaining_methods.contains(&MethodKind::Password),
                "password still offered after wrong attempt {attempt}"
            ),
            russh::client::AuthResult::Success => panic!("a wrong password was accepted"),
        }
    }
    let ok = h
        .authenticate_password("alice", PASSWORD)
        .await
        .expect("auth");
    assert!(ok.success(), "the third try, right, logs in");

    // Past max_auth_attempts (3), the connection is closed.
    let mut h = ssh_from(&t, [127, 0, 10, 2]).await.expect("connect");
    for _ in 0..3 {
        let r = h.authenticate_password("alice", "wrong").await;
        assert!(!matches!(r, Ok(ref a) if a.success()));
    }
    let fourth = h.authenticate_password("alice", PASSWORD).await;
    assert!(
        !matches!(fourth, Ok(ref a) if a.success()),
        "no login after the attempts are used up"
    );
    assert!(
        eventually(15, || h.is_closed()).await,
        "the connection is closed"
    );
    t.shutdown().await;
}

/// Every wrong password counts towards the ban, even on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_attempt_on_one_connection_counts_towards_the_ban() {
    let t = TestServer::start_with(|c| {
        c.ssh.guard.ban_threshold = 3;
        c.ssh.guard.ban_time = Duration::from_secs(60);
    })
    .await;
    let from = [127, 0, 10, 3];
    let mut h = ssh_from(&t, from).await.expect("connect");
    for _ in 0..3 {
        let r = h.authenticate_password("alice", "wrong").await;
        assert!(!matches!(r, Ok(ref a) if a.success()));
    }
    drop(h);
    let socket = tcp_from(&t, from).await;
    let got = banner_then_wait_for_close(socket, 30)
        .await
        .expect("a banned address is closed at once");
    assert!(
        !got.starts_with(b"SSH-"),
        "a banned address gets no SSH banner: {:?}",
        String::from_utf8_lossy(&got)
    );
    t.shutdown().await;
}

/// Item 6: at most `max_channels` channels per connection; a closed one makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_eleventh_channel_is_refused() {
    let t =
        TestServer::start_with(|c| c.ssh.channel_claim_timeout = Duration::from_secs(120)).await;
    let handle = t.russh_login(&t.alice).await;
    let mut open = Vec::new();
    for i in 0..10 {
        open.push(
            handle
                .channel_open_session()
                .await
                .unwrap_or_else(|e| panic!("channel {}: {e}", i + 1)),
        );
    }
    assert!(
        handle.channel_open_session().await.is_err(),
        "the 11th channel is refused"
    );
    // SFTP sessions count too: with one channel closed, one SFTP session fits.
    let first = open.remove(0);
    first.close().await.expect("close");
    drop(first);
    let mut reopened = None;
    for _ in 0..100 {
        if let Ok(c) = handle.channel_open_session().await {
            reopened = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let channel = reopened.expect("a closed channel frees its place");
    channel.request_subsystem(true, "sftp").await.expect("sftp");
    assert!(
        handle.channel_open_session().await.is_err(),
        "still at most 10"
    );
    t.shutdown().await;
}

/// Item 5: banner-only clients are closed at the auth deadline (russh alone ignores a
/// disconnect during an unfinished key exchange), count against the per-source cap of
/// connections not logged in, and are penalised until the source is banned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn banner_only_clients_are_cut_capped_and_penalised() {
    let t = TestServer::start_with(|c| {
        c.ssh.auth_deadline = Duration::from_secs(2);
        c.ssh.guard.max_unauthenticated_per_source = 3;
        c.ssh.guard.ban_threshold = 5;
        c.ssh.guard.ban_time = Duration::from_secs(120);
    })
    .await;
    let from = [127, 0, 20, 1];
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(tcp_from(&t, from).await);
    }
    // Let the server admit the three before the fourth comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fourth = tcp_from(&t, from).await;
    let got = banner_then_wait_for_close(fourth, 30)
        .await
        .expect("over the per-source cap: closed at once");
    assert!(!got.starts_with(b"SSH-"), "refused before the handshake");
    // The three sit on the handshake: each is closed after the deadline, not before.
    let waits: Vec<_> = sockets
        .into_iter()
        .map(|s| tokio::spawn(banner_then_wait_for_close(s, 60)))
        .collect();
    for w in waits {
        let got = w
            .await
            .expect("task")
            .expect("closed after the auth deadline");
        assert!(got.starts_with(b"SSH-2.0-s3sftp"), "they had been served");
    }
    // 1 refusal + 3 deadlines = 4 penalties; one more connection without a login bans.
    let fifth = tcp_from(&t, from).await;
    drop(fifth);
    assert!(
        eventually(15, || t
            .server()
            .shared()
            .guard
            .is_banned(Ipv4Addr::from(from).into()))
        .await,
        "the source is banned"
    );
    // Another source is unaffected.
    let s = ssh_from(&t, [127, 0, 20, 2]).await;
    assert!(s.is_ok(), "another address connects: {:?}", s.err());
    t.shutdown().await;
}

/// Item 5: a real user logs in while 200 sockets that never log in sit open (150 from
/// different addresses, 50 from one, of which the per-source cap refuses 18).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_user_logs_in_while_200_unauthenticated_sockets_sit_open() {
    let t = TestServer::start_with(|c| c.ssh.auth_deadline = Duration::from_secs(120)).await;
    let mut sockets = Vec::new();
    for i in 0..150u8 {
        let mut s = tcp_from(&t, [127, 0, 30, i + 1]).await;
        let _ = s.write_all(b"SSH-2.0-hostile_test\r\n").await;
        sockets.push(s);
    }
    let mut same = Vec::new();
    for _ in 0..50 {
        same.push(tcp_from(&t, [127, 0, 31, 1]).await);
    }
    // The per-source cap (32) closes the rest of the 50 at once.
    let results: Vec<_> = same
        .into_iter()
        .map(|s| tokio::spawn(banner_then_wait_for_close(s, 5)))
        .collect();
    let mut closed = 0;
    for r in results {
        if let Some(got) = r.await.expect("task") {
            assert!(
                !got.starts_with(b"SSH-"),
                "closed ones were refused, not served"
            );
            closed += 1;
        }
    }
    assert_eq!(closed, 18, "50 from one address, 32 allowed");
    // A real user from another address still gets in and works.
    let s = tokio::time::timeout(Duration::from_secs(60), t.russh_sftp(&t.alice))
        .await
        .expect("the real user logs in");
    s.raw.realpath(".").await.expect("and works");
    drop(sockets);
    t.shutdown().await;
}

/// Item 9: a session opened before the account's `expires_at` ends when it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_ends_when_its_account_expires() {
    let t = TestServer::start().await;
    let expires = chrono::Utc::now() + chrono::Duration::seconds(8);
    let text = expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    edit_user(
        &t,
        "bob",
        |u| u["expires_at"] = text.clone().into(),
        |u| u.expires_at.is_some(),
    )
    .await;
    let s = t.russh_sftp(&t.bob).await;
    s.raw.realpath(".").await.expect("works before expiry");
    let ended = eventually(30, || s.connection.is_closed()).await;
    assert!(ended, "the session ended after expires_at");
    let at = chrono::Utc::now();
    assert!(
        at >= expires - chrono::Duration::seconds(1),
        "it ended at expiry, not before: {at} vs {expires}"
    );
    assert!(
        !t.server()
            .shared()
            .registry
            .logged_in()
            .contains(&"bob".to_string()),
        "bob's registration is freed"
    );
    t.shutdown().await;
}

/// Item 8: the key exchange offers no plain `zlib` (compression before login) and no
/// `ssh-rsa` (SHA-1) host key signatures.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kexinit_offers_no_early_zlib_and_no_sha1_rsa() {
    let t = TestServer::start().await;
    let mut socket = tcp_from(&t, [127, 0, 40, 1]).await;
    socket
        .write_all(b"SSH-2.0-hostile_test\r\n")
        .await
        .expect("banner");
    // The server's identification line, then its KEXINIT packet.
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n") {
        socket.read_exact(&mut byte).await.expect("id");
        buf.push(byte[0]);
    }
    let mut len = [0u8; 4];
    socket.read_exact(&mut len).await.expect("length");
    let mut packet = vec![0u8; u32::from_be_bytes(len) as usize];
    socket.read_exact(&mut packet).await.expect("packet");
    let payload = &packet[1..];
    assert_eq!(payload[0], 20, "KEXINIT");
    let mut at = 17;
    let mut lists = Vec::new();
    for _ in 0..10 {
        let n = u32::from_be_bytes(payload[at..at + 4].try_into().expect("4")) as usize;
        let text = String::from_utf8(payload[at + 4..at + 4 + n].to_vec()).expect("ascii");
        lists.push(text.split(',').map(str::to_string).collect::<Vec<_>>());
        at += 4 + n;
    }
    let host_keys = &lists[1];
    assert!(!host_keys.iter().any(|k| k == "ssh-rsa"), "{host_keys:?}");
    for compression in &lists[6..8] {
        assert!(compression.contains(&"none".to_string()), "{compression:?}");
        assert!(!compression.iter().any(|c| c == "zlib"), "{compression:?}");
    }
    t.shutdown().await;
}

/// Item 8: an RSA key logs in with rsa-sha2 signatures (OpenSSH and russh), and the same
/// key signing with SHA-1 (`ssh-rsa`) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rsa_keys_log_in_with_sha2_and_never_with_sha1() {
    let t = TestServer::start().await;
    let key_path = t.dir.path().join("bob_rsa");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f"])
        .arg(&key_path)
        .status()
        .expect("ssh-keygen runs");
    assert!(made.success());
    let key = russh::keys::load_secret_key(&key_path, None).expect("rsa key");
    let public = key.public_key().to_openssh().expect("public");
    edit_user(
        &t,
        "bob",
        |u| u["public_keys"] = serde_json::json!([public]),
        |u| u.public_keys.len() == 1,
    )
    .await;
    let key = Arc::new(key);
    let server = &t;
    let try_login = |hash: Option<russh::keys::HashAlg>| {
        let key = key.clone();
        async move {
            let mut h = server.russh_connect().await.expect("connect");
            h.authenticate_publickey("bob", PrivateKeyWithHashAlg::new(key, hash))
                .await
                .map(|r| r.success())
                .unwrap_or(false)
        }
    };
    assert!(
        try_login(Some(russh::keys::HashAlg::Sha512)).await,
        "rsa-sha2-512"
    );
    assert!(
        try_login(Some(russh::keys::HashAlg::Sha256)).await,
        "rsa-sha2-256"
    );
    assert!(!try_login(None).await, "ssh-rsa (SHA-1) is refused");
    // OpenSSH picks rsa-sha2 from the server's server-sig-algs.
    let mut rsa_bob = t.bob.clone();
    rsa_bob.key_path = key_path;
    let out = t.sftp(&rsa_bob, "pwd\n").await;
    assert!(out.status.success(), "{}", stderr(&out));
    t.shutdown().await;
}
