//! The `s3s::S3` implementation: buckets and single objects here, listings in `list.rs`,
//! multipart uploads in `multipart.rs`. Operations not implemented answer `NotImplemented`.

use std::collections::BTreeMap;

use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, Bucket as BucketDto,
    CompleteMultipartUploadInput, CompleteMultipartUploadOutput, CopyObjectInput, CopyObjectOutput,
    CopyObjectResult, CopySource, CreateBucketInput, CreateBucketOutput,
    CreateMultipartUploadInput, CreateMultipartUploadOutput, DeleteBucketInput, DeleteBucketOutput,
    DeleteObjectInput, DeleteObjectOutput, DeleteObjectsInput, DeleteObjectsOutput, DeletedObject,
    ETag, Error as ErrorDto, GetBucketLocationInput, GetBucketLocationOutput, GetObjectInput,
    GetObjectOutput, HeadBucketInput, HeadBucketOutput, HeadObjectInput, HeadObjectOutput,
    ListBucketsInput, ListBucketsOutput, ListMultipartUploadsInput, ListMultipartUploadsOutput,
    ListObjectsInput, ListObjectsOutput, ListObjectsV2Input, ListObjectsV2Output, ListPartsInput,
    ListPartsOutput, Metadata, MetadataDirective, Owner, PutObjectInput, PutObjectOutput,
    StreamingBlob, UploadPartCopyInput, UploadPartCopyOutput, UploadPartInput, UploadPartOutput,
};
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};

use super::body::{blocking, copy_file, expected_crc32c, receive, EtagSource, FileBody};
use super::conditions::{
    check_copy_source, check_read, check_write, content_range, resolve_span, Conditions,
};
use super::error::internal;
use super::store::{now_ms, timestamp, ObjectMeta, Snapshot, Store};

/// Content-Type S3 reports for objects stored without one.
const DEFAULT_CONTENT_TYPE: &str = "binary/octet-stream";
/// Most keys one DeleteObjects request may name.
const MAX_DELETE_KEYS: usize = 1000;

/// The bucket and key of an `x-amz-copy-source` (access points and versions are not kept).
pub(crate) fn copy_source_of(source: &CopySource) -> S3Result<(&str, &str)> {
    match source {
        CopySource::Bucket {
            bucket,
            key,
            version_id,
        } => {
            if version_id.as_deref().is_some_and(|v| v != "null") {
                return Err(s3_error!(
                    InvalidArgument,
                    "This store keeps no object versions"
                ));
            }
            Ok((bucket, key))
        }
        _ => Err(s3_error!(
            NotImplemented,
            "Only bucket/key copy sources are supported"
        )),
    }
}

/// User metadata as stored (sorted, so sidecars are stable).
pub(crate) fn metadata_map(metadata: Option<Metadata>) -> BTreeMap<String, String> {
    metadata.unwrap_or_default().into_iter().collect()
}

fn metadata_dto(meta: &ObjectMeta) -> Option<Metadata> {
    if meta.metadata.is_empty() {
        None
    } else {
        Some(meta.metadata.clone().into_iter().collect())
    }
}

fn size_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn owner() -> Owner {
    Owner {
        display_name: Some("s3sftp".to_owned()),
        id: Some("s3sftp".to_owned()),
    }
}

