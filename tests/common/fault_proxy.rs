//! A fault-injecting HTTP/1.1 proxy for tests, in front of a plain-HTTP S3 endpoint.
//!
//! Each accepted connection carries exactly one request (`Connection: close` is forced
//! on the request and the response), so every S3 request is seen and classified. A
//! request matching a rule gets that rule's fault instead of (or, for `Truncate`, on top
//! of) the real answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The S3 operation of a request, from its method, path, query and headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    PutObject,
    UploadPart,
    CreateMultipartUpload,
    CompleteMultipartUpload,
    AbortMultipartUpload,
    GetObject,
    HeadObject,
    HeadBucket,
    ListObjectsV2,
    CopyObject,
    UploadPartCopy,
    DeleteObject,
    Other,
}

/// What a matching request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// An S3 error answer: 503 is `SlowDown`, anything else `InternalError`; the answer
    /// carries `x-amz-request-id: FAULT-<n>`.
    Status(u16),
    /// The connection is reset as soon as the request head is read.
    Reset,
    /// The request is read and never answered, until the client gives up.
    Stall,
    /// The real answer, with its body cut off after this many bytes.
    Truncate(usize),
    /// The real answer up to this many bytes of body, then silence with the connection
    /// held open, until the client gives up.
    StallBody(usize),
    /// The request goes upstream with the first byte of its body flipped: what a body
    /// corrupted on the way looks like to S3.
    CorruptBody,
    /// The request goes upstream; a 404 answer becomes this status (403 is
    /// `AccessDenied`): what a policy that grants `s3:ListBucket` only under a prefix
    /// makes S3 answer to a HEAD or GET of a missing key.
    NotFoundAs(u16),
}

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub op: Op,
    /// The request target (path and query).
    pub target: String,
    /// Every header, names in lower case, in order.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Which requests get a fault, and how many.
pub struct Rule {
    pub op: Op,
    /// Only requests whose path contains this (e.g. a file name).
    pub path_contains: Option<String>,
    pub fault: Fault,
    /// How many matching requests get it (`u32::MAX`: all of them).
    pub remaining: u32,
    /// The rule ends at this time, whatever is left of `remaining`.
    pub until: Option<Instant>,
}

impl Rule {
    fn active(&self) -> bool {
        self.remaining > 0 && self.until.is_none_or(|t| Instant::now() < t)
    }
}

#[derive(Default)]
struct State {
    rules: Mutex<Vec<Rule>>,
    hits: Mutex<HashMap<Op, u32>>,
    /// Faults given, by operation and fault.
    given: Mutex<HashMap<(Op, Fault), u32>>,
    /// The `x-amz-content-sha256` header of every request, by operation.
    payload_hashes: Mutex<HashMap<Op, Vec<String>>>,
    /// Whether requests are kept in `seen` (off by default: a soak run sends many).
    record: std::sync::atomic::AtomicBool,
    /// Every request since recording began, in arrival order.
    seen: Mutex<Vec<Seen>>,
    next_id: AtomicU64,
}

