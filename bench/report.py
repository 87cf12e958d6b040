"""The Markdown report: medians of the successful runs, the ratios against the ceilings and
against rclone, the memory section, and the targets of issue #6, with the machine it ran on.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from common import MIB, REPO, first_line, median

if TYPE_CHECKING:
    from harness import Bench


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
    out.append(latency_line(b))
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

    out.extend(obs_section(b, S, names))
    out.extend(attack_section(b))

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


def latency_line(b: Bench) -> str:
    """The header's line on S3 latency: direct, or through the delay line (and its own cost)."""
    ms = b.args.latency_ms
    if ms is None:
        return "S3 latency: **none added** (every system talks to the S3 server directly on loopback).\n"
    line = (f"S3 latency: **{ms:g} ms round trip added** to every S3 request of every system "
            f"(`bench/delayline.py`, {ms / 2:g} ms each way, pipelined) in front of the S3 server.")
    c = b.relay_check
    if c:
        line += (f" The relay's own cost at 0 ms: a {c['size_mib']} MiB GET (boto3, 8 MiB parts, 8 in flight) "
                 f"at {c['direct_mib_s']:.0f} MiB/s direct and {c['relay_mib_s']:.0f} MiB/s through it "
                 f"({c['relay_mib_s'] / c['direct_mib_s']:.2f}×, {c['relay_cpu_s_per_get']:.2f} relay CPU-s); "
                 f"HEAD {c['direct_head_ms']:.2f} ms direct, {c['relay_head_ms']:.2f} ms through it.")
    relay_cpu = sum(r.get("relay_cpu", 0.0) for per in b.results.values() for recs in per.values() for r in recs)
    line += f" Relay CPU over all timed runs: {relay_cpu:.1f} s (it shares the 2 cores).\n"
    return line


def obs_section(b: Bench, S, names) -> list[str]:
    """s3sftp with logs at info and metrics on, against plain s3sftp (issue 19)."""
    obs = [n for n in names if n.startswith("s3sftp-obs")]
    if not obs or "s3sftp" not in names:
        return []
    out = ["\n## Logging and metrics (issue 19)\n",
           "Plain s3sftp runs with `--log warn` and no metrics; the obs rows log every info event and "
           "audit line (`--log info`, json or text, to a file) and keep the metrics recorder on "
           "(`--metrics-listen 127.0.0.1:0`, scraped once at the end). Ratio = obs time / plain time "
           "(1.00 = no cost; the run-to-run noise here is about ±10 %).\n",
           "| workload | " + " | ".join(names[n] for n in obs) + " |",
           "|---|" + "---:|" * len(obs)]
    for w in ("upload", "download", "small-up", "get-r", "list"):
        base = S.get(w, {}).get("s3sftp", {})
        key = "t" if w in ("upload", "download") else "net"
        cells = []
        for n in obs:
            d = S.get(w, {}).get(n, {})
            cells.append(f"{d[key]:.3f} s ({d[key] / base[key]:.2f}×)" if d.get(key) and base.get(key) else "–")
        title = WORKLOAD_TITLES[w].format(n=b.nsmall, r=b.rename_size // MIB, l=b.nlist, k=b.renames)
        out.append(f"| {title} | " + " | ".join(cells) + " |")
    for n in obs:
        o = b.obs.get(n, {})
        scrape = (f"/metrics: {o['series']} series, {o['scrape_bytes'] / 1024:.0f} KiB, {o['scrape_ms']:.1f} ms"
                  if "series" in o else f"/metrics: {o.get('scrape_error', 'not scraped')}")
        out.append(f"\n{names[n]}: log {o.get('log_bytes', 0) / MIB:.1f} MiB in {o.get('log_lines', 0)} lines over the run; {scrape}.")
    return out


def attack_section(b: Bench) -> list[str]:
    """The memory-under-attack section (issue 18, --attack)."""
    if not b.args.attack:
        return []
    a = b.attack
    out = ["\n## Memory under attack (issue 18): a second s3sftp with default limits\n"]
    if "idle_mib" not in a:
        return out + [f"FAILED: {a.get('error', '?')}"]
    idle = a["idle_mib"]
    out.append(f"Idle RSS {idle:.1f} MiB; section took {fmt(a.get('seconds'), 0)} s (budget {b.args.attack_budget_s:g}).\n")
    out.append("| phase | what happened | peak RSS MiB | over idle | target | met |")
    out.append("|---|---|---:|---:|---|---|")
    st = a.get("storm")
    if st:
        out.append(f"| {st['clients']} concurrent wrong-password clients, {st['tries']} tries each, one loopback address each | "
                   f"{st['rejected']} rejected, {st.get('timeouts', 0)} unanswered in 10 s, {st['errors']} errors, {st['seconds']:.1f} s | {st['peak_mib']:.1f} | "
                   f"{st['peak_mib'] - idle:+.1f} | ≤ idle + 200 | {met(st['peak_mib'] - idle <= 200)} |")
    bn = a.get("banners")
    if bn:
        out.append(f"| {bn['sockets']} banner-only sockets from {bn['addresses']} addresses | {bn['accepted']} accepted (open after 2 s), "
                   f"{bn['refused']} refused ({bn['connect_failed']} at connect) | {bn['peak_mib']:.1f} | {bn['peak_mib'] - idle:+.1f} | – | – |")
    h = a.get("hog")
    if h:
        g, r = h.get("granted", {}), h.get("refused", {})
        what = (f"{h.get('hog_sessions', 0)} SFTP sessions; read handles {g.get('read_handles', 0)} granted / {r.get('read_handles', 0)} refused, "
                f"1 TiB-declared uploads {g.get('huge_uploads', 0)} / {r.get('huge_uploads', 0)}, writes ahead {g.get('ahead_writes', 0)} / "
                f"{r.get('ahead_writes', 0)}" + (f"; hog error: {h['hog_error'][:120]}" if h.get("hog_error") else ""))
        out.append(f"| one user holding memory, another uploading {h['size_mib']} MiB | {what} | {h['peak_mib']:.1f} | "
                   f"{h['peak_mib'] - idle:+.1f} | – | – |")
        alone = [x for x in (h.get("alone_s"), h.get("alone2_s")) if x]
        if alone and h.get("loaded_s"):
            mb = h["size_mib"]
            out.append(f"\nSecond user's {mb} MiB upload: alone {', '.join(f'{mb / x:.0f}' for x in alone)} MiB/s, "
                       f"beside the hog {mb / h['loaded_s']:.0f} MiB/s: **{h['ratio']:.2f}×** of the faster alone run "
                       f"(target ≥ 0.8×: {met(h['ratio'] >= 0.8)}).")
        else:
            out.append(f"\nSecond user's upload: FAILED or out of time ({'; '.join(h.get('errors', []))[:200]}).")
    if "error" in a:
        out.append(f"\nAttack section error: {a['error']}")
    return out
