//! Crash safety of folder renames. Renaming a folder on S3 is a copy and a delete per
//! object; a gateway that dies mid-way would leave the tree split between two names.
//!
//! So before its first copy a folder rename stores an intent record in the bucket, under
//! the system prefix (`--system-prefix`, outside every user's prefix), keyed by a hash of
//! the source prefix; creating it is conditional (`If-None-Match: *`) where the store
//! supports it, so two renames of one folder cannot both start. While the rename runs its
//! gateway refreshes the record's heartbeat every [`HEARTBEAT_EVERY`]; when it is done it
//! deletes the record.
//!
//! Any gateway finishes (rolls forward) a rename whose heartbeat is older than [`LEASE`]:
//! at start, every [`SCAN_EVERY`] after, and when a rename touches a path under one (from
//! a per-process list of the intents, read again at most every [`REFRESH_EVERY`]: one
//! ListObjectsV2 of the system prefix). A rename still alive is never rolled forward;
//! one that touches its paths is refused meanwhile.
//!
//! Rolling forward is idempotent: every source key still present is copied unless its
//! target is already there with the same size (and ETag, when both are plain MD5s), then
//! deleted; then the record is deleted. A source is deleted only after its copy
//! succeeded, and no target is ever deleted, so no object is ever missing from both
//! names. Two gateways that roll the same stale intent forward at once (the take-over is
//! not conditional) only repeat copies: the result is the same.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;
use tokio_util::task::AbortOnDropHandle;

use super::s3::GetFailure;
use super::{ObjectHead, Result, Storage, StorageError, UserStore};

/// The default `--system-prefix`.
pub const DEFAULT_SYSTEM_PREFIX: &str = ".s3sftp/";
/// A rename whose heartbeat is older than this is taken to be dead.
pub const LEASE: Duration = Duration::from_secs(120);
/// How often a running rename refreshes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(20);
/// How long a gateway trusts its list of intents when a rename asks about a path.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// How often a gateway looks for stale intents after the look at start.
pub const SCAN_EVERY: Duration = Duration::from_secs(60);
/// Copies (with their deletes) in flight in one folder rename.
const COPIES_IN_FLIGHT: usize = 16;
/// A progress line at info level every this many objects moved.
const PROGRESS_EVERY: u64 = 200;
/// An intent record is a few hundred bytes; anything larger is not one.
const MAX_INTENT_BYTES: u64 = 64 * 1024;
/// Keys per ListObjectsV2 page.
const PAGE: i32 = 1000;

/// One folder rename under way, as stored in the bucket (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The source folder's key prefix (ends with `/`).
    pub source: String,
    /// The target folder's key prefix (ends with `/`).
    pub target: String,
    /// The prefix of the user who asked (both folders lie under it).
    pub user_prefix: String,
    /// The gateway running (or last to take over) the rename.
    pub gateway: String,
    /// When the rename started, in seconds since the Unix epoch.
    pub started: u64,
    /// When the running gateway last said it is alive, in seconds since the Unix epoch.
    pub heartbeat: u64,
}

impl Intent {
    pub fn new(source: &str, target: &str, user_prefix: &str, gateway: &str) -> Intent {
        let now = unix_now();
        Intent {
            source: source.to_string(),
            target: target.to_string(),
            user_prefix: user_prefix.to_string(),
            gateway: gateway.to_string(),
            started: now,
            heartbeat: now,
        }
    }

    /// Whether the rename's gateway has not said it is alive for longer than [`LEASE`].
    pub fn is_stale(&self, now: u64) -> bool {
        now.saturating_sub(self.heartbeat) > LEASE.as_secs()
    }

    /// Whether the folder (or file) at key prefix `dir_prefix` (ending with `/`) is, holds
    /// or lies in the rename's source or target.
    pub fn touches(&self, dir_prefix: &str) -> bool {
        [&self.source, &self.target]
            .iter()
            .any(|p| dir_prefix.starts_with(p.as_str()) || p.starts_with(dir_prefix))
    }

    /// Whether the intent is sane: both folders lie under the user's prefix, and
    /// neither lies in the other.
    fn is_valid(&self) -> bool {
        let under = |p: &str| p.ends_with('/') && p.starts_with(&self.user_prefix);
        under(&self.source)
            && under(&self.target)
            && !self.source.starts_with(&self.target)
            && !self.target.starts_with(&self.source)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `prefix` as a key prefix: no leading `/`, one trailing `/` (the default if empty).
pub fn normalize_system_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        DEFAULT_SYSTEM_PREFIX.to_string()
    } else {
        format!("{trimmed}/")
    }
}

