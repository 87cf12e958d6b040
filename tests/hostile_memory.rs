//! A logged-in user who wants to hold the server's memory: overlapping WRITEs, absurd
//! declared sizes (SFTP OPEN and the SCP `C` line), many read handles, and an exec glob
//! over a wide tree. Each test asserts the bound from `docs/configuration.md` ("Memory")
//! on the server's own budget, and that another user's upload completes meanwhile.
//! Deadlines are generous; nothing here measures speed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use s3sftp::storage::MemoryBudget;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::raw_sftp::{packet, read_reply, status_of, string, RawSftp};
use crate::common::*;

const KIB: usize = 1024;

fn budget(t: &TestServer) -> MemoryBudget {
    t.server().storage().budget().clone()
}

/// Samples `user`'s held bytes every few milliseconds until dropped; `peak()` is the most seen.
struct PeakWatch {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl PeakWatch {
    fn start(budget: MemoryBudget, user: &str) -> PeakWatch {
        let user = user.to_string();
        PeakWatch::sample(move || budget.in_use_by(&user))
    }

    /// Watches what all users hold together.
    fn total(budget: MemoryBudget) -> PeakWatch {
        PeakWatch::sample(move || budget.in_use())
    }

    fn sample(held: impl Fn() -> u64 + Send + 'static) -> PeakWatch {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(held(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        PeakWatch { peak, stop }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for PeakWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Bob uploads `len` bytes (a multipart upload) and the object is checked in S3.
async fn bob_uploads(t: &TestServer, name: &str, len: usize) {
    let bob = t.russh_sftp(&t.bob).await;
    let data = random_bytes(len, 4242);
    tokio::time::timeout(Duration::from_secs(180), bob.upload(name, &data))
        .await
        .expect("bob's upload finishes while alice holds memory")
        .expect("bob's upload succeeds");
    let key = format!("{}{}", t.bob.prefix, name.trim_start_matches('/'));
    assert_eq!(
        t.s3.object(&key).await.map(|o| sha256(&o)),
        Some(sha256(&data)),
        "bob's file is whole"
    );
}

/// Item 1: WRITEs at offsets 2, 3, 4, … of 200 KiB each, pipelined. The first waits in
/// the reorder buffer; the next overlaps it, which makes the upload an edit (as on a local
/// file, the newest bytes win): every write is accepted, and since held writes never
/// overlap, what alice holds stays under the reorder window plus one part buffer's first
/// allocation, and bob's upload completes meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_writes_keep_memory_bounded() {
    const WRITES: u32 = 400;
    let t = TestServer::start().await;
    let watch = PeakWatch::start(budget(&t), &t.alice.prefix);

    let mut raw = RawSftp::open(&t, &t.alice).await;
    let handle = raw.open_file("/flood.bin", 0x02 | 0x08 | 0x10).await; // WRITE|CREAT|TRUNC
    let RawSftp {
        mut rd,
        mut wr,
        connection: _connection,
    } = raw;

    let write = |id: u32, offset: u64, len: usize| {
        let mut body = string(&handle);
        body.extend(offset.to_be_bytes());
        body.extend(string(&vec![7u8; len]));
        packet(6, id, &body)
    };
    // One byte at 0, so the written end is 1 and later writes are "out of order".
    let mut requests = vec![write(2, 0, 1)];
    requests.extend((0..WRITES).map(|i| write(100 + i, 2 + u64::from(i), 200 * KIB)));
    let writer = tokio::spawn(async move {
        for r in requests {
            wr.write_all(&r).await.expect("sent");
        }
        wr
    });
    let mut statuses = Vec::new();
    let replies = async {
        for _ in 0..=WRITES {
            let (kind, id, body) = read_reply(&mut rd).await;
            assert_eq!(kind, 101, "STATUS for {id}");
            statuses.push((id, status_of(&body)));
        }
    };
    tokio::time::timeout(Duration::from_secs(180), replies)
        .await
        .expect("every WRITE answered");
    let ok = StatusCode::Ok as u32;
    assert_eq!(statuses[0], (2, (ok, "OK".into())), "the first byte");
    assert_eq!(statuses[1].1 .0, ok, "the first out-of-order write is held");
    assert!(
        statuses[2..].iter().all(|(_, (code, _))| *code == ok),
        "every overlapping write is taken (the newest bytes win)"
    );

    bob_uploads(&t, "/bob-during-flood.bin", 3 * PART + 1).await;
    let bound = (4 * MIB + 64 * KIB) as u64;
    assert!(
        watch.peak() <= bound,
        "alice held {} bytes, bound {bound}",
        watch.peak()
    );
    drop(writer.await.unwrap());
    t.shutdown().await;
}

/// Item 3 (SFTP): sixteen uploads declaring 10^15 bytes, one byte written to each. They
/// hold a 64 KiB first buffer each, not the budget; bob's upload completes while they
/// are open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn declared_sizes_allocate_nothing_ahead_of_the_data() {
    let t = TestServer::start().await;
    let budget = budget(&t);
    let watch = PeakWatch::start(budget.clone(), &t.alice.prefix);
    let alice = t.russh_sftp(&t.alice).await;
    let attrs = FileAttributes {
        size: Some(1_000_000_000_000_000),
        ..FileAttributes::default()
    };
    let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
    let mut handles = Vec::new();
    for i in 0..16 {
        let h = alice
            .raw
            .open(format!("/huge{i}.bin"), flags, attrs.clone())
            .await
            .expect("open")
            .handle;
        alice.raw.write(&h, 0, vec![1]).await.expect("one byte");
        handles.push(h);
    }
    assert!(
        budget.in_use_by(&t.alice.prefix) <= 16 * 64 * KIB as u64,
        "alice holds {}",
        budget.in_use_by(&t.alice.prefix)
    );
    bob_uploads(&t, "/bob-during-huge.bin", 3 * PART + 1).await;
    assert!(
        watch.peak() <= 16 * 64 * KIB as u64,
        "peak {}",
        watch.peak()
    );
    for h in handles {
        alice
            .raw
            .close(&h)
            .await
            .expect("a one-byte file is stored");
    }
    assert_eq!(
        t.s3.object(&format!("{}huge3.bin", t.alice.prefix)).await,
        Some(vec![1])
    );
    t.shutdown().await;
}

/// Item 3 (SCP): a `C` line declaring 10^15 bytes, then 300 KiB. What is held follows
/// the bytes sent (past the first 64 KiB, one minimal 5 MiB part), not the declared size
/// (before: the whole budget); bob's upload completes meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_scp_c_line_of_a_petabyte_reserves_nothing_ahead() {
    let t = TestServer::start().await;
    let budget = budget(&t);
    let watch = PeakWatch::start(budget.clone(), &t.alice.prefix);
    let connection = t.russh_login(&t.alice).await;
    let channel = connection.channel_open_session().await.expect("channel");
    channel
        .exec(true, "scp -t petabyte.bin")
        .await
        .expect("exec");
    let (mut rd, mut wr) = tokio::io::split(channel.into_stream());
    assert_eq!(rd.read_u8().await.expect("ready"), 0);
    wr.write_all(b"C0644 1000000000000000 petabyte.bin\n")
        .await
        .unwrap();
    assert_eq!(rd.read_u8().await.expect("file accepted"), 0);
    // More than one read of the sink (256 KiB), so some bytes reach the upload.
    wr.write_all(&[9u8; 300 * KIB]).await.unwrap();
    wr.flush().await.unwrap();
    // The bytes reach the upload: wait until something is held for them.
    for _ in 0..500 {
        if budget.in_use_by(&t.alice.prefix) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(budget.in_use_by(&t.alice.prefix) > 0, "the data arrived");
    bob_uploads(&t, "/bob-during-scp.bin", 3 * PART + 1).await;
    assert!(
        watch.peak() <= PART as u64,
        "alice's scp upload held {}",
        watch.peak()
    );
    drop((rd, wr));
    t.shutdown().await;
}

/// Item 3 (downloads): 130 read handles on one 9 MiB file. Read-ahead is optional
/// memory: alice holds at most a quarter of the budget in it (a handle opened past that
/// holds nothing); bob's upload completes while they are open; a handle opened under
/// that pressure still reads the whole file correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_read_handles_leave_the_budget_to_others() {
    const HANDLES: usize = 130;
    let t = TestServer::start().await;
    let budget = budget(&t);
    let data = random_bytes(9 * MIB, 77);
    t.s3.put(&format!("{}nine.bin", t.alice.prefix), &data)
        .await;
    let watch = PeakWatch::start(budget.clone(), &t.alice.prefix);
    let alice = t.russh_sftp(&t.alice).await;
    let mut handles = Vec::new();
    for _ in 0..HANDLES {
        let h = alice
            .raw
            .open("/nine.bin", OpenFlags::READ, FileAttributes::default())
            .await
            .expect("open")
            .handle;
        handles.push(h);
    }
    let bound = budget.total() / 4;
    bob_uploads(&t, "/bob-during-reads.bin", 3 * PART + 1).await;

