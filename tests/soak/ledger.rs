//! What each client knows about its own files, and the run's counters.
//!
//! Every upload goes to a fresh name and every rename to a fresh name, so each path has
//! one history and one final state. A client records a path as acknowledged only when the
//! server said so (CLOSE answered OK, `scp` or `sftp -b` exited 0); a failure the server
//! reported means nothing may be at that path; a failure whose outcome the client cannot
//! know (the connection broke after CLOSE was sent) makes the path uncertain.

use std::collections::BTreeMap;
use std::sync::Mutex;

use rand::RngExt;

/// The state of one path of one client at the end of its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// The server acknowledged this content here: it must be in S3, byte for byte.
    Acked { sha: String, size: u64 },
    /// A directory the client created (its `dir/` marker).
    Dir,
    /// The outcome is unknowable from the client's side: either absent, or this content.
    Uncertain { sha: String, why: &'static str },
    /// Nothing may be here: a refused or abandoned upload, a removed or renamed-away file.
    Absent { why: &'static str },
}

/// One client's paths (virtual, starting with `/`) and their states.
#[derive(Debug, Default)]
pub struct Ledger {
    pub paths: BTreeMap<String, State>,
    next_name: u64,
}

impl Ledger {
    /// A fresh file name in `dir` (`""` for the home directory) that this client never used.
    pub fn fresh_path(&mut self, client: usize, dir: &str, tag: &str) -> String {
        self.next_name += 1;
        format!("{dir}/{tag}-c{client:02}-{:06}.bin", self.next_name)
    }

    pub fn set(&mut self, path: &str, state: State) {
        self.paths.insert(path.to_string(), state);
    }

    /// A random acknowledged file: path, sha256, size.
    pub fn pick_acked(&self, rng: &mut impl rand::Rng) -> Option<(String, String, u64)> {
        let acked: Vec<_> = self
            .paths
            .iter()
            .filter_map(|(p, s)| match s {
                State::Acked { sha, size } => Some((p.clone(), sha.clone(), *size)),
                _ => None,
            })
            .collect();
        if acked.is_empty() {
            return None;
        }
        let i = rng.random_range(0..acked.len());
        Some(acked[i].clone())
    }

    /// Acknowledged files directly in `dir` (`""` for home): their names.
    pub fn acked_in(&self, dir: &str) -> Vec<String> {
        self.paths
            .iter()
            .filter(|(p, s)| matches!(s, State::Acked { .. }) && parent(p) == dir)
            .map(|(p, _)| p.rsplit('/').next().unwrap_or("").to_string())
            .collect()
    }

    pub fn get(&self, path: &str) -> Option<&State> {
        self.paths.get(path)
    }
}

/// A client's ledger, shared with the harness so that a client stuck in an operation at
/// the end still has its files checked. Paths an operation may touch are marked uncertain
/// before it starts.
#[derive(Debug, Clone, Default)]
pub struct SharedLedger(std::sync::Arc<Mutex<Ledger>>);

impl SharedLedger {
    pub fn fresh_path(&self, client: usize, dir: &str, tag: &str) -> String {
        self.0.lock().unwrap().fresh_path(client, dir, tag)
    }

    pub fn set(&self, path: &str, state: State) {
        self.0.lock().unwrap().set(path, state)
    }

    pub fn pick_acked(&self, rng: &mut impl rand::Rng) -> Option<(String, String, u64)> {
        self.0.lock().unwrap().pick_acked(rng)
    }

    pub fn acked_in(&self, dir: &str) -> Vec<String> {
        self.0.lock().unwrap().acked_in(dir)
    }

    pub fn get(&self, path: &str) -> Option<State> {
        self.0.lock().unwrap().get(path).cloned()
    }

    /// Bytes of the acknowledged files.
    pub fn acked_bytes(&self) -> u64 {
        let inner = self.0.lock().unwrap();
        inner
            .paths
            .values()
            .map(|s| match s {
                State::Acked { size, .. } => *size,
                _ => 0,
            })
            .sum()
    }

    /// A copy of the ledger as it is now.
    pub fn snapshot(&self) -> Ledger {
        let inner = self.0.lock().unwrap();
        Ledger {
            paths: inner.paths.clone(),
            next_name: inner.next_name,
        }
    }
}

/// `"/in/x"` → `"/in"`, `"/x"` → `""`.
pub fn parent(path: &str) -> &str {
    path.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

/// Outcome of one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    /// The client cannot know whether it took effect.
    Unknown,
}

#[derive(Debug, Default)]
struct Inner {
    ops: BTreeMap<&'static str, [u64; 3]>,
    bytes_up: u64,
    bytes_down: u64,
    violations: Vec<String>,
    notes: BTreeMap<&'static str, u64>,
    failures: BTreeMap<String, u64>,
}

/// Counters shared by every client.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<Inner>,
}

impl Stats {
    pub fn op(&self, kind: &'static str, outcome: Outcome) {
        let mut inner = self.inner.lock().unwrap();
        let slot = inner.ops.entry(kind).or_default();
        slot[outcome as usize] += 1;
    }

    /// A failure, with a short reason for the report's failure breakdown.
    pub fn failure(&self, kind: &'static str, outcome: Outcome, reason: &str) {
        self.op(kind, outcome);
        let reason: String = reason.chars().take(110).collect();
        let mut inner = self.inner.lock().unwrap();
        *inner
            .failures
            .entry(format!("{kind}: {reason}"))
            .or_default() += 1;
    }

    pub fn up(&self, bytes: u64) {
        self.inner.lock().unwrap().bytes_up += bytes;
    }

    pub fn down(&self, bytes: u64) {
        self.inner.lock().unwrap().bytes_down += bytes;
    }

    /// Something that must never happen; fails the soak.
    pub fn violation(&self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.inner.lock().unwrap().violations.push(what);
    }

    /// Something worth counting in the report that is not an operation.
    pub fn note(&self, what: &'static str) {
        *self.inner.lock().unwrap().notes.entry(what).or_default() += 1;
    }

    /// Every violation once, in the order first seen.
    pub fn violations(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        let inner = self.inner.lock().unwrap();
        inner
            .violations
            .iter()
            .filter(|v| seen.insert(v.as_str()))
            .cloned()
            .collect()
    }

    pub fn bytes(&self) -> (u64, u64) {
        let inner = self.inner.lock().unwrap();
        (inner.bytes_up, inner.bytes_down)
    }

    pub fn ops(&self) -> BTreeMap<&'static str, [u64; 3]> {
        self.inner.lock().unwrap().ops.clone()
    }

    pub fn notes(&self) -> BTreeMap<&'static str, u64> {
        self.inner.lock().unwrap().notes.clone()
    }

    /// The most frequent failure reasons.
    pub fn top_failures(&self, n: usize) -> Vec<(String, u64)> {
        let inner = self.inner.lock().unwrap();
        let mut v: Vec<_> = inner
            .failures
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}
