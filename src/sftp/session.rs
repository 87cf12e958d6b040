//! One SFTP session: the open handles and the mapping of each request to a storage call
//! and a status code. Requests are handled in the order they arrive; READ and WRITE do
//! not wait on S3 per request because downloads read ahead and uploads write behind.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use russh_sftp::protocol::{
    Attrs, Extended, File, FileAttributes, Handle, Name, OpenFlags, Packet, StatusCode, Version,
};

use super::attrs;
use super::codec::{self, Reader, Request, MAX_DATA, MAX_PACKET, MAX_READ};
use crate::activity::{Activity, OpenFile};
use crate::audit::{self, Action, Protocol, TransferResult};
use crate::metrics::Direction;
use crate::storage::{
    DirLister, Download, Entry, EntryKind, PathError, StorageError, Upload, UserStore, VirtualPath,
    WriteMode,
};

/// Entries per READDIR reply: at most ~2 KiB each, so a reply stays under MAX_PACKET.
const READDIR_BATCH: usize = 100;

/// Settings of one session.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    pub max_handles: usize,
    /// Files open for writing at once (each holds upload buffers).
    pub max_uploads: usize,
    /// A session with no request for this long is closed (client keepalives, which
    /// reset the SSH-level timer, do not count).
    pub idle_timeout: std::time::Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_handles: 256,
            max_uploads: 16,
            idle_timeout: std::time::Duration::from_secs(600),
        }
    }
}

/// An upload and what CLOSE should do with it.
struct WriteHandle {
    upload: Upload,
    path: VirtualPath,
    /// Opened with `FXF_APPEND`: every write goes at the end, whatever its offset.
    append: bool,
    /// When OPEN made it, for the transfer log's duration.
    opened: Instant,
    /// Counts the file as open in `s3sftp sessions`, with its bytes.
    live: OpenFile,
}

/// A download, and what the transfer log says of it at CLOSE.
struct ReadHandle {
    download: Download,
    path: VirtualPath,
    opened: Instant,
    /// Bytes sent in DATA replies.
    served: u64,
    /// Counts the file as open in `s3sftp sessions`, with its bytes.
    live: OpenFile,
}

enum OpenHandle {
    Read(Box<ReadHandle>),
    Write(Box<WriteHandle>),
    Dir(Box<DirLister>, VirtualPath),
}

/// The state of one SFTP session.
pub struct Session {
    store: UserStore,
    username: String,
    limits: SessionLimits,
    handles: HashMap<String, OpenHandle>,
    next_handle: u64,
    initialized: bool,
    /// What `s3sftp sessions` shows of the connection.
    activity: Arc<Activity>,
}

type Reply = Bytes;

/// Why a request gets a status other than OK: a storage error, or a status the session
/// decides itself (a bad handle, a session limit, a request S3 cannot serve).
#[derive(Debug)]
enum Refusal {
    Storage(StorageError),
    Status(StatusCode, String),
}

impl From<StorageError> for Refusal {
    fn from(err: StorageError) -> Self {
        Refusal::Storage(err)
    }
}

impl Refusal {
    fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Refusal::Status(code, message.into())
    }

    fn bad_handle() -> Self {
        Refusal::new(StatusCode::Failure, "invalid handle")
    }

    /// The STATUS reply to request `id`.
    fn reply(&self, id: u32) -> Reply {
        match self {
            Refusal::Storage(err) => error_status(id, err),
            Refusal::Status(code, message) => codec::status(id, *code, message),
        }
    }
}

/// What a request handler returns; [`Session::dispatch`] turns a refusal into its STATUS.
type Outcome = Result<Reply, Refusal>;

fn status_ok(id: u32) -> Reply {
    codec::status(id, StatusCode::Ok, "OK")
}

/// The SFTP status for a storage error, with a message a person can act on.
pub fn error_status(id: u32, err: &StorageError) -> Reply {
    codec::status(id, error_code(err), &err.to_string())
}