/// Whether `system_prefix` lies outside the user prefix `user_prefix` (and the user's
/// prefix outside it): `""` (the whole bucket) contains everything.
pub fn outside_user_prefix(system_prefix: &str, user_prefix: &str) -> bool {
    !system_prefix.starts_with(user_prefix) && !user_prefix.starts_with(system_prefix)
}

/// Where the intents are kept, under `system_prefix`.
pub fn intents_prefix(system_prefix: &str) -> String {
    format!("{system_prefix}renames/")
}

/// The key of the intent of a rename of the folder at `source`.
pub fn intent_key(system_prefix: &str, source: &str) -> String {
    let hash = hex::encode(Sha256::digest(source.as_bytes()));
    format!("{}{hash}.json", intents_prefix(system_prefix))
}

/// Intents and their keys, as last listed.
type IntentList = Arc<Vec<(String, Intent)>>;

/// This gateway's identity and its list of intents (see the module doc).
#[derive(Debug)]
pub(crate) struct Intents {
    gateway: String,
    known: Mutex<Option<(Instant, IntentList)>>,
}

impl Intents {
    pub(crate) fn new() -> Intents {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "gateway".into());
        Intents {
            gateway: format!(
                "{host}-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
            known: Mutex::new(None),
        }
    }

    fn fresh(&self) -> Option<IntentList> {
        let known = self.known.lock().ok()?;
        match &*known {
            Some((at, list)) if at.elapsed() < REFRESH_EVERY => Some(list.clone()),
            _ => None,
        }
    }

    fn remember(&self, list: Vec<(String, Intent)>) -> IntentList {
        let list = Arc::new(list);
        if let Ok(mut known) = self.known.lock() {
            *known = Some((Instant::now(), list.clone()));
        }
        list
    }

    /// Forget the list, so the next question reads the bucket again.
    fn invalidate(&self) {
        if let Ok(mut known) = self.known.lock() {
            *known = None;
        }
    }
}

/// What a look for stale intents did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RollForwardReport {
    /// Intents found.
    pub found: usize,
    /// Stale renames finished.
    pub completed: usize,
    /// Renames still alive (left alone).
    pub alive: usize,
    /// Stale renames that failed again (left for a later look).
    pub failed: usize,
}

impl Storage {
    /// This gateway's identity in intent records.
    pub fn gateway_id(&self) -> &str {
        &self.intents.gateway
    }

    /// Stores `intent` at its key unless one is there already: `Ok(None)` then.
    pub(crate) async fn create_intent(&self, intent: &Intent) -> Result<Option<String>> {
        let key = intent_key(&self.settings.system_prefix, &intent.source);
        let created = self
            .s3()
            .put_object_if_absent(&key, intent_body(intent)?, &self.intent_options())
            .await?;
        self.intents.invalidate();
        Ok(created.then_some(key))
    }

    fn intent_options(&self) -> super::s3::ObjectOptions {
        super::s3::ObjectOptions {
            content_type: Some("application/json"),
            storage_class: None,
            ..self.object_options()
        }
    }

    async fn put_intent(&self, key: &str, intent: &Intent) -> Result<()> {
        self.s3()
            .put_object(key, intent_body(intent)?, &self.intent_options())
            .await
    }

    async fn read_intent(&self, key: &str) -> Result<Option<Intent>> {
        let got = match self.s3().get_range(key, 0, MAX_INTENT_BYTES, None).await {
            Ok(got) => got,
            Err(GetFailure::NotFound) => return Ok(None),
            Err(GetFailure::Denied(f)) => return Err(f.into_error("GetObject")),
            Err(GetFailure::Unsatisfiable(_)) => return Ok(None),
            Err(GetFailure::Other(e)) => return Err(e),
        };
        let body = got
            .body
            .collect()
            .await
            .map_err(|e| StorageError::S3Misbehaved(format!("reading {key}: {e}")))?
            .into_bytes();
        match serde_json::from_slice::<Intent>(&body) {
            Ok(intent) if intent.is_valid() => Ok(Some(intent)),
            _ => {
                tracing::warn!(key = %key.escape_debug(), "ignoring a malformed rename intent");
                Ok(None)
            }
        }
    }