impl State {
    /// Counts the request and takes the first rule that matches it, if any.
    fn take(&self, op: Op, path: &str) -> Option<Fault> {
        *self.hits.lock().unwrap().entry(op).or_default() += 1;
        let mut rules = self.rules.lock().unwrap();
        let rule = rules.iter_mut().find(|r| {
            r.op == op && r.active() && r.path_contains.as_deref().is_none_or(|p| path.contains(p))
        })?;
        if rule.remaining != u32::MAX {
            rule.remaining -= 1;
        }
        *self
            .given
            .lock()
            .unwrap()
            .entry((op, rule.fault))
            .or_default() += 1;
        Some(rule.fault)
    }
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// A proxy on 127.0.0.1:0 forwarding to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("the fault proxy speaks plain HTTP only")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(State::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (st, up) = (st.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _ = handle(st, conn, up).await;
                });
            }
        });
        FaultProxy { addr, state, task }
    }

    /// The endpoint URL to give the S3 client.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next `count` requests of `op` get `fault` (`u32::MAX`: all of them).
    pub fn add(&self, op: Op, fault: Fault, count: u32) {
        self.add_rule(op, None, fault, count);
    }

    /// Like [`add`](Self::add), for requests whose path contains `path_contains` only.
    pub fn add_for(&self, op: Op, path_contains: &str, fault: Fault, count: u32) {
        self.add_rule(op, Some(path_contains.to_string()), fault, count);
    }

    fn add_rule(&self, op: Op, path_contains: Option<String>, fault: Fault, count: u32) {
        self.push(Rule {
            op,
            path_contains,
            fault,
            remaining: count,
            until: None,
        });
    }

    /// Adds `rule` (the rules that have run out are dropped).
    pub fn push(&self, rule: Rule) {
        let mut rules = self.state.rules.lock().unwrap();
        rules.retain(Rule::active);
        rules.push(rule);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.state.rules.lock().unwrap().clear();
    }

    /// Requests seen so far (forwarded or not), by operation.
    pub fn all_hits(&self) -> HashMap<Op, u32> {
        self.state.hits.lock().unwrap().clone()
    }

    /// Requests of `op` seen so far (forwarded or not).
    pub fn hits(&self, op: Op) -> u32 {
        self.all_hits().get(&op).copied().unwrap_or(0)
    }

    /// Every fault given so far: operation, fault and count.
    pub fn given(&self) -> Vec<(Op, Fault, u32)> {
        let given = self.state.given.lock().unwrap();
        given
            .iter()
            .map(|(&(op, fault), &n)| (op, fault, n))
            .collect()
    }

    /// Requests of `op` that got a fault so far.
    pub fn injected(&self, op: Op) -> u32 {
        self.given()
            .iter()
            .filter(|(o, _, _)| *o == op)
            .map(|(_, _, n)| n)
            .sum()
    }

    /// Keeps every request from now on, for [`requests`](Self::requests).
    pub fn record_requests(&self) {
        self.state.record.store(true, Ordering::Relaxed);
    }

    /// Every `op` request since [`record_requests`](Self::record_requests), with its headers.
    pub fn requests(&self, op: Op) -> Vec<Seen> {
        let seen = self.state.seen.lock().unwrap();
        seen.iter().filter(|s| s.op == op).cloned().collect()
    }

    /// The `x-amz-content-sha256` header of each `op` request so far (`""` when absent).
    pub fn payload_hashes(&self, op: Op) -> Vec<String> {
        let hashes = self.state.payload_hashes.lock().unwrap();
        hashes.get(&op).cloned().unwrap_or_default()
    }
}

/// Classifies a request.
pub fn classify(method: &str, target: &str, copy_source: bool) -> Op {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let has = |name: &str| {
        query
            .split('&')
            .any(|p| p == name || p.starts_with(&format!("{name}=")))
    };
    // Path style: `/bucket` is a bucket request, `/bucket/key...` an object request.
    let object = path.trim_start_matches('/').contains('/');
    match method {
        "PUT" if has("partNumber") && has("uploadId") => {
            if copy_source {
                Op::UploadPartCopy
            } else {
                Op::UploadPart
            }
        }
        "PUT" if copy_source => Op::CopyObject,
        "PUT" if object => Op::PutObject,
        "POST" if has("uploads") => Op::CreateMultipartUpload,
        "POST" if has("uploadId") => Op::CompleteMultipartUpload,
        "DELETE" if has("uploadId") => Op::AbortMultipartUpload,
        "DELETE" if object => Op::DeleteObject,
        "GET" if has("list-type") => Op::ListObjectsV2,
        "GET" if object => Op::GetObject,
        "HEAD" if path.trim_matches('/').contains('/') => Op::HeadObject,
        "HEAD" => Op::HeadBucket,
        _ => Op::Other,
    }
}

