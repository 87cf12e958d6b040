//! The embedded S3 store, driven through a real aws-sdk-s3 client over HTTP, as the server
//! uses it.

use std::collections::BTreeSet;
use std::path::Path;

use aws_sdk_s3::config::{
    BehaviorVersion, Builder, Credentials, Region, RequestChecksumCalculation,
    ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::put_object::{PutObjectError, PutObjectOutput};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, MetadataDirective, ObjectIdentifier,
};
use aws_sdk_s3::Client;
use futures::StreamExt;
use md5::{Digest, Md5};
use s3_store::{EmbeddedError, EmbeddedS3};

const MIB: usize = 1024 * 1024;
const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";

async fn start(dir: &Path) -> (EmbeddedS3, Client) {
    let s3 = EmbeddedS3::start(dir, "test-bucket", "127.0.0.1:0".parse().expect("address"))
        .await
        .expect("embedded store starts");
    let client = client(&s3);
    (s3, client)
}

fn client(s3: &EmbeddedS3) -> Client {
    let config = Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(s3.endpoint())
        .region(Region::new(s3.region().to_owned()))
        .credentials_provider(Credentials::new(
            s3.access_key(),
            s3.secret_key(),
            None,
            None,
            "test",
        ))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Client::from_conf(config)
}

/// The HTTP status of an SDK error (0 if no response arrived).
fn status<E>(err: &SdkError<E>) -> u16 {
    err.raw_response().map(|r| r.status().as_u16()).unwrap_or(0)
}

fn quoted_md5(data: &[u8]) -> String {
    format!("\"{}\"", hex::encode(Md5::digest(data)))
}

/// The Content-MD5 header of `data`: its MD5 in base64.
fn content_md5(data: &[u8]) -> String {
    base64_simd::STANDARD.encode_to_string(Md5::digest(data))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn put(client: &Client, bucket: &str, key: &str, data: &[u8]) -> String {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(data.to_vec()))
        .send()
        .await
        .expect("put object")
        .e_tag
        .expect("etag")
}

async fn get(client: &Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("get object");
    out.body
        .collect()
        .await
        .expect("body")
        .into_bytes()
        .to_vec()
}

/// Every key and common prefix of a listing, page by page, checking each page's counters.
async fn list_all(
    client: &Client,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
    max_keys: Option<i32>,
) -> (Vec<String>, Vec<String>, usize) {
    let (mut keys, mut prefixes, mut pages) = (Vec::new(), Vec::new(), 0);
    let mut token: Option<String> = None;
    loop {
        let out = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_delimiter(delimiter.map(str::to_owned))
            .set_max_keys(max_keys)
            .set_continuation_token(token.clone())
            .send()
            .await
            .expect("list");
        pages += 1;
        let page_keys: Vec<String> = out
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect();
        let page_prefixes: Vec<String> = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(str::to_owned))
            .collect();
        let n = page_keys.len() + page_prefixes.len();
        assert_eq!(
            out.key_count(),
            Some(n as i32),
            "KeyCount counts keys and prefixes"
        );
        assert!(
            n <= max_keys.unwrap_or(1000) as usize,
            "page of {n} entries is too big"
        );
        keys.extend(page_keys);
        prefixes.extend(page_prefixes);
        if out.is_truncated() == Some(true) {
            let next = out
                .next_continuation_token()
                .expect("truncated page has a token")
                .to_owned();
            assert!(n > 0, "a truncated page is not empty");
            token = Some(next);
        } else {
            assert!(out.next_continuation_token().is_none());
            return (keys, prefixes, pages);
        }
    }
}

#[tokio::test]
async fn directory_markers_are_ordinary_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s3, c) = start(dir.path()).await;
    let b = s3.bucket();
    assert_eq!(put(&c, b, "d/", b"").await, format!("\"{EMPTY_MD5}\""));

    let (keys, prefixes, _) = list_all(&c, b, "", Some("/"), None).await;
    assert!(keys.is_empty());
    assert_eq!(prefixes, ["d/"]);
    let (keys, prefixes, _) = list_all(&c, b, "d/", Some("/"), None).await;
    assert_eq!(keys, ["d/"]);
    assert!(prefixes.is_empty());

    let head = c
        .head_object()
        .bucket(b)
        .key("d/")
        .send()
        .await
        .expect("HEAD d/");
    assert_eq!(head.content_length(), Some(0));
    assert_eq!(head.e_tag(), Some(format!("\"{EMPTY_MD5}\"").as_str()));
    assert!(head.last_modified().is_some());
    assert_eq!(get(&c, b, "d/").await, b"");

    let missing = c
        .head_object()
        .bucket(b)
        .key("d")
        .send()
        .await
        .expect_err("no key d");
    assert_eq!(status(&missing), 404);
    let missing = c
        .get_object()
        .bucket(b)
        .key("nope")
        .send()
        .await
        .expect_err("no key");
    assert_eq!(missing.code(), Some("NoSuchKey"));
    s3.shutdown().await;
}

