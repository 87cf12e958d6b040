//! Tolerance for S3-compatible servers that bend the protocol where the SDK is strict.
//!
//! gofakes3 (the S3 server inside `rclone serve s3`, among others) answers
//! CreateMultipartUpload with an `<InitiateMultipartUpload>` root element where S3 sends
//! `<InitiateMultipartUploadResult>`. boto3 and rclone ignore the root's name; aws-sdk-s3
//! rejects the response, so every multipart upload would fail. The interceptor renames
//! that one root element in that one operation's successful responses before the SDK
//! parses them; every other response passes through untouched.

use std::pin::Pin;
use std::task::{Context, Poll};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};

/// Largest CreateMultipartUpload response read into memory for the rewrite (real ones are
/// a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

const OPEN_BAD: &[u8] = b"<InitiateMultipartUpload";
const OPEN_GOOD: &[u8] = b"<InitiateMultipartUploadResult";
const CLOSE_BAD: &[u8] = b"</InitiateMultipartUpload>";
const CLOSE_GOOD: &[u8] = b"</InitiateMultipartUploadResult>";

/// Renames gofakes3's CreateMultipartUpload root element to the one S3 sends.
#[derive(Debug, Default)]
pub struct MultipartRootFix;

impl Intercept for MultipartRootFix {
    fn name(&self) -> &'static str {
        "MultipartRootFix"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let is_create = cfg
            .load::<Metadata>()
            .is_some_and(|m| m.name() == "CreateMultipartUpload");
        if !is_create || !context.response().status().is_success() {
            return Ok(());
        }
        let body = std::mem::replace(context.response_mut().body_mut(), SdkBody::taken());
        *context.response_mut().body_mut() = SdkBody::from_body_1_x(Rewritten {
            inner: body,
            buffer: BytesMut::new(),
            done: false,
        });
        Ok(())
    }
}

/// Renames the root element if it is gofakes3's; anything else is returned unchanged.
pub fn fix_root(xml: &[u8]) -> Bytes {
    let Some(open) = find(xml, OPEN_BAD) else {
        return Bytes::copy_from_slice(xml);
    };
    // `<InitiateMultipartUploadResult` also starts with the bad name: only a name that
    // ends right there (`>`, whitespace or `/`) is gofakes3's.
    let after = xml.get(open + OPEN_BAD.len()).copied();
    if !matches!(after, Some(b'>' | b' ' | b'\t' | b'\r' | b'\n' | b'/')) {
        return Bytes::copy_from_slice(xml);
    }
    let mut out = Vec::with_capacity(xml.len() + 12);
    out.extend_from_slice(&xml[..open]);
    out.extend_from_slice(OPEN_GOOD);
    let rest = &xml[open + OPEN_BAD.len()..];
    match find(rest, CLOSE_BAD) {
        Some(close) => {
            out.extend_from_slice(&rest[..close]);
            out.extend_from_slice(CLOSE_GOOD);
            out.extend_from_slice(&rest[close + CLOSE_BAD.len()..]);
        }
        None => out.extend_from_slice(rest),
    }
    Bytes::from(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A response body read whole (bounded), then handed on rewritten by [`fix_root`].
struct Rewritten {
    inner: SdkBody,
    buffer: BytesMut,
    done: bool,
}

impl Body for Rewritten {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if this.buffer.len() + data.len() > MAX_BODY {
                            return Poll::Ready(Some(Err(
                                "CreateMultipartUpload response is implausibly large".into(),
                            )));
                        }
                        this.buffer.extend_from_slice(&data);
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let fixed = fix_root(&this.buffer);
                    this.buffer = BytesMut::new();
                    return Poll::Ready(Some(Ok(Frame::data(fixed))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_gofakes3_root() {
        let xml = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InitiateMultipartUpload>\n  <Bucket>b</Bucket>\n  <Key>x</Key>\n  <UploadId>u-1</UploadId>\n</InitiateMultipartUpload>";
        let fixed = fix_root(xml);
        let text = std::str::from_utf8(&fixed).unwrap_or("");
        assert!(text.contains("<InitiateMultipartUploadResult>\n  <Bucket>"));
        assert!(text.ends_with("</InitiateMultipartUploadResult>"));
        assert!(text.contains("<UploadId>u-1</UploadId>"));
    }

    #[test]
    fn keeps_namespace_attributes() {
        let xml = b"<InitiateMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><UploadId>u</UploadId></InitiateMultipartUpload>";
        let fixed = fix_root(xml);
        assert_eq!(
            &fixed[..],
            &b"<InitiateMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><UploadId>u</UploadId></InitiateMultipartUploadResult>"[..]
        );
    }

    #[test]
    fn leaves_s3_responses_alone() {
        let xml = b"<InitiateMultipartUploadResult><UploadId>u</UploadId></InitiateMultipartUploadResult>";
        assert_eq!(&fix_root(xml)[..], &xml[..]);
        assert_eq!(&fix_root(b"")[..], b"");
        assert_eq!(&fix_root(b"<Error/>")[..], b"<Error/>");
    }
}
