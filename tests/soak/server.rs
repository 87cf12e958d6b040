//! The server under test: the `s3sftp serve` binary of this build as a child process, so
//! its memory can be sampled alone, with one key-only user per client.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey};
use s3sftp::storage::client::S3Settings;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

pub const MIB: u64 = 1024 * 1024;

/// Memory and transfer settings given to the server.
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    pub part_mib: u64,
    pub transfer_mib: u64,
    pub memory_mib: u64,
    pub download_chunk_mib: u64,
}

/// One user of the soak server (one per client).
#[derive(Clone)]
pub struct SoakUser {
    pub name: String,
    /// The user's key prefix in the bucket (its home directory).
    pub prefix: String,
    pub key: Arc<PrivateKey>,
    pub key_path: PathBuf,
}

/// Users with fresh ed25519 keys, written as a users file (keys only: no password hashing).
pub fn make_users(dir: &Path, root: &str, count: usize) -> (Vec<SoakUser>, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let mut users = Vec::with_capacity(count);
    for i in 0..count {
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).expect("key");
        let name = format!("soak{i:02}");
        let key_path = dir.join(format!("{name}_ed25519"));
        std::fs::write(
            &key_path,
            key.to_openssh(LineEnding::LF).expect("pem").as_bytes(),
        )
        .expect("write key");
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod key");
        users.push(SoakUser {
            prefix: format!("{root}{name}/"),
            name,
            key: Arc::new(key),
            key_path,
        });
    }
    let entries: Vec<_> = users
        .iter()
        .map(|u| {
            serde_json::json!({
                "username": u.name,
                "public_keys": [u.key.public_key().to_openssh().expect("pub")],
                "key_prefix": u.prefix,
                "enabled": true,
            })
        })
        .collect();
    let file = dir.join("users.json");
    let json = serde_json::to_vec_pretty(&serde_json::json!({ "users": entries })).expect("json");
    std::fs::write(&file, json).expect("write users");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    (users, file)
}

/// Memory of the server process, sampled from `/proc/<pid>/status`.
#[derive(Debug, Default, Clone)]
pub struct MemorySamples {
    pub samples: u64,
    pub peak_rss_kib: u64,
    pub peak_at: Duration,
    pub last_rss_kib: u64,
    pub hwm_kib: u64,
    /// (seconds since start, RSS KiB): one point every `timeline_every`.
    pub timeline: Vec<(u64, u64)>,
}

/// The running server.
pub struct ChildServer {
    child: Child,
    pub pid: u32,
    pub port: u16,
    pub log_path: PathBuf,
    pub memory: Arc<Mutex<MemorySamples>>,
    sampling: Arc<AtomicBool>,
    sampler: Option<tokio::task::JoinHandle<()>>,
    logs: Vec<tokio::task::JoinHandle<()>>,
}

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
pub fn proc_memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