#[tokio::test]
async fn a_and_a_slash_and_a_slash_b_coexist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s3, c) = start(dir.path()).await;
    let b = s3.bucket();
    put(&c, b, "a", b"file a").await;
    put(&c, b, "a/", b"").await;
    put(&c, b, "a/b", b"file a/b").await;
    assert_eq!(get(&c, b, "a").await, b"file a");
    assert_eq!(get(&c, b, "a/").await, b"");
    assert_eq!(get(&c, b, "a/b").await, b"file a/b");
    let (keys, _, _) = list_all(&c, b, "", None, None).await;
    assert_eq!(keys, ["a", "a/", "a/b"]);
    let (keys, prefixes, _) = list_all(&c, b, "", Some("/"), None).await;
    assert_eq!(
        (keys, prefixes),
        (vec!["a".to_owned()], vec!["a/".to_owned()])
    );

    // Deleting one leaves the others; deleting a missing key succeeds.
    c.delete_object()
        .bucket(b)
        .key("a")
        .send()
        .await
        .expect("delete a");
    c.delete_object()
        .bucket(b)
        .key("a")
        .send()
        .await
        .expect("delete missing key");
    let (keys, _, _) = list_all(&c, b, "", None, None).await;
    assert_eq!(keys, ["a/", "a/b"]);
    assert_eq!(get(&c, b, "a/b").await, b"file a/b");

    let delete = Delete::builder()
        .objects(ObjectIdentifier::builder().key("a/").build().expect("id"))
        .objects(ObjectIdentifier::builder().key("a/b").build().expect("id"))
        .objects(
            ObjectIdentifier::builder()
                .key("never")
                .build()
                .expect("id"),
        )
        .build()
        .expect("delete");
    let out = c
        .delete_objects()
        .bucket(b)
        .delete(delete)
        .send()
        .await
        .expect("delete objects");
    assert_eq!(out.deleted().len(), 3);
    assert!(out.errors().is_empty());
    let (keys, _, _) = list_all(&c, b, "", None, None).await;
    assert!(keys.is_empty());
    s3.shutdown().await;
}

#[tokio::test]
async fn list_v2_pages_2500_keys_with_delimiter_without_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s3, c) = start(dir.path()).await;
    let b = s3.bucket().to_owned();
    // 2,000 top-level keys and 500 keys in 50 folders (each folder also has a marker).
    let mut all: Vec<String> = (0..2000).map(|i| format!("f{i:04}")).collect();
    for d in 0..50 {
        all.push(format!("d{d:02}/"));
        for x in 0..9 {
            all.push(format!("d{d:02}/x{x}"));
        }
    }
    assert_eq!(all.len(), 2500);
    futures::stream::iter(all.clone())
        .map(|key| {
            let (c, b) = (c.clone(), b.clone());
            async move { put(&c, &b, &key, key.as_bytes()).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    all.sort();

    let (keys, prefixes, pages) = list_all(&c, &b, "", None, None).await;
    assert_eq!(keys, all, "every key once, in byte order");
    assert_eq!(pages, 3);

    let (keys, prefixes_d, pages) = list_all(&c, &b, "", Some("/"), None).await;
    assert!(prefixes.is_empty());
    assert_eq!(keys.len(), 2000);
    assert_eq!(prefixes_d.len(), 50);
    assert_eq!(pages, 3, "2,050 entries at 1,000 a page");
    let unique: BTreeSet<&String> = keys.iter().chain(&prefixes_d).collect();
    assert_eq!(unique.len(), 2050, "no duplicates across pages");

    // Small pages that end on a common prefix resume after it.
    let (keys7, prefixes7, pages7) = list_all(&c, &b, "", Some("/"), Some(7)).await;
    assert_eq!(keys7, keys);
    assert_eq!(prefixes7, prefixes_d);
    assert_eq!(pages7, 2050_usize.div_ceil(7));

    // A prefix inside a folder, start-after, and max-keys above the cap.
    let (keys, prefixes, _) = list_all(&c, &b, "d07/", Some("/"), None).await;
    assert_eq!(keys.len(), 10);
    assert!(prefixes.is_empty());
    let out = c
        .list_objects_v2()
        .bucket(&b)
        .start_after("f1997")
        .max_keys(5000)
        .send()
        .await
        .expect("list");
    let keys: Vec<&str> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["f1998", "f1999"]);
    assert_eq!(out.max_keys(), Some(1000));

    // ListObjects v1 with markers agrees.
    let mut v1 = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let out = c
            .list_objects()
            .bucket(&b)
            .delimiter("/")
            .max_keys(300)
            .set_marker(marker.clone())
            .send()
            .await
            .expect("list v1");
        v1.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        v1.extend(
            out.common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_owned)),
        );
        if out.is_truncated() != Some(true) {
            break;
        }
        marker = out.next_marker().map(str::to_owned);
        assert!(marker.is_some());
    }
    assert_eq!(v1.len(), 2050);
    assert_eq!(v1.iter().collect::<BTreeSet<_>>().len(), 2050);
    s3.shutdown().await;
}

#[tokio::test]
async fn ranged_gets_and_invalid_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s3, c) = start(dir.path()).await;
    let b = s3.bucket();
    let data = pattern(1000, 7);
    put(&c, b, "r", &data).await;

    let cases: [(&str, std::ops::Range<usize>, &str); 5] = [
        ("bytes=10-19", 10..20, "bytes 10-19/1000"),
        ("bytes=990-", 990..1000, "bytes 990-999/1000"),
        ("bytes=-5", 995..1000, "bytes 995-999/1000"),
        ("bytes=-5000", 0..1000, "bytes 0-999/1000"),
        ("bytes=5-2000", 5..1000, "bytes 5-999/1000"),
    ];
    for (range, span, content_range) in cases {
        let out = c
            .get_object()
            .bucket(b)
            .key("r")
            .range(range)
            .send()
            .await
            .expect(range);
        assert_eq!(out.content_range(), Some(content_range), "{range}");
        assert_eq!(out.content_length(), Some(span.len() as i64), "{range}");
        let body = out.body.collect().await.expect("body").into_bytes();
        assert_eq!(&body[..], &data[span], "{range}");
    }
    let err = c
        .get_object()
        .bucket(b)
        .key("r")
        .range("bytes=1000-")
        .send()
        .await
        .expect_err("past the end");
    assert_eq!(status(&err), 416);
    assert_eq!(err.code(), Some("InvalidRange"));

    let head = c
        .head_object()
        .bucket(b)
        .key("r")
        .range("bytes=0-99")
        .send()
        .await
        .expect("ranged HEAD");
    assert_eq!(head.content_length(), Some(100));
    assert_eq!(head.content_range(), Some("bytes 0-99/1000"));

    // A big object streams back intact.
    let big = pattern(3 * MIB + 17, 3);
    put(&c, b, "big", &big).await;
    assert_eq!(get(&c, b, "big").await, big);
    s3.shutdown().await;
}

