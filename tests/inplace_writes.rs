//! In-place writes as POSIX gives them (issue 23, item 3): paramiko `r+` writes at the
//! head, middle and tail, appends (`a` mode, and raw `FXF_APPEND` with a wrong offset),
//! holes past the end, and sizes set by SETSTAT/FSETSTAT, on a small object and on one
//! larger than two parts. After each operation the file read back with `get`, and the
//! object in the bucket, must be byte for byte what the same operation makes of a local
//! file, and no multipart upload may be left behind.

use std::process::Stdio;

use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};

use crate::common::{random_bytes, sha256, status_code, TestServer, MIB, PASSWORD};

/// Whether `python3 -c "import paramiko"` works (.ci/run installs it).
fn has_paramiko() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import paramiko"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Applies each operation (one per argument, fields split by `:`) to the remote file
/// through paramiko and to a local copy through Python's own file API, and after each
/// one compares the remote file (`get`) with the local one. Prints one line per step.
const SCRIPT: &str = r#"
import hashlib, os, random, sys, paramiko
port, user, password, remote, local = sys.argv[1:6]
ops = sys.argv[6:]
t = paramiko.Transport(("127.0.0.1", int(port)))
t.connect(username=user, password=password)
s = paramiko.SFTPClient.from_transport(t)

def data(n, seed):
    return random.Random(int(seed)).randbytes(int(n))

for i, op in enumerate(ops):
    kind, *args = op.split(":")
    if kind == "w":  # r+ write at an offset (past the end: a hole)
        off, n, seed = args
        with s.open(remote, "r+") as f:
            f.seek(int(off)); f.write(data(n, seed))
        with open(local, "r+b") as f:
            f.seek(int(off)); f.write(data(n, seed))
    elif kind == "rw":  # r+ read, write, read back the written bytes and their edges
        off, n, seed = args
        off, n = int(off), int(n)
        with s.open(remote, "r+") as f:
            f.seek(off); before = f.read(n)
            f.seek(off); f.write(data(n, seed)); f.flush()
            f.seek(max(off - 10, 0)); after = f.read(n + 20)
        with open(local, "r+b") as f:
            f.seek(off); want_before = f.read(n)
            f.seek(off); f.write(data(n, seed)); f.flush()
            f.seek(max(off - 10, 0)); want_after = f.read(n + 20)
        assert before == want_before, "read before the write differs"
        assert after == want_after, "read after the write differs"
    elif kind == "a":  # paramiko append mode
        n, seed = args
        with s.open(remote, "a") as f:
            f.write(data(n, seed))
        with open(local, "ab") as f:
            f.write(data(n, seed))
    elif kind == "t":  # truncate(2) on the path: SETSTAT size
        size = int(args[0])
        s.truncate(remote, size)
        os.truncate(local, size)
    elif kind == "ft":  # ftruncate(2) on an r+ handle, then a write: FSETSTAT size
        size, off, n, seed = args
        with s.open(remote, "r+") as f:
            f.truncate(int(size)); f.seek(int(off)); f.write(data(n, seed))
        with open(local, "r+b") as f:
            f.truncate(int(size)); f.seek(int(off)); f.write(data(n, seed))
    else:
        raise SystemExit("unknown op " + op)
    s.get(remote, local + ".back")
    got = open(local + ".back", "rb").read()
    want = open(local, "rb").read()
    assert len(got) == len(want), f"step {i} {op}: size {len(got)} != {len(want)}"
    assert got == want, f"step {i} {op}: bytes differ"
    print(i, op, len(got), hashlib.sha256(got).hexdigest())
t.close()
"#;

