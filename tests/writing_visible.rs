//! A file being written exists, as on a local disk: from the OPEN that creates it until its
//! CLOSE it answers STAT, LSTAT and FSTAT with the bytes written so far and is listed by
//! READDIR, for every connection of the same user to the same gateway (sshfs, WinSCP use a
//! second one), with its directories; the bucket has nothing of it before the commit.
//! After the CLOSE the object takes over; an upload that fails or is cut off leaves
//! nothing. (sshfs itself is driven in `sshfs.rs`.)

use std::time::Duration;

use crate::common::*;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};

/// How long a poll may wait before the test is declared hung.
const HANG: Duration = Duration::from_secs(60);

fn create() -> OpenFlags {
    OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE
}

/// Opens `path` with `flags` on `s`; the handle.
async fn open(s: &RusshSftp, path: &str, flags: OpenFlags) -> String {
    s.raw
        .open(path, flags, FileAttributes::default())
        .await
        .unwrap_or_else(|e| panic!("open {path}: {e:?}"))
        .handle
}

/// Writes `data` at `offset` in 32 KiB requests.
async fn write_at(s: &RusshSftp, h: &str, offset: u64, data: &[u8]) {
    for (i, chunk) in data.chunks(32 * 1024).enumerate() {
        let at = offset + (i * 32 * 1024) as u64;
        s.raw
            .write(h, at, chunk.to_vec())
            .await
            .unwrap_or_else(|e| panic!("write at {at}: {e:?}"));
    }
}

/// The names READDIR lists in `dir`: (name, is a directory, size).
async fn listing(s: &RusshSftp, dir: &str) -> Vec<(String, bool, u64)> {
    let h = s.raw.opendir(dir).await.expect("opendir").handle;
    let mut names = Vec::new();
    loop {
        match s.raw.readdir(&h).await {
            Ok(batch) => names.extend(batch.files.into_iter().filter_map(|f| {
                let is_dir = f.attrs.is_dir();
                let size = f.attrs.size.unwrap_or(0);
                (f.filename != "." && f.filename != "..").then_some((f.filename, is_dir, size))
            })),
            Err(e) => {
                assert_eq!(status_code::<()>(&Err(e)), Some(StatusCode::Eof));
                break;
            }
        }
    }
    s.raw.close(&h).await.expect("closedir");
    names.sort();
    names
}

fn file(name: &str, size: u64) -> (String, bool, u64) {
    (name.to_string(), false, size)
}

/// The size STAT and LSTAT show for `path` (they must agree).
async fn stat_size(s: &RusshSftp, path: &str) -> u64 {
    let stat = s.raw.stat(path).await.expect("stat").attrs;
    let lstat = s.raw.lstat(path).await.expect("lstat").attrs;
    assert!(!stat.is_dir(), "{path} is a file");
    assert_eq!(stat.size, lstat.size, "STAT and LSTAT of {path} agree");
    stat.size.expect("size")
}

