"""Bulk operations release the GIL: another Python thread runs Python code while one thread is
still inside seal_many. (A logical check, not a speed measurement: if the call held the GIL, the
main thread could not return from its sleep until the call had finished.)"""
from __future__ import annotations

import threading
import time

import pktcrypt
from conftest import connect, ipv4


def test_seal_many_releases_the_gil() -> None:
    key = pktcrypt.keygen(pktcrypt.Suite.CHACHA20_POLY1305)
    server = pktcrypt.Endpoint(pktcrypt.Role.SERVER)
    server.add_peer(key)
    client = pktcrypt.Endpoint(pktcrypt.Role.CLIENT, key, backend=pktcrypt.Backend.RUSTCRYPTO)
    connect(server, client)
    packets = [ipv4(64, i) for i in range(300_000)]  # long enough to outlast the window below
    started = threading.Event()
    done = threading.Event()
    result: list[list[bytes]] = []

    def worker() -> None:
        started.set()
        result.append(client.seal_many(packets))
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    started.wait()
    time.sleep(0.05)  # let the worker enter the native call
    ticks = 0
    window_end = time.monotonic() + 0.1
    while time.monotonic() < window_end:
        ticks += 1
    still_inside = not done.is_set()
    t.join()
    assert len(result[0]) == len(packets)
    assert still_inside, "seal_many finished before the window: make the batch larger"
    assert ticks > 0
