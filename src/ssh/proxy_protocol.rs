//! The PROXY protocol (v1 text and v2 binary, as HAProxy specifies it): how a load balancer
//! in front of the SSH listener tells us the address of the client it relays.
//!
//! A pure decoder ([`decode`]) says either what the header is and how long it was, or how
//! many more bytes it needs at least; [`read_header`] feeds it from the socket without ever
//! reading past the header, because the client's SSH identification line follows at once and
//! belongs to russh. Which connections must send a header is decided by [`ProxySettings`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Whether and from whom the SSH listener takes PROXY protocol headers.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Connections from these networks (the load balancers) must begin with a PROXY header;
    /// connections from anywhere else are never parsed for one.
    pub trusted: Vec<IpNet>,
    /// Time a trusted connection has to deliver its complete header.
    pub header_timeout: Duration,
}

/// Time a load balancer's connection has to send its PROXY header (fixed; tests shorten it).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

impl ProxySettings {
    /// Trusts `trusted`, with the default header deadline.
    pub fn new(trusted: Vec<IpNet>) -> Self {
        ProxySettings {
            trusted,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }

    /// Whether a connection from `ip` comes from a load balancer, and so must send a header.
    /// IPv4 peers seen through a dual-stack socket (`::ffff:a.b.c.d`) match IPv4 networks.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

/// The v1 header starts with this.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header, CRLF included (the specification's limit).
pub const V1_MAX_LEN: usize = 107;
/// The shortest valid v1 header, `PROXY UNKNOWN\r\n`: reading this much is always safe.
const V1_MIN_LEN: usize = 15;
/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family and length.
const V2_FIXED_LEN: usize = 16;
/// The most address and TLV bytes a v2 header may announce. Addresses take at most 216
/// (AF_UNIX); the rest leaves room for the TLVs load balancers add (AWS, Azure, GCP, HAProxy
/// SSL details) without letting a header hold the connection's memory hostage.
pub const V2_MAX_PAYLOAD: usize = 4096;
/// Bytes read before deciding between v1 and v2: both headers are longer than this.
const DETECT_LEN: usize = 8;

/// The protocol version a header used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// The two ends of the relayed connection, as the load balancer saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The client.
    pub source: SocketAddr,
    /// The address the client connected to (the load balancer's listener).
    pub destination: SocketAddr,
}

/// A decoded PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// `None` when the header names no client: v1 `UNKNOWN`, v2 `LOCAL` (the load balancer's
    /// own connections, e.g. health checks), and v2 families other than IPv4 and IPv6.
    pub addresses: Option<Addresses>,
}

impl Header {
    /// The client's address: the header's source, or `socket_peer` when the header names none.
    /// An IPv4 client written as an IPv4-mapped IPv6 address comes back as plain IPv4.
    pub fn client(&self, socket_peer: SocketAddr) -> SocketAddr {
        match self.addresses {
            Some(a) => SocketAddr::new(a.source.ip().to_canonical(), a.source.port()),
            None => socket_peer,
        }
    }
}

/// Why a connection that had to begin with a PROXY header did not.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("connection closed after {received} bytes, before a complete PROXY header")]
    Closed { received: usize },
    #[error("no complete PROXY header within {} s", .0.as_secs_f32())]
    Timeout(Duration),
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "no PROXY header: the connection began with \"{start}\" (does the load balancer send PROXY protocol v1 or v2?)"
    )]
    NotProxy { start: String },
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    #[error("PROXY v1 header longer than {V1_MAX_LEN} bytes")]
    V1TooLong,
    #[error("PROXY v2 header: unsupported version {0} (only 2 exists)")]
    V2Version(u8),
    #[error("PROXY v2 header: unknown command {0} (0 is LOCAL, 1 is PROXY)")]
    V2Command(u8),
    #[error("PROXY v2 header: unknown address family/protocol byte 0x{0:02x}")]
    V2Family(u8),
    #[error("PROXY v2 header announces {0} bytes of addresses and TLVs; at most {V2_MAX_PAYLOAD} are accepted")]
    V2TooLong(usize),
    #[error("PROXY v2 header: {len} bytes are too few for the addresses of family 0x{family:02x}")]
    V2Short { family: u8, len: usize },
}

/// What [`decode`] made of the bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A complete header, `len` bytes long; whatever follows is the client's.
    Done { header: Header, len: usize },
    /// The header is not complete: at least this many more bytes are needed, and reading
    /// exactly that many never reads past a valid header.
    Need(usize),
}

/// Decodes a PROXY header (v1 or v2, told apart by their first bytes) at the start of `buf`.
pub fn decode(buf: &[u8]) -> Result<Progress, ProxyError> {
    if starts_like(buf, V1_PREFIX) {
        if buf.len() < V1_PREFIX.len() {
            return Ok(Progress::Need(DETECT_LEN - buf.len()));
        }
        return decode_v1(buf);
    }
    if starts_like(buf, V2_SIGNATURE) {
        if buf.len() < V2_FIXED_LEN {
            return Ok(Progress::Need(V2_FIXED_LEN - buf.len()));
        }
        return decode_v2(buf);
    }
    Err(ProxyError::NotProxy {
        start: printable(&buf[..buf.len().min(32)]),
    })
}

/// Reads one PROXY header from `reader` within `deadline`, and not one byte more.
pub async fn read_header<R: AsyncRead + Unpin>(
    reader: &mut R,
    deadline: Duration,
) -> Result<Header, ProxyError> {
    match tokio::time::timeout(deadline, read_exact_header(reader)).await {
        Ok(result) => result,
        Err(_) => Err(ProxyError::Timeout(deadline)),
    }
}

