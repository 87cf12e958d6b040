use std::pin::Pin;
use std::task::{Context, Poll};

use proptest::prelude::*;
use tokio::io::ReadBuf;

use super::*;

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test address")
}

fn proxied(version: Version, source: &str, destination: &str) -> Header {
    Header {
        version,
        addresses: Some(Addresses {
            source: addr(source),
            destination: addr(destination),
        }),
    }
}

/// Decodes `bytes`, which must hold exactly one complete header.
fn whole(bytes: &[u8]) -> Result<Header, ProxyError> {
    match decode(bytes)? {
        Progress::Done { header, len } => {
            assert_eq!(len, bytes.len(), "the header is all of {bytes:?}");
            Ok(header)
        }
        Progress::Need(n) => panic!("{bytes:?} is incomplete, needs {n} more"),
    }
}

/// A v2 header: version/command byte, family byte, then the payload (addresses, TLVs).
fn v2(ver_cmd: u8, family: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(ver_cmd);
    out.push(family);
    out.extend_from_slice(&u16::try_from(payload.len()).expect("short").to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn v2_tcp4_payload() -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&[203, 0, 113, 7]);
    p.extend_from_slice(&[10, 0, 0, 1]);
    p.extend_from_slice(&51234u16.to_be_bytes());
    p.extend_from_slice(&2222u16.to_be_bytes());
    p
}

fn v2_tcp6_payload(source: Ipv6Addr) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&source.octets());
    p.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().expect("ip").octets());
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&22u16.to_be_bytes());
    p
}

/// TLVs as AWS NLB and HAProxy send them: a VPC endpoint id, a unique id, padding.
fn tlvs() -> Vec<u8> {
    let mut t = Vec::new();
    for (kind, value) in [
        (0xEA_u8, &b"\x01vpce-08d2bf15fac5001c9"[..]),
        (0x05, &b"0123456789abcdef"[..]),
        (0x04, &[0u8; 7][..]),
    ] {
        t.push(kind);
        t.extend_from_slice(&u16::try_from(value.len()).expect("short").to_be_bytes());
        t.extend_from_slice(value);
    }
    t
}

/// Every valid header used below, with what it decodes to.
fn valid_samples() -> Vec<(Vec<u8>, Header)> {
    let v1_unknown = Header {
        version: Version::V1,
        addresses: None,
    };
    let v2_none = Header {
        version: Version::V2,
        addresses: None,
    };
    let mut tcp4_tlv = v2_tcp4_payload();
    tcp4_tlv.extend(tlvs());
    vec![
        (
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 2222\r\n".to_vec(),
            proxied(Version::V1, "203.0.113.7:51234", "10.0.0.1:2222"),
        ),
        (
            b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 22\r\n".to_vec(),
            proxied(Version::V1, "[2001:db8::7]:65535", "[2001:db8::1]:22"),
        ),
        (b"PROXY UNKNOWN\r\n".to_vec(), v1_unknown),
        (
            b"PROXY UNKNOWN ffff:f::1 ffff:f::2 65535 65535\r\n".to_vec(),
            v1_unknown,
        ),
        (
            v2(0x21, 0x11, &v2_tcp4_payload()),
            proxied(Version::V2, "203.0.113.7:51234", "10.0.0.1:2222"),
        ),
        (
            v2(0x21, 0x11, &tcp4_tlv),
            proxied(Version::V2, "203.0.113.7:51234", "10.0.0.1:2222"),
        ),
        (
            v2(
                0x21,
                0x21,
                &v2_tcp6_payload("2001:db8::7".parse().expect("ip")),
            ),
            proxied(Version::V2, "[2001:db8::7]:40000", "[2001:db8::1]:22"),
        ),
        // UDP is relayed too; the source is the client all the same.
        (
            v2(0x21, 0x12, &v2_tcp4_payload()),
            proxied(Version::V2, "203.0.113.7:51234", "10.0.0.1:2222"),
        ),
        // LOCAL: the balancer's own connection (health check); addresses are ignored.
        (v2(0x20, 0x11, &v2_tcp4_payload()), v2_none),
        (v2(0x20, 0x00, &[]), v2_none),
        (v2(0x21, 0x00, &tlvs()), v2_none),
        (v2(0x21, 0x31, &[0u8; 216]), v2_none),
    ]
}