/// The SFTP status code of a storage error.
fn error_code(err: &StorageError) -> StatusCode {
    match err {
        StorageError::NotFound => StatusCode::NoSuchFile,
        StorageError::Unsupported(_) => StatusCode::OpUnsupported,
        StorageError::PermissionDenied(_) => StatusCode::PermissionDenied,
        StorageError::InvalidPath(PathError::NotUtf8 | PathError::ControlChar) => {
            StatusCode::BadMessage
        }
        _ => StatusCode::Failure,
    }
}

/// The `status` label of the SFTP request metric.
fn status_label(code: StatusCode) -> &'static str {
    match code {
        StatusCode::Ok => "ok",
        StatusCode::Eof => "eof",
        StatusCode::NoSuchFile => "no_such_file",
        StatusCode::PermissionDenied => "permission_denied",
        StatusCode::Failure => "failure",
        StatusCode::BadMessage => "bad_message",
        StatusCode::NoConnection => "no_connection",
        StatusCode::ConnectionLost => "connection_lost",
        StatusCode::OpUnsupported => "op_unsupported",
    }
}

/// The `type` label of the SFTP request metric.
fn request_label(packet: &Packet) -> &'static str {
    match packet {
        Packet::Open(_) => "open",
        Packet::Close(_) => "close",
        Packet::Read(_) => "read",
        Packet::Write(_) => "write",
        Packet::Lstat(_) => "lstat",
        Packet::Fstat(_) => "fstat",
        Packet::SetStat(_) => "setstat",
        Packet::FSetStat(_) => "fsetstat",
        Packet::OpenDir(_) => "opendir",
        Packet::ReadDir(_) => "readdir",
        Packet::Remove(_) => "remove",
        Packet::MkDir(_) => "mkdir",
        Packet::RmDir(_) => "rmdir",
        Packet::RealPath(_) => "realpath",
        Packet::Stat(_) => "stat",
        Packet::Rename(_) => "rename",
        Packet::ReadLink(_) => "readlink",
        Packet::Symlink(_) => "symlink",
        Packet::Extended(_) => "extended",
        _ => "other",
    }
}

/// Counts an answered request in the metrics and turns a refusal into its STATUS.
fn answered(kind: &'static str, id: u32, outcome: Outcome) -> Reply {
    match outcome {
        Ok(reply) => {
            crate::metrics::sftp_request(kind, "ok");
            reply
        }
        Err(refusal) => {
            let code = match &refusal {
                Refusal::Storage(err) => error_code(err),
                Refusal::Status(code, _) => *code,
            };
            crate::metrics::sftp_request(kind, status_label(code));
            refusal.reply(id)
        }
    }
}

impl Session {
    pub fn new(store: UserStore, username: &str, limits: SessionLimits) -> Self {
        Session {
            store,
            username: username.to_string(),
            limits,
            handles: HashMap::new(),
            next_handle: 1,
            initialized: false,
            activity: Activity::detached(username),
        }
    }

    /// Counts the session's open files and bytes into `activity` (`s3sftp sessions`).
    pub fn with_activity(mut self, activity: Arc<Activity>) -> Self {
        self.activity = activity;
        self
    }

    /// Handles one packet and returns the reply.
    pub async fn handle(&mut self, frame: Bytes) -> Reply {
        match codec::decode(frame) {
            Request::Write {
                id,
                handle,
                offset,
                data,
            } => {
                let outcome = self.write(id, &handle, offset, data).await;
                answered("write", id, outcome)
            }
            Request::Packet(Packet::Init(init)) => {
                tracing::debug!(version = init.version, "sftp init");
                self.initialized = true;
                codec::encode(Packet::Version(version()))
            }
            Request::Packet(packet) => {
                let id = packet.get_request_id();
                if !self.initialized {
                    return codec::status(id, StatusCode::BadMessage, "INIT expected first");
                }
                let kind = request_label(&packet);
                let outcome = self.dispatch(packet).await;
                answered(kind, id, outcome)
            }
            Request::Malformed { id, reason } => {
                tracing::info!(user = %self.username, "malformed SFTP request: {reason}");
                codec::status(
                    id.unwrap_or(0),
                    StatusCode::BadMessage,
                    &format!("malformed request: {reason}"),
                )
            }
        }
    }

