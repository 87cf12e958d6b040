//! S3 faults, injected by a proxy between the server and the real S3 server, seen through
//! real OpenSSH clients: transient errors are retried and transfers come out whole;
//! permanent ones fail the one transfer cleanly (no object, no pending multipart upload)
//! while other sessions carry on; a stalled S3 request times out.

use std::time::{Duration, Instant};

use crate::common::fault_proxy::{quick_retries, start_behind_proxy, Fault, Op};
use crate::common::*;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};

/// Writes `data` to the local file `name` in the test's directory; its path.
fn local_copy(t: &TestServer, name: &str, data: &[u8]) -> String {
    write_local(t.dir.path(), name, data).display().to_string()
}

/// Uploads `big` as big.bin and `small` as small.bin in one OpenSSH `sftp` session as alice.
async fn put_big_and_small(t: &TestServer, big: &[u8], small: &[u8]) -> std::process::Output {
    let big_local = local_copy(t, "big.bin", big);
    let small_local = local_copy(t, "small.bin", small);
    t.sftp(
        &t.alice,
        &format!("put {big_local} big.bin\nput {small_local} small.bin\n"),
    )
    .await
}

/// Asserts that alice's `name` holds exactly `data` in S3.
async fn assert_stored(
    t: &TestServer,
    view: &crate::common::bucket::BucketView,
    name: &str,
    data: &[u8],
    context: &str,
) {
    let stored = view.object(&format!("{}{name}", t.alice.prefix)).await;
    assert_eq!(
        stored.as_deref().map(sha256),
        Some(sha256(data)),
        "{context}: {name}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_down_on_parts_and_puts_is_retried() {
    let (t, proxy, view) =
        start_behind_proxy(|c| quick_retries(c, 3, Duration::from_secs(10))).await;
    proxy.add(Op::UploadPart, Fault::Status(503), 2);
    proxy.add(Op::PutObject, Fault::Status(503), 2);
    let big = random_bytes(2 * PART + 12_345, 1);
    let small = random_bytes(100_000, 2);
    let out = put_big_and_small(&t, &big, &small).await;
    assert!(out.status.success(), "uploads succeed: {}", stderr(&out));
    assert_eq!(proxy.injected(Op::UploadPart), 2);
    assert_eq!(proxy.injected(Op::PutObject), 2);
    assert!(proxy.hits(Op::UploadPart) >= 3 + 2, "parts were sent again");
    assert_stored(&t, &view, "big.bin", &big, "after retries").await;
    assert_stored(&t, &view, "small.bin", &small, "after retries").await;
    assert!(view
        .wait_no_pending_uploads(&t.alice.prefix)
        .await
        .is_empty());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resets_and_a_cut_body_on_get_are_retried() {
    let (t, proxy, view) =
        start_behind_proxy(|c| quick_retries(c, 3, Duration::from_secs(10))).await;
    let data = random_bytes(PART + 54_321, 3);
    view.put(&format!("{}down.bin", t.alice.prefix), &data)
        .await;
    proxy.add(Op::GetObject, Fault::Reset, 2);
    proxy.add(Op::GetObject, Fault::Truncate(1000), 1);
    let local = t.dir.path().join("down.bin");
    let out = t
        .sftp(&t.alice, &format!("get down.bin {}\n", local.display()))
        .await;
    assert!(out.status.success(), "download succeeds: {}", stderr(&out));
    assert_eq!(proxy.injected(Op::GetObject), 3);
    let got = std::fs::read(&local).expect("downloaded file");
    assert_eq!(got.len(), data.len());
    assert_eq!(sha256(&got), sha256(&data));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_complete_fails_that_upload_only_and_leaves_nothing() {
    let (t, proxy, view) =
        start_behind_proxy(|c| quick_retries(c, 3, Duration::from_secs(10))).await;
    proxy.add_for(
        Op::CompleteMultipartUpload,
        "doomed",
        Fault::Status(500),
        u32::MAX,
    );
    let doomed = random_bytes(2 * PART + 7, 4);
    let doomed_local = local_copy(&t, "doomed.bin", &doomed);
    let fine = random_bytes(PART + 99, 5);
    let fine_local = local_copy(&t, "fine.bin", &fine);
    let fine_back = t.dir.path().join("fine.back");
    let alice_batch = format!("put {doomed_local} doomed.bin\n");
    let bob_batch = format!(
        "put {fine_local} fine.bin\nget fine.bin {}\n",
        fine_back.display()
    );
    let (alice, bob) = tokio::join!(t.sftp(&t.alice, &alice_batch), t.sftp(&t.bob, &bob_batch));

    assert!(!alice.status.success(), "the upload fails");
    let err = stderr(&alice);
    assert!(
        err.contains("close remote") && err.contains("Failure"),
        "the client is told: {err}"
    );
    assert_eq!(proxy.injected(Op::CompleteMultipartUpload), 3, "retried");
    let key = format!("{}doomed.bin", t.alice.prefix);
    assert_eq!(view.object(&key).await, None, "no object at the key");
    assert!(view
        .wait_no_pending_uploads(&t.alice.prefix)
        .await
        .is_empty());
    assert!(proxy.hits(Op::AbortMultipartUpload) >= 1);

    // OpenSSH shows only the status code; the FAILURE message itself says what failed.
    let s = t.russh_sftp(&t.alice).await;
    let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
    let h = s
        .raw
        .open("/doomed-raw.bin", flags, FileAttributes::empty())
        .await
        .expect("open")
        .handle;
    for (i, piece) in doomed[..PART + 1].chunks(32 * 1024).enumerate() {
        s.raw
            .write(&h, (i * 32 * 1024) as u64, piece.to_vec())
            .await
            .expect("write");
    }
    let closed = s.raw.close(&h).await;
    assert_eq!(status_code(&closed), Some(StatusCode::Failure));
    let Err(russh_sftp::client::error::Error::Status(status)) = closed else {
        unreachable!()
    };
    assert!(
        status.error_message.contains("CompleteMultipartUpload")
            && status.error_message.contains("InternalError"),
        "FAILURE says why: {}",
        status.error_message
    );
    assert_eq!(
        view.object(&format!("{}doomed-raw.bin", t.alice.prefix))
            .await,
        None
    );
    assert!(view
        .wait_no_pending_uploads(&t.alice.prefix)
        .await
        .is_empty());

    assert!(bob.status.success(), "bob carries on: {}", stderr(&bob));
    let stored = view.object(&format!("{}fine.bin", t.bob.prefix)).await;
    assert_eq!(stored.as_deref().map(sha256), Some(sha256(&fine)));
    let back = std::fs::read(&fine_back).expect("bob's download");
    assert_eq!(sha256(&back), sha256(&fine));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scp_reports_the_failed_file_and_sends_the_next() {
    let (t, proxy, view) =
        start_behind_proxy(|c| quick_retries(c, 3, Duration::from_secs(10))).await;
    proxy.add_for(
        Op::CompleteMultipartUpload,
        "first",
        Fault::Status(500),
        u32::MAX,
    );
    let first = random_bytes(PART + 1, 6);
    let second = random_bytes(PART + 2, 7);
    let first_local = local_copy(&t, "first.bin", &first);
    let second_local = local_copy(&t, "second.bin", &second);
    let out = t
        .scp(&t.alice, &["-O", &first_local, &second_local, "REMOTE:"])
        .await;
    assert!(!out.status.success(), "scp reports the failure");
    let err = stderr(&out);
    assert!(
        err.lines().any(|l| l.starts_with("scp: ")
            && l.contains("first.bin")
            && l.contains("CompleteMultipartUpload failed")),
        "an scp error line: {err}"
    );
    assert_eq!(
        view.object(&format!("{}first.bin", t.alice.prefix)).await,
        None
    );
    let stored = view.object(&format!("{}second.bin", t.alice.prefix)).await;
    assert_eq!(stored.as_deref().map(sha256), Some(sha256(&second)));
    assert!(view
        .wait_no_pending_uploads(&t.alice.prefix)
        .await
        .is_empty());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_put_times_out_instead_of_hanging() {
    let (t, proxy, view) =
        start_behind_proxy(|c| quick_retries(c, 2, Duration::from_secs(2))).await;
    proxy.add(Op::PutObject, Fault::Stall, u32::MAX);
    let data = random_bytes(10_000, 8);
    let local = local_copy(&t, "stuck.bin", &data);
    let started = Instant::now();
    let out = t.sftp(&t.alice, &format!("put {local} stuck.bin\n")).await;
    let took = started.elapsed();
    assert!(!out.status.success(), "the upload fails");
    assert!(took < Duration::from_secs(20), "failed after {took:?}");
    assert_eq!(proxy.injected(Op::PutObject), 2, "one stall per attempt");
    proxy.clear();
    let key = format!("{}stuck.bin", t.alice.prefix);
    assert_eq!(view.object(&key).await, None, "nothing at the key");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_get_body_that_stalls_midway_times_out_and_is_retried() {
    let (t, proxy, view) =
        start_behind_proxy(|c| quick_retries(c, 3, Duration::from_secs(2))).await;
    let data = random_bytes(3 * MIB + 17, 10);
    view.put(&format!("{}slow.bin", t.alice.prefix), &data)
        .await;
    proxy.add(Op::GetObject, Fault::StallBody(1000), 1);
    let local = t.dir.path().join("slow.bin");
    let started = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        t.sftp(&t.alice, &format!("get slow.bin {}\n", local.display())),
    )
    .await
    .expect("the download does not hang on a stalled body");
    assert!(out.status.success(), "download succeeds: {}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(proxy.injected(Op::GetObject), 1);
    let got = std::fs::read(&local).expect("downloaded file");
    assert_eq!(sha256(&got), sha256(&data));
    t.shutdown().await;
}

/// Found by the soak test: a READ whose chunk had failed (GET retries exhausted) left the
/// finished fetch in the read-ahead window, and the next READ of that range polled it
/// again, which panicked the session. Now the failed READ gets FAILURE and the next one
/// fetches the range again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_after_a_failed_chunk_fetches_it_again() {
    let (t, proxy, view) =
        start_behind_proxy(|c| quick_retries(c, 2, Duration::from_secs(10))).await;
    // The test servers fetch 2 MiB chunks; the first comes with the OPEN (one GET), so the
    // fault must hit a later chunk.
    let data = random_bytes(4 * MIB + 4321, 11);
    view.put(&format!("{}chunks.bin", t.alice.prefix), &data)
        .await;
    let s = t.russh_sftp(&t.alice).await;
    let h = s
        .raw
        .open("/chunks.bin", OpenFlags::READ, FileAttributes::empty())
        .await
        .expect("open")
        .handle;
    // Enough faults for every attempt of both later chunks (2 attempts each).
    proxy.add(Op::GetObject, Fault::Status(500), 4);
    let first = s.raw.read(&h, 0, 32 * 1024).await.expect("first chunk");
    assert_eq!(first.data, &data[..32 * 1024]);
    let failed = s.raw.read(&h, 2 * MIB as u64, 32 * 1024).await;
    assert_eq!(
        status_code(&failed),
        Some(StatusCode::Failure),
        "{failed:?}"
    );
    assert!(proxy.injected(Op::GetObject) >= 2, "both attempts failed");
    proxy.clear();
    let mut back = Vec::new();
    while back.len() < data.len() {
        let d = s
            .raw
            .read(&h, back.len() as u64, 32 * 1024)
            .await
            .expect("the session lives on and reads again");
        back.extend_from_slice(&d.data);
    }
    assert_eq!(sha256(&back), sha256(&data));
    s.raw.close(&h).await.expect("close");
    t.shutdown().await;
}

/// Found by the soak test: S3 carried out a CompleteMultipartUpload but its answer was lost;
/// the SDK's retry got NoSuchUpload (as from MinIO and most S3-compatible servers; AWS
/// answers a repeated Complete with success), and the client was told the upload failed
/// although the object was in place. The server now recognises its own object at the key
/// (the multipart ETag of the parts it sent) and acknowledges the upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_complete_whose_answer_is_lost_is_still_acknowledged() {
    let (t, proxy, view) =
        start_behind_proxy(|c| quick_retries(c, 3, Duration::from_secs(10))).await;
    proxy.add(Op::CompleteMultipartUpload, Fault::Truncate(10), 1);
    let data = random_bytes(2 * PART + 555, 12);
    let local = local_copy(&t, "lost-answer.bin", &data);
    let out = t
        .sftp(&t.alice, &format!("put {local} lost-answer.bin\n"))
        .await;
    assert_eq!(proxy.injected(Op::CompleteMultipartUpload), 1);
    assert!(
        out.status.success(),
        "the upload is acknowledged: {}",
        stderr(&out)
    );
    let stored = view
        .object(&format!("{}lost-answer.bin", t.alice.prefix))
        .await;
    assert_eq!(stored.as_deref().map(sha256), Some(sha256(&data)));
    assert!(view
        .wait_no_pending_uploads(&t.alice.prefix)
        .await
        .is_empty());

    // A Complete that really failed is still a failure, with nothing at the key.
    proxy.add(Op::CompleteMultipartUpload, Fault::Status(500), 3);
    let local = local_copy(&t, "failed.bin", &data);
    let out = t.sftp(&t.alice, &format!("put {local} failed.bin\n")).await;
    assert!(!out.status.success(), "the upload fails");
    assert_eq!(
        view.object(&format!("{}failed.bin", t.alice.prefix)).await,
        None
    );
    assert!(view
        .wait_no_pending_uploads(&t.alice.prefix)
        .await
        .is_empty());
    t.shutdown().await;
}

/// Upload bodies go as `UNSIGNED-PAYLOAD` to a loopback S3 by default (auto) and with
/// `never`, and are hashed into the signature with `always`; every mode stores the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_bodies_are_signed_only_when_the_setting_says_so() {
    use s3sftp::storage::signing::PayloadSigning;
    for mode in [
        PayloadSigning::Auto,
        PayloadSigning::Always,
        PayloadSigning::Never,
    ] {
        let (t, proxy, view) = start_behind_proxy(|c| {
            c.s3.as_mut().expect("s3 settings").payload_signing = mode;
            // Not `auto`, whose start-up probe would be one more PutObject.
            c.transfer.objects.upload_checksum = s3sftp::storage::UploadChecksum::Crc32c;
        })
        .await;
        let big = random_bytes(2 * PART + 777, 11);
        let small = random_bytes(5_000, 12);
        let out = put_big_and_small(&t, &big, &small).await;
        assert!(
            out.status.success(),
            "{mode:?}: uploads succeed: {}",
            stderr(&out)
        );
        let context = format!("{mode:?}");
        assert_stored(&t, &view, "big.bin", &big, &context).await;
        assert_stored(&t, &view, "small.bin", &small, &context).await;
        let parts = proxy.payload_hashes(Op::UploadPart);
        let puts = proxy.payload_hashes(Op::PutObject);
        assert_eq!(parts.len(), 3, "{mode:?}: three parts: {parts:?}");
        assert_eq!(puts.len(), 1, "{mode:?}: one put: {puts:?}");
        for hash in parts.iter().chain(&puts) {
            match mode {
                PayloadSigning::Always => assert!(
                    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{mode:?}: a SHA-256 of the body, got {hash:?}"
                ),
                _ => assert_eq!(hash, "UNSIGNED-PAYLOAD", "{mode:?}"),
            }
        }
        // Requests without an upload body are signed as before.
        let listed = proxy.payload_hashes(Op::ListObjectsV2);
        assert!(
            listed.iter().all(|h| h.len() == 64),
            "{mode:?}: listings keep the empty-body hash: {listed:?}"
        );
        t.shutdown().await;
    }
}
