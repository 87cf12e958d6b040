"""The systems under test, and the shared S3 server they store into.

A `System` is one thing the workloads are run against: s3sftp (on the shared S3 server, or
on its own embedded store), `rclone serve sftp` in its two VFS cache modes, OpenSSH sshd with
`internal-sftp` on a local directory (the local ceiling), and boto3 talking to the S3 server
directly (the S3 ceiling). This module builds s3sftp, starts the S3 server and every system,
and picks the one cipher every SSH system is measured with.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import client
from common import (
    ACCESS_KEY, BUCKET, COLD_BUILD_S, PREFIX, PROCS, REPO, REPO_TARGET, SECRET_KEY,
    MIB, ensure_python_package, free_port, log, rss_kib, spawn, tail, wait_port,
)

if TYPE_CHECKING:
    from harness import Bench


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


def build(b: Bench) -> Path:
    """The s3sftp binary to run: --binary, or a release build (and the standalone store
    example); after a cold build, 3 runs of the big transfers instead of 5."""
    if b.args.binary:
        return Path(b.args.binary).resolve()
    target = REPO_TARGET()
    if not b.args.no_build:
        log(f"cargo build --release (target dir {target})")
        started = time.monotonic()
        subprocess.run(["cargo", "build", "--release", "--quiet", "--workspace", "--bin", "s3sftp",
                        "--example", "s3_store"], cwd=REPO, check=True)
        took = time.monotonic() - started
        if took > COLD_BUILD_S and not b.args.runs:
            b.runs = 3
            b.notes.append(
                f"3 runs of the big transfers instead of 5: the release build took {took / 60:.1f} min "
                "(a cold build), and a full run from a fresh clone is to end within 15 minutes. "
                "Run again (the build is then cached) or pass --runs 5 for medians of 5.")
            log(f"release build took {took / 60:.1f} min: 3 runs of the big transfers")
        b.build_min = took / 60
    exe = target / "release" / "s3sftp"
    if not exe.exists():
        sys.exit(f"{exe} not found")
    return exe


def start_s3_server(b: Bench) -> None:
    """Starts the shared S3 server (--s3-server) and connects the boto3 client `b.s3` to it."""
    t = b.tmp
    b.s3_port = free_port()
    b.s3_endpoint = f"http://127.0.0.1:{b.s3_port}"
    b.access_key, b.secret_key = ACCESS_KEY, SECRET_KEY
    if b.args.s3_server == "embedded":
        # s3sftp's own store, standalone (crates/s3-store/examples/s3_store.rs), so every system shares it.
        lf = t / "s3store.log"
        store = REPO_TARGET() / "release" / "examples" / "s3_store"
        # With --no-build a store binary older than its sources would measure old code (a
        # store that does not check CRC32C makes s3sftp fall back to Content-MD5).
        sources = (REPO / "crates" / "s3-store" / "src").rglob("*.rs")
        newest = max((p.stat().st_mtime for p in sources), default=0)
        if not store.exists() or store.stat().st_mtime < newest:
            sys.exit(f"{store} is missing or older than crates/s3-store/src: run "
                     "`cargo build --release -p s3-store --example s3_store` (or drop --no-build)")
        b.s3_proc = subprocess.Popen(
            [str(store), str(b.server_dir / "s3store"), BUCKET, f"127.0.0.1:{b.s3_port}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(lf, "wb"))
        PROCS.append(b.s3_proc)
        info = json.loads(b.s3_proc.stdout.readline() or b"{}")
        if "access_key" not in info:
            sys.exit(f"s3_store did not start: {tail(lf)}")
        b.access_key, b.secret_key = info["access_key"], info["secret_key"]
        b.s3_label = f"s3sftp's embedded store, standalone ({b.storage_word()})"
    elif b.args.s3_server == "rclone":
        s3root = b.server_dir / "s3root"
        (s3root / BUCKET).mkdir(parents=True)
        lf = t / "rclone-s3.log"
        b.s3_proc = spawn(
            [b.rclone, "serve", "s3", "--addr", f"127.0.0.1:{b.s3_port}",
             "--auth-key", f"{b.access_key},{b.secret_key}", "--config", "/dev/null",
             "--cache-dir", str(b.server_dir / "rclone-s3-cache"), str(s3root)], lf)
        b.s3_label = f"rclone serve s3 ({b.storage_word()})"
    else:
        moto = shutil.which("moto_server")
        if not moto:
            ensure_python_package("moto_server_not_a_module", "moto[server]==5.0.28")
            moto = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
        lf = t / "moto.log"
        b.s3_proc = spawn([moto, "-H", "127.0.0.1", "-p", str(b.s3_port)], lf)
        b.s3_label = "moto_server (in memory)"
    wait_port(b.s3_port, b.s3_proc, b.s3_label, lf)
    b.s3_direct_endpoint = b.s3_endpoint
    if b.args.latency_ms is not None:
        start_delay_line(b)
    import boto3
    from botocore.config import Config
    b.s3 = boto3.client(
        "s3", endpoint_url=b.s3_endpoint, aws_access_key_id=b.access_key,
        aws_secret_access_key=b.secret_key, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=32,
                      retries={"max_attempts": 3},
                      # like s3sftp's default for custom endpoints
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"),
    )
    if b.args.s3_server == "moto":
        b.s3.create_bucket(Bucket=BUCKET)
    b.s3.head_bucket(Bucket=BUCKET)


def start_delay_line(b: Bench) -> None:
    """--latency-ms: measures the delay line's own cost (a GET through it at 0 ms against a
    direct one), then starts it in front of the S3 server; every system (and `b.s3`, the
    raw S3 client) then talks to the relay's port."""
    import delayline
    check_mib = min(256, b.size // MIB)
    log(f"delay line check: {check_mib} MiB GET direct and through the relay at 0 ms")
    try:
        b.relay_check = delayline.check(b.s3_endpoint, b.access_key, b.secret_key, BUCKET,
                                        size_mib=check_mib, rtt_ms=0.0)
        log("delay line check: " + ", ".join(
            f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in b.relay_check.items()))
    except Exception as e:  # noqa: BLE001
        b.notes.append(f"delay line check failed: {type(e).__name__}: {e}")
    with open(b.tmp / "delayline.log", "ab") as lf:
        b.relay_proc, port = delayline.spawn_relay(b.s3_port, b.args.latency_ms, logfile=lf)
    PROCS.append(b.relay_proc)
    b.s3_endpoint = f"http://127.0.0.1:{port}"
    log(f"delay line: {b.args.latency_ms:g} ms round trip, port {port} -> {b.s3_port}")


def _s3sftp_common(b: Bench, name: str, label: str, extra: list[str], env_extra: dict,
                   log_level: str = "warn") -> System:
    d = b.tmp / name
    d.mkdir()
    users = {"users": [{"username": "bench", "public_keys": [b.client_pub],
                        "key_prefix": PREFIX, "enabled": True}]}
    uf = d / "users.json"
    uf.write_text(json.dumps(users))
    uf.chmod(0o600)
    s = System()
    s.name, s.label = name, label
    s.port = free_port()
    env = dict(os.environ, NO_COLOR="1", **env_extra)
    lf = d / "server.log"
    s.proc = spawn([str(b.binary), "serve", "--listen", f"127.0.0.1:{s.port}",
                    "--state-dir", str(d / "state"), "--users-file", str(uf),
                    # 200 idle sessions from one address need more than the default 50.
                    "--max-connections-per-ip", "0", "--max-unauthenticated-per-ip", "0",
                    "--log", log_level, *extra], lf, env=env)
    s.log = lf
    wait_port(s.port, s.proc, name, lf)
    time.sleep(1.0)
    s.idle_rss_kib = rss_kib(s.pid)
    return s


def s3_flags(b: Bench) -> list[str]:
    """s3sftp's flags for the shared bucket (through the delay line with --latency-ms)."""
    return ["--bucket", BUCKET, "--s3-endpoint", b.s3_endpoint, "--s3-region", "us-east-1",
            "--s3-path-style", "--s3-access-key", b.access_key]


def start_s3sftp(b: Bench) -> System:
    return _s3sftp_common(b, "s3sftp", "s3sftp", s3_flags(b), {"S3SFTP_S3_SECRET_KEY": b.secret_key})


def start_s3sftp_obs(b: Bench, fmt: str) -> System:
    """s3sftp with what production runs with (issue 19): every info event and audit line
    logged (`--log info`) in `fmt`, and the metrics recorder on (`--metrics-listen`,
    scraped once at the end by `scrape_metrics`). Compared with the plain s3sftp row
    (`--log warn`, no metrics), it shows what logging and metrics cost."""
    name = "s3sftp-obs" if fmt == "json" else "s3sftp-obs-text"
    s = _s3sftp_common(b, name, f"s3sftp ({fmt} logs at info + metrics)",
                       [*s3_flags(b), "--log-format", fmt, "--metrics-listen", "127.0.0.1:0"],
                       {"S3SFTP_S3_SECRET_KEY": b.secret_key}, log_level="info")
    s.metrics_port = None
    m = re.search(r"operations listener.*?127\.0\.0\.1:(\d+)|127\.0\.0\.1:(\d+).*?operations listener",
                  s.log.read_text(errors="replace"))
    if m:
        s.metrics_port = int(m.group(1) or m.group(2))
    return s


def scrape_metrics(b: Bench) -> None:
    """Scrapes /metrics of every s3sftp-obs system once (at the end of the run), and notes the
    size of its log: what logging and metrics produced over the whole run."""
    import urllib.request
    for s in b.systems:
        if not s.name.startswith("s3sftp-obs"):
            continue
        info: dict = {"log_bytes": s.log.stat().st_size if s.log.exists() else 0}
        try:
            info["log_lines"] = sum(1 for _ in s.log.open("rb"))
        except OSError:
            pass
        if s.metrics_port:
            try:
                t0 = time.perf_counter()
                with urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=10) as r:
                    text = r.read().decode(errors="replace")
                info["scrape_ms"] = (time.perf_counter() - t0) * 1000
                info["scrape_bytes"] = len(text)
                info["series"] = sum(1 for ln in text.splitlines() if ln and not ln.startswith("#"))
            except OSError as e:
                info["scrape_error"] = str(e)
        else:
            info["scrape_error"] = "metrics address not found in the log"
        b.obs[s.name] = info