    async fn dispatch(&mut self, packet: Packet) -> Outcome {
        match packet {
            Packet::RealPath(p) => self.realpath(p.id, &p.path),
            Packet::Stat(p) => self.stat(p.id, &p.path).await,
            Packet::Lstat(p) => self.stat(p.id, &p.path).await,
            Packet::Fstat(p) => self.fstat(p.id, &p.handle),
            Packet::OpenDir(p) => self.opendir(p.id, &p.path).await,
            Packet::ReadDir(p) => self.readdir(p.id, &p.handle).await,
            Packet::MkDir(p) => {
                let done = async { self.store.mkdir(&parse_path(&p.path)?).await }.await;
                audited(Action::Mkdir, &p.path, None, done)?;
                Ok(status_ok(p.id))
            }
            Packet::RmDir(p) => {
                let done = async { self.store.rmdir(&parse_path(&p.path)?).await }.await;
                audited(Action::Rmdir, &p.path, None, done)?;
                Ok(status_ok(p.id))
            }
            Packet::Remove(p) => {
                let done = async { self.store.remove(&parse_path(&p.filename)?).await }.await;
                audited(Action::Delete, &p.filename, None, done)?;
                Ok(status_ok(p.id))
            }
            Packet::Rename(p) => self.rename(p.id, &p.oldpath, &p.newpath, false).await,
            Packet::Open(p) => self.open(p.id, &p.filename, p.pflags, &p.attrs).await,
            Packet::Read(p) => self.read(p.id, &p.handle, p.offset, p.len).await,
            Packet::Close(p) => self.close(p.id, &p.handle).await,
            Packet::SetStat(p) => self.setstat(p.id, &p.path, &p.attrs).await,
            Packet::FSetStat(p) => self.fsetstat(p.id, &p.handle, &p.attrs).await,
            Packet::Symlink(_) | Packet::ReadLink(_) => Err(Refusal::new(
                StatusCode::OpUnsupported,
                "symbolic links are not supported on S3",
            )),
            Packet::Extended(p) => self.extended(p).await,
            _ => Err(Refusal::new(
                StatusCode::OpUnsupported,
                "request type not supported",
            )),
        }
    }

    fn realpath(&self, id: u32, path: &str) -> Outcome {
        let v = parse_path(path)?;
        Ok(codec::encode(Packet::Name(Name {
            id,
            files: vec![File {
                filename: v.as_str().to_string(),
                longname: String::new(),
                attrs: FileAttributes {
                    size: None,
                    uid: None,
                    user: None,
                    gid: None,
                    group: None,
                    permissions: None,
                    atime: None,
                    mtime: None,
                },
            }],
        })))
    }

    async fn stat(&self, id: u32, path: &str) -> Outcome {
        let entry = self.store.stat_for_client(&parse_path(path)?).await?;
        Ok(attrs_reply(id, &entry))
    }

    fn fstat(&self, id: u32, handle: &str) -> Outcome {
        let entry = match self.handles.get(handle) {
            Some(OpenHandle::Read(r)) => Entry {
                name: r.path.file_name().to_string(),
                kind: EntryKind::File,
                size: r.download.size(),
                modified: r.download.modified(),
            },
            Some(OpenHandle::Write(w)) => Entry {
                name: w.path.file_name().to_string(),
                kind: EntryKind::File,
                size: w.upload.len(),
                modified: Some(SystemTime::now()),
            },
            Some(OpenHandle::Dir(_, path)) => Entry {
                name: path.file_name().to_string(),
                kind: EntryKind::Dir,
                size: 0,
                modified: Some(SystemTime::now()),
            },
            None => return Err(Refusal::bad_handle()),
        };
        Ok(attrs_reply(id, &entry))
    }

