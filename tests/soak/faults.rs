//! The fault schedule: every few seconds a burst of faults on one S3 operation, and now
//! and then an outage of one operation, through the fault proxy between the server and S3.
//!
//! Bursts are counted in requests. The server makes up to 4 attempts per request, so a
//! burst of 1-3 is usually absorbed by retries and a longer one fails whichever requests
//! meet it (several concurrent requests may share a burst). Errors and resets are given
//! before the request reaches S3 (nothing happens there); cut bodies and stalled bodies
//! are given after S3 did the work, which is the case where a client can be told FAILURE
//! for something S3 did.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::common::fault_proxy::{Fault, FaultProxy, Op, Rule};

/// Makes a fault (some kinds take a random size).
type MakeFault = fn(&mut StdRng) -> Fault;

/// One kind of burst: operation, fault, and the range of its length.
struct Burst {
    op: Op,
    fault: MakeFault,
    count: (u32, u32),
    weight: u32,
}

fn slow_down(_: &mut StdRng) -> Fault {
    Fault::Status(503)
}
fn internal(_: &mut StdRng) -> Fault {
    Fault::Status(500)
}
fn reset(_: &mut StdRng) -> Fault {
    Fault::Reset
}
fn stall(_: &mut StdRng) -> Fault {
    Fault::Stall
}
fn cut_small(rng: &mut StdRng) -> Fault {
    Fault::Truncate(rng.random_range(0..64))
}
fn cut_body(rng: &mut StdRng) -> Fault {
    Fault::Truncate(rng.random_range(0..512 * 1024))
}
fn stall_body(rng: &mut StdRng) -> Fault {
    Fault::StallBody(rng.random_range(0..256 * 1024))
}

fn menu() -> Vec<Burst> {
    let b = |op, fault, count, weight| Burst {
        op,
        fault,
        count,
        weight,
    };
    use Op::*;
    vec![
        b(UploadPart, slow_down as MakeFault, (1, 8), 6),
        b(UploadPart, internal, (1, 5), 3),
        b(UploadPart, reset, (1, 4), 3),
        b(UploadPart, stall, (1, 1), 1),
        b(PutObject, slow_down, (1, 8), 6),
        b(PutObject, internal, (1, 5), 3),
        b(PutObject, reset, (1, 4), 3),
        b(PutObject, stall, (1, 1), 1),
        b(CreateMultipartUpload, slow_down, (1, 5), 2),
        b(CreateMultipartUpload, reset, (1, 3), 1),
        b(CompleteMultipartUpload, slow_down, (1, 5), 3),
        b(CompleteMultipartUpload, internal, (1, 4), 2),
        b(CompleteMultipartUpload, cut_small, (1, 1), 2),
        b(AbortMultipartUpload, slow_down, (1, 2), 1),
        b(GetObject, slow_down, (1, 6), 4),
        b(GetObject, reset, (1, 4), 3),
        b(GetObject, cut_body, (1, 3), 3),
        b(GetObject, stall_body, (1, 1), 1),
        b(HeadObject, slow_down, (1, 5), 3),
        b(HeadObject, reset, (1, 3), 1),
        b(ListObjectsV2, slow_down, (1, 5), 3),
        b(ListObjectsV2, cut_small, (1, 2), 1),
        b(CopyObject, slow_down, (1, 5), 3),
        b(CopyObject, internal, (1, 4), 1),
        b(CopyObject, cut_small, (1, 1), 1),
        b(DeleteObject, slow_down, (1, 5), 3),
        b(DeleteObject, reset, (1, 3), 1),
    ]
}

/// Outages: every request of one operation fails for a few seconds, longer than the
/// server's retries last, so requests really fail and the failure paths are exercised.
fn outages() -> Vec<(Op, MakeFault)> {
    use Op::*;
    vec![
        (UploadPart, slow_down as MakeFault),
        (UploadPart, reset),
        (PutObject, internal),
        (PutObject, slow_down),
        (CreateMultipartUpload, slow_down),
        (CompleteMultipartUpload, internal),
        (CompleteMultipartUpload, cut_small),
        (GetObject, reset),
        (GetObject, slow_down),
        (HeadObject, slow_down),
        (ListObjectsV2, slow_down),
        (CopyObject, slow_down),
        (CopyObject, cut_small),
        (DeleteObject, slow_down),
    ]
}

/// What the schedule did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Scheduled {
    pub bursts: u32,
    pub outages: u32,
}

/// Adds a burst every `every.0..every.1` ms, and one outage in eight times instead, until
/// `stop` is set.
pub async fn schedule(
    proxy: Arc<FaultProxy>,
    seed: u64,
    every_ms: (u64, u64),
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Scheduled {
    let mut rng = StdRng::seed_from_u64(seed);
    let menu = menu();
    let outages = outages();
    let total: u32 = menu.iter().map(|b| b.weight).sum();
    let mut added = Scheduled::default();
    loop {
        let wait = rng.random_range(every_ms.0..every_ms.1.max(every_ms.0 + 1));
        let mut slept = 0;
        while slept < wait {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                return added;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            slept += 100;
        }
        if rng.random_ratio(1, 8) {
            let (op, fault) = outages[rng.random_range(0..outages.len())];
            let seconds = rng.random_range(2.0..5.0);
            // An outage: every request of `op` gets the fault for that long.
            proxy.push(Rule {
                op,
                path_contains: None,
                fault: fault(&mut rng),
                remaining: u32::MAX,
                until: Some(Instant::now() + Duration::from_secs_f64(seconds)),
            });
            added.outages += 1;
            continue;
        }
        let mut pick = rng.random_range(0..total);
        let burst = menu
            .iter()
            .find(|b| {
                if pick < b.weight {
                    true
                } else {
                    pick -= b.weight;
                    false
                }
            })
            .expect("a burst");
        let fault = (burst.fault)(&mut rng);
        let count = rng.random_range(burst.count.0..=burst.count.1);
        proxy.add(burst.op, fault, count);
        added.bursts += 1;
    }
}

/// A short name for reports: `503`, `500`, `reset`, `stall`, `cut-body`, `stall-body`.
fn kind(fault: &Fault) -> String {
    match fault {
        Fault::Status(code) => code.to_string(),
        Fault::Reset => "reset".into(),
        Fault::Stall => "stall".into(),
        Fault::Truncate(_) => "cut-body".into(),
        Fault::StallBody(_) => "stall-body".into(),
        Fault::CorruptBody => "corrupt-body".into(),
        Fault::NotFoundAs(code) => format!("404-as-{code}"),
    }
}

/// Every fault the proxy gave: operation, kind ([`kind`]) and count, sorted.
pub fn given_by_kind(proxy: &FaultProxy) -> Vec<(Op, String, u32)> {
    let mut by_kind: Vec<(Op, String, u32)> = Vec::new();
    for (op, fault, n) in proxy.given() {
        let kind = kind(&fault);
        match by_kind.iter_mut().find(|(o, k, _)| *o == op && *k == kind) {
            Some(entry) => entry.2 += n,
            None => by_kind.push((op, kind, n)),
        }
    }
    by_kind.sort_by(|a, b| format!("{:?}{}", a.0, a.1).cmp(&format!("{:?}{}", b.0, b.1)));
    by_kind
}
