//! Changes made outside the gateway show quickly: an object overwritten directly in the
//! bucket (the S3 API) is seen by STAT with its new size once the metadata cache's TTL
//! (`--metadata-cache-secs`, the freshness bound) has passed, while a session's own
//! changes show to it at once, whatever the TTL.

use std::time::Duration;

use crate::common::*;

/// How long a poll may wait before the test is declared hung (not a timing assertion:
/// the TTL under test is far shorter).
const HANG: Duration = Duration::from_secs(60);

/// The size STAT shows for `path`.
async fn stat_size(s: &RusshSftp, path: &str) -> Option<u64> {
    s.raw.stat(path).await.expect("stat").attrs.size
}

/// Lists `dir` to the end (the session remembers what it lists).
async fn list(s: &RusshSftp, dir: &str) {
    let h = s.raw.opendir(dir).await.expect("opendir").handle;
    while s.raw.readdir(&h).await.is_ok() {}
    s.raw.close(&h).await.expect("closedir");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_overwritten_in_the_bucket_shows_its_new_size_after_the_ttl() {
    let t = TestServer::start_with(|c| c.transfer.metadata_ttl = Duration::from_millis(300)).await;
    let key = format!("{}outside.txt", t.alice.prefix);
    t.s3.put(&key, &[1u8; 10]).await;
    let s = t.russh_sftp(&t.alice).await;
    list(&s, "/").await;
    assert_eq!(stat_size(&s, "/outside.txt").await, Some(10));

    t.s3.put(&key, &[2u8; 25]).await;
    let seen = tokio::time::timeout(HANG, async {
        loop {
            if stat_size(&s, "/outside.txt").await == Some(25) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "STAT never showed the new size");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sessions_own_overwrite_shows_to_it_at_once() {
    // The harness's TTL (30 s) outlives the test: only the session's own bookkeeping can
    // make the new size show.
    let t = TestServer::start().await;
    let key = format!("{}mine.txt", t.alice.prefix);
    t.s3.put(&key, &[1u8; 10]).await;
    let s = t.russh_sftp(&t.alice).await;
    list(&s, "/").await;
    assert_eq!(stat_size(&s, "/mine.txt").await, Some(10));
    s.upload("/mine.txt", &[3u8; 40]).await.expect("upload");
    assert_eq!(stat_size(&s, "/mine.txt").await, Some(40));
    list(&s, "/").await;
    assert_eq!(stat_size(&s, "/mine.txt").await, Some(40));
    assert_eq!(t.s3.object(&key).await, Some(vec![3u8; 40]));
    t.shutdown().await;
}
