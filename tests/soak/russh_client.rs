//! An in-process client (russh + russh-sftp): one connection reused for a while, a random
//! mix of upload, download, list, stat, rename and remove, with pipelined READ/WRITE like
//! OpenSSH, and now and then a connection dropped in the middle of an upload.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use russh::keys::PrivateKeyWithHashAlg;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};

use super::ledger::{Outcome, SharedLedger, State, Stats};
use super::{ClientSpec, Op, DIRS};
use crate::common::{random_bytes, sha256, AcceptAll, RusshSftp};

/// SFTP data per READ/WRITE request, and requests in flight (OpenSSH: 32 KiB, 64).
const CHUNK: usize = 32 * 1024;
const IN_FLIGHT: usize = 16;
/// Client-side limit per SFTP request: longer than the server's worst case for one S3
/// request (4 attempts × 10 s plus backoff), so a reply that never comes is a server hang.
pub const REQUEST_TIMEOUT_SECS: u64 = 300;

fn status(e: &SftpError) -> Option<StatusCode> {
    match e {
        SftpError::Status(s) => Some(s.status_code),
        _ => None,
    }
}

fn describe(e: &SftpError) -> String {
    match e {
        SftpError::Status(s) => format!("{:?}: {}", s.status_code, s.error_message),
        other => other.to_string(),
    }
}

/// Connects and logs in with the user's key.
pub async fn login(spec: &ClientSpec) -> Result<russh::client::Handle<AcceptAll>, String> {
    let config = Arc::new(russh::client::Config {
        nodelay: true,
        ..Default::default()
    });
    let attempt = async {
        let mut handle = russh::client::connect(config, ("127.0.0.1", spec.port), AcceptAll)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let auth = handle
            .authenticate_publickey(
                &spec.user.name,
                PrivateKeyWithHashAlg::new(spec.user.key.clone(), None),
            )
            .await
            .map_err(|e| format!("auth: {e}"))?;
        if !auth.success() {
            return Err("key login refused".to_string());
        }
        Ok(handle)
    };
    tokio::time::timeout(Duration::from_secs(60), attempt)
        .await
        .unwrap_or_else(|_| Err("login timed out".into()))
}

/// Connects and logs in with the user's key; opens the SFTP subsystem.
pub async fn connect(spec: &ClientSpec) -> Result<RusshSftp, String> {
    let handle = login(spec).await?;
    let opened = tokio::time::timeout(Duration::from_secs(60), RusshSftp::open(handle)).await;
    let s = opened.unwrap_or_else(|_| Err("opening the SFTP subsystem timed out".into()))?;
    s.raw.set_timeout(REQUEST_TIMEOUT_SECS);
    Ok(s)
}

/// How an upload ended.
enum Upload {
    Acked,
    /// The server answered with an error: nothing may be at the path.
    Refused(String),
    /// The connection failed before CLOSE was sent: the server aborts, nothing at the path.
    Lost(String),
    /// The connection failed after CLOSE was sent: unknowable.
    Unknown(String),
    /// We dropped the connection on purpose mid-upload.
    Killed,
}

async fn upload(s: &RusshSftp, path: &str, data: &[u8], kill_after: Option<usize>) -> Upload {
    let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
    let handle = match s.raw.open(path, flags, FileAttributes::empty()).await {
        Ok(h) => h.handle,
        Err(e) if status(&e).is_some() => return Upload::Refused(format!("open {}", describe(&e))),
        Err(e) => return Upload::Lost(format!("open: {e}")),
    };
    let chunks: Vec<(u64, Vec<u8>)> = data
        .chunks(CHUNK)
        .enumerate()
        .take(kill_after.unwrap_or(usize::MAX))
        .map(|(i, c)| ((i * CHUNK) as u64, c.to_vec()))
        .collect();
    let mut writes = futures::stream::iter(chunks)
        .map(|(offset, chunk)| s.raw.write(&handle, offset, chunk))
        .buffered(IN_FLIGHT);
    let mut refused = None;
    while let Some(r) = writes.next().await {
        match r {
            Ok(_) => {}
            Err(e) if status(&e).is_some() => {
                refused = Some(format!("write {}", describe(&e)));
                break;
            }
            Err(e) => return Upload::Lost(format!("write: {e}")),
        }
    }
    drop(writes);
    if kill_after.is_some() {
        return Upload::Killed;
    }
    match s.raw.close(&handle).await {
        Ok(_) if refused.is_none() => Upload::Acked,
        // A WRITE failed yet CLOSE said OK: the object must not be there (checked at the end).
        Ok(_) => Upload::Refused(format!("{} (CLOSE said OK)", refused.unwrap_or_default())),
        Err(e) if status(&e).is_some() => Upload::Refused(format!("close {}", describe(&e))),
        Err(e) => Upload::Unknown(format!("close: {e}")),
    }
}

