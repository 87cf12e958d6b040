//! `scp -t`: the client uploads. Each file streams into a storage [`Upload`] (multipart
//! beyond one part, bounded memory) and is acknowledged only once committed in S3.

use std::sync::Arc;
use std::time::Instant;

use crate::activity::Activity;

use crate::audit::{self, Protocol, TransferResult};
use crate::metrics::Direction;
use tokio::io::{AsyncRead, AsyncWrite};

use super::protocol::{self, Control};
use super::wire::{Reply, Wire, WireError};
use super::{Outcome, ScpArgs};
use crate::storage::{StorageError, Upload, UserStore, VirtualPath, WriteMode};

/// Where the next `C`/`D` line lands.
struct Target {
    path: VirtualPath,
    /// Names go inside `path` (it is a directory) rather than replacing it.
    is_dir: bool,
}

pub async fn run<R, W>(
    args: &ScpArgs,
    store: &UserStore,
    (username, activity): (&str, &Arc<Activity>),
    wire: &mut Wire<R, W>,
) -> Result<Outcome, WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut outcome = Outcome::default();
    let [target] = &args.paths[..] else {
        wire.error("ambiguous target").await?;
        return Ok(Outcome::failed());
    };
    let path = match VirtualPath::parse_str(target) {
        Ok(p) => p,
        Err(e) => {
            wire.error(&format!("{target}: {e}")).await?;
            return Ok(Outcome::failed());
        }
    };
    let is_dir = match store.stat(&path).await {
        Ok(entry) => entry.is_dir(),
        Err(StorageError::NotFound) => false,
        Err(e) => {
            wire.error(&format!("{target}: {e}")).await?;
            return Ok(Outcome::failed());
        }
    };
    if args.target_is_dir && !is_dir {
        wire.error(&format!("{target}: Not a directory")).await?;
        return Ok(Outcome::failed());
    }
    wire.ok().await?;

    let mut stack = vec![Target { path, is_dir }];
    // The time a `T` line (`scp -p`) gave for the next `C` or `D`.
    let mut next_mtime: Option<std::time::SystemTime> = None;
    while let Some(line) = wire.read_line().await? {
        let control = protocol::parse_line(&line)?;
        let Some(top) = stack.last() else { break };
        match control {
            Control::Error { fatal, message } => {
                tracing::info!(user = %username, fatal, "scp client reported: {message}");
                outcome.errors += 1;
                if fatal {
                    break;
                }
            }
            Control::Time { mtime, .. } => {
                next_mtime =
                    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(mtime));
                wire.ok().await?
            }
            Control::End => {
                if stack.len() == 1 {
                    return Err(protocol::ProtocolError::UnknownControl(b'E').into());
                }
                stack.pop();
                wire.ok().await?;
            }
            Control::Dir { name, .. } => {
                // A directory's time is not kept (S3 has no directories).
                next_mtime = None;
                if let Err(msg) = protocol::check_name(&name) {
                    wire.error(&msg).await?;
                    outcome.errors += 1;
                    continue;
                }
                if !args.recursive {
                    wire.error("received directory without -r").await?;
                    outcome.errors += 1;
                    continue;
                }
                let dir = match destination(top, &name) {
                    Ok(d) => d,
                    Err(msg) => {
                        wire.error(&msg).await?;
                        outcome.errors += 1;
                        continue;
                    }
                };
                match ensure_dir(store, &dir).await {
                    Ok(()) => {
                        wire.ok().await?;
                        stack.push(Target {
                            path: dir,
                            is_dir: true,
                        });
                    }
                    Err(e) => {
                        wire.error(&format!("{dir}: {e}")).await?;
                        outcome.errors += 1;
                    }
                }
            }
            Control::File { size, name, .. } => {
                let mtime = next_mtime.take();
                if let Err(msg) = protocol::check_name(&name) {
                    wire.error(&msg).await?;
                    outcome.errors += 1;
                    continue;
                }
                let path = match destination(top, &name) {
                    Ok(p) => p,
                    Err(msg) => {
                        wire.error(&msg).await?;
                        outcome.errors += 1;
                        continue;
                    }
                };
                match receive_file(store, (username, activity), wire, &path, size, mtime).await? {
                    true => {}
                    false => outcome.errors += 1,
                }
            }
        }
    }
    Ok(outcome)
}

