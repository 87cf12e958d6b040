//! The S3 call layer: the only code that builds SDK requests. One typed method per
//! operation sets the bucket and key, sends, and maps the SDK's error through
//! [`error`](super::error), so the rest of `storage` speaks in keys, byte ranges and
//! [`ObjectHead`]s and never sees a request builder.
//!
//! [`S3`] is a cheap handle (the calling thread's client and the bucket name). The calls
//! here do not touch a session's metadata cache: the [`UserStore`](super::UserStore)
//! methods in [`bucket`](super::bucket) wrap them with that bookkeeping.

pub(crate) mod multipart;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockEnabled,
    ServerSideEncryption,
};
use aws_sdk_s3::Client;
use bytes::Bytes;

use super::error::{s3_error, S3Failure};
use super::object_settings::{
    Encryption, ObjectLock, ObjectSettings, StorageClass, UploadChecksum,
};
use super::{ObjectHead, Result, StorageError, DIRECTORY_CONTENT_TYPE};

pub(crate) use multipart::{Completed, CopySource, Multipart};

/// The user-metadata name (`x-amz-meta-mtime`) rclone's S3 backend keeps modification
/// times under; we use the same so `rclone lsl` on the bucket agrees with SFTP.
pub(crate) const MTIME_KEY: &str = "mtime";

/// What a HEAD says beyond [`ObjectHead`]: what a copy in place must carry over.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeadExtra {
    pub content_type: Option<String>,
    /// Every user metadata entry (names without `x-amz-meta-`).
    pub metadata: HashMap<String, String>,
}

/// Per-request options of the calls that create an object (PutObject, CopyObject,
/// CreateMultipartUpload): the headers that say how the new object is stored.
#[derive(Debug, Clone, Default)]
pub(crate) struct ObjectOptions {
    /// The object's Content-Type; S3's default when `None` (a copy keeps the source's).
    pub content_type: Option<&'static str>,
    /// `x-amz-storage-class`; the bucket's default when `None`.
    pub storage_class: Option<StorageClass>,
    /// `x-amz-server-side-encryption` and its KMS key and Bucket Key headers.
    pub encryption: Encryption,
    /// The modification time the client asked for, stored as `x-amz-meta-mtime` (see
    /// [`mtime`](super::mtime)); `None` stores none.
    pub mtime: Option<SystemTime>,
}

impl ObjectOptions {
    /// The options every new object of `settings` gets.
    pub(crate) fn from_settings(settings: &ObjectSettings) -> Self {
        ObjectOptions {
            content_type: None,
            storage_class: settings.storage_class,
            encryption: settings.encryption.clone(),
            mtime: None,
        }
    }

    /// The user metadata of a new object: the kept modification time, if any.
    fn metadata(&self) -> Option<HashMap<String, String>> {
        self.mtime
            .map(|t| HashMap::from([(MTIME_KEY.to_string(), super::mtime::format(t))]))
    }

    fn storage_class(&self) -> Option<aws_sdk_s3::types::StorageClass> {
        self.storage_class
            .map(|c| aws_sdk_s3::types::StorageClass::from(c.as_str()))
    }

    fn sse(&self) -> Option<ServerSideEncryption> {
        match self.encryption {
            Encryption::BucketDefault => None,
            Encryption::Aes256 => Some(ServerSideEncryption::Aes256),
            Encryption::Kms { .. } => Some(ServerSideEncryption::AwsKms),
        }
    }

    fn kms_key_id(&self) -> Option<String> {
        match &self.encryption {
            Encryption::Kms { key_id, .. } => key_id.clone(),
            _ => None,
        }
    }

    fn bucket_key(&self) -> Option<bool> {
        match self.encryption {
            Encryption::Kms {
                bucket_key: true, ..
            } => Some(true),
            _ => None,
        }
    }
}

/// One part of a multipart upload, as CompleteMultipartUpload wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    pub number: i32,
    pub etag: Option<String>,
    /// The part's CRC32C (base64), when the upload declared that algorithm: the
    /// Complete must list it.
    pub crc32c: Option<String>,
}