    // The last handle, opened under pressure, reads the whole file.
    let last = handles.last().expect("handles").clone();
    let mut got = Vec::with_capacity(data.len());
    while got.len() < data.len() {
        let chunk = alice
            .raw
            .read(&last, got.len() as u64, 64 * KIB as u32)
            .await
            .expect("read")
            .data;
        got.extend(chunk);
    }
    assert_eq!(sha256(&got), sha256(&data));
    assert!(
        watch.peak() <= bound,
        "alice held {} bytes with {HANDLES} read handles (bound {bound}, budget {})",
        watch.peak(),
        budget.total()
    );
    for h in handles {
        alice.raw.close(&h).await.expect("close");
    }
    t.shutdown().await;
}

/// An SFTP session on `connection`, one of several on it (as paramiko opens them).
async fn sftp_on(
    connection: &russh::client::Handle<AcceptAll>,
) -> russh_sftp::client::RawSftpSession {
    let channel = connection.channel_open_session().await.expect("channel");
    channel.request_subsystem(true, "sftp").await.expect("sftp");
    let raw = russh_sftp::client::RawSftpSession::new(channel.into_stream());
    // A hang detector: every request is answered long before.
    raw.set_timeout(120);
    raw.init().await.expect("init");
    raw
}

/// `len` bytes at `offset` of `handle`, checked against `data`.
async fn read_checked(
    sftp: &russh_sftp::client::RawSftpSession,
    handle: &str,
    data: &[u8],
    offset: usize,
    len: usize,
) {
    let got = sftp
        .read(handle, offset as u64, len as u32)
        .await
        .unwrap_or_else(|e| panic!("READ at {offset} was not answered: {e:?}"))
        .data;
    let end = (offset + len).min(data.len());
    assert!(
        got == data[offset..end],
        "READ at {offset} returned {} wrong bytes",
        got.len()
    );
}

