//! What ends a connection for sure, whatever it is doing.
//!
//! russh runs each connection's session loop in a task it spawns and gives no way to
//! abort. That loop stops reading its socket while a channel it delivers to is full, and
//! ignores a DISCONNECT asked for during an unfinished key exchange, so a polite
//! disconnect can wait forever. A [`Lifeline`] ends it from outside instead: it shuts the
//! socket down (the peer sees the connection close at once, and the loop's next read
//! ends), and cancels [`Lifeline::killed`], which every task of the connection (front
//! ends, readers of unclaimed channels, queued password checks) watches, so whatever the
//! loop was waiting on is dropped and the loop can finish.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::registry::Registration;

/// Shared by a connection's task, its russh handler and the socket it runs on.
#[derive(Debug, Default)]
pub struct Lifeline {
    /// Cancelled when the connection is cut: everything it runs stops.
    killed: CancellationToken,
    /// The socket while its stream lives. The stream clears it under this lock before the
    /// socket closes, so [`Lifeline::sever`] never shuts down a descriptor number that
    /// was closed and reused by another connection.
    fd: Mutex<Option<RawFd>>,
    /// The user's place among its live sessions, held here (not in the handler, which a
    /// wedged russh task would keep forever) so the connection task frees it on exit.
    registration: Mutex<Option<Registration>>,
    /// A failed login (or a penalty) was already counted for this connection.
    penalised: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Lifeline {
    /// Wraps `socket` so that [`Lifeline::sever`] can shut it down.
    pub fn wrap(self: &Arc<Self>, socket: TcpStream) -> LinkedStream {
        *lock(&self.fd) = Some(socket.as_raw_fd());
        LinkedStream {
            inner: socket,
            lifeline: self.clone(),
        }
    }

    /// Cancelled once the connection is cut.
    pub fn killed(&self) -> &CancellationToken {
        &self.killed
    }

    /// Cuts the connection: shuts its socket down in both directions and stops every
    /// task of the connection. Calling it again does nothing more.
    #[allow(
        unsafe_code,
        reason = "shutdown(2) of a socket another task owns; russh keeps the stream"
    )]
    pub fn sever(&self) {
        if let Some(fd) = *lock(&self.fd) {
            // SAFETY: `fd` is open: the stream that owns it clears `self.fd` under this
            // lock before closing it. shutdown(2) neither closes nor frees the descriptor.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
        self.killed.cancel();
    }

    /// Whether the client has closed its side of the socket (FIN or RST seen). A healthy
    /// session ends by itself as soon as that happens; one still running seconds later is
    /// wedged, and the connection task cuts it.
    pub fn peer_closed(&self) -> bool {
        let guard = lock(&self.fd);
        let Some(fd) = *guard else { return false };
        peer_closed(fd)
    }

    /// Keeps the user's session registration until [`Lifeline::release`].
    pub fn hold(&self, registration: Registration) {
        *lock(&self.registration) = Some(registration);
    }

    /// Frees the user's session registration, if any.
    pub fn release(&self) {
        lock(&self.registration).take();
    }

    /// Marks that a failed login was counted; returns whether one was already.
    pub fn mark_penalised(&self) -> bool {
        self.penalised.swap(true, Ordering::AcqRel)
    }
}

/// Whether the peer of the open socket `fd` has closed its side; polled, never blocks.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[allow(
    unsafe_code,
    reason = "poll(2) for POLLRDHUP, which no safe wrapper in our dependencies offers"
)]
fn peer_closed(fd: RawFd) -> bool {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd; `fd` is open (see `Lifeline::fd`); a zero timeout.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
    ready > 0 && pollfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Elsewhere the check is not available: a wedged session is then ended only by the
/// other deadlines (kicks, expiry, shutdown).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn peer_closed(_fd: RawFd) -> bool {
    false
}

/// A TCP stream its [`Lifeline`] can shut down from another task.
pub struct LinkedStream {
    inner: TcpStream,
    lifeline: Arc<Lifeline>,
}

