"""The memory-under-attack section (issue 18, `--attack`): what hostile clients cost s3sftp.

The bench's own s3sftp runs with the per-address limits lifted (200 idle sessions from one
address); this section starts a second s3sftp with the default limits (256 connections not
logged in yet, 32 per address, 50 connections per address, 10 failed logins ban an
address) and measures its RSS over idle in three phases, each with a share of the time budget
(`--attack-budget-s`):

1. **Password storm:** 100 paramiko clients at once, each from its own loopback address
   (127.0.1.N, so that neither the per-address cap nor a ban cuts the storm short), each trying
   3 wrong passwords, one connection each, for a user that has a password (argon2id, 19 MiB
   per check).
2. **Banner-only sockets:** 2,000 TCP connections that send an SSH banner and nothing more,
   from 100 loopback addresses (20 each: the global cap of 256, not the per-address one, is
   what decides); counted as accepted (still open after 2 s) or refused (closed, reset, or
   connect failed).
3. **Memory hog beside an upload:** one user (paramiko) holds as much as it can (read handles
   on a 64 MiB file with a read on each, uploads declaring a 1 TiB size, writes far ahead of
   the sequential cursor and over one another), while a second user uploads 256 MiB with
   OpenSSH `sftp`; its speed is compared with the same upload alone (target >= 0.8x).
"""

from __future__ import annotations

import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import client
import systems
from common import (
    BUCKET, MIB, RssSampler, free_port, log, rss_kib, spawn, stop, wait_port,
)

if TYPE_CHECKING:
    from harness import Bench

# The argon2id hash of "demo" (users.example.json): the storm tries other passwords.
PW_HASH = "$argon2id$v=19$m=19456,t=2,p=1$RiPd4CqIXq3Z1WILePKMyw$m9ZmJ9lopPbVYv0zlAscUQCWflqKmefPI97jjGguHck"
STORM_CLIENTS = 100
STORM_TRIES = 3
BANNERS = 2000
BANNER_ADDRS = 100
HOG_CHANNELS = 10         # --max-channels default
HOG_READ_HANDLES = 1000   # over the read sessions (--max-handles is 256 per session)
HOG_UPLOADS = 16          # --max-uploads default, per SFTP session
HOG_FILE = 64 * MIB


class Target:
    """The attacked s3sftp, as `client.ssh_opts` wants a system."""

    name = "s3sftp-attack"
    user = "victim"

    def __init__(self, port: int, proc):
        self.port, self.proc = port, proc

    @property
    def pid(self):
        return self.proc.pid


def start_target(b: Bench) -> Target:
    d = b.tmp / "s3sftp-attack"
    d.mkdir()
    users = {"users": [
        {"username": "victim", "public_keys": [b.client_pub], "key_prefix": "attack/victim/", "enabled": True},
        {"username": "hog", "public_keys": [b.client_pub], "key_prefix": "attack/hog/", "enabled": True},
        {"username": "pw", "password": PW_HASH, "public_keys": [], "key_prefix": "attack/pw/", "enabled": True},
    ]}
    uf = d / "users.json"
    uf.write_text(json.dumps(users))
    uf.chmod(0o600)
    port = free_port()
    lf = d / "server.log"
    # Default limits: no --max-connections-per-ip / --max-unauthenticated-per-ip here.
    p = spawn([str(b.binary), "serve", "--listen", f"127.0.0.1:{port}", "--state-dir", str(d / "state"),
               "--users-file", str(uf), "--log", "warn", *systems.s3_flags(b)], lf,
              env=dict(os.environ, NO_COLOR="1", S3SFTP_S3_SECRET_KEY=b.secret_key))
    wait_port(port, p, "s3sftp (attack)", lf)
    time.sleep(1.0)
    t = Target(port, p)
    t.log = lf
    return t