/// Reads the whole of `path` with 64 KiB READs; its bytes.
async fn download(sftp: &RusshSftp, path: &str) -> Vec<u8> {
    let h = sftp
        .raw
        .open(path, OpenFlags::READ, FileAttributes::default())
        .await
        .expect("open")
        .handle;
    let mut got = Vec::new();
    loop {
        match sftp.raw.read(&h, got.len() as u64, 64 * KIB as u32).await {
            Ok(data) => got.extend(data.data),
            Err(russh_sftp::client::error::Error::Status(st))
                if st.status_code == StatusCode::Eof =>
            {
                break
            }
            Err(e) => panic!("read of {path}: {e:?}"),
        }
    }
    sftp.raw.close(&h).await.expect("close");
    got
}

/// The memory hog of `bench/attack.py`: one connection, 8 SFTP sessions, 25 read handles
/// on each (more handles than the whole budget has download chunks), one 32 KiB READ on
/// each handle at its own offset. Every READ is answered with the right bytes (a handle
/// past the read-ahead bound reads directly); alice's read-ahead stays within a quarter
/// of the budget; bob downloads and uploads meanwhile; idle handles give their memory
/// back and still read right afterwards; nothing stays held once alice is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_read_on_many_read_handles_is_answered_within_the_budget() {
    const SESSIONS: usize = 8;
    const PER_SESSION: usize = 25;
    const SIZE: usize = 16 * MIB;
    const READ: usize = 32 * KIB;
    let t = TestServer::start().await;
    let budget = budget(&t);
    let chunk = t.server().storage().settings().download_chunk;
    assert!(
        (SESSIONS * PER_SESSION) as u64 > budget.total() / chunk,
        "more handles than the budget has chunks"
    );
    let data = random_bytes(SIZE, 18);
    t.s3.put(&format!("{}big.bin", t.alice.prefix), &data).await;
    let bob_data = random_bytes(12 * MIB, 19);
    t.s3.put(&format!("{}bob.bin", t.bob.prefix), &bob_data)
        .await;
    let alice_peak = PeakWatch::start(budget.clone(), &t.alice.prefix);
    let total_peak = PeakWatch::total(budget.clone());

    let connection = t.russh_login(&t.alice).await;
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(sftp_on(&connection).await);
    }
    let mut handles = Vec::new();
    for (n, sftp) in sessions.iter().enumerate() {
        for i in 0..PER_SESSION {
            let h = sftp
                .open("/big.bin", OpenFlags::READ, FileAttributes::default())
                .await
                .expect("open")
                .handle;
            let offset = ((i * 7 + n) % (SIZE / MIB - 1)) * MIB;
            read_checked(sftp, &h, &data, offset, READ).await;
            handles.push((n, h, offset));
        }
    }

    // Bob is not kept out: a whole download and an upload while alice's handles are open.
    let bob = t.russh_sftp(&t.bob).await;
    let got = download(&bob, "/bob.bin").await;
    assert_eq!(sha256(&got), sha256(&bob_data), "bob's download is whole");
    bob_uploads(&t, "/bob-beside-reads.bin", 2 * PART + 1).await;

    // Every handle answers again, sequentially and elsewhere.
    for (n, h, offset) in &handles {
        read_checked(&sessions[*n], h, &data, offset + READ, READ).await;
        read_checked(&sessions[*n], h, &data, SIZE - READ - offset, READ).await;
    }
    let quarter = budget.total() / 4;
    assert!(
        alice_peak.peak() <= quarter,
        "alice held {} bytes of read-ahead (bound {quarter}, budget {})",
        alice_peak.peak(),
        budget.total()
    );
    assert!(total_peak.peak() <= budget.total());

    // Idle handles give their read-ahead back (still open), and still read right.
    wait_until_alice_holds_nothing(&budget, &t.alice.prefix, "idle handles").await;
    for (n, h, offset) in handles.iter().step_by(7) {
        read_checked(&sessions[*n], h, &data, *offset, READ).await;
    }
    drop(sessions);
    drop(connection);
    wait_until_alice_holds_nothing(&budget, &t.alice.prefix, "disconnect").await;
    t.shutdown().await;
}