#[test]
fn decodes_every_valid_sample() {
    for (bytes, expected) in valid_samples() {
        let header = whole(&bytes).unwrap_or_else(|e| panic!("{bytes:?}: {e}"));
        assert_eq!(header, expected, "{bytes:?}");
    }
}

#[test]
fn the_client_is_the_source_or_the_socket_peer() {
    let socket = addr("10.0.0.9:1234");
    let h = whole(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 2222\r\n").expect("v1");
    assert_eq!(h.client(socket), addr("203.0.113.7:51234"));
    let h = whole(b"PROXY UNKNOWN\r\n").expect("v1");
    assert_eq!(h.client(socket), socket);
    let h = whole(&v2(0x20, 0x11, &v2_tcp4_payload())).expect("LOCAL");
    assert_eq!(h.client(socket), socket);
    // An IPv4 client written as IPv4-mapped IPv6 is the IPv4 client.
    let mapped = v2(
        0x21,
        0x21,
        &v2_tcp6_payload("::ffff:203.0.113.7".parse().expect("ip")),
    );
    let h = whole(&mapped).expect("v2");
    assert_eq!(h.client(socket), addr("203.0.113.7:40000"));
}

/// Feeding exactly what `decode` asks for reaches the end of the header and never passes
/// it, whatever follows.
#[test]
fn asks_for_no_byte_past_the_header() {
    for (bytes, expected) in valid_samples() {
        let mut stream = bytes.clone();
        stream.extend_from_slice(b"SSH-2.0-OpenSSH_9.2\r\n");
        let mut have = 0;
        loop {
            match decode(&stream[..have]).expect("valid so far") {
                Progress::Need(n) => {
                    assert!(n >= 1);
                    have += n;
                    assert!(have <= bytes.len(), "over-read on {bytes:?}");
                }
                Progress::Done { header, len } => {
                    assert_eq!((header, len), (expected, bytes.len()));
                    break;
                }
            }
        }
    }
}

#[test]
fn every_strict_prefix_is_incomplete() {
    for (bytes, _) in valid_samples() {
        for cut in 0..bytes.len() {
            match decode(&bytes[..cut]) {
                Ok(Progress::Need(n)) => assert!(cut + n <= bytes.len(), "{bytes:?} at {cut}"),
                other => panic!("{bytes:?} cut at {cut}: {other:?}"),
            }
        }
    }
}

#[test]
fn v1_length_limit() {
    // UNKNOWN may carry anything up to the 107-byte limit.
    let mut at_limit = b"PROXY UNKNOWN ".to_vec();
    at_limit.resize(V1_MAX_LEN - 2, b'x');
    at_limit.extend_from_slice(b"\r\n");
    assert_eq!(at_limit.len(), V1_MAX_LEN);
    assert!(whole(&at_limit).is_ok());

    let mut over = b"PROXY UNKNOWN ".to_vec();
    over.resize(V1_MAX_LEN - 1, b'x');
    over.extend_from_slice(b"\r\n");
    assert!(matches!(decode(&over), Err(ProxyError::V1TooLong)));

    // No line end within the limit: refused without waiting for more.
    let endless = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
    assert!(matches!(
        decode(&endless[..V1_MAX_LEN]),
        Err(ProxyError::V1TooLong)
    ));
}

#[test]
fn v1_malformed() {
    for line in [
        &b"PROXY TCP5 203.0.113.7 10.0.0.1 1 2\r\n"[..],
        b"PROXY tcp4 203.0.113.7 10.0.0.1 1 2\r\n",
        b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",
        b"PROXY TCP6 203.0.113.7 2001:db8::1 1 2\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 1\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2 3\r\n",
        b"PROXY TCP4 203.0.113.7  10.0.0.1 1 2\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2 \r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 2\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 +80 2\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 080 2\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 -1 2\r\n",
        b"PROXY TCP4 203.0.113.07 10.0.0.1 1 2\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.\xc3\xa9 1 2\r\n",
        b"PROXY \r\n",
        b"PROXY  \r\n",
        b"PROXY\tTCP4 203.0.113.7 10.0.0.1 1 2\r\n",
    ] {
        let result = decode(line);
        assert!(
            matches!(result, Err(ProxyError::V1(_) | ProxyError::NotProxy { .. })),
            "{:?}: {result:?}",
            line.escape_ascii().to_string()
        );
    }
}

#[test]
fn v2_malformed() {
    let tcp4 = v2_tcp4_payload();
    // Version 1 in the v2 format, and an unknown command.
    assert!(matches!(
        decode(&v2(0x11, 0x11, &tcp4)),
        Err(ProxyError::V2Version(1))
    ));
    assert!(matches!(
        decode(&v2(0x22, 0x11, &tcp4)),
        Err(ProxyError::V2Command(2))
    ));
    // Unknown families and transports.
    for family in [0x01, 0x10, 0x13, 0x20, 0x41, 0xff] {
        assert!(
            matches!(
                decode(&v2(0x21, family, &tcp4)),
                Err(ProxyError::V2Family(f)) if f == family
            ),
            "family 0x{family:02x}"
        );
    }
    // Fewer bytes than the family's addresses.
    assert!(matches!(
        decode(&v2(0x21, 0x11, &tcp4[..11])),
        Err(ProxyError::V2Short { len: 11, .. })
    ));
    assert!(matches!(
        decode(&v2(0x21, 0x21, &tcp4)),
        Err(ProxyError::V2Short { len: 12, .. })
    ));
    assert!(matches!(
        decode(&v2(0x21, 0x31, &[0; 100])),
        Err(ProxyError::V2Short { .. })
    ));
    // A corrupt signature is not a v2 header.
    let mut bad = v2(0x21, 0x11, &tcp4);
    bad[10] = b'X';
    assert!(matches!(decode(&bad), Err(ProxyError::NotProxy { .. })));
}

#[test]
fn v2_oversized_is_refused_from_the_fixed_part() {
    let mut fixed = V2_SIGNATURE.to_vec();
    fixed.extend_from_slice(&[0x21, 0x11]);
    fixed.extend_from_slice(
        &u16::try_from(V2_MAX_PAYLOAD + 1)
            .expect("u16")
            .to_be_bytes(),
    );
    assert!(matches!(
        decode(&fixed),
        Err(ProxyError::V2TooLong(n)) if n == V2_MAX_PAYLOAD + 1
    ));
    fixed[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    assert!(matches!(decode(&fixed), Err(ProxyError::V2TooLong(65535))));
    // At the cap it is fine (the TLVs are skipped).
    let mut payload = v2_tcp4_payload();
    payload.resize(V2_MAX_PAYLOAD, 0);
    assert!(whole(&v2(0x21, 0x11, &payload)).is_ok());
}

#[test]
fn garbage_is_not_a_header() {
    for start in [
        &b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"[..],
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01",
        b"PROXX",
        b"\r\n\r\nX",
        b"\0",
    ] {
        match decode(start) {
            Err(ProxyError::NotProxy { start: shown }) => {
                assert!(shown.is_ascii() && !shown.contains('\n'), "{shown}");
            }
            other => panic!("{start:?}: {other:?}"),
        }
    }
    let err = decode(b"SSH-2.0-OpenSSH_9.2\r\n").expect_err("not proxy");
    assert!(err.to_string().contains("SSH-2.0-OpenSSH"), "{err}");
}

/// Gives one byte per read, as a slow network might.
struct Trickle<'a>(&'a [u8]);

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some((first, rest)) = self.0.split_first() {
            if buf.remaining() > 0 {
                buf.put_slice(&[*first]);
                self.0 = rest;
            }
        }
        Poll::Ready(Ok(()))
    }
}