async fn read_exact_header<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Header, ProxyError> {
    let mut buf = Vec::with_capacity(64);
    loop {
        match decode(&buf)? {
            Progress::Done { header, .. } => return Ok(header),
            Progress::Need(n) => {
                let start = buf.len();
                buf.resize(start + n, 0);
                let mut filled = start;
                while filled < buf.len() {
                    let read = reader.read(&mut buf[filled..]).await?;
                    if read == 0 {
                        return Err(ProxyError::Closed { received: filled });
                    }
                    filled += read;
                }
            }
        }
    }
}

/// Whether `buf` agrees with `prefix` as far as both go (and `buf` is not empty).
fn starts_like(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf.is_empty() || buf[..n] == prefix[..n]
}

/// `bytes` as printable ASCII, for a log line.
fn printable(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

fn decode_v1(buf: &[u8]) -> Result<Progress, ProxyError> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() >= V1_MAX_LEN {
            return Err(ProxyError::V1TooLong);
        }
        return Ok(Progress::Need(V1_MIN_LEN.saturating_sub(buf.len()).max(1)));
    };
    let len = lf + 1;
    if len > V1_MAX_LEN {
        return Err(ProxyError::V1TooLong);
    }
    let Some(line) = buf[..lf].strip_suffix(b"\r") else {
        return Err(ProxyError::V1("the line does not end in CRLF"));
    };
    let fields = line.strip_prefix(V1_PREFIX).unwrap_or_default();
    let line = match std::str::from_utf8(fields) {
        Ok(text) if text.is_ascii() => text,
        _ => return Err(ProxyError::V1("the line is not ASCII")),
    };
    let header = parse_v1_fields(line)?;
    Ok(Progress::Done { header, len })
}

/// Parses what follows `PROXY ` up to the CRLF.
fn parse_v1_fields(line: &str) -> Result<Header, ProxyError> {
    let mut fields = line.split(' ');
    let protocol = fields.next().unwrap_or_default();
    if protocol == "UNKNOWN" {
        // The specification: whatever follows UNKNOWN is to be ignored.
        return Ok(Header {
            version: Version::V1,
            addresses: None,
        });
    }
    let v6 = match protocol {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ProxyError::V1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::V1(
            "expected: source address, destination address, source port, destination port",
        ));
    };
    let ip = |text: &str| -> Result<IpAddr, ProxyError> {
        if v6 {
            text.parse::<Ipv6Addr>()
                .map(IpAddr::V6)
                .map_err(|_| ProxyError::V1("bad IPv6 address"))
        } else {
            text.parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| ProxyError::V1("bad IPv4 address"))
        }
    };
    Ok(Header {
        version: Version::V1,
        addresses: Some(Addresses {
            source: SocketAddr::new(ip(src)?, port(sport)?),
            destination: SocketAddr::new(ip(dst)?, port(dport)?),
        }),
    })
}

/// A decimal port: digits only, no leading zero, at most 65535.
fn port(text: &str) -> Result<u16, ProxyError> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = text.len() > 1 && text.starts_with('0');
    match text.parse::<u16>() {
        Ok(p) if digits_only && !leading_zero => Ok(p),
        _ => Err(ProxyError::V1("bad port")),
    }
}

const CMD_LOCAL: u8 = 0;
const CMD_PROXY: u8 = 1;

fn decode_v2(buf: &[u8]) -> Result<Progress, ProxyError> {
    let fixed: &[u8; V2_FIXED_LEN] = match buf.first_chunk() {
        Some(f) => f,
        None => return Ok(Progress::Need(V2_FIXED_LEN - buf.len())),
    };
    let [.., ver_cmd, family, len_hi, len_lo] = *fixed;
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Version(ver_cmd >> 4));
    }
    let command = ver_cmd & 0x0f;
    if command != CMD_LOCAL && command != CMD_PROXY {
        return Err(ProxyError::V2Command(command));
    }
    let payload_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if payload_len > V2_MAX_PAYLOAD {
        return Err(ProxyError::V2TooLong(payload_len));
    }
    let len = V2_FIXED_LEN + payload_len;
    let Some(payload) = buf.get(V2_FIXED_LEN..len) else {
        return Ok(Progress::Need(len - buf.len()));
    };
    let header = if command == CMD_LOCAL {
        // The specification: use the real connection endpoints, ignore the family.
        Header {
            version: Version::V2,
            addresses: None,
        }
    } else {
        Header {
            version: Version::V2,
            addresses: v2_addresses(family, payload)?,
        }
    };
    Ok(Progress::Done { header, len })
}

/// The addresses of a v2 PROXY command; TLVs after them are skipped.
fn v2_addresses(family: u8, payload: &[u8]) -> Result<Option<Addresses>, ProxyError> {
    let short = || ProxyError::V2Short {
        family,
        len: payload.len(),
    };
    // High nibble: address family; low nibble: transport (1 stream, 2 datagram).
    match family {
        // UNSPEC: no addresses to use.
        0x00 => Ok(None),
        0x11 | 0x12 => {
            let a: &[u8; 12] = payload.first_chunk().ok_or_else(short)?;
            let ip = |at: usize| IpAddr::from([a[at], a[at + 1], a[at + 2], a[at + 3]]);
            let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
            Ok(Some(Addresses {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }))
        }
        0x21 | 0x22 => {
            let a: &[u8; 36] = payload.first_chunk().ok_or_else(short)?;
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[at..at + 16]);
                IpAddr::from(octets)
            };
            let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
            Ok(Some(Addresses {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }))
        }
        // AF_UNIX: the client has no IP address; use the socket's.
        0x31 | 0x32 => {
            if payload.len() < 216 {
                return Err(short());
            }
            Ok(None)
        }
        _ => Err(ProxyError::V2Family(family)),
    }
}

#[cfg(test)]
mod tests;