/// One object of a listing page.
#[derive(Debug, Clone)]
pub(crate) struct ListedObject {
    pub key: String,
    pub head: ObjectHead,
}

/// One ListObjectsV2 page.
#[derive(Debug, Default)]
pub(crate) struct ListPage {
    pub objects: Vec<ListedObject>,
    /// The common prefixes (with a delimiter), each ending in it.
    pub prefixes: Vec<String>,
    /// Where the next page starts; `None` when this page is the last.
    pub next_token: Option<String>,
}

/// One multipart upload in progress, from ListMultipartUploads.
#[derive(Debug, Clone)]
pub(crate) struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

/// One ListMultipartUploads page.
#[derive(Debug, Default)]
pub(crate) struct UploadsPage {
    pub uploads: Vec<PendingUpload>,
    /// The key and upload-id markers of the next page; `None` when this page is the last.
    pub next: Option<(Option<String>, Option<String>)>,
}

/// A part S3 already has, from ListParts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListedPart {
    pub part: Part,
    pub size: u64,
}

/// The start of a ranged GET: the object's metadata from the response headers and the
/// body, not read yet.
pub(crate) struct Ranged {
    /// The whole object's size, ETag and date (not the range's).
    pub head: ObjectHead,
    pub body: ByteStream,
}

/// How a HEAD failed.
pub(crate) enum HeadFailure {
    /// Access denied (403): under a policy that grants `s3:ListBucket` only with an
    /// `s3:prefix` condition, S3 answers a HEAD of a missing key this way (it may not say
    /// whether the key exists); the caller may prove absence with a listing.
    Denied(S3Failure),
    /// Anything else, mapped like every other call's error.
    Other(StorageError),
}

/// How a ranged GET failed.
pub(crate) enum GetFailure {
    /// There is no object at the key (404).
    NotFound,
    /// 403, as for [`HeadFailure::Denied`].
    Denied(S3Failure),
    /// The range starts past the end (416): the object is empty.
    Unsatisfiable(S3Failure),
    /// Anything else, mapped like every other call's error.
    Other(StorageError),
}

/// The calling thread's S3 client and the bucket: what every call needs.
#[derive(Debug, Clone)]
pub(crate) struct S3 {
    client: Client,
    bucket: Arc<str>,
    /// The integrity header of PutObject and UploadPart bodies.
    checksum: UploadChecksum,
}

impl S3 {
    pub(crate) fn new(client: Client, bucket: Arc<str>, checksum: UploadChecksum) -> Self {
        S3 {
            client,
            bucket,
            checksum,
        }
    }

    /// The integrity header of `body`, as the uploads carry one. Hashing a part (several
    /// MiB) with MD5 takes milliseconds, so that runs off the session thread.
    async fn integrity(&self, body: &Bytes) -> Result<Integrity> {
        let md5 = match self.checksum {
            UploadChecksum::None => return Ok(Integrity::default()),
            UploadChecksum::Crc32c => {
                return Ok(Integrity {
                    md5: None,
                    crc32c: Some(crc32c(body)),
                })
            }
            // `Auto` is resolved at start (see `UploadChecksum::resolve`); MD5 if it was not.
            UploadChecksum::Md5 | UploadChecksum::Auto if body.len() < 64 * 1024 => {
                content_md5(body)
            }
            UploadChecksum::Md5 | UploadChecksum::Auto => {
                let body = body.clone();
                tokio::task::spawn_blocking(move || content_md5(&body))
                    .await
                    .map_err(|e| StorageError::Internal(format!("hashing task failed: {e}")))?
            }
        };
        Ok(Integrity {
            md5: Some(md5),
            crc32c: None,
        })
    }

    /// Whether new multipart uploads declare CRC32C (their parts then carry it).
    fn multipart_algorithm(&self) -> Option<ChecksumAlgorithm> {
        (self.checksum == UploadChecksum::Crc32c).then_some(ChecksumAlgorithm::Crc32C)
    }