const BANNER: &[u8] = b"SSH-2.0-OpenSSH_9.2\r\n";
const DEADLINE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn read_header_leaves_what_follows() {
    for (bytes, expected) in valid_samples() {
        let stream = [bytes.as_slice(), BANNER].concat();
        let mut reader = stream.as_slice();
        let header = read_header(&mut reader, DEADLINE).await.expect("header");
        assert_eq!(header, expected);
        assert_eq!(reader, BANNER, "exactly the header was consumed");

        let mut trickle = Trickle(&stream);
        let header = read_header(&mut trickle, DEADLINE).await.expect("header");
        assert_eq!(header, expected);
        assert_eq!(trickle.0, BANNER);
    }
}

#[tokio::test]
async fn read_header_reports_early_close_and_silence() {
    let mut empty: &[u8] = b"";
    assert!(matches!(
        read_header(&mut empty, DEADLINE).await,
        Err(ProxyError::Closed { received: 0 })
    ));
    let full = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 2222\r\n";
    let mut cut: &[u8] = &full[..20];
    assert!(matches!(
        read_header(&mut cut, DEADLINE).await,
        Err(ProxyError::Closed { received: 20 })
    ));
    let v2_full = v2(0x21, 0x11, &v2_tcp4_payload());
    let mut cut: &[u8] = &v2_full[..20];
    assert!(matches!(
        read_header(&mut cut, DEADLINE).await,
        Err(ProxyError::Closed { received: 20 })
    ));
    // A peer that sends part of a header and then nothing.
    let (mut client, mut server) = tokio::io::duplex(64);
    tokio::io::AsyncWriteExt::write_all(&mut client, b"PROXY TCP4 ")
        .await
        .expect("write");
    let result = read_header(&mut server, Duration::from_millis(100)).await;
    assert!(matches!(result, Err(ProxyError::Timeout(_))), "{result:?}");
    let message = result.expect_err("timeout").to_string();
    assert_eq!(message, "no complete PROXY header within 0.1 s");
    drop(client);
}

