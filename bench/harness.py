"""The benchmark run as a whole: its settings and state (`Bench`), the set-up order, and the
rounds in which every system runs every workload, interleaved, with the time budget that
decides whether a round still runs the small-file, rename and listing workloads.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import attack
import systems
import workloads
from common import (
    BUDGET_MARGIN_S, MEMORY_EST_S, MIB, RENAMES, STARTED, ensure_python_package, find_rclone,
    first_line, log, rss_kib, stop_all, tail,
)
from systems import System


class Bench:
    """Settings from the command line, the systems, and everything measured so far."""

    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        # moto copies the whole object for each ranged GET, so a 1 GiB download through it takes
        # minutes: the full run defaults to 256 MiB on moto to stay under 15 minutes.
        default_mib = 128 if self.quick else (256 if args.s3_server == "moto" else 1024)
        self.size = (args.size_mib if args.size_mib else default_mib) * MIB
        # Medians of 5 for the big transfers: this VM's speed moves by up to 2x from minute to
        # minute, and a median of 3 moved with it. After a long (cold) release build, 3, so a
        # first run from a fresh clone still ends within 15 minutes (see systems.build).
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
        # --latency-ms: the delay line in front of the S3 server, and its own cost at 0 ms.
        self.s3_direct_endpoint = ""
        self.relay_proc: subprocess.Popen | None = None
        self.relay_check: dict | None = None
        # s3sftp-obs systems: their log size and one scrape of /metrics (systems.scrape_metrics).
        self.obs: dict[str, dict] = {}
        # --attack: the memory-under-attack section (attack.py).
        self.attack: dict[str, object] = {}

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


    def setup(self):
        """Everything before the first timed run, in this order: build, directories, client
        key, input files, the S3 server, the listing objects, the systems, the cipher."""
        ensure_python_package("boto3", "boto3")
        self.rclone = find_rclone()
        self.binary = systems.build(self)
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
        workloads.make_inputs(self)
        systems.start_s3_server(self)
        workloads.seed_listing(self)
        systems.start_systems(self)
        systems.choose_cipher(self)
        workloads.initial_setup(self)

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
        after = MEMORY_EST_S + (self.args.attack_budget_s if self.args.attack else 0)
        ends = time.monotonic() - STARTED + (self.runs - run) * big + small + after
        if ends <= self.args.budget_min * 60 - BUDGET_MARGIN_S:
            return True
        log(f"round {run + 1}: big transfers only (the rest would end the run at {ends / 60:.1f} min)")
        return False


    # ------------------------------------------------------------ main

    def run(self):
        """Set-up, then the rounds (systems interleaved, order rotated each round), then the
        memory section."""
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
                    workloads.run_once(self, s, run)
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
                workloads.memory_section(self)
            except Exception as e:  # noqa: BLE001
                self.memory["error"] = f"{type(e).__name__}: {e}"
        if self.args.attack:
            try:
                attack.attack_section(self)
            except Exception as e:  # noqa: BLE001
                import traceback
                traceback.print_exc()
                self.attack["error"] = f"{type(e).__name__}: {e}"
        systems.scrape_metrics(self)
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
