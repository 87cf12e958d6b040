#!/usr/bin/env python3
"""Losing a gateway loses nothing acknowledged: the kill test of the local cluster.

With the cluster of cluster.sh up, CLIENTS SFTP clients (paramiko, one thread each) upload
and download through HAProxy. In the middle one gateway gets SIGKILL; later another gets
SIGTERM (a rolling restart: /readyz turns 503, HAProxy takes it out, transfers in flight
finish); both are restarted. A client whose connection drops reconnects through HAProxy
and retries: an upload with a fresh name, a download of the same file.

At the end the bucket is checked directly (boto3 against Garage node 1's S3 API):
  - every upload that got a successful CLOSE is there, byte for byte (sha256);
  - no other object exists, except an attempted upload whose CLOSE reply was lost and
    whose object is complete (counted, not a violation); a partial or unknown object is;
  - multipart uploads still pending are listed; with a short --orphan-age-hours on the
    gateways (ORPHAN_AGE=2m ORPHAN_SWEEP=20s cluster.sh up) the test waits for the
    survivors' sweep to abort them and fails if it does not.
Every connection is matched to its gateway through HAProxy's log, so a transfer in flight
on the SIGTERMed gateway that failed is told apart from one dropped by the SIGKILL.

Exit status: 0 when nothing was violated, 1 on any violation, 2 when the test could not run.

    deploy/local-cluster/kill_test.py [--clients 20] [--duration 120] ...
"""

import argparse
import collections
import hashlib
import json
import logging
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime

import boto3
import paramiko
from botocore.config import Config

HERE = os.path.dirname(os.path.abspath(__file__))
KIB = 1024
MIB = 1024 * 1024
CHUNK = 256 * KIB
# Errors that mean the connection (or the session on it) is gone.
DROPPED = (EOFError, OSError, paramiko.SSHException, socket.timeout)


def parse_size(text):
    m = re.fullmatch(r"(\d+)\s*(KiB|MiB|B)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: give a size like 256KiB or 20MiB")
    return int(m.group(1)) * {"KiB": KIB, "MiB": MIB, "B": 1, None: 1}[m.group(2)]


def parse_duration(text):
    """`90s`, `2m`, `24h` or a plain number of seconds (the cluster's ORPHAN_* values)."""
    m = re.fullmatch(r"(\d+)\s*(ms|s|m|h|d)?", text.strip())
    if not m:
        return None
    return int(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def load_env(state):
    path = os.path.join(state, "cluster.env")
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k] = v
    return env


@dataclass
class Conn:
    """One SSH connection a client made through HAProxy."""

    client: int
    local_port: int
    started: float
    host_key: str = ""
    gateway: str = "?"


@dataclass
class Failure:
    client: int
    op: str
    name: str
    phase: str  # idle (between files), open, transfer, close
    at: float
    conn: Conn
    error: str


@dataclass
class Upload:
    name: str
    size: int
    sha256: str
    acked: bool = False
    ended: bool = False  # acknowledged or failed


@dataclass
class Shared:
    lock: threading.Lock = field(default_factory=threading.Lock)
    uploads: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    conns: list = field(default_factory=list)
    reconnects: int = 0
    downloads_ok: int = 0
    download_mismatches: list = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0
    gave_up: list = field(default_factory=list)
    done: list = field(default_factory=list)  # (conn, op, started, ended) of each success


