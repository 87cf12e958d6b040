//! On-disk state of unfinished multipart uploads.
//!
//! ```text
//! <data>/<bucket>/uploads/<upload_id>/upload.json          UploadMeta
//! <data>/<bucket>/uploads/<upload_id>/part-00001           part bytes
//! <data>/<bucket>/uploads/<upload_id>/part-00001.json      PartMeta
//! <data>/<bucket>/uploads/<upload_id>/assembly             parts written in place (see `assembly.rs`)
//! ```
//!
//! A part lives either in its own `part-NNNNN` file or, when its sidecar has an `offset`,
//! in the upload's assembly file at that offset.
//!
//! Parts never touch the object namespace: an unfinished upload is invisible at its key and
//! aborting it removes one folder. Uploads survive a restart, as they do on S3.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rand::RngExt;
use s3s::{s3_error, S3Result};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::error::internal;
use super::store::{Bucket, BucketState, TempPath};

/// What CreateMultipartUpload recorded; also `upload.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UploadMeta {
    /// 32 hex digits; the first 16 are the creation time, so ids sort by age.
    pub(crate) upload_id: String,
    /// The key the object will get when the upload completes.
    pub(crate) key: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub(crate) initiated_ms: i64,
    /// Content-Type for the finished object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) content_type: Option<String>,
    /// User metadata for the finished object.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) metadata: BTreeMap<String, String>,
}

/// One uploaded part; also its `part-NNNNN.json` sidecar.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PartMeta {
    pub(crate) part_number: i32,
    pub(crate) size: u64,
    /// The part's ETag without quotes: its hex MD5, or 32 random hex digits for a part sent
    /// without Content-MD5 (see `EtagSource`).
    pub(crate) etag: String,
    pub(crate) last_modified_ms: i64,
    /// Where the part's bytes start in the upload's assembly file, if it was written there
    /// (else they are in its own part file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) offset: Option<u64>,
}

/// An unfinished upload and its parts, as held in the bucket's index.
#[derive(Debug, Clone)]
pub(crate) struct Upload {
    pub(crate) meta: UploadMeta,
    pub(crate) parts: BTreeMap<i32, PartMeta>,
    /// Where new parts may be written in place (not for uploads loaded at start).
    pub(crate) slots: Slots,
}

/// The in-place layout of an upload's assembly file: part `n` starts at `(n - 1) * stride`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Slots {
    /// Whether new parts may be written in place. False for an upload loaded at start,
    /// whose stride is not known again: its new parts get their own files.
    pub(crate) open: bool,
    /// The size of the first part written in place; parts longer than it get their own files.
    pub(crate) stride: Option<u64>,
    /// Parts being written in place right now.
    pub(crate) writing: std::collections::BTreeSet<i32>,
}

/// A new upload id: creation time in nanoseconds (16 hex digits) then 16 random hex digits.
pub(crate) fn new_upload_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
    format!("{nanos:016x}{:016x}", rand::rng().random::<u64>())
}

fn is_upload_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn no_such_upload() -> s3s::S3Error {
    s3_error!(
        NoSuchUpload,
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed."
    )
}

impl BucketState {
    /// Upload `upload_id` if it is one of `key`, else `NoSuchUpload`.
    pub(crate) fn upload(&self, upload_id: &str, key: &str) -> S3Result<&Upload> {
        self.uploads
            .get(upload_id)
            .filter(|u| u.meta.key == key)
            .ok_or_else(no_such_upload)
    }

    /// [`BucketState::upload`], for changing it.
    pub(crate) fn upload_mut(&mut self, upload_id: &str, key: &str) -> S3Result<&mut Upload> {
        self.uploads
            .get_mut(upload_id)
            .filter(|u| u.meta.key == key)
            .ok_or_else(no_such_upload)
    }
}

impl Bucket {
    pub(crate) fn upload_dir(&self, upload_id: &str) -> PathBuf {
        self.dir.join("uploads").join(upload_id)
    }

    /// The data file of part `n` of `upload_id`.
    pub(crate) fn part_path(&self, upload_id: &str, n: i32) -> PathBuf {
        self.upload_dir(upload_id).join(format!("part-{n:05}"))
    }

    /// Reads every upload folder (at start).
    pub(crate) fn load_uploads(&self) -> io::Result<BTreeMap<String, Upload>> {
        let mut uploads = BTreeMap::new();
        for entry in fs::read_dir(self.dir.join("uploads"))? {
            let dir = entry?.path();
            match self.load_upload(&dir) {
                Ok(upload) => {
                    uploads.insert(upload.meta.upload_id.clone(), upload);
                }
                Err(err) => {
                    warn!(dir = %dir.display(), error = %err, "embedded S3 store: skipping upload")
                }
            }
        }
        Ok(uploads)
    }

