//! Limits, bans, deadlines, graceful shutdown and the orphan sweep, against a real S3
//! server with the russh client.

use std::time::Duration;

use crate::common::own_store::start_with_own_store;
use crate::common::*;
use russh_sftp::protocol::{FileAttributes, OpenFlags};

const WRITE_NEW: OpenFlags = OpenFlags::WRITE
    .union(OpenFlags::CREATE)
    .union(OpenFlags::TRUNCATE);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_failed_logins_ban_the_address_and_only_it() {
    let t = TestServer::start_with(|c| {
        c.ssh.guard.ban_threshold = 3;
        c.ssh.guard.ban_time = Duration::from_secs(60);
    })
    .await;
    let attacker = [127, 0, 0, 2];
    for _ in 0..3 {
        assert_eq!(password_ok(&t, attacker, "wrong").await, Ok(false));
    }
    // Banned: even the right password no longer gets a session from that address.
    assert!(
        !matches!(password_ok(&t, attacker, PASSWORD).await, Ok(true)),
        "a banned address cannot log in"
    );
    // Another address is unaffected.
    assert_eq!(password_ok(&t, [127, 0, 0, 3], PASSWORD).await, Ok(true));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_limits_per_address() {
    let t = TestServer::start_with(|c| c.ssh.guard.max_per_ip = 2).await;
    let from = [127, 0, 0, 4];
    let a = connect_from(&t, from).await.expect("first");
    let b = connect_from(&t, from).await.expect("second");
    assert!(connect_from(&t, from).await.is_err(), "third is refused");
    assert!(
        connect_from(&t, [127, 0, 0, 5]).await.is_ok(),
        "others may connect"
    );
    drop(a);
    // The slot frees once the server sees the connection end.
    let mut again = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if connect_from(&t, from).await.is_ok() {
            again = true;
            break;
        }
    }
    assert!(again, "a closed connection releases its slot");
    drop(b);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unauthenticated_and_idle_sessions_are_closed() {
    let t = TestServer::start_with(|c| {
        c.ssh.auth_deadline = Duration::from_secs(1);
        c.sftp.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let lurker = connect_from(&t, [127, 0, 0, 6]).await.expect("connect");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        lurker.is_closed(),
        "no login within the deadline: disconnected"
    );

    let s = t.russh_sftp(&t.alice).await;
    s.raw.realpath(".").await.expect("works while active");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        s.raw.realpath(".").await.is_err(),
        "an idle SFTP session is closed"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_per_session_are_capped() {
    let t = TestServer::start_with(|c| c.sftp.max_uploads = 2).await;
    let s = t.russh_sftp(&t.alice).await;
    let h1 = s
        .raw
        .open("/u1", WRITE_NEW, FileAttributes::empty())
        .await
        .expect("1");
    let _h2 = s
        .raw
        .open("/u2", WRITE_NEW, FileAttributes::empty())
        .await
        .expect("2");
    assert!(
        s.raw
            .open("/u3", WRITE_NEW, FileAttributes::empty())
            .await
            .is_err(),
        "third upload refused"
    );
    s.raw.close(&h1.handle).await.expect("close");
    s.raw
        .open("/u3", WRITE_NEW, FileAttributes::empty())
        .await
        .expect("a slot is free again");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_are_spread_over_the_session_threads() {
    let t = TestServer::start_with(|c| c.session_threads = 2).await;
    let server = t.server();
    assert_eq!(server.session_threads(), vec![0, 0]);
    let a = t.russh_sftp(&t.alice).await;
    let b = t.russh_sftp(&t.bob).await;
    assert_eq!(server.session_threads(), vec![1, 1], "one on each");
    // Both transfer at once, each through its own thread's S3 client.
    let (data_a, data_b) = (random_bytes(PART + 4321, 71), random_bytes(PART / 2, 72));
    let (up_a, up_b) = tokio::join!(a.upload("/a.bin", &data_a), b.upload("/b.bin", &data_b));
    up_a.expect("alice's upload");
    up_b.expect("bob's upload");
    let key_a = format!("{}a.bin", t.alice.prefix);
    let key_b = format!("{}b.bin", t.bob.prefix);
    assert_eq!(
        t.s3.object(&key_a).await.map(|d| sha256(&d)),
        Some(sha256(&data_a))
    );
    assert_eq!(
        t.s3.object(&key_b).await.map(|d| sha256(&d)),
        Some(sha256(&data_b))
    );
    // A connection that ends leaves its thread; the next one takes the free thread.
    drop(a);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.session_threads().iter().sum::<usize>() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            server.session_threads()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = t.russh_sftp(&t.alice).await;
    assert_eq!(server.session_threads(), vec![1, 1]);
    let back = c.raw.stat("/a.bin").await.expect("stat");
    assert_eq!(back.attrs.size, Some(data_a.len() as u64));
    drop((b, c));
    t.shutdown().await;
}

async fn write_at(s: &RusshSftp, handle: &str, offset: u64, data: &[u8]) {
    for (i, chunk) in data.chunks(32 * 1024).enumerate() {
        s.raw
            .write(handle, offset + (i * 32 * 1024) as u64, chunk.to_vec())
            .await
            .expect("write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_lets_transfers_in_flight_finish() {
    let (mut t, view) = start_with_own_store(|c| c.shutdown_grace = Duration::from_secs(30)).await;
    let s = t.russh_sftp(&t.alice).await;
    let idle = t.russh_sftp(&t.bob).await;
    let data = random_bytes(PART + 1000, 61);
    let h = s
        .raw
        .open("/in-flight.bin", WRITE_NEW, FileAttributes::empty())
        .await
        .expect("open")
        .handle;
    write_at(&s, &h, 0, &data[..PART]).await;
    let server = t.server.take().expect("server");
    let stopping = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(t.russh_connect().await.is_err(), "no new connections");
    assert!(
        idle.raw.realpath(".").await.is_err(),
        "idle sessions are closed at once"
    );
    write_at(&s, &h, PART as u64, &data[PART..]).await;
    s.raw.close(&h).await.expect("and commits");
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("shutdown ends once the transfer is done")
        .expect("join");
    let key = format!("{}in-flight.bin", t.alice.prefix);
    assert_eq!(
        view.object(&key).await.map(|d| sha256(&d)),
        Some(sha256(&data))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_aborts_what_is_left_after_the_grace_period() {
    let (mut t, view) = start_with_own_store(|c| c.shutdown_grace = Duration::from_secs(1)).await;
    let s = t.russh_sftp(&t.alice).await;
    let h = s
        .raw
        .open("/stalled.bin", WRITE_NEW, FileAttributes::empty())
        .await
        .expect("open")
        .handle;
    write_at(&s, &h, 0, &random_bytes(PART + 10, 62)).await;
    let prefix = t.alice.prefix.clone();
    // A multipart upload is under way (one part is full).
    let mut pending = false;
    for _ in 0..100 {
        if !t.s3.pending_uploads(&prefix).await.is_empty() {
            pending = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pending, "multipart upload started");
    let server = t.server.take().expect("server");
    tokio::time::timeout(Duration::from_secs(30), server.shutdown())
        .await
        .expect("shutdown ends after the grace period");
    assert!(view.pending_uploads(&prefix).await.is_empty(), "aborted");
    assert_eq!(view.object(&format!("{prefix}stalled.bin")).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_orphan_sweep_aborts_old_uploads_only() {
    // The server's own sweep at start must not take this test's upload: on a server that
    // reports an ancient `Initiated` (moto: 2010) it would, if it ran after the create.
    let t =
        TestServer::start_with(|c| c.orphan_age = Duration::from_secs(200 * 365 * 24 * 3600)).await;
    let key = format!("{}orphan.bin", t.alice.prefix);
    t.s3.client
        .create_multipart_upload()
        .bucket(&t.s3.bucket)
        .key(&key)
        .send()
        .await
        .expect("create upload");
    let storage = t.server().storage().clone();
    let prefixes = vec![t.alice.prefix.clone(), t.bob.prefix.clone()];
    // Some S3 implementations (moto) report a fixed, ancient `Initiated`; the age check
    // cannot be shown there.
    let listed =
        t.s3.client
            .list_multipart_uploads()
            .bucket(&t.s3.bucket)
            .prefix(&t.alice.prefix)
            .send()
            .await
            .expect("list uploads");
    let initiated = listed
        .uploads()
        .iter()
        .find(|u| u.key() == Some(key.as_str()))
        .and_then(|u| u.initiated())
        .and_then(|d| std::time::SystemTime::try_from(*d).ok())
        .expect("initiated time");
    let honest_time = initiated
        .elapsed()
        .map_or(true, |age| age < Duration::from_secs(600));
    if honest_time {
        let young =
            s3sftp::storage::sweep::sweep_orphans(&storage, &prefixes, Duration::from_secs(3600))
                .await
                .expect("sweep");
        assert_eq!(
            (young.seen, young.aborted),
            (1, 0),
            "a young upload is kept"
        );
        assert_eq!(t.s3.pending_uploads(&t.alice.prefix).await.len(), 1);
    } else {
        eprintln!(
            "SKIPPED the young-upload check: this S3 server reports Initiated = {initiated:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let old = s3sftp::storage::sweep::sweep_orphans(&storage, &prefixes, Duration::from_secs(1))
        .await
        .expect("sweep");
    assert_eq!((old.seen, old.aborted), (1, 1));
    assert!(t.s3.pending_uploads(&t.alice.prefix).await.is_empty());
    t.shutdown().await;
}