/// Stores `initial` at `name`, runs the operations through paramiko (see [`SCRIPT`])
/// and checks the bucket against the local file the script left.
async fn edit_like_a_local_file(t: &TestServer, name: &str, initial: &[u8], ops: &[&str]) {
    let key = format!("{}{name}", t.alice.prefix);
    t.s3.put(&key, initial).await;
    let local = t.dir.path().join(name);
    std::fs::write(&local, initial).unwrap();
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg("-c")
        .arg(SCRIPT)
        .arg(t.port.to_string())
        .arg(&t.alice.name)
        .arg(PASSWORD)
        .arg(name)
        .arg(&local)
        .args(ops)
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), cmd.output())
        .await
        .expect("the client finishes")
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "paramiko edits of {name} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    let want = std::fs::read(&local).unwrap();
    let stored = t.s3.object(&key).await.expect("the object is there");
    assert_eq!(stored.len(), want.len(), "{name}: stored size");
    assert_eq!(sha256(&stored), sha256(&want), "{name}: stored bytes");
    assert!(
        t.s3.wait_no_pending_uploads(&t.alice.prefix)
            .await
            .is_empty(),
        "{name}: no multipart upload left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paramiko_edits_of_a_small_file_match_a_local_file() {
    if !has_paramiko() {
        eprintln!("SKIPPED: paramiko not installed (pip install paramiko)");
        return;
    }
    let t = TestServer::start().await;
    let initial = random_bytes(10_000, 1);
    let ops = [
        "w:0:100:1",      // head
        "w:4000:300:2",   // middle
        "w:9950:50:3",    // tail, up to the end
        "w:9990:40:4",    // over the end
        "a:777:5",        // append
        "w:20000:10:6",   // a hole past the end
        "rw:5000:200:7",  // read, write, read back on one handle
        "t:4321",         // shrink
        "t:6000",         // grow: zeros
        "ft:100:200:9:8", // cut on the handle, then a hole and a write
    ];
    edit_like_a_local_file(&t, "small.bin", &initial, &ops).await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paramiko_edits_of_a_large_file_match_a_local_file() {
    if !has_paramiko() {
        eprintln!("SKIPPED: paramiko not installed (pip install paramiko)");
        return;
    }
    let t = TestServer::start().await;
    let size = 12 * MIB + 345;
    let initial = random_bytes(size, 2);
    let head = "w:0:1000:11".to_string();
    let middle = format!("w:{}:70000:12", 6 * MIB + 17);
    let tail = format!("w:{}:5000:13", size - 3000);
    let hole = format!("w:{}:100:15", size + 3 * MIB);
    let shrink = format!("t:{}", 7 * MIB + 1);
    let grow = format!("t:{}", 13 * MIB);
    let ops = [
        head.as_str(),
        middle.as_str(),
        tail.as_str(),
        "a:1048576:14",
        hole.as_str(),
        shrink.as_str(),
        grow.as_str(),
        "t:3",
    ];
    edit_like_a_local_file(&t, "large.bin", &initial, &ops).await;
    t.shutdown().await;
}

fn no_attrs() -> FileAttributes {
    FileAttributes::empty()
}

/// Raw FXF_APPEND writes go at the end whatever offset they carry; a hole past the
/// limit is refused at the WRITE (the file unharmed), and so is a second write handle
/// on a file this session is editing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn append_ignores_the_offset_and_the_impossible_is_refused_at_once() {
    let t = TestServer::start().await;
    let s = t.russh_sftp(&t.alice).await;
    let key = format!("{}log.txt", t.alice.prefix);
    s.upload("/log.txt", b"line one\n").await.expect("upload");

    let h = s
        .raw
        .open("/log.txt", OpenFlags::WRITE | OpenFlags::APPEND, no_attrs())
        .await
        .expect("open for append")
        .handle;
    s.raw
        .write(&h, 0, b"line two\n".to_vec())
        .await
        .expect("append at a wrong offset");
    s.raw
        .write(&h, 3, b"line three\n".to_vec())
        .await
        .expect("append again");
    // A second handle for writing on the same file in this session is refused at OPEN.
    assert_eq!(
        status_code(
            &s.raw
                .open("/log.txt", OpenFlags::READ | OpenFlags::WRITE, no_attrs())
                .await
        ),
        Some(StatusCode::Failure)
    );
    s.raw.close(&h).await.expect("close");
    assert_eq!(
        t.s3.object(&key).await.as_deref(),
        Some(&b"line one\nline two\nline three\n"[..])
    );

    // A hole of more than 1 GiB is refused at the WRITE; the handle goes on.
    let h = s
        .raw
        .open("/log.txt", OpenFlags::READ | OpenFlags::WRITE, no_attrs())
        .await
        .expect("open r+")
        .handle;
    assert_eq!(
        status_code(&s.raw.write(&h, 2 << 30, b"far".to_vec()).await),
        Some(StatusCode::Failure)
    );
    s.raw
        .write(&h, 0, b"LINE".to_vec())
        .await
        .expect("write at the head");
    s.raw.close(&h).await.expect("close");
    assert_eq!(
        t.s3.object(&key).await.as_deref(),
        Some(&b"LINE one\nline two\nline three\n"[..])
    );

    // A new file written with a hole first: zeros before it.
    let h = s
        .raw
        .open(
            "/holey.bin",
            OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
            no_attrs(),
        )
        .await
        .expect("open new")
        .handle;
    s.raw
        .write(&h, 5, b"xyz".to_vec())
        .await
        .expect("write past the end");
    s.raw.close(&h).await.expect("close");
    assert_eq!(
        t.s3.object(&format!("{}holey.bin", t.alice.prefix))
            .await
            .as_deref(),
        Some(&b"\0\0\0\0\0xyz"[..])
    );
    assert!(t
        .s3
        .wait_no_pending_uploads(&t.alice.prefix)
        .await
        .is_empty());
    t.shutdown().await;
}

