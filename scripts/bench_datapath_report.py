#!/usr/bin/env python3
"""Turns benches/datapath.sh results into BENCH_DATAPATH.md and two SVG plots beside it.

usage: bench_datapath_report.py RESULTS.jsonl REPORT.md META.json [WORKERS.jsonl]
                                [--benchmarks BENCHMARKS.md] [--note TEXT]

RESULTS.jsonl has one line per measured case (benches/datapath_measure.py). The report gives
medians and min–max over the runs of the same run, ratios against kernel forwarding and
boringtun (of the medians, and the range of the per-round ratios), the CPU every party used, and
the cost per packet at a steady offered rate. The plots are SVG written here (no plotting library:
it runs on a fresh machine). With --benchmarks, the block between `<!-- datapath:begin -->` and
`<!-- datapath:end -->` in that file is replaced by a summary (appended if absent); --note puts
TEXT at the top of the report (e.g. "preliminary").
"""
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

MODES = ["sink", "kernel", "aes", "aes-generic", "chacha", "null", "boringtun"]
NAMES = {
    "sink": "generator alone (XDP drop)",
    "kernel": "kernel forwarding, no crypto",
    "aes": "pktcrypt AES-256-GCM",
    "aes-generic": "pktcrypt AES-256-GCM, generic (SKB-mode) XDP",
    "chacha": "pktcrypt ChaCha20-Poly1305",
    "null": "pktcrypt no-op cipher",
    "boringtun": "boringtun (WireGuard, TUN)",
}
COLOURS = {"sink": "#bbbbbb", "kernel": "#666666", "aes": "#1f77b4", "aes-generic": "#9467bd",
           "chacha": "#ff7f0e",
           "null": "#2ca02c", "boringtun": "#d62728"}
PKTCRYPT = ("aes", "aes-generic", "chacha", "null")
BUSY = ("user", "nice", "system", "irq", "softirq")


# ---------------------------------------------------------------- per-case figures

def received_pps(r):
    """Packets per second received at hostB (the sink: accepted by gwA's veth)."""
    if r["mode"] == "sink":
        return (r.get("tx") or {}).get("tx_packets", 0) / r["seconds"]
    if r["test"] == "iperf-udp":
        s = iperf_end(r).get("sum") or {}
        if s.get("seconds"):
            return (s["packets"] - s["lost_packets"]) / s["seconds"]
        return None
    return (r.get("snmp") or {}).get("Ip.InReceives", 0) / r["seconds"]


def offered_pps(r):
    tx = r.get("tx") or {}
    if r["test"] == "iperf-udp":
        s = iperf_end(r).get("sum") or {}
        return s["packets"] / s["seconds"] if s.get("seconds") else None
    return (tx.get("tx_packets", 0) + tx.get("tx_dropped", 0)) / r["seconds"]


def iperf_end(r):
    g = r.get("generator_output")
    return g.get("end", {}) if isinstance(g, dict) else {}


def tcp_gbps(r):
    s = iperf_end(r).get("sum_received") or {}
    return s.get("bits_per_second", 0) / 1e9 if s else None


def throughput(r):
    """The test's headline figure: packets/s for UDP, Gb/s for TCP."""
    return tcp_gbps(r) if r["test"] == "tcp" else received_pps(r)


def cores(secs, r):
    """CPU seconds as a share of one core (1.0 = one core busy the whole case)."""
    return secs / r["seconds"] if r["seconds"] else 0.0


def machine(r, fields):
    return sum(c[f] for c in r["cpu"]["machine"].values() for f in fields)


def gateway_roles(r, g):
    """(workers, control) CPU seconds of one gateway: pktcrypt's worker threads and the rest;
    all of boringtun's threads count as workers (they all move packets)."""
    roles = r["cpu"].get("gateways", {}).get(g, {}).get("roles")
    if not roles:
        return None, None
    if r["mode"] == "boringtun":
        return sum(roles.values()), 0.0
    return roles["workers"], roles["control"] + roles["other"]