#[tokio::test]
async fn read_and_write_preconditions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s3, c) = start(dir.path()).await;
    let b = s3.bucket();
    let etag = put(&c, b, "p", b"precondition").await;
    assert_eq!(etag, quoted_md5(b"precondition"));

    let err = c
        .get_object()
        .bucket(b)
        .key("p")
        .if_match("\"0123\"")
        .send()
        .await
        .expect_err("If-Match");
    assert_eq!(status(&err), 412);
    assert_eq!(err.code(), Some("PreconditionFailed"));
    let err = c
        .head_object()
        .bucket(b)
        .key("p")
        .if_match("\"0123\"")
        .send()
        .await
        .expect_err("If-Match");
    assert_eq!(status(&err), 412);
    let ok = c
        .get_object()
        .bucket(b)
        .key("p")
        .if_match(&etag)
        .send()
        .await
        .expect("matching If-Match");
    assert_eq!(ok.e_tag(), Some(etag.as_str()));
    let err = c
        .get_object()
        .bucket(b)
        .key("p")
        .if_none_match(&etag)
        .send()
        .await
        .expect_err("If-None-Match");
    assert_eq!(status(&err), 304);

    let err = c
        .put_object()
        .bucket(b)
        .key("p")
        .if_none_match("*")
        .body(ByteStream::from_static(b"other"))
        .send()
        .await
        .expect_err("create-only PUT onto an existing key");
    assert_eq!(status(&err), 412);
    assert_eq!(
        get(&c, b, "p").await,
        b"precondition",
        "refused PUT changed nothing"
    );
    c.put_object()
        .bucket(b)
        .key("fresh")
        .if_none_match("*")
        .body(ByteStream::from_static(b"new"))
        .send()
        .await
        .expect("create-only PUT of a new key");
    assert_eq!(get(&c, b, "fresh").await, b"new");
    s3.shutdown().await;
}

#[tokio::test]
async fn copy_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s3, c) = start(dir.path()).await;
    let b = s3.bucket();
    let etag = put(&c, b, "src", b"copy me").await;
    let out = c
        .copy_object()
        .bucket(b)
        .key("dst/copy")
        .copy_source(format!("{b}/src"))
        .send()
        .await
        .expect("copy");
    assert_eq!(
        out.copy_object_result().and_then(|r| r.e_tag()),
        Some(etag.as_str())
    );
    assert_eq!(get(&c, b, "dst/copy").await, b"copy me");

    // The copy does not change when the source is overwritten or deleted.
    put(&c, b, "src", b"changed").await;
    c.delete_object()
        .bucket(b)
        .key("src")
        .send()
        .await
        .expect("delete source");
    assert_eq!(get(&c, b, "dst/copy").await, b"copy me");

    let err = c
        .copy_object()
        .bucket(b)
        .key("x")
        .copy_source(format!("{b}/dst/copy"))
        .copy_source_if_match("\"0000\"")
        .send()
        .await
        .expect_err("copy-source-if-match");
    assert_eq!(status(&err), 412);
    let err = c
        .copy_object()
        .bucket(b)
        .key("x")
        .copy_source(format!("{b}/missing"))
        .send()
        .await
        .expect_err("missing source");
    assert_eq!(err.code(), Some("NoSuchKey"));
    let err = c
        .copy_object()
        .bucket(b)
        .key("dst/copy")
        .copy_source(format!("{b}/dst/copy"))
        .send()
        .await
        .expect_err("copy onto itself");
    assert_eq!(status(&err), 400);
    c.copy_object()
        .bucket(b)
        .key("dst/copy")
        .copy_source(format!("{b}/dst/copy"))
        .metadata_directive(MetadataDirective::Replace)
        .content_type("text/plain")
        .send()
        .await
        .expect("copy onto itself with new metadata");
    let head = c
        .head_object()
        .bucket(b)
        .key("dst/copy")
        .send()
        .await
        .expect("head");
    assert_eq!(head.content_type(), Some("text/plain"));
    assert_eq!(get(&c, b, "dst/copy").await, b"copy me");
    let tmp = dir.path().join(b).join("tmp");
    assert_eq!(
        std::fs::read_dir(tmp).expect("tmp dir").count(),
        0,
        "no debris in tmp/"
    );
    s3.shutdown().await;
}

async fn upload_part(
    c: &Client,
    b: &str,
    key: &str,
    id: &str,
    n: i32,
    data: &[u8],
) -> CompletedPart {
    // With a Content-MD5 (as rclone sends), a part's ETag is its MD5.
    let out = c
        .upload_part()
        .bucket(b)
        .key(key)
        .upload_id(id)
        .part_number(n)
        .content_md5(content_md5(data))
        .body(ByteStream::from(data.to_vec()))
        .send()
        .await
        .expect("upload part");
    assert_eq!(out.e_tag(), Some(quoted_md5(data).as_str()));
    CompletedPart::builder()
        .part_number(n)
        .set_e_tag(out.e_tag)
        .build()
}