def start_s3sftp_embedded(b: Bench) -> System:
    s = _s3sftp_common(b, "s3sftp-emb", "s3sftp (embedded store)", [], {})
    s.s3_backed = False  # its bucket is private to the process
    return s


def rclone_env(b: Bench) -> dict:
    return dict(
        os.environ,
        RCLONE_CONFIG_BENCHS3_TYPE="s3", RCLONE_CONFIG_BENCHS3_PROVIDER="Other",
        RCLONE_CONFIG_BENCHS3_ENDPOINT=b.s3_endpoint,
        RCLONE_CONFIG_BENCHS3_ACCESS_KEY_ID=b.access_key,
        RCLONE_CONFIG_BENCHS3_SECRET_ACCESS_KEY=b.secret_key,
        RCLONE_CONFIG_BENCHS3_REGION="us-east-1",
        RCLONE_CONFIG_BENCHS3_FORCE_PATH_STYLE="true",
    )


def start_rclone_sftp(b: Bench, mode: str) -> System:
    name = f"rclone-{mode}"
    d = b.tmp / name
    d.mkdir()
    s = System()
    s.name, s.label = name, f"rclone serve sftp ({mode})"
    s.port = free_port()
    lf = d / "server.log"
    s.proc = spawn([b.rclone, "serve", "sftp", f"benchs3:{BUCKET}/{PREFIX.rstrip('/')}",
                    "--addr", f"127.0.0.1:{s.port}", "--config", "/dev/null",
                    "--authorized-keys", str(b.tmp / "client_key.pub"),
                    "--vfs-cache-mode", mode, "--cache-dir", str(b.server_dir / f"{name}-cache")],
                   lf, env=rclone_env(b))
    s.log = lf
    wait_port(s.port, s.proc, name, lf)
    time.sleep(1.0)
    s.idle_rss_kib = rss_kib(s.pid)
    return s