class Told(logging.Handler):
    """Counts the SSH disconnect messages the gateways sent (paramiko logs each one)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = collections.Counter()

    def emit(self, record):  # called under the handler's own lock
        msg = record.getMessage()
        if msg.startswith("Disconnect (code"):
            self.messages[msg] += 1


def content(seed, size):
    """The bytes of one upload, chunk by chunk, from its seed (random, reproducible)."""
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(CHUNK, left)
        yield rng.randbytes(n)
        left -= n


def digest(seed, size):
    h = hashlib.sha256()
    for chunk in content(seed, size):
        h.update(chunk)
    return h.hexdigest()


class Client(threading.Thread):
    def __init__(self, idx, args, env, shared, stop):
        super().__init__(name=f"client-{idx}", daemon=True)
        self.idx = idx
        self.args = args
        self.env = env
        self.shared = shared
        self.stop = stop
        self.rng = random.Random(args.seed * 1000 + idx)
        self.seq = 0
        self.transport = None
        self.sftp = None
        self.conn = None
        self.mine = []  # acknowledged uploads of this client, for downloads
        self.retry = None  # "upload", or the Upload to download again
        self.t0 = args.t0

    def now(self):
        return time.time() - self.t0

    def connect(self):
        """Connects through HAProxy, retrying until it works or the test is over."""
        delay = 0.2
        deadline = time.time() + 120
        while True:
            sock = None
            try:
                sock = socket.create_connection(("127.0.0.1", int(self.env["CLUSTER_LB_PORT"])), timeout=30)
                conn = Conn(self.idx, sock.getsockname()[1], time.time())
                t = paramiko.Transport(sock)
                t.banner_timeout = 30
                t.auth_timeout = 30
                t.start_client(timeout=30)
                conn.host_key = t.get_remote_server_key().get_fingerprint().hex()
                t.auth_password(self.env["CLUSTER_USER"], self.env["CLUSTER_PASSWORD"])
                # As SFTPClient.from_transport, with a timeout on the channel open too.
                chan = t.open_session(timeout=30)
                chan.settimeout(self.args.op_timeout)
                chan.invoke_subsystem("sftp")
                sftp = paramiko.SFTPClient(chan)
                with self.shared.lock:
                    self.shared.conns.append(conn)
                self.transport, self.sftp, self.conn = t, sftp, conn
                return
            except DROPPED + (paramiko.SFTPError,) as e:
                if sock is not None:
                    sock.close()
                if time.time() > deadline:
                    raise RuntimeError(f"client {self.idx}: cannot connect for 120 s: {e!r}")
                time.sleep(delay)
                delay = min(delay * 2, 3)

    def drop(self):
        try:
            if self.transport is not None:
                self.transport.close()
        except Exception:
            pass
        self.transport = self.sftp = None

    def fail(self, op, name, phase, err):
        with self.shared.lock:
            self.shared.failures.append(Failure(self.idx, op, name, phase, time.time(), self.conn, repr(err)))

    def size(self):
        lo, hi = self.args.min_size, self.args.max_size
        return int(math.exp(self.rng.uniform(math.log(lo), math.log(hi))))

    def upload(self):
        self.seq += 1
        size = self.size()
        name = f"c{self.idx:02d}-{self.seq:04d}-{size}.bin"
        seed = self.rng.getrandbits(64)
        up = Upload(name, size, digest(seed, size))
        with self.shared.lock:
            self.shared.uploads[name] = up
        phase = "open"
        started = time.time()
        try:
            f = self.sftp.open(name, "wb")
            phase = "transfer"
            f.set_pipelined(True)
            for chunk in content(seed, size):
                f.write(chunk)
            phase = "close"
            f.close()
        except DROPPED + (paramiko.SFTPError, IOError) as e:
            self.fail("upload", name, phase, e)
            up.ended = True
            self.retry = "upload"
            return False
        with self.shared.lock:
            up.acked = up.ended = True
            self.shared.bytes_up += size
            self.shared.done.append((self.conn, "upload", started, time.time()))
        self.mine.append(up)
        return True

    def download(self, up):
        phase = "open"
        started = time.time()
        try:
            f = self.sftp.open(up.name, "rb")
            phase = "transfer"
            f.prefetch(up.size)
            h = hashlib.sha256()
            got = 0
            while True:
                b = f.read(CHUNK)
                if not b:
                    break
                h.update(b)
                got += len(b)
            phase = "close"
            f.close()
        except DROPPED + (paramiko.SFTPError, IOError) as e:
            self.fail("download", up.name, phase, e)
            self.retry = up
            return False
        with self.shared.lock:
            if h.hexdigest() != up.sha256 or got != up.size:
                self.shared.download_mismatches.append((up.name, got, up.size))
            else:
                self.shared.downloads_ok += 1
            self.shared.bytes_down += got
            self.shared.done.append((self.conn, "download", started, time.time()))
        return True

    def run(self):
        try:
            time.sleep(self.idx * 0.1)
            self.connect()
            while not self.stop.is_set():
                if self.transport is None or not self.transport.is_active():
                    # The gateway ended the session between two files (SIGTERM drain, told
                    # with an SSH disconnect) or the connection died: reconnect.
                    if self.transport is not None:
                        self.fail("-", "-", "idle", "the session was closed before the next file")
                    self.drop()
                    self.connect()
                    with self.shared.lock:
                        self.shared.reconnects += 1
                    continue
                # After a failure the same operation again: an upload under a fresh name,
                # a download of the same file.
                retry, self.retry = self.retry, None
                if retry is not None:
                    ok = self.upload() if retry == "upload" else self.download(retry)
                elif self.mine and self.rng.random() < self.args.download_share:
                    ok = self.download(self.rng.choice(self.mine))
                else:
                    ok = self.upload()
                if not ok:
                    self.drop()
                    self.connect()
                    with self.shared.lock:
                        self.shared.reconnects += 1
        except Exception as e:  # a client that cannot go on is reported, not hidden
            with self.shared.lock:
                self.shared.gave_up.append((self.idx, repr(e)))
        finally:
            self.drop()


def stats(env):
    """HAProxy's view of the gateways: name -> (status, current sessions)."""
    url = f"http://127.0.0.1:{env['CLUSTER_STATS_PORT']}/;csv"
    out = {}
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        f = line.split(",")
        if len(f) > 17 and f[0] == "gateways" and f[1].startswith("gw"):
            out[f[1]] = (f[17], int(f[4] or 0))
    return out