impl ChildServer {
    /// Starts `s3sftp serve` on a free loopback port with `s3` as its bucket.
    pub async fn start(
        out_dir: &Path,
        users_file: &Path,
        s3: &S3Settings,
        budgets: Budgets,
    ) -> ChildServer {
        let (access, secret) = s3.credentials.clone().expect("explicit S3 keys");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_s3sftp"));
        // Nothing from the developer's environment: every setting is explicit here.
        for (name, _) in std::env::vars() {
            if name.starts_with("S3SFTP_") || name.starts_with("AWS_") {
                cmd.env_remove(name);
            }
        }
        cmd.env("NO_COLOR", "1")
            .env("S3SFTP_S3_SECRET_KEY", secret)
            .arg("serve")
            .args(["--log", "info"])
            .args(["--listen", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(out_dir.join("state"))
            .arg("--users-file")
            .arg(users_file)
            .args(["--bucket", &s3.bucket])
            .args(["--s3-endpoint", s3.endpoint.as_deref().expect("endpoint")])
            .args(["--s3-region", s3.region.as_deref().unwrap_or("us-east-1")])
            .args(["--s3-path-style", "--s3-access-key", &access])
            .args(["--s3-max-attempts", "4", "--s3-timeout", "10"])
            .args(["--part-size-mib", &budgets.part_mib.to_string()])
            .args(["--transfer-budget-mib", &budgets.transfer_mib.to_string()])
            .args(["--memory-budget-mib", &budgets.memory_mib.to_string()])
            .args([
                "--download-chunk-mib",
                &budgets.download_chunk_mib.to_string(),
            ])
            .args(["--max-connections-per-ip", "0", "--ban-threshold", "0"])
            .args(["--max-unauthenticated-per-ip", "0"])
            .args(["--auth-failure-delay-ms", "100", "--shutdown-grace", "20"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("s3sftp serve starts");
        let pid = child.id().expect("pid");
        let log_path = out_dir.join("server.log");
        let log = Arc::new(tokio::sync::Mutex::new(
            tokio::fs::File::create(&log_path).await.expect("log file"),
        ));
        let (port_tx, port_rx) = tokio::sync::oneshot::channel::<u16>();
        let mut port_tx = Some(port_tx);
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let out_log = log.clone();
        let out_task = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("listening for SSH") {
                    let port = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse().ok());
                    if let (Some(tx), Some(port)) = (port_tx.take(), port) {
                        let _ = tx.send(port);
                    }
                }
                let mut f = out_log.lock().await;
                let _ = f.write_all(line.as_bytes()).await;
                let _ = f.write_all(b"\n").await;
            }
        });
        let err_log = log.clone();
        let err_task = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("server stderr: {line}");
                let mut f = err_log.lock().await;
                let _ = f.write_all(b"STDERR ").await;
                let _ = f.write_all(line.as_bytes()).await;
                let _ = f.write_all(b"\n").await;
            }
        });
        let port = tokio::time::timeout(Duration::from_secs(60), port_rx)
            .await
            .unwrap_or_else(|_| {
                panic!("server listening within 60 s (log: {})", log_path.display())
            })
            .unwrap_or_else(|_| panic!("server exited at start (log: {})", log_path.display()));
        ChildServer {
            child,
            pid,
            port,
            log_path,
            memory: Arc::default(),
            sampling: Arc::new(AtomicBool::new(false)),
            sampler: None,
            logs: vec![out_task, err_task],
        }
    }

    /// Samples VmRSS every `every` until [`stop_sampling`](Self::stop_sampling).
    pub fn start_sampling(&mut self, every: Duration, timeline_every: Duration) {
        let (pid, memory, on) = (self.pid, self.memory.clone(), self.sampling.clone());
        on.store(true, Ordering::SeqCst);
        let started = Instant::now();
        self.sampler = Some(tokio::spawn(async move {
            let mut next_point = Duration::ZERO;
            while on.load(Ordering::SeqCst) {
                if let Some((rss, hwm)) = proc_memory(pid) {
                    let mut m = memory.lock().unwrap();
                    m.samples += 1;
                    m.last_rss_kib = rss;
                    m.hwm_kib = hwm;
                    if rss > m.peak_rss_kib {
                        m.peak_rss_kib = rss;
                        m.peak_at = started.elapsed();
                    }
                    if started.elapsed() >= next_point {
                        m.timeline.push((started.elapsed().as_secs(), rss));
                        next_point += timeline_every;
                    }
                }
                tokio::time::sleep(every).await;
            }
        }));
    }

    pub async fn stop_sampling(&mut self) -> MemorySamples {
        self.sampling.store(false, Ordering::SeqCst);
        if let Some(task) = self.sampler.take() {
            let _ = task.await;
        }
        self.memory.lock().unwrap().clone()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits for the exit; returns the exit code (None: killed or hung).
    pub async fn stop(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        let status = match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = self.child.kill().await;
                None
            }
        };
        for task in self.logs.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        status
    }
}

/// Lines of the server log that report a panic or an upload that could not be aborted.
pub fn alarming_log_lines(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.contains("panicked")
                || l.contains("could not abort multipart upload")
                || l.contains("cannot abort multipart upload")
                || l.contains(" ERROR ")
        })
        .map(str::to_string)
        .collect()
}
