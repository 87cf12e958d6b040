//! Folder rename: a non-empty folder moves object by object under an intent record in the
//! bucket; the limit and the permissions refuse up front; an interrupted rename is rolled
//! forward by another server instance, and a live one is left alone.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::common::bucket::BucketView;
use crate::common::own_store::own_store;
use crate::common::{random_bytes, sha256, stderr, TestServer, MIB};

const SYSTEM: &str = ".s3sftp/";

/// Puts `objects` (key → bytes) into the bucket, 32 at a time.
async fn put_all(s3: &BucketView, objects: &BTreeMap<String, Vec<u8>>) {
    futures::stream::iter(objects.iter())
        .for_each_concurrent(32, |(key, data)| s3.put(key, data))
        .await;
}

/// `n` small objects under `prefix` (in ten subfolders), with their bytes.
fn small_tree(prefix: &str, n: usize) -> BTreeMap<String, Vec<u8>> {
    (0..n)
        .map(|i| {
            (
                format!("{prefix}d{}/f{i:04}.txt", i % 10),
                format!("object {i} of {prefix}").into_bytes(),
            )
        })
        .collect()
}

/// The key of the intent of a rename of `source` (as the server names it).
fn intent_key(source: &str) -> String {
    format!(
        "{SYSTEM}renames/{}.json",
        hex::encode(Sha256::digest(source.as_bytes()))
    )
}

fn intent_json(source: &str, target: &str, user_prefix: &str, heartbeat: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "source": source,
        "target": target,
        "user_prefix": user_prefix,
        "gateway": "crashed-gateway",
        "started": heartbeat,
        "heartbeat": heartbeat,
    }))
    .expect("json")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Checks that every object of `tree` (keyed under `from`) is under `to` with its bytes,
/// and nothing is left under `from`.
async fn assert_moved(s3: &BucketView, tree: &BTreeMap<String, Vec<u8>>, from: &str, to: &str) {
    assert_eq!(s3.keys(from).await, Vec::<String>::new(), "sources left");
    let mut keys = s3.keys(to).await;
    keys.sort();
    let mut expected: Vec<String> = tree
        .keys()
        .map(|k| format!("{to}{}", &k[from.len()..]))
        .collect();
    expected.sort();
    assert_eq!(keys, expected);
    for (key, data) in tree {
        let moved = format!("{to}{}", &key[from.len()..]);
        let got = s3.object(&moved).await.expect("moved object");
        assert_eq!(sha256(&got), sha256(data), "{moved}");
    }
}

