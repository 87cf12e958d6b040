//! Property tests of the upload path over write offsets, through the real `storage` code
//! against a real S3 HTTP server (the embedded store, or the external one named by
//! `S3SFTP_TEST_S3_*`).
//!
//! The promise (`Upload::write`): the first write is at offset 0; after that, a write that
//! starts at the written end (the end of the contiguous bytes from 0) is always accepted,
//! and one that starts beyond it is held until the gap before it fills, as long as its end
//! is within `reorder_window` of the written end.
//!
//! 1. Any order that keeps that promise stores exactly the file's bytes, single PutObject
//!    or multipart alike, and leaves no pending multipart upload.
//! 2. A sequence that leaves a gap, or whose out-of-order writes overlap, stores what a
//!    local file would hold (zeros in the gap, the newest bytes where writes overlap: the
//!    upload switches to edit mode), and leaves no pending multipart upload.
//! 3. A write below the written end (a rewrite) is refused without harming the upload.
//! 4. Random writes and sizes on a stored file opened without truncation (an edit) store
//!    what a local file would hold.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::common::bucket::BucketView;
use crate::common::own_store::own_store;
use crate::common::{random_bytes, MIB, PART};
use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use s3sftp::storage::client::build_client;
use s3sftp::storage::{Storage, TransferSettings, UserStore, VirtualPath, WriteMode};

/// Out-of-order writes are accepted this far past the written end.
const WINDOW: u64 = 256 * 1024;
const PREFIX: &str = "order/";

struct Fixture {
    rt: tokio::runtime::Runtime,
    store: UserStore,
    view: BucketView,
    next: AtomicU64,
}

impl Fixture {
    fn new() -> Fixture {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (store, view) = rt.block_on(async {
            let (settings, view) = own_store("upload-order").await;
            let client = build_client(&settings).await;
            let storage: Arc<Storage> = Storage::new(
                client,
                settings.bucket.clone(),
                TransferSettings {
                    part_size: PART as u64,
                    transfer_budget: 4 * PART as u64,
                    global_budget: 16 * PART as u64,
                    download_chunk: 2 * MIB as u64,
                    reorder_window: WINDOW,
                    ..TransferSettings::default()
                },
            );
            let prefix = format!("{PREFIX}{:016x}/", rand::random::<u64>());
            (storage.user_store(&prefix), view)
        });
        Fixture {
            rt,
            store,
            view,
            next: AtomicU64::new(0),
        }
    }

    /// A path no other case uses.
    fn fresh_path(&self) -> VirtualPath {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        VirtualPath::parse_str(&format!("/f{n}.bin")).expect("path")
    }

    fn runner(cases: u32) -> TestRunner {
        TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        })
    }

    /// The object's bytes, if there is one, and whether any multipart upload is pending
    /// under the store's prefix.
    async fn outcome(&self, path: &VirtualPath) -> (Option<Vec<u8>>, Vec<String>) {
        let key = self.store.jail().file_key(path).expect("key");
        let object = self.view.object(&key).await;
        let pending = self.view.pending_uploads(self.store.jail().prefix()).await;
        (object, pending)
    }
}

/// A file: its size, how it is cut into writes, and the choices that order them.
#[derive(Debug, Clone)]
struct Plan {
    size: usize,
    /// Largest write (each write is 1..=max_chunk bytes, from a generator seeded by
    /// `seed`), raised so that no file needs more than about 1,000 writes.
    max_chunk: usize,
    seed: u64,
    /// At each step, which of the writes the promise allows comes next.
    picks: Vec<usize>,
}

/// Sizes around the interesting edges: tiny, one PutObject, exactly one part, one part
/// plus or minus a byte, and a few parts.
fn sizes(min: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        2 => min..=4096usize,
        2 => 4097..=300_000usize,
        1 => (PART - 2)..=(PART + 2),
        2 => (PART + 3)..=(2 * PART + 300_000),
    ]
}

fn plans(min_size: usize) -> impl Strategy<Value = Plan> {
    (
        sizes(min_size),
        prop_oneof![1..=64usize, 65..=8192usize, 8193..=(2 * WINDOW as usize)],
        any::<u64>(),
        proptest::collection::vec(any::<usize>(), 64),
    )
        .prop_map(|(size, max_chunk, seed, picks)| Plan {
            size,
            max_chunk,
            seed,
            picks,
        })
}