    /// HeadObject; `None` if there is no object at `key`.
    pub(crate) async fn head_object(
        &self,
        key: &str,
    ) -> std::result::Result<Option<ObjectHead>, HeadFailure> {
        Ok(self.head_object_full(key).await?.map(|(head, _)| head))
    }

    /// HeadObject with the Content-Type and user metadata; `None` if there is no object.
    pub(crate) async fn head_object_full(
        &self,
        key: &str,
    ) -> std::result::Result<Option<(ObjectHead, HeadExtra)>, HeadFailure> {
        let sent = self
            .client
            .head_object()
            .bucket(&*self.bucket)
            .key(key)
            .send()
            .await;
        match sent {
            Ok(out) => {
                let size = out.content_length().unwrap_or(0).max(0) as u64;
                let metadata = out.metadata().cloned().unwrap_or_default();
                let head = ObjectHead {
                    size,
                    etag: out.e_tag().map(str::to_string),
                    modified: out.last_modified().and_then(to_system_time),
                    dir_marker: size == 0
                        && out
                            .content_type()
                            .is_some_and(|t| t.starts_with(DIRECTORY_CONTENT_TYPE)),
                    mtime: Some(kept_mtime(&metadata)),
                };
                let extra = HeadExtra {
                    content_type: out.content_type().map(str::to_string),
                    metadata,
                };
                Ok(Some((head, extra)))
            }
            Err(err) => {
                let failure = S3Failure::from_sdk(&err);
                if failure.is_not_found() {
                    Ok(None)
                } else if failure.is_denied() {
                    Err(HeadFailure::Denied(failure))
                } else {
                    Err(HeadFailure::Other(failure.into_error("HeadObject")))
                }
            }
        }
    }

