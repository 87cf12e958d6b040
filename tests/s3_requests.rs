//! The S3 requests SFTP operations cost, counted by a proxy between the server and the
//! real S3 server (the embedded store, or the external one in CI): what a session
//! learnt from a MKDIR or a complete listing spares the per-upload check that no
//! directory has the file's name, and never lets an upload onto a known directory's name
//! through.

use crate::common::bucket::BucketView;
use crate::common::fault_proxy::{start_behind_proxy, Op};
use crate::common::*;
use russh_sftp::protocol::{FileAttributes, StatusCode};

fn attrs() -> FileAttributes {
    FileAttributes::default()
}

/// Reads a directory to its end, as a client's `ls` does.
async fn list_all(s: &RusshSftp, path: &str) -> Vec<String> {
    let h = s.raw.opendir(path).await.expect("opendir").handle;
    let mut names = Vec::new();
    loop {
        match s.raw.readdir(&h).await {
            Ok(batch) => names.extend(batch.files.into_iter().map(|f| f.filename)),
            Err(e) => {
                assert_eq!(status_code::<()>(&Err(e)), Some(StatusCode::Eof));
                break;
            }
        }
    }
    s.raw.close(&h).await.expect("closedir");
    names
}

async fn assert_object(view: &BucketView, key: &str, data: Option<&[u8]>) {
    assert_eq!(view.object(key).await.as_deref(), data, "object {key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_into_a_new_directory_skip_the_directory_check() {
    let (t, proxy, view) = start_behind_proxy(|_| {}).await;
    let p = t.alice.prefix.clone();
    let s = t.russh_sftp(&t.alice).await;
    s.raw.mkdir("/new", attrs()).await.expect("mkdir");

    let lists = proxy.hits(Op::ListObjectsV2);
    let puts = proxy.hits(Op::PutObject);
    for i in 0..5 {
        let data = format!("file {i}");
        s.upload(&format!("/new/f{i}"), data.as_bytes())
            .await
            .expect("upload");
    }
    assert_eq!(proxy.hits(Op::PutObject), puts + 5, "one PutObject each");
    assert_eq!(
        proxy.hits(Op::ListObjectsV2),
        lists,
        "no LIST: the directory was created empty by this session"
    );
    for i in 0..5 {
        let data = format!("file {i}");
        assert_object(&view, &format!("{p}new/f{i}"), Some(data.as_bytes())).await;
    }

    // A subdirectory this session makes is known at once: an upload onto its name is
    // checked (a LIST) and refused, and nothing is stored under that name.
    s.raw.mkdir("/new/sub", attrs()).await.expect("mkdir sub");
    let lists = proxy.hits(Op::ListObjectsV2);
    let refused = s.upload("/new/sub", b"not a file").await;
    assert!(refused.is_err(), "upload onto a directory: {refused:?}");
    assert!(proxy.hits(Op::ListObjectsV2) > lists, "the check ran");
    assert_object(&view, &format!("{p}new/sub"), None).await;

    // So is a directory that an upload of this session made implicitly.
    s.upload("/new/implied/deep/f", b"deep")
        .await
        .expect("deep upload");
    let refused = s.upload("/new/implied", b"not a file").await;
    assert!(
        refused.is_err(),
        "upload onto an implied directory: {refused:?}"
    );
    assert_object(&view, &format!("{p}new/implied"), None).await;
    assert_object(&view, &format!("{p}new/implied/deep/f"), Some(b"deep")).await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_complete_listing_answers_the_directory_check() {
    let (t, proxy, view) = start_behind_proxy(|_| {}).await;
    let p = t.alice.prefix.clone();
    view.put(&format!("{p}d/file"), b"f").await;
    view.put(&format!("{p}d/dir/inner"), b"i").await;
    let s = t.russh_sftp(&t.alice).await;

    let mut names = list_all(&s, "/d").await;
    names.sort();
    assert!(names.contains(&"dir".to_string()) && names.contains(&"file".to_string()));

    let lists = proxy.hits(Op::ListObjectsV2);
    s.upload("/d/fresh", b"fresh").await.expect("upload");
    s.upload("/d/file", b"replaced").await.expect("overwrite");
    assert_eq!(
        proxy.hits(Op::ListObjectsV2),
        lists,
        "answered from the listing"
    );
    assert_object(&view, &format!("{p}d/fresh"), Some(b"fresh")).await;
    assert_object(&view, &format!("{p}d/file"), Some(b"replaced")).await;

    // The listing showed `dir` as a directory: that name is still checked, and refused.
    let refused = s.upload("/d/dir", b"not a file").await;
    assert!(
        refused.is_err(),
        "upload onto a listed directory: {refused:?}"
    );
    assert!(proxy.hits(Op::ListObjectsV2) > lists, "the check ran");
    assert_object(&view, &format!("{p}d/dir"), None).await;
    assert_object(&view, &format!("{p}d/dir/inner"), Some(b"i")).await;

    // Another session knows nothing of this one's listing: its upload onto the
    // directory's name is checked and refused too.
    let other = t.russh_sftp(&t.alice).await;
    let lists = proxy.hits(Op::ListObjectsV2);
    other.upload("/d/other", b"o").await.expect("upload");
    assert!(
        proxy.hits(Op::ListObjectsV2) > lists,
        "a session without a listing asks S3"
    );
    assert!(other.upload("/d/dir", b"x").await.is_err());
    assert_object(&view, &format!("{p}d/dir"), None).await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_metadata_cache_every_upload_is_checked() {
    let (t, proxy, view) =
        start_behind_proxy(|c| c.transfer.metadata_ttl = std::time::Duration::ZERO).await;
    let p = t.alice.prefix.clone();
    let s = t.russh_sftp(&t.alice).await;
    s.raw.mkdir("/new", attrs()).await.expect("mkdir");
    let lists = proxy.hits(Op::ListObjectsV2);
    for i in 0..3 {
        s.upload(&format!("/new/f{i}"), b"x").await.expect("upload");
    }
    assert_eq!(
        proxy.hits(Op::ListObjectsV2),
        lists + 3,
        "one directory check per upload"
    );
    assert_object(&view, &format!("{p}new/f2"), Some(b"x")).await;
    t.shutdown().await;
}

/// The bench's small-file workload through OpenSSH `sftp`: `mkdir`, `cd`, `put *`. The
/// LISTs the session sends do not grow with the number of files.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openssh_put_into_a_new_directory_lists_a_fixed_number_of_times() {
    let (t, proxy, view) = start_behind_proxy(|_| {}).await;
    let p = t.alice.prefix.clone();
    let local = t.dir.path().join("many");
    std::fs::create_dir(&local).expect("local dir");
    for i in 0..20 {
        std::fs::write(local.join(format!("f{i:02}")), format!("data {i}")).expect("write");
    }
    let lists = proxy.hits(Op::ListObjectsV2);
    let out = t
        .sftp(
            &t.alice,
            &format!("mkdir up\ncd up\nlcd {}\nput *\n", local.display()),
        )
        .await;
    assert!(out.status.success(), "sftp: {}", stderr(&out));
    let listed = proxy.hits(Op::ListObjectsV2) - lists;
    assert!(
        listed <= 3,
        "{listed} LISTs for mkdir, cd and 20 uploads (the directory lookups only)"
    );
    let keys = view.keys(&format!("{p}up/")).await;
    assert_eq!(
        keys.len(),
        21,
        "20 files and the directory marker: {keys:?}"
    );
    assert_object(&view, &format!("{p}up/f07"), Some(b"data 7")).await;
    t.shutdown().await;
}

/// A rename remembers the copy it made: renaming it back (or a STAT of it) asks S3 nothing
/// about the new name, only about the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renamed_file_is_known_to_the_session_that_renamed_it() {
    let (t, proxy, view) = start_behind_proxy(|_| {}).await;
    let p = t.alice.prefix.clone();
    view.put(&format!("{p}a"), b"contents").await;
    let s = t.russh_sftp(&t.alice).await;
    s.raw.rename("/a", "/b").await.expect("rename a b");

    let heads = proxy.hits(Op::HeadObject);
    let size = s.raw.stat("/b").await.expect("stat b").attrs.size;
    assert_eq!(size, Some(8));
    assert_eq!(
        proxy.hits(Op::HeadObject),
        heads,
        "STAT of the copy: no HEAD"
    );

    let (copies, deletes) = (proxy.hits(Op::CopyObject), proxy.hits(Op::DeleteObject));
    s.raw.rename("/b", "/a").await.expect("rename b a");
    assert_eq!(
        proxy.hits(Op::HeadObject),
        heads + 1,
        "only the target is looked up"
    );
    assert_eq!(proxy.hits(Op::CopyObject), copies + 1);
    assert_eq!(proxy.hits(Op::DeleteObject), deletes + 1);
    assert_object(&view, &format!("{p}a"), Some(b"contents")).await;
    assert_object(&view, &format!("{p}b"), None).await;

    // The target is still looked up every time: a rename onto an existing file made by
    // someone else is refused.
    view.put(&format!("{p}c"), b"someone else's").await;
    s.raw.rename("/a", "/b").await.expect("rename a b again");
    let refused = s.raw.rename("/b", "/c").await;
    assert_eq!(
        status_code(&refused),
        Some(StatusCode::Failure),
        "{refused:?}"
    );
    assert_object(&view, &format!("{p}c"), Some(b"someone else's")).await;
    assert_object(&view, &format!("{p}b"), Some(b"contents")).await;
    t.shutdown().await;
}

/// A posix-rename may replace a file, so all it needs to know of its target is whether a
/// directory has the name; once the session has looked the name up, back-and-forth
/// renames send only the copy and the delete. A directory in the way is still found and
/// refused: one this session made, and one another client made before the lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn posix_renames_of_known_names_send_only_the_copy_and_the_delete() {
    let (t, proxy, view) = start_behind_proxy(|_| {}).await;
    let p = t.alice.prefix.clone();
    view.put(&format!("{p}a"), b"contents").await;
    let s = t.russh_sftp(&t.alice).await;
    s.posix_rename("/a", "/b").await.expect("a to b");
    s.posix_rename("/b", "/a").await.expect("b to a");

    let (heads, lists) = (proxy.hits(Op::HeadObject), proxy.hits(Op::ListObjectsV2));
    let (copies, deletes) = (proxy.hits(Op::CopyObject), proxy.hits(Op::DeleteObject));
    for (from, to) in [("/a", "/b"), ("/b", "/a"), ("/a", "/b"), ("/b", "/a")] {
        s.posix_rename(from, to).await.expect("rename");
    }
    assert_eq!(proxy.hits(Op::HeadObject), heads, "no HEAD");
    assert_eq!(proxy.hits(Op::ListObjectsV2), lists, "no LIST");
    assert_eq!(proxy.hits(Op::CopyObject), copies + 4);
    assert_eq!(proxy.hits(Op::DeleteObject), deletes + 4);
    assert_object(&view, &format!("{p}a"), Some(b"contents")).await;
    assert_object(&view, &format!("{p}b"), None).await;

    // A name looked up in vain, then made a directory by this session: refused.
    assert_eq!(
        status_code(&s.raw.stat("/c").await),
        Some(StatusCode::NoSuchFile)
    );
    s.raw.mkdir("/c", attrs()).await.expect("mkdir c");
    let refused = s.posix_rename("/a", "/c").await;
    assert!(refused.is_err(), "onto this session's new directory");
    // A directory another client made, which this session never looked up: refused.
    view.put(&format!("{p}d/inner"), b"i").await;
    let refused = s.posix_rename("/a", "/d").await;
    assert!(refused.is_err(), "onto another client's directory");
    assert_object(&view, &format!("{p}a"), Some(b"contents")).await;
    assert_object(&view, &format!("{p}c"), None).await;
    assert_object(&view, &format!("{p}d"), None).await;
    assert_object(&view, &format!("{p}d/inner"), Some(b"i")).await;

    // A file in the way is replaced, as posix-rename does.
    view.put(&format!("{p}e"), b"old").await;
    s.posix_rename("/a", "/e").await.expect("onto a file");
    assert_object(&view, &format!("{p}e"), Some(b"contents")).await;
    assert_object(&view, &format!("{p}a"), None).await;
    t.shutdown().await;
}

/// What GUI clients do before an upload: a STAT of the target, which finds nothing. That
/// lookup answers the upload's directory check, for this session only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stat_that_found_nothing_answers_the_upload_check() {
    let (t, proxy, view) = start_behind_proxy(|_| {}).await;
    let p = t.alice.prefix.clone();
    let s = t.russh_sftp(&t.alice).await;
    assert_eq!(
        status_code(&s.raw.stat("/new.txt").await),
        Some(StatusCode::NoSuchFile)
    );
    let lists = proxy.hits(Op::ListObjectsV2);
    s.upload("/new.txt", b"one").await.expect("upload");
    s.upload("/new.txt", b"two").await.expect("upload again");
    assert_eq!(proxy.hits(Op::ListObjectsV2), lists, "no LIST");
    assert_object(&view, &format!("{p}new.txt"), Some(b"two")).await;

    // Another session's directory of a name this session never looked up is found.
    view.put(&format!("{p}dir/inner"), b"i").await;
    assert!(s.upload("/dir", b"x").await.is_err());
    assert_object(&view, &format!("{p}dir"), None).await;
    t.shutdown().await;
}