/// Reads the whole file with pipelined READs; `Err((transport, reason))`.
async fn download(s: &RusshSftp, path: &str, size: u64) -> Result<Vec<u8>, (bool, String)> {
    let handle = s
        .raw
        .open(path, OpenFlags::READ, FileAttributes::empty())
        .await
        .map_err(|e| (status(&e).is_none(), format!("open {}", describe(&e))))?
        .handle;
    let offsets: Vec<u64> = (0..size.div_ceil(CHUNK as u64))
        .map(|i| i * CHUNK as u64)
        .collect();
    let mut replies = futures::stream::iter(offsets)
        .map(|off| {
            let h = handle.clone();
            async move { (off, s.raw.read(h, off, CHUNK as u32).await) }
        })
        .buffered(IN_FLIGHT);
    let mut data = Vec::with_capacity(size as usize);
    let mut failed = None;
    'reads: while let Some((off, reply)) = replies.next().await {
        match reply {
            Ok(d) => {
                data.extend_from_slice(&d.data);
                // A short read: fetch the rest of this chunk one request at a time.
                let want = (CHUNK as u64).min(size - off) as usize;
                let mut got = d.data.len();
                while got < want {
                    match s
                        .raw
                        .read(&handle, off + got as u64, (want - got) as u32)
                        .await
                    {
                        Ok(more) if more.data.is_empty() => break,
                        Ok(more) => {
                            got += more.data.len();
                            data.extend_from_slice(&more.data);
                        }
                        Err(e) => {
                            failed = Some(e);
                            break 'reads;
                        }
                    }
                }
            }
            Err(e) if status(&e) == Some(StatusCode::Eof) => break,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(replies);
    match failed {
        None => {
            let _ = s.raw.close(&handle).await;
            Ok(data)
        }
        Some(e) => {
            let transport = status(&e).is_none();
            if !transport {
                let _ = s.raw.close(&handle).await;
            }
            Err((transport, format!("read {}", describe(&e))))
        }
    }
}

/// Names in `dir`; `Err((transport, reason))`.
async fn list(s: &RusshSftp, dir: &str) -> Result<Vec<String>, (bool, String)> {
    let dir = if dir.is_empty() { "/" } else { dir };
    let err = |e: SftpError| (status(&e).is_none(), describe(&e));
    let handle = s.raw.opendir(dir).await.map_err(err)?.handle;
    let mut names = Vec::new();
    loop {
        match s.raw.readdir(&handle).await {
            Ok(page) => names.extend(page.files.into_iter().map(|f| f.filename)),
            Err(e) if status(&e) == Some(StatusCode::Eof) => break,
            Err(e) => {
                if status(&e).is_some() {
                    let _ = s.raw.close(&handle).await;
                }
                return Err(err(e));
            }
        }
    }
    let _ = s.raw.close(&handle).await;
    Ok(names)
}

/// After a failed rename or remove: whether the path exists, if the server can tell
/// within a few tries (S3 outages in the soak last at most 5 s).
async fn exists(s: &RusshSftp, path: &str) -> Option<bool> {
    for _ in 0..4 {
        match s.raw.stat(path).await {
            Ok(_) => return Some(true),
            Err(e) if status(&e) == Some(StatusCode::NoSuchFile) => return Some(false),
            Err(e) if status(&e).is_none() => return None,
            Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
    None
}

/// A random upload size: mostly small files, some a few multipart parts long.
pub fn upload_size(rng: &mut StdRng, part: u64) -> usize {
    let r: f64 = rng.random();
    if r < 0.35 {
        rng.random_range(0..64 * 1024)
    } else if r < 0.70 {
        rng.random_range(64 * 1024..1024 * 1024)
    } else if r < 0.92 {
        rng.random_range(1024 * 1024..part as usize)
    } else {
        rng.random_range(part as usize..3 * part as usize + 1)
    }
}

/// Runs the client until `spec.stop` is set, recording what it knows in `ledger`.
pub async fn run(spec: ClientSpec, stats: Arc<Stats>, ledger: SharedLedger) {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut conn: Option<RusshSftp> = None;
    let mut ops_on_conn = 0u32;
    let mut dirs: Vec<&str> = vec![""];
    let mut made_dirs = false;
    while !spec.stopped() {
        if conn.is_none() || ops_on_conn >= spec.ops_per_login {
            conn = None;
            match connect(&spec).await {
                Ok(c) => {
                    stats.op("login", Outcome::Ok);
                    conn = Some(c);
                    ops_on_conn = 0;
                }
                Err(e) => {
                    stats.failure("login", Outcome::Failed, &e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let s = conn.as_ref().expect("connected");
        ops_on_conn += 1;
        if !made_dirs {
            made_dirs = true;
            for d in DIRS {
                let sha = sha256(b"");
                ledger.set(
                    d,
                    State::Uncertain {
                        sha,
                        why: "mkdir in flight",
                    },
                );
                match s.raw.mkdir(d, FileAttributes::empty()).await {
                    Ok(_) => {
                        stats.op("mkdir", Outcome::Ok);
                        ledger.set(d, State::Dir);
                        dirs.push(d);
                    }
                    Err(e) => {
                        stats.failure("mkdir", Outcome::Failed, &describe(&e));
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
            }
        }
        let dir = dirs[rng.random_range(0..dirs.len())];
        let mut drop_conn = false;
        match spec.pick_op(&mut rng, &ledger) {
            Op::Upload => {
                let size = upload_size(&mut rng, spec.part);
                let data = random_bytes(size, rng.random());
                let path = ledger.fresh_path(spec.id, dir, "up");
                let kill_after = (size > 4 * CHUNK && rng.random_bool(spec.kill_rate))
                    .then(|| rng.random_range(1..size / CHUNK));
                let sha = sha256(&data);
                let in_flight = State::Uncertain {
                    sha: sha.clone(),
                    why: "upload in flight",
                };
                ledger.set(&path, in_flight);
                match upload(s, &path, &data, kill_after).await {
                    Upload::Acked => {
                        stats.op("upload", Outcome::Ok);
                        stats.up(size as u64);
                        ledger.set(
                            &path,
                            State::Acked {
                                sha,
                                size: size as u64,
                            },
                        );
                    }
                    Upload::Refused(why) => {
                        stats.failure("upload", Outcome::Failed, &why);
                        ledger.set(
                            &path,
                            State::Absent {
                                why: "upload refused",
                            },
                        );
                    }
                    Upload::Lost(why) => {
                        stats.failure("upload", Outcome::Failed, &why);
                        ledger.set(
                            &path,
                            State::Absent {
                                why: "upload lost before CLOSE",
                            },
                        );
                        drop_conn = true;
                    }
                    Upload::Unknown(why) => {
                        stats.failure("upload", Outcome::Unknown, &why);
                        ledger.set(
                            &path,
                            State::Uncertain {
                                sha,
                                why: "CLOSE unanswered",
                            },
                        );
                        drop_conn = true;
                    }
                    Upload::Killed => {
                        stats.note("connections dropped mid-upload");
                        ledger.set(
                            &path,
                            State::Absent {
                                why: "connection dropped mid-upload",
                            },
                        );
                        drop_conn = true;
                    }
                }
            }
            Op::Download => {
                let Some((path, sha, size)) = ledger.pick_acked(&mut rng) else {
                    continue;
                };
                match download(s, &path, size).await {
                    Ok(data) if data.len() as u64 == size && sha256(&data) == sha => {
                        stats.op("download", Outcome::Ok);
                        stats.down(size);
                    }
                    Ok(data) => {
                        stats.op("download", Outcome::Failed);
                        stats.violation(format!(
                            "{}: download of acknowledged {path} gave {} bytes (sha {}), expected {size} (sha {sha})",
                            spec.user.name,
                            data.len(),
                            sha256(&data)
                        ));
                    }
                    Err((transport, why)) => {
                        if why.contains("NoSuchFile") {
                            stats.violation(format!(
                                "{}: acknowledged {path} not found by the server: {why}",
                                spec.user.name
                            ));
                        }
                        stats.failure("download", Outcome::Failed, &why);
                        drop_conn = transport;
                    }
                }
            }
            Op::List => match list(s, dir).await {
                Ok(names) => {
                    stats.op("list", Outcome::Ok);
                    for name in ledger.acked_in(dir) {
                        if !names.contains(&name) {
                            stats.violation(format!(
                                "{}: listing of '{dir}/' lacks acknowledged {name}",
                                spec.user.name
                            ));
                        }
                    }
                    for name in &names {
                        let path = format!("{dir}/{name}");
                        if let Some(State::Absent { why }) = ledger.get(&path) {
                            stats.violation(format!(
                                "{}: listing shows {path}, which must be absent ({why})",
                                spec.user.name
                            ));
                        }
                    }
                }
                Err((transport, why)) => {
                    stats.failure("list", Outcome::Failed, &why);
                    drop_conn = transport;
                }
            },
            Op::Stat => {
                let Some((path, _, size)) = ledger.pick_acked(&mut rng) else {
                    continue;
                };
                match s.raw.stat(&path).await {
                    Ok(a) if a.attrs.size == Some(size) => stats.op("stat", Outcome::Ok),
                    Ok(a) => stats.violation(format!(
                        "{}: stat {path} says {:?} bytes, acknowledged {size}",
                        spec.user.name, a.attrs.size
                    )),
                    Err(e) => {
                        if status(&e) == Some(StatusCode::NoSuchFile) {
                            stats.violation(format!(
                                "{}: acknowledged {path} not found by stat",
                                spec.user.name
                            ));
                        }
                        stats.failure("stat", Outcome::Failed, &describe(&e));
                        drop_conn = status(&e).is_none();
                    }
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
                match s.raw.rename(&from, &to).await {
                    Ok(_) => {
                        stats.op("rename", Outcome::Ok);
                        ledger.set(
                            &from,
                            State::Absent {
                                why: "renamed away",
                            },
                        );
                        ledger.set(&to, State::Acked { sha, size });
                    }
                    Err(e) => {
                        let transport = status(&e).is_none();
                        let outcome = if transport {
                            Outcome::Unknown
                        } else {
                            Outcome::Failed
                        };
                        stats.failure("rename", outcome, &describe(&e));
                        if transport {
                            drop_conn = true;
                            ledger.set(
                                &from,
                                State::Uncertain {
                                    sha: sha.clone(),
                                    why: "rename unanswered",
                                },
                            );
                            ledger.set(
                                &to,
                                State::Uncertain {
                                    sha,
                                    why: "rename unanswered",
                                },
                            );
                        } else {
                            resolve_failed_rename(s, &ledger, &stats, &from, &to, sha, size).await;
                        }
                    }
                }
            }
            Op::Remove => {
                let Some((path, sha, size)) = ledger.pick_acked(&mut rng) else {
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
                match s.raw.remove(&path).await {
                    Ok(_) => {
                        stats.op("remove", Outcome::Ok);
                        ledger.set(&path, State::Absent { why: "removed" });
                    }
                    Err(e) => {
                        stats.failure("remove", Outcome::Failed, &describe(&e));
                        drop_conn = status(&e).is_none();
                        let state = match exists(s, &path).await {
                            Some(true) => State::Acked { sha, size },
                            Some(false) => {
                                stats.note("remove failed but the file is gone");
                                State::Absent {
                                    why: "removed (reported failed)",
                                }
                            }
                            None => State::Uncertain {
                                sha,
                                why: "remove failed",
                            },
                        };
                        ledger.set(&path, state);
                    }
                }
            }
        }
        if drop_conn {
            conn = None;
        }
        let pause = rng.random_range(0..spec.think_ms.max(1));
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// A rename the server refused: find out, through the server, where the file is now.
async fn resolve_failed_rename(
    s: &RusshSftp,
    ledger: &SharedLedger,
    stats: &Stats,
    from: &str,
    to: &str,
    sha: String,
    size: u64,
) {
    let (src, dst) = (exists(s, from).await, exists(s, to).await);
    let acked = || State::Acked {
        sha: sha.clone(),
        size,
    };
    match (src, dst) {
        (Some(true), Some(false)) => {
            ledger.set(from, acked());
            ledger.set(
                to,
                State::Absent {
                    why: "refused rename target",
                },
            );
        }
        (Some(true), Some(true)) => {
            // The copy was made but the source could not be deleted: both exist, the
            // client was told FAILURE. Not data loss; counted and reported.
            stats.note("failed rename left both source and copy");
            ledger.set(from, acked());
            ledger.set(to, acked());
        }
        (Some(false), Some(true)) => {
            stats.note("rename reported failed but was done");
            ledger.set(
                from,
                State::Absent {
                    why: "renamed away (reported failed)",
                },
            );
            ledger.set(to, acked());
        }
        (Some(false), Some(false)) => {
            stats.violation(format!(
                "{from}: acknowledged file gone after a failed rename to {to}"
            ));
            ledger.set(
                from,
                State::Uncertain {
                    sha: sha.clone(),
                    why: "lost in rename",
                },
            );
            ledger.set(
                to,
                State::Uncertain {
                    sha,
                    why: "lost in rename",
                },
            );
        }
        _ => {
            ledger.set(
                from,
                State::Uncertain {
                    sha: sha.clone(),
                    why: "rename failed",
                },
            );
            ledger.set(
                to,
                State::Uncertain {
                    sha,
                    why: "rename failed",
                },
            );
        }
    }
}
