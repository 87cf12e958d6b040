//! Modification times kept on S3 as rclone keeps them (`x-amz-meta-mtime`): OpenSSH
//! `put -p` stores the time with the object at no extra request; a SETSTAT after the
//! upload costs one CopyObject in place, none when the time is already the one stored;
//! `scp -p` (SFTP and legacy) keeps times; `rclone sync` run twice copies nothing the
//! second time and sets no time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::bucket::BucketView;
use crate::common::fault_proxy::{start_behind_proxy, Op};
use crate::common::*;
use russh_sftp::protocol::{FileAttributes, StatusCode};

const OLD: u64 = 1_600_000_000;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A local file of `data` whose modification time is `secs`.
fn old_file(dir: &std::path::Path, name: &str, data: &[u8], secs: u64) -> std::path::PathBuf {
    let path = write_local(dir, name, data);
    let f = std::fs::File::options()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_modified(at(secs)).expect("set mtime");
    path
}

/// The object's `x-amz-meta-mtime`, Content-Type and storage class, read in the bucket.
async fn stored(view: &BucketView, key: &str) -> (Option<String>, Option<String>) {
    let out = view
        .client
        .head_object()
        .bucket(&view.bucket)
        .key(key)
        .send()
        .await
        .expect("head");
    (
        out.metadata().and_then(|m| m.get("mtime").cloned()),
        out.content_type().map(str::to_string),
    )
}

/// Every file of `path` and its listed mtime.
async fn listed_times(s: &RusshSftp, path: &str) -> Vec<(String, Option<u32>)> {
    let h = s.raw.opendir(path).await.expect("opendir").handle;
    let mut out = Vec::new();
    loop {
        match s.raw.readdir(&h).await {
            Ok(batch) => out.extend(batch.files.into_iter().map(|f| (f.filename, f.attrs.mtime))),
            Err(e) => {
                assert_eq!(status_code::<()>(&Err(e)), Some(StatusCode::Eof));
                break;
            }
        }
    }
    s.raw.close(&h).await.expect("closedir");
    out.sort();
    out
}

fn mtime_attrs(secs: u64) -> FileAttributes {
    FileAttributes {
        mtime: Some(secs as u32),
        atime: Some(secs as u32),
        ..FileAttributes::default()
    }
}

/// `put -p` (small and multipart): the time rides on PutObject/CreateMultipartUpload,
/// no CopyObject; STAT, `ls -l` and a new session's listing show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openssh_put_p_stores_the_time_with_the_object() {
    let (t, proxy, view) = start_behind_proxy(|_| {}).await;
    let p = t.alice.prefix.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let small = old_file(dir.path(), "small", b"small file", OLD);
    let big = old_file(dir.path(), "big", &random_bytes(9 << 20, 7), OLD + 60);
    let out = t
        .sftp(
            &t.alice,
            &format!(
                "put -p {} /small\nput -p {} /big\nls -l /\n",
                small.display(),
                big.display()
            ),
        )
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(proxy.hits(Op::CopyObject), 0, "no copy for put -p");
    assert!(
        proxy.hits(Op::CreateMultipartUpload) >= 1,
        "big is multipart"
    );
    assert_eq!(
        stored(&view, &format!("{p}small")).await.0.as_deref(),
        Some("1600000000")
    );
    assert_eq!(
        stored(&view, &format!("{p}big")).await.0.as_deref(),
        Some("1600000060")
    );
    // `ls -l` shows 2020 (the year: the date is more than six months old).
    let listing = stdout(&out);
    assert!(
        listing.lines().filter(|l| l.contains("2020")).count() >= 2,
        "{listing}"
    );

    let s = t.russh_sftp(&t.alice).await;
    let attrs = s.raw.stat("/small").await.expect("stat").attrs;
    assert_eq!(attrs.mtime, Some(OLD as u32));
    let other = t.russh_sftp(&t.alice).await;
    assert_eq!(
        listed_times(&other, "/").await,
        vec![
            ("big".to_string(), Some(OLD as u32 + 60)),
            ("small".to_string(), Some(OLD as u32))
        ]
    );
    assert_eq!(
        view.object(&format!("{p}small")).await.as_deref(),
        Some(&b"small file"[..])
    );
    t.shutdown().await;
}

