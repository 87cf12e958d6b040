//! `scp -f`: the client downloads. Files stream from a storage [`Download`] (parallel
//! ranged GETs with read-ahead); directories (`-r`) are walked page by page.

use std::sync::Arc;
use std::time::Instant;

use crate::activity::Activity;

use crate::audit::{self, Protocol, TransferResult};
use crate::metrics::Direction;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite};

use super::protocol;
use super::wire::{Reply, Wire, WireError, CHUNK};
use super::{Outcome, ScpArgs};
use crate::exec::glob;
use crate::exec::words::Word;
use crate::storage::{Entry, StorageError, UserStore, VirtualPath};

/// Entries fetched per listing page while sending a directory.
const PAGE: usize = 1000;

pub async fn run<R, W>(
    args: &ScpArgs,
    words: &[Word],
    store: &UserStore,
    (username, activity): (&str, &Arc<Activity>),
    wire: &mut Wire<R, W>,
) -> Result<Outcome, WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut source = Source {
        args,
        store,
        username,
        activity,
        outcome: Outcome::default(),
    };
    // The sink speaks first: one reply saying it is ready.
    if let Reply::Error(message) = wire.reply().await? {
        tracing::info!(user = %username, "scp client not ready: {message}");
        return Ok(Outcome::failed());
    }
    for word in words {
        let spellings = match glob::expand(store, word).await {
            Ok(s) => s,
            Err(e) => {
                source.fail(wire, &e.to_string()).await?;
                continue;
            }
        };
        for spelled in spellings {
            source.send_path(wire, &spelled).await?;
        }
    }
    Ok(source.outcome)
}

struct Source<'a> {
    args: &'a ScpArgs,
    store: &'a UserStore,
    username: &'a str,
    /// Counts the file being sent in `s3sftp sessions`.
    activity: &'a Arc<Activity>,
    outcome: Outcome,
}

