//! Multipart uploads: create, upload (or copy) parts, complete, abort, and the two listings.
//!
//! Completion follows S3's rules: parts ascending (`InvalidPartOrder`), each part present
//! with the ETag the client quotes (`InvalidPart`), every part but the last at least 5 MiB
//! (`EntityTooSmall`). The object's ETag is the MD5 of the parts' ETags as bytes (their MD5s,
//! or random for parts sent without Content-MD5), then `-<N>`.

use std::path::PathBuf;

use md5::{Digest, Md5};
use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, CommonPrefix,
    CompleteMultipartUploadInput, CompleteMultipartUploadOutput, CopyPartResult,
    CreateMultipartUploadInput, CreateMultipartUploadOutput, ETag, ListMultipartUploadsInput,
    ListMultipartUploadsOutput, ListPartsInput, ListPartsOutput, MultipartUpload, Part,
    StorageClass, UploadPartCopyInput, UploadPartCopyOutput, UploadPartInput, UploadPartOutput,
};
use s3s::{s3_error, S3Error, S3ErrorCode, S3Result};

use super::body::{
    blocking, concat_ranges, copy_range_hashing, expected_crc32c, receive, receive_at, EtagSource,
};
use super::conditions::{check_copy_source, check_write, Conditions};
use super::list::page_size;
use super::parts::{new_upload_id, PartMeta, Upload, UploadMeta};
use super::s3::{copy_source_of, metadata_map};
use super::store::{now_ms, timestamp, ObjectMeta, Store};

/// Smallest size of a part that is not the last (S3's limit).
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Highest part number S3 accepts.
const MAX_PART_NUMBER: i32 = 10_000;

fn check_part_number(n: i32) -> S3Result<()> {
    if (1..=MAX_PART_NUMBER).contains(&n) {
        Ok(())
    } else {
        Err(s3_error!(
            InvalidArgument,
            "Part number must be an integer between 1 and 10000, inclusive"
        ))
    }
}

fn standard() -> StorageClass {
    StorageClass::from_static(StorageClass::STANDARD)
}

/// What a valid CompleteMultipartUpload will assemble.
struct Plan {
    part_numbers: Vec<i32>,
    sizes: Vec<u64>,
    etag: String,
}

fn plan_completion(upload: &Upload, requested: &[(i32, String)]) -> S3Result<Plan> {
    let mut plan = Plan {
        part_numbers: Vec::with_capacity(requested.len()),
        sizes: Vec::with_capacity(requested.len()),
        etag: String::new(),
    };
    // S3 reports, in this order: a misordered list, a missing or mismatched part, a small part.
    if requested
        .iter()
        .zip(requested.iter().skip(1))
        .any(|(a, b)| a.0 >= b.0)
    {
        return Err(s3_error!(
            InvalidPartOrder,
            "The list of parts was not in ascending order. The parts list must be specified in order by part number."
        ));
    }
    let mut found = Vec::with_capacity(requested.len());
    for (n, etag) in requested {
        let part = upload.parts.get(n).filter(|p| &p.etag == etag).ok_or_else(|| {
            s3_error!(
                InvalidPart,
                "One or more of the specified parts could not be found. The part may not have been uploaded, \
                 or the specified entity tag may not match the part's entity tag."
            )
        })?;
        found.push(part);
    }
    let mut binary_md5s = Vec::with_capacity(found.len() * 16);
    for (i, part) in found.iter().enumerate() {
        if i + 1 < found.len() && part.size < MIN_PART_SIZE {
            return Err(s3_error!(
                EntityTooSmall,
                "Your proposed upload is smaller than the minimum allowed size"
            ));
        }
        let md5 = hex::decode(&part.etag).map_err(|_| S3Error::new(S3ErrorCode::InternalError))?;
        binary_md5s.extend_from_slice(&md5);
        plan.part_numbers.push(part.part_number);
        plan.sizes.push(part.size);
    }
    plan.etag = format!(
        "{}-{}",
        hex::encode(Md5::digest(&binary_md5s)),
        requested.len()
    );
    Ok(plan)
}