/// Polls `user`'s held bytes until they are 0; panics after a generous deadline.
async fn wait_until_alice_holds_nothing(budget: &MemoryBudget, user: &str, after: &str) {
    for _ in 0..600 {
        if budget.in_use_by(user) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "after {after}, alice still holds {} bytes",
        budget.in_use_by(user)
    );
}

/// Item 8: `md5sum g/*/*/x` over a wide tree stops at the glob work limit with a clear
/// error; a narrow pattern still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wide_exec_glob_stops_at_the_work_limit() {
    let t = TestServer::start().await;
    for i in 0..100 {
        t.s3.put(&format!("{}g/d{i:03}/e/x", t.alice.prefix), b"x")
            .await;
    }
    let out = t.ssh_exec(&t.alice, "md5sum g/*/*/x", b"").await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("too much work"),
        "stderr: {}",
        stderr(&out)
    );
    let out = t.ssh_exec(&t.alice, "md5sum g/d007/*/x", b"").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("g/d007/e/x"), "{}", stdout(&out));
    t.shutdown().await;
}

/// Item: STAT honours `list` (except for a file the session wrote), and an EXCL open
/// without `upload` is refused before anything about the path is revealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stat_needs_list_and_excl_checks_permissions_first() {
    let t = TestServer::start().await;
    t.s3.put(&format!("{}secret/there.txt", t.alice.prefix), b"x")
        .await;
    t.s3.put(&format!("{}ro/there.txt", t.alice.prefix), b"x")
        .await;
    let users = t.dir.path().join("users.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_s3sftp"))
        .args(["users", "--users-file"])
        .arg(&users)
        .args([
            "set",
            "alice",
            "--permission",
            "/=upload,create_dirs",
            "--permission",
            "/ro=list,download",
        ])
        .output()
        .expect("s3sftp runs");
    assert!(out.status.success(), "{}", stderr(&out));
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let alice = t.russh_sftp(&t.alice).await;
    let denied = Some(StatusCode::PermissionDenied);
    for path in ["/secret/there.txt", "/secret/missing.txt", "/secret"] {
        assert_eq!(status_code(&alice.raw.stat(path).await), denied, "{path}");
        assert_eq!(status_code(&alice.raw.lstat(path).await), denied, "{path}");
    }
    assert!(
        alice.raw.stat("/ro/there.txt").await.is_ok(),
        "list granted"
    );
    // A file alice writes she may stat, during and after the upload.
    let h = alice
        .raw
        .open(
            "/mine.txt",
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
            FileAttributes::default(),
        )
        .await
        .expect("upload allowed")
        .handle;
    alice
        .raw
        .write(&h, 0, b"abc".to_vec())
        .await
        .expect("write");
    alice.raw.close(&h).await.expect("close");
    let st = alice.raw.stat("/mine.txt").await.expect("stat own file");
    assert_eq!(st.attrs.size, Some(3));
    // EXCL in a read-only folder: refused for lack of upload, whether the file exists.
    let excl = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE;
    for path in ["/ro/there.txt", "/ro/missing.txt"] {
        let r = alice.raw.open(path, excl, FileAttributes::default()).await;
        assert_eq!(status_code(&r), denied, "{path}");
    }
    t.shutdown().await;
}