    /// Every intent in the bucket, read now.
    pub async fn list_intents(&self) -> Result<Vec<(String, Intent)>> {
        let prefix = intents_prefix(&self.settings.system_prefix);
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .s3()
                .list_page(&prefix, None, PAGE, token.as_deref())
                .await?;
            for object in page.objects {
                if let Some(intent) = self.read_intent(&object.key).await? {
                    out.push((object.key, intent));
                }
            }
            token = page.next_token;
            if token.is_none() {
                break;
            }
        }
        self.intents.remember(out.clone());
        Ok(out)
    }

    /// The intents that touch the folder or file at key prefix `dir_prefix`, from this
    /// gateway's list (read again when older than [`REFRESH_EVERY`]). A list that cannot
    /// be read (an IAM policy without the system prefix) counts as empty until the next
    /// refresh: renames go on as before, folder renames fail at their intent.
    pub(crate) async fn intents_touching(&self, dir_prefix: &str) -> Vec<(String, Intent)> {
        let list = match self.intents.fresh() {
            Some(list) => list,
            None => match self.list_intents().await {
                Ok(list) => Arc::new(list),
                Err(e) => {
                    tracing::warn!("cannot list the folder rename intents: {e}");
                    self.intents.remember(Vec::new())
                }
            },
        };
        list.iter()
            .filter(|(_, intent)| intent.touches(dir_prefix))
            .cloned()
            .collect()
    }

    /// Finishes every rename whose gateway is gone (heartbeat older than [`LEASE`]).
    pub async fn roll_forward_stale(self: &Arc<Self>) -> Result<RollForwardReport> {
        let intents = self.list_intents().await?;
        let mut report = RollForwardReport {
            found: intents.len(),
            ..RollForwardReport::default()
        };
        for (key, intent) in intents {
            match self.roll_forward(&key).await {
                Ok(true) => report.completed += 1,
                Ok(false) => report.alive += 1,
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(
                        from = %intent.source.escape_debug(),
                        to = %intent.target.escape_debug(),
                        "rolling an interrupted folder rename forward failed (will retry): {e}"
                    );
                }
            }
        }
        Ok(report)
    }

    /// Finishes the rename of `intent` (at `key`) if it is stale: `Ok(false)` if it is
    /// still alive, `Ok(true)` once it is done (or found done by someone else).
    pub(crate) async fn roll_forward(self: &Arc<Self>, key: &str) -> Result<bool> {
        // Read it again: it may have been finished, or refreshed, since it was listed.
        let Some(mut intent) = self.read_intent(key).await? else {
            self.intents.invalidate();
            return Ok(true);
        };
        if !intent.is_stale(unix_now()) {
            return Ok(false);
        }
        tracing::info!(
            from = %intent.source.escape_debug(),
            to = %intent.target.escape_debug(),
            gateway = %intent.gateway.escape_debug(),
            stale_secs = unix_now().saturating_sub(intent.heartbeat),
            "rolling an interrupted folder rename forward"
        );
        intent.gateway = self.gateway_id().to_string();
        intent.heartbeat = unix_now();
        self.put_intent(key, &intent).await?;
        let store = self.user_store(&intent.user_prefix);
        self.run_move(store, key.to_string(), intent, true).await?;
        Ok(true)
    }

    /// Moves every object of `intent`'s source to its target, keeping the heartbeat
    /// fresh meanwhile, then deletes the intent at `key`. With `check_targets` a target
    /// already in place is not copied again (roll forward); a new rename knows the
    /// target is empty. On failure the intent stays, for a later roll forward.
    pub(crate) async fn run_move(
        self: &Arc<Self>,
        store: UserStore,
        key: String,
        intent: Intent,
        check_targets: bool,
    ) -> Result<u64> {
        let heartbeat = AbortOnDropHandle::new(tokio::spawn(heartbeat(
            self.clone(),
            key.clone(),
            intent.clone(),
        )));
        let moved = move_tree(&store, &intent, check_targets).await;
        heartbeat.abort();
        let _ = heartbeat.await;
        let moved = match moved {
            Ok(moved) => moved,
            Err(e) => {
                tracing::warn!(
                    from = %intent.source.escape_debug(),
                    to = %intent.target.escape_debug(),
                    "folder rename interrupted; any gateway will finish it once its intent is \
                     older than {}s: {e}",
                    LEASE.as_secs()
                );
                return Err(e);
            }
        };
        self.s3().delete_object(&key).await?;
        self.intents.invalidate();
        tracing::info!(
            from = %intent.source.escape_debug(),
            to = %intent.target.escape_debug(),
            objects = moved,
            "folder rename done"
        );
        Ok(moved)
    }
}

fn intent_body(intent: &Intent) -> Result<Bytes> {
    serde_json::to_vec(intent)
        .map(Bytes::from)
        .map_err(|e| StorageError::Internal(format!("encoding a rename intent: {e}")))
}

/// Refreshes the intent's heartbeat every [`HEARTBEAT_EVERY`] until aborted.
async fn heartbeat(storage: Arc<Storage>, key: String, mut intent: Intent) {
    loop {
        tokio::time::sleep(HEARTBEAT_EVERY).await;
        intent.heartbeat = unix_now();
        if let Err(e) = storage.put_intent(&key, &intent).await {
            tracing::warn!("refreshing a folder rename's heartbeat failed: {e}");
        }
    }
}