def parties(r):
    """CPU of every party in cores (shares of one core over the case)."""
    c = r["cpu"]
    gw = [gateway_roles(r, g) for g in c.get("gateways", {})]
    workers = sum(w for w, _ in gw)
    control = sum(x for _, x in gw)
    gen = c["generator"]["user"] + c["generator"]["system"]
    recv = (c.get("receiver") or {"user": 0, "system": 0})
    recv = recv["user"] + recv["system"]
    busy = machine(r, BUSY)
    return {
        "generator": cores(gen, r),
        "receiver": cores(recv, r),
        "workers": cores(workers, r),
        "control": cores(control, r),
        "softirq": cores(machine(r, ("softirq",)), r),
        "busy": cores(busy, r),
        "idle": cores(machine(r, ("idle", "iowait")), r),
        "steal": cores(machine(r, ("steal",)), r),
        # Machine time not charged to a party (kernel work outside their context, other sessions).
        "rest": cores(busy - gen - recv - workers - control, r),
        "worker_max_cpu": max((cores(gw_thread, r) for gw_thread in worker_threads(r)), default=0.0),
    }


def worker_threads(r):
    for g in r["cpu"].get("gateways", {}).values():
        for name, secs in g.get("threads", {}).items():  # "comm/tid"
            if name.startswith("pktcrypt-work") or r["mode"] == "boringtun":
                yield secs


def busy_ns(r):
    st = r.get("status") or {}
    return sum((s or {}).get("busy_ns", 0) for s in st.values())


def per_packet(r):
    """ns per packet received at hostB, by party."""
    n = (r.get("snmp") or {}).get("Ip.InReceives", 0)
    if not n:
        return None
    p = parties(r)
    out = {k: p[k] * r["seconds"] * 1e9 / n for k in ("generator", "workers", "control", "softirq", "busy", "rest")}
    if not r["cpu"].get("gateways"):
        out["workers"] = out["control"] = None
    out["worker_busy"] = busy_ns(r) / n if r["mode"] in PKTCRYPT else None
    out["received_pps"] = n / r["seconds"]
    out["offered_pps"] = offered_pps(r)
    return out


# ---------------------------------------------------------------- aggregation

