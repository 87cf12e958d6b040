//! A client made of real OpenSSH processes: every operation is one `sftp -b` batch or one
//! `scp -O` (legacy SCP protocol) run, each a fresh SSH connection and login.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::ledger::{Outcome, SharedLedger, State, Stats};
use super::russh_client::upload_size;
use super::{ClientSpec, Op, DIRS};
use crate::common::{random_bytes, sha256, ssh_options};

/// Longer than the server's worst case for one S3 request; a run past it is a hang.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(300);

struct Tools {
    spec: ClientSpec,
    dir: PathBuf,
}

impl Tools {
    /// The tests' OpenSSH options, with a connect timeout: a soak run must not hang on
    /// a server that stopped accepting.
    fn options(&self) -> Vec<String> {
        let mut options = ssh_options(&self.spec.user.key_path);
        options.extend(["-o".to_string(), "ConnectTimeout=30".to_string()]);
        options
    }

    async fn run(&self, mut cmd: tokio::process::Command) -> Option<Output> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().expect("OpenSSH client runs");
        tokio::time::timeout(PROCESS_TIMEOUT, child.wait_with_output())
            .await
            .ok()
            .and_then(Result::ok)
    }

    async fn sftp(&self, batch: &str) -> Option<Output> {
        let file = self.dir.join("batch");
        std::fs::write(&file, batch).ok()?;
        let mut cmd = tokio::process::Command::new("sftp");
        cmd.args(self.options())
            .arg("-P")
            .arg(self.spec.port.to_string())
            .arg("-b")
            .arg(&file)
            .arg(format!("{}@127.0.0.1", self.spec.user.name));
        self.run(cmd).await
    }

    /// `scp -O`; `upload`: local → remote, else remote → local.
    async fn scp(&self, local: &std::path::Path, remote: &str, upload: bool) -> Option<Output> {
        let remote = format!("{}@127.0.0.1:{remote}", self.spec.user.name);
        let local = local.display().to_string();
        let mut cmd = tokio::process::Command::new("scp");
        cmd.arg("-O")
            .args(self.options())
            .arg("-P")
            .arg(self.spec.port.to_string());
        if upload {
            cmd.arg(local).arg(remote);
        } else {
            cmd.arg(remote).arg(local);
        }
        self.run(cmd).await
    }
}

/// Why a run failed, and whether the connection broke (outcome unknowable) rather than
/// the server answering with an error.
fn failure(out: &Option<Output>) -> (bool, String) {
    let Some(out) = out else {
        return (true, "timed out".into());
    };
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .to_string();
    let broken = [
        "lost connection",
        "Connection closed",
        "Connection reset",
        "Broken pipe",
    ]
    .iter()
    .any(|m| err.contains(m));
    (broken, line)
}

fn kind_of(scp: bool) -> &'static str {
    if scp {
        "scp upload"
    } else {
        "sftp upload"
    }
}

/// Every run is a fresh SSH connection and login: no output means it failed (or hung).
fn note_login(stats: &Stats, out: &Option<Output>) {
    let outcome = if out.is_some() {
        Outcome::Ok
    } else {
        Outcome::Failed
    };
    stats.op("login", outcome);
}

fn ok(out: &Option<Output>) -> bool {
    out.as_ref().is_some_and(|o| o.status.success())
}

