//! One SFTP session: the open handles and the mapping of each request to a storage call
//! and a status code. Requests are handled in the order they arrive; READ and WRITE do
//! not wait on S3 per request because downloads read ahead and uploads write behind.

use std::collections::HashMap;
use std::time::SystemTime;

use bytes::Bytes;
use russh_sftp::protocol::{
    Attrs, Extended, File, FileAttributes, Handle, Name, OpenFlags, Packet, StatusCode, Version,
};

use super::attrs;
use super::codec::{self, Reader, Request, MAX_DATA, MAX_PACKET, MAX_READ};
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
    /// The size of the existing file it was opened on without TRUNC. Such a file keeps
    /// whatever the client does not overwrite: closing it untouched leaves the object
    /// alone, and a write of fewer bytes is refused (S3 cannot keep the old tail).
    untruncated: Option<u64>,
    /// FSETSTAT set the size to the bytes written (OpenSSH `scp` does, after writing
    /// without TRUNC): the file ends there, whatever it held before.
    truncated: bool,
}

enum OpenHandle {
    Read(Box<Download>, VirtualPath),
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
}

type Reply = Bytes;

fn status_ok(id: u32) -> Reply {
    codec::status(id, StatusCode::Ok, "OK")
}

/// The SFTP status for a storage error, with a message a person can act on.
pub fn error_status(id: u32, err: &StorageError) -> Reply {
    let code = match err {
        StorageError::NotFound => StatusCode::NoSuchFile,
        StorageError::Unsupported(_) => StatusCode::OpUnsupported,
        StorageError::PermissionDenied(_) => StatusCode::PermissionDenied,
        StorageError::InvalidPath(PathError::NotUtf8 | PathError::ControlChar) => {
            StatusCode::BadMessage
        }
        _ => StatusCode::Failure,
    };
    codec::status(id, code, &err.to_string())
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
        }
    }

    /// Handles one packet and returns the reply.
    pub async fn handle(&mut self, frame: Bytes) -> Reply {
        match codec::decode(frame) {
            Request::Write {
                id,
                handle,
                offset,
                data,
            } => self.write(id, &handle, offset, data).await,
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
                self.dispatch(packet).await
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

    async fn dispatch(&mut self, packet: Packet) -> Reply {
        match packet {
            Packet::RealPath(p) => self.realpath(p.id, &p.path),
            Packet::Stat(p) => self.stat(p.id, &p.path).await,
            Packet::Lstat(p) => self.stat(p.id, &p.path).await,
            Packet::Fstat(p) => self.fstat(p.id, &p.handle),
            Packet::OpenDir(p) => self.opendir(p.id, &p.path).await,
            Packet::ReadDir(p) => self.readdir(p.id, &p.handle).await,
            Packet::MkDir(p) => {
                self.path_op(p.id, &p.path, |s, v| {
                    Box::pin(async move { s.mkdir(&v).await })
                })
                .await
            }
            Packet::RmDir(p) => {
                self.path_op(p.id, &p.path, |s, v| {
                    Box::pin(async move { s.rmdir(&v).await })
                })
                .await
            }
            Packet::Remove(p) => {
                self.path_op(p.id, &p.filename, |s, v| {
                    Box::pin(async move { s.remove(&v).await })
                })
                .await
            }
            Packet::Rename(p) => self.rename(p.id, &p.oldpath, &p.newpath, false).await,
            Packet::Open(p) => self.open(p.id, &p.filename, p.pflags, &p.attrs).await,
            Packet::Read(p) => self.read(p.id, &p.handle, p.offset, p.len).await,
            Packet::Close(p) => self.close(p.id, &p.handle).await,
            Packet::SetStat(p) => self.setstat(p.id, &p.path, &p.attrs).await,
            Packet::FSetStat(p) => self.fsetstat(p.id, &p.handle, &p.attrs),
            Packet::Symlink(p) => codec::status(
                p.id,
                StatusCode::OpUnsupported,
                "symbolic links are not supported on S3",
            ),
            Packet::ReadLink(p) => codec::status(
                p.id,
                StatusCode::OpUnsupported,
                "symbolic links are not supported on S3",
            ),
            Packet::Extended(p) => self.extended(p).await,
            other => codec::status(
                other.get_request_id(),
                StatusCode::OpUnsupported,
                "request type not supported",
            ),
        }
    }

    fn parse_path(path: &str) -> Result<VirtualPath, StorageError> {
        VirtualPath::parse_str(path).map_err(StorageError::from)
    }

    fn realpath(&self, id: u32, path: &str) -> Reply {
        match Self::parse_path(path) {
            Ok(v) => codec::encode(Packet::Name(Name {
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
            })),
            Err(e) => error_status(id, &e),
        }
    }

    async fn stat(&self, id: u32, path: &str) -> Reply {
        let result = async { self.store.stat(&Self::parse_path(path)?).await }.await;
        match result {
            Ok(entry) => codec::encode(Packet::Attrs(Attrs {
                id,
                attrs: attrs::attributes(&entry),
            })),
            Err(e) => error_status(id, &e),
        }
    }

    fn fstat(&self, id: u32, handle: &str) -> Reply {
        let entry = match self.handles.get(handle) {
            Some(OpenHandle::Read(d, path)) => Entry {
                name: path.file_name().to_string(),
                kind: EntryKind::File,
                size: d.size(),
                modified: d.modified(),
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
            None => return bad_handle(id),
        };
        codec::encode(Packet::Attrs(Attrs {
            id,
            attrs: attrs::attributes(&entry),
        }))
    }

    async fn path_op<F>(&self, id: u32, path: &str, op: F) -> Reply
    where
        F: for<'a> FnOnce(
            &'a UserStore,
            VirtualPath,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), StorageError>> + Send + 'a>,
        >,
    {
        let result = match Self::parse_path(path) {
            Ok(v) => op(&self.store, v).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => status_ok(id),
            Err(e) => error_status(id, &e),
        }
    }

    async fn rename(&self, id: u32, from: &str, to: &str, overwrite: bool) -> Reply {
        let result = async {
            let from = Self::parse_path(from)?;
            let to = Self::parse_path(to)?;
            self.store.rename(&from, &to, overwrite).await
        }
        .await;
        match result {
            Ok(()) => status_ok(id),
            Err(e) => error_status(id, &e),
        }
    }

    /// Number of open handles (shutdown waits for a session to have none).
    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    fn add_handle(&mut self, id: u32, handle: OpenHandle) -> Reply {
        if self.handles.len() >= self.limits.max_handles {
            return codec::status(
                id,
                StatusCode::Failure,
                &format!("too many open handles (limit {})", self.limits.max_handles),
            );
        }
        let name = format!("h{}", self.next_handle);
        self.next_handle += 1;
        self.handles.insert(name.clone(), handle);
        codec::encode(Packet::Handle(Handle { id, handle: name }))
    }

    async fn opendir(&mut self, id: u32, path: &str) -> Reply {
        let result = async {
            let v = Self::parse_path(path)?;
            let lister = self.store.list(&v).await?;
            Ok::<_, StorageError>((lister, v))
        }
        .await;
        match result {
            Ok((lister, v)) => self.add_handle(id, OpenHandle::Dir(Box::new(lister), v)),
            Err(e) => error_status(id, &e),
        }
    }

    async fn readdir(&mut self, id: u32, handle: &str) -> Reply {
        let Some(OpenHandle::Dir(lister, _)) = self.handles.get_mut(handle) else {
            return bad_handle(id);
        };
        match lister.next_batch(READDIR_BATCH).await {
            Ok(entries) if entries.is_empty() => {
                codec::status(id, StatusCode::Eof, "end of directory")
            }
            Ok(entries) => {
                let now = SystemTime::now();
                let files = entries
                    .iter()
                    .map(|e| attrs::file(e, &self.username, now))
                    .collect();
                codec::encode(Packet::Name(Name { id, files }))
            }
            Err(e) => error_status(id, &e),
        }
    }

    async fn open(
        &mut self,
        id: u32,
        path: &str,
        flags: OpenFlags,
        attrs: &FileAttributes,
    ) -> Reply {
        let v = match Self::parse_path(path) {
            Ok(v) => v,
            Err(e) => return error_status(id, &e),
        };
        if flags.contains(OpenFlags::APPEND) {
            return codec::status(
                id,
                StatusCode::OpUnsupported,
                "appending is not supported on S3",
            );
        }
        if !flags.contains(OpenFlags::WRITE) {
            return match self.store.open_read_listed(&v).await {
                Ok(d) => self.add_handle(id, OpenHandle::Read(Box::new(d), v)),
                Err(e) => error_status(id, &e),
            };
        }
        let uploads = self
            .handles
            .values()
            .filter(|h| matches!(h, OpenHandle::Write(_)))
            .count();
        if uploads >= self.limits.max_uploads {
            tracing::info!(user = %self.username, limit = self.limits.max_uploads, "upload refused: too many concurrent uploads in this session");
            return codec::status(
                id,
                StatusCode::Failure,
                &format!(
                    "too many files open for writing in this session (limit {})",
                    self.limits.max_uploads
                ),
            );
        }
        let mode = WriteMode {
            exclusive: flags.contains(OpenFlags::EXCLUDE),
            replace: flags.contains(OpenFlags::CREATE) && flags.contains(OpenFlags::TRUNCATE),
        };
        match self.store.open_write(&v, mode, attrs.size).await {
            Ok(upload) => {
                let existed = upload.replaces_existing() == Some(true);
                if !existed && !flags.contains(OpenFlags::CREATE) {
                    return codec::status(
                        id,
                        StatusCode::NoSuchFile,
                        "no such file (open without CREATE)",
                    );
                }
                let untruncated = if flags.contains(OpenFlags::TRUNCATE) {
                    None
                } else {
                    upload.existing_size()
                };
                self.add_handle(
                    id,
                    OpenHandle::Write(Box::new(WriteHandle {
                        upload,
                        path: v,
                        untruncated,
                        truncated: false,
                    })),
                )
            }
            Err(e) => error_status(id, &e),
        }
    }

    async fn read(&mut self, id: u32, handle: &str, offset: u64, len: u32) -> Reply {
        let download = match self.handles.get_mut(handle) {
            Some(OpenHandle::Read(d, _)) => d,
            Some(_) => {
                return codec::status(id, StatusCode::Failure, "handle is not open for reading")
            }
            None => return bad_handle(id),
        };
        let len = len.min(MAX_READ);
        match download.read(offset, u64::from(len)).await {
            Ok(data) if data.is_empty() => codec::status(id, StatusCode::Eof, "end of file"),
            Ok(data) => codec::data(id, &data),
            Err(e) => {
                tracing::warn!(user = %self.username, key = %download.key(), "read failed: {e}");
                error_status(id, &e)
            }
        }
    }

    async fn write(&mut self, id: u32, handle: &str, offset: u64, data: Bytes) -> Reply {
        let w = match self.handles.get_mut(handle) {
            Some(OpenHandle::Write(w)) => w,
            Some(_) => {
                return codec::status(id, StatusCode::Failure, "handle is not open for writing")
            }
            None => return bad_handle(id),
        };
        match w.upload.write(offset, data).await {
            Ok(()) => status_ok(id),
            Err(e) => {
                tracing::info!(user = %self.username, key = %w.upload.key(), "write refused: {e}");
                error_status(id, &e)
            }
        }
    }

    async fn close(&mut self, id: u32, handle: &str) -> Reply {
        let Some(open) = self.handles.remove(handle) else {
            return bad_handle(id);
        };
        let OpenHandle::Write(w) = open else {
            return status_ok(id);
        };
        let WriteHandle {
            upload,
            path,
            untruncated,
            truncated,
        } = *w;
        if let Some(old_size) = untruncated.filter(|_| !truncated) {
            if upload.is_empty() {
                upload.abort().await;
                return status_ok(id);
            }
            let written = upload.len();
            if written < old_size {
                upload.abort().await;
                tracing::info!(user = %self.username, path = %path, written, old_size, "partial overwrite refused at close");
                return codec::status(
                    id,
                    StatusCode::OpUnsupported,
                    &format!(
                        "only the first {written} of the file's {old_size} bytes were written and it was not truncated: changing part of a stored file is not supported on S3; the file is unchanged"
                    ),
                );
            }
        }
        let key = upload.key().to_string();
        match upload.finish().await {
            Ok(size) => {
                tracing::info!(user = %self.username, path = %path, size, "upload committed");
                status_ok(id)
            }
            Err(e) => {
                tracing::warn!(user = %self.username, %key, "upload failed at close: {e}");
                codec::status(
                    id,
                    StatusCode::Failure,
                    &format!("upload failed, nothing was stored: {e}"),
                )
            }
        }
    }

    async fn setstat(&self, id: u32, path: &str, attrs: &FileAttributes) -> Reply {
        let entry = match Self::parse_path(path) {
            Ok(v) => self.store.stat(&v).await,
            Err(e) => Err(e),
        };
        match entry {
            Ok(entry) => match attrs.size {
                Some(size) if entry.kind == EntryKind::File && size != entry.size => codec::status(
                    id,
                    StatusCode::OpUnsupported,
                    "changing the size of a stored file is not supported on S3",
                ),
                _ => {
                    tracing::debug!(user = %self.username, %path, "setstat ignored (mode, owner and times are not kept on S3)");
                    status_ok(id)
                }
            },
            Err(e) => error_status(id, &e),
        }
    }

    fn fsetstat(&mut self, id: u32, handle: &str, attrs: &FileAttributes) -> Reply {
        let current = match self.handles.get_mut(handle) {
            Some(OpenHandle::Write(w)) => {
                let written = w.upload.len();
                if attrs.size == Some(written) {
                    w.truncated = true;
                }
                written
            }
            Some(OpenHandle::Read(d, _)) => d.size(),
            Some(OpenHandle::Dir(..)) => 0,
            None => return bad_handle(id),
        };
        match attrs.size {
            Some(size) if size != current => codec::status(
                id,
                StatusCode::OpUnsupported,
                "truncating or extending a file is not supported on S3",
            ),
            _ => {
                tracing::debug!(user = %self.username, "fsetstat ignored (mode, owner and times are not kept on S3)");
                status_ok(id)
            }
        }
    }

    async fn extended(&mut self, p: Extended) -> Reply {
        let id = p.id;
        let mut r = Reader::new(p.data);
        match p.request.as_str() {
            "posix-rename@openssh.com" => match (r.string(), r.string()) {
                (Some(from), Some(to)) => {
                    match (std::str::from_utf8(&from), std::str::from_utf8(&to)) {
                        (Ok(from), Ok(to)) => self.rename(id, from, to, true).await,
                        _ => codec::status(id, StatusCode::Failure, "path is not valid UTF-8"),
                    }
                }
                _ => codec::status(id, StatusCode::BadMessage, "malformed posix-rename request"),
            },
            "statvfs@openssh.com" => {
                let s = self.store.statvfs();
                codec::extended_reply_u64s(
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
                )
            }
            "limits@openssh.com" => codec::extended_reply_u64s(
                id,
                &[
                    u64::from(MAX_PACKET),
                    u64::from(MAX_READ),
                    u64::from(MAX_DATA),
                    self.limits.max_handles as u64,
                ],
            ),
            other => codec::status(
                id,
                StatusCode::OpUnsupported,
                &format!("extension {other} is not supported"),
            ),
        }
    }

    /// Ends the session: open uploads are aborted (nothing partial is left in S3).
    pub async fn close_all(&mut self) {
        for (_, handle) in self.handles.drain() {
            if let OpenHandle::Write(w) = handle {
                tracing::info!(user = %self.username, key = %w.upload.key(), "session ended mid-upload: aborting");
                w.upload.abort().await;
            }
        }
    }
}

fn bad_handle(id: u32) -> Reply {
    codec::status(id, StatusCode::Failure, "invalid handle")
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
