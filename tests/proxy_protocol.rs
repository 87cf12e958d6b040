//! PROXY protocol on the SSH listener, end to end: a real server over a real S3, OpenSSH
//! `sftp` and the russh client connecting through a stand-in load balancer (a relay that
//! writes a v1 or v2 header claiming some client address, then pipes bytes both ways).
//!
//! The tests that search the logs run each in a process of its own ([`Capture::alone`]):
//! they install the global tracing subscriber that captures them.

use std::net::SocketAddr;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::log_capture::Capture;
use crate::common::*;
use s3sftp::server::ServerConfig;
use s3sftp::ssh::ProxySettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Runs the calling test alone in a process that captures the logs at `s3sftp=debug`;
/// `false` in the test binary's own process once that passed: the caller returns.
async fn in_own_process() -> bool {
    Capture::alone("s3sftp=debug").await.is_some()
}

fn capture() -> &'static Capture {
    Capture::installed()
}

/// Turns PROXY protocol on, trusting `networks`, with a header deadline of `timeout`.
fn trusting(c: &mut ServerConfig, networks: &[&str], timeout: Duration) {
    let trusted = networks
        .iter()
        .map(|n| n.parse().expect("network"))
        .collect();
    c.ssh.proxy_protocol = Some(ProxySettings {
        trusted,
        header_timeout: timeout,
    });
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("address")
}

/// The address the load balancer listens on, as its headers report it.
fn balancer() -> SocketAddr {
    addr("192.0.2.1:22")
}

fn v1_header(client: SocketAddr) -> Vec<u8> {
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    let destination = match client {
        SocketAddr::V4(_) => balancer(),
        SocketAddr::V6(_) => addr("[2001:db8::1]:22"),
    };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        client.ip(),
        destination.ip(),
        client.port(),
        destination.port()
    )
    .into_bytes()
}

/// A v2 PROXY header with the TLVs an AWS NLB adds (VPC endpoint id) and some padding.
fn v2_header(client: SocketAddr) -> Vec<u8> {
    let mut payload = Vec::new();
    let family = match client {
        SocketAddr::V4(c) => {
            payload.extend_from_slice(&c.ip().octets());
            payload.extend_from_slice(&[192, 0, 2, 1]);
            0x11
        }
        SocketAddr::V6(c) => {
            payload.extend_from_slice(&c.ip().octets());
            payload.extend_from_slice(
                &"2001:db8::1"
                    .parse::<std::net::Ipv6Addr>()
                    .expect("ip")
                    .octets(),
            );
            0x21
        }
    };
    payload.extend_from_slice(&client.port().to_be_bytes());
    payload.extend_from_slice(&22u16.to_be_bytes());
    for (kind, value) in [
        (0xEA_u8, &b"\x01vpce-08d2bf15fac5001c9"[..]),
        (0x04, &[0u8; 5][..]),
    ] {
        payload.push(kind);
        payload.extend_from_slice(&(value.len() as u16).to_be_bytes());
        payload.extend_from_slice(value);
    }
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, family]);
    header.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    header.extend_from_slice(&payload);
    header
}

/// A stand-in load balancer on a loopback port: for each client it connects to the server
/// from 127.0.0.1, writes `header`, then relays both ways.
struct Relay {
    port: u16,
    /// The local ports of its connections to the server: what the server sees as the peer.
    upstream_ports: Arc<Mutex<Vec<u16>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    async fn start(server_port: u16, header: Vec<u8>) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay bind");
        let port = listener.local_addr().expect("relay addr").port();
        let upstream_ports = Arc::new(Mutex::new(Vec::new()));
        let ports = upstream_ports.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let header = header.clone();
                let ports = ports.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", server_port)).await
                    else {
                        return;
                    };
                    if let Ok(local) = server.local_addr() {
                        ports.lock().expect("ports").push(local.port());
                    }
                    if server.write_all(&header).await.is_err() {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        Relay {
            port,
            upstream_ports,
            task,
        }
    }

    fn upstream_ports(&self) -> Vec<u16> {
        self.upstream_ports.lock().expect("ports").clone()
    }
}

