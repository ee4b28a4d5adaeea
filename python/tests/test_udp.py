"""A key server and three clients over real UDP sockets on 127.0.0.1, rekeying through loss."""
from __future__ import annotations

import random
import select
import socket
import threading
import time

import pktcrypt
from conftest import ipv4

RUN = 4.0


def run_client(key: str, server_addr: tuple[str, int], results: dict[str, int], name: str) -> None:
    rng = random.Random(name)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    with pktcrypt.Endpoint(pktcrypt.Role.CLIENT, key, hello_interval=0.3, request_timeout=0.1, max_backoff=0.5) as ep:
        end = time.monotonic() + RUN
        sent = received = 0
        next_data = 0.0
        while time.monotonic() < end:
            if select.select([sock], [], [], 0.005)[0]:
                data = sock.recv(4096)
                try:
                    if ep.open(data).kind == "data":
                        received += 1
                except pktcrypt.DroppedError:
                    pass
            deadline = ep.poll_timeout()
            if deadline is not None and deadline <= pktcrypt.now():
                ep.handle_timeout()
            for _, dgram in ep.transmits():
                if rng.random() >= 0.2:  # lose a fifth of the control messages
                    sock.sendto(dgram, server_addr)
            # Data once the handshake is through (nothing is sealed under the init key).
            if time.monotonic() >= next_data and ep.status().tx_generation > 0:
                next_data = time.monotonic() + 0.02
                sock.sendto(ep.seal(ipv4(100)), server_addr)
                sent += 1
        results[name + ".sent"] = sent
        results[name + ".received"] = received
        results[name + ".generation"] = ep.status().tx_generation


def test_server_and_clients_over_udp() -> None:
    keys = [pktcrypt.keygen() for _ in range(3)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    addr = sock.getsockname()
    server = pktcrypt.Endpoint(pktcrypt.Role.SERVER, rekey_interval=0.5, reorder_grace=0.02)
    peers = [server.add_peer(k) for k in keys]
    results: dict[str, int] = {}
    threads = [threading.Thread(target=run_client, args=(k, addr, results, f"c{i}")) for i, k in enumerate(keys)]
    for t in threads:
        t.start()
    addrs: dict[int, tuple[str, int]] = {}
    received = {p: 0 for p in peers}
    end = time.monotonic() + RUN + 0.5
    next_data = 0.0
    while time.monotonic() < end:
        if select.select([sock], [], [], 0.005)[0]:
            data, src = sock.recvfrom(4096)
            try:
                packet = server.open(data)
                addrs[packet.peer] = src
                if packet.kind == "data":
                    received[packet.peer] += 1
            except pktcrypt.DroppedError:
                pass
        deadline = server.poll_timeout()
        if deadline is not None and deadline <= pktcrypt.now():
            server.handle_timeout()
        for peer, dgram in server.transmits():
            if peer in addrs:
                sock.sendto(dgram, addrs[peer])
        if time.monotonic() >= next_data:
            next_data = time.monotonic() + 0.02
            for peer, a in addrs.items():
                if server.status(peer).tx_generation > 0:
                    sock.sendto(server.seal(ipv4(100), peer=peer), a)
    for t in threads:
        t.join()
    for i, peer in enumerate(peers):
        generation = server.status(peer).newest_generation
        assert generation >= 4, server.status(peer)
        assert results[f"c{i}.generation"] + 1 >= generation
        assert received[peer] >= results[f"c{i}.sent"] - 20  # in flight at the end
        assert results[f"c{i}.received"] > 100
    assert server.drops().get("auth_failed", 0) == 0