    async fn rename(&self, id: u32, from: &str, to: &str, overwrite: bool) -> Outcome {
        let done = async {
            let (source, target) = (parse_path(from)?, parse_path(to)?);
            self.store.rename(&source, &target, overwrite).await
        }
        .await;
        audited(Action::Rename, from, Some(to), done)?;
        Ok(status_ok(id))
    }

    /// Number of open handles (shutdown waits for a session to have none).
    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    fn add_handle(&mut self, id: u32, handle: OpenHandle) -> Outcome {
        if self.handles.len() >= self.limits.max_handles {
            return Err(Refusal::new(
                StatusCode::Failure,
                format!("too many open handles (limit {})", self.limits.max_handles),
            ));
        }
        let name = format!("h{}", self.next_handle);
        self.next_handle += 1;
        self.handles.insert(name.clone(), handle);
        Ok(codec::encode(Packet::Handle(Handle { id, handle: name })))
    }

    async fn opendir(&mut self, id: u32, path: &str) -> Outcome {
        let v = parse_path(path)?;
        let lister = self.store.list(&v).await?;
        self.add_handle(id, OpenHandle::Dir(Box::new(lister), v))
    }

    async fn readdir(&mut self, id: u32, handle: &str) -> Outcome {
        let Some(OpenHandle::Dir(lister, _)) = self.handles.get_mut(handle) else {
            return Err(Refusal::bad_handle());
        };
        let entries = lister.next_batch(READDIR_BATCH).await?;
        if entries.is_empty() {
            return Err(Refusal::new(StatusCode::Eof, "end of directory"));
        }
        let now = SystemTime::now();
        let files = entries
            .iter()
            .map(|e| attrs::file(e, &self.username, now))
            .collect();
        Ok(codec::encode(Packet::Name(Name { id, files })))
    }

    async fn open(
        &mut self,
        id: u32,
        path: &str,
        flags: OpenFlags,
        attrs: &FileAttributes,
    ) -> Outcome {
        let v = parse_path(path)?;
        let append = flags.contains(OpenFlags::APPEND);
        if !flags.contains(OpenFlags::WRITE) && !append {
            let download = self.store.open_read_listed(&v).await?;
            let live = self.activity.open_file(v.as_str(), Direction::Download);
            let read = ReadHandle {
                download,
                path: v,
                opened: Instant::now(),
                served: 0,
                live,
            };
            return self.add_handle(id, OpenHandle::Read(Box::new(read)));
        }
        let uploads = self
            .handles
            .values()
            .filter(|h| matches!(h, OpenHandle::Write(_)))
            .count();
        let open_here = self
            .handles
            .values()
            .any(|h| matches!(h, OpenHandle::Write(w) if w.path == v));
        if open_here {
            // Two edits of one file would each build a new version from the same old
            // one, and the later CLOSE would drop the other's changes: refused up front.
            return Err(Refusal::new(
                StatusCode::Failure,
                "the file is already open for writing on another handle of this session: close that one first",
            ));
        }
        if uploads >= self.limits.max_uploads {
            tracing::info!(user = %self.username, limit = self.limits.max_uploads, "upload refused: too many concurrent uploads in this session");
            return Err(Refusal::new(
                StatusCode::Failure,
                format!(
                    "too many files open for writing in this session (limit {})",
                    self.limits.max_uploads
                ),
            ));
        }
        let mode = WriteMode {
            exclusive: flags.contains(OpenFlags::EXCLUDE),
            replace: flags.contains(OpenFlags::CREATE) && flags.contains(OpenFlags::TRUNCATE),
        };
        let mut upload = self.store.open_write(&v, mode, attrs.size).await?;
        if let Some(mtime) = attrs_mtime(attrs) {
            // OpenSSH `put -p` sends the time with OPEN: stored with the object, free.
            upload.set_mtime(mtime);
        }
        let existed = upload.replaces_existing() == Some(true);
        if !existed && !flags.contains(OpenFlags::CREATE) {
            return Err(Refusal::new(
                StatusCode::NoSuchFile,
                "no such file (open without CREATE)",
            ));
        }
        let live = self.activity.open_file(v.as_str(), Direction::Upload);
        self.add_handle(
            id,
            OpenHandle::Write(Box::new(WriteHandle {
                upload,
                path: v,
                append,
                opened: Instant::now(),
                live,
            })),
        )
    }

