//! HTTP preconditions and byte ranges as S3 applies them. `s3s` only parses the headers;
//! deciding 412, 304, 206 and 416 is up to the store.

use s3s::dto::{ETagCondition, Range, Timestamp};
use s3s::{s3_error, S3Error, S3ErrorCode, S3Result};

use super::error::custom;
use super::store::{no_such_key, ObjectMeta};

/// The four conditional headers of a read (GET/HEAD) or of a copy source.
#[derive(Default)]
pub(crate) struct Conditions<'a> {
    pub(crate) if_match: Option<&'a ETagCondition>,
    pub(crate) if_none_match: Option<&'a ETagCondition>,
    pub(crate) if_modified_since: Option<&'a Timestamp>,
    pub(crate) if_unmodified_since: Option<&'a Timestamp>,
}

/// Whether `cond` (`*` or an ETag, quotes already removed by `s3s`) matches `etag`.
pub(crate) fn etag_matches(cond: &ETagCondition, etag: &str) -> bool {
    match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(tag) => tag.value() == etag,
    }
}

fn unix_secs(ts: &Timestamp) -> i64 {
    time::OffsetDateTime::from(ts.clone()).unix_timestamp()
}

/// HTTP dates have whole seconds; compare at that precision.
fn modified_after(meta: &ObjectMeta, ts: &Timestamp) -> bool {
    meta.last_modified_ms.div_euclid(1000) > unix_secs(ts)
}

fn precondition_failed() -> S3Error {
    s3_error!(
        PreconditionFailed,
        "At least one of the pre-conditions you specified did not hold"
    )
}

fn not_modified(meta: &ObjectMeta) -> S3Error {
    let mut err = S3Error::new(S3ErrorCode::NotModified);
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_str(&format!("\"{}\"", meta.etag)) {
        headers.insert(http::header::ETAG, value);
    }
    err.set_headers(headers);
    err
}

/// GET/HEAD preconditions in the order S3 (and RFC 9110) evaluates them: If-Match, else
/// If-Unmodified-Since (412); then If-None-Match, else If-Modified-Since (304).
pub(crate) fn check_read(meta: &ObjectMeta, c: &Conditions<'_>) -> S3Result<()> {
    if let Some(cond) = c.if_match {
        if !etag_matches(cond, &meta.etag) {
            return Err(precondition_failed());
        }
    } else if c
        .if_unmodified_since
        .is_some_and(|ts| modified_after(meta, ts))
    {
        return Err(precondition_failed());
    }
    if let Some(cond) = c.if_none_match {
        if etag_matches(cond, &meta.etag) {
            return Err(not_modified(meta));
        }
    } else if c
        .if_modified_since
        .is_some_and(|ts| !modified_after(meta, ts))
    {
        return Err(not_modified(meta));
    }
    Ok(())
}

/// `x-amz-copy-source-if-*`: the same rules, but every failure is 412.
pub(crate) fn check_copy_source(meta: &ObjectMeta, c: &Conditions<'_>) -> S3Result<()> {
    check_read(meta, c).map_err(|err| {
        if *err.code() == S3ErrorCode::NotModified {
            precondition_failed()
        } else {
            err
        }
    })
}

/// Conditional writes (PutObject, CompleteMultipartUpload): `If-None-Match: *` refuses to
/// overwrite, `If-Match` requires the current version. Runs under the bucket lock.
pub(crate) fn check_write(
    current: Option<&ObjectMeta>,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> S3Result<()> {
    if let Some(cond) = if_none_match {
        if current.is_some_and(|meta| etag_matches(cond, &meta.etag)) {
            return Err(precondition_failed());
        }
    }
    if let Some(cond) = if_match {
        match current {
            None => return Err(no_such_key()),
            Some(meta) if !etag_matches(cond, &meta.etag) => return Err(precondition_failed()),
            Some(_) => {}
        }
    }
    Ok(())
}

/// The byte span a read returns: `None` for the whole object (200), or `start..end` (206).
///
/// `Range` follows `s3s`'s satisfiability rules (a start at or past the end, or an empty
/// object, is `InvalidRange`, 416); `partNumber` selects a part of a multipart object
/// (part 1 of a simple object is all of it).
pub(crate) fn resolve_span(
    meta: &ObjectMeta,
    range: Option<&Range>,
    part_number: Option<i32>,
) -> S3Result<Option<(u64, u64)>> {
    match (range, part_number) {
        (Some(_), Some(_)) => Err(s3_error!(
            InvalidRequest,
            "Cannot specify both Range header and partNumber query parameter"
        )),
        (Some(range), None) => {
            let span = range
                .check(meta.size)
                .map_err(|_| invalid_range(meta.size))?;
            if span.is_empty() {
                return Err(invalid_range(meta.size));
            }
            Ok(Some((span.start, span.end)))
        }
        (None, Some(n)) => part_span(meta, n).map(Some),
        (None, None) => Ok(None),
    }
}

fn part_span(meta: &ObjectMeta, n: i32) -> S3Result<(u64, u64)> {
    let bad = || {
        custom(
            "InvalidPartNumber",
            416,
            "The requested partnumber is not satisfiable",
        )
    };
    let index = usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .ok_or_else(bad)?;
    if meta.part_sizes.is_empty() {
        return if index == 0 && meta.size > 0 {
            Ok((0, meta.size))
        } else {
            Err(bad())
        };
    }
    let start: u64 = meta.part_sizes.iter().take(index).sum();
    let size = *meta.part_sizes.get(index).ok_or_else(bad)?;
    if size == 0 {
        return Err(bad());
    }
    Ok((start, start + size))
}

fn invalid_range(size: u64) -> S3Error {
    let mut err = s3_error!(InvalidRange, "The requested range is not satisfiable");
    // These headers replace the error's own, so keep its Content-Type.
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/xml"),
    );
    if let Ok(value) = http::HeaderValue::from_str(&format!("bytes */{size}")) {
        headers.insert(http::header::CONTENT_RANGE, value);
    }
    err.set_headers(headers);
    err
}

/// The Content-Range value of a 206 reply.
pub(crate) fn content_range(start: u64, end: u64, size: u64) -> String {
    format!("bytes {start}-{}/{size}", end.saturating_sub(1))
}
