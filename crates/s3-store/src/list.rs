//! ListObjectsV2 and ListObjects (v1): range queries over a bucket's key index.
//!
//! A page holds at most `max-keys` entries, counting keys and common prefixes alike. When a
//! key rolls up into a common prefix the scan jumps past every key under that prefix (one
//! range query per entry, not a walk over the hidden keys), and a continuation token that
//! ends on a common prefix resumes after all of its keys, so no prefix appears twice.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::ops::Bound;

use s3s::dto::{
    CommonPrefix, EncodingType, ListObjectsInput, ListObjectsOutput, ListObjectsV2Input,
    ListObjectsV2Output, Object, ObjectStorageClass,
};
use s3s::{s3_error, S3Result};

use super::store::{timestamp, ObjectMeta, Store};

/// Most entries a list page may hold (S3's limit).
pub(crate) const MAX_PAGE: usize = 1000;

/// Where a listing resumes: after a key, or after every key under a common prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resume {
    Key(String),
    Prefix(String),
}

/// One page of a listing. `next` is set exactly when the listing is truncated.
#[derive(Debug, Default)]
pub(crate) struct Page {
    pub(crate) objects: Vec<ObjectMeta>,
    pub(crate) prefixes: Vec<String>,
    pub(crate) next: Option<Resume>,
}

/// The smallest string greater than every string that starts with `prefix`, as a lower
/// bound; `Excluded(prefix)` if there is none (then the caller skips linearly).
fn after_prefix(prefix: &str) -> Bound<String> {
    if let Some(last) = prefix.chars().next_back() {
        let head = prefix
            .get(..prefix.len() - last.len_utf8())
            .unwrap_or_default();
        let mut next = u32::from(last) + 1;
        while next <= u32::from(char::MAX) {
            if let Some(c) = char::from_u32(next) {
                return Bound::Included(format!("{head}{c}"));
            }
            next += 1; // inside the surrogate gap
        }
    }
    Bound::Excluded(prefix.to_owned())
}