async fn create_upload(c: &Client, b: &str, key: &str) -> String {
    c.create_multipart_upload()
        .bucket(b)
        .key(key)
        .send()
        .await
        .expect("create upload")
        .upload_id
        .expect("upload id")
}

fn multipart_etag(parts: &[&[u8]]) -> String {
    let mut md5s = Vec::new();
    for part in parts {
        md5s.extend_from_slice(&Md5::digest(part));
    }
    format!("\"{}-{}\"", hex::encode(Md5::digest(&md5s)), parts.len())
}

#[tokio::test]
async fn multipart_rules_and_etag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s3, c) = start(dir.path()).await;
    let b = s3.bucket();

    // A 4 MiB part that is not the last is too small.
    let id = create_upload(&c, b, "small").await;
    let p1 = upload_part(&c, b, "small", &id, 1, &pattern(4 * MIB, 1)).await;
    let p2 = upload_part(&c, b, "small", &id, 2, b"x").await;
    let done = CompletedMultipartUpload::builder()
        .parts(p1)
        .parts(p2)
        .build();
    let err = c
        .complete_multipart_upload()
        .bucket(b)
        .key("small")
        .upload_id(&id)
        .multipart_upload(done)
        .send()
        .await
        .expect_err("EntityTooSmall");
    assert_eq!(err.code(), Some("EntityTooSmall"));
    c.abort_multipart_upload()
        .bucket(b)
        .key("small")
        .upload_id(&id)
        .send()
        .await
        .expect("abort");

    // A valid 5 MiB + 1 byte upload.
    let (first, last) = (pattern(5 * MIB, 2), b"!".to_vec());
    let id = create_upload(&c, b, "big/file").await;
    let p1 = upload_part(&c, b, "big/file", &id, 1, &first).await;
    let p2 = upload_part(&c, b, "big/file", &id, 2, &last).await;
    let parts = c
        .list_parts()
        .bucket(b)
        .key("big/file")
        .upload_id(&id)
        .send()
        .await
        .expect("list parts");
    let sizes: Vec<i64> = parts.parts().iter().filter_map(|p| p.size()).collect();
    assert_eq!(sizes, [5 * MIB as i64, 1]);
    let hidden = c
        .head_object()
        .bucket(b)
        .key("big/file")
        .send()
        .await
        .expect_err("not visible yet");
    assert_eq!(status(&hidden), 404);

    let wrong_order = CompletedMultipartUpload::builder()
        .parts(p2.clone())
        .parts(p1.clone())
        .build();
    let err = c
        .complete_multipart_upload()
        .bucket(b)
        .key("big/file")
        .upload_id(&id)
        .multipart_upload(wrong_order)
        .send()
        .await
        .expect_err("InvalidPartOrder");
    assert_eq!(err.code(), Some("InvalidPartOrder"));
    let bad_etag = CompletedPart::builder()
        .part_number(2)
        .e_tag("\"00000000000000000000000000000000\"")
        .build();
    let wrong_etag = CompletedMultipartUpload::builder()
        .parts(p1.clone())
        .parts(bad_etag)
        .build();
    let err = c
        .complete_multipart_upload()
        .bucket(b)
        .key("big/file")
        .upload_id(&id)
        .multipart_upload(wrong_etag)
        .send()
        .await
        .expect_err("InvalidPart");
    assert_eq!(err.code(), Some("InvalidPart"));

    let done = CompletedMultipartUpload::builder()
        .parts(p1)
        .parts(p2)
        .build();
    let out = c
        .complete_multipart_upload()
        .bucket(b)
        .key("big/file")
        .upload_id(&id)
        .multipart_upload(done)
        .send()
        .await
        .expect("complete");
    let expected_etag = multipart_etag(&[&first, &last]);
    assert_eq!(out.e_tag(), Some(expected_etag.as_str()));
    assert!(expected_etag.ends_with("-2\""));
    let mut whole = first.clone();
    whole.extend_from_slice(&last);
    assert_eq!(get(&c, b, "big/file").await, whole);
    let head = c
        .head_object()
        .bucket(b)
        .key("big/file")
        .send()
        .await
        .expect("head");
    assert_eq!(head.e_tag(), Some(expected_etag.as_str()));
    assert_eq!(head.content_length(), Some(whole.len() as i64));
    let part2 = c
        .get_object()
        .bucket(b)
        .key("big/file")
        .part_number(2)
        .send()
        .await
        .expect("GET ?partNumber=2");
    assert_eq!(part2.parts_count(), Some(2));
    assert_eq!(
        part2
            .body
            .collect()
            .await
            .expect("body")
            .into_bytes()
            .as_ref(),
        b"!"
    );

    // Nothing is left behind: no uploads, and the finished upload id is gone.
    let uploads = c
        .list_multipart_uploads()
        .bucket(b)
        .send()
        .await
        .expect("list uploads");
    assert!(uploads.uploads().is_empty());
    let err = c
        .abort_multipart_upload()
        .bucket(b)
        .key("big/file")
        .upload_id(&id)
        .send()
        .await
        .expect_err("NoSuchUpload");
    assert_eq!(err.code(), Some("NoSuchUpload"));
    s3.shutdown().await;
}