/// Reads up to the end of an HTTP head; returns the head and any bytes read past it.
async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let n = r.read(&mut chunk).await?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The head with any `Connection`/`Keep-Alive` header replaced by `Connection: close`.
fn close_head(head: &str) -> String {
    let mut out = String::with_capacity(head.len() + 20);
    for line in head.trim_end().split("\r\n") {
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        if name != "connection" && name != "keep-alive" {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn handle(state: Arc<State>, mut client: TcpStream, upstream: String) -> std::io::Result<()> {
    let (head, rest) = read_head(&mut client).await?;
    let mut request_line = head.split("\r\n").next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_string();
    let target = request_line.next().unwrap_or("").to_string();
    let op = classify(
        &method,
        &target,
        header(&head, "x-amz-copy-source").is_some(),
    );
    let hash = header(&head, "x-amz-content-sha256")
        .unwrap_or("")
        .to_string();
    state
        .payload_hashes
        .lock()
        .unwrap()
        .entry(op)
        .or_default()
        .push(hash);
    if state.record.load(Ordering::Relaxed) {
        let headers = head
            .split("\r\n")
            .skip(1)
            .filter_map(|line| {
                let (n, v) = line.split_once(':')?;
                Some((n.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect();
        state.seen.lock().unwrap().push(Seen {
            op,
            target: target.clone(),
            headers,
        });
    }
    let fault = state.take(op, &target);
    let body_len: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let plain = Upstream {
        truncate: None,
        stall: false,
        not_found_as: None,
        head_request: method == "HEAD",
    };
    match fault {
        None => forward(client, &upstream, &head, rest, plain).await,
        Some(Fault::Truncate(n)) => {
            let how = Upstream {
                truncate: Some(n),
                ..plain
            };
            forward(client, &upstream, &head, rest, how).await
        }
        Some(Fault::StallBody(n)) => {
            let how = Upstream {
                truncate: Some(n),
                stall: true,
                ..plain
            };
            forward(client, &upstream, &head, rest, how).await
        }
        Some(Fault::NotFoundAs(status)) => {
            let how = Upstream {
                not_found_as: Some(status),
                ..plain
            };
            forward(client, &upstream, &head, rest, how).await
        }
        Some(Fault::CorruptBody) => {
            let mut rest = rest;
            if rest.is_empty() && body_len > 0 {
                let mut first = [0u8; 4096];
                let n = client.read(&mut first).await?;
                rest.extend_from_slice(&first[..n]);
            }
            if let Some(byte) = rest.first_mut() {
                *byte ^= 0xff;
            }
            forward(client, &upstream, &head, rest, plain).await
        }
        Some(Fault::Reset) => {
            client.set_zero_linger()?;
            drop(client);
            Ok(())
        }
        Some(Fault::Stall) => {
            // Hold the connection, reading whatever comes, until the client hangs up.
            let mut sink = [0u8; 8192];
            while client.read(&mut sink).await? > 0 {}
            Ok(())
        }
        Some(Fault::Status(status)) => {
            // Take in the whole request body first, so closing does not reset the
            // connection before the client has read the answer.
            let left = body_len.saturating_sub(rest.len()) as u64;
            let mut body = (&mut client).take(left);
            let mut sink = tokio::io::sink();
            let drain = tokio::io::copy(&mut body, &mut sink);
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
            let answer = error_answer(&state, status, method == "HEAD");
            client.write_all(answer.as_bytes()).await?;
            client.shutdown().await?;
            let mut sink = [0u8; 8192];
            let linger = async { while client.read(&mut sink).await.unwrap_or(0) > 0 {} };
            let _ = tokio::time::timeout(Duration::from_secs(5), linger).await;
            Ok(())
        }
    }
}

/// An S3 error answer of `status` (503 `SlowDown`, 403 `AccessDenied`, anything else
/// `InternalError`), without a body for a HEAD.
fn error_answer(state: &State, status: u16, head_request: bool) -> String {
    let id = format!(
        "FAULT-{}",
        state.next_id.fetch_add(1, Ordering::Relaxed) + 1
    );
    let (reason, code, message) = match status {
        503 => ("Slow Down", "SlowDown", "Please reduce your request rate."),
        403 => ("Forbidden", "AccessDenied", "Access Denied"),
        _ => (
            "Internal Server Error",
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>{id}</RequestId></Error>"
    );
    let mut answer = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n\
         Content-Length: {}\r\nx-amz-request-id: {id}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_request {
        answer.push_str(&body);
    }
    answer
}

/// How [`forward`] passes the answer back.
#[derive(Clone, Copy)]
struct Upstream {
    /// The answer's body is cut after this many bytes (then the connection is closed,
    /// or with `stall` held open until the client leaves).
    truncate: Option<usize>,
    stall: bool,
    /// A 404 answer is replaced by an error answer of this status.
    not_found_as: Option<u16>,
    /// The request is a HEAD (its answers have no body).
    head_request: bool,
}

/// Sends the request upstream and the answer back, as `how` says.
async fn forward(
    client: TcpStream,
    upstream: &str,
    head: &str,
    rest: Vec<u8>,
    how: Upstream,
) -> std::io::Result<()> {
    let Upstream {
        truncate, stall, ..
    } = how;
    let up = TcpStream::connect(upstream).await?;
    let (mut up_read, mut up_write) = up.into_split();
    let (mut client_read, mut client_write) = client.into_split();
    up_write.write_all(close_head(head).as_bytes()).await?;
    up_write.write_all(&rest).await?;
    let mut requests = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut up_write).await;
        let _ = up_write.shutdown().await;
    });
    let result = async {
        // Interim answers (100 Continue) pass through as they are.
        let (mut head, mut extra) = read_head(&mut up_read).await?;
        while head.starts_with("HTTP/1.1 1") {
            client_write.write_all(head.as_bytes()).await?;
            let mut more = std::io::Cursor::new(extra).chain(&mut up_read);
            (head, extra) = read_head(&mut more).await?;
        }
        if let Some(status) = how
            .not_found_as
            .filter(|_| head.starts_with("HTTP/1.1 404"))
        {
            // A fresh state: the request ids of these answers need not be unique.
            let answer = error_answer(&State::default(), status, how.head_request);
            client_write.write_all(answer.as_bytes()).await?;
            return client_write.shutdown().await;
        }
        client_write.write_all(close_head(&head).as_bytes()).await?;
        match truncate {
            None => {
                client_write.write_all(&extra).await?;
                tokio::io::copy(&mut up_read, &mut client_write).await?;
                client_write.shutdown().await
            }
            Some(n) => {
                let mut rest = std::io::Cursor::new(extra)
                    .chain(&mut up_read)
                    .take(n as u64);
                tokio::io::copy(&mut rest, &mut client_write).await?;
                client_write.flush().await
            }
        }
    }
    .await;
    if stall && result.is_ok() {
        // The request side ends when the client hangs up.
        let _ = (&mut requests).await;
        drop(client_write);
    }
    requests.abort();
    result
}

use super::bucket::BucketView;
use super::own_store::own_store;

/// Fewer, shorter attempts than the defaults, so exhausted retries come quickly.
pub fn quick_retries(c: &mut s3sftp::server::ServerConfig, attempts: u32, timeout: Duration) {
    let s3 = c.s3.as_mut().expect("s3 settings");
    s3.max_attempts = attempts;
    s3.attempt_timeout = timeout;
}

/// A test server whose S3 goes through a fault proxy, in front of the external S3 (if
/// `S3SFTP_TEST_S3_*` names a plain-HTTP one) or an embedded store owned by the test.
pub async fn start_behind_proxy(
    tweak: impl FnOnce(&mut s3sftp::server::ServerConfig),
) -> (super::TestServer, FaultProxy, BucketView) {
    let (direct, view) = own_store("faults").await;
    let proxy = FaultProxy::start(direct.endpoint.as_deref().expect("an S3 endpoint")).await;
    // The directory-marker probe runs here, straight at the store: the proxy counts and
    // faults requests from its start, and the tests count theirs.
    let markers = s3sftp::storage::dir_markers::resolve(
        s3sftp::storage::DirMarkers::Auto,
        &s3sftp::storage::client::build_client(&direct).await,
        &direct.bucket,
        &Default::default(),
        "",
        false,
    )
    .await;
    let mut proxied = direct;
    proxied.endpoint = Some(proxy.endpoint());
    let t = super::TestServer::start_with(move |c| {
        c.s3 = Some(proxied);
        c.transfer.dir_markers = markers;
        tweak(c);
    })
    .await;
    (t, proxy, view)
}