/// A SETSTAT after the upload (PuTTY, paramiko `utime`, WinSCP, rclone) stores the time
/// with one CopyObject in place that keeps the content and Content-Type; the same time
/// again costs no copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn setstat_after_close_copies_once_and_never_twice() {
    let (t, proxy, view) = start_behind_proxy(|_| {}).await;
    let p = t.alice.prefix.clone();
    view.client
        .put_object()
        .bucket(&view.bucket)
        .key(format!("{p}doc.txt"))
        .content_type("text/plain")
        .body(b"contents".to_vec().into())
        .send()
        .await
        .expect("put");
    let s = t.russh_sftp(&t.alice).await;
    s.raw
        .setstat("/doc.txt", mtime_attrs(OLD))
        .await
        .expect("setstat");
    assert_eq!(proxy.hits(Op::CopyObject), 1);
    let (mtime, content_type) = stored(&view, &format!("{p}doc.txt")).await;
    assert_eq!(mtime.as_deref(), Some("1600000000"));
    assert_eq!(content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        view.object(&format!("{p}doc.txt")).await.as_deref(),
        Some(&b"contents"[..])
    );
    assert_eq!(
        s.raw.stat("/doc.txt").await.expect("stat").attrs.mtime,
        Some(OLD as u32)
    );

    // The same time again, from this session and from a new one: no copy.
    s.raw
        .setstat("/doc.txt", mtime_attrs(OLD))
        .await
        .expect("again");
    let other = t.russh_sftp(&t.alice).await;
    other
        .raw
        .setstat("/doc.txt", mtime_attrs(OLD))
        .await
        .expect("other");
    assert_eq!(proxy.hits(Op::CopyObject), 1, "same time: no copy");

    // A time set on an open write handle before CLOSE rides along.
    let h = s
        .raw
        .open(
            "/fresh",
            russh_sftp::protocol::OpenFlags::WRITE
                | russh_sftp::protocol::OpenFlags::CREATE
                | russh_sftp::protocol::OpenFlags::TRUNCATE,
            FileAttributes::default(),
        )
        .await
        .expect("open")
        .handle;
    s.raw.write(&h, 0, b"new".to_vec()).await.expect("write");
    s.raw
        .fsetstat(&h, mtime_attrs(OLD + 5))
        .await
        .expect("fsetstat");
    s.raw.close(&h).await.expect("close");
    assert_eq!(
        proxy.hits(Op::CopyObject),
        1,
        "fsetstat before close: no copy"
    );
    assert_eq!(
        stored(&view, &format!("{p}fresh")).await.0.as_deref(),
        Some("1600000005")
    );
    t.shutdown().await;
}

/// `scp -p`, over SFTP and with the legacy protocol (`-O`), keeps the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scp_p_keeps_times() {
    let (t, proxy, view) = start_behind_proxy(|_| {}).await;
    let p = t.alice.prefix.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let local = old_file(dir.path(), "f", b"scp data", OLD);
    let local = local.to_str().expect("utf-8");
    for (args, name, secs) in [
        (vec!["-p"], "sftp-mode", OLD),
        (vec!["-O", "-p"], "legacy", OLD),
    ] {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.push(local.to_string());
        all.push(format!("REMOTE:/{name}"));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = t.scp(&t.alice, &refs).await;
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_eq!(
            stored(&view, &format!("{p}{name}")).await.0,
            Some(secs.to_string()),
            "{name}"
        );
    }
    assert_eq!(proxy.hits(Op::CopyObject), 0);

    // And back: `scp -p` of the stored file gives the kept time.
    let back = dir.path().join("back");
    let out = t
        .scp(
            &t.alice,
            &["-O", "-p", "REMOTE:/legacy", back.to_str().expect("utf-8")],
        )
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let modified = std::fs::metadata(&back)
        .expect("meta")
        .modified()
        .expect("mtime");
    assert_eq!(modified, at(OLD));
    t.shutdown().await;
}

