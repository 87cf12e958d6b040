//! Server logs captured into memory, for tests that search them.
//!
//! The capture is the process's global tracing subscriber: a process can install only one,
//! and it would see the logs of every server the process runs. So a test that captures
//! runs alone in a child process of the test binary ([`Capture::alone`]), as if it had a
//! test binary of its own, and sees only its own server's lines.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use s3sftp::cli::LogFormat;

static INSTALLED: OnceLock<Capture> = OnceLock::new();

#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Runs the calling test alone in a child process of the test binary, where it gets a
    /// capture of every log line at `filter`. In the child: installs the global subscriber
    /// and returns the capture. In the test binary's own process: runs the child, fails if
    /// the test fails there (or did not run), and returns `None`: the caller returns.
    pub async fn alone(filter: &str) -> Option<&'static Capture> {
        Self::alone_as(LogFormat::Text, filter).await
    }

    /// Like [`Capture::alone`], in the server's `--log-format json`.
    pub async fn alone_json(filter: &str) -> Option<&'static Capture> {
        Self::alone_as(LogFormat::Json, filter).await
    }

    async fn alone_as(format: LogFormat, filter: &str) -> Option<&'static Capture> {
        if super::alone::in_own_process().await {
            Some(Self::install(format, filter))
        } else {
            None
        }
    }

    /// The capture [`Capture::alone`] installed in this process.
    pub fn installed() -> &'static Capture {
        INSTALLED.get().expect("Capture::alone ran first")
    }

    /// Installs the server's subscriber, in `format` at `filter`, writing into the capture.
    fn install(format: LogFormat, filter: &str) -> &'static Capture {
        let capture = INSTALLED.get_or_init(Capture::default);
        let writer = capture.clone();
        let filter = tracing_subscriber::EnvFilter::new(filter);
        s3sftp::logging::install(format, filter, false, move || writer.clone())
            .expect("the only subscriber of this process");
        capture
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        match self.0.lock() {
            Ok(v) => String::from_utf8_lossy(&v).into_owned(),
            Err(poisoned) => String::from_utf8_lossy(&poisoned.into_inner()).into_owned(),
        }
    }
}
