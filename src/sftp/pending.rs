//! Requests read from the channel but not yet answered. The session keeps reading its
//! channel while replies wait on the client's SSH window (see [`super::serve`]); what
//! arrives meanwhile is held here, as requests (a READ request is a few dozen bytes,
//! its reply up to 64 KiB), in a queue bounded in bytes.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::codec::{FrameError, Framer};

/// The most request bytes one session holds unanswered. Enough for about 40,000
/// pipelined READ requests (paramiko asks for a 1 GiB file in 32,768 at once); past it
/// the session stops reading its channel until replies drain.
pub const MAX_HELD: usize = 4 * 1024 * 1024;

/// What one held request costs beyond its bytes (queue slot and allocation).
const PER_REQUEST: usize = 64;

/// Frames up to this size are copied out of the read buffer when held, so a few small
/// requests never pin large buffers.
const COPY_BELOW: usize = 1024;

/// How long a session may sit with [`MAX_HELD`] bytes held and no reply taken by the
/// client before it is closed: such a client sends and never reads.
pub const STALL_LIMIT: Duration = Duration::from_secs(20);

/// Held requests, in arrival order, and the framer that cuts them from the stream.
#[derive(Default)]
pub struct Pending {
    framer: Framer,
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// When the queue became full; `None` while it is not.
    full_since: Option<Instant>,
}

impl Pending {
    /// Adds channel data; every complete request in it joins the queue.
    pub fn push_data(&mut self, data: &[u8]) -> Result<(), FrameError> {
        self.framer.push(data);
        while let Some(frame) = self.framer.next_frame()? {
            let frame = if frame.len() < COPY_BELOW {
                Bytes::copy_from_slice(&frame)
            } else {
                frame
            };
            self.bytes += frame.len() + PER_REQUEST;
            self.frames.push_back(frame);
        }
        if self.is_full() && self.full_since.is_none() {
            self.full_since = Some(Instant::now());
        }
        Ok(())
    }

    /// The oldest held request.
    pub fn pop(&mut self) -> Option<Bytes> {
        let frame = self.frames.pop_front()?;
        self.bytes -= frame.len() + PER_REQUEST;
        if !self.is_full() {
            self.full_since = None;
        }
        Some(frame)
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Whether the session should stop reading its channel for now.
    pub fn is_full(&self) -> bool {
        self.bytes >= MAX_HELD
    }

    /// Bytes held, counting each request's overhead.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When a full queue has waited too long for the client to take a reply.
    pub fn stall_deadline(&self) -> Option<Instant> {
        self.full_since.map(|since| since + STALL_LIMIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn frames_are_held_in_order_and_counted() {
        let mut p = Pending::default();
        let mut stream = packet(b"\x05abc");
        stream.extend(packet(b"\x05defg"));
        // Split mid-frame: only complete frames are held.
        p.push_data(&stream[..6]).unwrap();
        assert!(p.is_empty());
        p.push_data(&stream[6..]).unwrap();
        assert_eq!(p.bytes(), 4 + 5 + 2 * PER_REQUEST);
        assert_eq!(p.pop().unwrap().as_ref(), b"\x05abc");
        assert_eq!(p.pop().unwrap().as_ref(), b"\x05defg");
        assert!(p.pop().is_none());
        assert_eq!(p.bytes(), 0);
    }

    #[test]
    fn the_bound_holds_and_releases() {
        let mut p = Pending::default();
        let read_request = packet(&[5u8; 40]);
        let mut n = 0;
        while !p.is_full() {
            p.push_data(&read_request).unwrap();
            n += 1;
        }
        assert_eq!(n, MAX_HELD.div_ceil(40 + PER_REQUEST));
        assert!(p.stall_deadline().is_some());
        p.pop();
        assert!(!p.is_full());
        assert!(p.stall_deadline().is_none());
    }

    #[test]
    fn an_oversized_frame_is_an_error() {
        let mut p = Pending::default();
        assert!(p.push_data(&u32::MAX.to_be_bytes()).is_err());
    }
}
