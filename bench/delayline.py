"""A TCP delay line: the benchmark's stand-in for an S3 endpoint that is N ms away.

The kernel here has no netem, so `--latency-ms N` puts this relay in front of the S3 server
and points every system (s3sftp, rclone serve sftp, the raw S3 client) at it. Each chunk
read from either side is stamped on arrival and written to the other side at arrival +
N/2 ms: a round trip gains N ms. It is a delay line, not a rate limiter: chunks are
pipelined (many can be in flight in each direction), so bandwidth is not limited, only
delayed; order within a direction is kept (one FIFO per direction, one timer at its head).

Reads are up to 1 MiB at a time and releases are scheduled with `loop.call_at`, so one
Python process relays several hundred MiB/s on loopback; `check` measures that (a GET
direct against a GET through the relay). Back-pressure: when the receiving socket's write
buffer is full, the sending side stops being read, so memory stays bounded at the
bandwidth-delay product plus the buffers.

Standalone:
    python3 bench/delayline.py relay --listen 127.0.0.1:9001 --target 127.0.0.1:9000 --rtt-ms 20
    python3 bench/delayline.py check --endpoint http://127.0.0.1:9000 --access-key K \\
        --secret-key S --bucket bench [--size-mib 256] [--rtt-ms 0]
The relay prints one line, `listening on HOST:PORT`, once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import socket
import subprocess
import sys
import time

READ_SIZE = 1 << 20
# Stop reading a side while the other side has this much queued in its socket buffer.
HIGH_WATER = 16 << 20
LOW_WATER = 4 << 20
EOF = object()


class Direction:
    """One direction of one connection: a FIFO of (release time, chunk), released in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float):
        self.loop, self.delay = loop, delay
        self.queue: collections.deque = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.dst: asyncio.Transport | None = None

    def push(self, item) -> None:
        if self.delay <= 0 and not self.queue and self.dst is not None:
            self._deliver(item)
            return
        self.queue.append((self.loop.time() + self.delay, item))
        if self.timer is None and self.dst is not None:
            self._arm()

    def attach(self, dst: asyncio.Transport) -> None:
        self.dst = dst
        if self.queue and self.timer is None:
            self._arm()

    def _arm(self) -> None:
        self.timer = self.loop.call_at(self.queue[0][0], self._release)

    def _release(self) -> None:
        self.timer = None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            self._deliver(self.queue.popleft()[1])
        if self.queue:
            self._arm()

    def _deliver(self, item) -> None:
        dst = self.dst
        if dst is None or dst.is_closing():
            return
        if item is EOF:
            if dst.can_write_eof():
                dst.write_eof()
            else:
                dst.close()
        else:
            dst.write(item)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()


class Side(asyncio.Protocol):
    """One socket of a relayed connection; what it reads goes into `out`, delayed."""

    def __init__(self, out: Direction, peer_in: Direction | None = None):
        self.out = out            # what this side reads, on its way to the other side
        self.peer_in = peer_in    # what the other side sends to this one (set later)
        self.transport: asyncio.Transport | None = None
        self.other: Side | None = None
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport
        if hasattr(transport, "max_size"):
            transport.max_size = READ_SIZE  # selector transports read 256 KiB by default
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)

    def data_received(self, data):
        self.out.push(data)

    def eof_received(self):
        self.out.push(EOF)
        return True  # keep the write half open: the answer may still be on its way

    def pause_writing(self):
        if self.other and self.other.transport:
            self.other.transport.pause_reading()

    def resume_writing(self):
        if self.other and self.other.transport and not self.other.closed:
            self.other.transport.resume_reading()

    def connection_lost(self, exc):
        self.closed = True
        other = self.other
        if other is None or other.transport is None:
            return
        # Close the other side once everything this side sent before closing is released.
        delay = self.out.delay
        self.out.loop.call_later(delay + 0.001, self._close_other)

    def _close_other(self):
        other = self.other
        if other and other.transport and not other.transport.is_closing():
            if self.out.queue:
                self.out.loop.call_later(0.005, self._close_other)
                return
            other.transport.close()


async def serve(listen: tuple[str, int], target: tuple[str, int], rtt_ms: float,
                ready=None) -> None:
    loop = asyncio.get_running_loop()
    one_way = rtt_ms / 2000.0

    async def connect_upstream(client: Side, up_dir: Direction, down_dir: Direction):
        try:
            _, upstream = await loop.create_connection(lambda: Side(down_dir, up_dir), *target)
        except OSError:
            client.transport.close()
            return
        client.other, upstream.other = upstream, client
        up_dir.attach(upstream.transport)
        down_dir.attach(client.transport)
        if client.closed:
            upstream.transport.close()
            return
        client.transport.resume_reading()

    def accepted():
        up_dir, down_dir = Direction(loop, one_way), Direction(loop, one_way)
        client = Side(up_dir, down_dir)

        orig = client.connection_made

        def made(transport):
            orig(transport)
            transport.pause_reading()  # until the upstream connection is up
            loop.create_task(connect_upstream(client, up_dir, down_dir))
        client.connection_made = made
        return client

    server = await loop.create_server(accepted, *listen, backlog=1024, reuse_address=True)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    if ready:
        ready(port)
    async with server:
        await server.serve_forever()