/// Runs the client until `spec.stop` is set, recording what it knows in `ledger`.
pub async fn run(spec: ClientSpec, stats: Arc<Stats>, work_dir: PathBuf, ledger: SharedLedger) {
    if let Err(e) = std::fs::create_dir_all(&work_dir) {
        stats.violation(format!(
            "{}: cannot make {}: {e}",
            spec.user.name,
            work_dir.display()
        ));
        return;
    }
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let tools = Tools {
        spec: spec.clone(),
        dir: work_dir.clone(),
    };
    let mut dirs: Vec<&str> = vec![""];
    for d in DIRS {
        let sha = sha256(b"");
        ledger.set(
            d,
            State::Uncertain {
                sha,
                why: "mkdir in flight",
            },
        );
    }
    let batch: String = DIRS.iter().map(|d| format!("mkdir {d}\n")).collect();
    let out = tools.sftp(&batch).await;
    note_login(&stats, &out);
    if ok(&out) {
        for d in DIRS {
            stats.op("mkdir", Outcome::Ok);
            ledger.set(d, State::Dir);
            dirs.push(d);
        }
    } else {
        let (_, why) = failure(&out);
        stats.failure("mkdir", Outcome::Failed, &why);
        for d in DIRS {
            let sha = sha256(b"");
            ledger.set(
                d,
                State::Uncertain {
                    sha,
                    why: "mkdir failed",
                },
            );
        }
    }
    let local = work_dir.join("file.bin");
    while !spec.stopped() {
        let dir = dirs[rng.random_range(0..dirs.len())];
        let use_scp = rng.random_bool(0.5);
        let op = match spec.pick_op(&mut rng, &ledger) {
            // Each operation is a login; a stat is just a short list here.
            Op::Stat => Op::List,
            op => op,
        };
        match op {
            Op::Upload => {
                // Smaller files than the in-process clients: each run also pays a login.
                let size = upload_size(&mut rng, spec.part).min(2 * spec.part as usize);
                let data = random_bytes(size, rng.random());
                if let Err(e) = std::fs::write(&local, &data) {
                    stats.failure(
                        kind_of(use_scp),
                        Outcome::Failed,
                        &format!("local file: {e}"),
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                let sha = sha256(&data);
                let (kind, tag) = if use_scp {
                    ("scp upload", "scp")
                } else {
                    ("sftp upload", "sftp")
                };
                let path = ledger.fresh_path(spec.id, dir, tag);
                let in_flight = State::Uncertain {
                    sha: sha.clone(),
                    why: "upload in flight",
                };
                ledger.set(&path, in_flight);
                let out = if use_scp {
                    tools.scp(&local, &path, true).await
                } else {
                    tools
                        .sftp(&format!("put {} {path}\n", local.display()))
                        .await
                };
                note_login(&stats, &out);
                if ok(&out) {
                    stats.op(kind, Outcome::Ok);
                    stats.up(size as u64);
                    ledger.set(
                        &path,
                        State::Acked {
                            sha,
                            size: size as u64,
                        },
                    );
                } else {
                    let (broken, why) = failure(&out);
                    if broken {
                        stats.failure(kind, Outcome::Unknown, &why);
                        ledger.set(
                            &path,
                            State::Uncertain {
                                sha,
                                why: "connection broke",
                            },
                        );
                    } else {
                        stats.failure(kind, Outcome::Failed, &why);
                        ledger.set(
                            &path,
                            State::Absent {
                                why: "upload refused",
                            },
                        );
                    }
                }
            }
            Op::Download => {
                let Some((path, sha, size)) = ledger.pick_acked(&mut rng) else {
                    continue;
                };
                let _ = std::fs::remove_file(&local);
                let kind = if use_scp {
                    "scp download"
                } else {
                    "sftp download"
                };
                let out = if use_scp {
                    tools.scp(&local, &path, false).await
                } else {
                    tools
                        .sftp(&format!("get {path} {}\n", local.display()))
                        .await
                };
                note_login(&stats, &out);
                if ok(&out) {
                    let got = std::fs::read(&local).unwrap_or_default();
                    if got.len() as u64 == size && sha256(&got) == sha {
                        stats.op(kind, Outcome::Ok);
                        stats.down(size);
                    } else {
                        stats.op(kind, Outcome::Failed);
                        stats.violation(format!(
                            "{}: {kind} of acknowledged {path} gave {} bytes, expected {size}",
                            spec.user.name,
                            got.len()
                        ));
                    }
                } else {
                    let (_, why) = failure(&out);
                    stats.failure(kind, Outcome::Failed, &why);
                }
            }
            Op::List | Op::Stat => {
                let target = if dir.is_empty() { "/" } else { dir };
                let out = tools.sftp(&format!("ls -1 {target}\n")).await;
                note_login(&stats, &out);
                if ok(&out) {
                    stats.op("sftp list", Outcome::Ok);
                } else {
                    let (_, why) = failure(&out);
                    stats.failure("sftp list", Outcome::Failed, &why);
                }
            }
            Op::Rename => {
                let Some((from, sha, size)) = ledger.pick_acked(&mut rng) else {
                    continue;
                };
                let to_dir = dirs[rng.random_range(0..dirs.len())];
                let to = ledger.fresh_path(spec.id, to_dir, "mv");
                let why = "rename in flight";
                ledger.set(
                    &from,
                    State::Uncertain {
                        sha: sha.clone(),
                        why,
                    },
                );
                ledger.set(
                    &to,
                    State::Uncertain {
                        sha: sha.clone(),
                        why,
                    },
                );
                let out = tools.sftp(&format!("rename {from} {to}\n")).await;
                note_login(&stats, &out);
                if ok(&out) {
                    stats.op("sftp rename", Outcome::Ok);
                    ledger.set(
                        &from,
                        State::Absent {
                            why: "renamed away",
                        },
                    );
                    ledger.set(&to, State::Acked { sha, size });
                } else {
                    let (_, why) = failure(&out);
                    stats.failure("sftp rename", Outcome::Failed, &why);
                    ledger.set(
                        &from,
                        State::Uncertain {
                            sha: sha.clone(),
                            why: "rename failed",
                        },
                    );
                    ledger.set(
                        &to,
                        State::Uncertain {
                            sha,
                            why: "rename failed",
                        },
                    );
                }
            }
            Op::Remove => {
                let Some((path, sha, _)) = ledger.pick_acked(&mut rng) else {
                    continue;
                };
                let why = "remove in flight";
                ledger.set(
                    &path,
                    State::Uncertain {
                        sha: sha.clone(),
                        why,
                    },
                );
                let out = tools.sftp(&format!("rm {path}\n")).await;
                note_login(&stats, &out);
                if ok(&out) {
                    stats.op("sftp remove", Outcome::Ok);
                    ledger.set(&path, State::Absent { why: "removed" });
                } else {
                    let (_, why) = failure(&out);
                    stats.failure("sftp remove", Outcome::Failed, &why);
                    ledger.set(
                        &path,
                        State::Uncertain {
                            sha,
                            why: "remove failed",
                        },
                    );
                }
            }
        }
        let pause = rng.random_range(0..spec.think_ms.max(1));
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}
