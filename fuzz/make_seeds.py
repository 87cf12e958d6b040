#!/usr/bin/env python3
"""Writes the seed corpus (corpus/<target>/seed-*): real SFTP v3 request streams as
OpenSSH's sftp/scp send them, real scp control lines and client paths. Rerun after
changing it; libFuzzer adds its own finds beside these."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def s(b):
    b = b.encode() if isinstance(b, str) else b
    return struct.pack(">I", len(b)) + b


def u32(n):
    return struct.pack(">I", n)


def u64(n):
    return struct.pack(">Q", n)


def pkt(kind, body):
    payload = bytes([kind]) + body
    return u32(len(payload)) + payload


def attrs(size=None, perms=None, times=None):
    flags, body = 0, b""
    if size is not None:
        flags |= 1
        body += u64(size)
    if perms is not None:
        flags |= 4
        body += u32(perms)
    if times is not None:
        flags |= 8
        body += u32(times[0]) + u32(times[1])
    return u32(flags) + body


INIT = pkt(1, u32(3))
READ, WRITE, CREAT, TRUNC, EXCL, APPEND = 1, 2, 8, 0x10, 0x20, 4


def open_(i, path, flags, a=None):
    return pkt(3, u32(i) + s(path) + u32(flags) + (a or attrs()))


def close(i, h):
    return pkt(4, u32(i) + s(h))


def read(i, h, off, n):
    return pkt(5, u32(i) + s(h) + u64(off) + u32(n))


def write(i, h, off, data):
    return pkt(6, u32(i) + s(h) + u64(off) + s(data))


def path_req(kind, i, path, a=None):
    return pkt(kind, u32(i) + s(path) + (a if a is not None else b""))


def ext(i, name, data=b""):
    return pkt(200, u32(i) + s(name) + data)


sftp = {
    # sftp> get efile (OpenSSH: realpath, stat, open, reads, close)
    "get": INIT + path_req(16, 1, ".") + path_req(17, 2, "/efile")
    + open_(3, "/efile", READ) + read(4, "h1", 0, 32768) + read(5, "h1", 32768, 32768)
    + pkt(8, u32(6) + s("h1")) + close(7, "h1"),
    # scp (SFTP mode) upload: OPEN(WRITE|CREAT) without TRUNC, WRITEs, FSETSTAT(size), close
    "put": INIT + ext(1, "limits@openssh.com") + path_req(16, 2, ".")
    + open_(3, "/new.txt", WRITE | CREAT, attrs(perms=0o644))
    + write(4, "h1", 0, b"hello ") + write(5, "h1", 6, b"world\n")
    + pkt(10, u32(6) + s("h1") + attrs(size=12)) + close(7, "h1"),
    # out-of-order writes within the window, then a rewrite and a gap
    "reorder": INIT + open_(1, "/r.bin", WRITE | CREAT | TRUNC)
    + write(2, "h1", 0, b"a" * 100) + write(3, "h1", 200, b"c" * 100)
    + write(4, "h1", 100, b"b" * 100) + write(5, "h1", 50, b"x" * 10)
    + write(6, "h1", 5000, b"z") + close(7, "h1"),
    # ls -l
    "ls": INIT + path_req(16, 1, "/ddocs") + path_req(11, 2, "/ddocs")
    + pkt(12, u32(3) + s("h1")) + pkt(12, u32(4) + s("h1")) + close(5, "h1"),
    # mkdir, setstat, rename, posix-rename, remove, rmdir, symlink
    "ops": INIT + path_req(14, 1, "/dnew", attrs(perms=0o755))
    + path_req(9, 2, "/efile", attrs(times=(1700000000, 1700000000)))
    + pkt(18, u32(3) + s("/efile") + s("/moved"))
    + ext(4, "posix-rename@openssh.com", s("/efile") + s("/e2"))
    + path_req(13, 5, "/efile") + path_req(15, 6, "/dnew") + path_req(7, 7, "/../../etc")
    + pkt(20, u32(8) + s("/l") + s("/t")) + ext(9, "statvfs@openssh.com", s("/")),
    # EXCL on an existing file, APPEND, open without CREATE, bad handles
    "refusals": INIT + open_(1, "/efile", WRITE | CREAT | EXCL) + open_(2, "/x", WRITE | APPEND)
    + open_(3, "/x", WRITE) + read(4, "nope", 0, 10) + write(5, "nope", 0, b"x")
    + close(6, "nope") + pkt(99, u32(7)),
    # requests before INIT, a truncated WRITE and an oversized frame at the end
    "malformed": path_req(16, 1, ".") + INIT + pkt(6, u32(2) + u32(100))
    + u32(10 << 20),
}

scp = [
    b"C0644 1234 a b.txt", b"D0755 0 dir", b"E", b"T1700000000 0 1700000001 0",
    b"\x01scp: oops", b"\x02scp: fatal", b"C0600 5 .hidden", b"C0644 0 ../etc/passwd",
    b"D0755 0 a/b", b"T1 999999 2 0", b"C0644 18446744073709551615 big",
]

paths = [
    b"/a/b", b"../../etc/passwd", b"a\\..\\..\\b", "/ünï/çødé".encode(), b"./x//y/.",
    b"", b"/", b"\xff\xfe", b"a\x00b", b"/100%/x+y #1", "/a\ufffdb".encode(),
]


def put(target, name, data):
    with open(os.path.join(HERE, "corpus", target, f"seed-{name}"), "wb") as f:
        f.write(data)


for name, stream in sftp.items():
    put("sftp_decode", name, b"\x00" + stream)
    put("sftp_decode", name + "-cut7", b"\x07" + stream)
for i, line in enumerate(scp):
    put("scp_control", str(i), line)
for i, p in enumerate(paths):
    put("path_parse", str(i), p)
