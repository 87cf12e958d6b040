//! sshfs mounts the server and uses it like a local disk: creating files (`echo >`, `cp`,
//! `touch`), copying into a new folder, renaming and removing the folder, setting times.
//! sshfs (like file managers) LSTATs a file right after creating it, so this needs files
//! being written to exist before their CLOSE (storage/writing.rs). Each step is checked in
//! the bucket directly: exact bytes (sha256), no leftover or empty object, no pending
//! multipart upload.
//!
//! Needs `sshfs` and a usable `/dev/fuse` (root, or a FUSE-enabled container); skipped
//! with a message otherwise. `.ci/run` installs sshfs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use s3sftp::storage::DirMarkers;

/// Longest a shell step on the mount may take before the test is declared hung.
const HANG: Duration = Duration::from_secs(120);

/// Why sshfs cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    let version = std::process::Command::new("sshfs")
        .arg("--version")
        .output();
    if version.is_err() {
        return Some("sshfs is not installed (Debian: apt-get install sshfs)".into());
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Some(format!("/dev/fuse cannot be opened: {e}"));
    }
    None
}

/// Whether a failed mount's message blames FUSE itself (no permission to mount here), not
/// the server.
fn fuse_refused(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("fusermount") || s.contains("fuse:") || s.contains("operation not permitted")
}

/// An sshfs mount of a user's home; unmounted (lazily, so a hung server cannot block the
/// test) when dropped.
struct Mount {
    point: PathBuf,
    mounted: bool,
}

impl Mount {
    /// Mounts `user`'s home at `point` with `extra` sshfs options; `None` (after saying
    /// why) when FUSE refuses to mount here.
    async fn new(t: &TestServer, user: &TestUser, point: &Path, extra: &[&str]) -> Option<Mount> {
        std::fs::create_dir_all(point).expect("mount point");
        let mut cmd = tokio::process::Command::new("sshfs");
        cmd.arg(format!("{}@127.0.0.1:/", user.name))
            .arg(point)
            .arg("-p")
            .arg(t.port.to_string())
            .arg("-o")
            .arg(format!(
                "IdentityFile={},IdentitiesOnly=yes,StrictHostKeyChecking=no,\
                 UserKnownHostsFile=/dev/null,BatchMode=yes,LogLevel=ERROR",
                user.key_path.display()
            ));
        for option in extra {
            cmd.arg("-o").arg(option);
        }
        let out = tokio::time::timeout(HANG, cmd.output())
            .await
            .expect("sshfs mounted in time")
            .expect("sshfs runs");
        if !out.status.success() {
            let err = stderr(&out);
            if fuse_refused(&err) {
                eprintln!("SKIPPED: FUSE cannot mount here: {}", err.trim());
                return None;
            }
            panic!("sshfs could not mount the server: {err}");
        }
        Some(Mount {
            point: point.to_path_buf(),
            mounted: true,
        })
    }

    /// Unmounts and waits for it.
    async fn unmount(mut self) {
        let out = tokio::process::Command::new("fusermount3")
            .arg("-u")
            .arg(&self.point)
            .output()
            .await
            .expect("fusermount3 runs");
        assert!(out.status.success(), "unmount: {}", stderr(&out));
        self.mounted = false;
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.point)
                .output();
        }
    }
}