    async fn read(&mut self, id: u32, handle: &str, offset: u64, len: u32) -> Outcome {
        let read = match self.handles.get_mut(handle) {
            Some(OpenHandle::Read(r)) => r,
            Some(OpenHandle::Write(w)) => {
                // An `r+` handle reads the file as its writes left it.
                let len = u64::from(len.min(MAX_READ));
                return match w.upload.read(offset, len).await {
                    Ok(data) if data.is_empty() => {
                        Err(Refusal::new(StatusCode::Eof, "end of file"))
                    }
                    Ok(data) => Ok(codec::data(id, &data)),
                    Err(e) => {
                        tracing::info!(user = %self.username, key = %w.upload.key(), "read refused: {e}");
                        Err(e.into())
                    }
                };
            }
            Some(_) => {
                return Err(Refusal::new(
                    StatusCode::Failure,
                    "handle is not open for reading",
                ))
            }
            None => return Err(Refusal::bad_handle()),
        };
        let len = len.min(MAX_READ);
        match read.download.read(offset, u64::from(len)).await {
            Ok(data) if data.is_empty() => Err(Refusal::new(StatusCode::Eof, "end of file")),
            Ok(data) => {
                read.served += data.len() as u64;
                read.live.moved(data.len() as u64);
                Ok(codec::data(id, &data))
            }
            Err(e) => {
                tracing::warn!(user = %self.username, key = %read.download.key(), "read failed: {e}");
                Err(e.into())
            }
        }
    }

    async fn write(&mut self, id: u32, handle: &str, offset: u64, data: Bytes) -> Outcome {
        let w = match self.handles.get_mut(handle) {
            Some(OpenHandle::Write(w)) => w,
            Some(_) => {
                return Err(Refusal::new(
                    StatusCode::Failure,
                    "handle is not open for writing",
                ))
            }
            None => return Err(Refusal::bad_handle()),
        };
        let len = data.len() as u64;
        // POSIX O_APPEND: the end of the file, whatever offset the client sent.
        let offset = if w.append { w.upload.len() } else { offset };
        match w.upload.write(offset, data).await {
            Ok(()) => {
                w.live.moved(len);
                Ok(status_ok(id))
            }
            Err(e) => {
                tracing::info!(user = %self.username, key = %w.upload.key(), "write refused: {e}");
                Err(e.into())
            }
        }
    }

    async fn close(&mut self, id: u32, handle: &str) -> Outcome {
        let Some(open) = self.handles.remove(handle) else {
            return Err(Refusal::bad_handle());
        };
        let w = match open {
            OpenHandle::Write(w) => w,
            OpenHandle::Read(r) => {
                audit::transfer(
                    Protocol::Sftp,
                    Direction::Download,
                    r.path.as_str(),
                    r.served,
                    r.opened.elapsed(),
                    TransferResult::Ok,
                );
                return Ok(status_ok(id));
            }
            OpenHandle::Dir(..) => return Ok(status_ok(id)),
        };
        let WriteHandle {
            upload,
            path,
            opened,
            // Open in `s3sftp sessions` until the commit below is done.
            live: _live,
            ..
        } = *w;
        if upload.edit_unchanged() {
            // An existing file opened and closed without a change: nothing to store (but
            // a time the client set on the handle).
            return match upload.finish().await {
                Ok(_) => Ok(status_ok(id)),
                Err(e) => Err(e.into()),
            };
        }
        let key = upload.key().to_string();
        let written = upload.len();
        match upload.finish().await {
            Ok(size) => {
                audit::transfer(
                    Protocol::Sftp,
                    Direction::Upload,
                    path.as_str(),
                    size,
                    opened.elapsed(),
                    TransferResult::Ok,
                );
                tracing::info!(user = %self.username, path = %path, size, "upload committed");
                Ok(status_ok(id))
            }
            Err(e) => {
                audit::transfer(
                    Protocol::Sftp,
                    Direction::Upload,
                    path.as_str(),
                    written,
                    opened.elapsed(),
                    TransferResult::Failed(&e),
                );
                tracing::warn!(user = %self.username, %key, "upload failed at close: {e}");
                Err(Refusal::new(
                    StatusCode::Failure,
                    format!("upload failed, nothing was stored: {e}"),
                ))
            }
        }
    }