/// PutObject of `body` with this Content-MD5 header.
async fn put_with_md5(
    c: &Client,
    b: &str,
    key: &str,
    header: &str,
    body: &'static [u8],
) -> Result<PutObjectOutput, SdkError<PutObjectError>> {
    c.put_object()
        .bucket(b)
        .key(key)
        .content_md5(header)
        .body(ByteStream::from_static(body))
        .send()
        .await
}

/// A part sent without Content-MD5 gets an opaque ETag (the store does not spend an MD5
/// on it), which CompleteMultipartUpload accepts and folds into the object's ETag as S3
/// does. A Content-MD5 that does not match the body is `BadDigest` and stores nothing.
#[tokio::test]
async fn part_etags_and_content_md5() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s3, c) = start(dir.path()).await;
    let b = s3.bucket();

    let first = pattern(5 * MIB, 3);
    let id = create_upload(&c, b, "opaque").await;
    let out = c
        .upload_part()
        .bucket(b)
        .key("opaque")
        .upload_id(&id)
        .part_number(1)
        .body(ByteStream::from(first.clone()))
        .send()
        .await
        .expect("upload part without Content-MD5");
    let opaque = out.e_tag().expect("etag").to_owned();
    let hex = opaque.trim_matches('"');
    assert_eq!(hex.len(), 32, "{opaque}");
    assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()), "{opaque}");
    assert_ne!(opaque, quoted_md5(&first));

    // A wrong Content-MD5 is refused and leaves no part 2 behind.
    let err = c
        .upload_part()
        .bucket(b)
        .key("opaque")
        .upload_id(&id)
        .part_number(2)
        .content_md5(content_md5(b"something else"))
        .body(ByteStream::from_static(b"tail"))
        .send()
        .await
        .expect_err("BadDigest");
    assert_eq!(err.code(), Some("BadDigest"));
    assert_eq!(status(&err), 400);
    let parts = c
        .list_parts()
        .bucket(b)
        .key("opaque")
        .upload_id(&id)
        .send()
        .await
        .expect("list parts");
    let numbers: Vec<i32> = parts
        .parts()
        .iter()
        .filter_map(|p| p.part_number())
        .collect();
    assert_eq!(numbers, vec![1]);

    let last = upload_part(&c, b, "opaque", &id, 2, b"tail").await;
    let done = CompletedMultipartUpload::builder()
        .parts(
            CompletedPart::builder()
                .part_number(1)
                .e_tag(&opaque)
                .build(),
        )
        .parts(last)
        .build();
    let out = c
        .complete_multipart_upload()
        .bucket(b)
        .key("opaque")
        .upload_id(&id)
        .multipart_upload(done)
        .send()
        .await
        .expect("complete");
    let mut binary = hex::decode(hex).expect("hex");
    binary.extend_from_slice(&Md5::digest(b"tail"));
    let expected = format!("\"{}-2\"", hex::encode(Md5::digest(&binary)));
    assert_eq!(out.e_tag(), Some(expected.as_str()));
    let mut whole = first;
    whole.extend_from_slice(b"tail");
    assert_eq!(get(&c, b, "opaque").await, whole);

    // PutObject: the ETag is the MD5 with or without a Content-MD5; a wrong one is
    // BadDigest and keeps the old object, a malformed one is InvalidDigest.
    put(&c, b, "simple", b"old").await;
    let ok = put_with_md5(&c, b, "simple", &content_md5(b"new"), b"new")
        .await
        .expect("put with Content-MD5");
    assert_eq!(ok.e_tag(), Some(quoted_md5(b"new").as_str()));
    for (header, code) in [
        (content_md5(b"other"), "BadDigest"),
        ("bm90LWFuLW1kNQ==".to_owned(), "InvalidDigest"),
        ("%%%".to_owned(), "InvalidDigest"),
    ] {
        let err = put_with_md5(&c, b, "simple", &header, b"newer")
            .await
            .expect_err(code);
        assert_eq!(err.code(), Some(code), "Content-MD5 {header}");
        assert_eq!(status(&err), 400);
    }
    assert_eq!(get(&c, b, "simple").await, b"new");
    let err = put_with_md5(&c, b, "never", &content_md5(b"other"), b"never")
        .await
        .expect_err("BadDigest");
    assert_eq!(err.code(), Some("BadDigest"));
    let missing = c.head_object().bucket(b).key("never").send().await;
    assert!(missing.is_err(), "a refused PUT stores nothing");
    s3.shutdown().await;
}