    fn load_upload(&self, dir: &Path) -> io::Result<Upload> {
        let meta: UploadMeta = serde_json::from_slice(&fs::read(dir.join("upload.json"))?)
            .map_err(io::Error::other)?;
        if !is_upload_id(&meta.upload_id) || self.upload_dir(&meta.upload_id) != dir {
            return Err(io::Error::other(
                "upload folder is not named after its upload id",
            ));
        }
        let mut parts = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let is_part_sidecar = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("part-") && n.ends_with(".json"));
            if !is_part_sidecar {
                continue;
            }
            let part: PartMeta =
                serde_json::from_slice(&fs::read(&path)?).map_err(io::Error::other)?;
            let fits = match part.offset {
                Some(offset) => {
                    let len = fs::metadata(self.assembly_path(&meta.upload_id))?.len();
                    offset.checked_add(part.size).is_some_and(|end| end <= len)
                }
                None => {
                    fs::metadata(self.part_path(&meta.upload_id, part.part_number))?.len()
                        == part.size
                }
            };
            if fits {
                parts.insert(part.part_number, part);
            } else {
                warn!(file = %path.display(), "embedded S3 store: skipping part whose size does not match");
            }
        }
        Ok(Upload {
            meta,
            parts,
            slots: Slots::default(),
        })
    }

    /// Records a new upload on disk and in the index.
    pub(crate) fn create_upload(&self, meta: UploadMeta) -> S3Result<()> {
        let dir = self.upload_dir(&meta.upload_id);
        crate::private::create_dir_all(&dir).map_err(|e| internal("create upload folder", e))?;
        let sidecar = self
            .write_temp_json(&meta)
            .map_err(|e| internal("write upload metadata", e))?;
        sidecar
            .persist(&dir.join("upload.json"))
            .map_err(|e| internal("write upload metadata", e))?;
        let upload = Upload {
            meta,
            parts: BTreeMap::new(),
            slots: Slots {
                open: true,
                ..Slots::default()
            },
        };
        self.write()
            .uploads
            .insert(upload.meta.upload_id.clone(), upload);
        Ok(())
    }

    /// A copy of upload `upload_id` of `key`, or `NoSuchUpload`.
    pub(crate) fn upload(&self, upload_id: &str, key: &str) -> S3Result<Upload> {
        self.read().upload(upload_id, key).cloned()
    }

    /// Makes `data` part `part.part_number` of the upload (replacing an earlier one). A
    /// part written in place has no `data`: its bytes are already in the assembly file.
    pub(crate) fn commit_part(
        &self,
        upload_id: &str,
        key: &str,
        part: PartMeta,
        data: Option<TempPath>,
    ) -> S3Result<()> {
        let sidecar = self
            .write_temp_json(&part)
            .map_err(|e| internal("write part metadata", e))?;
        let data_path = self.part_path(upload_id, part.part_number);
        let sidecar_path = data_path.with_file_name(format!("part-{:05}.json", part.part_number));
        let mut state = self.write();
        let upload = state.upload_mut(upload_id, key)?;
        if let Some(data) = data {
            data.persist(&data_path)
                .map_err(|e| internal("store part", e))?;
        }
        sidecar
            .persist(&sidecar_path)
            .map_err(|e| internal("write part metadata", e))?;
        upload.parts.insert(part.part_number, part);
        Ok(())
    }

    /// Removes the upload from the index if `validate` accepts it, so that no part can be
    /// added or the upload aborted while it is being assembled.
    pub(crate) fn take_upload<T>(
        &self,
        upload_id: &str,
        key: &str,
        validate: impl FnOnce(&Upload) -> S3Result<T>,
    ) -> S3Result<(Upload, T)> {
        let mut state = self.write();
        let checked = validate(state.upload(upload_id, key)?)?;
        let upload = state.uploads.remove(upload_id).ok_or_else(no_such_upload)?;
        Ok((upload, checked))
    }

    /// Puts back an upload taken by [`Bucket::take_upload`] whose completion failed.
    pub(crate) fn restore_upload(&self, upload: Upload) {
        self.write()
            .uploads
            .insert(upload.meta.upload_id.clone(), upload);
    }

    /// Deletes the folder of an upload that is no longer in the index.
    pub(crate) fn remove_upload_files(&self, upload_id: &str) {
        if !is_upload_id(upload_id) {
            return;
        }
        if let Err(err) = fs::remove_dir_all(self.upload_dir(upload_id)) {
            warn!(upload_id, error = %err, "embedded S3 store: cannot remove upload folder");
        }
    }

    /// AbortMultipartUpload: forgets the upload and deletes its parts.
    pub(crate) fn abort_upload(&self, upload_id: &str, key: &str) -> S3Result<()> {
        {
            let mut state = self.write();
            state.upload(upload_id, key)?;
            state.uploads.remove(upload_id);
        }
        self.remove_upload_files(upload_id);
        Ok(())
    }
}
