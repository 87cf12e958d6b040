//! Buckets as production sets them up, seen from the S3 side by a proxy between the server
//! and the real S3 server: the storage class and SSE-KMS headers on every request that
//! creates an object (renames included); a CRC32C or Content-MD5 on every upload request
//! (MD5 by default where Object Lock is on), and a body corrupted on the way refused by S3
//! with nothing stored; and a least-privilege policy's 403 on a HEAD or GET of a missing
//! key (and on HeadBucket at start) changing nothing for the client.

use std::time::Duration;

use crate::common::bucket::BucketView;
use crate::common::fault_proxy::{quick_retries, start_behind_proxy, Fault, FaultProxy, Op, Seen};
use crate::common::own_store::own_store;
use crate::common::*;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use s3sftp::storage::{Encryption, ObjectSettings, StorageClass, UploadChecksum};

const KMS_KEY: &str = "arn:aws:kms:us-east-1:123456789012:key/s3sftp-test";

fn attrs() -> FileAttributes {
    FileAttributes::default()
}

/// Asserts that every one of `requests` (`what`, at least one) has header `name` = `value`.
fn assert_all_have(requests: &[Seen], what: &str, name: &str, value: &str) {
    assert!(!requests.is_empty(), "no {what} request was seen");
    for r in requests {
        assert_eq!(r.header(name), Some(value), "{name} of {what} {}", r.target);
    }
}