impl Plan {
    /// The writes `(offset, len)` in file order.
    fn chunks(&self) -> Vec<(u64, u64)> {
        let max_chunk = self.max_chunk.max(self.size.div_ceil(1000)) as u64;
        let mut state = self.seed | 1;
        let mut out = Vec::new();
        let mut at = 0usize;
        while at < self.size {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (1 + (state % max_chunk) as usize).min(self.size - at);
            out.push((at as u64, len as u64));
            at += len;
        }
        out
    }

    /// The writes in an order the promise allows: the first at 0, then any write that
    /// starts at the written end, or ends within the window of it.
    fn order(&self) -> Vec<(u64, u64)> {
        let mut remaining = self.chunks();
        let mut written = 0u64;
        let mut held: Vec<(u64, u64)> = Vec::new();
        let mut out = Vec::with_capacity(remaining.len());
        let mut step = 0usize;
        while !remaining.is_empty() {
            let eligible: Vec<usize> = if out.is_empty() {
                vec![0]
            } else {
                (0..remaining.len())
                    .filter(|&i| {
                        let (off, len) = remaining[i];
                        off == written || off + len - written <= WINDOW
                    })
                    .collect()
            };
            let pick = eligible[self.picks[step % self.picks.len()] % eligible.len()];
            step += 1;
            let chunk = remaining.remove(pick);
            out.push(chunk);
            held.push(chunk);
            // Advance the written end over everything now contiguous.
            held.sort_unstable();
            while let Some(&(off, len)) = held.first() {
                if off != written {
                    break;
                }
                written += len;
                held.remove(0);
            }
        }
        out
    }
}

async fn write_all(
    upload: &mut s3sftp::storage::Upload,
    data: &Bytes,
    writes: &[(u64, u64)],
) -> Result<(), String> {
    for &(off, len) in writes {
        let piece = data.slice(off as usize..(off + len) as usize);
        upload
            .write(off, piece)
            .await
            .map_err(|e| format!("write {off}+{len}: {e}"))?;
    }
    Ok(())
}

#[test]
fn every_allowed_write_order_stores_the_exact_bytes() {
    let fx = Fixture::new();
    let mut runner = Fixture::runner(32);
    let (multipart, reordered) = (AtomicU64::new(0), AtomicU64::new(0));
    runner
        .run(&plans(0), |plan| {
            fx.rt.block_on(async {
                let path = fx.fresh_path();
                let data = Bytes::from(random_bytes(plan.size, plan.seed));
                let writes = plan.order();
                if plan.size > PART {
                    multipart.fetch_add(1, Ordering::Relaxed);
                }
                if writes.windows(2).any(|w| w[0].0 > w[1].0) {
                    reordered.fetch_add(1, Ordering::Relaxed);
                }
                let mut upload = fx
                    .store
                    .open_write(&path, WriteMode::default(), None)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("open: {e}")))?;
                write_all(&mut upload, &data, &writes)
                    .await
                    .map_err(TestCaseError::fail)?;
                prop_assert_eq!(upload.len(), plan.size as u64);
                let size = upload
                    .finish()
                    .await
                    .map_err(|e| TestCaseError::fail(format!("finish: {e}")))?;
                prop_assert_eq!(size, plan.size as u64);
                let (object, pending) = fx.outcome(&path).await;
                let object = object.ok_or_else(|| TestCaseError::fail("no object stored"))?;
                prop_assert!(
                    object == data[..],
                    "stored bytes differ ({} bytes)",
                    object.len()
                );
                prop_assert!(pending.is_empty(), "pending uploads: {pending:?}");
                Ok(())
            })
        })
        .unwrap();
    // Not vacuous: the cases did reach multipart uploads and out-of-order writes.
    let (multipart, reordered) = (multipart.into_inner(), reordered.into_inner());
    eprintln!("{multipart} multipart cases, {reordered} with out-of-order writes, of 32");
    assert!(
        multipart >= 3 && reordered >= 8,
        "{multipart} multipart, {reordered} reordered"
    );
}

/// How a good sequence is spoiled.
#[derive(Debug, Clone)]
enum Spoil {
    /// One write (not the first or the last of the file) never comes.
    Gap { which: usize },
    /// An extra write that starts past the written end but inside, or at the start of, a
    /// write still to come: it is held and then collides.
    Overlap {
        at_step: usize,
        shift: u64,
        len: u64,
    },
}