    /// GetObject of `len` bytes at `start` (`len` > 0), pinned to `if_match` when given.
    pub(crate) async fn get_range(
        &self,
        key: &str,
        start: u64,
        len: u64,
        if_match: Option<&str>,
    ) -> std::result::Result<Ranged, GetFailure> {
        let sent = self
            .client
            .get_object()
            .bucket(&*self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", start, start + len - 1))
            .set_if_match(if_match.map(str::to_string))
            .send()
            .await;
        let out = match sent {
            Ok(out) => out,
            Err(err) => {
                let failure = S3Failure::from_sdk(&err);
                return Err(if failure.is_not_found() {
                    GetFailure::NotFound
                } else if failure.is_denied() {
                    GetFailure::Denied(failure)
                } else if failure.status == Some(416) {
                    GetFailure::Unsatisfiable(failure)
                } else {
                    GetFailure::Other(failure.into_storage_error("GetObject"))
                });
            }
        };
        let size = match out.content_range().and_then(range_total) {
            Some(total) => total,
            None => out.content_length().unwrap_or(0).max(0) as u64,
        };
        let head = ObjectHead {
            size,
            etag: out.e_tag().map(str::to_string),
            modified: out.last_modified().and_then(to_system_time),
            dir_marker: false,
            mtime: Some(kept_mtime(&out.metadata().cloned().unwrap_or_default())),
        };
        Ok(Ranged {
            head,
            body: out.body,
        })
    }

    /// One ListObjectsV2 page of up to `max_keys` keys under `prefix`, grouped by
    /// `delimiter` when given, starting at `token`.
    pub(crate) async fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        max_keys: i32,
        token: Option<&str>,
    ) -> Result<ListPage> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&*self.bucket)
            .prefix(prefix)
            .set_delimiter(delimiter.map(str::to_string))
            .max_keys(max_keys)
            .set_continuation_token(token.map(str::to_string))
            .send()
            .await
            .map_err(|e| s3_error("ListObjectsV2", e))?;
        let truncated = out.is_truncated.unwrap_or(false);
        let objects = out
            .contents
            .unwrap_or_default()
            .into_iter()
            .filter_map(|o| {
                let modified = o.last_modified.as_ref().and_then(to_system_time);
                Some(ListedObject {
                    head: ObjectHead {
                        size: o.size.unwrap_or(0).max(0) as u64,
                        etag: o.e_tag,
                        modified,
                        dir_marker: false,
                        mtime: None,
                    },
                    key: o.key?,
                })
            })
            .collect();
        let prefixes = out
            .common_prefixes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| p.prefix)
            .collect();
        Ok(ListPage {
            objects,
            prefixes,
            next_token: out.next_continuation_token.filter(|_| truncated),
        })
    }

    /// PutObject of `body` at `key`.
    pub(crate) async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        options: &ObjectOptions,
    ) -> Result<()> {
        let sum = self.integrity(&body).await?;
        self.client
            .put_object()
            .bucket(&*self.bucket)
            .key(key)
            .set_content_type(options.content_type.map(str::to_string))
            .set_metadata(options.metadata())
            .set_storage_class(options.storage_class())
            .set_server_side_encryption(options.sse())
            .set_ssekms_key_id(options.kms_key_id())
            .set_bucket_key_enabled(options.bucket_key())
            .set_checksum_algorithm(sum.algorithm())
            .set_content_md5(sum.md5)
            .set_checksum_crc32_c(sum.crc32c)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| s3_error("PutObject", e))?;
        Ok(())
    }

    /// PutObject of `body` at `key` only if no object is there (`If-None-Match: *`).
    /// `Ok(false)` when one is (412). A store that does not take the condition (501)
    /// gets a plain PutObject: the caller documents that race.
    pub(crate) async fn put_object_if_absent(
        &self,
        key: &str,
        body: Bytes,
        options: &ObjectOptions,
    ) -> Result<bool> {
        let sum = self.integrity(&body).await?;
        let sent = self
            .client
            .put_object()
            .bucket(&*self.bucket)
            .key(key)
            .if_none_match("*")
            .set_content_type(options.content_type.map(str::to_string))
            .set_server_side_encryption(options.sse())
            .set_ssekms_key_id(options.kms_key_id())
            .set_bucket_key_enabled(options.bucket_key())
            .set_checksum_algorithm(sum.algorithm())
            .set_content_md5(sum.md5)
            .set_checksum_crc32_c(sum.crc32c)
            .body(ByteStream::from(body.clone()))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(err) => {
                let failure = S3Failure::from_sdk(&err);
                match failure.status {
                    Some(412) | Some(409) => Ok(false),
                    Some(501) => {
                        self.put_object(key, body, options).await?;
                        Ok(true)
                    }
                    _ => Err(failure.into_storage_error("PutObject")),
                }
            }
        }
    }

    /// DeleteObject.
    pub(crate) async fn delete_object(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&*self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3_error("DeleteObject", e))?;
        Ok(())
    }

    /// CopyObject of `src` to `dst` (up to 5 GiB), pinned to `if_match` when given.
    /// Returns the copy's ETag and date when S3 told them.
    pub(crate) async fn copy_object(
        &self,
        src: &str,
        dst: &str,
        if_match: Option<&str>,
        options: &ObjectOptions,
    ) -> Result<Option<(String, Option<SystemTime>)>> {
        let out = self
            .client
            .copy_object()
            .bucket(&*self.bucket)
            .key(dst)
            .copy_source(copy_source(&self.bucket, src))
            .set_copy_source_if_match(if_match.map(str::to_string))
            .set_storage_class(options.storage_class())
            .set_server_side_encryption(options.sse())
            .set_ssekms_key_id(options.kms_key_id())
            .set_bucket_key_enabled(options.bucket_key())
            .send()
            .await
            .map_err(|e| s3_error("CopyObject", e))?;
        Ok(out.copy_object_result().and_then(|result| {
            Some((
                result.e_tag()?.to_string(),
                result.last_modified().and_then(to_system_time),
            ))
        }))
    }

    /// CopyObject of `key` onto itself with its user metadata replaced by `metadata`,
    /// pinned to `if_match`: how a modification time set after the upload is stored.
    /// Content-Type is carried over from `extra`; class and encryption from `options`.
    /// Returns the new ETag and date when S3 told them.
    pub(crate) async fn replace_metadata(
        &self,
        key: &str,
        if_match: Option<&str>,
        extra: &HeadExtra,
        options: &ObjectOptions,
    ) -> Result<Option<(String, Option<SystemTime>)>> {
        let out = self
            .client
            .copy_object()
            .bucket(&*self.bucket)
            .key(key)
            .copy_source(copy_source(&self.bucket, key))
            .set_copy_source_if_match(if_match.map(str::to_string))
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .set_metadata(Some(extra.metadata.clone()))
            .set_content_type(extra.content_type.clone())
            .set_storage_class(options.storage_class())
            .set_server_side_encryption(options.sse())
            .set_ssekms_key_id(options.kms_key_id())
            .set_bucket_key_enabled(options.bucket_key())
            .send()
            .await
            .map_err(|e| s3_error("CopyObject", e))?;
        Ok(out.copy_object_result().and_then(|result| {
            Some((
                result.e_tag()?.to_string(),
                result.last_modified().and_then(to_system_time),
            ))
        }))
    }

    /// CreateMultipartUpload; returns the upload id.
    pub(crate) async fn create_multipart(
        &self,
        key: &str,
        options: &ObjectOptions,
    ) -> Result<String> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&*self.bucket)
            .key(key)
            .set_content_type(options.content_type.map(str::to_string))
            .set_metadata(options.metadata())
            .set_storage_class(options.storage_class())
            .set_server_side_encryption(options.sse())
            .set_ssekms_key_id(options.kms_key_id())
            .set_bucket_key_enabled(options.bucket_key())
            .set_checksum_algorithm(self.multipart_algorithm())
            .send()
            .await
            .map_err(|e| s3_error("CreateMultipartUpload", e))?;
        out.upload_id
            .ok_or_else(|| StorageError::S3Misbehaved("S3 returned no upload id".into()))
    }

    /// UploadPart of `body` as part `number`.
    pub(crate) async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> Result<Part> {
        let sum = self.integrity(&body).await?;
        let out = self
            .client
            .upload_part()
            .bucket(&*self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .set_checksum_algorithm(sum.algorithm())
            .set_content_md5(sum.md5)
            .set_checksum_crc32_c(sum.crc32c.clone())
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| s3_error("UploadPart", e))?;
        Ok(Part {
            number,
            etag: out.e_tag.map(|e| e.to_string()),
            // S3's value if it gives one; it checked ours against the body.
            crc32c: out.checksum_crc32_c.or(sum.crc32c),
        })
    }

    /// UploadPartCopy of `source` as part `number`.
    pub(crate) async fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        source: &CopySource,
    ) -> Result<Part> {
        let out = self
            .client
            .upload_part_copy()
            .bucket(&*self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .copy_source(copy_source(&self.bucket, &source.key))
            .copy_source_range(format!("bytes={}-{}", source.start, source.end))
            .set_copy_source_if_match(source.if_match.clone())
            .send()
            .await
            .map_err(|e| s3_error("UploadPartCopy", e))?;
        let result = out.copy_part_result();
        Ok(Part {
            number,
            etag: result.and_then(|r| r.e_tag()).map(str::to_string),
            // S3 computes it for a copied part when the upload declared the algorithm.
            crc32c: result
                .and_then(|r| r.checksum_crc32_c())
                .map(str::to_string),
        })
    }

    /// CompleteMultipartUpload of `parts` (in part-number order).
    pub(crate) async fn complete(&self, key: &str, upload_id: &str, parts: &[Part]) -> Result<()> {
        let parts = parts
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.number)
                    .set_e_tag(p.etag.clone())
                    .set_checksum_crc32_c(p.crc32c.clone())
                    .build()
            })
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(&*self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| s3_error("CompleteMultipartUpload", e))?;
        Ok(())
    }

    /// AbortMultipartUpload. The failure is returned unmapped: callers decide how loudly
    /// to tell it (an upload that is already gone may be expected).
    pub(crate) async fn abort(
        &self,
        key: &str,
        upload_id: &str,
    ) -> std::result::Result<(), S3Failure> {
        self.client
            .abort_multipart_upload()
            .bucket(&*self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| S3Failure::from_sdk(&e))
    }

    /// One ListMultipartUploads page under `prefix`, after the given markers.
    pub(crate) async fn list_multipart_uploads(
        &self,
        prefix: &str,
        key_marker: Option<String>,
        upload_id_marker: Option<String>,
    ) -> Result<UploadsPage> {
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(&*self.bucket)
            .prefix(prefix)
            .set_key_marker(key_marker)
            .set_upload_id_marker(upload_id_marker)
            .send()
            .await
            .map_err(|e| s3_error("ListMultipartUploads", e))?;
        let uploads = out
            .uploads()
            .iter()
            .filter_map(|u| {
                Some(PendingUpload {
                    key: u.key()?.to_string(),
                    upload_id: u.upload_id()?.to_string(),
                    initiated: u.initiated().and_then(to_system_time),
                })
            })
            .collect();
        let next = (out.is_truncated() == Some(true)).then(|| {
            (
                out.next_key_marker().map(str::to_string),
                out.next_upload_id_marker().map(str::to_string),
            )
        });
        Ok(UploadsPage { uploads, next })
    }

    /// Every part S3 has of `upload_id` (ListParts, page by page), in part-number order:
    /// what resuming a multipart upload starts from.
    pub(crate) async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Vec<ListedPart>> {
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let out = self
                .client
                .list_parts()
                .bucket(&*self.bucket)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.take())
                .send()
                .await
                .map_err(|e| s3_error("ListParts", e))?;
            parts.extend(out.parts().iter().filter_map(|p| {
                Some(ListedPart {
                    part: Part {
                        number: p.part_number()?,
                        etag: p.e_tag().map(str::to_string),
                        crc32c: p.checksum_crc32_c().map(str::to_string),
                    },
                    size: p.size().unwrap_or(0).max(0) as u64,
                })
            }));
            marker = out
                .next_part_number_marker()
                .filter(|_| out.is_truncated() == Some(true))
                .map(str::to_string);
            if marker.is_none() {
                break;
            }
        }
        parts.sort_by_key(|p| p.part.number);
        Ok(parts)
    }
}

