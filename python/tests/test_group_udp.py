"""Group mode over real UDP sockets on 127.0.0.1: the controller in this process, three members in
three child processes. Every member sends data to the other two while the controller rolls out a
new group key every half second and every process loses a fifth of the control datagrams it
should send; data keeps flowing across the rollouts."""
from __future__ import annotations

import multiprocessing
import random
import select
import socket
import time
from typing import Any

import pktcrypt
from conftest import ipv4

RUN = 5.0
MEMBERS = 3
SETTINGS: dict[str, Any] = {"rekey_interval": 0.5, "retry": 0.1, "max_backoff": 0.4, "max_retries": 12, "phase_grace": 0.02}
LOSS = 0.2


def run_member(
    index: int, key: str, group_key: str, ports: list[int], out: "multiprocessing.Queue[dict[str, Any]]"
) -> None:
    rng = random.Random(index)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", ports[index + 1]))
    controller = ("127.0.0.1", ports[0])
    others = [("127.0.0.1", ports[j + 1]) for j in range(MEMBERS) if j != index]
    sent = lost = 0
    received = [0] * MEMBERS
    with pktcrypt.GroupMember(index, MEMBERS, key, group_key, **SETTINGS) as m:
        end = time.monotonic() + RUN
        next_data = 0.0
        while time.monotonic() < end:
            if select.select([sock], [], [], 0.005)[0]:
                data = sock.recv(4096)
                try:
                    p = m.open(data)
                    if p.kind == "data":
                        received[p.peer] += 1
                except pktcrypt.DroppedError:
                    pass
            deadline = m.poll_timeout()
            if deadline is not None and deadline <= pktcrypt.now():
                m.handle_timeout()
            for dgram in m.transmits():
                if rng.random() < LOSS:
                    lost += 1
                else:
                    sock.sendto(dgram, controller)
            if time.monotonic() >= next_data and m.group_status().can_seal:
                next_data = time.monotonic() + 0.02
                sealed = m.seal(ipv4(100, sent))
                for a in others:
                    sock.sendto(sealed, a)
                sent += 1
        st = m.group_status()
        out.put(
            {
                "index": index,
                "sent": sent,
                "received": received,
                "lost": lost,
                "tx_generation": st.tx_generation,
                "auth_failed": m.drops().get("auth_failed", 0),
            }
        )


def free_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_controller_and_member_processes_over_udp_with_loss() -> None:
    group_key = pktcrypt.keygen()
    keys = [pktcrypt.keygen() for _ in range(MEMBERS)]
    ports = free_ports(MEMBERS + 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", ports[0]))
    controller = pktcrypt.GroupController(group_key, **SETTINGS)
    for i, k in enumerate(keys):
        controller.add_member(i, k)
    ctx = multiprocessing.get_context("fork")
    results: "multiprocessing.Queue[dict[str, Any]]" = ctx.Queue()
    procs = [ctx.Process(target=run_member, args=(i, k, group_key, ports, results)) for i, k in enumerate(keys)]
    for p in procs:
        p.start()
    rng = random.Random(99)
    lost = 0
    heard = [0] * MEMBERS
    first = 0
    end = time.monotonic() + RUN + 0.3
    while time.monotonic() < end:
        if select.select([sock], [], [], 0.005)[0]:
            data = sock.recv(4096)
            try:
                heard[controller.open(data).peer] += 1
            except pktcrypt.DroppedError:
                pass
        deadline = controller.poll_timeout()
        if deadline is not None and deadline <= pktcrypt.now():
            controller.handle_timeout()
        for member, dgram in controller.transmits():
            if rng.random() < LOSS:
                lost += 1
            else:
                sock.sendto(dgram, ("127.0.0.1", ports[member + 1]))
        if not first and len(controller.group_status().active_members) == MEMBERS:
            first = controller.group_status().generation
    reports = sorted((results.get(timeout=10) for _ in procs), key=lambda r: int(r["index"]))
    for p in procs:
        p.join(timeout=10)
        assert p.exitcode == 0
    st = controller.group_status()
    sent = sum(2 * r["sent"] for r in reports)
    opened = sum(sum(r["received"]) for r in reports)
    print(
        f"group udp: {sent} data packets sent member to member, {opened} opened; generation "
        f"{st.generation} ({st.generation - first} rollouts with all members); control lost on "
        f"purpose: {lost} by the controller, {sum(r['lost'] for r in reports)} by the members"
    )
    assert first > 0 and st.generation - first >= 3
    assert st.active_members == (0, 1, 2)
    assert lost > 0 and sum(r["lost"] for r in reports) > 0
    assert all(h > 0 for h in heard)
    for r in reports:
        i = r["index"]
        assert r["auth_failed"] == 0
        assert r["tx_generation"] + 1 >= st.generation
        assert r["sent"] > 50
        for j in range(MEMBERS):
            if j != i:
                # Only packets in flight at the start or the end may be missing.
                assert r["received"][j] >= reports[j]["sent"] - 30, (i, j, reports)