/// `rclone sync` to the server over SFTP, twice: the second run copies nothing and sets
/// no time (no CopyObject, no upload).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rclone_sync_twice_transfers_nothing_the_second_time() {
    if std::process::Command::new("rclone")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("rclone not installed: skipped");
        return;
    }
    let (t, proxy, view) = start_behind_proxy(|_| {}).await;
    let p = t.alice.prefix.clone();
    let src = tempfile::tempdir().expect("tempdir");
    for i in 0..5u64 {
        old_file(
            src.path(),
            &format!("f{i}"),
            format!("file {i}").as_bytes(),
            OLD + i,
        );
    }
    let sync = || {
        let mut cmd = tokio::process::Command::new("rclone");
        cmd.env("RCLONE_CONFIG_GW_TYPE", "sftp")
            .env("RCLONE_CONFIG_GW_HOST", "127.0.0.1")
            .env("RCLONE_CONFIG_GW_PORT", t.port.to_string())
            .env("RCLONE_CONFIG_GW_USER", &t.alice.name)
            .env("RCLONE_CONFIG_GW_KEY_FILE", &t.alice.key_path)
            .env("RCLONE_CONFIG_GW_SHELL_TYPE", "none")
            .env("RCLONE_CONFIG_GW_DISABLE_HASHCHECK", "true")
            .env("RCLONE_CONFIG", "/dev/null")
            .args(["sync", "-v", "--stats-one-line"])
            .arg(src.path())
            .arg("gw:/synced");
        cmd.output()
    };
    let first = sync().await.expect("rclone runs");
    assert!(first.status.success(), "{}", stderr(&first));
    for i in 0..5u64 {
        assert_eq!(
            stored(&view, &format!("{p}synced/f{i}")).await.0,
            Some((OLD + i).to_string())
        );
    }
    let (copies, puts) = (proxy.hits(Op::CopyObject), proxy.hits(Op::PutObject));
    eprintln!("first rclone sync: {puts} PutObject, {copies} CopyObject");
    let second = sync().await.expect("rclone runs");
    let log = stderr(&second);
    assert!(second.status.success(), "{log}");
    assert!(!log.contains("Copied"), "nothing copied: {log}");
    assert!(
        !log.contains("Updated modification time"),
        "no time set: {log}"
    );
    assert_eq!(proxy.hits(Op::CopyObject), copies, "no copy: {log}");
    assert_eq!(proxy.hits(Op::PutObject), puts, "no upload: {log}");
    t.shutdown().await;
}

/// What showing kept times in listings costs, listed by a new session: with `--list-mtimes
/// auto` a directory of up to `MTIME_HEADS_MAX` (100) files costs one HEAD per file (16 in
/// flight) and a larger one none; with `off`, none. The times are printed (`--nocapture`)
/// for docs/filesystem.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listings_head_small_directories_only_with_list_mtimes_auto() {
    use s3sftp::storage::list::MTIME_HEADS_MAX;
    use s3sftp::storage::ListMtimes;
    for mode in [ListMtimes::Off, ListMtimes::Auto] {
        let (t, proxy, view) = start_behind_proxy(|c| c.transfer.list_mtimes = mode).await;
        let p = t.alice.prefix.clone();
        let mut puts = tokio::task::JoinSet::new();
        for (dir, n) in [("small", MTIME_HEADS_MAX), ("large", MTIME_HEADS_MAX + 50)] {
            for i in 0..n {
                let (client, bucket, key) = (
                    view.client.clone(),
                    view.bucket.clone(),
                    format!("{p}{dir}/f{i:04}"),
                );
                puts.spawn(async move {
                    client
                        .put_object()
                        .bucket(bucket)
                        .key(key)
                        .metadata("mtime", OLD.to_string())
                        .body(b"x".to_vec().into())
                        .send()
                        .await
                        .expect("put")
                });
                if puts.len() >= 32 {
                    puts.join_next().await;
                }
            }
        }
        while puts.join_next().await.is_some() {}
        let s = t.russh_sftp(&t.alice).await;
        for (dir, n) in [("small", MTIME_HEADS_MAX), ("large", MTIME_HEADS_MAX + 50)] {
            let heads = proxy.hits(Op::HeadObject);
            let started = std::time::Instant::now();
            let listed = listed_times(&s, &format!("/{dir}")).await;
            let took = started.elapsed();
            let heads = proxy.hits(Op::HeadObject) - heads;
            eprintln!("list-mtimes {mode:?}: {n} files listed in {took:?} with {heads} HEADs");
            assert_eq!(listed.len(), n);
            let kept = listed
                .iter()
                .filter(|(_, m)| *m == Some(OLD as u32))
                .count();
            if mode == ListMtimes::Auto && n <= MTIME_HEADS_MAX {
                assert_eq!(kept, n);
                assert_eq!(heads, 1 + n as u32, "OPENDIR's, and one per file");
                // The HEADs are remembered: listing again costs none.
                let again = proxy.hits(Op::HeadObject);
                listed_times(&s, &format!("/{dir}")).await;
                assert!(proxy.hits(Op::HeadObject) <= again + 1, "no HEAD per file");
            } else {
                assert_eq!(kept, 0, "{mode:?} {dir}");
                assert_eq!(heads, 1, "only OPENDIR's looks at the directory's name");
            }
        }
        t.shutdown().await;
    }
}
