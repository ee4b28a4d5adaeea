#!/usr/bin/env python3
"""Turns criterion's bencher output into speed ratios against a baseline in the same run.

speed ratio = baseline time / candidate time  (> 1: the candidate is faster)
"""
import re
import sys
from collections import defaultdict

LINE = re.compile(r"^test (\S+) \.\.\. bench:\s+([\d,]+) ns/iter")


def main(path):
    groups = defaultdict(dict)
    for line in open(path):
        m = LINE.match(line)
        if not m:
            continue
        name, ns = m.group(1), int(m.group(2).replace(",", ""))
        parts = name.split("/")
        if parts[0].startswith("batch"):
            group, impl = "/".join(parts[:3]), parts[3]
        else:  # seal/<suite>/<impl>/<size>
            group, impl = f"{parts[0]}/{parts[1]}/{parts[3]}", parts[2]
        groups[group][impl] = ns
    print("\n| benchmark | candidate | ns | speed vs ring | speed vs openssl |")
    print("|---|---|---:|---:|---:|")
    for group, impls in groups.items():
        ring = impls.get("ring") or impls.get("ring-per-packet")
        ossl = impls.get("openssl")
        for impl, ns in impls.items():
            if impl in ("ring", "ring-per-packet", "openssl"):
                continue
            vs_ring = f"{ring / ns:.2f}x" if ring else "-"
            vs_ossl = f"{ossl / ns:.2f}x" if ossl else "-"
            print(f"| {group} | {impl} | {ns} | {vs_ring} | {vs_ossl} |")
        if ossl and ring:
            print(f"| {group} | openssl | {ossl} | {ring / ossl:.2f}x | 1.00x |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/bench.txt")