#[tokio::test]
async fn read_header_refuses_a_direct_ssh_client() {
    let mut reader = BANNER;
    assert!(matches!(
        read_header(&mut reader, DEADLINE).await,
        Err(ProxyError::NotProxy { .. })
    ));
}

#[test]
fn trust_matches_networks_and_mapped_addresses() {
    let settings = ProxySettings::new(vec![
        "10.0.0.0/8".parse().expect("net"),
        "2001:db8::/32".parse().expect("net"),
    ]);
    assert!(settings.trusts("10.1.2.3".parse().expect("ip")));
    assert!(settings.trusts("::ffff:10.1.2.3".parse().expect("ip")));
    assert!(settings.trusts("2001:db8::5".parse().expect("ip")));
    assert!(!settings.trusts("127.0.0.1".parse().expect("ip")));
    assert!(!settings.trusts("::ffff:11.0.0.1".parse().expect("ip")));
    assert!(!ProxySettings::new(Vec::new()).trusts("10.0.0.1".parse().expect("ip")));
}

proptest! {
    /// Whatever a peer sends, decoding neither panics nor asks for zero bytes.
    #[test]
    fn decode_never_panics(
        start in prop::sample::select(vec![&b""[..], b"PROXY ", b"PROXY TCP4 ", &V2_SIGNATURE[..]]),
        tail in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let bytes = [start, tail.as_slice()].concat();
        for cut in 0..=bytes.len() {
            if let Ok(Progress::Need(n)) = decode(&bytes[..cut]) {
                prop_assert!(n >= 1);
            }
        }
    }
}
