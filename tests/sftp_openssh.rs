//! The SFTP server end to end with the real OpenSSH `sftp` and `scp` clients, checked
//! against what lands in S3.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_and_downloads_every_size_class() {
    let t = TestServer::start().await;
    let sizes = [0, 1, PART - 1, PART, PART + 1, 3 * PART + 1];
    let up = t.dir.path().join("up");
    let down = t.dir.path().join("down");
    std::fs::create_dir_all(&up).unwrap();
    std::fs::create_dir_all(&down).unwrap();
    let mut batch = String::from("mkdir sizes\n");
    for (i, size) in sizes.iter().enumerate() {
        let path = write_local(&up, &format!("f{size}"), &random_bytes(*size, i as u64));
        batch += &format!("put {} sizes/f{size}\n", path.display());
    }
    for size in sizes {
        batch += &format!("get sizes/f{size} {}/f{size}\n", down.display());
    }
    let out = t.sftp(&t.alice, &batch).await;
    assert!(out.status.success(), "{}", stderr(&out));
    for (i, size) in sizes.iter().enumerate() {
        let expected = random_bytes(*size, i as u64);
        let key = format!("{}sizes/f{size}", t.alice.prefix);
        let stored =
            t.s3.object(&key)
                .await
                .unwrap_or_else(|| panic!("object {key} exists"));
        assert_eq!(stored.len(), *size, "size of {key}");
        assert_eq!(sha256(&stored), sha256(&expected), "content of {key}");
        assert_eq!(t.s3.object_size(&key).await, Some(*size as u64));
        let fetched = std::fs::read(down.join(format!("f{size}"))).unwrap();
        assert_eq!(sha256(&fetched), sha256(&expected), "downloaded f{size}");
    }
    assert!(t
        .s3
        .wait_no_pending_uploads(&t.alice.prefix)
        .await
        .is_empty());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn directories_listing_and_removal() {
    let t = TestServer::start().await;
    let local = write_local(t.dir.path(), "x.txt", b"hello\n");
    let batch = format!(
        "mkdir d\nmkdir d/empty\nput {} d/x.txt\nls -l d\n-rmdir d\nrm d/x.txt\nrmdir d/empty\nls -l d\n",
        local.display()
    );
    let out = t.sftp(&t.alice, &batch).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("drwxr-xr-x") && l.ends_with(" empty")),
        "empty dir listed as a directory:\n{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("-rw-r--r--") && l.contains(" 6 ") && l.ends_with(" x.txt")),
        "file listed with its size:\n{text}"
    );
    // The non-empty rmdir failed, so `d` and its marker survive; the rest was removed.
    let keys = t.s3.keys(&t.alice.prefix).await;
    assert_eq!(
        keys,
        vec![format!("{}d/", t.alice.prefix)],
        "only the marker of d remains"
    );
    let out = t.sftp(&t.alice, "rmdir d\n").await;
    assert!(out.status.success());
    assert!(t.s3.keys(&t.alice.prefix).await.is_empty());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_directory_of_2500_entries_lists_completely() {
    let t = TestServer::start().await;
    let names: Vec<String> = (0..2500).map(|i| format!("n{i:05}")).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in names.chunks(100) {
        let client = t.s3.client.clone();
        let bucket = t.s3.bucket.clone();
        let keys: Vec<String> = chunk
            .iter()
            .map(|n| format!("{}big/{n}", t.alice.prefix))
            .collect();
        tasks.spawn(async move {
            for key in keys {
                client
                    .put_object()
                    .bucket(&bucket)
                    .key(key)
                    .body(b"x".to_vec().into())
                    .send()
                    .await
                    .unwrap();
            }
        });
    }
    // A subdirectory among the files, shown once although it has a marker and children.
    t.s3.put(&format!("{}big/sub/", t.alice.prefix), b"").await;
    t.s3.put(&format!("{}big/sub/inner", t.alice.prefix), b"y")
        .await;
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let out = t.sftp(&t.alice, "ls -1 big\n").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Vec<String> = stdout(&out)
        .lines()
        .filter(|l| !l.starts_with("sftp>"))
        .map(|l| l.trim().trim_start_matches("big/").to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let mut expected = names.clone();
    expected.push("sub".into());
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted.len(), 2501, "every entry exactly once");
    assert_eq!(sorted, expected);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn names_with_spaces_unicode_and_symbols_round_trip() {
    let t = TestServer::start().await;
    let names = [
        "a b.txt",
        "ünïcødé ☃.txt",
        "hash#1.txt",
        "100%.txt",
        "plus+sign.txt",
    ];
    let down = t.dir.path().join("down");
    std::fs::create_dir_all(&down).unwrap();
    let mut batch = String::new();
    for (i, name) in names.iter().enumerate() {
        let local = write_local(t.dir.path(), &format!("local{i}"), name.as_bytes());
        batch += &format!("put {} \"{name}\"\n", local.display());
        batch += &format!("get \"{name}\" {}/got{i}\n", down.display());
    }
    batch += "ls -1\n";
    let out = t.sftp(&t.alice, &batch).await;
    assert!(out.status.success(), "{}", stderr(&out));
    for (i, name) in names.iter().enumerate() {
        let key = format!("{}{name}", t.alice.prefix);
        assert_eq!(
            t.s3.object(&key).await.as_deref(),
            Some(name.as_bytes()),
            "object {key}"
        );
        assert_eq!(
            std::fs::read(down.join(format!("got{i}"))).unwrap(),
            name.as_bytes()
        );
        assert!(stdout(&out).contains(name), "{name} listed");
    }
    t.shutdown().await;
}

/// `reput` of a file whose first part is already complete on the server appends the
/// rest (OpenSSH stats the remote size, opens with FXF_APPEND and writes from there).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reput_of_a_complete_file_appends_the_rest() {
    let t = TestServer::start().await;
    let original = random_bytes(MIB, 1);
    let mut longer = original.clone();
    longer.extend(random_bytes(MIB, 2));
    let a = write_local(t.dir.path(), "orig", &original);
    let b = write_local(t.dir.path(), "longer", &longer);
    let out = t.sftp(&t.alice, &format!("put {} f\n", a.display())).await;
    assert!(out.status.success());
    let out = t
        .sftp(&t.alice, &format!("reput {} f\n", b.display()))
        .await;
    assert!(out.status.success(), "reput: {}", stderr(&out));
    let key = format!("{}f", t.alice.prefix);
    assert_eq!(sha256(&t.s3.object(&key).await.unwrap()), sha256(&longer));
    assert!(t
        .s3
        .wait_no_pending_uploads(&t.alice.prefix)
        .await
        .is_empty());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_killed_mid_upload_leaves_nothing() {
    let t = TestServer::start().await;
    let big = write_local(t.dir.path(), "big", &random_bytes(400 * MIB, 3));
    let batch_file = t.dir.path().join("kill-batch");
    std::fs::write(&batch_file, format!("put {} big\n", big.display())).unwrap();
    let child = t
        .openssh("sftp", &t.alice, t.port)
        .arg("-b")
        .arg(&batch_file)
        .arg("alice@127.0.0.1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    t.kill_mid_upload(child, &format!("{}big", t.alice.prefix))
        .await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_cannot_see_or_touch_each_other() {
    let t = TestServer::start().await;
    let local = write_local(t.dir.path(), "secret", b"alice's secret");
    let out = t
        .sftp(&t.alice, &format!("put {} secret.txt\n", local.display()))
        .await;
    assert!(out.status.success());
    let alice_key = format!("{}secret.txt", t.alice.prefix);
    let escape_attempts = [
        "../alice/secret.txt".to_string(),
        "/../../users/alice/secret.txt".to_string(),
        format!("/../../../{alice_key}"),
        "..\\alice\\secret.txt".to_string(),
    ];
    let mut batch = String::from("ls -la\n");
    for p in &escape_attempts {
        batch += &format!(
            "-get \"{p}\" {}/stolen\n-rm \"{p}\"\n",
            t.dir.path().display()
        );
    }
    batch += "-ls -la ..\n-ls -la ../..\n";
    let out = t.sftp(&t.bob, &batch).await;
    assert!(out.status.success(), "{}", stderr(&out));
    // Batch mode echoes each command after "sftp> "; only the replies count.
    let printed = stdout(&out);
    let replies: Vec<&str> = printed
        .lines()
        .filter(|l| !l.starts_with("sftp>"))
        .collect();
    assert!(
        !replies.iter().any(|l| l.contains("secret.txt")),
        "bob sees nothing of alice: {}",
        stdout(&out)
    );
    assert!(!t.dir.path().join("stolen").exists());
    assert_eq!(
        t.s3.object(&alice_key).await.as_deref(),
        Some(&b"alice's secret"[..])
    );
    // Bob's writes land under bob's prefix only, whatever path he uses.
    let out = t
        .sftp(
            &t.bob,
            &format!("put {} ../../alice/planted\n", local.display()),
        )
        .await;
    assert!(out.status.success());
    assert!(t
        .s3
        .object(&format!("{}alice/planted", t.bob.prefix))
        .await
        .is_some());
    assert!(t.s3.keys(&t.alice.prefix).await == vec![alice_key]);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scp_in_sftp_mode_uploads_overwrites_and_downloads() {
    let t = TestServer::start().await;
    let first = write_local(t.dir.path(), "first", &random_bytes(PART + 7, 5));
    let second = write_local(t.dir.path(), "second", &random_bytes(1000, 6));
    let out = t
        .scp(&t.alice, &[first.to_str().unwrap(), "REMOTE:/copy.bin"])
        .await;
    assert!(out.status.success(), "scp upload exit 0: {}", stderr(&out));
    // Overwrite with a shorter file: OpenSSH scp opens without TRUNC, then FSETSTAT(size).
    let out = t
        .scp(&t.alice, &[second.to_str().unwrap(), "REMOTE:/copy.bin"])
        .await;
    assert!(
        out.status.success(),
        "scp overwrite exit 0: {}",
        stderr(&out)
    );
    let key = format!("{}copy.bin", t.alice.prefix);
    assert_eq!(t.s3.object(&key).await.unwrap(), random_bytes(1000, 6));
    // Overwrite with an empty file: no WRITE at all, then FSETSTAT(size 0).
    let empty = write_local(t.dir.path(), "empty", b"");
    let out = t
        .scp(&t.alice, &[empty.to_str().unwrap(), "REMOTE:/copy.bin"])
        .await;
    assert!(out.status.success(), "scp empty exit 0: {}", stderr(&out));
    assert_eq!(t.s3.object(&key).await.as_deref(), Some(&b""[..]));
    let out = t
        .scp(&t.alice, &[second.to_str().unwrap(), "REMOTE:/copy.bin"])
        .await;
    assert!(out.status.success(), "scp again exit 0: {}", stderr(&out));
    let back = t.dir.path().join("back");
    let out = t
        .scp(&t.alice, &["REMOTE:/copy.bin", back.to_str().unwrap()])
        .await;
    assert!(
        out.status.success(),
        "scp download exit 0: {}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(back).unwrap(), random_bytes(1000, 6));
    let out = t
        .scp(
            &t.alice,
            &[
                "REMOTE:/missing.bin",
                t.dir.path().join("m").to_str().unwrap(),
            ],
        )
        .await;
    assert!(!out.status.success(), "missing file fails");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rename_moves_files_and_directories() {
    let t = TestServer::start().await;
    let local = write_local(t.dir.path(), "r", &random_bytes(PART + 1, 9));
    let batch = format!(
        "put {} a.bin\nrename a.bin b.bin\nmkdir e\nrename e e2\nmkdir full\nput {} full/x\n-rename full full2\n",
        local.display(),
        local.display()
    );
    let out = t.sftp(&t.alice, &batch).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let p = &t.alice.prefix;
    let mut keys = t.s3.keys(p).await;
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("{p}b.bin"),
            format!("{p}e2/"),
            format!("{p}full2/"),
            format!("{p}full2/x")
        ]
    );
    assert_eq!(
        sha256(&t.s3.object(&format!("{p}b.bin")).await.unwrap()),
        sha256(&random_bytes(PART + 1, 9))
    );
    t.shutdown().await;
}
