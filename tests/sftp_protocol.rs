//! SFTP requests one by one through the russh client and russh-sftp's raw session, so
//! every status code is visible, plus malformed input written straight to the channel.

use crate::common::*;
use russh::ChannelMsg;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use std::time::Duration;

fn attrs() -> FileAttributes {
    FileAttributes::empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_login_and_refusals() {
    let t = TestServer::start().await;
    let s = t
        .russh_sftp_password("alice", PASSWORD)
        .await
        .expect("password login");
    let name = s.raw.realpath(".").await.expect("realpath");
    assert_eq!(name.files[0].filename, "/");
    assert!(t.russh_sftp_password("alice", "wrong").await.is_err());
    assert!(t.russh_sftp_password("nobody", PASSWORD).await.is_err());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_codes_follow_the_design() {
    let t = TestServer::start().await;
    let s = t.russh_sftp(&t.alice).await;
    let p = t.alice.prefix.clone();
    s.upload("/a.txt", b"first").await.expect("upload");
    s.upload("/b.txt", b"second").await.expect("upload");

    assert_eq!(
        status_code(&s.raw.stat("/missing").await),
        Some(StatusCode::NoSuchFile)
    );
    assert_eq!(
        status_code(&s.raw.symlink("/a.txt", "/l").await),
        Some(StatusCode::OpUnsupported)
    );
    assert_eq!(
        status_code(&s.raw.readlink("/a.txt").await),
        Some(StatusCode::OpUnsupported)
    );
    // APPEND opens (writes go at the end; see the inplace_writes suite).
    let h = s
        .raw
        .open("/a.txt", OpenFlags::WRITE | OpenFlags::APPEND, attrs())
        .await
        .expect("open for append")
        .handle;
    s.raw.close(&h).await.expect("close untouched");
    assert_eq!(
        status_code(
            &s.raw
                .open(
                    "/a.txt",
                    OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE,
                    attrs()
                )
                .await
        ),
        Some(StatusCode::Failure),
        "EXCL on an existing file"
    );
    assert_eq!(
        status_code(&s.raw.open("/nope", OpenFlags::WRITE, attrs()).await),
        Some(StatusCode::NoSuchFile),
        "WRITE without CREATE on a missing file"
    );
    // Plain RENAME onto an existing file fails and changes nothing; posix-rename replaces.
    assert_eq!(
        status_code(&s.raw.rename("/a.txt", "/b.txt").await),
        Some(StatusCode::Failure)
    );
    assert_eq!(
        t.s3.object(&format!("{p}b.txt")).await.as_deref(),
        Some(&b"second"[..])
    );
    s.posix_rename("/a.txt", "/b.txt")
        .await
        .expect("posix-rename replaces");
    assert_eq!(
        t.s3.object(&format!("{p}b.txt")).await.as_deref(),
        Some(&b"first"[..])
    );
    assert_eq!(t.s3.object(&format!("{p}a.txt")).await, None);

    // RMDIR of a non-empty directory fails; of an empty one succeeds.
    s.raw.mkdir("/d", attrs()).await.expect("mkdir");
    assert_eq!(
        status_code(&s.raw.mkdir("/d", attrs()).await),
        Some(StatusCode::Failure),
        "mkdir twice"
    );
    s.upload("/d/f", b"x").await.expect("upload");
    assert_eq!(
        status_code(&s.raw.rmdir("/d").await),
        Some(StatusCode::Failure)
    );
    assert_eq!(
        status_code(&s.raw.rmdir("/nodir").await),
        Some(StatusCode::NoSuchFile)
    );
    assert_eq!(
        status_code(&s.raw.remove("/d").await),
        Some(StatusCode::Failure),
        "remove of a dir"
    );
    s.raw.remove("/d/f").await.expect("remove");
    s.raw.rmdir("/d").await.expect("rmdir empty");

    // chmod/chown/utimes are accepted and ignored.
    let mut a = attrs();
    a.permissions = Some(0o600);
    a.mtime = Some(1);
    a.atime = Some(1);
    s.raw.setstat("/b.txt", a).await.expect("setstat ignored");
    let st = s.raw.stat("/b.txt").await.expect("stat");
    assert_eq!(st.attrs.size, Some(5));
    assert_eq!(st.attrs.permissions, Some(0o100644));
    assert_eq!(
        status_code(&s.raw.setstat("/missing", attrs()).await),
        Some(StatusCode::NoSuchFile)
    );

    // READ at or past the end is EOF; READ of a directory handle-less path fails cleanly.
    let h = s
        .raw
        .open("/b.txt", OpenFlags::READ, attrs())
        .await
        .expect("open")
        .handle;
    assert_eq!(s.raw.read(&h, 0, 100).await.expect("read").data, b"first");
    assert_eq!(
        status_code(&s.raw.read(&h, 5, 100).await),
        Some(StatusCode::Eof)
    );
    assert_eq!(
        status_code(&s.raw.read(&h, 500, 100).await),
        Some(StatusCode::Eof)
    );
    s.raw.close(&h).await.expect("close");
    assert_eq!(
        status_code(&s.raw.close("bogus").await),
        Some(StatusCode::Failure)
    );

    // Extensions.
    let limits = s.raw.limits().await.expect("limits");
    assert_eq!(limits.max_packet_len, 256 * 1024);
    assert_eq!(limits.max_read_len, 64 * 1024);
    assert!(limits.max_write_len >= 255 * 1024 && limits.max_write_len < 256 * 1024);
    let vfs = s.raw.statvfs("/").await.expect("statvfs");
    assert!(vfs.blocks > 0 && vfs.block_size > 0);
    assert_eq!(
        s.raw
            .realpath("/../../x/./y/..")
            .await
            .expect("realpath")
            .files[0]
            .filename,
        "/x"
    );
    t.shutdown().await;
}

/// FSETSTAT(size = `len`) on an open handle, expected to succeed (`len` is what was written).
async fn set_size(s: &RusshSftp, handle: &str, len: usize) {
    let mut size = attrs();
    size.size = Some(len as u64);
    s.raw
        .fsetstat(handle, size)
        .await
        .expect("fsetstat(size == written)");
}

/// Opens `path` for writing without TRUNC (what OpenSSH `scp` and `sftp reput` do, and
/// what `open(2)` without `O_TRUNC` becomes), writes `data` at 0, then optionally sets the
/// size to what was written (`truncate`), and returns CLOSE's status.
async fn write_without_trunc(
    s: &RusshSftp,
    path: &str,
    data: &[u8],
    truncate: bool,
) -> Option<StatusCode> {
    let h = s
        .raw
        .open(path, OpenFlags::READ | OpenFlags::WRITE, attrs())
        .await
        .expect("open without TRUNC")
        .handle;
    if !data.is_empty() {
        s.raw.write(&h, 0, data.to_vec()).await.expect("write");
    }
    if truncate {
        set_size(s, &h, data.len()).await;
    }
    status_code(&s.raw.close(&h).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writing_part_of_an_existing_file_keeps_the_rest() {
    let t = TestServer::start().await;
    let s = t.russh_sftp(&t.alice).await;
    let key = format!("{}doc.txt", t.alice.prefix);
    s.upload("/doc.txt", b"0123456789").await.expect("upload");

    // Fewer bytes than the file has, not truncated: as POSIX, the old tail stays.
    assert_eq!(
        write_without_trunc(&s, "/doc.txt", b"AB", false).await,
        None
    );
    assert_eq!(t.s3.object(&key).await.as_deref(), Some(&b"AB23456789"[..]));
    assert!(t.s3.pending_uploads(&t.alice.prefix).await.is_empty());

    // As many bytes or more replace every old byte: committed.
    assert_eq!(
        write_without_trunc(&s, "/doc.txt", b"abcdefghijKL", false).await,
        None
    );
    assert_eq!(
        t.s3.object(&key).await.as_deref(),
        Some(&b"abcdefghijKL"[..])
    );

    // Fewer bytes, then FSETSTAT(size) at the written length (OpenSSH scp overwriting with
    // a shorter file): the file ends there.
    assert_eq!(
        write_without_trunc(&s, "/doc.txt", b"xyz", true).await,
        None
    );
    assert_eq!(t.s3.object(&key).await.as_deref(), Some(&b"xyz"[..]));

    // No bytes, then FSETSTAT(size 0) (scp of an empty file): the file becomes empty.
    assert_eq!(write_without_trunc(&s, "/doc.txt", b"", true).await, None);
    assert_eq!(t.s3.object(&key).await.as_deref(), Some(&b""[..]));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_reorder_append_and_commit_atomically() {
    let t = TestServer::start().await;
    let s = t.russh_sftp(&t.alice).await;
    let p = t.alice.prefix.clone();
    s.upload("/keep.bin", b"original").await.expect("upload");

    // Resume of a complete file: a write at its end appends (as on a local disk).
    let h = s
        .raw
        .open("/keep.bin", OpenFlags::WRITE | OpenFlags::CREATE, attrs())
        .await
        .unwrap()
        .handle;
    s.raw
        .write(&h, 8, b"more".to_vec())
        .await
        .expect("write at the end");
    s.raw.close(&h).await.expect("close");
    assert_eq!(
        t.s3.object(&format!("{p}keep.bin")).await.as_deref(),
        Some(&b"originalmore"[..])
    );

    // Opening an existing file without TRUNC and closing without writing keeps it.
    let h = s
        .raw
        .open("/keep.bin", OpenFlags::WRITE, attrs())
        .await
        .unwrap()
        .handle;
    s.raw.close(&h).await.expect("close");
    assert_eq!(
        t.s3.object(&format!("{p}keep.bin")).await.as_deref(),
        Some(&b"originalmore"[..])
    );

    // Out-of-order writes within the window are reordered, across a part boundary.
    let data = random_bytes(PART + 100_000, 11);
    let chunk = 64 * 1024;
    let mut order: Vec<usize> = (0..data.len().div_ceil(chunk)).collect();
    for pair in order.chunks_mut(2) {
        pair.reverse();
    }
    order.swap(0, 1); // the very first write lands at offset 0
    let h = s
        .raw
        .open(
            "/shuffled.bin",
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
            attrs(),
        )
        .await
        .unwrap()
        .handle;
    for i in order {
        let end = ((i + 1) * chunk).min(data.len());
        s.raw
            .write(&h, (i * chunk) as u64, data[i * chunk..end].to_vec())
            .await
            .expect("write");
    }
    set_size(&s, &h, data.len()).await;
    assert_eq!(
        t.s3.object_size(&format!("{p}shuffled.bin")).await,
        None,
        "invisible before CLOSE"
    );
    s.raw.close(&h).await.expect("close");
    assert_eq!(
        sha256(&t.s3.object(&format!("{p}shuffled.bin")).await.unwrap()),
        sha256(&data)
    );

    // A write that would leave a hole of more than 1 GiB is refused at the WRITE; the
    // upload goes on and CLOSE stores what was written.
    let h = s
        .raw
        .open(
            "/gap.bin",
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
            attrs(),
        )
        .await
        .unwrap()
        .handle;
    s.raw
        .write(&h, 0, vec![1; 1000])
        .await
        .expect("first write");
    assert_eq!(
        status_code(&s.raw.write(&h, 2048 * MIB as u64, vec![2; 10]).await),
        Some(StatusCode::Failure)
    );
    s.raw.close(&h).await.expect("close");
    assert_eq!(t.s3.object_size(&format!("{p}gap.bin")).await, Some(1000));

    // A multipart upload abandoned by closing the session leaves nothing behind.
    let h = s
        .raw
        .open(
            "/abandoned.bin",
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
            attrs(),
        )
        .await
        .unwrap()
        .handle;
    let big = random_bytes(3 * PART, 12);
    for (i, c) in big.chunks(256 * 1024).enumerate() {
        s.raw
            .write(&h, (i * 256 * 1024) as u64, c.to_vec())
            .await
            .expect("write");
    }
    assert!(
        !t.s3.pending_uploads(&p).await.is_empty(),
        "multipart upload in progress"
    );
    drop(s);
    assert!(t.s3.wait_no_pending_uploads(&p).await.is_empty());
    assert_eq!(t.s3.object_size(&format!("{p}abandoned.bin")).await, None);
    t.shutdown().await;
}

/// Sequential runs longer than the read-ahead (whose chunk buffers are filled again by
/// later chunks), jumps back and forth (which drop the window), and reads across chunk
/// boundaries all return exactly the object's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_in_any_order_return_the_right_bytes() {
    let t = TestServer::start().await;
    let s = t.russh_sftp(&t.alice).await;
    let data = random_bytes(30 * MIB + 123, 31);
    t.s3.put(&format!("{}r.bin", t.alice.prefix), &data).await;
    let h = s
        .raw
        .open("/r.bin", OpenFlags::READ, attrs())
        .await
        .expect("open")
        .handle;
    let read = |offset: usize, len: usize| {
        let (s, h) = (&s, &h);
        async move {
            s.raw
                .read(h, offset as u64, len as u32)
                .await
                .unwrap_or_else(|e| panic!("read {len} at {offset}: {e:?}"))
                .data
        }
    };
    // 24 MiB front to back: more chunks (2 MiB) than the read-ahead holds (20 MiB).
    let mut offset = 0;
    while offset < 24 * MIB {
        let got = read(offset, 64 * 1024).await;
        assert_eq!(
            got,
            &data[offset..offset + 64 * 1024],
            "sequential at {offset}"
        );
        offset += got.len();
    }
    // Jumps, and reads that straddle chunk boundaries, in a fixed pseudo-random order.
    let mut x: u64 = 7;
    for i in 0..60 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let offset = if i % 3 == 0 {
            // Just before a 2 MiB boundary.
            ((x >> 33) as usize % 15 + 1) * 2 * MIB - 1000
        } else {
            (x >> 33) as usize % data.len()
        };
        let got = read(offset, 64 * 1024).await;
        let end = (offset + 64 * 1024).min(data.len());
        assert_eq!(got, &data[offset..end], "read {i} at {offset}");
    }
    let tail = read(data.len() - 100, 64 * 1024).await;
    assert_eq!(tail, &data[data.len() - 100..]);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_are_pinned_to_the_version_seen_at_open() {
    let t = TestServer::start().await;
    let s = t.russh_sftp(&t.alice).await;
    let key = format!("{}v.bin", t.alice.prefix);
    let v1 = random_bytes(30 * MIB, 21);
    t.s3.put(&key, &v1).await;
    let h = s
        .raw
        .open("/v.bin", OpenFlags::READ, attrs())
        .await
        .unwrap()
        .handle;
    let first = s.raw.read(&h, 0, 32 * 1024).await.expect("read").data;
    assert_eq!(first, &v1[..32 * 1024]);
    t.s3.put(&key, &random_bytes(30 * MIB, 22)).await;
    // A read far from the window needs a new GET, which must not return the new bytes.
    let r = s.raw.read(&h, 28 * MIB as u64, 32 * 1024).await;
    assert_eq!(
        status_code(&r),
        Some(StatusCode::Failure),
        "overwrite detected: {r:?}"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opens_that_answer_early_still_refuse_and_read_exactly() {
    let t = TestServer::start().await;
    let s = t.russh_sftp(&t.alice).await;
    let p = t.alice.prefix.clone();
    s.raw.mkdir("/d", attrs()).await.expect("mkdir");
    s.upload("/d/inner", b"kept").await.expect("upload");

    // CREATE|TRUNCATE answers before S3 is asked; writing onto a directory's name then
    // fails at CLOSE at the latest, and nothing is stored.
    let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
    let h = s.raw.open("/d", flags, attrs()).await.expect("open").handle;
    let mut refused = false;
    for i in 0..4u64 {
        if s.raw.write(&h, i * 4, b"data".to_vec()).await.is_err() {
            refused = true;
            break;
        }
    }
    let closed = s.raw.close(&h).await;
    assert!(
        refused || status_code(&closed) == Some(StatusCode::Failure),
        "upload onto a directory name must fail: {closed:?}"
    );
    assert_eq!(
        t.s3.object(&format!("{p}d")).await,
        None,
        "no object at the directory's name"
    );
    assert_eq!(
        t.s3.object(&format!("{p}d/inner")).await.as_deref(),
        Some(&b"kept"[..])
    );
    // Without TRUNCATE the open looks first and refuses at once.
    assert_eq!(
        status_code(
            &s.raw
                .open("/d", OpenFlags::WRITE | OpenFlags::CREATE, attrs())
                .await
        ),
        Some(StatusCode::Failure)
    );

    // An empty file opens (a ranged GET of it is refused by S3; the open falls back to HEAD).
    s.upload("/empty", b"").await.expect("upload");
    let h = s
        .raw
        .open("/empty", OpenFlags::READ, attrs())
        .await
        .expect("open empty")
        .handle;
    assert_eq!(s.raw.fstat(&h).await.expect("fstat").attrs.size, Some(0));
    assert_eq!(
        status_code(&s.raw.read(&h, 0, 100).await),
        Some(StatusCode::Eof)
    );
    s.raw.close(&h).await.expect("close");

    // A small file is read whole from the GET made at open; FSTAT has its size.
    let small = random_bytes(70_000, 5);
    t.s3.put(&format!("{p}small.bin"), &small).await;
    let h = s
        .raw
        .open("/small.bin", OpenFlags::READ, attrs())
        .await
        .expect("open small")
        .handle;
    assert_eq!(
        s.raw.fstat(&h).await.expect("fstat").attrs.size,
        Some(small.len() as u64)
    );
    let mut got = Vec::new();
    while let Ok(d) = s.raw.read(&h, got.len() as u64, 32 * 1024).await {
        got.extend_from_slice(&d.data);
    }
    assert_eq!(got, small);
    s.raw.close(&h).await.expect("close");
    assert_eq!(
        status_code(&s.raw.open("/nothing", OpenFlags::READ, attrs()).await),
        Some(StatusCode::NoSuchFile)
    );
    assert_eq!(
        status_code(&s.raw.open("/d", OpenFlags::READ, attrs()).await),
        Some(StatusCode::Failure),
        "reading a directory"
    );

    // After a listing, STAT and REMOVE are answered from it; this session's own REMOVE is
    // seen at once (the next STAT and REMOVE say the file is gone).
    let dir = s.raw.opendir("/").await.expect("opendir").handle;
    let names = s.raw.readdir(&dir).await.expect("readdir");
    assert!(names.files.iter().any(|f| f.filename == "small.bin"));
    s.raw.close(&dir).await.expect("closedir");
    assert_eq!(
        s.raw.stat("/small.bin").await.expect("stat").attrs.size,
        Some(small.len() as u64)
    );
    s.raw.remove("/small.bin").await.expect("remove");
    assert_eq!(t.s3.object(&format!("{p}small.bin")).await, None);
    assert_eq!(
        status_code(&s.raw.stat("/small.bin").await),
        Some(StatusCode::NoSuchFile)
    );
    assert_eq!(
        status_code(&s.raw.remove("/small.bin").await),
        Some(StatusCode::NoSuchFile)
    );
    t.shutdown().await;
}

/// A file opened just after a listing opens without asking S3 (its GET starts with the
/// OPEN). If another client replaced or removed it in between, the first read gets the
/// current version or "no such file"; once bytes were read, the version stays pinned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_opened_from_a_listing_read_the_current_version() {
    let t = TestServer::start().await;
    let s = t.russh_sftp(&t.alice).await;
    let p = t.alice.prefix.clone();
    let replaced_v1 = random_bytes(100_000, 31);
    let replaced_v2 = random_bytes(150_000, 32);
    let big_v1 = random_bytes(20 * MIB, 33);
    t.s3.put(&format!("{p}replaced.bin"), &replaced_v1).await;
    t.s3.put(&format!("{p}removed.bin"), b"soon gone").await;
    t.s3.put(&format!("{p}big.bin"), &big_v1).await;

    let dir = s.raw.opendir("/").await.expect("opendir").handle;
    let names = s.raw.readdir(&dir).await.expect("readdir");
    assert_eq!(names.files.len(), 3, "{:?}", names.files);
    s.raw.close(&dir).await.expect("closedir");

    t.s3.put(&format!("{p}replaced.bin"), &replaced_v2).await;
    t.s3.client
        .delete_object()
        .bucket(&t.s3.bucket)
        .key(format!("{p}removed.bin"))
        .send()
        .await
        .expect("delete");

    let h = s
        .raw
        .open("/replaced.bin", OpenFlags::READ, attrs())
        .await
        .expect("open")
        .handle;
    let mut got = Vec::new();
    loop {
        match s.raw.read(&h, got.len() as u64, 32 * 1024).await {
            Ok(d) => got.extend_from_slice(&d.data),
            Err(e) => {
                assert_eq!(status_code::<()>(&Err(e)), Some(StatusCode::Eof));
                break;
            }
        }
    }
    assert_eq!(
        sha256(&got),
        sha256(&replaced_v2),
        "the current version, whole"
    );
    s.raw.close(&h).await.expect("close");

    let h = s
        .raw
        .open("/removed.bin", OpenFlags::READ, attrs())
        .await
        .expect("open answers from the listing")
        .handle;
    assert_eq!(
        status_code(&s.raw.read(&h, 0, 1024).await),
        Some(StatusCode::NoSuchFile)
    );
    s.raw.close(&h).await.expect("close");

    let h = s
        .raw
        .open("/big.bin", OpenFlags::READ, attrs())
        .await
        .expect("open")
        .handle;
    let first = s.raw.read(&h, 0, 32 * 1024).await.expect("read").data;
    assert_eq!(first, &big_v1[..32 * 1024]);
    t.s3.put(&format!("{p}big.bin"), &random_bytes(20 * MIB, 34))
        .await;
    let r = s.raw.read(&h, 18 * MIB as u64, 32 * 1024).await;
    assert_eq!(
        status_code(&r),
        Some(StatusCode::Failure),
        "overwrite after the first read detected: {r:?}"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_reads_return_exact_ranges() {
    let t = TestServer::start().await;
    let s = t.russh_sftp(&t.alice).await;
    let data = random_bytes(9 * MIB + 123, 31);
    t.s3.put(&format!("{}r.bin", t.alice.prefix), &data).await;
    let h = s
        .raw
        .open("/r.bin", OpenFlags::READ, attrs())
        .await
        .unwrap()
        .handle;
    for (off, len) in [
        (0usize, 1000usize),
        (5 * MIB, 200_000),
        (MIB - 10, 100),
        (9 * MIB, 200_000),
        (3, 261_120),
    ] {
        let got = s
            .raw
            .read(&h, off as u64, len as u32)
            .await
            .expect("read")
            .data;
        // READ replies are at most the advertised 64 KiB (a short read is valid SFTP).
        let end = (off + len.min(64 * 1024)).min(data.len());
        assert_eq!(got, &data[off..end], "read at {off}");
    }
    // A READ longer than the advertised limit is clamped, never longer than a packet.
    let got = s.raw.read(&h, 0, 10 * MIB as u32).await.expect("read").data;
    assert!(got.len() < 256 * 1024 && got == data[..got.len()]);
    t.shutdown().await;
}

/// Raw bytes on the channel: framing and decoding errors get a status, not a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_packets_get_errors_and_others_keep_working() {
    let t = TestServer::start().await;
    let bystander = t.russh_sftp(&t.bob).await;
    let handle = t.russh_login(&t.alice).await;
    let mut ch = handle.channel_open_session().await.unwrap();
    ch.request_subsystem(true, "sftp").await.unwrap();

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }
    async fn reply(
        ch: &mut russh::Channel<russh::client::Msg>,
        buf: &mut Vec<u8>,
    ) -> Option<Vec<u8>> {
        loop {
            if buf.len() >= 4 {
                let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if buf.len() >= 4 + len {
                    let body = buf[4..4 + len].to_vec();
                    buf.drain(..4 + len);
                    return Some(body);
                }
            }
            match tokio::time::timeout(Duration::from_secs(10), ch.wait())
                .await
                .ok()??
            {
                ChannelMsg::Data { data } => buf.extend_from_slice(&data),
                ChannelMsg::Eof | ChannelMsg::Close => return None,
                _ => {}
            }
        }
    }
    let mut buf = Vec::new();
    ch.data(&frame(&[1, 0, 0, 0, 3])[..]).await.unwrap(); // INIT v3
    let version = reply(&mut ch, &mut buf).await.expect("VERSION");
    assert_eq!(version[0], 2);

    // OPEN whose path is not UTF-8 → BAD_MESSAGE for that id.
    let mut open = vec![
        3, 0, 0, 0, 42, 0, 0, 0, 2, 0xff, 0xfe, 0, 0, 0, 1, 0, 0, 0, 0,
    ];
    ch.data(&frame(&open)[..]).await.unwrap();
    let st = reply(&mut ch, &mut buf).await.expect("status");
    assert_eq!(st[0], 101);
    assert_eq!(&st[1..5], &[0, 0, 0, 42]);
    assert_eq!(
        u32::from_be_bytes([st[5], st[6], st[7], st[8]]),
        StatusCode::BadMessage as u32
    );
    // Unknown packet type and a truncated READ → errors, the session lives on.
    ch.data(&frame(&[99, 0, 0, 0, 7])[..]).await.unwrap();
    let st = reply(&mut ch, &mut buf).await.expect("status");
    assert_eq!(st[0], 101);
    ch.data(&frame(&[5, 0, 0, 0, 8, 0, 0])[..]).await.unwrap();
    let st = reply(&mut ch, &mut buf).await.expect("status");
    assert_eq!(st[0], 101);
    open.clear();
    // REALPATH "." still works.
    ch.data(&frame(&[16, 0, 0, 0, 9, 0, 0, 0, 1, b'.'])[..])
        .await
        .unwrap();
    let name = reply(&mut ch, &mut buf).await.expect("NAME");
    assert_eq!(name[0], 104);
    // A frame claiming 100 MiB ends this session only.
    ch.data(&(100u32 << 20).to_be_bytes()[..]).await.unwrap();
    assert!(reply(&mut ch, &mut buf).await.is_none(), "session closed");
    // Everyone else carries on.
    assert_eq!(
        bystander.raw.realpath(".").await.unwrap().files[0].filename,
        "/"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shell_and_unknown_commands_are_refused() {
    let t = TestServer::start().await;
    let handle = t.russh_login(&t.alice).await;
    let mut ch = handle.channel_open_session().await.unwrap();
    ch.exec(true, "rm -rf /").await.unwrap();
    let mut exit = None;
    let mut stderr = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), ch.wait()).await {
        match msg {
            ChannelMsg::ExitStatus { exit_status } => exit = Some(exit_status),
            ChannelMsg::ExtendedData { data, ext: 1 } => stderr.extend_from_slice(&data),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    assert_eq!(exit, Some(127));
    assert!(String::from_utf8_lossy(&stderr).contains("rm: command not found"));
    // The same connection still serves SFTP.
    let ch2 = handle.channel_open_session().await.unwrap();
    ch2.request_subsystem(true, "sftp").await.unwrap();
    let raw = russh_sftp::client::RawSftpSession::new(ch2.into_stream());
    raw.init().await.expect("sftp after a refused exec");
    t.shutdown().await;
}

/// `rclone serve s3` answers a HEAD of a folder's name with an empty object typed
/// `application/x-directory` (and s3fs once marked directories that way): such an object
/// is a directory, also after a listing showed it as an empty entry. An empty object of
/// any other type stays a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn empty_directory_typed_objects_are_directories() {
    let t = TestServer::start().await;
    let p = t.alice.prefix.clone();
    for (name, content_type) in [
        ("folder", "application/x-directory"),
        ("empty.txt", "text/plain"),
    ] {
        t.s3.client
            .put_object()
            .bucket(&t.s3.bucket)
            .key(format!("{p}{name}"))
            .content_type(content_type)
            .body(Vec::new().into())
            .send()
            .await
            .expect("put");
    }
    let s = t.russh_sftp(&t.alice).await;
    let check = |when: &'static str| {
        let s = &s;
        async move {
            for (path, dir) in [("/folder", true), ("/empty.txt", false)] {
                let attrs = s.raw.stat(path).await.expect("stat").attrs;
                assert_eq!(attrs.is_dir(), dir, "{path} {when}: {attrs:?}");
            }
        }
    };
    check("before a listing").await;

    let dir = s.raw.opendir("/").await.expect("opendir").handle;
    let names = s.raw.readdir(&dir).await.expect("readdir");
    assert_eq!(names.files.len(), 2, "{:?}", names.files);
    s.raw.close(&dir).await.expect("closedir");
    check("after a listing").await;
    t.shutdown().await;
}
