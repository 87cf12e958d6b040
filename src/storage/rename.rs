//! Rename as S3 allows it: a server-side copy (CopyObject up to 5 GiB, parallel
//! UploadPartCopy beyond), then delete the source. The source is deleted only after the
//! copy succeeded, so a failure leaves the original in place.
//!
//! A folder is renamed object by object, under an intent record that lets any gateway
//! finish the move if this one dies (see `intent`). The move runs in a task of its own:
//! a client that disconnects or gives up waiting does not stop it.

use tracing::Instrument;

use super::intent::Intent;
use super::{Entry, EntryKind, Result, StorageError, UserStore, VirtualPath};
use crate::users::Permission;

/// How long a rename waits for another session's upload of the source (or of a file in
/// the source folder) to end before it is refused.
const RENAME_WAITS_FOR_WRITER: std::time::Duration = std::time::Duration::from_secs(10);

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
        self.settle_intents(from).await?;
        self.settle_intents(to).await?;
        if from == to {
            return self.stat(from).await.map(|_| ());
        }
        self.refuse_while_written(from).await?;
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
            EntryKind::Dir => self.rename_dir(from, to).await,
        }
    }

    /// Refuses to rename `from` while it, or a file under it, is being written through
    /// this gateway: the upload commits at the old name at CLOSE, which would bring the
    /// file back there (or split the folder). Another session's upload is first given
    /// [`RENAME_WAITS_FOR_WRITER`] to end: a client may send the RENAME before the CLOSE of
    /// a file it has closed (sshfs, over another connection; see `writing`).
    async fn refuse_while_written(&self, from: &VirtualPath) -> Result<()> {
        let writing = self.storage().writing();
        let key = self.jail().file_key(from)?;
        let prefix = self.jail().dir_prefix(from)?;
        let owner = self.writer_id();
        writing
            .wait_ended(&key, owner, RENAME_WAITS_FOR_WRITER)
            .await;
        writing
            .wait_ended_below(&prefix, owner, RENAME_WAITS_FOR_WRITER)
            .await;
        if writing.file(&key).is_some() {
            tracing::info!(path = %from, "rename refused: the file is being written");
            return Err(StorageError::BadRequest(
                "the file is still being written: rename it after it is closed".into(),
            ));
        }
        if writing.has_below(&prefix) {
            tracing::info!(path = %from, "rename refused: a file in the folder is being written");
            return Err(StorageError::BadRequest(
                "a file in the folder is still being written: rename it after the file is closed"
                    .into(),
            ));
        }
        Ok(())
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

    /// Renames a folder: its marker alone when it is empty, else every object under it
    /// (see the module doc).
    async fn rename_dir(&self, from: &VirtualPath, to: &VirtualPath) -> Result<()> {
        let src = self.jail().dir_prefix(from)?;
        let dst = self.jail().dir_prefix(to)?;
        let keys = self.first_keys(&src, 2).await?;
        if keys.is_empty() {
            return self.move_kept_dir(&src, &dst);
        }
        if keys.iter().all(|(k, _)| *k == src) {
            let head = self.head(&src).await?.ok_or(StorageError::NotFound)?;
            self.copy_object(&src, &dst, &head).await?;
            return self.delete_key(&src).await;
        }
        self.check_subtree(Permission::Rename, from)?;
        self.check_subtree(Permission::Rename, to)?;
        let max = self.storage().settings().max_rename_objects;
        if self.count_keys(&src, max).await? > max {
            tracing::info!(from = %from, max, "folder rename refused: too many objects");
            return Err(StorageError::BadRequest(format!(
                "the folder holds more than {max} objects, the most one rename may move \
                 (--max-rename-objects); nothing was moved"
            )));
        }
        let storage = self.storage().clone();
        let intent = Intent::new(&src, &dst, self.jail().prefix(), storage.gateway_id());
        let Some(key) = storage.create_intent(&intent).await? else {
            return Err(StorageError::BadRequest(
                "a rename of this folder is already in progress".into(),
            ));
        };
        tracing::info!(from = %from, to = %to, "folder rename started");
        let store = self.clone();
        // Not tied to the request: dropping the wait (the session ended) leaves it running.
        let task = tokio::spawn(
            async move { storage.run_move(store, key, intent, false).await }.in_current_span(),
        );
        match task.await {
            Ok(result) => result.map(|_| ()),
            Err(e) => Err(StorageError::Internal(format!("folder rename task: {e}"))),
        }
    }

    /// Fails unless `permission` is granted everywhere under `path` (the path itself is
    /// checked by the caller): a subtree with a more restrictive rule refuses the rename.
    fn check_subtree(&self, permission: Permission, path: &VirtualPath) -> Result<()> {
        let Some(permissions) = &self.permissions else {
            return Ok(());
        };
        for (entry, set) in permissions.entries() {
            let Ok(entry) = VirtualPath::parse_str(entry) else {
                continue;
            };
            if entry != *path && entry.starts_with(path) && !set.contains(permission) {
                tracing::info!(
                    prefix = %self.jail().prefix(),
                    %path,
                    below = %entry,
                    permission = permission.name(),
                    "permission denied in a subtree"
                );
                return Err(StorageError::PermissionDenied(permission.name()));
            }
        }
        Ok(())
    }

    /// How many keys are under `prefix`, counting no further than `max + 1`.
    async fn count_keys(&self, prefix: &str, max: u64) -> Result<u64> {
        let mut count = 0u64;
        let mut token: Option<String> = None;
        loop {
            let page = self
                .s3()
                .list_page(prefix, None, 1000, token.as_deref())
                .await?;
            count += page.objects.len() as u64;
            token = page.next_token;
            if count > max || token.is_none() {
                return Ok(count);
            }
        }
    }

    /// Before a rename touches `path`: finishes a stale folder rename that involves it,
    /// and refuses while a live one does (see `intent`).
    async fn settle_intents(&self, path: &VirtualPath) -> Result<()> {
        let prefix = self.jail().dir_prefix(path)?;
        let storage = self.storage().clone();
        for (key, intent) in storage.intents_touching(&prefix).await {
            if !storage.roll_forward(&key).await? {
                tracing::info!(%path, gateway = %intent.gateway.escape_debug(), "rename refused: a folder rename involving the path is in progress");
                return Err(StorageError::BadRequest(
                    "a folder rename involving this path is in progress; try again later".into(),
                ));
            }
        }
        Ok(())
    }
}