/// Names of the files in an upload's folder, sorted.
fn upload_files(dir: &Path, bucket: &str, id: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(bucket).join("uploads").join(id))
        .expect("upload folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

async fn complete(c: &Client, b: &str, key: &str, id: &str, parts: Vec<CompletedPart>) -> String {
    c.complete_multipart_upload()
        .bucket(b)
        .key(key)
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .expect("complete")
        .e_tag
        .expect("etag")
}

/// Parts of one size go straight into the upload's assembly file, in any order, and the
/// object is that file; whatever does not fit (a part longer than the first, a second
/// upload of a part number, parts left out of the completion, an upload from before a
/// restart) gets its own file and is copied. Every path gives the same bytes.
#[tokio::test]
async fn multipart_parts_in_place_and_fallbacks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s3, c) = start(dir.path()).await;
    let b = s3.bucket().to_owned();
    let (p1, p2, p3) = (pattern(5 * MIB, 1), pattern(5 * MIB, 2), pattern(MIB, 3));
    let joined = |parts: &[&[u8]]| parts.concat();

    // In order, and out of order (part 2 first): no part files, only the assembly.
    for (key, order) in [("in-order", [1, 2, 3]), ("out-of-order", [2, 1, 3])] {
        let id = create_upload(&c, &b, key).await;
        let mut parts = Vec::new();
        for n in order {
            let data = [&p1, &p2, &p3][n as usize - 1];
            parts.push(upload_part(&c, &b, key, &id, n, data).await);
        }
        parts.sort_by_key(|p| p.part_number());
        assert_eq!(
            upload_files(dir.path(), &b, &id),
            [
                "assembly",
                "part-00001.json",
                "part-00002.json",
                "part-00003.json",
                "upload.json"
            ],
            "{key}"
        );
        let etag = complete(&c, &b, key, &id, parts).await;
        assert_eq!(etag, multipart_etag(&[&p1, &p2, &p3]), "{key}");
        assert_eq!(get(&c, &b, key).await, joined(&[&p1, &p2, &p3]), "{key}");
    }

    // With request checksums the SDK sends parts aws-chunked, checksum in a trailer: the
    // decoded length is what is reserved and written.
    let chunked = Client::from_conf(
        c.config()
            .to_builder()
            .request_checksum_calculation(RequestChecksumCalculation::WhenSupported)
            .build(),
    );
    let id = create_upload(&chunked, &b, "chunked").await;
    let mut parts = Vec::new();
    for (n, data) in [(1, &p1), (2, &p3)] {
        // A body from a file streams; the SDK sends a buffered one with a checksum header.
        let file = dir.path().join(format!("body-{n}"));
        std::fs::write(&file, data).expect("body file");
        let out = chunked
            .upload_part()
            .bucket(&b)
            .key("chunked")
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from_path(&file).await.expect("body"))
            .send()
            .await
            .expect("aws-chunked part");
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag)
                .build(),
        );
    }
    assert!(!upload_files(dir.path(), &b, &id).contains(&"part-00001".to_owned()));
    complete(&c, &b, "chunked", &id, parts).await;
    assert_eq!(get(&c, &b, "chunked").await, joined(&[&p1, &p3]));

    // The short last part first sets a small stride: the longer parts get their own files.
    let id = create_upload(&c, &b, "last-first").await;
    let last = upload_part(&c, &b, "last-first", &id, 3, &p3).await;
    let first = upload_part(&c, &b, "last-first", &id, 1, &p1).await;
    let second = upload_part(&c, &b, "last-first", &id, 2, &p2).await;
    assert!(upload_files(dir.path(), &b, &id).contains(&"part-00001".to_owned()));
    complete(&c, &b, "last-first", &id, vec![first, second, last]).await;
    assert_eq!(get(&c, &b, "last-first").await, joined(&[&p1, &p2, &p3]));

    // Sparse part numbers leave a hole in the assembly file: the parts are copied out.
    let id = create_upload(&c, &b, "sparse").await;
    let first = upload_part(&c, &b, "sparse", &id, 1, &p1).await;
    let far = upload_part(&c, &b, "sparse", &id, 9000, &p3).await;
    complete(&c, &b, "sparse", &id, vec![first, far]).await;
    assert_eq!(get(&c, &b, "sparse").await, joined(&[&p1, &p3]));

    // A refused write frees its slot; a second upload of a part number replaces the first
    // from its own file; completing with fewer parts than were written copies them.
    let id = create_upload(&c, &b, "redo").await;
    let err = c
        .upload_part()
        .bucket(&b)
        .key("redo")
        .upload_id(&id)
        .part_number(1)
        .content_md5(content_md5(b"not this"))
        .body(ByteStream::from(p1.clone()))
        .send()
        .await
        .expect_err("BadDigest");
    assert_eq!(err.code(), Some("BadDigest"));
    let stale = upload_part(&c, &b, "redo", &id, 1, &p1).await;
    let replaced = upload_part(&c, &b, "redo", &id, 1, &p2).await;
    let second = upload_part(&c, &b, "redo", &id, 2, &p1).await;
    upload_part(&c, &b, "redo", &id, 3, &p3).await;
    assert!(upload_files(dir.path(), &b, &id).contains(&"part-00001".to_owned()));
    let err = c
        .complete_multipart_upload()
        .bucket(&b)
        .key("redo")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(stale)
                .parts(second.clone())
                .build(),
        )
        .send()
        .await
        .expect_err("the replaced part is gone");
    assert_eq!(err.code(), Some("InvalidPart"));
    complete(&c, &b, "redo", &id, vec![replaced, second]).await;
    assert_eq!(get(&c, &b, "redo").await, joined(&[&p2, &p1]));

    // An upload from before a restart keeps its parts in place; new ones get files.
    let id = create_upload(&c, &b, "restart").await;
    let first = upload_part(&c, &b, "restart", &id, 1, &p1).await;
    s3.shutdown().await;
    let (s3, c) = start(dir.path()).await;
    let last = upload_part(&c, &b, "restart", &id, 2, &p3).await;
    assert_eq!(
        upload_files(dir.path(), &b, &id),
        [
            "assembly",
            "part-00001.json",
            "part-00002",
            "part-00002.json",
            "upload.json"
        ]
    );
    complete(&c, &b, "restart", &id, vec![first, last]).await;
    assert_eq!(get(&c, &b, "restart").await, joined(&[&p1, &p3]));
    s3.shutdown().await;
}

