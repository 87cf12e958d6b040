//! SFTP bytes from an arbitrary client, from the channel to the reply.
//!
//! Input: one byte choosing how the stream is cut into channel messages, then the stream.
//! The stream goes through [`Framer`] in those pieces; every frame is decoded with
//! [`decode`] (paths, attributes and extension payloads included) and then handed to a
//! real [`Session`], the dispatcher, whose storage is a `UserStore` over an aws-sdk-s3
//! client. The client's HTTP connector answers in-process with canned S3 responses
//! ([`FakeS3`]), so everything above the HTTP layer is the production code: request
//! validation, the handle table and its limits, path parsing and the jail, `Upload::write`
//! with its reordering, `Download::read`, listing, and the replies.
//!
//! Must never panic. Framing must give back exactly the bytes that went in, frames never
//! exceed the cap, and every reply is one well-formed packet no larger than `MAX_PACKET`
//! that carries the request's id.
//!
//! Shared by the fuzz target and by `tests/fuzz_corpus.rs`, which replays the corpus.
use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_smithy_runtime_api::client::http::{
    http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::http::StatusCode as HttpStatus;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use russh_sftp::protocol::{Name, Packet};
use s3sftp::sftp::attrs;
use s3sftp::sftp::codec::{self, decode, FrameError, Framer, Reader, Request, MAX_PACKET};
use s3sftp::sftp::{Session, SessionLimits};
use s3sftp::storage::{Entry, EntryKind, Storage, TransferSettings, UserStore, VirtualPath};

/// The framer's cap (`codec::MAX_FRAME`): clients count only the payload of a WRITE.
const MAX_FRAME: usize = MAX_PACKET as usize + 16 * 1024;

/// One input; panics when a promise is broken.
pub fn check(input: &[u8]) {
    let Some((&cut, stream)) = input.split_first() else {
        return;
    };
    let frames = frame(cut, stream);
    for f in &frames {
        check_decode(f.clone());
    }
    runtime().block_on(async {
        let mut session = Session::new(store().await, "fuzz", limits());
        for f in frames {
            let request = decode(f.clone());
            let reply = session.handle(f).await;
            check_reply(&request, &reply);
        }
        session.close_all().await;
    });
}

/// Pushes `stream` through a [`Framer`] in pieces chosen by `cut` and checks that the
/// frames are exactly the stream's length-prefixed packets.
fn frame(cut: u8, stream: &[u8]) -> Vec<Bytes> {
    let mut framer = Framer::default();
    let mut frames = Vec::new();
    let mut pushed = 0usize;
    let mut consumed = 0usize;
    let mut rng = u64::from(cut) | 0x9e37_79b9_0000_0000;
    while pushed < stream.len() {
        let piece = if cut == 0 {
            stream.len()
        } else {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            1 + (rng % (u64::from(cut) * 4)) as usize
        };
        let end = (pushed + piece).min(stream.len());
        framer.push(&stream[pushed..end]);
        pushed = end;
        loop {
            match framer.next_frame() {
                Ok(Some(f)) => {
                    assert!(
                        !f.is_empty() && f.len() <= MAX_FRAME,
                        "frame of {}",
                        f.len()
                    );
                    let header = &stream[consumed..consumed + 4];
                    assert_eq!(
                        u32::from_be_bytes(header.try_into().unwrap()) as usize,
                        f.len()
                    );
                    consumed += 4;
                    assert_eq!(&stream[consumed..consumed + f.len()], &f[..]);
                    consumed += f.len();
                    frames.push(f);
                }
                Ok(None) => {
                    let rest = &stream[consumed..pushed];
                    if rest.len() >= 4 {
                        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                        assert!(rest.len() < 4 + len, "a complete frame was not returned");
                    }
                    break;
                }
                Err(e) => {
                    let header = &stream[consumed..consumed + 4];
                    let len = u32::from_be_bytes(header.try_into().unwrap()) as usize;
                    match e {
                        FrameError::TooLarge(n) => assert!(n == len && n > MAX_FRAME),
                        FrameError::Empty => assert_eq!(len, 0),
                    }
                    // The session ends here: no later bytes are read.
                    return frames;
                }
            }
        }
    }
    frames
}

/// Decodes one frame and everything inside it that the session would look at.
fn check_decode(f: Bytes) {
    let request = decode(f.clone());
    match &request {
        Request::Write {
            id,
            handle,
            offset: _,
            data,
        } => {
            assert_eq!(f[0], codec::SSH_FXP_WRITE);
            assert_eq!(&f[1..5], &id.to_be_bytes());
            assert!(1 + 4 + 4 + handle.len() + 8 + 4 + data.len() <= f.len());
        }
        Request::Malformed { id, .. } => {
            assert_eq!(id.is_some(), f.len() >= 5);
        }
        Request::Packet(p) => {
            let mut paths: Vec<&str> = Vec::new();
            match p {
                Packet::Open(o) => paths.push(&o.filename),
                Packet::Stat(s) => paths.push(&s.path),
                Packet::Lstat(s) => paths.push(&s.path),
                Packet::SetStat(s) => paths.push(&s.path),
                Packet::OpenDir(s) => paths.push(&s.path),
                Packet::Remove(s) => paths.push(&s.filename),
                Packet::MkDir(s) => paths.push(&s.path),
                Packet::RmDir(s) => paths.push(&s.path),
                Packet::RealPath(s) => paths.push(&s.path),
                Packet::Rename(s) => paths.extend([s.oldpath.as_str(), s.newpath.as_str()]),
                Packet::Extended(e) => {
                    let mut r = Reader::new(e.data.clone());
                    let mut total = 0;
                    while let Some(s) = r.string() {
                        total += 4 + s.len();
                        assert!(total <= e.data.len());
                        if let Ok(s) = std::str::from_utf8(&s) {
                            check_path(s);
                        }
                    }
                }
                _ => {}
            }
            for path in paths {
                check_path(path);
                check_listing_entry(path, p.get_request_id());
            }
        }
    }
}

fn check_path(raw: &str) {
    if let Ok(v) = VirtualPath::parse_str(raw) {
        assert!(v.as_str().starts_with('/'));
        assert_eq!(VirtualPath::parse_str(v.as_str()).as_ref(), Ok(&v));
    }
}

/// A client-chosen name as a listing entry: the long name and attributes of a READDIR
/// reply, with a time anywhere S3 can report (years 1 to 9999).
fn check_listing_entry(name: &str, seed: u32) {
    const YEAR_9999: u64 = 253_402_300_799;
    const YEAR_1: u64 = 62_135_596_800;
    let secs = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let modified = if seed & 1 == 0 {
        UNIX_EPOCH + Duration::from_secs(secs % YEAR_9999)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs % YEAR_1)
    };
    let entry = Entry {
        name: name.to_string(),
        kind: if seed & 2 == 0 {
            EntryKind::File
        } else {
            EntryKind::Dir
        },
        size: u64::from(seed) << (seed % 32),
        modified: Some(modified),
    };
    let file = attrs::file(&entry, "fuzz", std::time::SystemTime::now());
    assert!(file.longname.ends_with(name));
    let reply = codec::encode(Packet::Name(Name {
        id: seed,
        files: vec![file],
    }));
    assert_eq!(
        u32::from_be_bytes(reply[..4].try_into().unwrap()) as usize,
        reply.len() - 4
    );
}