/// Waits until no file is being written through the server.
async fn wait_none_written(t: &TestServer) {
    let writing = t.server().storage().writing().clone();
    tokio::time::timeout(HANG, async {
        while !writing.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the uploads ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_file_shows_to_a_second_connection_while_it_is_written() {
    let t = TestServer::start().await;
    let key = format!("{}new.bin", t.alice.prefix);
    let writer = t.russh_sftp(&t.alice).await;
    let other = t.russh_sftp(&t.alice).await;
    let data = random_bytes(100, 1);

    let h = open(&writer, "/new.bin", create()).await;
    assert_eq!(
        stat_size(&other, "/new.bin").await,
        0,
        "exists from the OPEN"
    );
    write_at(&writer, &h, 0, &data).await;
    assert_eq!(stat_size(&other, "/new.bin").await, 100);
    assert_eq!(stat_size(&writer, "/new.bin").await, 100);
    assert_eq!(
        writer.raw.fstat(&h).await.expect("fstat").attrs.size,
        Some(100)
    );
    assert_eq!(listing(&other, "/").await, [file("new.bin", 100)]);
    assert_eq!(t.s3.keys(&t.alice.prefix).await, Vec::<String>::new());
    assert!(t.s3.pending_uploads(&t.alice.prefix).await.is_empty());

    writer.raw.close(&h).await.expect("close");
    assert_eq!(
        t.s3.object(&key).await.map(|b| sha256(&b)),
        Some(sha256(&data))
    );
    assert!(t.server().storage().writing().is_empty());
    assert_eq!(stat_size(&other, "/new.bin").await, 100);
    assert_eq!(listing(&other, "/").await, [file("new.bin", 100)]);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_multipart_file_shows_its_bytes_so_far_and_commits_exactly() {
    let t = TestServer::start().await;
    let key = format!("{}big.bin", t.alice.prefix);
    let writer = t.russh_sftp(&t.alice).await;
    let other = t.russh_sftp(&t.alice).await;
    let data = random_bytes(PART + MIB, 2);

    let h = open(&writer, "/big.bin", create()).await;
    write_at(&writer, &h, 0, &data[..PART + 1]).await;
    assert_eq!(stat_size(&other, "/big.bin").await, PART as u64 + 1);
    assert_eq!(t.s3.keys(&t.alice.prefix).await, Vec::<String>::new());
    write_at(&writer, &h, PART as u64 + 1, &data[PART + 1..]).await;
    assert_eq!(stat_size(&other, "/big.bin").await, data.len() as u64);
    assert_eq!(t.s3.keys(&t.alice.prefix).await, Vec::<String>::new());

    writer.raw.close(&h).await.expect("close");
    assert_eq!(
        t.s3.object(&key).await.map(|b| sha256(&b)),
        Some(sha256(&data))
    );
    assert!(t.s3.pending_uploads(&t.alice.prefix).await.is_empty());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_directories_of_a_file_being_written_exist_with_it() {
    let t = TestServer::start().await;
    let key = format!("{}new/sub/f.txt", t.alice.prefix);
    let writer = t.russh_sftp(&t.alice).await;
    let other = t.russh_sftp(&t.alice).await;

    let h = open(&writer, "/new/sub/f.txt", create()).await;
    write_at(&writer, &h, 0, b"0123456789").await;
    assert!(other.raw.stat("/new").await.expect("stat").attrs.is_dir());
    assert!(other
        .raw
        .stat("/new/sub")
        .await
        .expect("stat")
        .attrs
        .is_dir());
    assert_eq!(
        listing(&other, "/").await,
        [("new".to_string(), true, 0)],
        "the new directory is listed"
    );
    assert_eq!(
        listing(&other, "/new").await,
        [("sub".to_string(), true, 0)]
    );
    assert_eq!(listing(&other, "/new/sub").await, [file("f.txt", 10)]);
    // Not empty, and not to be moved from under the upload (by the session writing it,
    // which cannot close it while its RENAME is being answered).
    assert_eq!(
        status_code(&other.raw.rmdir("/new/sub").await),
        Some(StatusCode::Failure)
    );
    assert!(writer.raw.rename("/new", "/moved").await.is_err());
    assert!(writer.raw.rename("/new/sub/f.txt", "/g.txt").await.is_err());
    // EXCL: the name is taken.
    assert!(other
        .raw
        .open(
            "/new/sub/f.txt",
            create() | OpenFlags::EXCLUDE,
            FileAttributes::default()
        )
        .await
        .is_err());
    assert_eq!(t.s3.keys(&t.alice.prefix).await, Vec::<String>::new());

    writer.raw.close(&h).await.expect("close");
    assert_eq!(t.s3.keys(&t.alice.prefix).await, vec![key.clone()]);
    assert_eq!(t.s3.object(&key).await, Some(b"0123456789".to_vec()));
    assert_eq!(listing(&other, "/new/sub").await, [file("f.txt", 10)]);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_truncating_overwrite_shows_the_new_bytes_and_keeps_the_old_object_until_close() {
    let t = TestServer::start().await;
    let key = format!("{}f.txt", t.alice.prefix);
    t.s3.put(&key, &[7u8; 50]).await;
    let writer = t.russh_sftp(&t.alice).await;
    let other = t.russh_sftp(&t.alice).await;
    assert_eq!(listing(&other, "/").await, [file("f.txt", 50)]);

    let h = open(&writer, "/f.txt", create()).await;
    write_at(&writer, &h, 0, &[8u8; 20]).await;
    assert_eq!(stat_size(&other, "/f.txt").await, 20);
    assert_eq!(listing(&other, "/").await, [file("f.txt", 20)]);
    assert_eq!(t.s3.object(&key).await, Some(vec![7u8; 50]));

    writer.raw.close(&h).await.expect("close");
    assert_eq!(t.s3.object(&key).await, Some(vec![8u8; 20]));
    assert_eq!(listing(&other, "/").await, [file("f.txt", 20)]);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_time_set_by_path_while_written_is_stored_with_the_object() {
    let t = TestServer::start().await;
    let key = format!("{}timed.txt", t.alice.prefix);
    let writer = t.russh_sftp(&t.alice).await;
    let other = t.russh_sftp(&t.alice).await;
    let old = 1_600_000_000u32;

    let h = open(&writer, "/timed.txt", create()).await;
    write_at(&writer, &h, 0, b"hello").await;
    let attrs = FileAttributes {
        atime: Some(old),
        mtime: Some(old),
        ..FileAttributes::empty()
    };
    other
        .raw
        .setstat("/timed.txt", attrs)
        .await
        .expect("setstat");
    let shown = other.raw.stat("/timed.txt").await.expect("stat").attrs;
    assert_eq!(shown.mtime, Some(old));
    writer.raw.close(&h).await.expect("close");

    let head =
        t.s3.client
            .head_object()
            .bucket(&t.s3.bucket)
            .key(&key)
            .send()
            .await
            .expect("head");
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get("mtime"))
            .map(String::as_str),
        Some("1600000000")
    );
    let shown = other.raw.stat("/timed.txt").await.expect("stat").attrs;
    assert_eq!(shown.mtime, Some(old));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_upload_leaves_nothing_and_stops_showing() {
    let t = TestServer::start().await;
    let writer = t.russh_sftp(&t.alice).await;
    let other = t.russh_sftp(&t.alice).await;
    writer
        .raw
        .mkdir("/dir", FileAttributes::empty())
        .await
        .expect("mkdir");
    let before = t.s3.keys(&t.alice.prefix).await;

    // A directory has the name: the open answers at once, the commit is refused.
    let h = open(&writer, "/dir", create()).await;
    let _ = writer.raw.write(&h, 0, b"data".to_vec()).await;
    assert!(writer.raw.close(&h).await.is_err(), "the commit is refused");
    assert!(other.raw.stat("/dir").await.expect("stat").attrs.is_dir());
    assert!(t.server().storage().writing().is_empty());
    assert_eq!(
        t.s3.keys(&t.alice.prefix).await,
        before,
        "nothing was stored"
    );
    assert!(t.s3.pending_uploads(&t.alice.prefix).await.is_empty());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_cut_off_before_close_stops_showing_and_leaves_nothing() {
    let t = TestServer::start().await;
    let writer = t.russh_sftp(&t.alice).await;
    let other = t.russh_sftp(&t.alice).await;

    let h = open(&writer, "/cut.bin", create()).await;
    write_at(&writer, &h, 0, &random_bytes(1000, 3)).await;
    assert_eq!(stat_size(&other, "/cut.bin").await, 1000);
    drop(writer);
    wait_none_written(&t).await;
    assert_eq!(
        status_code(&other.raw.stat("/cut.bin").await),
        Some(StatusCode::NoSuchFile)
    );
    assert_eq!(listing(&other, "/").await, Vec::new());
    assert_eq!(t.s3.keys(&t.alice.prefix).await, Vec::<String>::new());
    assert!(t
        .s3
        .wait_no_pending_uploads(&t.alice.prefix)
        .await
        .is_empty());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_user_does_not_see_a_file_being_written() {
    let t = TestServer::start().await;
    let writer = t.russh_sftp(&t.alice).await;
    let bob = t.russh_sftp(&t.bob).await;
    let h = open(&writer, "/secret.txt", create()).await;
    write_at(&writer, &h, 0, b"x").await;
    assert_eq!(
        status_code(&bob.raw.stat("/secret.txt").await),
        Some(StatusCode::NoSuchFile)
    );
    assert_eq!(listing(&bob, "/").await, Vec::new());
    writer.raw.close(&h).await.expect("close");
    t.shutdown().await;
}

/// A client may send the next request over another connection before the CLOSE of a file
/// it has closed is done (sshfs): an OPEN for reading, a REMOVE and a RENAME of its folder
/// wait for the upload to end, then see the committed file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_remove_or_rename_from_another_connection_waits_for_the_close() {
    let t = TestServer::start().await;
    let p = t.alice.prefix.clone();
    let writer = t.russh_sftp(&t.alice).await;
    let other = std::sync::Arc::new(t.russh_sftp(&t.alice).await);
    let data = random_bytes(3000, 4);

    let h = open(&writer, "/d/f.bin", create()).await;
    write_at(&writer, &h, 0, &data).await;
    let reader = {
        let other = other.clone();
        tokio::spawn(async move {
            let h = other
                .raw
                .open("/d/f.bin", OpenFlags::READ, FileAttributes::default())
                .await
                .expect("open for reading")
                .handle;
            let got = other.raw.read(&h, 0, 32 * 1024).await.expect("read").data;
            other.raw.close(&h).await.expect("close");
            got
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    writer.raw.close(&h).await.expect("close");
    let got = tokio::time::timeout(HANG, reader)
        .await
        .expect("the read ended")
        .expect("reader");
    assert_eq!(sha256(&got), sha256(&data), "the committed bytes are read");

    let h = open(&writer, "/gone.txt", create()).await;
    write_at(&writer, &h, 0, b"soon removed").await;
    let remover = {
        let other = other.clone();
        tokio::spawn(async move { other.raw.remove("/gone.txt").await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    writer.raw.close(&h).await.expect("close");
    tokio::time::timeout(HANG, remover)
        .await
        .expect("the remove ended")
        .expect("remover")
        .expect("remove");
    assert_eq!(t.s3.object(&format!("{p}gone.txt")).await, None);

    let h = open(&writer, "/d/g.bin", create()).await;
    write_at(&writer, &h, 0, b"g").await;
    let renamer = {
        let other = other.clone();
        tokio::spawn(async move { other.raw.rename("/d", "/e").await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    writer.raw.close(&h).await.expect("close");
    tokio::time::timeout(HANG, renamer)
        .await
        .expect("the rename ended")
        .expect("renamer")
        .expect("rename");
    let mut keys = t.s3.keys(&p).await;
    keys.sort();
    assert_eq!(keys, [format!("{p}e/f.bin"), format!("{p}e/g.bin")]);
    assert_eq!(
        t.s3.object(&format!("{p}e/f.bin"))
            .await
            .map(|b| sha256(&b)),
        Some(sha256(&data))
    );
    t.shutdown().await;
}
