#!/usr/bin/env python3
"""One measured case of benches/datapath.sh, printed as one JSON line.

Runs a generator command (after `--`) and, optionally, a receiver command started before it, and
around them samples:
  - the packets the generator's interface sent and the receiver's interface and IP layer got
    (`ip -s -j link`, /proc/net/snmp of the receiving namespace): received is measured at the
    receiver, not offered;
  - the CPU time of every party: the generator and the receiver (rusage of the processes and all
    they waited for), each gateway's threads by role (workers, control thread = the main thread,
    others; ns on CPU from /proc/PID/task/TID/schedstat), the kernel's softirq time and the idle
    time of every CPU (/proc/stat);
  - pktcrypt's `busy_ns` and packet counters (`pktcrypt status`) when gateway sockets are given.
With `--idle SECONDS` and no command it samples an idle interval (daemons' CPU with no traffic).

Without CONFIG_IRQ_TIME_ACCOUNTING (the development kernel has none) softirq time is sampled by
the tick: a tick that lands in softirq context counts as softirq in /proc/stat *and* as system
time of the task it interrupted, so a generator's or worker's time includes the kernel's packet
processing run in its context (veth transmit runs the receiving side's processing at the end of
the sender's system call).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

USER_HZ = os.sysconf("SC_CLK_TCK")
STAT_FIELDS = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]


def proc_stat():
    """Per-CPU times in seconds from /proc/stat: {"cpu0": {"user": s, ...}, ...}."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"^(cpu\d+) (.*)$", line)
            if m:
                vals = [int(v) for v in m.group(2).split()]
                out[m.group(1)] = {k: vals[i] / USER_HZ for i, k in enumerate(STAT_FIELDS)}
    return out