    async fn setstat(&mut self, id: u32, path: &str, attrs: &FileAttributes) -> Outcome {
        if let (Some(size), Ok(v)) = (attrs.size, parse_path(path)) {
            // truncate(2) of a file this session has open for writing changes that open
            // file (sshfs sends it while the kernel's close of the last write may still be
            // on its way): a separate edit would be dropped by, or drop, that handle's.
            let open = self.handles.values_mut().find_map(|h| match h {
                OpenHandle::Write(w) if w.path == v => Some(w),
                _ => None,
            });
            if let Some(w) = open {
                let done = w.upload.set_len(size);
                if done.is_ok() {
                    if let Some(mtime) = attrs_mtime(attrs) {
                        w.upload.set_mtime(mtime);
                    }
                }
                audited(Action::Setstat, path, None, done)?;
                return Ok(status_ok(id));
            }
        }
        let done = async {
            let v = parse_path(path)?;
            let entry = self.store.stat_for_client(&v).await?;
            match attrs.size {
                Some(size) if entry.kind == EntryKind::File && size != entry.size => {
                    // truncate(2): a server-side edit, the time (if any) stored with it.
                    self.store.set_size(&v, size, attrs_mtime(attrs)).await?;
                    tracing::debug!(user = %self.username, path = %v, size, "size set");
                    return Ok(());
                }
                _ => {}
            }
            match attrs_mtime(attrs) {
                Some(mtime) if entry.kind == EntryKind::File => {
                    let copied = self.store.set_mtime(&v, mtime).await?;
                    tracing::debug!(user = %self.username, path = %v, copied, "modification time kept");
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        .await;
        audited(Action::Setstat, path, None, done)?;
        Ok(status_ok(id))
    }

    async fn fsetstat(&mut self, id: u32, handle: &str, attrs: &FileAttributes) -> Outcome {
        let mtime = attrs_mtime(attrs);
        let mut stored_file = None;
        let current = match self.handles.get_mut(handle) {
            Some(OpenHandle::Write(w)) => {
                if let Some(size) = attrs.size {
                    // ftruncate(2): cuts or grows the file being written (OpenSSH `scp`
                    // sets the size it wrote); refused here when it cannot be done.
                    if let Err(e) = w.upload.set_len(size) {
                        tracing::info!(user = %self.username, key = %w.upload.key(), "size refused: {e}");
                        return Err(e.into());
                    }
                }
                if let Some(mtime) = mtime {
                    // Stored with the object when the handle is closed.
                    w.upload.set_mtime(mtime);
                }
                w.upload.len()
            }
            Some(OpenHandle::Read(r)) => {
                stored_file = Some(r.path.clone());
                r.download.size()
            }
            Some(OpenHandle::Dir(..)) => 0,
            None => return Err(Refusal::bad_handle()),
        };
        match attrs.size {
            Some(size) if size != current => Err(Refusal::new(
                StatusCode::OpUnsupported,
                "the handle is open for reading only: open the file for writing, or SETSTAT its path, to change its size",
            )),
            _ => {
                if let (Some(path), Some(mtime)) = (stored_file, mtime) {
                    let done = self.store.set_mtime(&path, mtime).await.map(|_| ());
                    audited(Action::Setstat, path.as_str(), None, done)?;
                }
                Ok(status_ok(id))
            }
        }
    }

    async fn extended(&mut self, p: Extended) -> Outcome {
        let id = p.id;
        let mut r = Reader::new(p.data);
        match p.request.as_str() {
            "posix-rename@openssh.com" => {
                let (Some(from), Some(to)) = (r.string(), r.string()) else {
                    return Err(Refusal::new(
                        StatusCode::BadMessage,
                        "malformed posix-rename request",
                    ));
                };
                match (std::str::from_utf8(&from), std::str::from_utf8(&to)) {
                    (Ok(from), Ok(to)) => self.rename(id, from, to, true).await,
                    _ => Err(Refusal::new(StatusCode::Failure, "path is not valid UTF-8")),
                }
            }
            "statvfs@openssh.com" => {
                let s = self.store.statvfs();
                Ok(codec::extended_reply_u64s(
                    id,
                    &[
                        s.block_size,
                        s.block_size,
                        s.blocks,
                        s.free_blocks,
                        s.free_blocks,
                        s.files,
                        s.free_files,
                        s.free_files,
                        0,
                        0,
                        s.name_max,
                    ],
                ))
            }
            "limits@openssh.com" => Ok(codec::extended_reply_u64s(
                id,
                &[
                    u64::from(MAX_PACKET),
                    u64::from(MAX_READ),
                    u64::from(MAX_DATA),
                    self.limits.max_handles as u64,
                ],
            )),
            other => Err(Refusal::new(
                StatusCode::OpUnsupported,
                format!("extension {other} is not supported"),
            )),
        }
    }

    /// Ends the session: open uploads are aborted (nothing partial is left in S3).
    pub async fn close_all(&mut self) {
        for (_, handle) in self.handles.drain() {
            if let OpenHandle::Write(w) = handle {
                tracing::info!(user = %self.username, key = %w.upload.key(), "session ended mid-upload: aborting");
                audit::transfer(
                    Protocol::Sftp,
                    Direction::Upload,
                    w.path.as_str(),
                    w.upload.len(),
                    w.opened.elapsed(),
                    TransferResult::Abandoned("the session ended before CLOSE"),
                );
                w.upload.abort().await;
            }
        }
    }
}

/// Logs a change in the audit log and passes its result on.
fn audited(
    action: Action,
    path: &str,
    target: Option<&str>,
    done: Result<(), StorageError>,
) -> Result<(), StorageError> {
    // The normalised path when the client's parses (as transfers show it), else as sent.
    let shown = |p: &str| parse_path(p).map_or_else(|_| p.to_string(), |v| v.as_str().to_string());
    let target = target.map(shown);
    audit::action(
        Protocol::Sftp,
        action,
        &shown(path),
        target.as_deref(),
        done.as_ref().map(|_| ()),
    );
    done
}

/// The modification time SETSTAT, FSETSTAT or OPEN attributes ask for, if any.
fn attrs_mtime(attrs: &FileAttributes) -> Option<std::time::SystemTime> {
    attrs
        .mtime
        .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(secs)))
}

fn parse_path(path: &str) -> Result<VirtualPath, StorageError> {
    VirtualPath::parse_str(path).map_err(StorageError::from)
}

/// The ATTRS reply describing `entry`.
fn attrs_reply(id: u32, entry: &Entry) -> Reply {
    codec::encode(Packet::Attrs(Attrs {
        id,
        attrs: attrs::attributes(entry),
    }))
}

/// The VERSION reply with the extensions we implement.
fn version() -> Version {
    let mut v = Version::new();
    v.extensions
        .insert("posix-rename@openssh.com".into(), "1".into());
    v.extensions
        .insert("statvfs@openssh.com".into(), "2".into());
    v.extensions.insert("limits@openssh.com".into(), "1".into());
    v
}
