//! Rename as S3 allows it: a server-side copy (CopyObject up to 5 GiB, parallel
//! UploadPartCopy beyond), then delete the source. The source is deleted only after the
//! copy succeeded, so a failure leaves the original in place.

use super::{Entry, EntryKind, Result, StorageError, UserStore, VirtualPath};
use crate::users::Permission;

/// What [`UserStore::rename_target`] found.
enum Target {
    /// No directory has the name; a file may.
    NoDirectory,
    /// What a full lookup found.
    Found(Entry),
}

impl UserStore {
    /// Renames `from` to `to`. With `overwrite` false an existing target is an error
    /// (SFTP RENAME); with it true the target is replaced (posix-rename).
    pub async fn rename(
        &self,
        from: &VirtualPath,
        to: &VirtualPath,
        overwrite: bool,
    ) -> Result<()> {
        if from.is_root() || to.is_root() {
            return Err(StorageError::Unsupported(
                "the home directory cannot be renamed",
            ));
        }
        self.check(Permission::Rename, from)?;
        self.check(Permission::Rename, to)?;
        if from == to {
            return self.stat(from).await.map(|_| ());
        }
        // Both lookups go out together: a rename costs one round of S3 requests less.
        let (source, target) = tokio::join!(self.stat(from), self.rename_target(to, overwrite));
        let source = source?;
        if to.starts_with(from) {
            return Err(StorageError::BadRequest(
                "cannot move a directory into itself".into(),
            ));
        }
        let target = match target {
            // Only a file may replace a file: a directory needs the whole answer.
            Ok(Target::NoDirectory) if source.kind == EntryKind::Dir => self.stat(to).await,
            Ok(Target::NoDirectory) => Err(StorageError::NotFound),
            Ok(Target::Found(entry)) => Ok(entry),
            Err(e) => Err(e),
        };
        match target {
            Ok(target) if target.is_dir() => return Err(StorageError::AlreadyExists),
            Ok(_) if !overwrite || source.kind == EntryKind::Dir => {
                return Err(StorageError::AlreadyExists)
            }
            Ok(_) => self.check(Permission::Overwrite, to)?,
            Err(StorageError::NotFound) => {}
            Err(e) => return Err(e),
        }
        match source.kind {
            EntryKind::File => self.rename_file(from, to).await,
            EntryKind::Dir => self.rename_empty_dir(from, to).await,
        }
    }

    /// What is at a rename's target, as far as the rename needs to know. A rename that
    /// may replace a file (posix-rename, with the right to overwrite) only has to know
    /// whether a directory has the name: no HEAD, and no LIST either when this session
    /// knows there is none (it listed the parent, or looked the name up, moments ago).
    async fn rename_target(&self, to: &VirtualPath, overwrite: bool) -> Result<Target> {
        if overwrite
            && self.allows(Permission::Overwrite, to)
            && self.dir_entry_unless_known(to).await?.is_none()
        {
            return Ok(Target::NoDirectory);
        }
        // Otherwise the whole lookup: a file of the name wins over a directory.
        self.stat(to).await.map(Target::Found)
    }

    async fn rename_file(&self, from: &VirtualPath, to: &VirtualPath) -> Result<()> {
        let src = self.jail().file_key(from)?;
        let dst = self.jail().file_key(to)?;
        let head = self
            .cached_head(&src)
            .await?
            .ok_or(StorageError::NotFound)?;
        self.copy_object(&src, &dst, &head).await?;
        self.delete_key(&src).await?;
        tracing::debug!(from = %src, to = %dst, "renamed");
        Ok(())
    }

    async fn rename_empty_dir(&self, from: &VirtualPath, to: &VirtualPath) -> Result<()> {
        let src = self.jail().dir_prefix(from)?;
        let dst = self.jail().dir_prefix(to)?;
        let keys = self.first_keys(&src, 2).await?;
        if keys.iter().any(|(k, _)| *k != src) {
            return Err(StorageError::Unsupported(
                "renaming a non-empty directory is not supported on S3",
            ));
        }
        if keys.is_empty() {
            return self.move_kept_dir(&src, &dst);
        }
        let head = self.head(&src).await?.ok_or(StorageError::NotFound)?;
        self.copy_object(&src, &dst, &head).await?;
        self.delete_key(&src).await
    }
}