impl Source<'_> {
    async fn fail<R, W>(&mut self, wire: &mut Wire<R, W>, message: &str) -> Result<(), WireError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        self.outcome.errors += 1;
        wire.error(message).await
    }

    /// One argument (after glob expansion).
    async fn send_path<R, W>(
        &mut self,
        wire: &mut Wire<R, W>,
        spelled: &str,
    ) -> Result<(), WireError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let path = match VirtualPath::parse_str(spelled) {
            Ok(p) => p,
            Err(e) => return self.fail(wire, &format!("{spelled}: {e}")).await,
        };
        let entry = match self.store.stat(&path).await {
            Ok(e) => e,
            Err(StorageError::NotFound) => {
                return self
                    .fail(wire, &format!("{spelled}: No such file or directory"))
                    .await
            }
            Err(e) => return self.fail(wire, &format!("{spelled}: {e}")).await,
        };
        let name = if path.is_root() {
            ".".to_string()
        } else {
            path.file_name().to_string()
        };
        if entry.is_dir() {
            if !self.args.recursive {
                return self
                    .fail(wire, &format!("{spelled}: not a regular file"))
                    .await;
            }
            self.send_dir(wire, &path, &name, entry.modified).await
        } else {
            self.send_file(wire, &path, &name, spelled).await
        }
    }

    async fn send_times<R, W>(
        &mut self,
        wire: &mut Wire<R, W>,
        modified: Option<SystemTime>,
    ) -> Result<bool, WireError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if !self.args.preserve {
            return Ok(true);
        }
        let secs = modified
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0);
        wire.send(protocol::time_line(secs).as_bytes()).await?;
        self.expect_ok(wire).await
    }

    /// Reads the sink's reply: false (and counted) if it refused the item.
    async fn expect_ok<R, W>(&mut self, wire: &mut Wire<R, W>) -> Result<bool, WireError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        match wire.reply().await? {
            Reply::Ok => Ok(true),
            Reply::Error(message) => {
                tracing::info!(user = %self.username, "scp client refused an item: {message}");
                self.outcome.errors += 1;
                Ok(false)
            }
        }
    }

    async fn send_file<R, W>(
        &mut self,
        wire: &mut Wire<R, W>,
        path: &VirtualPath,
        name: &str,
        spelled: &str,
    ) -> Result<(), WireError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let mut download = match self.store.open_read(path).await {
            Ok(d) => d,
            Err(StorageError::NotFound) => {
                return self
                    .fail(wire, &format!("{spelled}: No such file or directory"))
                    .await
            }
            Err(e) => return self.fail(wire, &format!("{spelled}: {e}")).await,
        };
        if !self.send_times(wire, download.modified()).await? {
            return Ok(());
        }
        let size = download.size();
        wire.send(protocol::file_line(size, name).as_bytes())
            .await?;
        if !self.expect_ok(wire).await? {
            return Ok(());
        }
        let live = self.activity.open_file(path.as_str(), Direction::Download);
        let mut offset = 0u64;
        let mut failure: Option<StorageError> = None;
        while offset < size {
            let want = (size - offset).min(CHUNK as u64);
            let chunk = if failure.is_none() {
                match download.read(offset, want).await {
                    Ok(c) if !c.is_empty() => Some(c),
                    Ok(_) => {
                        failure = Some(StorageError::Changed);
                        None
                    }
                    Err(e) => {
                        failure = Some(e);
                        None
                    }
                }
            } else {
                None
            };
            match chunk {
                Some(c) => {
                    let n = (c.len() as u64).min(size - offset);
                    wire.send_data(&c[..n as usize]).await?;
                    live.moved(n);
                    offset += n;
                }
                None => {
                    // The size is promised in the C line: pad, then report the error
                    // instead of the final `\0` (what OpenSSH does on a read error).
                    let zeros = vec![0u8; want as usize];
                    wire.send_data(&zeros).await?;
                    offset += want;
                }
            }
        }
        match failure {
            None => {
                wire.ok().await?;
                tracing::info!(user = %self.username, %path, size, "download sent (scp)");
                audit::transfer(
                    Protocol::Scp,
                    Direction::Download,
                    path.as_str(),
                    size,
                    started.elapsed(),
                    TransferResult::Ok,
                );
            }
            Some(e) => {
                tracing::warn!(user = %self.username, %path, "scp download failed: {e}");
                audit::transfer(
                    Protocol::Scp,
                    Direction::Download,
                    path.as_str(),
                    offset,
                    started.elapsed(),
                    TransferResult::Failed(&e),
                );
                self.fail(wire, &format!("{spelled}: {e}")).await?;
            }
        }
        self.expect_ok(wire).await?;
        Ok(())
    }

    async fn send_dir<R, W>(
        &mut self,
        wire: &mut Wire<R, W>,
        path: &VirtualPath,
        name: &str,
        modified: Option<SystemTime>,
    ) -> Result<(), WireError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut lister = match self.store.list(path).await {
            Ok(l) => l,
            Err(e) => return self.fail(wire, &format!("{path}: {e}")).await,
        };
        if !self.send_times(wire, modified).await? {
            return Ok(());
        }
        wire.send(protocol::dir_line(name).as_bytes()).await?;
        if !self.expect_ok(wire).await? {
            return Ok(());
        }
        loop {
            let batch: Vec<Entry> = match lister.next_batch(PAGE).await {
                Ok(b) => b,
                Err(e) => {
                    self.fail(wire, &format!("{path}: {e}")).await?;
                    break;
                }
            };
            if batch.is_empty() {
                break;
            }
            for entry in batch {
                let child = match path.join(&entry.name) {
                    Ok(c) => c,
                    Err(e) => {
                        self.fail(wire, &format!("{path}/{}: {e}", entry.name))
                            .await?;
                        continue;
                    }
                };
                if entry.is_dir() {
                    Box::pin(self.send_dir(wire, &child, &entry.name, entry.modified)).await?;
                } else {
                    let spelled = child.to_string();
                    self.send_file(wire, &child, &entry.name, &spelled).await?;
                }
            }
        }
        wire.send(b"E\n").await?;
        self.expect_ok(wire).await?;
        Ok(())
    }
}