#[async_trait::async_trait]
impl S3 for Store {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let name = req.input.bucket;
        self.add_bucket(&name)?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{name}")),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.remove_bucket(&req.input.bucket)?;
        Ok(S3Response::new(DeleteBucketOutput::default()))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.bucket(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(super::REGION.to_owned()),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.bucket(&req.input.bucket)?;
        // us-east-1 is reported as an empty LocationConstraint, as S3 does.
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let buckets = self
            .buckets()
            .iter()
            .map(|b| BucketDto {
                name: Some(b.name.clone()),
                creation_date: Some(timestamp(b.created_ms)),
                bucket_region: Some(super::REGION.to_owned()),
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(owner()),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let Some(meta) = self.bucket(&input.bucket)?.meta(&input.key) else {
            return Err(super::store::no_such_key());
        };
        let conditions = Conditions {
            if_match: input.if_match.as_ref(),
            if_none_match: input.if_none_match.as_ref(),
            if_modified_since: input.if_modified_since.as_ref(),
            if_unmodified_since: input.if_unmodified_since.as_ref(),
        };
        check_read(&meta, &conditions)?;
        let span = resolve_span(&meta, input.range.as_ref(), input.part_number)?;
        let (len, range) = match span {
            Some((start, end)) => (end - start, Some(content_range(start, end, meta.size))),
            None => (meta.size, None),
        };
        let partial = range.is_some();
        let output = HeadObjectOutput {
            accept_ranges: Some("bytes".to_owned()),
            content_length: Some(size_i64(len)),
            content_range: range,
            content_type: Some(
                meta.content_type
                    .clone()
                    .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned()),
            ),
            e_tag: Some(ETag::Strong(meta.etag.clone())),
            last_modified: Some(timestamp(meta.last_modified_ms)),
            metadata: metadata_dto(&meta),
            parts_count: parts_count(&meta, input.part_number),
            ..Default::default()
        };
        let mut response = S3Response::new(output);
        if partial {
            response.status = Some(http::StatusCode::PARTIAL_CONTENT);
        }
        Ok(response)
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let (meta, file) = self.bucket(&input.bucket)?.open_object(&input.key)?;
        let conditions = Conditions {
            if_match: input.if_match.as_ref(),
            if_none_match: input.if_none_match.as_ref(),
            if_modified_since: input.if_modified_since.as_ref(),
            if_unmodified_since: input.if_unmodified_since.as_ref(),
        };
        check_read(&meta, &conditions)?;
        let span = resolve_span(&meta, input.range.as_ref(), input.part_number)?;
        let (start, end, range) = match span {
            Some((start, end)) => (start, end, Some(content_range(start, end, meta.size))),
            None => (0, meta.size, None),
        };
        let body =
            FileBody::new(file, start, end - start).map_err(|e| internal("read object", e))?;
        let output = GetObjectOutput {
            body: Some(StreamingBlob::new(body)),
            accept_ranges: Some("bytes".to_owned()),
            content_length: Some(size_i64(end - start)),
            content_range: range,
            content_type: Some(
                meta.content_type
                    .clone()
                    .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned()),
            ),
            e_tag: Some(ETag::Strong(meta.etag.clone())),
            last_modified: Some(timestamp(meta.last_modified_ms)),
            metadata: metadata_dto(&meta),
            parts_count: parts_count(&meta, input.part_number),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        let bucket = self.bucket(&input.bucket)?;
        let (if_match, if_none_match) = (input.if_match.as_ref(), input.if_none_match.as_ref());
        // Refuse early when we can; the check is repeated at commit time, under the lock.
        check_write(bucket.meta(&input.key).as_ref(), if_match, if_none_match)?;
        let source = EtagSource::object(input.content_md5.as_deref())?;
        let crc32c = expected_crc32c(input.checksum_crc32c.as_deref())?;
        let received = receive(&bucket, input.body, input.content_length, source, crc32c).await?;
        let meta = ObjectMeta {
            key: input.key,
            size: received.size,
            etag: received.etag,
            last_modified_ms: now_ms(),
            content_type: input.content_type,
            metadata: metadata_map(input.metadata),
            part_sizes: Vec::new(),
        };
        let etag = meta.etag.clone();
        let size = meta.size;
        bucket.commit_object(received.file, meta, |current| {
            check_write(current, if_match, if_none_match)
        })?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(etag)),
            size: Some(size_i64(size)),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        let bucket = self.bucket(&input.bucket)?;
        // A missing key is a success, as on S3 (unless If-Match asks for a version).
        let if_match = input.if_match.as_ref();
        bucket.delete_object(&input.key, |current| match if_match {
            Some(cond) => check_write(current, Some(cond), None),
            None => Ok(()),
        })?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        let bucket = self.bucket(&input.bucket)?;
        if input.delete.objects.len() > MAX_DELETE_KEYS {
            return Err(s3_error!(
                MalformedXML,
                "A DeleteObjects request may name at most 1000 keys"
            ));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for object in input.delete.objects {
            match bucket.delete_object(&object.key, |_| Ok(())) {
                Ok(_) if quiet => {}
                Ok(_) => deleted.push(DeletedObject {
                    key: Some(object.key),
                    ..Default::default()
                }),
                Err(err) => errors.push(ErrorDto {
                    code: Some(err.code().as_str().to_owned()),
                    message: err.message().map(str::to_owned),
                    key: Some(object.key),
                    version_id: None,
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        let (source_bucket, source_key) = copy_source_of(&input.copy_source)?;
        let source = self.bucket(source_bucket)?;
        let dest = self.bucket(&input.bucket)?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        if source_bucket == input.bucket && source_key == input.key && !replace {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing \
                 the object's metadata, storage class, website redirect location or encryption attributes."
            ));
        }
        let tmp = dest.temp_path();
        let (source_meta, snapshot) = source.snapshot_object(source_key, tmp.path())?;
        let conditions = Conditions {
            if_match: input.copy_source_if_match.as_ref(),
            if_none_match: input.copy_source_if_none_match.as_ref(),
            if_modified_since: input.copy_source_if_modified_since.as_ref(),
            if_unmodified_since: input.copy_source_if_unmodified_since.as_ref(),
        };
        check_copy_source(&source_meta, &conditions)?;
        if let Snapshot::Opened(file) = snapshot {
            let path = tmp.path().to_owned();
            let copied = blocking("copy object", move || copy_file(file, &path)).await?;
            if copied != source_meta.size {
                return Err(s3_error!(
                    InternalError,
                    "The source object changed size while being copied"
                ));
            }
        }
        // Same bytes, same ETag (S3 would compute a plain MD5 for a multipart source).
        let (content_type, metadata) = if replace {
            (input.content_type, metadata_map(input.metadata))
        } else {
            (source_meta.content_type, source_meta.metadata)
        };
        let meta = ObjectMeta {
            key: input.key,
            size: source_meta.size,
            etag: source_meta.etag,
            last_modified_ms: now_ms(),
            content_type,
            metadata,
            part_sizes: source_meta.part_sizes,
        };
        let result = CopyObjectResult {
            e_tag: Some(ETag::Strong(meta.etag.clone())),
            last_modified: Some(timestamp(meta.last_modified_ms)),
            ..Default::default()
        };
        dest.commit_object(tmp, meta, |_| Ok(()))?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(result),
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.list_v1(req.input).map(S3Response::new)
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.list_v2(req.input).map(S3Response::new)
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.create_upload_op(req.input).map(S3Response::new)
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.upload_part_op(req.input).await.map(S3Response::new)
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.upload_part_copy_op(req.input)
            .await
            .map(S3Response::new)
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.complete_upload_op(req.input)
            .await
            .map(S3Response::new)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.abort_upload_op(req.input).map(S3Response::new)
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.list_uploads_op(req.input).map(S3Response::new)
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.list_parts_op(req.input).map(S3Response::new)
    }
}

/// `x-amz-mp-parts-count` when a part was asked for and the object has parts.
fn parts_count(meta: &ObjectMeta, part_number: Option<i32>) -> Option<i32> {
    part_number?;
    let n = meta.part_sizes.len().max(1);
    Some(i32::try_from(n).unwrap_or(i32::MAX))
}