def threads(pid):
    """{tid: (comm, ns on CPU)} of a process; {} when it is gone."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        out[int(tid)] = (comm, ns)
    return out


def role_of(pid, tid, comm):
    if comm.startswith("pktcrypt-work"):
        return "workers"
    if tid == pid:
        return "control"
    return "other"


def gateway_cpu(before, after, pid):
    """Seconds on CPU per role of a gateway's threads between two samples (threads that started
    in between count from zero), and per thread ("comm/tid")."""
    roles = {"workers": 0.0, "control": 0.0, "other": 0.0}
    per_thread = {}
    for tid, (comm, ns) in after.items():
        d = (ns - before.get(tid, (comm, 0))[1]) / 1e9
        roles[role_of(pid, tid, comm)] += d
        per_thread[f"{comm}/{tid}"] = d
    return roles, per_thread


def sh(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout


def link(ns, dev):
    """(rx_packets, rx_bytes, rx_dropped, tx_packets, tx_bytes, tx_dropped) of a device."""
    try:
        j = json.loads(sh(["ip", "-n", ns, "-s", "-j", "link", "show", dev]))[0]["stats64"]
    except (ValueError, IndexError, KeyError):
        return None
    return {
        "rx_packets": j["rx"]["packets"], "rx_bytes": j["rx"]["bytes"], "rx_dropped": j["rx"]["dropped"],
        "tx_packets": j["tx"]["packets"], "tx_bytes": j["tx"]["bytes"], "tx_dropped": j["tx"]["dropped"],
    }


def snmp(ns):
    """Ip and Udp counters of a namespace's /proc/net/snmp: {"Ip.InReceives": n, ...}."""
    text = sh(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"])
    out, lines = {}, text.splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        proto, names = head.split(":", 1)
        for k, v in zip(names.split(), vals.split(":", 1)[1].split()):
            if proto in ("Ip", "Udp", "Tcp"):
                out[f"{proto}.{k}"] = int(v)
    return out


def status(binary, sock):
    """pktcrypt's worker counters of one gateway, or {}."""
    try:
        return json.loads(sh([binary, "status", "--socket", sock]))["workers"]
    except (ValueError, KeyError, TypeError):
        return {}


def diff(a, b):
    if a is None or b is None:
        return None
    return {k: b[k] - a[k] for k in b if k in a and isinstance(b[k], (int, float))}


def sample(args):
    return {
        "t": time.monotonic(),
        "stat": proc_stat(),
        "threads": {pid: threads(pid) for pid in args.gateway_pid},
        "tx": link(args.tx_ns, args.tx_dev) if args.tx_ns else None,
        "rx": link(args.rx_ns, args.rx_dev) if args.rx_ns else None,
        "snmp": snmp(args.rx_ns) if args.rx_ns else None,
        "status": {s: status(args.bin, s) for s in args.status_socket},
    }


def run_rusage(cmd, stdout):
    """Starts cmd; returns a function that waits for it and gives (rc, user s, system s, output)."""
    p = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.DEVNULL, text=True)

    def wait():
        out = p.stdout.read() if p.stdout else ""
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        return p.returncode, ru.ru_utime, ru.ru_stime, out

    return p, wait


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="{}", help="JSON object merged into the output")
    ap.add_argument("--gateway-pid", type=int, action="append", default=[], help="a gateway process (repeat)")
    ap.add_argument("--gateway-name", action="append", default=[], help="its name (same order)")
    ap.add_argument("--status-socket", action="append", default=[], help="a pktcrypt status socket (repeat)")
    ap.add_argument("--bin", default="pktcrypt", help="the pktcrypt binary for `status`")
    ap.add_argument("--tx-ns", help="the generator's namespace")
    ap.add_argument("--tx-dev", default="eth0")
    ap.add_argument("--rx-ns", help="the receiver's namespace")
    ap.add_argument("--rx-dev", default="eth0")
    ap.add_argument("--receiver", help="a receiver command (shell words), started first, waited for after")
    ap.add_argument("--receiver-delay", type=float, default=0.3, help="seconds between receiver and generator")
    ap.add_argument("--idle", type=float, help="no command: sample an idle interval of SECONDS")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the generator command")
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    out = json.loads(args.label)

    recv = None
    if args.receiver:
        recv = run_rusage(args.receiver.split(), subprocess.PIPE)
        time.sleep(args.receiver_delay)
    s0 = sample(args)
    if cmd:
        _, wait = run_rusage(cmd, subprocess.PIPE)
        rc, gu, gs, gout = wait()
    else:
        time.sleep(args.idle or 1.0)
        rc, gu, gs, gout = 0, 0.0, 0.0, ""
    s1 = sample(args)
    secs = s1["t"] - s0["t"]
    out["seconds"] = secs
    out["rc"] = rc
    out["load1"] = float(open("/proc/loadavg").read().split()[0])

    cpu = {"generator": {"user": gu, "system": gs}}
    if recv:
        p, wait = recv
        try:
            rrc, ru, rs, rout = wait()
        except ChildProcessError:
            rrc, ru, rs, rout = -1, 0.0, 0.0, ""
        cpu["receiver"] = {"user": ru, "system": rs}
        out["receiver_rc"] = rrc
        out["receiver_output"] = try_json(rout)
    out["generator_output"] = try_json(gout)
    names = args.gateway_name + [str(p) for p in args.gateway_pid[len(args.gateway_name):]]
    cpu["gateways"] = {}
    for name, pid in zip(names, args.gateway_pid):
        roles, per_thread = gateway_cpu(s0["threads"][pid], s1["threads"][pid], pid)
        cpu["gateways"][name] = {"roles": roles, "threads": per_thread}
    machine = {}
    for c in s1["stat"]:
        machine[c] = {k: s1["stat"][c][k] - s0["stat"][c][k] for k in STAT_FIELDS}
    cpu["machine"] = machine
    out["cpu"] = cpu
    out["tx"] = diff(s0["tx"], s1["tx"])
    out["rx"] = diff(s0["rx"], s1["rx"])
    out["snmp"] = diff(s0["snmp"], s1["snmp"])
    out["status"] = {os.path.basename(s): diff(s0["status"][s], s1["status"][s]) for s in args.status_socket}
    print(json.dumps(out))


def try_json(text):
    text = (text or "").strip()
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return text[-2000:]
    if isinstance(doc, dict) and "end" in doc:  # iperf3: the summary, not the intervals
        return {k: doc[k] for k in ("end", "error") if k in doc}
    return doc


if __name__ == "__main__":
    sys.exit(main())