/// An edit whose object was replaced by someone else meanwhile fails at CLOSE (the one
/// error CLOSE may give) and leaves the other version in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_replaced_during_an_edit_is_a_conflict_at_close() {
    let t = TestServer::start().await;
    let s = t.russh_sftp(&t.alice).await;
    let key = format!("{}shared.txt", t.alice.prefix);
    s.upload("/shared.txt", b"0123456789")
        .await
        .expect("upload");
    let h = s
        .raw
        .open(
            "/shared.txt",
            OpenFlags::READ | OpenFlags::WRITE,
            no_attrs(),
        )
        .await
        .expect("open r+")
        .handle;
    s.raw
        .write(&h, 2, b"ab".to_vec())
        .await
        .expect("write in the middle");
    t.s3.put(&key, b"someone else's").await;
    assert_eq!(
        status_code(&s.raw.close(&h).await),
        Some(StatusCode::Failure)
    );
    assert_eq!(
        t.s3.object(&key).await.as_deref(),
        Some(&b"someone else's"[..])
    );
    assert!(t
        .s3
        .wait_no_pending_uploads(&t.alice.prefix)
        .await
        .is_empty());
    t.shutdown().await;
}

/// The parsed `bytes=a-b` of a ranged GET: how many bytes it asks for.
fn range_len(range: &str) -> u64 {
    let (a, b) = range
        .trim_start_matches("bytes=")
        .split_once('-')
        .expect("a range");
    b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1
}

/// A write in the middle of a 20 MiB object and an append to it never move the whole
/// object through the gateway: the unchanged ranges are copied inside S3 (UploadPartCopy
/// pinned to the ETag seen at OPEN), the edges come from small ranged GETs (pinned too).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unchanged_ranges_are_copied_inside_s3() {
    use crate::common::fault_proxy::{start_behind_proxy, Op};
    let (t, proxy, view) = start_behind_proxy(|_| {}).await;
    let key = format!("{}big.bin", t.alice.prefix);
    let mut want = random_bytes(20 * MIB, 5);
    view.put(&key, &want).await;
    let s = t.russh_sftp(&t.alice).await;
    proxy.record_requests();

    let h = s
        .raw
        .open("/big.bin", OpenFlags::READ | OpenFlags::WRITE, no_attrs())
        .await
        .expect("open r+")
        .handle;
    let patch = random_bytes(100_000, 6);
    let at = 10 * MIB + 7;
    s.raw
        .write(&h, at as u64, patch.clone())
        .await
        .expect("write in the middle");
    s.raw.close(&h).await.expect("close");
    want[at..at + patch.len()].copy_from_slice(&patch);
    assert_eq!(
        view.object(&key).await.map(|o| sha256(&o)),
        Some(sha256(&want))
    );
    let copies = proxy.requests(Op::UploadPartCopy);
    assert!(copies.len() >= 2, "{} UploadPartCopy", copies.len());
    assert!(copies
        .iter()
        .all(|c| c.header("x-amz-copy-source-if-match").is_some()));
    let gets = proxy.requests(Op::GetObject);
    let fetched: u64 = gets
        .iter()
        .map(|g| range_len(g.header("range").expect("ranged")))
        .sum();
    assert!(fetched < 10 * MIB as u64, "{fetched} bytes fetched");
    assert!(gets.iter().all(|g| g.header("if-match").is_some()));
    assert!(proxy.requests(Op::PutObject).is_empty());

    // An append: the old bytes are one copy, the new ones one part; nothing is read.
    let before_gets = proxy.requests(Op::GetObject).len();
    let h = s
        .raw
        .open("/big.bin", OpenFlags::WRITE | OpenFlags::APPEND, no_attrs())
        .await
        .expect("open for append")
        .handle;
    let tail = random_bytes(MIB, 7);
    for (i, c) in tail.chunks(32 * 1024).enumerate() {
        s.raw
            .write(&h, (i * 32 * 1024) as u64, c.to_vec())
            .await
            .expect("append");
    }
    s.raw.close(&h).await.expect("close");
    want.extend_from_slice(&tail);
    assert_eq!(
        view.object(&key).await.map(|o| sha256(&o)),
        Some(sha256(&want))
    );
    assert_eq!(proxy.requests(Op::GetObject).len(), before_gets, "no GET");
    assert!(view
        .wait_no_pending_uploads(&t.alice.prefix)
        .await
        .is_empty());
    t.shutdown().await;
}

