//! What one logged-in connection is doing right now, for `s3sftp sessions`: who, from
//! where, since when, the bytes moved and the files open. The front ends (SFTP, SCP) update
//! it with a relaxed atomic add per chunk and a short lock per file opened or closed, so it
//! costs nothing measurable; it holds one entry per open file, which the front ends already
//! bound (`max_handles`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics::Direction;

/// One logged-in connection's identity and live counters.
#[derive(Debug)]
pub struct Activity {
    /// The connection's session number (the `id` of its log span).
    pub id: u64,
    pub user: String,
    pub peer: Option<SocketAddr>,
    /// When the user logged in.
    pub since: DateTime<Utc>,
    /// Cancelled by `s3sftp kick`: the connection task then ends the connection.
    admin_kick: CancellationToken,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    next_file: AtomicU64,
    files: Mutex<HashMap<u64, Arc<FileInfo>>>,
}

/// One open file of a connection.
#[derive(Debug)]
struct FileInfo {
    path: String,
    direction: Direction,
    bytes: AtomicU64,
    since: DateTime<Utc>,
}

/// A file counted as open until this is dropped; [`OpenFile::moved`] counts its bytes.
#[derive(Debug)]
pub struct OpenFile {
    activity: Arc<Activity>,
    id: u64,
    file: Arc<FileInfo>,
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        self.activity.lock().remove(&self.id);
    }
}

impl OpenFile {
    /// `n` more bytes of this file went up or down.
    pub fn moved(&self, n: u64) {
        self.file.bytes.fetch_add(n, Ordering::Relaxed);
        let total = match self.file.direction {
            Direction::Upload => &self.activity.bytes_up,
            Direction::Download => &self.activity.bytes_down,
        };
        total.fetch_add(n, Ordering::Relaxed);
    }
}

impl Activity {
    pub fn new(
        id: u64,
        user: &str,
        peer: Option<SocketAddr>,
        admin_kick: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Activity {
            id,
            user: user.to_string(),
            peer,
            since: Utc::now(),
            admin_kick,
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            next_file: AtomicU64::new(0),
            files: Mutex::new(HashMap::new()),
        })
    }

    /// An activity for a front end run outside any connection (tests).
    pub fn detached(user: &str) -> Arc<Self> {
        Activity::new(0, user, None, CancellationToken::new())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<FileInfo>>> {
        match self.files.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Counts `path` as open for `direction` until the returned guard is dropped.
    pub fn open_file(self: &Arc<Self>, path: &str, direction: Direction) -> OpenFile {
        let id = self.next_file.fetch_add(1, Ordering::Relaxed);
        let file = Arc::new(FileInfo {
            path: path.to_string(),
            direction,
            bytes: AtomicU64::new(0),
            since: Utc::now(),
        });
        self.lock().insert(id, file.clone());
        OpenFile {
            activity: self.clone(),
            id,
            file,
        }
    }

    /// Ends the connection at an admin's request.
    pub fn kick(&self) {
        self.admin_kick.cancel();
    }

    /// What `s3sftp sessions` shows of this connection.
    pub fn view(&self) -> SessionView {
        let mut transfers: Vec<TransferView> = self
            .lock()
            .values()
            .map(|f| TransferView {
                path: f.path.clone(),
                direction: match f.direction {
                    Direction::Upload => "upload".into(),
                    Direction::Download => "download".into(),
                },
                bytes: f.bytes.load(Ordering::Relaxed),
                since: f.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            })
            .collect();
        transfers.sort_by(|a, b| a.since.cmp(&b.since).then(a.path.cmp(&b.path)));
        SessionView {
            id: self.id,
            user: self.user.clone(),
            peer: self
                .peer
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            since: self
                .since
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            open_files: transfers.len(),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            transfers,
        }
    }
}

/// A session as `s3sftp sessions --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    pub id: u64,
    pub user: String,
    pub peer: String,
    /// Login time, RFC 3339 UTC.
    pub since: String,
    pub open_files: usize,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// The files open now, oldest first.
    pub transfers: Vec<TransferView>,
}

/// A file open in a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferView {
    pub path: String,
    /// `upload` or `download`.
    pub direction: String,
    pub bytes: u64,
    /// When the file was opened, RFC 3339 UTC.
    pub since: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_open_files_and_bytes() {
        let a = Activity::detached("u");
        let up = a.open_file("/a", Direction::Upload);
        let down = a.open_file("/b", Direction::Download);
        up.moved(10);
        up.moved(5);
        down.moved(7);
        let v = a.view();
        assert_eq!((v.open_files, v.bytes_up, v.bytes_down), (2, 15, 7));
        assert!(v.transfers.iter().any(|t| t.path == "/a" && t.bytes == 15));
        drop(up);
        drop(down);
        let v = a.view();
        assert_eq!((v.open_files, v.bytes_up, v.bytes_down), (0, 15, 7));
    }
}