/// Copies then deletes every object under `intent.source`, [`COPIES_IN_FLIGHT`] at a
/// time; stops at the first failure. Returns how many objects were moved.
async fn move_tree(store: &UserStore, intent: &Intent, check_targets: bool) -> Result<u64> {
    let moved = Arc::new(AtomicU64::new(0));
    let mut set: JoinSet<Result<()>> = JoinSet::new();
    let mut failure = None;
    let mut token: Option<String> = None;
    'pages: loop {
        let page = store
            .s3()
            .list_page(&intent.source, None, PAGE, token.as_deref())
            .await?;
        for object in page.objects {
            let Some(rest) = object.key.strip_prefix(&intent.source) else {
                continue;
            };
            let dst = format!("{}{rest}", intent.target);
            while set.len() >= COPIES_IN_FLIGHT {
                if let Some(Err(e)) = joined(set.join_next().await) {
                    failure = Some(e);
                    break 'pages;
                }
            }
            let store = store.clone();
            let moved = moved.clone();
            let source = intent.source.clone();
            set.spawn(async move {
                move_one(&store, &object.key, &dst, &object.head, check_targets).await?;
                let n = moved.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(PROGRESS_EVERY) {
                    tracing::info!(from = %source.escape_debug(), objects = n, "folder rename progress");
                }
                Ok(())
            });
        }
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    while let Some(result) = set.join_next().await {
        if let Some(Err(e)) = joined(Some(result)) {
            failure.get_or_insert(e);
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(moved.load(Ordering::Relaxed)),
    }
}

fn joined(
    result: Option<std::result::Result<Result<()>, tokio::task::JoinError>>,
) -> Option<Result<()>> {
    result.map(|r| r.unwrap_or_else(|e| Err(StorageError::Internal(format!("copy task: {e}")))))
}

/// Moves one object: copy (unless `check_targets` finds it in place), then delete.
async fn move_one(
    store: &UserStore,
    src: &str,
    dst: &str,
    head: &ObjectHead,
    check_targets: bool,
) -> Result<()> {
    let in_place = check_targets
        && store
            .head(dst)
            .await?
            .is_some_and(|target| same_object(&target, head));
    if !in_place {
        store.copy_object(src, dst, head).await?;
    }
    store.delete_key(src).await
}

/// Whether `target` is a copy of `source`: the same size, and the same ETag unless one
/// of them is not a plain MD5 (multipart copies and SSE-KMS objects have others).
fn same_object(target: &ObjectHead, source: &ObjectHead) -> bool {
    fn plain(etag: &Option<String>) -> Option<&str> {
        etag.as_deref().filter(|e| !e.contains('-'))
    }
    target.size == source.size
        && match (plain(&target.etag), plain(&source.etag)) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent() -> Intent {
        Intent::new("u/a/", "u/b/", "u/", "g")
    }

    #[test]
    fn an_intent_touches_both_folders_their_contents_and_parents() {
        let i = intent();
        assert!(i.touches("u/a/"));
        assert!(i.touches("u/a/x/"));
        assert!(i.touches("u/b/y/"));
        assert!(i.touches("u/"));
        assert!(!i.touches("u/ab/"));
        assert!(!i.touches("u/c/"));
    }

    #[test]
    fn staleness_follows_the_heartbeat() {
        let mut i = intent();
        assert!(!i.is_stale(i.heartbeat + 10));
        i.heartbeat -= LEASE.as_secs() + 1;
        assert!(i.is_stale(unix_now()));
    }

    #[test]
    fn intents_outside_the_user_or_nested_are_invalid() {
        assert!(intent().is_valid());
        assert!(!Intent::new("v/a/", "u/b/", "u/", "g").is_valid());
        assert!(!Intent::new("u/a/", "u/a/b/", "u/", "g").is_valid());
    }

    #[test]
    fn the_system_prefix_is_normalized_and_kept_apart_from_users() {
        assert_eq!(normalize_system_prefix("/sys"), "sys/");
        assert_eq!(normalize_system_prefix(""), DEFAULT_SYSTEM_PREFIX);
        assert!(outside_user_prefix(".s3sftp/", "users/a/"));
        assert!(!outside_user_prefix(".s3sftp/", ""));
        assert!(!outside_user_prefix("users/", "users/a/"));
        assert!(!outside_user_prefix("users/a/sys/", "users/a/"));
    }

    #[test]
    fn intent_keys_are_per_source_under_the_system_prefix() {
        let k = intent_key(".s3sftp/", "u/a/");
        assert!(k.starts_with(".s3sftp/renames/") && k.ends_with(".json"));
        assert_ne!(k, intent_key(".s3sftp/", "u/b/"));
    }
}