/// Every reply is one length-prefixed packet of a reply type, within the advertised
/// packet size, carrying the request's id.
fn check_reply(request: &Request, reply: &Bytes) {
    assert!(reply.len() >= 5, "reply of {} bytes", reply.len());
    let len = u32::from_be_bytes(reply[..4].try_into().unwrap()) as usize;
    assert_eq!(len, reply.len() - 4);
    assert!(len <= MAX_PACKET as usize, "reply of {len} bytes");
    let kind = reply[4];
    let id = (reply.len() >= 9).then(|| u32::from_be_bytes(reply[5..9].try_into().unwrap()));
    match request {
        Request::Packet(Packet::Init(_)) => {
            assert_eq!(kind, 2, "INIT must be answered with VERSION");
        }
        Request::Packet(p) => assert_eq!(id, Some(p.get_request_id())),
        Request::Write { id: want, .. } => assert_eq!(id, Some(*want)),
        Request::Malformed { id: want, .. } => assert_eq!(id, Some(want.unwrap_or(0))),
    }
    if kind == codec::SSH_FXP_EXTENDED_REPLY {
        assert_eq!((len - 5) % 8, 0);
        return;
    }
    let mut body = reply.slice(4..);
    let packet = Packet::try_from(&mut body)
        .unwrap_or_else(|e| panic!("reply type {kind} does not decode: {e}"));
    assert!(
        matches!(
            packet,
            Packet::Version(_)
                | Packet::Status(_)
                | Packet::Handle(_)
                | Packet::Data(_)
                | Packet::Name(_)
                | Packet::Attrs(_)
        ),
        "{packet:?}"
    );
}