async fn assert_object(view: &BucketView, key: &str, data: Option<&[u8]>) {
    let stored = view.object(key).await;
    assert_eq!(
        stored.as_deref().map(sha256),
        data.map(sha256),
        "object {key}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn class_and_kms_headers_go_on_every_request_that_creates_an_object() {
    let (t, proxy, view) = start_behind_proxy(|c| {
        c.transfer.objects = ObjectSettings {
            storage_class: Some(StorageClass::StandardIa),
            encryption: Encryption::Kms {
                key_id: Some(KMS_KEY.into()),
                bucket_key: true,
            },
            upload_checksum: UploadChecksum::Md5,
        };
    })
    .await;
    proxy.record_requests();
    let p = t.alice.prefix.clone();
    let s = t.russh_sftp(&t.alice).await;
    s.raw.mkdir("/dir", attrs()).await.expect("mkdir");
    let small = random_bytes(100_000, 1);
    let big = random_bytes(2 * PART + 4321, 2);
    s.upload("/small.bin", &small).await.expect("small upload");
    s.upload("/dir/big.bin", &big).await.expect("big upload");
    s.posix_rename("/small.bin", "/dir/small.bin")
        .await
        .expect("rename small");
    s.posix_rename("/dir/big.bin", "/big.bin")
        .await
        .expect("rename big");

    for op in [Op::PutObject, Op::CreateMultipartUpload, Op::CopyObject] {
        let requests = proxy.requests(op);
        let what = format!("{op:?}");
        assert_all_have(&requests, &what, "x-amz-storage-class", "STANDARD_IA");
        assert_all_have(&requests, &what, "x-amz-server-side-encryption", "aws:kms");
        assert_all_have(
            &requests,
            &what,
            "x-amz-server-side-encryption-aws-kms-key-id",
            KMS_KEY,
        );
        assert_all_have(
            &requests,
            &what,
            "x-amz-server-side-encryption-bucket-key-enabled",
            "true",
        );
    }
    // The marker, the small file, and the two copies.
    assert_eq!(proxy.requests(Op::PutObject).len(), 2);
    assert_eq!(proxy.requests(Op::CopyObject).len(), 2);
    assert_object(&view, &format!("{p}dir/small.bin"), Some(&small)).await;
    assert_object(&view, &format!("{p}big.bin"), Some(&big)).await;
    assert_object(&view, &format!("{p}small.bin"), None).await;

    // Where the store keeps classes (moto does; the embedded store does not), the renamed
    // objects are still STANDARD_IA.
    for key in [format!("{p}dir/small.bin"), format!("{p}big.bin")] {
        let head = view
            .client
            .head_object()
            .bucket(&view.bucket)
            .key(&key)
            .send()
            .await
            .expect("head");
        if let Some(class) = head.storage_class() {
            assert_eq!(class.as_str(), "STANDARD_IA", "class of {key}");
        }
    }
    t.shutdown().await;
}

/// Uploads a small and a multipart file with `setting` and checks, at the S3 side, the
/// integrity header of every upload request: `md5` a Content-MD5, `crc32c` an
/// `x-amz-checksum-crc32c` (the multipart upload declaring the algorithm), never both;
/// `auto` (no Object Lock here) CRC32C where the store checks it, else MD5.
async fn upload_requests_carry(setting: UploadChecksum) {
    let (t, proxy, view) =
        start_behind_proxy(|c| c.transfer.objects.upload_checksum = setting).await;
    let p = t.alice.prefix.clone();
    let checksum = match setting {
        UploadChecksum::Auto
            if !store_checks(&view, &format!("{p}probe"), UploadChecksum::Crc32c).await =>
        {
            UploadChecksum::Md5
        }
        UploadChecksum::Auto => UploadChecksum::Crc32c,
        other => other,
    };
    proxy.record_requests();
    let s = t.russh_sftp(&t.alice).await;
    let small = random_bytes(70_000, 3);
    let big = random_bytes(2 * PART + 1, 4);
    s.upload("/small.bin", &small).await.expect("small upload");
    s.upload("/big.bin", &big).await.expect("big upload");
    s.raw.mkdir("/d", attrs()).await.expect("mkdir");
    for op in [Op::PutObject, Op::UploadPart] {
        let requests = proxy.requests(op);
        assert!(!requests.is_empty(), "no {op:?} seen");
        for r in &requests {
            let (md5, crc) = (r.header("content-md5"), r.header("x-amz-checksum-crc32c"));
            let (header, value, len) = match checksum {
                UploadChecksum::Md5 => {
                    assert_eq!(crc, None, "{op:?} {}", r.target);
                    ("Content-MD5", md5, 16)
                }
                _ => {
                    assert_eq!(md5, None, "{op:?} {}", r.target);
                    ("x-amz-checksum-crc32c", crc, 4)
                }
            };
            let value = value.unwrap_or_else(|| panic!("{op:?} {} has no {header}", r.target));
            let bytes = aws_smithy_types::base64::decode(value).expect("base64");
            assert_eq!(bytes.len(), len, "{header}: {value}");
        }
    }
    if checksum == UploadChecksum::Crc32c {
        let creates = proxy.requests(Op::CreateMultipartUpload);
        assert_all_have(
            &creates,
            "CreateMultipartUpload",
            "x-amz-checksum-algorithm",
            "CRC32C",
        );
    }
    assert_eq!(proxy.requests(Op::UploadPart).len(), 3);
    assert_object(&view, &format!("{p}small.bin"), Some(&small)).await;
    assert_object(&view, &format!("{p}big.bin"), Some(&big)).await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_upload_request_carries_a_content_md5_when_set() {
    upload_requests_carry(UploadChecksum::Md5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_upload_request_carries_a_crc32c_when_set() {
    upload_requests_carry(UploadChecksum::Crc32c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn by_default_a_bucket_without_object_lock_gets_crc32c_if_checked() {
    // `auto` reads the bucket's Object Lock setting at start (neither test store has one
    // here) and probes whether the store checks CRC32C: the embedded store does, so the
    // cheap CRC32C goes on every upload; moto does not, so Content-MD5.
    upload_requests_carry(UploadChecksum::Auto).await;
}

/// Whether the store refuses a PutObject whose `checksum` header does not match its body
/// (moto 5.0.28 checks neither). Leaves nothing behind.
async fn store_checks(view: &BucketView, key: &str, checksum: UploadChecksum) -> bool {
    use md5::Digest;
    let put = view
        .client
        .put_object()
        .bucket(&view.bucket)
        .key(key)
        .body(b"these bytes".to_vec().into());
    let put = match checksum {
        UploadChecksum::Md5 => {
            put.content_md5(aws_smithy_types::base64::encode(md5::Md5::digest(b"other")))
        }
        _ => put
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32C)
            .checksum_crc32_c(aws_smithy_types::base64::encode(7u32.to_be_bytes())),
    };
    let put = put.send().await;
    if put.is_ok() {
        let _ = view
            .client
            .delete_object()
            .bucket(&view.bucket)
            .key(key)
            .send()
            .await;
    }
    put.is_err()
}

/// A body corrupted between the gateway and S3 is refused by S3 (its `checksum` header
/// does not match), not retried, and nothing is stored.
async fn corrupted_body_is_refused(checksum: UploadChecksum) {
    let (t, proxy, view) = start_behind_proxy(|c| {
        quick_retries(c, 3, Duration::from_secs(10));
        c.transfer.objects.upload_checksum = checksum;
    })
    .await;
    let p = t.alice.prefix.clone();
    if !store_checks(&view, &format!("{p}probe"), checksum).await {
        eprintln!("skipped: this S3 store accepts a body that does not match its {checksum:?}");
        t.shutdown().await;
        return;
    }
    proxy.add_for(Op::PutObject, "bad", Fault::CorruptBody, u32::MAX);
    proxy.add_for(Op::UploadPart, "bad", Fault::CorruptBody, 1);
    let s = t.russh_sftp(&t.alice).await;
    let small = random_bytes(50_000, 5);
    let big = random_bytes(2 * PART + 10, 6);
    let err = s
        .upload("/bad-small.bin", &small)
        .await
        .expect_err("refused");
    assert!(err.contains("close"), "the CLOSE fails: {err}");
    let err = s.upload("/bad-big.bin", &big).await.expect_err("refused");
    assert!(err.contains("write") || err.contains("close"), "{err}");
    assert_eq!(proxy.injected(Op::PutObject), 1, "not retried: {err}");
    assert_eq!(proxy.injected(Op::UploadPart), 1);
    assert_object(&view, &format!("{p}bad-small.bin"), None).await;
    assert_object(&view, &format!("{p}bad-big.bin"), None).await;
    assert!(view.wait_no_pending_uploads(&p).await.is_empty());
    // The same files, uncorrupted, go through.
    proxy.clear();
    s.upload("/good-small.bin", &small).await.expect("upload");
    s.upload("/good-big.bin", &big).await.expect("upload");
    assert_object(&view, &format!("{p}good-small.bin"), Some(&small)).await;
    assert_object(&view, &format!("{p}good-big.bin"), Some(&big)).await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_corrupted_on_the_way_is_refused_by_its_md5() {
    corrupted_body_is_refused(UploadChecksum::Md5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_corrupted_on_the_way_is_refused_by_its_crc32c() {
    corrupted_body_is_refused(UploadChecksum::Crc32c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_403_for_missing_keys_is_understood_as_not_found() {
    let (t, proxy, view) = start_behind_proxy(|_| {}).await;
    // What a policy with a prefix-scoped s3:ListBucket makes S3 answer.
    proxy.add(Op::HeadObject, Fault::NotFoundAs(403), u32::MAX);
    proxy.add(Op::GetObject, Fault::NotFoundAs(403), u32::MAX);
    let p = t.alice.prefix.clone();
    let s = t.russh_sftp(&t.alice).await;

    // STAT and OPEN of missing names.
    let missing = s.raw.stat("/missing.bin").await;
    assert_eq!(status_code(&missing), Some(StatusCode::NoSuchFile));
    let read = s.raw.open("/missing.bin", OpenFlags::READ, attrs()).await;
    assert_eq!(status_code(&read), Some(StatusCode::NoSuchFile));
    assert!(proxy.injected(Op::HeadObject) >= 1, "a HEAD got a 403");
    assert!(proxy.injected(Op::GetObject) >= 1, "a GET got a 403");

    // Uploads: a plain one, an exclusive create, one into a new directory.
    let data = random_bytes(80_000, 7);
    s.upload("/a.bin", &data).await.expect("upload");
    let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE;
    let h = s
        .raw
        .open("/excl.bin", flags, attrs())
        .await
        .expect("exclusive create of a new name")
        .handle;
    s.raw.write(&h, 0, data.clone()).await.expect("write");
    s.raw.close(&h).await.expect("close");
    s.raw.mkdir("/dir", attrs()).await.expect("mkdir");
    s.upload("/dir/b.bin", &data)
        .await
        .expect("upload into dir");

    // Stats of what is there; renames onto new names; removal.
    let st = s.raw.stat("/a.bin").await.expect("stat");
    assert_eq!(st.attrs.size, Some(data.len() as u64));
    s.raw.rename("/a.bin", "/c.bin").await.expect("rename");
    s.posix_rename("/excl.bin", "/dir/d.bin")
        .await
        .expect("posix rename");
    let gone = s.raw.stat("/a.bin").await;
    assert_eq!(status_code(&gone), Some(StatusCode::NoSuchFile));
    s.raw.remove("/c.bin").await.expect("remove");
    let gone = s.raw.remove("/c.bin").await;
    assert_eq!(status_code(&gone), Some(StatusCode::NoSuchFile));

    assert_object(&view, &format!("{p}dir/b.bin"), Some(&data)).await;
    assert_object(&view, &format!("{p}dir/d.bin"), Some(&data)).await;
    assert_object(&view, &format!("{p}a.bin"), None).await;
    assert_object(&view, &format!("{p}c.bin"), None).await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_up_works_when_head_bucket_is_denied() {
    let (direct, view) = own_store("tight-iam").await;
    let proxy = FaultProxy::start(direct.endpoint.as_deref().expect("an S3 endpoint")).await;
    proxy.add(Op::HeadBucket, Fault::Status(403), u32::MAX);
    let mut proxied = direct;
    proxied.endpoint = Some(proxy.endpoint());
    let t = TestServer::start_with(move |c| c.s3 = Some(proxied)).await;
    assert!(proxy.injected(Op::HeadBucket) >= 1, "HeadBucket was denied");
    let data = random_bytes(1000, 8);
    let s = t.russh_sftp(&t.alice).await;
    s.upload("/x.bin", &data).await.expect("upload");
    assert_object(&view, &format!("{}x.bin", t.alice.prefix), Some(&data)).await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_up_still_fails_when_listing_is_denied_too() {
    let (direct, _view) = own_store("no-access").await;
    let proxy = FaultProxy::start(direct.endpoint.as_deref().expect("an S3 endpoint")).await;
    proxy.add(Op::HeadBucket, Fault::Status(403), u32::MAX);
    proxy.add(Op::ListObjectsV2, Fault::Status(403), u32::MAX);
    let mut settings = direct;
    settings.endpoint = Some(proxy.endpoint());
    settings.max_attempts = 1;
    let client = s3sftp::storage::client::build_client(&settings).await;
    let err = s3sftp::storage::client::check_bucket(&client, &settings, Some("users/a/"))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("was denied"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_sse_kms_a_complete_whose_answer_is_lost_is_still_acknowledged() {
    // SSE-KMS ETags are not MD5s: the object's ETag cannot be computed from the parts',
    // so the upload being gone, the size and the part count must tell.
    let (t, proxy, view) = start_behind_proxy(|c| {
        quick_retries(c, 3, Duration::from_secs(10));
        c.transfer.objects.encryption = Encryption::Kms {
            key_id: None,
            bucket_key: false,
        };
    })
    .await;
    let p = t.alice.prefix.clone();
    let s = t.russh_sftp(&t.alice).await;
    proxy.add(Op::CompleteMultipartUpload, Fault::Truncate(10), 1);
    let data = random_bytes(2 * PART + 555, 12);
    s.upload("/lost-answer.bin", &data)
        .await
        .expect("the upload is acknowledged");
    assert_eq!(proxy.injected(Op::CompleteMultipartUpload), 1);
    assert_object(&view, &format!("{p}lost-answer.bin"), Some(&data)).await;
    assert!(view.wait_no_pending_uploads(&p).await.is_empty());

    // A Complete that really failed is still a failure, with nothing at the key.
    proxy.add(Op::CompleteMultipartUpload, Fault::Status(500), 3);
    s.upload("/failed.bin", &data).await.expect_err("fails");
    assert_object(&view, &format!("{p}failed.bin"), None).await;
    assert!(view.wait_no_pending_uploads(&p).await.is_empty());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_reach_a_bucket_with_object_lock() {
    // Needs a store with Object Lock (moto has it; the embedded store does not).
    let Some(mut settings) = external_s3() else {
        eprintln!("skipped: Object Lock needs an external S3 (S3SFTP_TEST_S3_*)");
        return;
    };
    let client = s3sftp::storage::client::build_client(&settings).await;
    let bucket = format!("lock-{:08x}", rand::random::<u32>());
    let created = client
        .create_bucket()
        .bucket(&bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await;
    if let Err(e) = created {
        eprintln!("skipped: this store cannot create an Object Lock bucket: {e:?}");
        return;
    }
    use aws_sdk_s3::types::{
        DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled, ObjectLockRetentionMode,
        ObjectLockRule,
    };
    let config = ObjectLockConfiguration::builder()
        .object_lock_enabled(ObjectLockEnabled::Enabled)
        .rule(
            ObjectLockRule::builder()
                .default_retention(
                    DefaultRetention::builder()
                        .mode(ObjectLockRetentionMode::Governance)
                        .days(1)
                        .build(),
                )
                .build(),
        )
        .build();
    client
        .put_object_lock_configuration()
        .bucket(&bucket)
        .object_lock_configuration(config)
        .send()
        .await
        .expect("default retention");
    settings.bucket = bucket.clone();
    let view = BucketView::new(client, &bucket);

    // Without an integrity header the bucket refuses uploads...
    let unchecked = settings.clone();
    let t = TestServer::start_with(move |c| {
        c.s3 = Some(unchecked);
        c.transfer.objects.upload_checksum = UploadChecksum::None;
    })
    .await;
    let s = t.russh_sftp(&t.alice).await;
    let small = random_bytes(10_000, 9);
    s.upload("/refused.bin", &small)
        .await
        .expect_err("refused without Content-MD5");
    drop(s);
    t.shutdown().await;

    // ... and with the default (`auto`: Content-MD5, as the bucket has Object Lock) it
    // takes them, small and multipart.
    let t = TestServer::start_with(move |c| c.s3 = Some(settings)).await;
    let p = t.alice.prefix.clone();
    let s = t.russh_sftp(&t.alice).await;
    let big = random_bytes(2 * PART + 3, 10);
    s.upload("/small.bin", &small).await.expect("small upload");
    s.upload("/big.bin", &big).await.expect("multipart upload");
    s.raw.mkdir("/dir", attrs()).await.expect("mkdir");
    assert_object(&view, &format!("{p}small.bin"), Some(&small)).await;
    assert_object(&view, &format!("{p}big.bin"), Some(&big)).await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn by_default_no_md5_is_added_where_the_sdk_sends_its_own_checksum() {
    use s3sftp::storage::client::ChecksumMode;
    let (t, proxy, view) = start_behind_proxy(|c| {
        c.s3.as_mut().expect("s3").checksum = Some(ChecksumMode::WhenSupported);
    })
    .await;
    proxy.record_requests();
    let p = t.alice.prefix.clone();
    let s = t.russh_sftp(&t.alice).await;
    let small = random_bytes(70_000, 13);
    let big = random_bytes(PART + 1, 14);
    s.upload("/small.bin", &small).await.expect("small upload");
    s.upload("/big.bin", &big).await.expect("big upload");
    for op in [Op::PutObject, Op::UploadPart] {
        let requests = proxy.requests(op);
        assert!(!requests.is_empty(), "no {op:?} seen");
        for r in &requests {
            assert_eq!(r.header("content-md5"), None, "{op:?} {}", r.target);
            let sdk = r.header("x-amz-checksum-crc32").is_some()
                || r.header("x-amz-trailer") == Some("x-amz-checksum-crc32");
            assert!(sdk, "the SDK's CRC32 on {op:?}: {:?}", r.headers);
        }
    }
    assert_object(&view, &format!("{p}small.bin"), Some(&small)).await;
    assert_object(&view, &format!("{p}big.bin"), Some(&big)).await;
    t.shutdown().await;
}

#[test]
fn the_policy_in_the_docs_is_what_s3sftp_policy_prints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGs2ut2BlI6bmDkB+OOW2bbkUXUFzRJoh5nHAYbHtVpa";
    let users = serde_json::json!({ "users": [
        { "username": "alice", "key_prefix": "users/alice/", "public_keys": [key] },
        { "username": "bob", "key_prefix": "users/bob/", "public_keys": [key] },
    ]});
    let users_file = dir.path().join("users.json");
    std::fs::write(&users_file, users.to_string()).expect("users file");
    let kms = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_s3sftp"))
        .args([
            "policy",
            "--bucket",
            "my-sftp-bucket",
            "--s3-sse-kms-key-id",
            kms,
        ])
        .arg("--users-file")
        .arg(&users_file)
        .env_remove("S3SFTP_BUCKET")
        .output()
        .expect("s3sftp policy runs");
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        printed["Statement"][0]["Condition"]["StringLike"]["s3:prefix"],
        serde_json::json!([
            ".s3sftp/",
            ".s3sftp/*",
            "users/alice/",
            "users/alice/*",
            "users/bob/",
            "users/bob/*"
        ])
    );
    // docs/s3-providers.md shows this very output.
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/s3-providers.md"))
            .expect("docs");
    let section = docs
        .split("### A least-privilege IAM policy")
        .nth(1)
        .expect("the policy section");
    let shown = section
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a JSON block");
    let shown: serde_json::Value = serde_json::from_str(shown).expect("the docs' JSON");
    assert_eq!(shown, printed, "docs/s3-providers.md is out of date");
}