# The gateways' --part-size-mib (cluster.sh leaves the default): larger uploads are multipart.
PART_SIZE = 8 * MIB


def uploads_on(env, state, n):
    """The uploads in flight on gateway N (from `s3sftp sessions` over its control socket):
    (sessions, uploads, multipart uploads begun: more than one part received)."""
    try:
        out = subprocess.run(
            [env["S3SFTP_BIN"], "sessions", "--json", "--state-dir", os.path.join(state, "gw", str(n), "state")],
            capture_output=True, text=True, timeout=10, check=True).stdout
        sessions = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return (0, 0, 0)
    ups = [t for s in sessions for t in s.get("transfers", []) if t.get("direction") == "upload"]
    begun = [t for t in ups if t.get("bytes", 0) > PART_SIZE]
    return (len(sessions), len(ups), len(begun))


def gateway_pid(state, n):
    with open(os.path.join(state, "gw", str(n), "pid")) as f:
        return int(f.read().strip())


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (it is not our child, so this is unusual).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def start_gateway(n):
    subprocess.run([os.path.join(HERE, "cluster.sh"), "start-gateway", str(n)], check=True)


HAPROXY_LINE = re.compile(r"^[\d.]+:(\d+) \[([^\]]+)\] sftp gateways/(\S+) ")


def attribute(state, conns):
    """Sets each connection's gateway from HAProxy's tcplog (one line per ended connection:
    client port, accept time, backend/server)."""
    entries = {}
    with open(os.path.join(state, "haproxy", "log"), errors="replace") as f:
        for line in f:
            m = HAPROXY_LINE.match(line)
            if not m:
                continue
            accepted = time.mktime(datetime.strptime(m.group(2), "%d/%b/%Y:%H:%M:%S.%f").timetuple())
            entries.setdefault(int(m.group(1)), []).append((accepted, m.group(3)))
    for c in conns:
        best = min(entries.get(c.local_port, []), key=lambda e: abs(e[0] - c.started), default=None)
        if best is not None and abs(best[0] - c.started) < 10:
            c.gateway = best[1]


def s3_client(env):
    return boto3.client(
        "s3",
        endpoint_url=env["CLUSTER_S3_ENDPOINTS"].split(",")[0],
        region_name="garage",
        aws_access_key_id=env["CLUSTER_S3_ACCESS_KEY"],
        aws_secret_access_key=env["CLUSTER_S3_SECRET_KEY"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}),
    )