def start_sshd(b: Bench) -> System:
    sshd = "/usr/sbin/sshd"
    if not os.path.exists(sshd):
        raise RuntimeError("/usr/sbin/sshd missing (apt-get install openssh-server)")
    d = b.tmp / "sshd"
    d.mkdir()
    root = b.server_dir / "sshd-root"
    root.mkdir(parents=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    s = System()
    s.name, s.label, s.s3_backed, s.tree = "sshd", f"OpenSSH sshd ({b.storage_word()})", False, True
    s.user = getpass.getuser()
    s.port = free_port()
    s.root = root
    cfg = d / "sshd_config"
    cfg.write_text("\n".join([
        f"Port {s.port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'host_key'}",
        f"PidFile {d / 'sshd.pid'}", f"AuthorizedKeysFile {b.tmp / 'client_key.pub'}",
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
    shutil.copytree(b.listdir_local, root / "list")
    return s


def start_raw(b: Bench) -> System:
    s = System()
    s.name, s.label = "raw-s3", "raw S3 (boto3)"
    s.cipher_seen = "-"
    return s


def start_systems(b: Bench) -> None:
    """Starts the systems asked for (--systems); one that fails to start is left out and noted."""
    a = b.args
    wanted = set(a.systems.split(",")) if a.systems else None
    if wanted is None and a.s3_server == "embedded":
        # s3sftp already runs on the embedded store: a second copy inside s3sftp adds nothing.
        wanted = {"s3sftp", "rclone-off", "rclone-writes", "sshd", "raw-s3"}
    if a.obs:
        wanted = (wanted or {"s3sftp", "s3sftp-emb", "rclone-off", "rclone-writes", "sshd", "raw-s3"}) \
            | {"s3sftp-obs", "s3sftp-obs-text"}
    builders = [
        ("s3sftp", lambda: start_s3sftp(b)),
        ("s3sftp-emb", lambda: start_s3sftp_embedded(b)),
        ("s3sftp-obs", lambda: start_s3sftp_obs(b, "json")),
        ("s3sftp-obs-text", lambda: start_s3sftp_obs(b, "text")),
        ("rclone-off", lambda: start_rclone_sftp(b, "off")),
        ("rclone-writes", lambda: start_rclone_sftp(b, "writes")),
        ("sshd", lambda: start_sshd(b)),
        ("raw-s3", lambda: start_raw(b)),
    ]
    for name, fn in builders:
        if wanted and name not in wanted:
            continue
        try:
            sysm = fn()
            b.systems.append(sysm)
        except Exception as e:  # noqa: BLE001
            log(f"{name}: FAILED to start: {e}")
            b.notes.append(f"{name} failed to start: {str(e).splitlines()[0]}")


def negotiated_cipher(b: Bench, s: System, cipher: str | None) -> str:
    """The cipher an `sftp` login to `s` ends up with when the client offers `cipher`
    (None: the client's default list)."""
    bf = b.tmp / "probe.txt"
    bf.write_text("pwd\n")
    saved = b.cipher
    b.cipher = cipher
    try:
        opts = client.ssh_opts(b, s)
    finally:
        b.cipher = saved
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


def choose_cipher(b: Bench):
    """Picks one cipher every SSH system offers (--cipher, or the first that all accept), and
    records what each negotiates when the client forces none."""
    sftp_systems = [s for s in b.systems if s.name != "raw-s3"]
    b.default_ciphers = {s.name: negotiated_cipher(b, s, None) for s in sftp_systems}
    if b.cipher:
        candidates = [b.cipher]
    else:
        candidates = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr",
                      "chacha20-poly1305@openssh.com"]
    for c in candidates:
        seen = {s.name: negotiated_cipher(b, s, c) for s in sftp_systems}
        if all(v == c for v in seen.values()):
            b.cipher = c
            for s in sftp_systems:
                s.cipher_seen = c
            log(f"cipher for all systems: {c}")
            return
        log(f"cipher {c} not offered by all: {seen}")
    b.cipher = candidates[-1]
    b.notes.append("no common cipher found; results use different ciphers")
