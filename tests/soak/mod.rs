//! Soak test (issue #5): many concurrent clients upload, download, list, rename and remove
//! for minutes against the release `s3sftp serve` binary while S3 faults are injected;
//! then the bucket is checked directly: every acknowledged upload intact, nothing
//! unacknowledged visible, no multipart upload pending; and the server's memory stayed
//! within its budget. Ignored by `cargo test`; run `scripts/soak.sh` (docs/soak.md).
//!
//! Settings (environment): `SOAK_SECONDS` (300), `SOAK_CLIENTS` (50), `SOAK_SEED` (random),
//! `SOAK_MEMORY_MIB` (128, the server's --memory-budget-mib), `SOAK_THINK_MS` (400, the
//! longest pause between two operations of a client), `SOAK_KILL_RATE` (0.02, the share of
//! uploads whose connection is dropped midway), `SOAK_FAULT_EVERY_MS` (2500, mean time
//! between fault bursts), `SOAK_CLIENT_MIB` (40, the data a client keeps at most),
//! `SOAK_HOSTILE` (0.06, the share of clients that are hostile: see `hostile`), `SOAK_OUT`
//! (where the server log and the report go).

mod faults;
mod hostile;
mod ledger;
mod openssh_client;
mod russh_client;
mod server;
mod verify;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngExt;

use crate::common::fault_proxy::FaultProxy;
use ledger::{Ledger, SharedLedger, State, Stats};
use server::{Budgets, ChildServer, SoakUser, MIB};

/// The directories every client makes in its home (files go there and to the home).
pub const DIRS: [&str; 2] = ["/in", "/out"];

/// The memory allowed beyond the configured budget for each connection: russh's receive
/// window (2 MiB of client data the server may hold unread per channel) plus the SFTP
/// reply queue (64 replies of up to 32 KiB, 2 MiB). See docs/soak.md.
const PER_CONNECTION_ALLOWANCE: u64 = 4 * MIB;
/// Allocator and runtime slack (glibc arenas per thread, the SDK's connection pool).
const SLACK: u64 = 32 * MIB;

/// Operations a client picks from.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    Upload,
    Download,
    List,
    Stat,
    Rename,
    Remove,
}

/// Weights of [`Op`]s, in order.
const WEIGHTS: [(Op, u32); 6] = [
    (Op::Upload, 32),
    (Op::Download, 24),
    (Op::List, 12),
    (Op::Stat, 8),
    (Op::Rename, 14),
    (Op::Remove, 10),
];

/// What one client needs to run.
#[derive(Clone)]
pub struct ClientSpec {
    pub id: usize,
    pub user: SoakUser,
    pub port: u16,
    pub seed: u64,
    pub part: u64,
    pub kill_rate: f64,
    pub think_ms: u64,
    pub ops_per_login: u32,
    /// Acknowledged bytes a client keeps at most (then it removes instead of uploading).
    pub data_cap: u64,
    pub stop: Arc<AtomicBool>,
}

impl ClientSpec {
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The next operation; a client holding more than its data cap removes instead of
    /// uploading, so the bucket (and the disk under the embedded store) stays bounded.
    pub fn pick_op(&self, rng: &mut impl rand::Rng, ledger: &SharedLedger) -> Op {
        let total: u32 = WEIGHTS.iter().map(|w| w.1).sum();
        let mut pick = rng.random_range(0..total);
        let mut chosen = Op::Upload;
        for (op, w) in WEIGHTS {
            if pick < w {
                chosen = op;
                break;
            }
            pick -= w;
        }
        match chosen {
            Op::Upload if ledger.acked_bytes() > self.data_cap => Op::Remove,
            op => op,
        }
    }
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a valid value")),
        Err(_) => default,
    }
}

struct Config {
    seconds: u64,
    clients: usize,
    seed: u64,
    memory_mib: u64,
    think_ms: u64,
    kill_rate: f64,
    fault_every_ms: u64,
    client_mib: u64,
    hostile: f64,
    out: PathBuf,
}