fn destination(target: &Target, name: &str) -> Result<VirtualPath, String> {
    if target.is_dir {
        target
            .path
            .join(name)
            .map_err(|e| format!("{}/{name}: {e}", target.path))
    } else {
        Ok(target.path.clone())
    }
}

async fn ensure_dir(store: &UserStore, dir: &VirtualPath) -> Result<(), StorageError> {
    match store.stat(dir).await {
        Ok(e) if e.is_dir() => Ok(()),
        Ok(_) => Err(StorageError::NotADirectory),
        Err(StorageError::NotFound) => store.mkdir(dir).await,
        Err(e) => Err(e),
    }
}

/// One `C` line's file: true if it was stored. Protocol and connection failures are
/// returned as errors (the session ends); storage failures are reported to the client.
async fn receive_file<R, W>(
    store: &UserStore,
    (username, activity): (&str, &Arc<Activity>),
    wire: &mut Wire<R, W>,
    path: &VirtualPath,
    size: u64,
    mtime: Option<std::time::SystemTime>,
) -> Result<bool, WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut upload = match store
        .open_write(
            path,
            WriteMode {
                replace: true,
                ..WriteMode::default()
            },
            Some(size),
        )
        .await
    {
        Ok(u) => u,
        Err(e) => {
            wire.error(&format!("{path}: {e}")).await?;
            return Ok(false);
        }
    };
    if let Some(mtime) = mtime {
        // Known before the first request: stored with the object at no extra request.
        upload.set_mtime(mtime);
    }
    wire.ok().await?;
    let live = activity.open_file(path.as_str(), Direction::Upload);
    let mut failure: Option<StorageError> = None;
    let mut offset = 0u64;
    while offset < size {
        let chunk = match wire
            .read_data((size - offset).min(usize::MAX as u64) as usize)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                upload.abort().await;
                return Err(e);
            }
        };
        let len = chunk.len() as u64;
        live.moved(len);
        if failure.is_none() {
            if let Err(e) = upload.write(offset, chunk).await {
                failure = Some(e);
            }
        }
        offset += len;
    }
    let reply = match wire.reply().await {
        Ok(r) => r,
        Err(e) => {
            upload.abort().await;
            return Err(e);
        }
    };
    if let Reply::Error(message) = reply {
        // The client could not read its own file; what we got is not the file.
        tracing::info!(user = %username, %path, "scp client failed to send the file: {message}");
        audit::transfer(
            Protocol::Scp,
            Direction::Upload,
            path.as_str(),
            offset,
            started.elapsed(),
            TransferResult::Abandoned("the client failed to send the file"),
        );
        upload.abort().await;
        wire.ok().await?;
        return Ok(false);
    }
    if let Some(e) = failure {
        upload.abort().await;
        audit::transfer(
            Protocol::Scp,
            Direction::Upload,
            path.as_str(),
            offset,
            started.elapsed(),
            TransferResult::Failed(&e),
        );
        return report(wire, username, path, e).await;
    }
    finish(upload, wire, username, path, started).await
}

async fn finish<R, W>(
    upload: Upload,
    wire: &mut Wire<R, W>,
    username: &str,
    path: &VirtualPath,
    started: Instant,
) -> Result<bool, WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let written = upload.len();
    match upload.finish().await {
        Ok(size) => {
            audit::transfer(
                Protocol::Scp,
                Direction::Upload,
                path.as_str(),
                size,
                started.elapsed(),
                TransferResult::Ok,
            );
            tracing::info!(user = %username, %path, size, "upload committed (scp)");
            wire.ok().await?;
            Ok(true)
        }
        Err(e) => {
            audit::transfer(
                Protocol::Scp,
                Direction::Upload,
                path.as_str(),
                written,
                started.elapsed(),
                TransferResult::Failed(&e),
            );
            report(wire, username, path, e).await
        }
    }
}

async fn report<R, W>(
    wire: &mut Wire<R, W>,
    username: &str,
    path: &VirtualPath,
    err: StorageError,
) -> Result<bool, WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    tracing::warn!(user = %username, %path, "scp upload failed: {err}");
    wire.error(&format!("{path}: {err}")).await?;
    Ok(false)
}