/// Past the memory bound (a quarter of the transfer budget: 5 MiB here) the lowest held
/// writes are streamed to S3; a write or a cut below them is then refused at the request
/// itself, and the edit goes on and commits everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_below_the_streamed_bytes_are_refused_at_the_request() {
    let t = TestServer::start().await;
    let s = t.russh_sftp(&t.alice).await;
    let key = format!("{}doc.bin", t.alice.prefix);
    s.upload("/doc.bin", &random_bytes(1000, 8))
        .await
        .expect("upload");
    let h = s
        .raw
        .open("/doc.bin", OpenFlags::READ | OpenFlags::WRITE, no_attrs())
        .await
        .expect("open r+")
        .handle;
    let data = random_bytes(8 * MIB, 9);
    for (i, c) in data.chunks(256 * 1024).enumerate() {
        s.raw
            .write(&h, (i * 256 * 1024) as u64, c.to_vec())
            .await
            .expect("write");
    }
    assert_eq!(
        status_code(&s.raw.write(&h, 0, b"late".to_vec()).await),
        Some(StatusCode::Failure),
        "a write below the streamed bytes"
    );
    let mut cut = no_attrs();
    cut.size = Some(10);
    assert_eq!(
        status_code(&s.raw.fsetstat(&h, cut).await),
        Some(StatusCode::Failure),
        "a cut below the streamed bytes"
    );
    s.raw.close(&h).await.expect("close");
    assert_eq!(
        t.s3.object(&key).await.map(|o| sha256(&o)),
        Some(sha256(&data))
    );
    assert!(t
        .s3
        .wait_no_pending_uploads(&t.alice.prefix)
        .await
        .is_empty());
    t.shutdown().await;
}

/// sshfs: `truncate` (SETSTAT size), appends (`>>`), a write in place without O_TRUNC,
/// in a row on one mount, give the bytes a local file gets. The kernel sends a FUSE
/// file's last close after close(2) returns, so a `truncate` right after a write may
/// reach the server while that file is still open there: it applies to the open file.
/// Skipped where sshfs or FUSE is not available.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sshfs_truncate_append_and_patch_match_a_local_file() {
    use std::io::{Seek, SeekFrom, Write};
    let t = TestServer::start().await;
    let key = format!("{}doc.bin", t.alice.prefix);
    let initial = random_bytes(10_000, 10);
    t.s3.put(&key, &initial).await;
    let mnt = t.dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut args = vec![
        "-p".to_string(),
        t.port.to_string(),
        "-o".to_string(),
        format!("IdentityFile={}", t.alice.key_path.display()),
    ];
    for opt in [
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "IdentitiesOnly=yes",
        "BatchMode=yes",
    ] {
        args.extend(["-o".to_string(), opt.to_string()]);
    }
    args.push(format!("{}@127.0.0.1:/", t.alice.name));
    args.push(mnt.display().to_string());
    let mounted = tokio::process::Command::new("sshfs")
        .args(&args)
        .output()
        .await;
    match mounted {
        Ok(out) if out.status.success() => {}
        other => {
            eprintln!("SKIPPED: sshfs could not mount: {other:?}");
            t.shutdown().await;
            return;
        }
    }
    let local = t.dir.path().join("doc.local");
    std::fs::write(&local, &initial).unwrap();
    let remote = mnt.join("doc.bin");
    let (l, r) = (local.clone(), remote.clone());
    let done = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        for p in [&l, &r] {
            let status = std::process::Command::new("truncate")
                .args(["-s", "4000"])
                .arg(p)
                .status()?;
            assert!(status.success(), "truncate {}", p.display());
            let mut f = std::fs::OpenOptions::new().append(true).open(p)?;
            f.write_all(b"appended line\n")?;
            drop(f);
            let mut f = std::fs::OpenOptions::new().append(true).open(p)?;
            f.write_all(b"another line\n")?;
            drop(f);
            let mut f = std::fs::OpenOptions::new().write(true).open(p)?;
            f.seek(SeekFrom::Start(100))?;
            f.write_all(b"PATCHED")?;
            drop(f);
            let status = std::process::Command::new("truncate")
                .args(["-s", "5000"])
                .arg(p)
                .status()?;
            assert!(status.success(), "grow {}", p.display());
        }
        Ok(())
    })
    .await
    .unwrap();
    let _ = tokio::process::Command::new("fusermount")
        .arg("-u")
        .arg(&mnt)
        .status()
        .await;
    done.expect("the operations on the mount");
    let want = sha256(&std::fs::read(&local).unwrap());
    // The kernel closes a FUSE file after close(2) returns (and after the unmount): the
    // last CLOSE, and its commit, may come a moment later.
    let mut stored = None;
    for _ in 0..100 {
        stored = t.s3.object(&key).await.map(|o| sha256(&o));
        if stored.as_deref() == Some(want.as_str()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(stored, Some(want));
    assert!(t
        .s3
        .wait_no_pending_uploads(&t.alice.prefix)
        .await
        .is_empty());
    t.shutdown().await;
}