impl Config {
    fn from_env() -> Config {
        let seed = env("SOAK_SEED", rand::random::<u64>() % 1_000_000);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let out = std::env::var("SOAK_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir().join(format!("s3sftp-soak-{stamp}")));
        Config {
            seconds: env("SOAK_SECONDS", 300),
            clients: env("SOAK_CLIENTS", 50),
            seed,
            memory_mib: env("SOAK_MEMORY_MIB", 128),
            think_ms: env("SOAK_THINK_MS", 400),
            kill_rate: env("SOAK_KILL_RATE", 0.02),
            fault_every_ms: env("SOAK_FAULT_EVERY_MS", 2500),
            client_mib: env("SOAK_CLIENT_MIB", 40),
            hostile: env("SOAK_HOSTILE", 0.06),
            out,
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// Logs in fresh after the run and puts then gets a file; returns its path and sha.
async fn fresh_login_check(spec: &ClientSpec) -> Result<(String, String, u64), String> {
    let s = russh_client::connect(spec).await?;
    let data = crate::common::random_bytes(6 * MIB as usize + 123, spec.seed);
    let path = "/final-check.bin";
    let flags = russh_sftp::protocol::OpenFlags::WRITE
        | russh_sftp::protocol::OpenFlags::CREATE
        | russh_sftp::protocol::OpenFlags::TRUNCATE;
    let attrs = russh_sftp::protocol::FileAttributes::empty();
    let h = s
        .raw
        .open(path, flags, attrs.clone())
        .await
        .map_err(|e| e.to_string())?
        .handle;
    for (i, c) in data.chunks(32 * 1024).enumerate() {
        s.raw
            .write(&h, (i * 32 * 1024) as u64, c.to_vec())
            .await
            .map_err(|e| e.to_string())?;
    }
    s.raw.close(&h).await.map_err(|e| format!("close: {e}"))?;
    let h = s
        .raw
        .open(path, russh_sftp::protocol::OpenFlags::READ, attrs)
        .await
        .map_err(|e| e.to_string())?
        .handle;
    let mut back = Vec::new();
    loop {
        match s.raw.read(&h, back.len() as u64, 32 * 1024).await {
            Ok(d) => back.extend_from_slice(&d.data),
            Err(russh_sftp::client::error::Error::Status(st))
                if st.status_code == russh_sftp::protocol::StatusCode::Eof =>
            {
                break
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let _ = s.raw.close(&h).await;
    if back != data {
        return Err(format!(
            "read back {} bytes, wrote {}",
            back.len(),
            data.len()
        ));
    }
    Ok((
        path.to_string(),
        crate::common::sha256(&data),
        data.len() as u64,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "soak test: minutes long, run scripts/soak.sh"]
async fn soak() {
    let cfg = Config::from_env();
    std::fs::create_dir_all(&cfg.out).expect("output dir");
    let budgets = Budgets {
        part_mib: 5,
        transfer_mib: 15,
        memory_mib: cfg.memory_mib,
        download_chunk_mib: 1,
    };
    println!(
        "soak: {} s, {} clients, seed {}, budgets {budgets:?}, output {}",
        cfg.seconds,
        cfg.clients,
        cfg.seed,
        cfg.out.display()
    );

    let (direct, view) = crate::common::own_store::own_store("soak").await;
    let external = crate::common::external_s3().is_some();
    let endpoint = direct.endpoint.as_deref().expect("endpoint");
    let authority = endpoint.trim_start_matches("http://").split('/').next();
    let host = authority
        .and_then(|a| a.strip_prefix('[').and_then(|a| a.split(']').next()))
        .or_else(|| authority.and_then(|a| a.split(':').next()))
        .unwrap_or("");
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    assert!(
        loopback,
        "the soak runs on loopback only: S3 endpoint {endpoint} is not a loopback address"
    );
    let proxy = Arc::new(FaultProxy::start(direct.endpoint.as_deref().expect("endpoint")).await);
    let mut proxied = direct.clone();
    proxied.endpoint = Some(proxy.endpoint());
    let root = format!("soak-{}-{:06}/", std::process::id(), cfg.seed);
    let (users, users_file) = server::make_users(&cfg.out, &root, cfg.clients);
    let mut srv = ChildServer::start(&cfg.out, &users_file, &proxied, budgets).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle_rss_kib, _) = server::proc_memory(srv.pid).expect("server memory");
    srv.start_sampling(Duration::from_millis(200), Duration::from_secs(15));

    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let stop_faults = Arc::new(AtomicBool::new(false));
    let fault_task = tokio::spawn(faults::schedule(
        proxy.clone(),
        cfg.seed ^ 0xfa17,
        (cfg.fault_every_ms / 2, cfg.fault_every_ms * 3 / 2),
        stop_faults.clone(),
    ));
    let started = Instant::now();
    let mut clients = Vec::new();
    let shared: Vec<SharedLedger> = users.iter().map(|_| SharedLedger::default()).collect();
    // Every `hostile_stride`-th client is hostile (at least one when the share is not 0).
    let hostile_count = ((cfg.clients as f64 * cfg.hostile.clamp(0.0, 0.5)).round() as usize)
        .max(usize::from(cfg.hostile > 0.0 && cfg.clients >= 4));
    let hostile_stride = (hostile_count > 0).then(|| cfg.clients / hostile_count);
    println!("soak: {hostile_count} of the clients are hostile");
    for (id, user) in users.iter().enumerate() {
        let spec = ClientSpec {
            id,
            user: user.clone(),
            port: srv.port,
            seed: cfg.seed.wrapping_mul(1000).wrapping_add(id as u64),
            part: budgets.part_mib * MIB,
            kill_rate: cfg.kill_rate,
            think_ms: cfg.think_ms,
            ops_per_login: 25,
            data_cap: cfg.client_mib * MIB,
            stop: stop.clone(),
        };
        let stats = stats.clone();
        // Hostile clients spread evenly; one client in ten is made of OpenSSH processes
        // (sftp -b, scp -O).
        let task = if hostile_stride.is_some_and(|n| id % n == n / 2) {
            tokio::spawn(hostile::run(spec, stats, shared[id].clone()))
        } else if id % 10 == 9 {
            let dir = cfg.out.join(format!("openssh-{id:02}"));
            tokio::spawn(openssh_client::run(spec, stats, dir, shared[id].clone()))
        } else {
            tokio::spawn(russh_client::run(spec, stats, shared[id].clone()))
        };
        clients.push(task);
        // Stagger the first logins.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let deadline = started + Duration::from_secs(cfg.seconds);
    let mut next_progress = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !srv.alive() {
            stats.violation("the server process exited during the run".into());
            break;
        }
        if Instant::now() >= next_progress {
            next_progress += Duration::from_secs(30);
            let (up, down) = stats.bytes();
            let rss = srv.memory.lock().unwrap().last_rss_kib;
            println!(
                "soak: {:>4} s  up {:.0} MiB  down {:.0} MiB  rss {:.0} MiB  faults {}  violations {}",
                started.elapsed().as_secs(),
                mib(up),
                mib(down),
                rss as f64 / 1024.0,
                faults::given_by_kind(&proxy).iter().map(|f| f.2).sum::<u32>(),
                stats.violations().len()
            );
        }
    }
    let load_seconds = started.elapsed().as_secs_f64();

    // Stop the load: no new faults, no new operations; those in flight finish.
    stop_faults.store(true, Ordering::SeqCst);
    let scheduled = fault_task.await.unwrap_or_default();
    proxy.clear();
    stop.store(true, Ordering::SeqCst);
    let stop_started = Instant::now();
    for (id, mut task) in clients.into_iter().enumerate() {
        let left = Duration::from_secs(400).saturating_sub(stop_started.elapsed());
        match tokio::time::timeout(left, &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => stats.violation(format!("client {id} panicked: {e}")),
            Err(_) => {
                // Its ledger marks what it was doing as uncertain; the rest is checked.
                stats.violation(format!("client {id} still busy 400 s after the stop"));
                task.abort();
            }
        }
    }
    let mut ledgers: Vec<Ledger> = shared.iter().map(SharedLedger::snapshot).collect();
    let drain_seconds = stop_started.elapsed().as_secs_f64();

    // Let the server settle: abandoned multipart uploads are aborted in the background.
    let settle_started = Instant::now();
    while settle_started.elapsed() < Duration::from_secs(60)
        && !view.pending_uploads(&root).await.is_empty()
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let settle_seconds = settle_started.elapsed().as_secs_f64();

    // The server still serves a fresh login.
    let spec0 = ClientSpec {
        id: 0,
        user: users[0].clone(),
        port: srv.port,
        seed: cfg.seed,
        part: budgets.part_mib * MIB,
        kill_rate: 0.0,
        think_ms: 0,
        ops_per_login: 1,
        data_cap: 0,
        stop: stop.clone(),
    };
    let fresh = fresh_login_check(&spec0).await;
    match &fresh {
        Ok((path, sha, size)) => ledgers[0].set(
            path,
            State::Acked {
                sha: sha.clone(),
                size: *size,
            },
        ),
        Err(e) => stats.violation(format!("fresh login + put/get after the run failed: {e}")),
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let memory = srv.stop_sampling().await;

    let checks = verify::verify(&view, &root, &users, &ledgers).await;
    let alarms = server::alarming_log_lines(&srv.log_path);
    let panics: Vec<_> = alarms
        .iter()
        .filter(|l| l.contains("panicked"))
        .cloned()
        .collect();
    let log_path = srv.log_path.clone();
    let exit = srv.stop().await;

    // Memory: the budget covers transfer buffers only (docs/configuration.md), so the
    // ceiling adds what the server holds without any transfer and a fixed allowance per
    // connection.
    let budget = cfg.memory_mib * MIB;
    let idle = idle_rss_kib * 1024;
    let limit = budget + idle + cfg.clients as u64 * PER_CONNECTION_ALLOWANCE + SLACK;
    // VmHWM is the kernel's own high-water mark, so spikes between samples count too.
    let peak = memory.peak_rss_kib.max(memory.hwm_kib) * 1024;

    let mut violations = stats.violations();
    violations.extend(checks.violations.iter().cloned());
    violations.extend(panics.iter().map(|l| format!("server log: {l}")));
    if peak > limit {
        violations.push(format!(
            "server peak RSS (VmHWM) {:.1} MiB over the limit {:.1} MiB",
            mib(peak),
            mib(limit)
        ));
    }
    if exit != Some(0) {
        violations.push(format!("server exit status on SIGTERM: {exit:?}"));
    }

    // The figures.
    let mut r = String::new();
    let (up, down) = stats.bytes();
    let _ = writeln!(r, "== s3sftp soak ==");
    let _ = writeln!(
        r,
        "load {:.0} s, {} clients ({} russh in-process, {} OpenSSH sftp/scp), seed {}, S3: {}",
        load_seconds,
        cfg.clients,
        cfg.clients - cfg.clients / 10,
        cfg.clients / 10,
        cfg.seed,
        if external {
            "external (S3SFTP_TEST_S3_*)"
        } else {
            "embedded store, in the test process"
        }
    );
    let _ = writeln!(
        r,
        "server: part {} MiB, transfer budget {} MiB, memory budget {} MiB, download chunk {} MiB, S3 attempts 4 x 10 s",
        budgets.part_mib, budgets.transfer_mib, budgets.memory_mib, budgets.download_chunk_mib
    );
    let _ = writeln!(
        r,
        "drain after stop {drain_seconds:.1} s, settle (pending uploads gone) {settle_seconds:.1} s"
    );
    let _ = writeln!(r, "\noperations            ok   failed  unknown");
    for (kind, [ok, failed, unknown]) in stats.ops() {
        let _ = writeln!(r, "  {kind:<16} {ok:>7} {failed:>8} {unknown:>8}");
    }
    let _ = writeln!(
        r,
        "bytes: up {:.1} MiB acknowledged ({:.2} MiB/s), down {:.1} MiB verified ({:.2} MiB/s)",
        mib(up),
        mib(up) / load_seconds,
        mib(down),
        mib(down) / load_seconds
    );
    for (note, n) in stats.notes() {
        let _ = writeln!(r, "  {note}: {n}");
    }
    let _ = writeln!(r, "\nmost frequent failures:");
    for (why, n) in stats.top_failures(12) {
        let _ = writeln!(r, "  {n:>6}  {why}");
    }
    let injected = faults::given_by_kind(&proxy);
    let _ = writeln!(
        r,
        "\nS3 requests through the proxy: {}; fault bursts: {}, outages (2-5 s): {}; faults given: {}",
        proxy.all_hits().values().map(|&n| u64::from(n)).sum::<u64>(),
        scheduled.bursts,
        scheduled.outages,
        injected.iter().map(|f| f.2).sum::<u32>()
    );
    for (op, kind, n) in &injected {
        let _ = writeln!(r, "  {:<26} {kind:<10} {n:>6}", format!("{op:?}"));
    }
    let _ = writeln!(
        r,
        "\nmemory (VmRSS every 200 ms, {} samples): idle {:.1} MiB, peak {:.1} MiB at {:.0} s, at end {:.1} MiB, VmHWM {:.1} MiB",
        memory.samples,
        mib(idle),
        memory.peak_rss_kib as f64 / 1024.0,
        memory.peak_at.as_secs_f64(),
        memory.last_rss_kib as f64 / 1024.0,
        memory.hwm_kib as f64 / 1024.0
    );
    let _ = writeln!(
        r,
        "  limit = budget {} + idle {:.1} + {} connections x {} MiB + slack {} MiB = {:.1} MiB -> {}",
        cfg.memory_mib,
        mib(idle),
        cfg.clients,
        PER_CONNECTION_ALLOWANCE / MIB,
        SLACK / MIB,
        mib(limit),
        if peak <= limit { "ok" } else { "OVER" }
    );
    let _ = writeln!(
        r,
        "  measured excess over budget + idle: {:.1} MiB ({:.2} MiB per connection)",
        (mib(peak) - cfg.memory_mib as f64 - mib(idle)).max(0.0),
        (mib(peak) - cfg.memory_mib as f64 - mib(idle)).max(0.0) / cfg.clients as f64
    );
    let timeline: Vec<String> = memory
        .timeline
        .iter()
        .map(|(s, kib)| format!("{s}s:{:.0}", *kib as f64 / 1024.0))
        .collect();
    let _ = writeln!(r, "  RSS MiB over time: {}", timeline.join(" "));
    let _ = writeln!(r, "\nchecks (on the bucket directly):");
    let _ = writeln!(
        r,
        "  objects in the bucket: {} ({:.1} MiB)",
        checks.keys_in_bucket,
        mib(checks.bytes_in_bucket)
    );
    let _ = writeln!(
        r,
        "  acknowledged files intact: {}/{}; directory markers: {}",
        checks.acked_intact, checks.acked_files, checks.dirs
    );
    let _ = writeln!(
        r,
        "  paths that must be empty and are: {}; uncertain outcomes: {} present, {} absent",
        checks.absent_ok, checks.uncertain_present, checks.uncertain_absent
    );
    let _ = writeln!(
        r,
        "  pending multipart uploads: {}",
        checks.pending_uploads.len()
    );
    let _ = writeln!(
        r,
        "  fresh login + put/get after the run: {}",
        if fresh.is_ok() { "ok" } else { "FAILED" }
    );
    let _ = writeln!(
        r,
        "  server exit on SIGTERM: {exit:?}; log: {}",
        log_path.display()
    );
    let others: Vec<_> = alarms.iter().filter(|l| !l.contains("panicked")).collect();
    let _ = writeln!(
        r,
        "  server log ERROR lines: {}, panics: {}",
        others.len(),
        panics.len()
    );
    for l in others.iter().take(10) {
        let _ = writeln!(r, "    {l}");
    }
    let _ = writeln!(r, "\nviolations: {}", violations.len());
    for v in violations.iter().take(50) {
        let _ = writeln!(r, "  {v}");
    }
    println!("{r}");
    std::fs::write(cfg.out.join("report.txt"), &r).expect("report");
    println!("report: {}", cfg.out.join("report.txt").display());
    assert!(
        violations.is_empty(),
        "{} integrity violations",
        violations.len()
    );
}