/// HeadBucket with `client`: whether the bucket is there and reachable.
pub(crate) async fn head_bucket(
    client: &Client,
    bucket: &str,
) -> std::result::Result<(), S3Failure> {
    client
        .head_bucket()
        .bucket(bucket)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| S3Failure::from_sdk(&e))
}

/// The bucket's Object Lock setting (GetObjectLockConfiguration), which decides the
/// upload checksum `auto` picks. A store that does not implement the call has no lock.
pub(crate) async fn object_lock(client: &Client, bucket: &str) -> ObjectLock {
    let sent = client
        .get_object_lock_configuration()
        .bucket(bucket)
        .send()
        .await;
    match sent {
        Ok(out) => {
            let enabled = out
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
                .is_some_and(|e| *e == ObjectLockEnabled::Enabled);
            if enabled {
                ObjectLock::Enabled
            } else {
                ObjectLock::Disabled
            }
        }
        Err(err) => {
            let failure = S3Failure::from_sdk(&err);
            let absent = matches!(failure.status, Some(404 | 405 | 501))
                || matches!(
                    failure.code.as_deref(),
                    Some("ObjectLockConfigurationNotFoundError" | "NotImplemented")
                );
            if absent {
                ObjectLock::Disabled
            } else {
                tracing::info!(
                    "cannot read the bucket's Object Lock setting ({}); uploads carry a Content-MD5",
                    failure.message
                );
                ObjectLock::Unknown
            }
        }
    }
}