/// Parses `x-amz-copy-source-range: bytes=first-last` against a source of `size` bytes.
fn copy_range(value: &str, size: u64) -> S3Result<(u64, u64)> {
    let bad = || {
        s3_error!(
            InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are \
             the zero-based offsets of the first and last bytes to copy"
        )
    };
    let (first, last) = value
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(bad)?;
    let first: u64 = first.parse().map_err(|_| bad())?;
    let last: u64 = last.parse().map_err(|_| bad())?;
    if first > last {
        return Err(bad());
    }
    if last >= size {
        return Err(s3_error!(
            InvalidRange,
            "The requested range is not satisfiable"
        ));
    }
    Ok((first, last + 1))
}

impl Store {
    /// CreateMultipartUpload.
    pub(crate) fn create_upload_op(
        &self,
        input: CreateMultipartUploadInput,
    ) -> S3Result<CreateMultipartUploadOutput> {
        let bucket = self.bucket(&input.bucket)?;
        let upload_id = new_upload_id();
        bucket.create_upload(UploadMeta {
            upload_id: upload_id.clone(),
            key: input.key.clone(),
            initiated_ms: now_ms(),
            content_type: input.content_type,
            metadata: metadata_map(input.metadata),
        })?;
        Ok(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        })
    }

    /// UploadPart: streams the body into its place in the upload's assembly file, or into
    /// a part file of its own (see `assembly.rs`).
    pub(crate) async fn upload_part_op(
        &self,
        input: UploadPartInput,
    ) -> S3Result<UploadPartOutput> {
        check_part_number(input.part_number)?;
        let bucket = self.bucket(&input.bucket)?;
        let source = EtagSource::part(input.content_md5.as_deref())?;
        let crc32c = expected_crc32c(input.checksum_crc32c.as_deref())?;
        // Also refuses an unknown upload before reading the body.
        let slot = match input.content_length.and_then(|len| u64::try_from(len).ok()) {
            Some(len) => bucket
                .reserve_slot(&input.upload_id, &input.key, input.part_number, len)?
                .map(|slot| (slot, len)),
            None => {
                bucket.upload(&input.upload_id, &input.key)?;
                None
            }
        };
        let (size, etag, offset, file) = match &slot {
            Some((slot, len)) => {
                let etag =
                    receive_at(&slot.path, slot.offset, *len, input.body, source, crc32c).await?;
                (*len, etag, Some(slot.offset), None)
            }
            None => {
                let received =
                    receive(&bucket, input.body, input.content_length, source, crc32c).await?;
                (received.size, received.etag, None, Some(received.file))
            }
        };
        let part = PartMeta {
            part_number: input.part_number,
            size,
            etag,
            last_modified_ms: now_ms(),
            offset,
        };
        let etag = part.etag.clone();
        bucket.commit_part(&input.upload_id, &input.key, part, file)?;
        drop(slot);
        Ok(UploadPartOutput {
            e_tag: Some(ETag::Strong(etag)),
            ..Default::default()
        })
    }

    /// UploadPartCopy: a part made of (a range of) an existing object.
    pub(crate) async fn upload_part_copy_op(
        &self,
        input: UploadPartCopyInput,
    ) -> S3Result<UploadPartCopyOutput> {
        check_part_number(input.part_number)?;
        let bucket = self.bucket(&input.bucket)?;
        bucket.upload(&input.upload_id, &input.key)?;
        let (source_bucket, source_key) = copy_source_of(&input.copy_source)?;
        let (meta, file) = self.bucket(source_bucket)?.open_object(source_key)?;
        let conditions = Conditions {
            if_match: input.copy_source_if_match.as_ref(),
            if_none_match: input.copy_source_if_none_match.as_ref(),
            if_modified_since: input.copy_source_if_modified_since.as_ref(),
            if_unmodified_since: input.copy_source_if_unmodified_since.as_ref(),
        };
        check_copy_source(&meta, &conditions)?;
        let (start, end) = match input.copy_source_range.as_deref() {
            Some(range) => copy_range(range, meta.size)?,
            None => (0, meta.size),
        };
        let tmp = bucket.temp_path();
        let dest = tmp.path().to_owned();
        let etag = blocking("copy part", move || {
            copy_range_hashing(file, start, end - start, &dest)
        })
        .await?;
        let last_modified_ms = now_ms();
        let part = PartMeta {
            part_number: input.part_number,
            size: end - start,
            etag: etag.clone(),
            last_modified_ms,
            offset: None,
        };
        bucket.commit_part(&input.upload_id, &input.key, part, Some(tmp))?;
        Ok(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(timestamp(last_modified_ms)),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// CompleteMultipartUpload: validates the part list, then renames into place the
    /// upload's assembly file when the parts lie end to end in it (see `assembly.rs`), else
    /// a temporary file they are copied into. On failure the upload stays as it was.
    pub(crate) async fn complete_upload_op(
        &self,
        input: CompleteMultipartUploadInput,
    ) -> S3Result<CompleteMultipartUploadOutput> {
        let bucket = self.bucket(&input.bucket)?;
        let mut requested = Vec::new();
        for part in input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
        {
            let (Some(n), Some(etag)) = (part.part_number, part.e_tag) else {
                return Err(s3_error!(
                    MalformedXML,
                    "Each part needs a PartNumber and an ETag"
                ));
            };
            requested.push((n, etag.into_value()));
        }
        if requested.is_empty() {
            return Err(s3_error!(
                MalformedXML,
                "You must specify at least one part"
            ));
        }
        let (if_match, if_none_match) = (input.if_match.as_ref(), input.if_none_match.as_ref());
        check_write(bucket.meta(&input.key).as_ref(), if_match, if_none_match)?;

        let (upload, plan) = bucket.take_upload(&input.upload_id, &input.key, |u| {
            plan_completion(u, &requested)
        })?;
        let expected: u64 = plan.sizes.iter().sum();
        let parts: Vec<&PartMeta> = plan
            .part_numbers
            .iter()
            .filter_map(|n| upload.parts.get(n))
            .collect();
        let tmp = match bucket.assembled_in_place(&upload, &parts) {
            Some(tmp) => tmp,
            None => {
                let sources: Vec<(PathBuf, u64, u64)> = parts
                    .iter()
                    .map(|part| match part.offset {
                        Some(offset) => (bucket.assembly_path(&input.upload_id), offset, part.size),
                        None => (
                            bucket.part_path(&input.upload_id, part.part_number),
                            0,
                            part.size,
                        ),
                    })
                    .collect();
                let tmp = bucket.temp_path();
                let dest = tmp.path().to_owned();
                let assembled = blocking("assemble multipart object", move || {
                    concat_ranges(&sources, &dest)
                })
                .await;
                if let Err(err) = assembled {
                    bucket.restore_upload(upload);
                    return Err(err);
                }
                tmp
            }
        };
        let meta = ObjectMeta {
            key: input.key.clone(),
            size: expected,
            etag: plan.etag.clone(),
            last_modified_ms: now_ms(),
            content_type: upload.meta.content_type.clone(),
            metadata: upload.meta.metadata.clone(),
            part_sizes: plan.sizes,
        };
        if let Err(err) = bucket.commit_object(tmp, meta, |current| {
            check_write(current, if_match, if_none_match)
        }) {
            bucket.restore_upload(upload);
            return Err(err);
        }
        bucket.remove_upload_files(&input.upload_id);
        Ok(CompleteMultipartUploadOutput {
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(ETag::Strong(plan.etag)),
            ..Default::default()
        })
    }

    /// AbortMultipartUpload.
    pub(crate) fn abort_upload_op(
        &self,
        input: AbortMultipartUploadInput,
    ) -> S3Result<AbortMultipartUploadOutput> {
        self.bucket(&input.bucket)?
            .abort_upload(&input.upload_id, &input.key)?;
        Ok(AbortMultipartUploadOutput::default())
    }

    /// ListMultipartUploads: by key, then by age; `key-marker`/`upload-id-marker` paging.
    pub(crate) fn list_uploads_op(
        &self,
        input: ListMultipartUploadsInput,
    ) -> S3Result<ListMultipartUploadsOutput> {
        let bucket = self.bucket(&input.bucket)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let max = page_size(input.max_uploads)?;
        let key_marker = input.key_marker.clone().filter(|m| !m.is_empty());
        let id_marker = input.upload_id_marker.clone().filter(|m| !m.is_empty());
        let mut candidates: Vec<(String, String, i64)> = bucket
            .read()
            .uploads
            .values()
            .filter(|u| u.meta.key.starts_with(&prefix))
            .map(|u| {
                (
                    u.meta.key.clone(),
                    u.meta.upload_id.clone(),
                    u.meta.initiated_ms,
                )
            })
            .collect();
        candidates.sort();

        let marker_is_prefix = match (&key_marker, &delimiter, &id_marker) {
            (Some(km), Some(d), None) => km.ends_with(d.as_str()),
            _ => false,
        };
        let mut uploads = Vec::new();
        let mut prefixes: Vec<String> = Vec::new();
        let mut next: Option<(String, Option<String>)> = None;
        let mut truncated = false;
        for (key, upload_id, initiated_ms) in candidates {
            if let Some(km) = &key_marker {
                let after_marker = key > *km
                    || (key == *km && id_marker.as_ref().is_some_and(|im| upload_id > *im));
                if !after_marker || (marker_is_prefix && key.starts_with(km.as_str())) {
                    continue;
                }
            }
            let rolled = delimiter.as_deref().and_then(|d| {
                let rest = key.get(prefix.len()..)?;
                rest.find(d)
                    .and_then(|i| key.get(..prefix.len() + i + d.len()))
            });
            if rolled.is_some_and(|cp| prefixes.last().is_some_and(|last| last == cp)) {
                continue;
            }
            if uploads.len() + prefixes.len() == max {
                truncated = max > 0;
                break;
            }
            match rolled {
                Some(cp) => {
                    prefixes.push(cp.to_owned());
                    next = Some((cp.to_owned(), None));
                }
                None => {
                    uploads.push(MultipartUpload {
                        key: Some(key.clone()),
                        upload_id: Some(upload_id.clone()),
                        initiated: Some(timestamp(initiated_ms)),
                        storage_class: Some(standard()),
                        ..Default::default()
                    });
                    next = Some((key, Some(upload_id)));
                }
            }
        }
        let (next_key_marker, next_upload_id_marker) = match next.filter(|_| truncated) {
            Some((key, id)) => (Some(key), id),
            None => (None, None),
        };
        Ok(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: Some(prefix),
            delimiter,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            max_uploads: Some(i32::try_from(max).unwrap_or(i32::MAX)),
            is_truncated: Some(truncated),
            next_key_marker,
            next_upload_id_marker,
            uploads: Some(uploads),
            common_prefixes: Some(
                prefixes
                    .into_iter()
                    .map(|p| CommonPrefix { prefix: Some(p) })
                    .collect(),
            ),
            encoding_type: input.encoding_type,
            ..Default::default()
        })
    }

    /// ListParts: ascending part numbers after `part-number-marker`.
    pub(crate) fn list_parts_op(&self, input: ListPartsInput) -> S3Result<ListPartsOutput> {
        let upload = self
            .bucket(&input.bucket)?
            .upload(&input.upload_id, &input.key)?;
        let max = page_size(input.max_parts)?;
        let marker = input.part_number_marker.unwrap_or(0);
        let mut after = upload
            .parts
            .range(marker.saturating_add(1)..)
            .map(|(_, part)| part);
        let page: Vec<&PartMeta> = after.by_ref().take(max).collect();
        let truncated = max > 0 && after.next().is_some();
        let next_marker = page.last().map(|p| p.part_number);
        let parts = page
            .iter()
            .map(|p| Part {
                part_number: Some(p.part_number),
                e_tag: Some(ETag::Strong(p.etag.clone())),
                size: Some(i64::try_from(p.size).unwrap_or(i64::MAX)),
                last_modified: Some(timestamp(p.last_modified_ms)),
                ..Default::default()
            })
            .collect();
        Ok(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(i32::try_from(max).unwrap_or(i32::MAX)),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: next_marker,
            is_truncated: Some(truncated),
            parts: Some(parts),
            storage_class: Some(standard()),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_ranges() {
        assert_eq!(copy_range("bytes=0-9", 10).ok(), Some((0, 10)));
        assert_eq!(copy_range("bytes=3-3", 10).ok(), Some((3, 4)));
        assert!(copy_range("bytes=0-10", 10).is_err());
        assert!(copy_range("bytes=5-4", 10).is_err());
        assert!(copy_range("bytes=-4", 10).is_err());
        assert!(copy_range("0-4", 10).is_err());
    }
}
