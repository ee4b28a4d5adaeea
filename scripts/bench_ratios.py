#!/usr/bin/env python3
"""Speed ratios of the AEAD benchmarks against ring, from criterion's own estimates.

speed ratio = ring's time / candidate's time, both from the same run (> 1: the candidate is
faster). Each criterion group (`seal/<suite>/<size>`, `open/<suite>/<size>`, `batch32/...`) holds
every candidate, run back to back; the baseline is `ring` (or `ring-per-packet` in the batch
groups). Times are criterion's median estimates (ns, not rounded).

Several runs (criterion `--save-baseline NAME`, one name per run) give one ratio per run; the
table shows their median and, with more than one run, the range.

usage: bench_ratios.py [--criterion DIR] [--runs r1,r2,r3] [--filter PREFIX] [--pivot]
(--pivot: one row per group, one column per candidate: the ratio only)
"""
import argparse
import json
import os
import statistics
import sys
from collections import defaultdict

BASELINES = ("ring", "ring-per-packet")


def load(criterion_dir, run):
    """{group: {function: median ns}} for one saved run."""
    out = defaultdict(dict)
    for root, _dirs, files in os.walk(criterion_dir):
        if os.path.basename(root) != run or "estimates.json" not in files:
            continue
        meta_path = os.path.join(root, "benchmark.json")
        if not os.path.exists(meta_path):
            continue
        with open(meta_path) as f:
            meta = json.load(f)
        with open(os.path.join(root, "estimates.json")) as f:
            est = json.load(f)
        group = meta["group_id"]
        function = meta["function_id"] or ""
        if meta.get("value_str"):
            function = f"{function}/{meta['value_str']}" if function else meta["value_str"]
        out[group][function] = est["median"]["point_estimate"]
    return out


def sort_key(group):
    parts = group.split("/")
    size = next((int(p) for p in parts if p.isdigit()), 0)
    return (parts[0], parts[1] if len(parts) > 1 else "", size)


def fmt_ratio(values):
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.2f}x"
    return f"{med:.2f}x ({min(values):.2f}-{max(values):.2f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--criterion", default="target/criterion")
    ap.add_argument("--runs", default="new", help="comma-separated criterion baseline names")
    ap.add_argument("--filter", default="", help="only groups starting with this prefix")
    ap.add_argument("--pivot", action="store_true", help="one row per group, ratios only")
    args = ap.parse_args()
    runs = [r for r in args.runs.split(",") if r]
    data = [load(args.criterion, r) for r in runs]
    groups = sorted({g for d in data for g in d if g.startswith(args.filter)}, key=sort_key)
    if not groups:
        sys.exit(f"no criterion results for runs {runs} under {args.criterion}")
    print(f"runs: {', '.join(runs)}; ratio = ring's time / candidate's time in the same run"
          + ("; median (range) over the runs" if len(runs) > 1 else ""))
    print()
    if args.pivot:
        pivot(data, groups)
        return
    print("| group | candidate | ns (median) | speed vs ring |")
    print("|---|---|---:|---:|")
    for group in groups:
        functions = sorted({f for d in data for f in d.get(group, {})})
        for fn in functions:
            if fn in BASELINES:
                continue
            ns, ratios = [], []
            for d in data:
                g = d.get(group, {})
                if fn not in g:
                    continue
                ns.append(g[fn])
                base = next((g[b] for b in BASELINES if b in g), None)
                if base:
                    ratios.append(base / g[fn])
            if not ns:
                continue
            ratio = fmt_ratio(ratios) if ratios else "-"
            print(f"| {group} | {fn} | {statistics.median(ns):.1f} | {ratio} |")


def pivot(data, groups):
    columns = []
    for g in groups:
        for d in data:
            for fn in d.get(g, {}):
                if fn not in BASELINES and fn not in columns:
                    columns.append(fn)
    order = ["pktcrypt-ring+aws-lc", "pktcrypt-ring", "pktcrypt-aws-lc", "pktcrypt-rustcrypto"]
    first_seen = list(columns)
    columns.sort(key=lambda c: (order.index(c) if c in order else len(order), first_seen.index(c)))
    print("| group | ring ns | " + " | ".join(columns) + " |")
    print("|---|---:|" + "---:|" * len(columns))
    for g in groups:
        base = [next((d[g][b] for b in BASELINES if b in d.get(g, {})), None) for d in data]
        base_ns = [b for b in base if b]
        cells = []
        for fn in columns:
            ratios = [b / d[g][fn] for b, d in zip(base, data) if b and fn in d.get(g, {})]
            cells.append(fmt_ratio(ratios) if ratios else "")
        ns = f"{statistics.median(base_ns):.0f}" if base_ns else "-"
        print(f"| {g} | {ns} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
