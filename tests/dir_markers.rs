//! Directories on a store that cannot hold empty `dir/` markers (`rclone serve s3`):
//! with `--s3-dir-markers off` mkdir writes nothing to the bucket and the server keeps
//! the empty directory in memory until a file is written under it. Run against the
//! embedded store with markers forced off; the bucket is checked directly for markers.

use crate::common::own_store::start_with_own_store;
use crate::common::*;
use russh_sftp::protocol::{FileAttributes, StatusCode};
use s3sftp::storage::DirMarkers;

fn attrs() -> FileAttributes {
    FileAttributes::empty()
}

async fn without_markers() -> TestServer {
    let t = TestServer::start_with(|c| c.transfer.dir_markers = DirMarkers::Off).await;
    assert!(!t.server().storage().writes_markers());
    t
}

/// The names READDIR lists in `dir`, with whether each is a directory.
async fn listing(s: &RusshSftp, dir: &str) -> Vec<(String, bool)> {
    let h = s.raw.opendir(dir).await.expect("opendir").handle;
    let mut names = Vec::new();
    loop {
        match s.raw.readdir(&h).await {
            Ok(batch) => names.extend(batch.files.into_iter().filter_map(|f| {
                let is_dir = f.attrs.is_dir();
                (f.filename != "." && f.filename != "..").then_some((f.filename, is_dir))
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

fn dir(name: &str) -> (String, bool) {
    (name.to_string(), true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn empty_directories_live_in_memory_and_no_marker_is_written() {
    let t = without_markers().await;
    let p = t.alice.prefix.clone();
    let s = t.russh_sftp(&t.alice).await;

    s.raw.mkdir("/d", attrs()).await.expect("mkdir");
    assert_eq!(
        status_code(&s.raw.mkdir("/d", attrs()).await),
        Some(StatusCode::Failure),
        "mkdir twice"
    );
    assert!(s.raw.stat("/d").await.expect("stat").attrs.is_dir());
    assert_eq!(listing(&s, "/").await, [dir("d")]);
    assert!(listing(&s, "/d").await.is_empty());
    assert_eq!(t.s3.keys(&p).await, Vec::<String>::new(), "no marker");

    // Another session of the user sees it (one set per server).
    let other = t.russh_sftp(&t.alice).await;
    assert!(other.raw.stat("/d").await.expect("stat").attrs.is_dir());

    s.raw.rmdir("/d").await.expect("rmdir");
    assert_eq!(
        status_code(&s.raw.stat("/d").await),
        Some(StatusCode::NoSuchFile)
    );
    assert_eq!(
        status_code(&other.raw.rmdir("/d").await),
        Some(StatusCode::NoSuchFile)
    );
    assert!(listing(&s, "/").await.is_empty());
    assert_eq!(t.server().storage().empty_dirs_kept(), 0);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_written_under_a_directory_makes_it_exist_by_its_key() {
    let t = without_markers().await;
    let p = t.alice.prefix.clone();
    let s = t.russh_sftp(&t.alice).await;

    s.raw.mkdir("/a", attrs()).await.expect("mkdir");
    s.upload("/a/f", b"data").await.expect("upload under it");
    assert_eq!(t.s3.keys(&p).await, [format!("{p}a/f")], "only the file");
    assert_eq!(t.server().storage().empty_dirs_kept(), 0, "filled");
    assert!(s.raw.stat("/a").await.expect("stat").attrs.is_dir());
    assert_eq!(listing(&s, "/").await, [dir("a")], "listed once");
    assert_eq!(
        status_code(&s.raw.rmdir("/a").await),
        Some(StatusCode::Failure),
        "not empty"
    );
    assert_eq!(
        status_code(&s.raw.remove("/a").await),
        Some(StatusCode::Failure),
        "remove of a dir"
    );

    // Removing the last file leaves the directory, as on a file system.
    s.raw.remove("/a/f").await.expect("remove");
    assert!(s.raw.stat("/a").await.expect("stat").attrs.is_dir());
    assert_eq!(listing(&s, "/").await, [dir("a")]);
    s.raw.rmdir("/a").await.expect("rmdir now empty");
    assert_eq!(
        status_code(&s.raw.stat("/a").await),
        Some(StatusCode::NoSuchFile)
    );
    assert_eq!(t.s3.keys(&p).await, Vec::<String>::new());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nested_empty_directories_rename_and_stay_with_the_user() {
    let t = without_markers().await;
    let p = t.alice.prefix.clone();
    let s = t.russh_sftp(&t.alice).await;

    s.raw.mkdir("/x", attrs()).await.expect("mkdir x");
    s.raw.mkdir("/x/y", attrs()).await.expect("mkdir x/y");
    assert_eq!(listing(&s, "/").await, [dir("x")]);
    assert_eq!(listing(&s, "/x").await, [dir("y")]);
    assert_eq!(
        status_code(&s.raw.rmdir("/x").await),
        Some(StatusCode::Failure),
        "x holds y"
    );
    // A file beside a kept directory: both listed.
    s.upload("/x/z", b"z").await.expect("upload");
    assert_eq!(
        listing(&s, "/x").await,
        [dir("y"), ("z".to_string(), false)]
    );
    s.raw.remove("/x/z").await.expect("remove");

    // An empty directory renames.
    s.raw.rename("/x/y", "/x/w").await.expect("rename");
    assert_eq!(listing(&s, "/x").await, [dir("w")]);
    assert_eq!(
        status_code(&s.raw.stat("/x/y").await),
        Some(StatusCode::NoSuchFile)
    );

    // Another user does not see them.
    let bob = t.russh_sftp(&t.bob).await;
    assert_eq!(
        status_code(&bob.raw.stat("/x").await),
        Some(StatusCode::NoSuchFile)
    );
    assert!(listing(&bob, "/").await.is_empty());

    s.raw.rmdir("/x/w").await.expect("rmdir w");
    s.raw.rmdir("/x").await.expect("rmdir x");
    assert!(listing(&s, "/").await.is_empty());
    assert_eq!(t.s3.keys(&p).await, Vec::<String>::new(), "never a marker");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openssh_sftp_makes_and_fills_directories_without_markers() {
    let t = without_markers().await;
    let p = t.alice.prefix.clone();
    let local = write_local(t.dir.path(), "f.txt", b"hello");
    let batch = format!(
        "mkdir bench\nmkdir bench/sub\nput {} bench/f.txt\nls -l bench\nrmdir bench/sub\n",
        local.display()
    );
    let out = t.sftp(&t.alice, &batch).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("sub"), "{}", stdout(&out));
    assert_eq!(t.s3.keys(&p).await, [format!("{p}bench/f.txt")]);
    t.shutdown().await;
}

/// With `auto`, a store that keeps markers (here the test's own store, not the server's
/// embedded one, so the probe runs) keeps them on, and the probe leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_probe_leaves_nothing_behind() {
    let (t, view) = start_with_own_store(|c| c.transfer.dir_markers = DirMarkers::Auto).await;
    let probes: Vec<String> = view
        .keys("")
        .await
        .into_iter()
        .filter(|k| k.contains(".s3sftp-probe-"))
        .collect();
    assert!(probes.is_empty(), "{probes:?}");
    if external_s3().is_none() {
        assert!(t.server().storage().writes_markers());
    }
    t.shutdown().await;
}