/// Whether the store checks `x-amz-checksum-crc32c`: a PutObject at `key` with a wrong
/// one must be refused. `None` when the probe says nothing (it failed another way).
/// An accepted probe object is deleted again.
pub(crate) async fn checks_crc32c(client: &Client, bucket: &str, key: &str) -> Option<bool> {
    let body = Bytes::from_static(b"s3sftp checksum probe");
    let wrong = aws_smithy_types::base64::encode((crc32c_of(&body) ^ 1).to_be_bytes());
    let sent = client
        .put_object()
        .bucket(bucket)
        .key(key)
        .checksum_algorithm(ChecksumAlgorithm::Crc32C)
        .checksum_crc32_c(wrong)
        .body(ByteStream::from(body))
        .send()
        .await;
    match sent {
        Ok(_) => {
            if let Err(e) = client.delete_object().bucket(bucket).key(key).send().await {
                let failure = S3Failure::from_sdk(&e);
                tracing::warn!(%key, "could not delete the checksum probe object: {}", failure.message);
            }
            Some(false)
        }
        Err(err) => {
            let failure = S3Failure::from_sdk(&err);
            let refused = failure.status == Some(400)
                && matches!(
                    failure.code.as_deref(),
                    Some("BadDigest" | "XAmzContentChecksumMismatch" | "InvalidDigest")
                );
            if refused {
                Some(true)
            } else {
                tracing::info!(%key, "the checksum probe failed: {}", failure.message);
                None
            }
        }
    }
}

