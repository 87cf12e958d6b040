"""The workloads and how each run of them is measured.

Every SSH system gets the same OpenSSH `sftp -b` batches (a big upload and download, then
1,000 small files up, listed, fetched with `get -r` and removed, a file renamed back and
forth, a large directory listed); raw S3 does the same with boto3 calls. `record` wraps each
client run with the server's CPU seconds and peak RSS (and the S3 server's CPU). The memory
section measures s3sftp alone: idle, many idle sessions, concurrent uploads.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import client
import systems
from common import (
    BUCKET, KIB, MIB, PREFIX, RssSampler, children, cpu_seconds, log, make_random_file,
    rss_kib, sha256_file,
)

if TYPE_CHECKING:
    from harness import Bench
    from systems import System


def make_inputs(b: Bench) -> None:
    """The local files the workloads send: the big file, the rename file, the file of the
    concurrent uploads, the small files and the listing directory's files."""
    t = b.tmp
    log(f"generating {b.size // MIB} MiB random file")
    b.big = t / "big.bin"
    b.big_sha = make_random_file(b.big, b.size)
    b.renfile = t / "ren.bin"
    make_random_file(b.renfile, b.rename_size)
    b.mid = t / "mid.bin"
    make_random_file(b.mid, b.conc_size)
    b.smalldir = t / "small"
    b.smalldir.mkdir()
    for i in range(b.nsmall):
        (b.smalldir / f"f{i:05d}").write_bytes(os.urandom(4 * KIB))
    b.listdir_local = t / "listsrc"
    b.listdir_local.mkdir()
    for i in range(b.nlist):
        (b.listdir_local / f"o{i:05d}").write_bytes(b"x")


def seed_listing(b: Bench) -> None:
    """Creates the listing directory's objects directly in S3 (untimed)."""
    # 1-byte objects: with rclone serve s3 v1.75.2, an empty-body PutObject leaves its
    # keep-alive connection stalled for the next request (seen with boto3). rclone copy
    # creates them about ten times as fast as boto3's Python threads (4 s, not 40).
    log("creating the listing objects in S3")
    subprocess.run([b.rclone, "copy", str(b.listdir_local), f"benchs3:{BUCKET}/{PREFIX}list",
                    "--config", "/dev/null", "--transfers", "16", "--checkers", "16",
                    "--no-check-dest", "--no-traverse", "--s3-no-head", "--s3-no-check-bucket"],
                   env=systems.rclone_env(b), check=True, capture_output=True)
    listed = b.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}list/o{b.nlist - 1:05d}")
    if listed.get("KeyCount", 0) != 1:
        sys.exit("rclone copy did not create the listing objects")


def initial_setup(b: Bench):
    """Untimed: the rename source file on every system, and the listing dir for sshd/embedded."""
    for s in b.systems:
        if s.name == "raw-s3":
            b.s3.upload_file(str(b.renfile), BUCKET, f"{PREFIX}ren-raw-s3-a")
            continue
        lines = [f"put {b.renfile} ren-{s.name}-a"]
        if s.name == "s3sftp-emb":
            lines += ["mkdir list", "cd list", f"lcd {b.listdir_local}", "put *"]
        dt, ok, out, err = client.sftp(b, s, lines, 600)
        if not ok:
            log(f"{s.name}: setup failed: {err.strip()[:300]}")
            b.notes.append(f"{s.name}: setup failed: {err.strip()[:200]}")
        else:
            log(f"{s.name}: setup done in {dt:.1f}s")