/// Logs in as alice with `password` through `port`; `Ok(false)`: refused.
async fn password_ok(port: u16, password: &str) -> Result<bool, String> {
    let config = Arc::new(russh::client::Config::default());
    let attempt = async {
        let mut handle = russh::client::connect(config, ("127.0.0.1", port), AcceptAll)
            .await
            .map_err(|e| e.to_string())?;
        handle
            .authenticate_password("alice", password)
            .await
            .map(|r| r.success())
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(20), attempt)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Puts a file and gets it back with OpenSSH `sftp` through `port`; checks both copies.
async fn round_trip(t: &TestServer, port: u16, name: &str, seed: u64) {
    let data = random_bytes(300 * 1024, seed);
    let local = t.dir.path().join(name);
    let back = t.dir.path().join(format!("{name}.back"));
    std::fs::write(&local, &data).expect("local file");
    let out: Output = t
        .sftp_at(
            port,
            &t.alice,
            &format!(
                "put {} {name}\nget {name} {}\n",
                local.display(),
                back.display()
            ),
        )
        .await;
    assert!(
        out.status.success(),
        "sftp through the relay: {}",
        stderr(&out)
    );
    let stored = t.s3.object(&format!("{}{name}", t.alice.prefix)).await;
    assert_eq!(stored.map(|d| sha256(&d)), Some(sha256(&data)), "in S3");
    assert_eq!(sha256(&std::fs::read(&back).expect("got")), sha256(&data));
}

fn log_has(needle: &str) -> bool {
    capture().text().contains(needle)
}

/// Waits up to 5 s for a log line holding all of `parts` (some lines come after the client
/// is done).
async fn wait_for_line(parts: &[&str]) -> bool {
    for _ in 0..50 {
        let text = capture().text();
        if text.lines().any(|l| parts.iter().all(|p| l.contains(p))) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn wait_for_log(needle: &str) -> bool {
    wait_for_line(&[needle]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sftp_through_v1_and_v2_headers_uses_the_claimed_address() {
    if !in_own_process().await {
        return;
    }
    let t = TestServer::start_with(|c| trusting(c, &["127.0.0.0/8"], Duration::from_secs(5))).await;
    let v1 = Relay::start(t.port, v1_header(addr("203.0.113.7:40001"))).await;
    let v2 = Relay::start(t.port, v2_header(addr("203.0.113.8:40002"))).await;
    let v2_ipv6 = Relay::start(t.port, v2_header(addr("[2001:db8::7]:40003"))).await;

    round_trip(&t, v1.port, "via-v1.bin", 1).await;
    round_trip(&t, v2.port, "via-v2.bin", 2).await;
    assert_eq!(password_ok(v2_ipv6.port, PASSWORD).await, Ok(true));

    for line in [
        "peer=203.0.113.7:40001 user=alice}",
        "peer=203.0.113.8:40002 user=alice}",
        "peer=[2001:db8::7]:40003 user=alice}",
    ] {
        assert!(
            wait_for_log(line).await,
            "no `{line}` in:\n{}",
            capture().text()
        );
    }
    // The relay's own address is only ever named as the proxy, never as the client.
    let text = capture().text();
    let relayed: Vec<u16> = [&v1, &v2, &v2_ipv6]
        .iter()
        .flat_map(|r| r.upstream_ports())
        .collect();
    assert!(relayed.len() >= 3);
    for port in relayed {
        let socket = format!("127.0.0.1:{port}");
        assert!(
            !text.contains(&format!("peer={socket}")),
            "the relay's socket {socket} is logged as a client:\n{text}"
        );
        assert!(
            text.contains(&format!("proxy={socket}")),
            "the header read names the proxy {socket}:\n{text}"
        );
    }
    assert!(text.contains("PROXY header read peer=203.0.113.7:40001 proxy=127.0.0.1:"));
    assert!(text.contains("version=v1") && text.contains("version=v2"));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_logins_ban_the_claimed_address_not_the_balancer() {
    if !in_own_process().await {
        return;
    }
    let t = TestServer::start_with(|c| {
        trusting(c, &["127.0.0.0/8"], Duration::from_secs(5));
        c.ssh.guard.ban_threshold = 3;
        c.ssh.guard.ban_time = Duration::from_secs(60);
    })
    .await;
    let attacker = Relay::start(t.port, v2_header(addr("203.0.113.20:1000"))).await;
    let other = Relay::start(t.port, v1_header(addr("203.0.113.21:1000"))).await;
    for _ in 0..3 {
        assert_eq!(password_ok(attacker.port, "wrong").await, Ok(false));
    }
    assert!(
        !matches!(password_ok(attacker.port, PASSWORD).await, Ok(true)),
        "the claimed address is banned: even the right password gets no session"
    );
    // Same balancer, another client: unaffected.
    assert_eq!(password_ok(other.port, PASSWORD).await, Ok(true));
    round_trip(&t, other.port, "after-ban.bin", 3).await;

    let text = capture().text();
    assert!(
        text.contains("address banned after repeated failed logins peer=203.0.113.20 "),
        "{text}"
    );
    assert!(
        text.contains("connection refused peer=203.0.113.20:1000 reason=address banned"),
        "{text}"
    );
    assert!(!text.contains("banned after repeated failed logins peer=127.0.0.1"));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allowed_ips_apply_to_the_claimed_address() {
    if !in_own_process().await {
        return;
    }
    let t = TestServer::start_with(|c| trusting(c, &["127.0.0.0/8"], Duration::from_secs(5))).await;
    let users_file = t.dir.path().join("users.json");
    let mut users: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&users_file).expect("read")).expect("json");
    users["users"][0]["allowed_ips"] = serde_json::json!(["203.0.113.0/24"]);
    assert_eq!(users["users"][0]["username"], "alice");
    std::fs::write(&users_file, serde_json::to_vec(&users).expect("json")).expect("write");
    t.server().reload_users();
    let mut reloaded = false;
    for _ in 0..100 {
        let current = t.server().shared().users();
        if current
            .get("alice")
            .is_some_and(|u| !u.allowed_ips.is_empty())
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "users file reloaded");

    let inside = Relay::start(t.port, v1_header(addr("203.0.113.30:5000"))).await;
    let outside = Relay::start(t.port, v2_header(addr("198.51.100.30:5000"))).await;
    assert_eq!(password_ok(inside.port, PASSWORD).await, Ok(true));
    assert_eq!(password_ok(outside.port, PASSWORD).await, Ok(false));
    let text = capture().text();
    assert!(
        text.contains(
            "peer=198.51.100.30:5000 method=\"password\" reason=\"address not in allowed_ips\""
        ),
        "{text}"
    );
    t.shutdown().await;
}

/// Connects straight to the server, sends `bytes`, and returns what came back before the
/// server closed the connection (`None`: still open after 10 s).
async fn send_and_wait_for_close(port: u16, bytes: &[u8], close_write: bool) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.write_all(bytes).await.expect("write");
    if close_write {
        stream.shutdown().await.expect("shutdown");
    }
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trusted_peer_without_a_valid_header_is_closed_and_others_are_served() {
    if !in_own_process().await {
        return;
    }
    let t = TestServer::start_with(|c| trusting(c, &["127.0.0.0/8"], Duration::from_secs(1))).await;

    // Garbage, a truncated header, an oversized v2 header, silence: each is closed without
    // the server saying a word (its SSH banner would follow a valid header).
    let mut oversized = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    oversized.extend_from_slice(&60000u16.to_be_bytes());
    let cases: [(&[u8], bool, &str); 4] = [
        (
            b"GARBAGE GARBAGE\r\n",
            false,
            "no PROXY header: the connection began with \"GARBAGE ",
        ),
        (
            b"PROXY TCP4 203.0.",
            true,
            "connection closed after 17 bytes, before a complete PROXY header",
        ),
        (&oversized, false, "PROXY v2 header announces 60000 bytes"),
        (b"", false, "no complete PROXY header within 1 s"),
    ];
    for (bytes, close_write, logged) in cases {
        let received = send_and_wait_for_close(t.port, bytes, close_write).await;
        assert_eq!(
            received.as_deref(),
            Some(&b""[..]),
            "{:?}: closed, nothing sent",
            bytes.escape_ascii().to_string()
        );
        assert!(
            wait_for_log(logged).await,
            "no `{logged}` in:\n{}",
            capture().text()
        );
    }
    assert!(log_has("closing a connection from a trusted proxy"));

    // An SSH client connecting directly from a trusted address sends no header.
    let out = t.sftp(&t.alice, "ls\n").await;
    assert!(
        !out.status.success(),
        "a direct client from a trusted address is refused"
    );
    assert!(wait_for_log("no PROXY header: the connection began with \"SSH-2.0-").await);

    // The server still serves clients that come through the balancer.
    let relay = Relay::start(t.port, v1_header(addr("203.0.113.40:4000"))).await;
    round_trip(&t, relay.port, "still-serving.bin", 4).await;
    assert!(wait_for_log("peer=203.0.113.40:4000 user=alice}").await);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_balancer_connection_holds_up_no_one() {
    if !in_own_process().await {
        return;
    }
    let t =
        TestServer::start_with(|c| trusting(c, &["127.0.0.0/8"], Duration::from_secs(30))).await;
    // Connections that have not sent their header yet.
    let mut silent = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", t.port))
            .await
            .expect("connect");
        s.write_all(b"PROXY TCP4 ").await.expect("write");
        silent.push(s);
    }
    let relay = Relay::start(t.port, v2_header(addr("203.0.113.50:5000"))).await;
    assert_eq!(password_ok(relay.port, PASSWORD).await, Ok(true));
    // The waiting connections are still waiting (had the accept loop waited for their
    // headers, the login above would have come only after their 30 s deadlines).
    for s in &silent {
        let mut buf = [0u8; 1];
        assert!(
            matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "still open, nothing sent"
        );
    }
    drop(silent);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn untrusted_peers_are_direct_clients_and_their_headers_are_ignored() {
    if !in_own_process().await {
        return;
    }
    let t = TestServer::start_with(|c| trusting(c, &["10.0.0.0/8"], Duration::from_secs(5))).await;
    // 127.0.0.1 is not a trusted balancer: a plain SSH client works.
    let out = t.sftp(&t.alice, "ls\n").await;
    assert!(out.status.success(), "direct client: {}", stderr(&out));
    assert!(wait_for_line(&["peer=127.0.0.1:", "user=alice}", "login"]).await);

    // A header it sends is not taken as one: the connection fails as SSH would, and the
    // claimed address appears nowhere.
    let spoof = Relay::start(t.port, v1_header(addr("198.51.100.99:6000"))).await;
    let out = t.sftp_at(spoof.port, &t.alice, "ls\n").await;
    assert!(!out.status.success(), "a spoofed v1 header is not honoured");
    let spoof2 = Relay::start(t.port, v2_header(addr("198.51.100.99:6001"))).await;
    assert!(
        !matches!(password_ok(spoof2.port, PASSWORD).await, Ok(true)),
        "a spoofed v2 header is not honoured"
    );
    for port in spoof
        .upstream_ports()
        .into_iter()
        .chain(spoof2.upstream_ports())
    {
        let peer = format!("peer=127.0.0.1:{port}");
        assert!(
            wait_for_line(&["SSH handshake failed", &peer]).await,
            "no failed handshake of {peer} in:\n{}",
            capture().text()
        );
    }
    assert!(!log_has("198.51.100.99"), "{}", capture().text());
    t.shutdown().await;
}

#[tokio::test]
async fn start_up_refuses_proxy_protocol_without_trusted_networks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServerConfig::new(dir.path().join("state"), dir.path().join("users.json"));
    config.listen = addr("127.0.0.1:0");
    trusting(&mut config, &[], Duration::from_secs(5));
    match s3sftp::server::start(config).await {
        Ok(_) => panic!("started with PROXY protocol and no trusted network"),
        Err(e) => assert!(e.to_string().contains("--proxy-trusted-cidrs"), "{e}"),
    }
}