def storm(b: Bench, t: Target, deadline: float) -> dict:
    """100 concurrent clients, 3 wrong passwords each; RSS peak over the phase."""
    import paramiko

    def one(i: int):
        # One connection per try: paramiko's auth_password starts over with a second
        # ssh-userauth service request, which gets no answer on a connection that has
        # already tried (OpenSSH's client retries on one connection and is answered).
        src = f"127.0.1.{i + 1}"
        fails = errors = timeouts = 0
        for k in range(STORM_TRIES):
            if time.monotonic() > deadline:
                break
            tr = None
            try:
                sock = socket.create_connection(("127.0.0.1", t.port), timeout=30, source_address=(src, 0))
                tr = paramiko.Transport(sock)
                tr.auth_timeout = 10
                tr.start_client(timeout=30)
                tr.auth_password("pw", f"wrong-{i}-{k}")
            except paramiko.AuthenticationException as e:
                # paramiko raises the same exception when no answer came in time.
                if "timeout" in str(e).lower():
                    timeouts += 1
                else:
                    fails += 1
            except (paramiko.SSHException, OSError, EOFError):
                errors += 1
            finally:
                if tr is not None:
                    tr.close()
        return fails, errors, timeouts

    before = rss_kib(t.pid) / 1024
    t0 = time.perf_counter()
    with RssSampler(t.pid) as rs:
        with ThreadPoolExecutor(STORM_CLIENTS) as ex:
            res = list(ex.map(one, range(STORM_CLIENTS)))
    dt = time.perf_counter() - t0
    time.sleep(1)
    return {"clients": STORM_CLIENTS, "tries": STORM_TRIES, "rejected": sum(r[0] for r in res),
            "errors": sum(r[1] for r in res), "timeouts": sum(r[2] for r in res), "seconds": dt, "before_mib": before,
            "peak_mib": rs.peak / 1024, "after_mib": rss_kib(t.pid) / 1024}


def banners(b: Bench, t: Target, deadline: float) -> dict:
    """2,000 sockets that send a banner and nothing else; accepted vs refused."""
    socks: list[socket.socket] = []
    connect_failed = 0
    before = rss_kib(t.pid) / 1024
    with RssSampler(t.pid) as rs:
        try:
            for i in range(BANNERS):
                if time.monotonic() > deadline:
                    break
                src = f"127.0.2.{i % BANNER_ADDRS + 1}"
                try:
                    s = socket.create_connection(("127.0.0.1", t.port), timeout=2, source_address=(src, 0))
                    s.sendall(b"SSH-2.0-bench_banner_only\r\n")
                    socks.append(s)
                except OSError:
                    connect_failed += 1
            time.sleep(2)
            accepted = refused = 0
            for s in socks:
                s.setblocking(False)
                state = "open"
                try:
                    while True:
                        data = s.recv(65536)
                        if not data:
                            state = "closed"
                            break
                except BlockingIOError:
                    pass
                except OSError:
                    state = "closed"
                if state == "open":
                    accepted += 1
                else:
                    refused += 1
            held_mib = rss_kib(t.pid) / 1024
        finally:
            for s in socks:
                s.close()
    time.sleep(1)
    return {"sockets": len(socks) + connect_failed, "addresses": BANNER_ADDRS, "accepted": accepted,
            "refused": refused + connect_failed, "connect_failed": connect_failed, "before_mib": before,
            "held_mib": held_mib, "peak_mib": rs.peak / 1024, "after_mib": rss_kib(t.pid) / 1024}