def record(b: Bench, workload: str, s: System, fn):
    """Runs fn() -> (seconds, ok, extra dict) while measuring CPU and RSS of the server."""
    s3pid = b.s3_proc.pid if b.s3_proc and s.s3_backed or s.name == "raw-s3" else None
    # Flush what earlier runs wrote, so this run does not pay for their writeback (the
    # S3 server's files, a downloaded copy). Untimed.
    os.sync()
    relay = b.relay_proc.pid if b.relay_proc else None
    c0, sc0, rc0 = cpu_seconds(s.pid), cpu_seconds(s3pid), cpu_seconds(relay)
    try:
        with RssSampler(s.pid, s.tree) as sampler:
            dt, ok, extra = fn()
    except Exception as e:  # noqa: BLE001
        dt, ok, extra = 0.0, False, {"error": f"{type(e).__name__}: {e}"}
    if s.tree:
        # let sshd reap its per-connection child so its CPU shows in cutime/cstime
        deadline = time.time() + 3
        while children(s.pid) and time.time() < deadline:
            time.sleep(0.05)
    rec = {"t": dt, "ok": ok, "cpu": cpu_seconds(s.pid) - c0, "s3cpu": cpu_seconds(s3pid) - sc0,
           "relay_cpu": cpu_seconds(relay) - rc0,
           "rss_mib": sampler.peak / 1024 if s.pid else None, **extra}
    b.results.setdefault(workload, {}).setdefault(s.name, []).append(rec)
    status = "ok" if ok else f"FAILED {extra.get('error', '')[:300]}"
    log(f"  {workload:<10} {s.name:<14} {dt:7.2f}s {status}")
    return rec