#[tokio::test]
async fn abort_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s3, c) = start(dir.path()).await;
    let b = s3.bucket();
    let id1 = create_upload(&c, b, "u/one").await;
    let id2 = create_upload(&c, b, "u/two").await;
    upload_part(&c, b, "u/one", &id1, 1, b"part").await;
    let uploads = c
        .list_multipart_uploads()
        .bucket(b)
        .prefix("u/")
        .send()
        .await
        .expect("list uploads");
    let listed: Vec<(&str, &str)> = uploads
        .uploads()
        .iter()
        .filter_map(|u| Some((u.key()?, u.upload_id()?)))
        .collect();
    assert_eq!(listed, [("u/one", id1.as_str()), ("u/two", id2.as_str())]);
    let page = c
        .list_multipart_uploads()
        .bucket(b)
        .max_uploads(1)
        .send()
        .await
        .expect("first page");
    assert_eq!(page.is_truncated(), Some(true));
    let page = c
        .list_multipart_uploads()
        .bucket(b)
        .max_uploads(1)
        .set_key_marker(page.next_key_marker().map(str::to_owned))
        .set_upload_id_marker(page.next_upload_id_marker().map(str::to_owned))
        .send()
        .await
        .expect("second page");
    assert_eq!(
        page.uploads().first().and_then(|u| u.upload_id()),
        Some(id2.as_str())
    );

    for (key, id) in [("u/one", &id1), ("u/two", &id2)] {
        c.abort_multipart_upload()
            .bucket(b)
            .key(key)
            .upload_id(id)
            .send()
            .await
            .expect("abort");
    }
    let uploads = c
        .list_multipart_uploads()
        .bucket(b)
        .send()
        .await
        .expect("list uploads");
    assert!(uploads.uploads().is_empty());
    let (keys, _, _) = list_all(&c, b, "", None, None).await;
    assert!(keys.is_empty(), "aborted uploads never show up as objects");
    let uploads_dir = dir.path().join(b).join("uploads");
    assert_eq!(
        std::fs::read_dir(uploads_dir).expect("uploads dir").count(),
        0
    );
    s3.shutdown().await;
}

#[tokio::test]
async fn upload_part_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s3, c) = start(dir.path()).await;
    let b = s3.bucket();
    let source = pattern(6 * MIB + 5, 9);
    put(&c, b, "source", &source).await;
    let id = create_upload(&c, b, "assembled").await;
    let mut parts = Vec::new();
    for (n, range) in [(1, 0..5 * MIB), (2, 5 * MIB..source.len())] {
        let out = c
            .upload_part_copy()
            .bucket(b)
            .key("assembled")
            .upload_id(&id)
            .part_number(n)
            .copy_source(format!("{b}/source"))
            .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await
            .expect("upload part copy");
        let etag = out
            .copy_part_result()
            .and_then(|r| r.e_tag())
            .expect("etag")
            .to_owned();
        assert_eq!(etag, quoted_md5(&source[range]));
        parts.push(CompletedPart::builder().part_number(n).e_tag(etag).build());
    }
    let err = c
        .upload_part_copy()
        .bucket(b)
        .key("assembled")
        .upload_id(&id)
        .part_number(3)
        .copy_source(format!("{b}/source"))
        .copy_source_range(format!("bytes=0-{}", source.len()))
        .send()
        .await
        .expect_err("range past the end");
    assert!(
        status(&err) == 416 || status(&err) == 400,
        "status {}",
        status(&err)
    );
    c.complete_multipart_upload()
        .bucket(b)
        .key("assembled")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .expect("complete");
    assert_eq!(get(&c, b, "assembled").await, source);
    s3.shutdown().await;
}

#[tokio::test]
async fn data_persists_across_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s3, c) = start(dir.path()).await;
    let b = s3.bucket().to_owned();
    let etag = put(&c, &b, "keep/file.txt", b"persistent").await;
    put(&c, &b, "keep/", b"").await;
    put(&c, &b, "gone", b"deleted").await;
    c.delete_object()
        .bucket(&b)
        .key("gone")
        .send()
        .await
        .expect("delete");
    let id = create_upload(&c, &b, "pending").await;
    upload_part(&c, &b, "pending", &id, 1, b"half").await;
    let old_key = s3.access_key().to_owned();
    s3.shutdown().await;

    let (s3, c) = start(dir.path()).await;
    assert_ne!(s3.access_key(), old_key, "fresh credentials each start");
    let head = c
        .head_object()
        .bucket(&b)
        .key("keep/file.txt")
        .send()
        .await
        .expect("head after restart");
    assert_eq!(head.e_tag(), Some(etag.as_str()));
    assert_eq!(get(&c, &b, "keep/file.txt").await, b"persistent");
    let (keys, _, _) = list_all(&c, &b, "", None, None).await;
    assert_eq!(keys, ["keep/", "keep/file.txt"]);
    let uploads = c
        .list_multipart_uploads()
        .bucket(&b)
        .send()
        .await
        .expect("list uploads");
    assert_eq!(
        uploads.uploads().first().and_then(|u| u.upload_id()),
        Some(id.as_str())
    );
    let parts = c
        .list_parts()
        .bucket(&b)
        .key("pending")
        .upload_id(&id)
        .send()
        .await
        .expect("parts survive");
    assert_eq!(parts.parts().len(), 1);
    let buckets = c.list_buckets().send().await.expect("list buckets");
    let names: Vec<&str> = buckets.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, [b.as_str()]);
    s3.shutdown().await;
}

