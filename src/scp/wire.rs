//! The byte stream of an SCP session: control lines and replies in, data and replies
//! out. Generic over the reader and writer so tests can run it over an in-memory pipe.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::protocol::{self, MAX_LINE};

/// The channel went away or broke the protocol; the session cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by the client")]
    Closed,
    #[error("{0}")]
    Protocol(#[from] protocol::ProtocolError),
    #[error("the client reported a fatal error: {0}")]
    PeerFatal(String),
}

/// What the other side answered to a line or a file.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Ok,
    /// `\x01message`: that item failed; go on with the next.
    Error(String),
}

/// Reading half (buffered) and writing half of the SCP stream.
pub struct Wire<R, W> {
    input: BufReader<R>,
    output: W,
}

/// Size of the chunks read from the client (and handed to the upload as-is).
pub const CHUNK: usize = 256 * 1024;

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Wire<R, W> {
    pub fn new(input: R, output: W) -> Self {
        Wire {
            input: BufReader::with_capacity(64 * 1024, input),
            output,
        }
    }

    /// The next line without its `\n`; `None` at a clean end of stream.
    pub async fn read_line(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        let mut line = Vec::new();
        loop {
            let buf = self.input.fill_buf().await?;
            if buf.is_empty() {
                return if line.is_empty() {
                    Ok(None)
                } else {
                    Err(WireError::Closed)
                };
            }
            if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&buf[..pos]);
                self.input.consume(pos + 1);
                return Ok(Some(line));
            }
            let n = buf.len();
            line.extend_from_slice(buf);
            self.input.consume(n);
            if line.len() > MAX_LINE {
                return Err(protocol::ProtocolError::TooLong.into());
            }
        }
    }

    /// Reads the one-byte reply (and its message) that follows a line or a file.
    pub async fn reply(&mut self) -> Result<Reply, WireError> {
        let byte = match self.input.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(WireError::Closed)
            }
            Err(e) => return Err(e.into()),
        };
        match byte {
            0 => Ok(Reply::Ok),
            1 | 2 => {
                let message = self.read_line().await?.unwrap_or_default();
                let message = String::from_utf8_lossy(&message).into_owned();
                if byte == 2 {
                    Err(WireError::PeerFatal(message))
                } else {
                    Ok(Reply::Error(message))
                }
            }
            other => Err(protocol::ProtocolError::UnknownControl(other).into()),
        }
    }

    /// Up to `max` bytes of file data (at least one); `Closed` at end of stream.
    pub async fn read_data(&mut self, max: usize) -> Result<Bytes, WireError> {
        let want = max.min(CHUNK);
        let mut buf = BytesMut::with_capacity(want);
        while buf.len() < want {
            let n = (&mut self.input)
                .take((want - buf.len()) as u64)
                .read_buf(&mut buf)
                .await?;
            if n == 0 {
                if buf.is_empty() {
                    return Err(WireError::Closed);
                }
                break;
            }
        }
        Ok(buf.freeze())
    }

    pub async fn ok(&mut self) -> Result<(), WireError> {
        self.send(&[0]).await
    }

    pub async fn error(&mut self, message: &str) -> Result<(), WireError> {
        self.send(&protocol::error_reply(message)).await
    }

    pub async fn send(&mut self, data: &[u8]) -> Result<(), WireError> {
        self.output.write_all(data).await?;
        self.output.flush().await?;
        Ok(())
    }

    /// Data without a flush per chunk (the next reply or line flushes).
    pub async fn send_data(&mut self, data: &[u8]) -> Result<(), WireError> {
        self.output.write_all(data).await?;
        Ok(())
    }

    pub async fn shutdown(&mut self) {
        let _ = self.output.flush().await;
    }
}