fn spoils() -> impl Strategy<Value = Spoil> {
    prop_oneof![
        any::<usize>().prop_map(|which| Spoil::Gap { which }),
        (any::<usize>(), 0..4096u64, 1..=(WINDOW / 2)).prop_map(|(at_step, shift, len)| {
            Spoil::Overlap {
                at_step,
                shift,
                len,
            }
        }),
    ]
}

impl Spoil {
    /// The spoiled sequence, or `None` if this plan cannot be spoiled this way.
    fn apply(&self, writes: &[(u64, u64)], size: u64) -> Option<Vec<(u64, u64)>> {
        match *self {
            Spoil::Gap { which } => {
                // Any write but the first and the last of the file (without the last, the
                // file is merely shorter: nothing to detect).
                let last = writes.iter().map(|w| w.0).max()?;
                let candidates: Vec<usize> = (0..writes.len())
                    .filter(|&i| writes[i].0 != 0 && writes[i].0 != last)
                    .collect();
                if candidates.is_empty() {
                    return None;
                }
                let drop = candidates[which % candidates.len()];
                let mut out = writes.to_vec();
                out.remove(drop);
                Some(out)
            }
            Spoil::Overlap {
                at_step,
                shift,
                len,
            } => {
                // Insert after step `i` (at least the first write), where the written end
                // is short of the file's end.
                let i = 1 + at_step % writes.len();
                let mut done: Vec<(u64, u64)> = writes[..i].to_vec();
                done.sort_unstable();
                let mut written = 0;
                for (off, l) in done {
                    if off == written {
                        written += l;
                    }
                }
                if written >= size {
                    return None;
                }
                // A start strictly past the written end and inside the file: it is either
                // the offset of a write held or to come ("two writes at offset"), or inside
                // one, which then lands over it ("overlapping writes"). Its bytes are the
                // file's own, as a client resending a block would send.
                let start = (written + 1 + shift).min(size - 1);
                if start <= written {
                    return None;
                }
                let extra = (start, len.min(WINDOW));
                let mut out = writes.to_vec();
                out.insert(i, extra);
                Some(out)
            }
        }
    }
}

/// What a local file holds after `writes` of `data`'s bytes, in order: zeros where
/// nothing was written, the newest bytes where writes overlap.
fn posix_result(data: &[u8], writes: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(off, len) in writes {
        let (off, end) = (off as usize, (off + len) as usize);
        if out.len() < end {
            out.resize(end, 0);
        }
        out[off..end].copy_from_slice(&data[off..end]);
    }
    out
}

#[test]
fn gaps_read_as_zeros_and_overlaps_keep_the_newest_bytes() {
    let fx = Fixture::new();
    let mut runner = Fixture::runner(24);
    let spoiled_cases = AtomicU64::new(0);
    runner
        .run(&(plans(2), spoils()), |(plan, spoil)| {
            let writes = plan.order();
            let Some(spoiled) = spoil.apply(&writes, plan.size as u64) else {
                return Ok(());
            };
            spoiled_cases.fetch_add(1, Ordering::Relaxed);
            fx.rt.block_on(async {
                let path = fx.fresh_path();
                // Longer than the file: the extra write may reach past its end.
                let data = Bytes::from(random_bytes(plan.size + WINDOW as usize, plan.seed));
                let mut upload = fx
                    .store
                    .open_write(&path, WriteMode::default(), None)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("open: {e}")))?;
                write_all(&mut upload, &data, &spoiled)
                    .await
                    .map_err(TestCaseError::fail)?;
                let want = posix_result(&data, &spoiled);
                let size = upload
                    .finish()
                    .await
                    .map_err(|e| TestCaseError::fail(format!("finish ({spoil:?}): {e}")))?;
                prop_assert_eq!(size, want.len() as u64);
                let (object, pending) = fx.outcome(&path).await;
                prop_assert!(
                    object.as_deref() == Some(&want[..]),
                    "stored bytes differ from a local file's ({spoil:?})"
                );
                prop_assert!(pending.is_empty(), "pending uploads: {pending:?}");
                Ok(())
            })
        })
        .unwrap();
    // Not vacuous: most plans could be spoiled (tiny files cannot).
    let spoiled = spoiled_cases.into_inner();
    eprintln!("{spoiled} of 24 cases spoiled");
    assert!(spoiled >= 8, "only {spoiled} of 24 cases were spoiled");
}

