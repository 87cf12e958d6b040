//! SFTP packets written and read by hand, for tests that pipeline or misbehave in ways the
//! russh-sftp client will not (thousands of requests before any reply, overlapping writes).

use russh::client::Msg;
use russh::ChannelStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use super::{AcceptAll, TestServer, TestUser};

/// An SFTP channel after INIT/VERSION, split so requests and replies can flow at once.
pub struct RawSftp {
    pub rd: ReadHalf<ChannelStream<Msg>>,
    pub wr: WriteHalf<ChannelStream<Msg>>,
    /// Keeps the SSH connection open.
    pub connection: russh::client::Handle<AcceptAll>,
}

impl RawSftp {
    /// Logs `user` in with its key, opens the sftp subsystem and exchanges INIT/VERSION.
    pub async fn open(t: &TestServer, user: &TestUser) -> RawSftp {
        let connection = t.russh_login(user).await;
        let channel = connection.channel_open_session().await.expect("channel");
        channel.request_subsystem(true, "sftp").await.expect("sftp");
        let (mut rd, mut wr) = tokio::io::split(channel.into_stream());
        // INIT: no request id, version 3 takes its place.
        wr.write_all(&[0, 0, 0, 5, 1, 0, 0, 0, 3]).await.unwrap();
        assert_eq!(read_reply(&mut rd).await.0, 2, "VERSION");
        RawSftp { rd, wr, connection }
    }

    /// OPENs `path` with `pflags` (no attributes) as request 1; the handle.
    pub async fn open_file(&mut self, path: &str, pflags: u32) -> Vec<u8> {
        let mut open = string(path.as_bytes());
        open.extend(pflags.to_be_bytes());
        open.extend(0u32.to_be_bytes());
        self.wr.write_all(&packet(3, 1, &open)).await.unwrap();
        let (kind, _, body) = read_reply(&mut self.rd).await;
        assert_eq!(kind, 102, "HANDLE for {path}: {:?}", status_of(&body));
        body[4..].to_vec()
    }
}

/// One SFTP packet: length, type, request id, body.
pub fn packet(kind: u8, id: u32, body: &[u8]) -> Vec<u8> {
    let mut p = ((body.len() + 5) as u32).to_be_bytes().to_vec();
    p.push(kind);
    p.extend(id.to_be_bytes());
    p.extend(body);
    p
}

/// An SFTP string: length, then the bytes.
pub fn string(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend(s);
    v
}

/// Reads one SFTP reply: (type, request id, body).
pub async fn read_reply(r: &mut (impl AsyncReadExt + Unpin)) -> (u8, u32, Vec<u8>) {
    let len = r.read_u32().await.expect("reply length") as usize;
    let mut buf = vec![0; len];
    r.read_exact(&mut buf).await.expect("reply");
    let id = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    (buf[0], id, buf[5..].to_vec())
}

/// A STATUS body: (code, message).
pub fn status_of(body: &[u8]) -> (u32, String) {
    if body.len() < 8 {
        return (u32::MAX, String::new());
    }
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let len = u32::from_be_bytes([body[4], body[5], body[6], body[7]]) as usize;
    let end = (8 + len).min(body.len());
    (code, String::from_utf8_lossy(&body[8..end]).into_owned())
}