def pending_uploads(s3, bucket, prefix):
    out = []
    kw = {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = s3.list_multipart_uploads(**kw)
        out += [(u["Key"], u["UploadId"], u["Initiated"]) for u in page.get("Uploads", [])]
        if not page.get("IsTruncated"):
            return out
        kw["KeyMarker"] = page["NextKeyMarker"]
        kw["UploadIdMarker"] = page["NextUploadIdMarker"]


class MultipartWatch(threading.Thread):
    """Polls the bucket's pending multipart uploads all along: which existed, from when to
    when (so the ones the SIGKILL left behind are known even after the sweep removed them)."""

    def __init__(self, env, bucket, prefix):
        super().__init__(name="multipart-watch", daemon=True)
        self.s3 = s3_client(env)
        self.bucket, self.prefix = bucket, prefix
        self.seen = {}  # (key, upload id) -> [first seen, last seen]
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                now = time.time()
                for key, upload_id, _ in pending_uploads(self.s3, self.bucket, self.prefix):
                    self.seen.setdefault((key, upload_id), [now, now])[1] = now
            except Exception:
                pass
            self.done.wait(3)


SWEEP_LINE = re.compile(r"^(\S+Z) .*orphaned multipart upload aborted key=(\S+) upload_id=(\S+)")


def sweep_aborts(state):
    """upload id -> (gateway, time) of every abort the gateways' orphan sweeps logged."""
    out = {}
    for n in (1, 2, 3):
        try:
            with open(os.path.join(state, "gw", str(n), "log"), errors="replace") as f:
                for line in f:
                    m = SWEEP_LINE.match(line)
                    if m:
                        at = datetime.fromisoformat(m.group(1)[:26].rstrip("Z") + "+00:00").timestamp()
                        out[m.group(3)] = (f"gw{n}", at)
        except OSError:
            pass
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--duration", type=float, default=120, help="seconds of load [120]")
    p.add_argument("--kill-at", type=float, default=25, help="SIGKILL a gateway at this second [25]")
    p.add_argument("--restart-killed-after", type=float, default=15, help="restart it this much later [15]")
    p.add_argument("--term-at", type=float, default=70, help="SIGTERM another gateway at this second [70]")
    p.add_argument("--min-size", type=parse_size, default=parse_size("256KiB"))
    p.add_argument("--max-size", type=parse_size, default=parse_size("20MiB"))
    p.add_argument("--download-share", type=float, default=0.4, help="share of operations that download [0.4]")
    p.add_argument("--op-timeout", type=float, default=180, help="seconds one SFTP request may take [180]")
    p.add_argument("--sweep-wait", type=float, default=300, help="longest wait for the orphan sweep [300]")
    p.add_argument("--seed", type=int, default=int(time.time()))
    args = p.parse_args()

    state = os.environ.get("S3SFTP_CLUSTER_DIR", "/tmp/s3sftp-cluster")
    try:
        env = load_env(state)
    except OSError as e:
        print(f"kill test: no cluster in {state} ({e}); start one with cluster.sh up", file=sys.stderr)
        return 2
    os.environ["S3SFTP_CLUSTER_DIR"] = state
    bucket, prefix = env["CLUSTER_BUCKET"], f"users/{env['CLUSTER_USER']}/"
    s3 = s3_client(env)
    view = stats(env)
    if sorted(view) != ["gw1", "gw2", "gw3"] or any(s != "UP" for s, _ in view.values()):
        print(f"kill test: HAProxy does not see three gateways UP: {view}", file=sys.stderr)
        return 2
    stale = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    if stale or pending_uploads(s3, bucket, prefix):
        print(f"kill test: the bucket already holds files under {prefix}: start from a fresh cluster "
              "(cluster.sh down --purge; cluster.sh up)", file=sys.stderr)
        return 2
    age = parse_duration(env.get("CLUSTER_ORPHAN_AGE", "24h"))
    drain = parse_duration(env.get("CLUSTER_DRAIN_DELAY", "5s")) or 0
    sweep = parse_duration(env.get("CLUSTER_ORPHAN_SWEEP", "1h"))
    print(f"kill test: {args.clients} clients for {args.duration:.0f} s, files {args.min_size // KIB} KiB-"
          f"{args.max_size // MIB} MiB (log-uniform), seed {args.seed}; gateways: orphan age "
          f"{env.get('CLUSTER_ORPHAN_AGE')}, sweep every {env.get('CLUSTER_ORPHAN_SWEEP')}, drain delay "
          f"{env.get('CLUSTER_DRAIN_DELAY')}, grace {env.get('CLUSTER_SHUTDOWN_GRACE')}")

    told = Told()
    plog = logging.getLogger("paramiko")
    plog.setLevel(logging.INFO)
    plog.addHandler(told)
    plog.propagate = False  # the clients' own errors are counted, not printed

    shared = Shared()
    stop = threading.Event()
    args.t0 = t0 = time.time()
    violations = []

    def note(text):
        print(f"  [{time.time() - t0:6.1f} s] {text}", flush=True)

    watch = MultipartWatch(env, bucket, prefix)
    watch.start()
    clients = [Client(i, args, env, shared, stop) for i in range(args.clients)]
    for c in clients:
        c.start()
    note("clients started")

    def sleep_until(t):
        while time.time() < t0 + t:
            time.sleep(0.2)

    # SIGKILL: the gateway with the most multipart uploads in flight (then the most
    # uploads, then sessions), so that it leaves some behind; waiting up to 15 s for one.
    sleep_until(args.kill_at)
    while True:
        on = {n: uploads_on(env, state, n) for n in (1, 2, 3)}
        killed = max(on, key=lambda n: (on[n][2], on[n][1], on[n][0]))
        if on[killed][2] > 0 or time.time() > t0 + args.kill_at + 15:
            break
        time.sleep(0.3)
    pid = gateway_pid(state, killed)
    os.kill(pid, signal.SIGKILL)
    t_kill = time.time()
    note(f"SIGKILL gw{killed} (pid {pid}; {on[killed][0]} sessions, {on[killed][1]} uploads in flight, "
         f"{on[killed][2]} of them multipart uploads begun)")
    sleep_until(args.kill_at + args.restart_killed_after)
    start_gateway(killed)
    note(f"gw{killed} restarted")

    # SIGTERM: the busiest of the other two.
    sleep_until(args.term_at)
    view = stats(env)
    others = [k for k in view if k != f"gw{killed}"]
    termed = int(max(others, key=lambda k: view[k][1])[2:])
    pid = gateway_pid(state, termed)
    os.kill(pid, signal.SIGTERM)
    t_term = time.time()
    note(f"SIGTERM gw{termed} (pid {pid}, {view[f'gw{termed}'][1]} sessions)")
    out_at = None
    grace = parse_duration(env.get("CLUSTER_SHUTDOWN_GRACE", "60s")) or 60
    while alive(pid):
        if time.time() > t_term + drain + grace + 30:
            violations.append(f"gw{termed} still ran {time.time() - t_term:.0f} s after its SIGTERM: SIGKILL")
            os.kill(pid, signal.SIGKILL)
            break
        if out_at is None and stats(env).get(f"gw{termed}", ("UP",))[0].startswith("DOWN"):
            out_at = time.time()
            note(f"HAProxy marked gw{termed} DOWN")
        time.sleep(0.2)
    t_term_exit = time.time()
    note(f"gw{termed} exited {t_term_exit - t_term:.1f} s after SIGTERM")
    start_gateway(termed)
    t_term_restart = time.time()
    note(f"gw{termed} restarted")

    sleep_until(args.duration)
    stop.set()
    note("load over: clients finish their current transfer")
    join_by = time.time() + args.op_timeout + 60
    for c in clients:
        c.join(timeout=max(0, join_by - time.time()))
    stuck = [c.idx for c in clients if c.is_alive()]
    if stuck:
        violations.append(f"clients {stuck} still busy {args.op_timeout + 60:.0f} s after the load ended")
    note("clients done")
    time.sleep(2)  # HAProxy logs a connection when it ends
    attribute(state, shared.conns)


    # Failures, by cause.
    by_kill, drain_between, drain_in_flight, other = [], [], [], []
    for f in shared.failures:
        gw = f.conn.gateway if f.conn else "?"
        if gw == f"gw{killed}" and f.at >= t_kill and f.conn.started < t_kill:
            by_kill.append(f)
        elif gw == f"gw{termed}" and f.at >= t_term and f.conn.started < t_term_exit:
            (drain_between if f.phase in ("idle", "open") else drain_in_flight).append(f)
        else:
            other.append(f)
    for f in drain_in_flight:
        violations.append(f"a transfer in flight failed during the SIGTERM drain of gw{termed}: "
                          f"client {f.client} {f.op} {f.name} in {f.phase}: {f.error}")
    # HAProxy must send the draining gateway no new client once it marked it down.
    sent_while_out = [c for c in shared.conns if c.gateway == f"gw{termed}" and out_at is not None
                      and out_at + 0.5 < c.started < t_term_restart]
    for c in sent_while_out:
        violations.append(f"HAProxy sent client {c.client} to gw{termed} {c.started - out_at:.1f} s "
                          "after marking it down")
    keys = {c.host_key for c in shared.conns}
    if len(keys) != 1:
        violations.append(f"clients saw {len(keys)} different host keys across the gateways")
    for name, got, size in shared.download_mismatches:
        violations.append(f"download of {name} gave {got} bytes that do not match the upload ({size} bytes)")
    for idx, err in shared.gave_up:
        violations.append(f"client {idx} gave up: {err}")

    # The bucket.
    objects = {}
    kw = {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = s3.list_objects_v2(**kw)
        for o in page.get("Contents", []):
            objects[o["Key"][len(prefix):]] = o["Size"]
        if not page.get("IsTruncated"):
            break
        kw["ContinuationToken"] = page["NextContinuationToken"]

    def sha_of(name):
        h = hashlib.sha256()
        for b in s3.get_object(Bucket=bucket, Key=prefix + name)["Body"].iter_chunks(MIB):
            h.update(b)
        return h.hexdigest()

    acked = [u for u in shared.uploads.values() if u.acked]
    verified, complete_unacked, partial, unknown = 0, 0, [], []
    for u in acked:
        if u.name not in objects:
            violations.append(f"acknowledged upload {u.name} is missing from the bucket")
        elif objects[u.name] != u.size or sha_of(u.name) != u.sha256:
            violations.append(f"acknowledged upload {u.name} differs in the bucket "
                              f"({objects[u.name]} bytes, {u.size} sent)")
        else:
            verified += 1
    for name, size in objects.items():
        u = shared.uploads.get(name)
        if u is None:
            unknown.append(name)
        elif not u.acked:
            if size == u.size and sha_of(name) == u.sha256:
                complete_unacked += 1
            else:
                partial.append(f"{name} ({size} of {u.size} bytes)")
    for name in unknown:
        violations.append(f"object {name} was never uploaded by a client")
    for name in partial:
        violations.append(f"partial object {name}")

    pending = pending_uploads(s3, bucket, prefix)
    pending_at_end = len(pending)
    sweep_note = ""
    if pending:
        oldest = min(i for _, _, i in pending).timestamp()
        if age is not None and sweep is not None and age + sweep < 3600:
            deadline = min(oldest + age + sweep + 30, time.time() + args.sweep_wait)
            note(f"{len(pending)} multipart uploads pending: waiting up to "
                 f"{max(0, deadline - time.time()):.0f} s for the orphan sweep")
            while pending and time.time() < deadline:
                time.sleep(5)
                pending = pending_uploads(s3, bucket, prefix)
            if pending:
                violations.append(f"{len(pending)} multipart uploads still pending "
                                  f"{time.time() - oldest:.0f} s after the oldest began")
        else:
            sweep_note = (f" (not waited for: the gateways abort orphans older than "
                          f"{env.get('CLUSTER_ORPHAN_AGE')}; ORPHAN_AGE=2m ORPHAN_SWEEP=20s cluster.sh up "
                          f"to see them aborted here)")
    watch.done.set()
    watch.join()
    still = {(k, i) for k, i, _ in pending}
    # The multipart uploads the SIGKILL left behind: those of the uploads it broke that
    # were still there after it.
    killed_names = {f.name for f in by_kill if f.op == "upload"}
    left = [(k, i) for (k, i), (first, last) in watch.seen.items()
            if k[len(prefix):] in killed_names and last > t_kill + 4]
    aborts = sweep_aborts(state)
    left_aborted = [aborts[i] for k, i in left if (k, i) not in still and i in aborts]
    left_gone_otherwise = [(k, i) for k, i in left if (k, i) not in still and i not in aborts]
    left_pending = [(k, i) for k, i in left if (k, i) in still]
    for k, i in left_gone_otherwise:
        violations.append(f"multipart upload {k} {i[:12]}... left by the SIGKILL disappeared, "
                          "but no gateway logged aborting it")
    # Any other upload the sweep aborted was a live one: the age was too short for the load.
    for upload_id, (gw, at) in aborts.items():
        if upload_id not in {i for _, i in left}:
            violations.append(f"{gw} swept multipart upload {upload_id[:12]}... that the SIGKILL did not "
                              "leave behind (a live upload? raise ORPHAN_AGE)")

    attempted_unacked = len(shared.uploads) - len(acked)
    print()
    print(f"uploads attempted:                         {len(shared.uploads)}")
    print(f"uploads acknowledged (CLOSE ok):           {len(acked)} "
          f"({shared.bytes_up / MIB:.0f} MiB)")
    print(f"acknowledged uploads verified (sha256):    {verified}")
    print(f"uploads failed, retried with a fresh name: {attempted_unacked} "
          f"(of which complete in the bucket, CLOSE reply lost: {complete_unacked})")
    print(f"downloads verified (sha256):               {shared.downloads_ok} "
          f"({shared.bytes_down / MIB:.0f} MiB)")
    print(f"partial objects found:                     {len(partial)}")
    print(f"unknown objects found:                     {len(unknown)}")
    print(f"multipart uploads left by the SIGKILL:     {len(left)}")
    if left_aborted:
        by = collections.Counter(gw for gw, _ in left_aborted)
        print(f"    aborted by the orphan sweep: {len(left_aborted)} "
              f"({', '.join(f'{n} by {gw}' for gw, n in sorted(by.items()))}), "
              f"{min(at for _, at in left_aborted) - t_kill:.0f}-{max(at for _, at in left_aborted) - t_kill:.0f} s "
              "after the kill")
    print(f"multipart uploads pending after the load:  {pending_at_end}, at the end: {len(pending)}{sweep_note}")
    print(f"connections:                               {len(shared.conns)} "
          f"(reconnects: {shared.reconnects}; host keys seen: {len(keys)})")
    print(f"transfers dropped by the SIGKILL of gw{killed}:   {len(by_kill)}")
    print(f"sessions ended between files by the SIGTERM of gw{termed}: {len(drain_between)} "
          f"(then reconnected)")
    for msg, n in sorted(told.messages.items()):
        print(f"    SSH disconnect messages received: {n} x {msg!r}")
    for f in drain_between[:3]:
        print(f"    e.g. client {f.client} {f.op} {f.name} in {f.phase} at {f.at - t0:.1f} s: {f.error}")
    on_termed = [(op, a, b) for c, op, a, b in shared.done if c.gateway == f"gw{termed}"]
    at_term = [x for x in on_termed if x[1] < t_term < x[2]]
    at_stop = [x for x in on_termed if x[1] < t_term + drain < x[2]]
    print(f"transfers in flight on gw{termed} at its SIGTERM that completed: {len(at_term)} "
          f"(still in flight when it stopped accepting, {drain:.0f} s later: {len(at_stop)}; "
          f"the last ended {max((b for _, _, b in on_termed), default=t_term) - t_term:.1f} s after the SIGTERM)")
    print(f"transfers failed during the SIGTERM:       {len(drain_in_flight)}")
    print(f"other failures:                            {len(other)}")
    for f in other[:10]:
        print(f"    client {f.client} {f.op} {f.name} in {f.phase} on {f.conn.gateway if f.conn else '?'} "
              f"at {f.at - t0:.1f} s: {f.error}")
    if out_at is not None:
        print(f"HAProxy took gw{termed} out {out_at - t_term:.1f} s after its SIGTERM; "
              f"new clients sent to it after that: {len(sent_while_out)}")
    if violations:
        print(f"\nFAILED: {len(violations)} violations")
        for v in violations[:50]:
            print(f"  - {v}")
        return 1
    print("\nOK: nothing acknowledged was lost, no partial object, no transfer failed by the drain")
    return 0


if __name__ == "__main__":
    sys.exit(main())