/// The integrity headers of one upload body.
#[derive(Debug, Default)]
struct Integrity {
    /// `Content-MD5`.
    md5: Option<String>,
    /// `x-amz-checksum-crc32c`.
    crc32c: Option<String>,
}

impl Integrity {
    /// `x-amz-sdk-checksum-algorithm` for the checksum sent (AWS's Object Lock check
    /// looks for it). The SDK sends a value set on the request as it is.
    fn algorithm(&self) -> Option<ChecksumAlgorithm> {
        self.crc32c.as_ref().map(|_| ChecksumAlgorithm::Crc32C)
    }
}

/// The base64 big-endian CRC32C of `body`, as `x-amz-checksum-crc32c` wants it.
fn crc32c(body: &[u8]) -> String {
    aws_smithy_types::base64::encode(crc32c_of(body).to_be_bytes())
}

fn crc32c_of(body: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, body) as u32
}

/// The base64 MD5 of `body`, as the Content-MD5 header wants it.
fn content_md5(body: &[u8]) -> String {
    use md5::{Digest, Md5};
    aws_smithy_types::base64::encode(Md5::digest(body))
}

/// The kept modification time in `metadata`, if there is a readable one.
fn kept_mtime(metadata: &HashMap<String, String>) -> Option<SystemTime> {
    metadata.get(MTIME_KEY).and_then(|v| super::mtime::parse(v))
}

fn to_system_time(t: &aws_sdk_s3::primitives::DateTime) -> Option<SystemTime> {
    SystemTime::try_from(*t).ok()
}

/// The object's total size from a `Content-Range: bytes a-b/total` header.
fn range_total(header: &str) -> Option<u64> {
    header.rsplit_once('/')?.1.trim().parse().ok()
}

/// `bucket/key` with the key percent-encoded, as the x-amz-copy-source header wants it.
fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = String::with_capacity(bucket.len() + key.len() + 1);
    out.push_str(bucket);
    out.push('/');
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// What [`S3::get_small`] found.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// No object at the key.
    Absent,
    /// The object still has the ETag given as `if_none_match` (304).
    Unchanged,
    /// The whole object and its ETag.
    Body { bytes: Bytes, etag: Option<String> },
}

/// The condition of [`S3::put_conditional`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum WriteCondition<'a> {
    /// `If-None-Match: *`: only if there is no object yet.
    Absent,
    /// `If-Match`: only if the object still has this ETag.
    Matches(&'a str),
}