class Hog:
    """One user holding as much server memory as it can without moving many bytes."""

    def __init__(self, b: Bench, t: Target):
        self.b, self.t = b, t
        self.granted = {"read_handles": 0, "reads": 0, "huge_uploads": 0, "ahead_writes": 0}
        self.refused = {"read_handles": 0, "reads": 0, "huge_uploads": 0, "ahead_writes": 0}
        self.transport = None
        self.files: list = []
        self.sessions = 0

    def start(self, deadline: float) -> None:
        """Opens and holds everything it can until `deadline` (a blocked request times out
        after 10 s and counts as refused); writes are pipelined (sent without waiting for
        their status), so a server that holds back WRITE replies does not stall the set-up."""
        import paramiko
        from paramiko.sftp import CMD_OPEN, SFTP_FLAG_CREATE, SFTP_FLAG_TRUNC, SFTP_FLAG_WRITE
        from paramiko.sftp_attr import SFTPAttributes
        from paramiko.sftp_file import SFTPFile
        key = paramiko.Ed25519Key.from_private_key_file(str(self.b.tmp / "client_key"))
        sock = socket.create_connection(("127.0.0.1", self.t.port), timeout=30)
        tr = paramiko.Transport(sock)
        tr.start_client(timeout=30)
        tr.auth_publickey("hog", key)
        self.transport = tr
        sessions = []
        for _ in range(HOG_CHANNELS):
            try:
                sftp = paramiko.SFTPClient.from_transport(tr)
                sftp.get_channel().settimeout(10)
                sessions.append(sftp)
            except (paramiko.SSHException, OSError):
                break
        self.sessions = len(sessions)
        self.files = []
        chunk = os.urandom(32 * 1024)
        half = max(1, len(sessions) // 2)
        # Uploads first (they are quick: writes are pipelined), on the second half of the
        # sessions: uploads declaring 1 TiB, with writes far ahead of the cursor and
        # over one another (the reorder buffer has to hold them), never at offset 0.
        for n, sftp in enumerate(sessions[half:]):
            for i in range(HOG_UPLOADS):
                if time.monotonic() > deadline:
                    break
                attr = SFTPAttributes()
                attr.st_size = 1 << 40
                try:
                    _, msg = sftp._request(CMD_OPEN, f"up-{n}-{i}.bin",
                                           SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC, attr)
                    f = SFTPFile(sftp, msg.get_binary(), "w")
                    f.set_pipelined(True)
                    self.files.append(f)
                    self.granted["huge_uploads"] += 1
                except (OSError, paramiko.SSHException):
                    self.refused["huge_uploads"] += 1
                    continue
                for k in range(1, 33):
                    for off in (k * MIB + 4096, k * MIB + 4096 + 16 * 1024):  # overlapping pairs
                        try:
                            f.seek(off)
                            f.write(chunk)
                            f.flush()
                            self.granted["ahead_writes"] += 1  # sent (pipelined)
                        except (OSError, paramiko.SSHException):
                            self.refused["ahead_writes"] += 1
        # Then the first half: read handles on the 64 MiB file, a 32 KiB read on each at a
        # different offset (each starts a download and its read-ahead).
        for n, sftp in enumerate(sessions[:half]):
            for i in range(HOG_READ_HANDLES // half):
                if time.monotonic() > deadline:
                    break
                try:
                    f = sftp.open("hog.bin", "r")
                    self.files.append(f)
                    self.granted["read_handles"] += 1
                except (OSError, paramiko.SSHException):
                    self.refused["read_handles"] += 1
                    break
                try:
                    f.seek(((i * 7 + n) % (HOG_FILE // MIB - 1)) * MIB)
                    f.read(32 * 1024)
                    self.granted["reads"] += 1
                except (OSError, paramiko.SSHException):
                    self.refused["reads"] += 1
                    break  # unanswered: this session's replies are out of step now
    def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.files.clear()


def hog_and_upload(b: Bench, t: Target, deadline: float) -> dict:
    """The second user's upload alone, then beside the hog; RSS over the loaded phase."""
    size = b.conc_size
    res: dict = {"size_mib": size // MIB}

    def upload(name: str):
        dt, ok, _, err = client.sftp(b, t, [f"put {b.mid} {name}"], 60 + size / MIB / 4)
        if not ok:
            res.setdefault("errors", []).append(err.strip()[:200])
        return dt if ok else None

    res["alone_s"] = upload("alone-1.bin")
    b.s3.put_object(Bucket=BUCKET, Key="attack/hog/hog.bin", Body=os.urandom(MIB) * (HOG_FILE // MIB))
    res["before_mib"] = rss_kib(t.pid) / 1024
    hog = Hog(b, t)
    with RssSampler(t.pid) as rs:
        t0 = time.perf_counter()
        try:
            hog.start(time.monotonic() + (deadline - time.monotonic()) * 0.4)
        except Exception as e:  # noqa: BLE001
            res["hog_error"] = f"{type(e).__name__}: {e}"
        res["hog_setup_s"] = time.perf_counter() - t0
        res["held_mib"] = rss_kib(t.pid) / 1024
        res["loaded_s"] = upload("loaded.bin")  # the measurement that matters: always run
        hog.stop()
    res["peak_mib"] = rs.peak / 1024
    res["hog_sessions"] = getattr(hog, "sessions", 0)
    res["granted"], res["refused"] = hog.granted, hog.refused
    time.sleep(2)
    res["after_mib"] = rss_kib(t.pid) / 1024
    # Alone once more, so a slow minute of the VM does not pass for the hog's effect.
    if time.monotonic() < deadline:
        res["alone2_s"] = upload("alone-2.bin")
    alone = [x for x in (res.get("alone_s"), res.get("alone2_s")) if x]
    if alone and res.get("loaded_s"):
        res["ratio"] = min(alone) / res["loaded_s"]
    return res


def attack_section(b: Bench) -> None:
    a = b.attack
    started = time.monotonic()
    budget = b.args.attack_budget_s
    log(f"attack: starting s3sftp with default limits (budget {budget:.0f} s)")
    t = start_target(b)
    try:
        a["idle_mib"] = rss_kib(t.pid) / 1024
        log(f"attack: {STORM_CLIENTS} concurrent wrong-password clients")
        a["storm"] = storm(b, t, started + budget * 0.3)
        log(f"attack: {BANNERS} banner-only sockets")
        a["banners"] = banners(b, t, started + budget * 0.5)
        log("attack: memory hog beside a second user's upload")
        a["hog"] = hog_and_upload(b, t, started + budget)
        a["seconds"] = time.monotonic() - started
        log("attack: " + json.dumps(a, default=str)[:600])
    finally:
        stop(t.proc, 10)
        for prefix in ("attack/",):
            try:
                for page in b.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
                    keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                    if keys:
                        b.s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})
            except Exception:  # noqa: BLE001
                pass