impl Drop for LinkedStream {
    fn drop(&mut self) {
        // Before `inner` drops and closes the descriptor.
        *lock(&self.lifeline.fd) = None;
    }
}

impl AsyncRead for LinkedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for LinkedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn sever_closes_the_socket_for_both_sides() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let lifeline = Arc::new(Lifeline::default());
        let mut stream = lifeline.wrap(server);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            stream.read(&mut buf).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        lifeline.sever();
        assert!(lifeline.killed().is_cancelled());
        // The server side's pending read ends...
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("the read ends")
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        // ...and the client sees the connection closed.
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("the client sees the close");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        let _ = client.write_all(b"x").await;
        // Once the stream is gone, severing again touches no descriptor.
        assert!(lock(&lifeline.fd).is_none());
        lifeline.sever();
    }

    #[tokio::test]
    async fn a_closed_peer_is_seen() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let lifeline = Arc::new(Lifeline::default());
        let stream = lifeline.wrap(server);
        assert!(!lifeline.peer_closed());
        drop(client);
        let mut seen = false;
        for _ in 0..50 {
            if lifeline.peer_closed() {
                seen = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(seen, "the client's close is seen");
        drop(stream);
        assert!(!lifeline.peer_closed(), "no socket, nothing to check");
    }

    /// A handler that gives each channel to a task that never reads it (a front end that
    /// stopped reading) until the connection is cut.
    struct Wedge {
        killed: CancellationToken,
    }

    impl russh::server::Handler for Wedge {
        type Error = russh::Error;

        async fn auth_none(&mut self, _user: &str) -> Result<russh::server::Auth, Self::Error> {
            Ok(russh::server::Auth::Accept)
        }

        async fn channel_open_session(
            &mut self,
            channel: russh::Channel<russh::server::Msg>,
            reply: russh::server::ChannelOpenHandle,
            _session: &mut russh::server::Session,
        ) -> Result<(), Self::Error> {
            let killed = self.killed.clone();
            tokio::spawn(async move {
                killed.cancelled().await;
                drop(channel);
            });
            reply.accept().await;
            Ok(())
        }
    }

    struct Client;

    impl russh::client::Handler for Client {
        type Error = russh::Error;
        async fn check_server_key(
            &mut self,
            _key: &russh::keys::PublicKeyOrCertificate,
        ) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sever_ends_a_russh_session_wedged_on_an_unread_channel() {
        use std::time::Duration;
        let key =
            russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
                .unwrap();
        let config = Arc::new(russh::server::Config {
            methods: russh::MethodSet::from(&[russh::MethodKind::None][..]),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![key],
            ..Default::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let lifeline = Arc::new(Lifeline::default());
        let server = {
            let lifeline = lifeline.clone();
            // Returns the running session (a future) for the test to await.
            #[allow(clippy::async_yields_async)]
            tokio::spawn(async move {
                let (socket, _) = listener.accept().await.unwrap();
                let handler = Wedge {
                    killed: lifeline.killed().clone(),
                };
                russh::server::run_stream(config, lifeline.wrap(socket), handler)
                    .await
                    .unwrap()
            })
        };
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut client = russh::client::connect_stream(
            Arc::new(russh::client::Config::default()),
            stream,
            Client,
        )
        .await
        .unwrap();
        assert!(client.authenticate_none("u").await.unwrap().success());
        let mut session = server.await.unwrap();
        let channel = client.channel_open_session().await.unwrap();
        // More messages than russh queues for a channel (100): its loop now waits.
        for _ in 0..300 {
            channel.data_bytes(vec![b'x'; 64]).await.unwrap();
        }
        let _ = client
            .disconnect(russh::Disconnect::ByApplication, "bye", "en")
            .await;
        assert!(
            tokio::time::timeout(Duration::from_secs(2), &mut session)
                .await
                .is_err(),
            "the session is wedged: even the client's DISCONNECT is not read"
        );
        lifeline.sever();
        let ended = tokio::time::timeout(Duration::from_secs(10), &mut session).await;
        assert!(ended.is_ok(), "a severed session ends");
    }
}