#[test]
fn a_rewrite_is_refused_and_does_not_harm_the_upload() {
    let fx = Fixture::new();
    let mut runner = Fixture::runner(12);
    runner
        .run(&(plans(2), any::<usize>()), |(plan, pick)| {
            let writes = plan.order();
            fx.rt.block_on(async {
                let path = fx.fresh_path();
                let data = Bytes::from(random_bytes(plan.size, plan.seed));
                let mut upload = fx
                    .store
                    .open_write(&path, WriteMode::default(), None)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("open: {e}")))?;
                // Replay one write below the written end with other bytes, right after the
                // first write (which always lands at once).
                let i = 1 + pick % writes.len();
                write_all(&mut upload, &data, &writes[..i])
                    .await
                    .map_err(TestCaseError::fail)?;
                let (off, len) = writes[0];
                let junk = Bytes::from(vec![0xa5u8; len as usize]);
                prop_assert!(upload.write(off, junk).await.is_err(), "rewrite accepted");
                write_all(&mut upload, &data, &writes[i..])
                    .await
                    .map_err(TestCaseError::fail)?;
                let size = upload
                    .finish()
                    .await
                    .map_err(|e| TestCaseError::fail(format!("finish: {e}")))?;
                prop_assert_eq!(size, plan.size as u64);
                let (object, pending) = fx.outcome(&path).await;
                prop_assert!(object.as_deref() == Some(&data[..]), "stored bytes differ");
                prop_assert!(pending.is_empty(), "pending uploads: {pending:?}");
                Ok(())
            })
        })
        .unwrap();
}

/// One change to a stored file, as a client makes it through an edit handle.
#[derive(Debug, Clone)]
enum Change {
    /// `len` bytes (seeded by `seed`) at `offset`; may lie past the end (a hole).
    Write { offset: u64, len: u64, seed: u64 },
    /// FSETSTAT(size).
    SetLen(u64),
}

fn changes(size: u64) -> impl Strategy<Value = Vec<Change>> {
    let reach = size + 2 * PART as u64;
    let change = prop_oneof![
        4 => (0..=reach, 1..=(3 * MIB as u64), any::<u64>())
            .prop_map(|(offset, len, seed)| Change::Write { offset, len, seed }),
        1 => (0..=reach).prop_map(Change::SetLen),
    ];
    proptest::collection::vec(change, 1..=8)
}

/// 4. Random writes and sizes on a stored file (opened without truncation) store what a
///    local file would hold: the old bytes where nothing was written, zeros in holes and
///    past a cut, the newest bytes where writes overlap; every multipart part S3 takes is
///    large enough (the store refuses parts under 5 MiB but the last). A change the
///    upload refuses (below the bytes already streamed) is left out of the local model
///    too, and the refusal comes at the change itself.
#[test]
fn random_edits_of_a_stored_file_match_a_local_file() {
    let fx = Fixture::new();
    let mut runner = Fixture::runner(16);
    let strategy = sizes(0).prop_flat_map(|size| (Just(size), any::<u64>(), changes(size as u64)));
    runner
        .run(&strategy, |(size, seed, changes)| {
            fx.rt.block_on(async {
                let path = fx.fresh_path();
                let key = fx.store.jail().file_key(&path).expect("key");
                let mut local = random_bytes(size, seed);
                fx.view.put(&key, &local).await;
                let mut upload = fx
                    .store
                    .open_write(&path, WriteMode::default(), None)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("open: {e}")))?;
                for change in &changes {
                    match *change {
                        Change::Write { offset, len, seed } => {
                            let data = random_bytes(len as usize, seed);
                            if upload
                                .write(offset, Bytes::from(data.clone()))
                                .await
                                .is_ok()
                            {
                                let (off, end) = (offset as usize, (offset + len) as usize);
                                if local.len() < end {
                                    local.resize(end, 0);
                                }
                                local[off..end].copy_from_slice(&data);
                            }
                        }
                        Change::SetLen(len) => {
                            if upload.set_len(len).is_ok() {
                                local.resize(len as usize, 0);
                            }
                        }
                    }
                    prop_assert_eq!(upload.len(), local.len() as u64, "after {:?}", change);
                }
                let stored = upload
                    .finish()
                    .await
                    .map_err(|e| TestCaseError::fail(format!("finish: {e}")))?;
                prop_assert_eq!(stored, local.len() as u64);
                let (object, pending) = fx.outcome(&path).await;
                prop_assert!(
                    object.as_deref() == Some(&local[..]),
                    "stored bytes differ from a local file's"
                );
                prop_assert!(pending.is_empty(), "pending uploads: {pending:?}");
                Ok(())
            })
        })
        .unwrap();
}