fn limits() -> SessionLimits {
    SessionLimits {
        max_handles: 8,
        max_uploads: 2,
        idle_timeout: Duration::from_secs(600),
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// A fresh user view for each input (it holds the session's metadata cache, which must
/// not carry over from one input to the next), over one shared client.
async fn store() -> UserStore {
    static STORAGE: OnceLock<Arc<Storage>> = OnceLock::new();
    STORAGE
        .get_or_init(|| {
            let conf = aws_sdk_s3::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .credentials_provider(Credentials::new("fuzz", "fuzz", None, None, "fuzz"))
                .endpoint_url("http://fake-s3.invalid")
                .force_path_style(true)
                .http_client(http_client_fn(|_, _| SharedHttpConnector::new(FakeS3)))
                .retry_config(RetryConfig::disabled())
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
                .build();
            let client = aws_sdk_s3::Client::from_conf(conf);
            let settings = TransferSettings {
                part_size: 5 * 1024 * 1024,
                transfer_budget: 16 * 1024 * 1024,
                global_budget: 64 * 1024 * 1024,
                download_chunk: 64 * 1024,
                // Small, so inputs of a few KiB reach both sides of the window.
                reorder_window: 4096,
                ..TransferSettings::default()
            };
            Storage::new(client, BUCKET, settings)
        })
        .user_store("users/fuzz/")
}

const BUCKET: &str = "fuzz-bucket";
/// Size of every object that "exists".
const OBJECT_SIZE: u64 = 1000;
const ETAG: &str = "\"0123456789abcdef0123456789abcdef\"";

/// Canned S3 answers, stateless, so every input behaves the same on every run:
/// - an object exists (HEAD, GET, copy source) when its last path segment starts with
///   `e`: 1000 bytes, a fixed ETag;
/// - a directory exists when its last segment starts with `d` (and the root): a listing
///   of it holds its marker, a file `efile` and a subdirectory `dsub/`;
/// - PUT, copies, multipart calls and DELETE succeed.
#[derive(Debug, Clone, Copy)]
struct FakeS3;

impl HttpConnector for FakeS3 {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        HttpConnectorFuture::ready(Ok(answer(&request)))
    }
}

fn answer(req: &HttpRequest) -> HttpResponse {
    let uri = req.uri();
    let after_host = uri.split_once("://").map_or(uri, |(_, r)| r);
    let path_and_query = after_host.find('/').map_or("/", |i| &after_host[i..]);
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let key = percent_decode(
        path.strip_prefix(&format!("/{BUCKET}/"))
            .unwrap_or_default(),
    );
    let exists = |k: &str| {
        k.trim_end_matches('/')
            .rsplit('/')
            .next()
            .is_some_and(|s| s.starts_with('e'))
    };
    let param = |name: &str| {
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| percent_decode(v))
        })
    };
    match req.method() {
        "HEAD" if exists(&key) => {
            let mut r = response(200, "");
            r.headers_mut().insert("content-length", OBJECT_SIZE.to_string());
            r.headers_mut().insert("etag", ETAG);
            r.headers_mut()
                .insert("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT");
            r
        }
        "HEAD" => response(404, ""),
        "GET" if param("list-type").is_some() => {
            let prefix = param("prefix").unwrap_or_default();
            let dir = prefix.trim_end_matches('/');
            let is_dir = prefix == "users/fuzz/"
                || dir.rsplit('/').next().is_some_and(|s| s.starts_with('d'));
            let mut xml = String::from(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult><Name>fuzz-bucket</Name>",
            );
            xml += &format!("<Prefix>{}</Prefix><IsTruncated>false</IsTruncated>", escape(&prefix));
            if is_dir {
                for (k, size) in [(prefix.clone(), 0), (format!("{prefix}efile"), OBJECT_SIZE)] {
                    xml += &format!(
                        "<Contents><Key>{}</Key><LastModified>2015-10-21T07:28:00.000Z</LastModified><ETag>{}</ETag><Size>{size}</Size></Contents>",
                        escape(&k),
                        escape(ETAG)
                    );
                }
                if param("delimiter").is_some() {
                    xml += &format!(
                        "<CommonPrefixes><Prefix>{}dsub/</Prefix></CommonPrefixes>",
                        escape(&prefix)
                    );
                }
            }
            xml += "</ListBucketResult>";
            response(200, xml)
        }
        "GET" if exists(&key) => {
            let range = req
                .headers()
                .get("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
            let (start, end) = match range {
                Some((a, b)) if a < OBJECT_SIZE && a <= b => (a, b.min(OBJECT_SIZE - 1)),
                Some(_) => return response(416, error_xml("InvalidRange")),
                None => (0, OBJECT_SIZE - 1),
            };
            let body = vec![b'x'; (end - start + 1) as usize];
            let mut r = response(206, body);
            r.headers_mut()
                .insert("content-range", format!("bytes {start}-{end}/{OBJECT_SIZE}"));
            r.headers_mut()
                .insert("content-length", (end - start + 1).to_string());
            r.headers_mut().insert("etag", ETAG);
            r
        }
        "GET" => response(404, error_xml("NoSuchKey")),
        "PUT" if req.headers().get("x-amz-copy-source").is_some() => {
            if param("uploadId").is_some() {
                response(
                    200,
                    format!("<CopyPartResult><ETag>{}</ETag></CopyPartResult>", escape(ETAG)),
                )
            } else {
                response(
                    200,
                    format!(
                        "<CopyObjectResult><ETag>{}</ETag><LastModified>2015-10-21T07:28:00.000Z</LastModified></CopyObjectResult>",
                        escape(ETAG)
                    ),
                )
            }
        }
        "PUT" => {
            let mut r = response(200, "");
            r.headers_mut().insert("etag", ETAG);
            r
        }
        "POST" if param("uploads").is_some() => response(
            200,
            format!(
                "<InitiateMultipartUploadResult><Bucket>{BUCKET}</Bucket><Key>{}</Key><UploadId>fuzz-upload</UploadId></InitiateMultipartUploadResult>",
                escape(&key)
            ),
        ),
        "POST" if param("uploadId").is_some() => response(
            200,
            format!(
                "<CompleteMultipartUploadResult><Bucket>{BUCKET}</Bucket><Key>{}</Key><ETag>{}</ETag></CompleteMultipartUploadResult>",
                escape(&key),
                escape(ETAG)
            ),
        ),
        "DELETE" => response(204, ""),
        _ => response(405, error_xml("MethodNotAllowed")),
    }
}

fn response(status: u16, body: impl Into<SdkBody>) -> HttpResponse {
    HttpResponse::new(HttpStatus::try_from(status).expect("status"), body.into())
}

fn error_xml(code: &str) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{code}</Message></Error>")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