def wait_visible(b: Bench, key: str, size: int, timeout: float = 300) -> float | None:
    """Seconds until HEAD `key` shows the full size ("in S3 after"); None if it never does."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            h = b.s3.head_object(Bucket=BUCKET, Key=key)
            if h["ContentLength"] == size:
                return time.perf_counter() - t0
        except Exception:  # noqa: BLE001
            pass
        time.sleep(0.1)
    return None


def sftp_step(b: Bench, s: System, lines, timeout, check=None, visible=None):
    """A `record`able run of one `sftp -b` batch: `check` judges its output, `visible`
    (key, size) waits for the upload to be complete in S3."""
    def fn():
        dt, ok, out, err = client.sftp(b, s, lines, timeout)
        extra = {}
        if not ok:
            extra["error"] = (err.strip() or out.strip()[-300:])[:300]
        elif check:
            msg = check(out)
            if msg:
                ok, extra["error"] = False, msg
        if ok and visible and s.s3_backed:
            key, size = visible
            v = wait_visible(b, key, size)
            extra["visible_s"] = v
            if v is None:
                ok, extra["error"] = False, "object never became visible in S3"
        return dt, ok, extra
    return fn


def big_timeout(b: Bench) -> float:
    """Timeout of one big transfer: 60 s plus 4 MiB/s."""
    return 60 + b.size / MIB / 4


def run_once(b: Bench, s: System, run: int):
    """One round of every workload on `s` (the big transfers only when b.small_now is off)."""
    tag = f"{s.name}-{run}"
    big, small, ren_from, ren_to = f"big-{tag}", f"small-{tag}", f"ren-{s.name}-{'ab'[run % 2]}", f"ren-{s.name}-{'ba'[run % 2]}"
    dl = b.client_dir / "dl.bin"
    dldir = b.client_dir / "dldir"
    nsmall, nlist = b.nsmall, b.nlist

    def count_ls(n, prefix_char="-"):
        def check(out):
            c = sum(1 for ln in out.splitlines() if ln[:1] == prefix_char)
            return None if c == n else f"ls showed {c} entries, expected {n}"
        return check

    if s.name == "raw-s3":
        return run_raw(b, s, run, big, small, ren_from, ren_to)

    record(b, "connect", s, sftp_step(b, s, ["pwd"], 60))
    record(b, "upload", s, sftp_step(b, s, [f"put {b.big} {big}"], big_timeout(b),
                                     visible=(PREFIX + big, b.size)))

    def download():
        if dl.exists():
            dl.unlink()
        dt, ok, extra = sftp_step(b, s, [f"get {big} {dl}"], big_timeout(b))()
        if ok:
            h = sha256_file(dl)
            if h != b.big_sha:
                ok, extra["error"] = False, "sha256 mismatch"
        if dl.exists():
            dl.unlink()
        return dt, ok, extra
    record(b, "download", s, download)
    client.sftp(b, s, [f"-rm {big}"], 120)  # untimed clean-up
    if not b.small_now:
        return
    b.small_started = time.monotonic()
    record(b, "small-up", s, sftp_step(
        b, s, [f"mkdir {small}", f"cd {small}", f"lcd {b.smalldir}", "put *"], 600))
    record(b, "ls-l", s, sftp_step(b, s, [f"ls -l {small}"], 300, check=count_ls(nsmall)))

    def getr():
        shutil.rmtree(dldir, ignore_errors=True)
        dldir.mkdir()
        dt, ok, extra = sftp_step(b, s, [f"lcd {dldir}", f"get -r {small}"], 600)()
        if ok:
            got = len(list((dldir / small).iterdir())) if (dldir / small).exists() else 0
            if got != nsmall:
                ok, extra["error"] = False, f"got {got} files, expected {nsmall}"
        shutil.rmtree(dldir, ignore_errors=True)
        return dt, ok, extra
    record(b, "get-r", s, getr)
    record(b, "rm", s, sftp_step(b, s, [f"rm {small}/*"], 600))
    client.sftp(b, s, [f"-rmdir {small}"], 60)
    hops = [(ren_from, ren_to) if i % 2 == 0 else (ren_to, ren_from) for i in range(b.renames)]
    record(b, "rename", s, sftp_step(b, s, [f"rename {x} {y}" for x, y in hops], 300,
                                     visible=(PREFIX + ren_to, b.rename_size)))
    record(b, "list", s, sftp_step(b, s, ["ls -l list"], 300, check=count_ls(nlist)))


def run_raw(b: Bench, s: System, run, big, small, ren_from, ren_to):
    """The same round as `run_once`, with boto3 calls straight to the S3 server."""
    from boto3.s3.transfer import TransferConfig
    cfg = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB,
                         max_concurrency=8, use_threads=True)
    dl = b.client_dir / "dl.bin"

    def timed(f, check=None):
        def fn():
            t0 = time.perf_counter()
            r = f()
            dt = time.perf_counter() - t0
            extra = {}
            ok = True
            if check:
                msg = check(r)
                if msg:
                    ok, extra["error"] = False, msg
            return dt, ok, extra
        return fn

    def up():
        b.s3.upload_file(str(b.big), BUCKET, PREFIX + big, Config=cfg)
    record(b, "upload", s, timed(up))
    b.results["upload"]["raw-s3"][-1]["visible_s"] = 0.0

    def down():
        b.s3.download_file(BUCKET, PREFIX + big, str(dl), Config=cfg)
    record(b, "download", s, timed(down, lambda _: None if sha256_file(dl) == b.big_sha else "sha256 mismatch"))
    dl.unlink(missing_ok=True)
    b.s3.delete_object(Bucket=BUCKET, Key=PREFIX + big)
    if not b.small_now:
        return
    b.small_started = time.monotonic()
    files = sorted(b.smalldir.iterdir())

    def smallup():
        for f in files:
            b.s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}{small}/{f.name}", Body=f.read_bytes())
    record(b, "small-up", s, timed(smallup))

    def listp(prefix):
        n = 0
        for page in b.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix, Delimiter="/"):
            n += len(page.get("Contents", []))
        return n
    record(b, "ls-l", s, timed(lambda: listp(f"{PREFIX}{small}/"),
                               lambda n: None if n == b.nsmall else f"listed {n}"))

    dldir = b.client_dir / "dldir"

    def getall():
        shutil.rmtree(dldir, ignore_errors=True)
        dldir.mkdir()
        for f in files:
            body = b.s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}{small}/{f.name}")["Body"].read()
            (dldir / f.name).write_bytes(body)
        return len(list(dldir.iterdir()))
    record(b, "get-r", s, timed(getall, lambda n: None if n == b.nsmall else f"got {n} files"))
    shutil.rmtree(dldir, ignore_errors=True)

    def rm():
        keys = [{"Key": f"{PREFIX}{small}/{f.name}"} for f in files]
        for i in range(0, len(keys), 1000):
            b.s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys[i:i + 1000], "Quiet": True})
    record(b, "rm", s, timed(rm))

    def ren():
        for i in range(b.renames):
            src, dst = (ren_from, ren_to) if i % 2 == 0 else (ren_to, ren_from)
            b.s3.copy_object(Bucket=BUCKET, Key=PREFIX + dst,
                             CopySource={"Bucket": BUCKET, "Key": PREFIX + src})
            b.s3.delete_object(Bucket=BUCKET, Key=PREFIX + src)
    record(b, "rename", s, timed(ren))
    record(b, "list", s, timed(lambda: listp(f"{PREFIX}list/"),
                               lambda n: None if n == b.nlist else f"listed {n}"))


def memory_section(b: Bench):
    """s3sftp's RSS: idle, during one big upload, with many idle sessions, and during
    concurrent uploads."""
    s = next((x for x in b.systems if x.name == "s3sftp"), None)
    if not s or s.proc.poll() is not None:
        b.memory["error"] = "s3sftp not running"
        return
    m = b.memory
    m["idle_start_mib"] = s.idle_rss_kib / 1024
    time.sleep(1)
    m["idle_after_mib"] = rss_kib(s.pid) / 1024
    ups = b.results.get("upload", {}).get("s3sftp", [])
    m["one_upload_peak_mib"] = max((r["rss_mib"] or 0) for r in ups) if ups else None
    # idle sessions
    log(f"memory: {b.nsessions} idle sftp sessions")
    before = rss_kib(s.pid) / 1024
    sess: list[subprocess.Popen] = []
    ok = 0
    try:
        def open_one(_):
            p = subprocess.Popen(["sftp", *client.ssh_opts(b, s), f"{s.user}@127.0.0.1"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
            sess.append(p)
            try:
                p.stdin.write(b"pwd\n")
                p.stdin.flush()
                deadline = time.time() + 60
                while time.time() < deadline:
                    line = p.stdout.readline()
                    if not line:
                        return False
                    if b"Remote working directory" in line:
                        return True
            except OSError:
                return False
            return False
        with ThreadPoolExecutor(8) as ex:
            ok = sum(ex.map(open_one, range(b.nsessions)))
        time.sleep(2)
        peak = rss_kib(s.pid) / 1024
    finally:
        for p in sess:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in sess:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    m["sessions"] = {"wanted": b.nsessions, "ok": ok, "before_mib": before, "with_sessions_mib": peak}
    time.sleep(1)
    m["after_sessions_mib"] = rss_kib(s.pid) / 1024
    # 16 concurrent uploads
    log(f"memory: {b.conc_n} concurrent uploads of {b.conc_size // MIB} MiB")
    bf = []
    for i in range(b.conc_n):
        p = b.tmp / f"conc{i}.txt"
        p.write_text(f"put {b.mid} conc-{i}\n")
        bf.append(p)
    with RssSampler(s.pid) as sampler:
        t0 = time.perf_counter()
        procs = [subprocess.Popen(["sftp", "-b", str(f), *client.ssh_opts(b, s), f"{s.user}@127.0.0.1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for f in bf]
        fails = 0
        for p in procs:
            try:
                p.wait(timeout=60 + b.conc_n * b.conc_size / MIB / 4)
                fails += p.returncode != 0
            except subprocess.TimeoutExpired:
                p.kill()
                fails += 1
        dt = time.perf_counter() - t0
    m["concurrent"] = {"n": b.conc_n, "size_mib": b.conc_size // MIB, "seconds": dt,
                       "aggregate_mib_s": b.conc_n * b.conc_size / MIB / dt if dt else None,
                       "failed": fails, "peak_mib": sampler.peak / 1024}
    for i in range(b.conc_n):
        try:
            b.s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}conc-{i}")
        except Exception:  # noqa: BLE001
            pass
    time.sleep(2)
    m["after_concurrent_mib"] = rss_kib(s.pid) / 1024
