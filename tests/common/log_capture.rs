//! Server logs captured into memory, for tests that search them.
//!
//! The capture is the process's global tracing subscriber: a process can install only one,
//! and it would see the logs of every server the process runs. So a test that captures
//! runs alone in a child process of the test binary ([`Capture::alone`]), as if it had a
//! test binary of its own, and sees only its own server's lines.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// Names the one test a child process of the test binary runs (and captures for).
const CHILD_ENV: &str = "S3SFTP_TEST_CAPTURE_CHILD";

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
        let thread = std::thread::current();
        let name = thread
            .name()
            .filter(|n| n.contains("::"))
            .expect("libtest names the test's thread after the test");
        match std::env::var(CHILD_ENV) {
            Ok(child) if child == name => return Some(Self::install(filter)),
            Ok(child) => panic!("the child process for {child} runs {name}"),
            Err(_) => {}
        }
        let exe = std::env::current_exe().expect("the test binary");
        let out = tokio::process::Command::new(exe)
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, name)
            .output()
            .await
            .expect("the test binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        print!("{stdout}");
        eprint!("{stderr}");
        assert!(
            out.status.success() && stdout.contains(&format!("test {name} ... ok")),
            "{name} failed in its own process ({})",
            out.status
        );
        None
    }

    /// The capture [`Capture::alone`] installed in this process.
    pub fn installed() -> &'static Capture {
        INSTALLED.get().expect("Capture::alone ran first")
    }

    /// Installs a global subscriber at `filter` that writes into the capture.
    fn install(filter: &str) -> &'static Capture {
        let capture = INSTALLED.get_or_init(Capture::default);
        let writer = capture.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
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