#[tokio::test]
async fn buckets_credentials_and_lifecycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s3, c) = start(dir.path()).await;
    assert!(s3.endpoint().starts_with("http://127.0.0.1:"));
    assert_eq!(s3.region(), "us-east-1");
    assert!(
        !format!("{s3:?}").contains(s3.secret_key()),
        "Debug hides the secret"
    );

    c.head_bucket()
        .bucket(s3.bucket())
        .send()
        .await
        .expect("head bucket");
    let err = c
        .head_bucket()
        .bucket("no-such-bucket")
        .send()
        .await
        .expect_err("missing bucket");
    assert_eq!(status(&err), 404);
    c.create_bucket()
        .bucket("second")
        .send()
        .await
        .expect("create bucket");
    let err = c
        .create_bucket()
        .bucket("second")
        .send()
        .await
        .expect_err("exists");
    assert_eq!(err.code(), Some("BucketAlreadyOwnedByYou"));
    let err = c
        .get_object()
        .bucket("nowhere")
        .key("k")
        .send()
        .await
        .expect_err("no bucket");
    assert_eq!(err.code(), Some("NoSuchBucket"));

    // Wrong credentials are refused.
    let bad = Client::from_conf(
        c.config()
            .to_builder()
            .credentials_provider(Credentials::new(
                s3.access_key(),
                "wrong-secret",
                None,
                None,
                "test",
            ))
            .build(),
    );
    let err = bad
        .head_bucket()
        .bucket(s3.bucket())
        .send()
        .await
        .expect_err("bad signature");
    assert_eq!(status(&err), 403);

    // A second store cannot open the same folder while the first runs.
    let locked = EmbeddedS3::start(
        dir.path(),
        "test-bucket",
        "127.0.0.1:0".parse().expect("address"),
    )
    .await;
    assert!(
        matches!(locked, Err(EmbeddedError::Locked(_))),
        "{locked:?}"
    );
    let invalid = EmbeddedS3::start(
        dir.path(),
        "Bad_Name",
        "127.0.0.1:0".parse().expect("address"),
    )
    .await;
    assert!(matches!(invalid, Err(EmbeddedError::InvalidBucketName(_))));

    // Dropping the store stops the server.
    let endpoint = s3.endpoint();
    drop(s3);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let addr = endpoint.trim_start_matches("http://");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nothing listens after drop"
    );
}

/// Percent-encodes a key for `x-amz-copy-source`, which the SDK sends as given.
fn encode_copy_source(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn odd_keys_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s3, c) = start(dir.path()).await;
    let b = s3.bucket();
    let keys = [
        "sp ace/ü+%20/x?y#z",
        "a//b",
        "tab\there",
        "日本/語",
        "trailing space ",
    ];
    for key in keys {
        put(&c, b, key, key.as_bytes()).await;
        assert_eq!(get(&c, b, key).await, key.as_bytes(), "{key:?}");
    }
    let (listed, _, _) = list_all(&c, b, "", None, None).await;
    let mut expected: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    let (_, prefixes, _) = list_all(&c, b, "", Some("/"), None).await;
    assert_eq!(prefixes, ["a/", "sp ace/", "日本/"]);
    let source = format!("{b}/{}", encode_copy_source(keys[0]));
    c.copy_object()
        .bucket(b)
        .key("copied ü")
        .copy_source(source)
        .send()
        .await
        .expect("copy with an encoded source");
    assert_eq!(get(&c, b, "copied ü").await, keys[0].as_bytes());
    s3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_overwrites_never_mix_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s3, c) = start(dir.path()).await;
    let b = s3.bucket().to_owned();
    let versions = [pattern(2 * MIB, 1), pattern(2 * MIB, 2)];
    put(&c, &b, "hot", &versions[0]).await;
    let writer = {
        let (c, b, versions) = (c.clone(), b.clone(), versions.clone());
        tokio::spawn(async move {
            for i in 0..12 {
                put(&c, &b, "hot", &versions[i % 2]).await;
            }
        })
    };
    let mut readers = Vec::new();
    for _ in 0..6 {
        let (c, b) = (c.clone(), b.clone());
        readers.push(tokio::spawn(async move {
            for _ in 0..6 {
                let out = c
                    .get_object()
                    .bucket(&b)
                    .key("hot")
                    .send()
                    .await
                    .expect("get");
                let etag = out.e_tag().expect("etag").to_owned();
                let body = out.body.collect().await.expect("body").into_bytes();
                assert_eq!(
                    quoted_md5(&body),
                    etag,
                    "body and ETag describe the same version"
                );
            }
        }));
    }
    writer.await.expect("writer");
    for reader in readers {
        reader.await.expect("reader");
    }
    s3.shutdown().await;
}

#[tokio::test]
async fn small_requests_do_not_stall() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s3, c) = start(dir.path()).await;
    let b = s3.bucket();
    put(&c, b, "tiny", b"x").await;
    let started = std::time::Instant::now();
    for _ in 0..50 {
        assert_eq!(get(&c, b, "tiny").await, b"x");
        c.head_object()
            .bucket(b)
            .key("tiny")
            .send()
            .await
            .expect("head");
    }
    // With Nagle + delayed ACK each exchange could wait ~40 ms (4 s in all).
    let elapsed = started.elapsed();
    assert!(
        elapsed < std::time::Duration::from_millis(2000),
        "100 small requests took {elapsed:?}"
    );
    s3.shutdown().await;
}

/// The data folder holds every user's files: no other account may read it, whatever the
/// umask, even if it existed before with looser permissions.
#[tokio::test]
async fn the_data_folder_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (s3, client) = start(&data).await;
    put(&client, "test-bucket", "secret.txt", b"payroll").await;
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data folder");
    let mut seen = 0;
    let mut stack = vec![data.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                assert_eq!(mode(&path), 0o700, "{}", path.display());
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n != ".lock") {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
                seen += 1;
            }
        }
    }
    assert!(seen >= 2, "the object and its metadata were checked");
    s3.shutdown().await;
}