/// Waits up to `limit` for the intent at `key` to be gone; whether it is.
async fn wait_intent_gone(s3: &BucketView, key: &str, limit: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if s3.object(key).await.is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sftp_renames_a_folder_of_1000_objects_and_a_large_file() {
    let t = TestServer::start().await;
    let p = &t.alice.prefix;
    let from = format!("{p}tree/");
    let mut tree = small_tree(&from, 1000);
    tree.insert(format!("{from}big.bin"), random_bytes(20 * MIB, 23));
    put_all(&t.s3, &tree).await;

    let out = t.sftp(&t.alice, "rename tree moved\nls moved\n").await;
    assert!(out.status.success(), "{}", stderr(&out));

    assert_moved(&t.s3, &tree, &from, &format!("{p}moved/")).await;
    assert!(
        t.s3.object(&intent_key(&from)).await.is_none(),
        "intent left"
    );
    assert_eq!(
        t.s3.wait_no_pending_uploads(p).await,
        Vec::<String>::new(),
        "multipart uploads left"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_folder_above_the_limit_is_refused_and_nothing_moves() {
    let t = TestServer::start_with(|c| c.transfer.max_rename_objects = 5).await;
    let p = &t.alice.prefix;
    let tree = small_tree(&format!("{p}big/"), 6);
    put_all(&t.s3, &tree).await;
    let small = small_tree(&format!("{p}small/"), 5);
    put_all(&t.s3, &small).await;

    let s = t.russh_sftp(&t.alice).await;
    let err = s.posix_rename("/big", "/big2").await.expect_err("refused");
    assert!(
        err.contains("more than 5 objects") && err.contains("--max-rename-objects"),
        "{err}"
    );
    let mut keys = t.s3.keys(&format!("{p}big")).await;
    keys.sort();
    assert_eq!(keys, tree.keys().cloned().collect::<Vec<_>>());
    // At the limit it moves.
    s.posix_rename("/small", "/small2").await.expect("renamed");
    assert_moved(&t.s3, &small, &format!("{p}small/"), &format!("{p}small2/")).await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subtree_that_forbids_rename_refuses_the_folder_rename() {
    let t = TestServer::start().await;
    // alice may do everything, except rename under /tree/locked and /dest/keep.
    let file = t.dir.path().join("users.json");
    let mut users: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    for user in users["users"].as_array_mut().expect("users") {
        if user["username"] == "alice" {
            user["permissions"] = serde_json::json!({
                "/": ["*"],
                "/tree/locked": ["list", "download", "upload"],
                "/dest/keep": ["list", "download", "upload"],
            });
        }
    }
    std::fs::write(&file, serde_json::to_vec_pretty(&users).expect("json")).expect("write");
    t.server().reload_users();
    let p = &t.alice.prefix;
    let mut tree = small_tree(&format!("{p}tree/"), 3);
    tree.insert(format!("{p}tree/locked/x"), b"locked".to_vec());
    put_all(&t.s3, &tree).await;
    let other = small_tree(&format!("{p}other/"), 3);
    put_all(&t.s3, &other).await;

    let s = t.russh_sftp(&t.alice).await;
    // The source holds a path where rename is not allowed.
    let err = s
        .posix_rename("/tree", "/tree2")
        .await
        .expect_err("refused");
    assert!(err.contains("PermissionDenied"), "{err}");
    // The target would hold one.
    let err = s
        .posix_rename("/other", "/dest")
        .await
        .expect_err("refused");
    assert!(err.contains("PermissionDenied"), "{err}");
    let mut keys = t.s3.keys(p).await;
    keys.sort();
    let mut expected: Vec<String> = tree.keys().chain(other.keys()).cloned().collect();
    expected.sort();
    assert_eq!(keys, expected, "nothing moved");
    for source in ["tree/", "other/"] {
        assert!(t
            .s3
            .object(&intent_key(&format!("{p}{source}")))
            .await
            .is_none());
    }
    t.shutdown().await;
}

/// The state a gateway leaves when it dies mid-way through renaming `from` to `to`: some
/// objects copied and deleted, some copied only, the rest untouched; the intent stored.
async fn crashed_state(
    s3: &BucketView,
    user: &str,
    from: &str,
    to: &str,
    heartbeat: u64,
) -> BTreeMap<String, Vec<u8>> {
    let mut tree = small_tree(from, 40);
    tree.insert(format!("{from}big.bin"), random_bytes(6 * MIB, 5));
    for (i, (key, data)) in tree.iter().enumerate() {
        let target = format!("{to}{}", &key[from.len()..]);
        match i % 3 {
            // Copied and deleted.
            0 => s3.put(&target, data).await,
            // Copied, not yet deleted.
            1 => {
                s3.put(&target, data).await;
                s3.put(key, data).await;
            }
            // Not reached.
            _ => s3.put(key, data).await,
        }
    }
    // Last: on a bucket shared with other tests' servers, none may roll a half-made
    // state forward.
    s3.put(&intent_key(from), &intent_json(from, to, user, heartbeat))
        .await;
    tree
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_instance_rolls_an_interrupted_rename_forward_at_start() {
    let (settings, view) = own_store("rename-crash").await;
    let user = format!("crash-{:08x}/users/carol/", rand::random::<u32>());
    let (from, to) = (format!("{user}src/"), format!("{user}dst/"));
    let tree = crashed_state(&view, &user, &from, &to, now() - 3600).await;

    let t = TestServer::start_with(|c| c.s3 = Some(settings)).await;
    assert!(
        wait_intent_gone(&view, &intent_key(&from), Duration::from_secs(60)).await,
        "the stale intent was not rolled forward"
    );
    assert_moved(&view, &tree, &from, &to).await;
    assert_eq!(view.pending_uploads(&user).await, Vec::<String>::new());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_rename_is_left_alone_and_a_stale_one_finished_on_use() {
    let (settings, view) = own_store("rename-live").await;
    let users_view = BucketView::new(view.client.clone(), &view.bucket);
    let prepared = std::sync::Arc::new(std::sync::Mutex::new(None));
    let keep = prepared.clone();
    // Before the server starts (its look at start must find the intent): alice's prefix
    // is known once the users file is written.
    let t = TestServer::start_with(move |c| {
        let users: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&c.users_file).expect("users")).expect("json");
        let alice = users["users"][0]["key_prefix"]
            .as_str()
            .expect("prefix")
            .to_string();
        let (from, to) = (format!("{alice}src/"), format!("{alice}dst/"));
        let tree = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(crashed_state(
                &users_view,
                &alice,
                &from,
                &to,
                now(),
            ))
        });
        *keep.lock().expect("lock") = Some((alice, tree));
        c.s3 = Some(settings);
    })
    .await;
    let (alice, tree) = prepared.lock().expect("lock").take().expect("prepared");
    assert_eq!(alice, t.alice.prefix);
    let (from, to) = (format!("{alice}src/"), format!("{alice}dst/"));
    let before = view.keys(&alice).await;

    // The look at start leaves it alone, and a rename that touches it is refused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = t.russh_sftp(&t.alice).await;
    let err = s
        .posix_rename("/src/d1", "/elsewhere")
        .await
        .expect_err("refused");
    assert!(err.contains("in progress"), "{err}");
    assert_eq!(view.keys(&alice).await, before, "a live rename was touched");
    assert!(view.object(&intent_key(&from)).await.is_some());

    // Its gateway stops refreshing the heartbeat: the next use finishes it.
    view.put(
        &intent_key(&from),
        &intent_json(&from, &to, &alice, now() - 3600),
    )
    .await;
    s.posix_rename("/dst/d1", "/d1-moved")
        .await
        .expect("rename after roll forward");
    assert!(view.object(&intent_key(&from)).await.is_none());
    let mut tree_after = tree.clone();
    let d1: Vec<String> = tree_after
        .keys()
        .filter(|k| k.starts_with(&format!("{from}d1/")))
        .cloned()
        .collect();
    for key in d1 {
        let data = tree_after.remove(&key).expect("key");
        let moved = format!("{alice}d1-moved/{}", &key[format!("{from}d1/").len()..]);
        assert_eq!(
            sha256(&view.object(&moved).await.expect("moved")),
            sha256(&data)
        );
    }
    assert_moved(&view, &tree_after, &from, &to).await;
    t.shutdown().await;
}

#[tokio::test]
async fn a_system_prefix_inside_a_users_prefix_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users_file = dir.path().join("users.json");
    let users = serde_json::json!({ "users": [{
        "username": "root",
        "password": crate::common::test_hash(crate::common::PASSWORD),
        "key_prefix": ".s3sftp/root/",
    }]});
    std::fs::write(&users_file, users.to_string()).expect("users");
    let mut config = s3sftp::server::ServerConfig::new(dir.path().join("state"), &users_file);
    config.listen = "127.0.0.1:0".parse().expect("addr");
    let err = match s3sftp::server::start(config).await {
        Ok(_) => panic!("started with the system prefix inside a user's prefix"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("--system-prefix") && err.contains("user root"),
        "{err}"
    );
}
