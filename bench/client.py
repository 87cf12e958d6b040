"""The OpenSSH client as every workload drives it: the options that make it scriptable and
quiet, and one `sftp -b` batch run timed from the outside.
"""

from __future__ import annotations

import subprocess
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness import Bench
    from systems import System


def ssh_opts(b: Bench, s: System) -> list[str]:
    o = ["-P", str(s.port), "-i", str(b.tmp / "client_key"),
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
         "-o", "Compression=no"]
    if b.cipher:
        o += ["-c", b.cipher]
    return o


def sftp(b: Bench, s: System, lines: list[str], timeout: float, extra_opts=()):
    """Runs `sftp -b` with these commands; returns (seconds, ok, stdout, stderr)."""
    bf = b.tmp / "batch.txt"
    bf.write_text("\n".join(lines) + "\n")
    argv = ["sftp", "-b", str(bf), *ssh_opts(b, s), *extra_opts, f"{s.user}@127.0.0.1"]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(argv, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - t0, False, "", f"timeout after {timeout:.0f}s"
    dt = time.perf_counter() - t0
    return dt, r.returncode == 0, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