def parse_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


# ---------------------------------------------------------------- spawning and checking


def spawn_relay(target_port: int, rtt_ms: float, logfile=None, listen_port: int = 0):
    """Starts the relay as its own process (its own GIL and CPU); returns (Popen, port)."""
    argv = [sys.executable, os.path.abspath(__file__), "relay", "--listen",
            f"127.0.0.1:{listen_port}", "--target", f"127.0.0.1:{target_port}",
            "--rtt-ms", str(rtt_ms)]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=logfile or subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    line = p.stdout.readline().decode().strip()
    if not line.startswith("listening on "):
        p.kill()
        raise RuntimeError(f"delay line did not start: {line!r}")
    return p, int(line.rsplit(":", 1)[1])


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return 0.0
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def s3_client(endpoint: str, access_key: str, secret_key: str):
    import boto3
    from botocore.config import Config
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access_key,
        aws_secret_access_key=secret_key, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=32,
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"))


def check(endpoint: str, access_key: str, secret_key: str, bucket: str, size_mib: int = 256,
          rtt_ms: float = 0.0, key: str = "delayline-check.bin", runs: int = 2) -> dict:
    """GETs a `size_mib` object with boto3 (8 MiB parts, 8 in flight), direct and through a
    relay of `rtt_ms`, best of `runs` each; returns MiB/s both ways, the relay's CPU seconds
    and the round trip of a small HEAD both ways."""
    from boto3.s3.transfer import TransferConfig
    cfg = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20,
                         max_concurrency=8, use_threads=True)
    port = int(endpoint.rsplit(":", 1)[1].split("/")[0])
    direct = s3_client(endpoint, access_key, secret_key)
    body = os.urandom(1 << 20) * size_mib
    direct.put_object(Bucket=bucket, Key=key, Body=body)
    del body
    relay, rport = spawn_relay(port, rtt_ms)
    try:
        via = s3_client(f"http://127.0.0.1:{rport}", access_key, secret_key)
        out = {"size_mib": size_mib, "rtt_ms": rtt_ms}
        for name, cl in (("direct", direct), ("relay", via)):
            cl.head_object(Bucket=bucket, Key=key)  # warm the connection
            t0 = time.perf_counter()
            for _ in range(5):
                cl.head_object(Bucket=bucket, Key=key)
            out[f"{name}_head_ms"] = (time.perf_counter() - t0) / 5 * 1000
            best = None
            c0 = cpu_seconds(relay.pid)
            for _ in range(runs):
                t0 = time.perf_counter()
                cl.download_fileobj(bucket, key, _Sink(), Config=cfg)
                dt = time.perf_counter() - t0
                best = dt if best is None else min(best, dt)
            out[f"{name}_mib_s"] = size_mib / best
            if name == "relay":
                out["relay_cpu_s_per_get"] = (cpu_seconds(relay.pid) - c0) / runs
        direct.delete_object(Bucket=bucket, Key=key)
        return out
    finally:
        relay.terminate()
        relay.wait(5)


class _Sink:
    """A file-like object that drops what is written (a GET's cost without the disk's)."""

    def write(self, data):
        return len(data)

    def seek(self, *a):
        return 0

    def tell(self):
        return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("relay", help="run the delay line")
    r.add_argument("--listen", default="127.0.0.1:0")
    r.add_argument("--target", required=True, help="HOST:PORT of the S3 server")
    r.add_argument("--rtt-ms", type=float, default=20.0, help="added round trip (each direction gets half)")
    c = sub.add_parser("check", help="GET through the relay against a direct GET (boto3)")
    c.add_argument("--endpoint", required=True)
    c.add_argument("--access-key", required=True)
    c.add_argument("--secret-key", required=True)
    c.add_argument("--bucket", required=True)
    c.add_argument("--size-mib", type=int, default=256)
    c.add_argument("--rtt-ms", type=float, default=0.0)
    a = ap.parse_args()
    if a.cmd == "relay":
        try:
            asyncio.run(serve(parse_addr(a.listen), parse_addr(a.target), a.rtt_ms))
        except KeyboardInterrupt:
            pass
    else:
        res = check(a.endpoint, a.access_key, a.secret_key, a.bucket, a.size_mib, a.rtt_ms)
        for k, v in res.items():
            print(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    main()