fn as_str_bound(bound: &Bound<String>) -> Bound<&str> {
    match bound {
        Bound::Included(s) => Bound::Included(s.as_str()),
        Bound::Excluded(s) => Bound::Excluded(s.as_str()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Computes one page of keys under `prefix`, rolled up at `delimiter`, after `after`.
pub(crate) fn list_page(
    objects: &BTreeMap<String, ObjectMeta>,
    prefix: &str,
    delimiter: Option<&str>,
    after: Option<&Resume>,
    max: usize,
) -> Page {
    let mut page = Page::default();
    if max == 0 {
        return page;
    }
    let mut lower = Bound::Included(prefix.to_owned());
    let mut skip: Option<String> = None;
    match after {
        Some(Resume::Key(key)) if key.as_str() >= prefix => lower = Bound::Excluded(key.clone()),
        Some(Resume::Prefix(p)) if p.as_str() >= prefix => {
            lower = after_prefix(p);
            skip = Some(p.clone());
        }
        _ => {}
    }
    let mut last: Option<Resume> = None;
    let mut count = 0;
    while let Some((key, meta)) = objects
        .range::<str, _>((as_str_bound(&lower), Bound::Unbounded))
        .next()
    {
        if !key.starts_with(prefix) {
            break;
        }
        if skip.as_deref().is_some_and(|s| key.starts_with(s)) {
            lower = Bound::Excluded(key.clone());
            continue;
        }
        if count == max {
            page.next = last;
            break;
        }
        let rest = key.get(prefix.len()..).unwrap_or_default();
        let rolled = delimiter
            .and_then(|d| rest.find(d).map(|i| prefix.len() + i + d.len()))
            .and_then(|end| key.get(..end));
        match rolled {
            Some(common) => {
                lower = after_prefix(common);
                skip = Some(common.to_owned());
                page.prefixes.push(common.to_owned());
                last = Some(Resume::Prefix(common.to_owned()));
            }
            None => {
                page.objects.push(meta.clone());
                lower = Bound::Excluded(key.clone());
                last = Some(Resume::Key(key.clone()));
            }
        }
        count += 1;
    }
    page
}

/// Opaque continuation token for `resume`.
fn encode_token(resume: &Resume) -> String {
    match resume {
        Resume::Key(key) => format!("k{}", hex::encode(key)),
        Resume::Prefix(prefix) => format!("p{}", hex::encode(prefix)),
    }
}

fn decode_token(token: &str) -> S3Result<Resume> {
    let bad = || {
        s3_error!(
            InvalidArgument,
            "The continuation token provided is incorrect"
        )
    };
    let (kind, hexed) = (
        token.get(..1).ok_or_else(bad)?,
        token.get(1..).ok_or_else(bad)?,
    );
    let text = String::from_utf8(hex::decode(hexed).map_err(|_| bad())?).map_err(|_| bad())?;
    match kind {
        "k" => Ok(Resume::Key(text)),
        "p" => Ok(Resume::Prefix(text)),
        _ => Err(bad()),
    }
}

/// `max-keys`: absent means 1000, more than 1000 is capped, negative is refused.
pub(crate) fn page_size(requested: Option<i32>) -> S3Result<usize> {
    match requested {
        None => Ok(MAX_PAGE),
        Some(n) => usize::try_from(n)
            .map(|n| n.min(MAX_PAGE))
            .map_err(|_| s3_error!(InvalidArgument, "max-keys cannot be negative")),
    }
}

/// Percent-encodes like S3 does for `encoding-type=url` (keeps unreserved bytes and `/`).
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Encodes names in replies when the client asked for `encoding-type=url`.
struct Encoder(bool);

impl Encoder {
    fn new(encoding: Option<&EncodingType>) -> Encoder {
        Encoder(encoding.is_some_and(|e| e.as_str() == EncodingType::URL))
    }

    fn apply(&self, s: &str) -> String {
        if self.0 {
            url_encode(s)
        } else {
            s.to_owned()
        }
    }
}

fn to_dto(page: Page, enc: &Encoder) -> (Vec<Object>, Vec<CommonPrefix>) {
    let objects = page
        .objects
        .into_iter()
        .map(|meta| Object {
            key: Some(enc.apply(&meta.key)),
            size: Some(i64::try_from(meta.size).unwrap_or(i64::MAX)),
            e_tag: Some(s3s::dto::ETag::Strong(meta.etag)),
            last_modified: Some(timestamp(meta.last_modified_ms)),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        })
        .collect();
    let prefixes = page
        .prefixes
        .iter()
        .map(|p| CommonPrefix {
            prefix: Some(enc.apply(p)),
        })
        .collect();
    (objects, prefixes)
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl Store {
    /// ListObjectsV2.
    pub(crate) fn list_v2(&self, input: ListObjectsV2Input) -> S3Result<ListObjectsV2Output> {
        let bucket = self.bucket(&input.bucket)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let max = page_size(input.max_keys)?;
        let after = match &input.continuation_token {
            Some(token) => Some(decode_token(token)?),
            None => input
                .start_after
                .clone()
                .filter(|s| !s.is_empty())
                .map(Resume::Key),
        };
        let page = list_page(
            &bucket.read().objects,
            &prefix,
            delimiter.as_deref(),
            after.as_ref(),
            max,
        );
        let enc = Encoder::new(input.encoding_type.as_ref());
        let next = page.next.as_ref().map(encode_token);
        let key_count = count(page.objects.len() + page.prefixes.len());
        let (contents, common_prefixes) = to_dto(page, &enc);
        Ok(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(enc.apply(&prefix)),
            delimiter: delimiter.map(|d| enc.apply(&d)),
            max_keys: Some(count(max)),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            start_after: input.start_after.map(|s| enc.apply(&s)),
            is_truncated: Some(next.is_some()),
            next_continuation_token: next,
            contents: Some(contents),
            common_prefixes: Some(common_prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        })
    }

    /// ListObjects (v1, `marker` paging). A marker that is a common prefix of this listing
    /// resumes after all keys under it, as NextMarker promises.
    pub(crate) fn list_v1(&self, input: ListObjectsInput) -> S3Result<ListObjectsOutput> {
        let bucket = self.bucket(&input.bucket)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let max = page_size(input.max_keys)?;
        let after = input
            .marker
            .clone()
            .filter(|m| !m.is_empty())
            .map(|marker| {
                let rest = marker.strip_prefix(prefix.as_str()).unwrap_or_default();
                let is_common_prefix = delimiter
                    .as_deref()
                    .is_some_and(|d| rest.find(d).is_some_and(|i| i + d.len() == rest.len()));
                if is_common_prefix {
                    Resume::Prefix(marker)
                } else {
                    Resume::Key(marker)
                }
            });
        let page = list_page(
            &bucket.read().objects,
            &prefix,
            delimiter.as_deref(),
            after.as_ref(),
            max,
        );
        let enc = Encoder::new(input.encoding_type.as_ref());
        let next_marker = page.next.as_ref().map(|r| match r {
            Resume::Key(s) | Resume::Prefix(s) => enc.apply(s),
        });
        let (contents, common_prefixes) = to_dto(page, &enc);
        Ok(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(enc.apply(&prefix)),
            delimiter: delimiter.map(|d| enc.apply(&d)),
            marker: Some(input.marker.map(|m| enc.apply(&m)).unwrap_or_default()),
            max_keys: Some(count(max)),
            is_truncated: Some(next_marker.is_some()),
            next_marker,
            contents: Some(contents),
            common_prefixes: Some(common_prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(keys: &[&str]) -> BTreeMap<String, ObjectMeta> {
        keys.iter()
            .map(|k| {
                let meta = ObjectMeta {
                    key: (*k).to_owned(),
                    size: 0,
                    etag: String::new(),
                    last_modified_ms: 0,
                    content_type: None,
                    metadata: BTreeMap::new(),
                    part_sizes: Vec::new(),
                };
                ((*k).to_owned(), meta)
            })
            .collect()
    }

    fn all_pages(
        map: &BTreeMap<String, ObjectMeta>,
        prefix: &str,
        delim: Option<&str>,
        max: usize,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = list_page(map, prefix, delim, after.as_ref(), max);
            assert!(page.objects.len() + page.prefixes.len() <= max);
            out.extend(page.objects.iter().map(|m| m.key.clone()));
            out.extend(page.prefixes.iter().map(|p| format!("{p}*")));
            match page.next {
                Some(next) => after = Some(next),
                None => return out,
            }
        }
    }

    #[test]
    fn markers_and_siblings_coexist() {
        let map = index(&["a", "a/", "a/b", "a0", "b/c/d", "b/e"]);
        let mut got = all_pages(&map, "", Some("/"), 1);
        got.sort();
        assert_eq!(got, ["a", "a/*", "a0", "b/*"]);
        assert_eq!(all_pages(&map, "a/", Some("/"), 1000), ["a/", "a/b"]);
        assert_eq!(all_pages(&map, "b/", Some("/"), 1), ["b/c/*", "b/e"]);
    }

    #[test]
    fn successor_skips_exactly_the_prefix() {
        assert_eq!(after_prefix("a/"), Bound::Included("a0".to_owned()));
        assert_eq!(
            after_prefix("x\u{d7ff}"),
            Bound::Included("x\u{e000}".to_owned())
        );
        assert_eq!(
            after_prefix("\u{10ffff}"),
            Bound::Excluded("\u{10ffff}".to_owned())
        );
        // A delimiter ending in the last code point has no successor: skipped key by key.
        let map = index(&["a\u{10ffff}x", "a\u{10ffff}y", "b"]);
        assert_eq!(
            all_pages(&map, "", Some("\u{10ffff}"), 1),
            ["a\u{10ffff}*", "b"]
        );
    }

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        for r in [Resume::Key("k/é".into()), Resume::Prefix("p/".into())] {
            assert_eq!(decode_token(&encode_token(&r)).ok(), Some(r));
        }
        assert!(decode_token("").is_err());
        assert!(decode_token("zz").is_err());
        assert!(decode_token("kzz").is_err());
    }
}