/// What [`S3::put_conditional`] did.
#[derive(Debug)]
pub(crate) enum ConditionalPut {
    /// Written.
    Written,
    /// The condition did not hold (412, or 409 for a concurrent create, or 404 for an
    /// `If-Match` on a key that is gone): nothing was written.
    ConditionFailed,
    /// The store does not take the condition (501): nothing was written.
    Unsupported,
}

/// Small whole objects written and read under conditions: the gateways' shared users
/// object and host keys (see `users::remote` and `ssh::hostkey`).
impl S3 {
    /// GetObject of a whole small object, skipped (304) when it still has the ETag
    /// `if_none_match`.
    pub(crate) async fn get_small(
        &self,
        key: &str,
        if_none_match: Option<&str>,
    ) -> Result<Fetched> {
        let sent = self
            .client
            .get_object()
            .bucket(&*self.bucket)
            .key(key)
            .set_if_none_match(if_none_match.map(str::to_string))
            .send()
            .await;
        let out = match sent {
            Ok(out) => out,
            Err(err) => {
                let failure = S3Failure::from_sdk(&err);
                return if failure.is_not_found() {
                    Ok(Fetched::Absent)
                } else if failure.status == Some(304) {
                    Ok(Fetched::Unchanged)
                } else {
                    Err(failure.into_error("GetObject"))
                };
            }
        };
        let etag = out.e_tag().map(str::to_string);
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| StorageError::S3 {
                op: "GetObject",
                status: None,
                message: format!("reading the body failed: {e}"),
                request_id: None,
            })?
            .into_bytes();
        Ok(Fetched::Body { bytes, etag })
    }

    /// PutObject of `body` at `key` under `condition`, with the options of `options`.
    /// Unlike [`S3::put_object_if_absent`], a store that ignores or refuses the condition
    /// never gets a plain PutObject: the caller decides.
    pub(crate) async fn put_conditional(
        &self,
        key: &str,
        body: Bytes,
        condition: WriteCondition<'_>,
        options: &ObjectOptions,
    ) -> Result<ConditionalPut> {
        let sum = self.integrity(&body).await?;
        let (if_match, if_none_match) = match condition {
            WriteCondition::Absent => (None, Some("*".to_string())),
            WriteCondition::Matches(etag) => (Some(etag.to_string()), None),
        };
        let sent = self
            .client
            .put_object()
            .bucket(&*self.bucket)
            .key(key)
            .set_if_match(if_match)
            .set_if_none_match(if_none_match)
            .set_content_type(options.content_type.map(str::to_string))
            .set_storage_class(options.storage_class())
            .set_server_side_encryption(options.sse())
            .set_ssekms_key_id(options.kms_key_id())
            .set_bucket_key_enabled(options.bucket_key())
            .set_checksum_algorithm(sum.algorithm())
            .set_content_md5(sum.md5)
            .set_checksum_crc32_c(sum.crc32c)
            .body(ByteStream::from(body))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(ConditionalPut::Written),
            Err(err) => {
                let failure = S3Failure::from_sdk(&err);
                match failure.status {
                    Some(412) | Some(409) => Ok(ConditionalPut::ConditionFailed),
                    Some(404) if matches!(condition, WriteCondition::Matches(_)) => {
                        Ok(ConditionalPut::ConditionFailed)
                    }
                    Some(501) => Ok(ConditionalPut::Unsupported),
                    _ => Err(failure.into_error("PutObject")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn copy_source_encodes_everything_but_unreserved() {
        assert_eq!(
            super::copy_source("b", "u/a b+c%#ü"),
            "b/u/a%20b%2Bc%25%23%C3%BC"
        );
    }

    #[test]
    fn range_total_reads_the_size_after_the_slash() {
        assert_eq!(super::range_total("bytes 0-9/1234"), Some(1234));
        assert_eq!(super::range_total("bytes 0-9/*"), None);
    }
}