def stats(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def group(rows):
    g = defaultdict(list)
    for r in rows:
        g[(r["mode"], r["test"], r.get("size"))].append(r)
    return g


def fmt_pps(v):
    return "–" if v is None else f"{v / 1000:,.0f} k"


def fmt_gbps(v):
    return "–" if v is None else f"{v:.2f}"


def fmt_stat(s, f):
    if not s:
        return "–"
    if s["n"] == 1:
        return f(s["median"])
    return f"{f(s['median'])} ({f(s['min'])}–{f(s['max'])})"


def pct(v):
    return "–" if v is None else f"{100 * v:.0f} %"


# ---------------------------------------------------------------- SVG

def svg_throughput(groups, tests, path):
    """Small multiples: one panel per test, a bar per mode (median) with a min–max whisker."""
    pw, ph, left, top = 250, 230, 50, 40
    cols = 3
    rows_n = (len(tests) + cols - 1) // cols
    W, H = cols * pw + 20, rows_n * ph + top + 40
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         '<text x="10" y="18" font-size="14">Received at hostB, by mode (median of the runs; whisker: min–max)</text>']
    for i, (test, size, unit, title) in enumerate(tests):
        x0, y0 = 10 + (i % cols) * pw, top + (i // cols) * ph
        modes = [m for m in MODES if (m, test, size) in groups]
        vals = {m: stats([throughput(r) for r in groups[(m, test, size)]]) for m in modes}
        peak = max([v["max"] for v in vals.values() if v] + [1e-9])
        scale = (ph - 90) / peak
        s.append(f'<text x="{x0 + 5}" y="{y0 + 12}" font-size="12">{title}</text>')
        base = y0 + ph - 50
        s.append(f'<line x1="{x0 + left - 5}" y1="{base}" x2="{x0 + pw - 10}" y2="{base}" stroke="black"/>')
        bw = (pw - left - 15) / max(len(modes), 1)
        for j, m in enumerate(modes):
            v = vals[m]
            if not v:
                continue
            x = x0 + left + j * bw
            h = v["median"] * scale
            s.append(f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bw - 4:.1f}" height="{h:.1f}" fill="{COLOURS[m]}"/>')
            cx = x + (bw - 4) / 2
            s.append(f'<line x1="{cx:.1f}" y1="{base - v["max"] * scale:.1f}" x2="{cx:.1f}" '
                     f'y2="{base - v["min"] * scale:.1f}" stroke="black"/>')
            label = f'{v["median"] / 1000:.0f}k' if unit == "pps" else f'{v["median"]:.2f}'
            s.append(f'<text x="{cx:.1f}" y="{base - v["max"] * scale - 4:.1f}" text-anchor="middle" font-size="9">{label}</text>')
            s.append(f'<text x="{cx:.1f}" y="{base + 12}" text-anchor="end" font-size="9" '
                     f'transform="rotate(-35 {cx:.1f} {base + 12})">{m}</text>')
        s.append(f'<text x="{x0 + 5}" y="{y0 + 28}" font-size="9">{"packets/s" if unit == "pps" else "Gb/s"}</text>')
    s.append("</svg>")
    Path(path).write_text("\n".join(s) + "\n")


def svg_cost(costs, sizes, path):
    """Stacked bars, ns per packet at the steady rate: pktcrypt's worker busy time split into the
    no-op cipher's part and the cipher's extra, the workers' remaining time (waking up, polling),
    and the generator (the rest of the machine's time is in the table only: on a shared machine it
    is mostly other work)."""
    parts = [("base", "worker busy, no-op cipher part", "#2ca02c"),
             ("cipher", "worker busy, the cipher's extra", "#1f77b4"),
             ("threads", "gateway threads, rest (wake-ups, polls; boringtun: all)", "#9ecae1"),
             ("generator", "generator (with the kernel work run in its context)", "#bbbbbb")]
    bars = []
    for size in sizes:
        null = (costs.get(("null", size)) or {}).get("worker_busy")
        for m in MODES:
            c = costs.get((m, size))
            if not c:
                continue
            busy = c.get("worker_busy") or 0.0
            workers = (c.get("workers") or {"median": 0.0})["median"]
            base = min(busy, null) if (null and m in PKTCRYPT) else busy
            seg = {"base": base, "cipher": busy - base,
                   "threads": max(workers - busy, 0.0),
                   "generator": c["generator"]["median"]}
            if m == "boringtun":
                seg["threads"] = workers
            bars.append((f"{m}, {size} B", seg))
    if not bars:
        return
    peak = max(sum(b[1].values()) for b in bars) or 1
    W, bh, left = 900, 22, 140
    H = 35 + len(bars) * (bh + 6) + 10 + 18 * ((len(parts) + 1) // 2) + 10
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         '<text x="10" y="18" font-size="14">CPU per packet received at hostB, at a steady offered rate (medians, ns)</text>']
    y = 35
    for label, seg in bars:
        s.append(f'<text x="{left - 6}" y="{y + bh - 7}" text-anchor="end">{label}</text>')
        x = left
        for key, _, colour in parts:
            w = seg[key] * (W - left - 80) / peak
            if w > 0:
                s.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bh}" fill="{colour}" stroke="#888" stroke-width="0.3"/>')
            x += w
        s.append(f'<text x="{x + 4:.1f}" y="{y + bh - 7}">{sum(seg.values()):,.0f}</text>')
        y += bh + 6
    y += 10
    for i, (_, name, colour) in enumerate(parts):
        lx, ly = 10 + (i % 2) * 440, y + (i // 2) * 18
        s.append(f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{colour}" stroke="#888"/>')
        s.append(f'<text x="{lx + 15}" y="{ly + 9}">{name}</text>')
    s.append("</svg>")
    Path(path).write_text("\n".join(s) + "\n")


# ---------------------------------------------------------------- report

def caveats(rows, groups, sizes):
    """What keeps the ratios from being honest in this run, from the CPU figures."""
    out = []
    traffic = [r for r in rows if r["test"] in ("gen-udp", "iperf-udp", "tcp")]
    rest = stats([parties(r)["rest"] for r in traffic])
    idle = stats([parties(r)["idle"] for r in traffic])
    load = stats([r["load1"] for r in rows])
    if rest and rest["median"] > 0.25:
        out.append(f"- **Other work shared the CPUs**: in the throughput tests, {rest['median']:.2f} cores "
                   f"(median; {rest['min']:.2f}–{rest['max']:.2f}) of busy time belonged to no party of the "
                   f"benchmark, load average {load['median']:.1f}. Every mode lost CPU to it, not equally "
                   "(userspace gateways lose more than softirq work): these ratios are not the machine's.")
    if idle and idle["median"] < 0.05:
        out.append("- The machine had no idle time during the throughput tests: every result is CPU-bound "
                   "on the shared cores, so a ratio compares how the modes share 2 CPUs with the generator, "
                   "the receiver and each other.")
    for s in sizes:
        sink = stats([received_pps(r) for r in groups.get(("sink", "gen-udp", s), [])])
        k = stats([received_pps(r) for r in groups.get(("kernel", "gen-udp", s), [])])
        if sink and k and sink["median"] and k["median"] > 0.8 * sink["median"]:
            out.append(f"- {s} B: kernel forwarding reached {k['median'] / sink['median']:.2f}× of what the "
                       "generator alone offers: the generator limits the baseline, so the ratio against the "
                       "kernel overstates pktcrypt.")
        elif sink and k and sink["median"]:
            out.append(f"- {s} B (trafgen): the generator alone offers {sink['median'] / k['median']:.1f}× what "
                       "kernel forwarding delivers: it does not limit the baseline.")
    for test, size, title in [("iperf-udp", s, f"UDP {s} B (iperf3)") for s in sizes] + [("tcp", None, "TCP (iperf3)")]:
        k = groups.get(("kernel", test, size))
        if not k:
            continue
        gen = stats([parties(r)["generator"] + parties(r)["receiver"] for r in k])
        if test != "tcp":
            sent = stats([offered_pps(r) for r in k])
            got = stats([received_pps(r) for r in k])
            if sent and got and sent["median"] and got["median"] >= 0.9 * sent["median"]:
                out.append(f"- {title}: in the kernel mode the iperf3 client offered only {fmt_pps(sent['median'])}packets/s "
                           f"and {got['median'] / sent['median']:.0%} arrived: the sender limits the baseline (the "
                           "kernel's forwarding runs in its system calls, so it is slowed by the very work it "
                           "measures), so the ratio against the kernel overstates pktcrypt; use trafgen's rows.")
        elif gen and gen["median"] > 0.5:
            out.append(f"- {title}: in the kernel mode the iperf3 client and server used {gen['median']:.2f} cores "
                       "(with the forwarding run in their system calls): they share the limit.")
    if out:
        out = ["What limits these ratios in this run:", ""] + out + [""]
    return out


def main(argv):
    bench = None
    if "--benchmarks" in argv:
        i = argv.index("--benchmarks")
        bench = Path(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    note = None
    if "--note" in argv:
        i = argv.index("--note")
        note = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    rows = [json.loads(line) for line in Path(argv[1]).read_text().splitlines() if line.strip()]
    out = Path(argv[2])
    meta = json.loads(Path(argv[3]).read_text()) if len(argv) > 3 and Path(argv[3]).exists() else {}
    workers = []
    if len(argv) > 4 and Path(argv[4]).exists():
        workers = [json.loads(line) for line in Path(argv[4]).read_text().splitlines() if line.strip()]
    groups = group(rows)
    sizes = sorted({r["size"] for r in rows if r.get("size")})
    modes = [m for m in MODES if any(k[0] == m for k in groups)]
    runs = meta.get("runs", max((r["run"] for r in rows), default=0))
    by_run = defaultdict(dict)
    for r in rows:
        by_run[(r["test"], r.get("size"))][(r["mode"], r["run"])] = r

    L = []
    L += [
        "# Data-path benchmark: pktcrypt, kernel forwarding and WireGuard (boringtun)",
        "",
    ]
    if note:
        L += [f"> **{note}**", ""]
    L += [
        f"Generated by `benches/datapath.sh` and `scripts/bench_datapath_report.py` from one run: "
        f"{runs} round(s), {meta.get('seconds', '?')} s per test, every mode once per round "
        "(the order rotates), so the modes are measured interleaved under the same conditions. "
        f"Machine: {meta.get('cpus', '?')} CPUs ({meta.get('cpu', '?')}), kernel {meta.get('kernel', '?')}, "
        f"commit {meta.get('commit', '?')}{' (with uncommitted changes)' if meta.get('dirty') else ''}; "
        f"the run took {meta.get('duration', 0) / 60:.1f} minutes.",
    ]
    loads = [r["load1"] for r in rows]
    if loads:
        L.append(f"Load average (1 min) during the cases: median {statistics.median(loads):.2f}, "
                 f"{min(loads):.2f}–{max(loads):.2f}. A load above the benchmark's own (about 1.5–2) means other "
                 "work shared the CPUs; the *rest of the machine* columns below show how much.")
    L += [
        "",
        "**Topology.** hostA → gwA → wire (a bridge) → gwB → hostB, network namespaces joined by veth "
        f"pairs with {meta.get('queues', '?')} queue(s) each (`scripts/topology.sh`), tx offload off on every veth, "
        f"the hosts at MTU {meta.get('mtu', 1400)} (so every mode carries the same packets). All parties share the "
        "machine's CPUs: the generator, the kernel's veth processing, both gateways and the receiver.",
        "",
        "**Modes.** " + "; ".join(f"`{m}`: {NAMES[m]}" for m in modes) + ". pktcrypt: one binary (release, "
        "with the benchmark-only no-op backend), native XDP, AF_XDP copy mode, one worker per queue, "
        "default settings (status refresh every second: no spinning control thread; the `idle` table shows "
        f"it). boringtun {meta.get('boringtun', '')}: `boringtun-cli --threads {meta.get('boringtun_threads', '?')}` "
        "per gateway, configured with `wg`, the gateways forwarding between veth and its TUN (MTU 1420). "
        "`kernel`: ip_forward and routes in the gateways.",
        "",
        "**Tests.** *gen-udp*: trafgen (netsniff-ng, AF_PACKET TX ring, one process pinned to CPU 0, 16 UDP "
        "flows) sends as fast as it can; *iperf-udp*: iperf3 UDP at unlimited rate; *tcp*: iperf3 TCP; "
        f"{meta.get('queues', '?')} iperf3 stream(s), client pinned to CPU 0. Sizes are IP packet sizes. "
        "Received rates are counted at hostB (its IP layer's `InReceives`; for iperf3 UDP the "
        "server's count), never offered. *cost*: trafgen at a steady "
        f"{meta.get('rate', 0):,} packets/s, evenly spaced (a gap of {meta.get('gap_ns', 0):,} ns after each "
        "packet, calibrated at the start of the run; not trafgen's `--rate`, which sends each second's packets "
        "in one burst at full speed), a rate every mode should sustain on a quiet machine (compare offered "
        "and received in its table), for the CPU per packet.",
        "",
        "![throughput by mode and size](bench-datapath.svg)",
        "",
        "## Throughput",
        "",
        "Median of the runs (min–max).",
        "",
        "| mode | " + " | ".join(f"gen-udp {s} B (pkt/s)" for s in sizes)
        + " | " + " | ".join(f"iperf-udp {s} B (pkt/s)" for s in sizes) + " | tcp (Gb/s) |",
        "|---|" + "---:|" * (2 * len(sizes) + 1),
    ]
    for m in modes:
        cells = []
        for s in sizes:
            cells.append(fmt_stat(stats([received_pps(r) for r in groups.get((m, "gen-udp", s), [])]), fmt_pps))
        for s in sizes:
            cells.append(fmt_stat(stats([received_pps(r) for r in groups.get((m, "iperf-udp", s), [])]), fmt_pps))
        cells.append(fmt_stat(stats([tcp_gbps(r) for r in groups.get((m, "tcp", None), [])]), fmt_gbps))
        L.append(f"| {NAMES[m]} | " + " | ".join(cells) + " |")
    L += ["", "In Gb/s of IP packets (median): " + "; ".join(
        f"{NAMES[m]}: " + ", ".join(
            f"{s} B {((stats([received_pps(r) for r in groups.get((m, 'gen-udp', s), [])]) or {'median': 0})['median']) * s * 8 / 1e9:.2f}"
            for s in sizes)
        for m in modes if m != "sink") + " (gen-udp).", ""]

    # Ratios and goals.
    def ratio(a, b, test, size):
        ga, gb = groups.get((a, test, size)), groups.get((b, test, size))
        if not ga or not gb:
            return None, None
        sa, sb = stats([throughput(r) for r in ga]), stats([throughput(r) for r in gb])
        if not sa or not sb or not sb["median"]:
            return None, None
        per = []
        for run in range(1, runs + 1):
            ra, rb = by_run[(test, size)].get((a, run)), by_run[(test, size)].get((b, run))
            if ra and rb and throughput(rb):
                per.append(throughput(ra) / throughput(rb))
        return sa["median"] / sb["median"], stats(per)

    tests = [("gen-udp", s, f"UDP {s} B (trafgen)") for s in sizes] + \
            [("iperf-udp", s, f"UDP {s} B (iperf3)") for s in sizes] + [("tcp", None, "TCP (iperf3)")]
    L += ["## Ratios and the goals of issue 15", "",
          "Ratio of the medians; in brackets the range of the per-round ratios (the two modes measured "
          "minutes apart in the same round). Goals: pktcrypt ≥ 0.9× kernel forwarding for UDP, ≥ 0.6× for "
          "TCP, ≥ 4× boringtun in all three.", "",
          "| test | AES-GCM / kernel | AES-GCM generic XDP / kernel | ChaCha20 / kernel | no-op / kernel | AES-GCM / boringtun | ChaCha20 / boringtun | generic / native XDP (AES-GCM) | goals (AES-GCM) |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    goal_rows = []
    for test, size, title in tests:
        cells, verdict = [], []
        for a, b in (("aes", "kernel"), ("aes-generic", "kernel"), ("chacha", "kernel"), ("null", "kernel"),
                     ("aes", "boringtun"), ("chacha", "boringtun"), ("aes-generic", "aes")):
            med, per = ratio(a, b, test, size)
            cells.append("–" if med is None else (f"**{med:.2f}**" if a == "aes" else f"{med:.2f}")
                         + (f" ({per['min']:.2f}–{per['max']:.2f})" if per and per["n"] > 1 else ""))
            if a == "aes" and med is not None:
                goal = (0.6 if test == "tcp" else 0.9) if b == "kernel" else 4.0
                verdict.append(f"{'met' if med >= goal else 'missed'} ≥ {goal}× {b}")
                goal_rows.append((title, b, med, goal))
        L.append(f"| {title} | " + " | ".join(cells) + f" | {', '.join(verdict) or '–'} |")
    L.append("")
    L += caveats(rows, groups, sizes)

    # Is the generator the limit?
    L += ["## Which side limited the result", "",
          "CPU of every party, in cores (1.00 = one CPU busy for the whole test; the machine has "
          f"{meta.get('cpus', '?')}), medians of the runs. *generator*: trafgen or the iperf3 client with "
          "everything it waited for; *receiver*: the iperf3 server; *workers*: the gateways' worker threads "
          "(pktcrypt) or all of boringtun's threads; *control*: pktcrypt's control thread and any other "
          "thread; *softirq*: the kernel's softirq time on all CPUs; *busy* and *idle*: the whole machine "
          "(/proc/stat); *rest*: busy time not charged to any party (softirq run outside their context, "
          "kernel threads, other sessions). The kernel here has no `CONFIG_IRQ_TIME_ACCOUNTING`: softirq "
          "time is sampled by the timer tick and also counted as system time of the task it ran in — a veth "
          "transmit runs the receiving side's processing (and, in the kernel mode, the whole forwarding path) "
          "at the end of the sender's system call, so the generator's time includes it.", "",
          "| mode | test | received | offered | generator | receiver | workers (busiest thread) | control | softirq | busy | idle | rest |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def med(vals):
        s = stats(vals)
        return None if not s else s["median"]

    def c(v):
        return "–" if v is None else f"{v:.2f}"

    for test, size, title in tests:
        for m in modes:
            rs = groups.get((m, test, size))
            if not rs:
                continue
            ps = [parties(r) for r in rs]
            rec = med([throughput(r) for r in rs])
            off = med([offered_pps(r) for r in rs]) if test != "tcp" else None
            recs = fmt_gbps(rec) + " Gb/s" if test == "tcp" else fmt_pps(rec)
            L.append(f"| {m} | {title} | {recs} | {fmt_pps(off) if off is not None else '–'} | "
                     f"{c(med([p['generator'] for p in ps]))} | {c(med([p['receiver'] for p in ps]))} | "
                     f"{c(med([p['workers'] for p in ps]))} ({c(med([p['worker_max_cpu'] for p in ps]))}) | "
                     f"{c(med([p['control'] for p in ps]))} | {c(med([p['softirq'] for p in ps]))} | "
                     f"{c(med([p['busy'] for p in ps]))} | {c(med([p['idle'] for p in ps]))} | "
                     f"{c(med([p['rest'] for p in ps]))} |")
    sink = {s: stats([received_pps(r) for r in groups.get(("sink", "gen-udp", s), [])]) for s in sizes}
    L.append("")
    for s in sizes:
        k = stats([received_pps(r) for r in groups.get(("kernel", "gen-udp", s), [])])
        if sink.get(s) and k:
            share = k["median"] / sink[s]["median"] if sink[s]["median"] else 0
            L.append(f"- {s} B: the generator alone puts {fmt_pps(sink[s]['median'])}packets/s into the veth "
                     f"(dropped by XDP at gwA); kernel forwarding delivers {fmt_pps(k['median'])}packets/s, "
                     f"{share:.2f}× of that.")
    L += ["",
          "Read the table this way: when *idle* is near 0 the machine's CPUs were the limit; a party near "
          "1.00 held a whole CPU (the generator is pinned to one); if the generator alone offers much more "
          "than a mode delivers, and the offered rate in that mode exceeds the received, the drops happened "
          "downstream of the generator, not in it.", ""]

    # Per-packet cost at the steady rate.
    costs = {}
    for m in modes:
        for s in sizes:
            pp = [per_packet(r) for r in groups.get((m, "cost", s), [])]
            pp = [p for p in pp if p]
            if not pp:
                continue
            costs[(m, s)] = {k: stats([p[k] for p in pp]) for k in pp[0]}
            costs[(m, s)]["worker_busy"] = (costs[(m, s)]["worker_busy"] or {}).get("median")
    L += ["## Cost per packet at a steady offered rate", "",
          "![cost per packet](bench-datapath-cost.svg)", "",
          f"trafgen offers about {meta.get('rate', 0):,} packets/s, evenly spaced, for {meta.get('seconds', '?')} s; ns of CPU per packet "
          "received at hostB, medians (min–max). *worker busy*: pktcrypt's `busy_ns` counter of both gateways "
          "(thread CPU time in worker loop passes that had packets: receive, seal or open, transmit, the "
          "kernel's copy-mode work in the TX kick); *worker CPU*: all CPU time of the workers (also waking "
          "up and polling; boringtun: all its threads); *machine*: all busy CPU of the machine per packet "
          "(generator, gateways, kernel, and any other session's work: meaningful only on a quiet machine). "
          "The figures are per packet *received*: where received falls short of offered, work on packets "
          "lost downstream is in them (and the mode did not keep up with the rate on this run).", "",
          "| mode | size | offered pkt/s | received pkt/s | worker busy ns | worker CPU ns | generator ns | softirq ns | machine ns |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (m, s), cst in costs.items():
        wb = cst["worker_busy"]
        L.append(f"| {m} | {s} B | {fmt_stat(cst['offered_pps'], fmt_pps)} | {fmt_stat(cst['received_pps'], fmt_pps)} | "
                 f"{'–' if wb is None else f'{wb:,.0f}'} | {fmt_stat(cst['workers'], lambda v: f'{v:,.0f}')} | "
                 f"{fmt_stat(cst['generator'], lambda v: f'{v:,.0f}')} | {fmt_stat(cst['softirq'], lambda v: f'{v:,.0f}')} | "
                 f"{fmt_stat(cst['busy'], lambda v: f'{v:,.0f}')} |")
    L.append("")
    for s in sizes:
        n = (costs.get(("null", s)) or {}).get("worker_busy")
        for m in ("aes", "chacha"):
            v = (costs.get((m, s)) or {}).get("worker_busy")
            if n and v:
                L.append(f"- {s} B: {NAMES[m]} / no-op cipher, worker busy time per packet = **{v / n:.2f}** "
                         f"(the cipher's share of the worker's busy time: {max(v - n, 0) / v:.0%})")
    L.append("")

    # Idle daemons.
    idle = [r for r in rows if r["test"] == "idle"]
    if idle:
        L += ["## Idle daemons", "",
              "The gateways' CPU with the tunnel up and no traffic, measured before each mode's tests, "
              "in % of one core (median, max): a spinning thread would show here (boringtun: all its threads "
              "under workers).", "",
              "| mode | gwA workers | gwA control + other | gwB workers | gwB control + other |",
              "|---|---:|---:|---:|---:|"]
        for m in modes:
            rs = [r for r in idle if r["mode"] == m and r["cpu"].get("gateways")]
            if not rs:
                continue
            cells = []
            for g in ("gwA", "gwB"):
                for i in (0, 1):
                    vals = [cores(gateway_roles(r, g)[i] or 0.0, r) for r in rs]
                    cells.append(f"{100 * statistics.median(vals):.2f} %, {100 * max(vals):.2f} %")
            L.append(f"| {m} | " + " | ".join(cells) + " |")
        L.append("")

    if workers:
        L += ["## Worker scaling of the packet path", "",
              "`benches/benches/workers.rs` (run first with `WORKERS_BENCH=1`): N threads seal a batch of 64 "
              "packets and open it again through the shared `DataPlane`s the workers use, all through one SA "
              "or each through its own; no kernel and no generator on the cores.", "",
              "| IP size | SAs | 1 thread (packets/s) | 2 threads (packets/s) | 2 / 1 | refused by the window (2 threads) |",
              "|---|---|---|---|---|---|"]
        for w in workers:
            L.append(f"| {w['size']} B | {'one shared' if w['one_sa'] else 'one per thread'} | {w['one_thread_pps']:,.0f} | "
                     f"{w['two_threads_pps']:,.0f} | **{w['ratio']:.2f}** | {w.get('two_threads_refused', 0)} |")
        L.append("")

    # Hand-measured notes on the worker loop (the before/after of issue 15), kept with the bench.
    notes = Path(__file__).resolve().parent.parent / "benches" / "datapath-cheaper.md"
    if notes.exists():
        L += [notes.read_text().rstrip("\n"), ""]

    L += ["## Reproduce", "",
          "As root on Debian 12 (installs netsniff-ng, xdp-tools, wireguard-tools and `cargo install "
          "boringtun-cli --locked` through `scripts/setup.sh --bench`; holds `/tmp/pktcrypt-netns.lock`):", "",
          "```",
          f"RUNS={runs} SECS={meta.get('seconds', 5)} RATE={meta.get('rate', 30000)} GAP_NS={meta.get('gap_ns', 0)} QUEUES={meta.get('queues', 2)} benches/datapath.sh   # this run",
          "benches/datapath.sh             # the full run: RUNS=5 SECS=5, about 22 minutes on 2 cores",
          "QUICK=1 benches/datapath.sh     # smoke run: one round of 2 s tests, report in target/bench-datapath/",
          "python3 scripts/bench_datapath_report.py target/bench-datapath/results.jsonl BENCH_DATAPATH.md \\",
          "    target/bench-datapath/meta.json   # the report again from the raw results",
          "```", "",
          f"Tools: {meta.get('trafgen', 'trafgen')}, {meta.get('iperf3', 'iperf3')}, boringtun-cli {meta.get('boringtun', '')}. "
          "Raw results, one JSON line per case: `target/bench-datapath/results.jsonl`.", ""]
    out.write_text("\n".join(L))
    svg_throughput(groups, [(t, s, "pps" if t != "tcp" else "gbps", title) for t, s, title in tests],
                   out.parent / "bench-datapath.svg")
    svg_cost(costs, sizes, out.parent / "bench-datapath-cost.svg")

    if bench:
        summary = ["<!-- datapath:begin -->",
                   f"Data path, from [BENCH_DATAPATH.md](BENCH_DATAPATH.md) (one run of `benches/datapath.sh`, "
                   f"{runs} interleaved round(s), commit {meta.get('commit', '?')}): medians of pktcrypt AES-256-GCM against "
                   "kernel forwarding and boringtun in the same run. Read its section *What limits these ratios* "
                   "before quoting a row (UDP: trafgen's rows are the ones whose generator is shown not to limit "
                   "the baseline).", ""]
        if note:
            summary += [f"> **{note}**", ""]
        summary += ["| test | against | ratio | goal | met? |", "|---|---|---:|---:|---|"]
        for title, b, v, goal in goal_rows:
            summary.append(f"| {title} | {b} | {v:.2f}× | ≥ {goal}× | {'yes' if v >= goal else 'no'} |")
        summary.append("<!-- datapath:end -->")
        text = bench.read_text()
        if "<!-- datapath:begin -->" in text:
            head, rest = text.split("<!-- datapath:begin -->", 1)
            tail = rest.split("<!-- datapath:end -->", 1)[1]
            text = head + "\n".join(summary) + tail
        else:
            text = text.rstrip("\n") + "\n\n## Data path against kernel forwarding and WireGuard (issue 15)\n\n" + "\n".join(summary) + "\n"
        bench.write_text(text)
    print(out.read_text())


if __name__ == "__main__":
    main(sys.argv)
