//! SFTP framing and the packets we encode or decode by hand. Most packets go through
//! russh-sftp's codec; WRITE is decoded here so its data stays a zero-copy slice of the
//! frame, and DATA replies are built here without an intermediate `Vec`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use russh_sftp::protocol::{Packet, StatusCode};

/// Message type numbers we need outside russh-sftp.
pub const SSH_FXP_WRITE: u8 = 6;
pub const SSH_FXP_STATUS: u8 = 101;
pub const SSH_FXP_DATA: u8 = 103;
pub const SSH_FXP_EXTENDED_REPLY: u8 = 201;

/// Largest packet we accept or send (the `limits@openssh.com` value).
pub const MAX_PACKET: u32 = 256 * 1024;
/// Largest READ/WRITE payload we advertise: leaves room for the packet header.
pub const MAX_DATA: u32 = MAX_PACKET - 1024;
/// Largest READ reply. Replies wait in a queue as deep as the client's pipeline (64
/// requests for OpenSSH) while SSH flow control holds them back: 64 KiB each keeps that
/// queue at 4 MiB per session instead of 16 MiB, and loopback downloads are as fast.
pub const MAX_READ: u32 = 64 * 1024;
/// Incoming frames may exceed MAX_PACKET a little (clients count the payload only).
const MAX_FRAME: usize = MAX_PACKET as usize + 16 * 1024;

/// Why the byte stream cannot be read as SFTP any more; the session ends.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("packet of {0} bytes is larger than the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("empty packet")]
    Empty,
}

/// Splits the channel's byte stream into SFTP packets (without their length prefix).
#[derive(Default)]
pub struct Framer {
    buf: BytesMut,
}

impl Framer {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete packet, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if self.buf.len() < 4 + len {
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

/// A decoded request.
#[derive(Debug)]
pub enum Request {
    Write {
        id: u32,
        handle: String,
        offset: u64,
        data: Bytes,
    },
    Packet(Packet),
    /// Could not be decoded; `id` when the packet got that far.
    Malformed {
        id: Option<u32>,
        reason: String,
    },
}

/// Decodes one packet (type byte first).
pub fn decode(frame: Bytes) -> Request {
    let id =
        (frame.len() >= 5).then(|| u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]));
    if frame.first() == Some(&SSH_FXP_WRITE) {
        return decode_write(frame).unwrap_or_else(|| Request::Malformed {
            id,
            reason: "truncated WRITE".into(),
        });
    }
    let mut bytes = frame;
    match Packet::try_from(&mut bytes) {
        Ok(packet) => Request::Packet(packet),
        Err(e) => Request::Malformed {
            id,
            reason: format!("{e}"),
        },
    }
}

fn decode_write(mut frame: Bytes) -> Option<Request> {
    let mut take = |n: usize| (frame.len() >= n).then(|| frame.split_to(n));
    take(1)?;
    let id = take(4)?.get_u32();
    let handle_len = take(4)?.get_u32() as usize;
    let handle = String::from_utf8(take(handle_len)?.to_vec()).ok()?;
    let offset = take(8)?.get_u64();
    let data_len = take(4)?.get_u32() as usize;
    let data = take(data_len)?;
    Some(Request::Write {
        id,
        handle,
        offset,
        data,
    })
}

/// Encodes a reply packet; a packet russh-sftp cannot encode becomes a FAILURE status.
pub fn encode(packet: Packet) -> Bytes {
    let id = packet.get_request_id();
    Bytes::try_from(packet).unwrap_or_else(|e| {
        status(
            id,
            StatusCode::Failure,
            &format!("cannot encode reply: {e}"),
        )
    })
}

/// A STATUS reply.
pub fn status(id: u32, code: StatusCode, message: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(4 + 1 + 4 + 4 + 4 + message.len() + 4 + 2);
    buf.put_u32(0);
    buf.put_u8(SSH_FXP_STATUS);
    buf.put_u32(id);
    buf.put_u32(code as u32);
    put_str(&mut buf, message.as_bytes());
    put_str(&mut buf, b"en");
    finish(buf)
}

/// A DATA reply carrying `data`.
pub fn data(id: u32, data: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(4 + 1 + 4 + 4 + data.len());
    buf.put_u32(0);
    buf.put_u8(SSH_FXP_DATA);
    buf.put_u32(id);
    put_str(&mut buf, data);
    finish(buf)
}

/// An EXTENDED_REPLY whose payload is a list of u64 values.
pub fn extended_reply_u64s(id: u32, values: &[u64]) -> Bytes {
    let mut buf = BytesMut::with_capacity(9 + 8 * values.len());
    buf.put_u32(0);
    buf.put_u8(SSH_FXP_EXTENDED_REPLY);
    buf.put_u32(id);
    for v in values {
        buf.put_u64(*v);
    }
    finish(buf)
}

fn put_str(buf: &mut BytesMut, s: &[u8]) {
    buf.put_u32(s.len() as u32);
    buf.put_slice(s);
}

fn finish(mut buf: BytesMut) -> Bytes {
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

/// Reads SSH strings from an extension request's payload.
pub struct Reader(Bytes);

impl Reader {
    pub fn new(data: Vec<u8>) -> Self {
        Reader(Bytes::from(data))
    }

    pub fn string(&mut self) -> Option<Bytes> {
        if self.0.len() < 4 {
            return None;
        }
        let len = self.0.get_u32() as usize;
        (self.0.len() >= len).then(|| self.0.split_to(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_pushes() {
        let mut f = Framer::default();
        let pkt = status(7, StatusCode::Ok, "ok");
        f.push(&pkt[..3]);
        assert!(f.next_frame().unwrap().is_none());
        f.push(&pkt[3..]);
        f.push(&pkt[..]);
        let one = f.next_frame().unwrap().unwrap();
        assert_eq!(&one[..], &pkt[4..]);
        assert!(f.next_frame().unwrap().is_some());
        assert!(f.next_frame().unwrap().is_none());
    }

    #[test]
    fn oversized_and_empty_frames_are_errors() {
        let mut f = Framer::default();
        f.push(&(10u32 << 20).to_be_bytes());
        assert!(matches!(f.next_frame(), Err(FrameError::TooLarge(_))));
        let mut f = Framer::default();
        f.push(&0u32.to_be_bytes());
        assert!(matches!(f.next_frame(), Err(FrameError::Empty)));
    }

    #[test]
    fn write_decodes_zero_copy() {
        let mut b = BytesMut::new();
        b.put_u8(SSH_FXP_WRITE);
        b.put_u32(9);
        put_str(&mut b, b"h1");
        b.put_u64(4096);
        put_str(&mut b, b"hello");
        match decode(b.freeze()) {
            Request::Write {
                id,
                handle,
                offset,
                data,
            } => {
                assert_eq!(
                    (id, handle.as_str(), offset, &data[..]),
                    (9, "h1", 4096, &b"hello"[..])
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_packets_are_malformed_with_id() {
        let mut b = BytesMut::new();
        b.put_u8(SSH_FXP_WRITE);
        b.put_u32(5);
        b.put_u32(100);
        assert!(matches!(
            decode(b.freeze()),
            Request::Malformed { id: Some(5), .. }
        ));
        assert!(matches!(
            decode(Bytes::from_static(&[250])),
            Request::Malformed { id: None, .. }
        ));
    }
}