/// Runs `script` with `sh -e` in `dir` (panics with its output if it fails), then waits
/// until every file it wrote is committed: the kernel sends sshfs the RELEASE (and sshfs
/// the server the CLOSE) after `close()` has returned, and a file exists in the bucket
/// only from its CLOSE.
async fn sh_settled(t: &TestServer, dir: &Path, script: &str) -> String {
    let out = sh(dir, script).await;
    let writing = t.server().storage().writing().clone();
    tokio::time::timeout(HANG, async {
        while !writing.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the files `{script}` wrote were never closed"));
    out
}

/// Runs `script` with `sh -e` in `dir`; panics with its output if it fails.
async fn sh(dir: &Path, script: &str) -> String {
    let run = tokio::process::Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(HANG, run)
        .await
        .unwrap_or_else(|_| panic!("`{script}` hung"))
        .expect("sh runs");
    assert!(
        out.status.success(),
        "`{script}` failed:\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// The sha256 of the object at `key`, if there is one.
async fn object_sha(t: &TestServer, key: &str) -> Option<String> {
    t.s3.object(key).await.map(|b| sha256(&b))
}

/// The keys under the user's prefix, without it, sorted.
async fn names(t: &TestServer, user: &TestUser) -> Vec<String> {
    let mut keys: Vec<String> =
        t.s3.keys(&user.prefix)
            .await
            .into_iter()
            .filter_map(|k| k.strip_prefix(&user.prefix).map(str::to_string))
            .collect();
    keys.sort();
    keys
}

/// The `x-amz-meta-mtime` the object at `key` keeps.
async fn kept_mtime(t: &TestServer, key: &str) -> Option<String> {
    let head =
        t.s3.client
            .head_object()
            .bucket(&t.s3.bucket)
            .key(key)
            .send()
            .await
            .expect("head");
    head.metadata().and_then(|m| m.get("mtime")).cloned()
}

/// No multipart upload is left pending under the user's prefix.
async fn assert_no_pending(t: &TestServer, user: &TestUser) {
    assert_eq!(
        t.s3.wait_no_pending_uploads(&user.prefix).await,
        Vec::<String>::new(),
        "no multipart upload is left pending"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sshfs_creates_copies_renames_and_removes_like_a_local_disk() {
    if let Some(why) = unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let t = TestServer::start().await;
    let (alice, p) = (t.alice.clone(), t.alice.prefix.clone());
    let work = t.dir.path().join("work");
    let big = random_bytes(12 * MIB + 12_345, 7);
    let small = random_bytes(70_000, 8);
    write_local(&work, "big.bin", &big);
    write_local(&work, "f", &small);
    let Some(mount) = Mount::new(&t, &alice, &work.join("mnt"), &[]).await else {
        return;
    };

    sh_settled(&t, &work, "echo hi > mnt/new.txt").await;
    assert_eq!(
        t.s3.object(&format!("{p}new.txt")).await,
        Some(b"hi\n".to_vec())
    );
    assert_eq!(sh_settled(&t, &work, "cat mnt/new.txt").await, "hi\n");

    sh_settled(&t, &work, "cp big.bin mnt/").await;
    assert_eq!(
        object_sha(&t, &format!("{p}big.bin")).await,
        Some(sha256(&big))
    );
    assert_eq!(
        sh_settled(&t, &work, "stat -c %s mnt/big.bin").await.trim(),
        big.len().to_string()
    );
    assert_eq!(
        sh_settled(&t, &work, "sha256sum < mnt/big.bin")
            .await
            .split_whitespace()
            .next(),
        Some(sha256(&big).as_str())
    );

    sh_settled(&t, &work, "mkdir mnt/d && cp f mnt/d/").await;
    assert_eq!(
        object_sha(&t, &format!("{p}d/f")).await,
        Some(sha256(&small))
    );
    sh_settled(&t, &work, "mv mnt/d mnt/e").await;
    assert_eq!(
        object_sha(&t, &format!("{p}e/f")).await,
        Some(sha256(&small))
    );
    assert_eq!(sh_settled(&t, &work, "ls mnt/e").await, "f\n");
    sh_settled(&t, &work, "rm -r mnt/e").await;
    sh_settled(&t, &work, "test ! -e mnt/e && test ! -e mnt/d").await;
    // The same in one go, as a user types it: the kernel sends the RELEASE of `f` (and
    // sshfs its CLOSE) after `cp` has exited, perhaps after the RENAME.
    sh_settled(
        &t,
        &work,
        "mkdir mnt/d2 && cp f mnt/d2/ && mv mnt/d2 mnt/e2 && ls mnt/e2 && rm -r mnt/e2",
    )
    .await;

    sh_settled(&t, &work, "touch -d '2020-01-02 03:04:05 UTC' mnt/new.txt").await;
    assert_eq!(
        kept_mtime(&t, &format!("{p}new.txt")).await.as_deref(),
        Some("1577934245")
    );
    sh_settled(&t, &work, "touch -d '2021-02-03 04:05:06 UTC' mnt/touched").await;
    assert_eq!(t.s3.object(&format!("{p}touched")).await, Some(Vec::new()));
    assert_eq!(
        kept_mtime(&t, &format!("{p}touched")).await.as_deref(),
        Some("1612325106")
    );
    assert_eq!(
        sh_settled(&t, &work, "stat -c %Y mnt/touched").await.trim(),
        "1612325106"
    );

    assert_eq!(
        sh_settled(&t, &work, "ls mnt").await,
        "big.bin\nnew.txt\ntouched\n",
        "the mount lists what is stored"
    );
    mount.unmount().await;
    assert_eq!(names(&t, &alice).await, ["big.bin", "new.txt", "touched"]);
    assert_eq!(
        t.s3.object(&format!("{p}new.txt")).await,
        Some(b"hi\n".to_vec())
    );
    assert_no_pending(&t, &alice).await;
    assert!(t.server().storage().writing().is_empty());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sshfs_over_several_connections_sees_files_while_they_are_written() {
    if let Some(why) = unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let t = TestServer::start().await;
    let (alice, p) = (t.alice.clone(), t.alice.prefix.clone());
    let work = t.dir.path().join("work");
    let data = random_bytes(6 * MIB + 1, 9);
    write_local(&work, "data.bin", &data);
    let Some(mount) = Mount::new(&t, &alice, &work.join("mnt"), &["max_conns=4"]).await else {
        return;
    };

    sh_settled(
        &t,
        &work,
        "mkdir mnt/new && echo one > mnt/new/a.txt && cp data.bin mnt/new/ && echo two > mnt/b.txt",
    )
    .await;
    assert_eq!(
        names(&t, &alice).await,
        ["b.txt", "new/", "new/a.txt", "new/data.bin"]
    );
    assert_eq!(
        object_sha(&t, &format!("{p}new/data.bin")).await,
        Some(sha256(&data))
    );
    assert_eq!(
        t.s3.object(&format!("{p}b.txt")).await,
        Some(b"two\n".to_vec())
    );
    assert_eq!(
        sh_settled(&t, &work, "ls mnt/new").await,
        "a.txt\ndata.bin\n"
    );
    // Written and read back through the mount in one go: a second copy of a file.
    sh_settled(
        &t,
        &work,
        "cp mnt/new/data.bin mnt/copy.bin && cmp data.bin mnt/copy.bin",
    )
    .await;
    assert_eq!(
        object_sha(&t, &format!("{p}copy.bin")).await,
        Some(sha256(&data))
    );
    sh_settled(
        &t,
        &work,
        "mkdir mnt/d && cp data.bin mnt/d/ && mv mnt/d mnt/e && cmp data.bin mnt/e/data.bin",
    )
    .await;
    assert_eq!(
        object_sha(&t, &format!("{p}e/data.bin")).await,
        Some(sha256(&data))
    );
    sh_settled(&t, &work, "rm -r mnt/new mnt/b.txt mnt/copy.bin mnt/e").await;
    mount.unmount().await;
    assert_eq!(names(&t, &alice).await, Vec::<String>::new());
    assert_no_pending(&t, &alice).await;
    t.shutdown().await;
}

/// Without markers, mkdir keeps the folder in memory until a file is written in it. (A
/// folder rename is left out: on such a store the renamed folder's old name comes back
/// empty, kept in memory by the removal of its last object; a rename bug of its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sshfs_works_on_a_store_without_directory_markers() {
    if let Some(why) = unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let t = TestServer::start_with(|c| c.transfer.dir_markers = DirMarkers::Off).await;
    let (alice, p) = (t.alice.clone(), t.alice.prefix.clone());
    let work = t.dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let Some(mount) = Mount::new(&t, &alice, &work.join("mnt"), &[]).await else {
        return;
    };
    sh_settled(
        &t,
        &work,
        "mkdir mnt/e && echo hi > mnt/e/f && cat mnt/e/f && mkdir mnt/empty",
    )
    .await;
    assert_eq!(names(&t, &alice).await, ["e/f"], "no marker is written");
    assert_eq!(
        t.s3.object(&format!("{p}e/f")).await,
        Some(b"hi\n".to_vec())
    );
    assert_eq!(sh_settled(&t, &work, "ls mnt").await, "e\nempty\n");
    sh_settled(&t, &work, "rm -r mnt/e && rmdir mnt/empty").await;
    assert_eq!(sh_settled(&t, &work, "ls mnt").await, "");
    mount.unmount().await;
    assert_eq!(names(&t, &alice).await, Vec::<String>::new());
    assert_no_pending(&t, &alice).await;
    t.shutdown().await;
}
