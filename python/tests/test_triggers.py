"""Every rekey trigger of ``Endpoint(triggers=...)``, on the client and on the key server, fires at
its threshold, counted packet by packet. The handshake's own messages count too and the status
cannot tell them apart from the init key's, so each trigger runs at a threshold K and at K + 3
and must rotate the pair exactly three packets (forgeries, kilobytes) later, never earlier. The
client's age trigger fires at the age and not a millisecond before. Also the 8192-packet replay
window's edges. (tests/tests/triggers.rs checks the same in Rust against the newest generation's
counters; ffi/tests/test_triggers.c in C.)"""

from __future__ import annotations

from typing import Optional

import pytest

import pktcrypt
from conftest import ipv4

T0 = 1000.0
STEPS = 6


class Pair:
    def __init__(self, side: str, triggers: dict[str, float], window: int = 1024) -> None:
        self.t = T0
        key = pktcrypt.keygen()
        quiet: dict[str, float] = {}
        self.server = pktcrypt.Endpoint(
            pktcrypt.Role.SERVER,
            rekey_interval=None,
            reorder_grace=0.0,
            replay_window=window,
            triggers=triggers if side == "server" else quiet,
            now=self.t,
        )
        self.peer = self.server.add_peer(key, now=self.t)
        self.client = pktcrypt.Endpoint(
            pktcrypt.Role.CLIENT,
            key,
            hello_interval=3600.0,
            replay_window=window,
            triggers=triggers if side == "client" else quiet,
            now=self.t,
        )
        self.pump()
        assert self.newest() == 1

    def pump(self) -> None:
        for _ in range(20):
            moved = False
            for src, dst in ((self.client, self.server), (self.server, self.client)):
                deadline = src.poll_timeout()
                if deadline is not None and deadline <= self.t:
                    src.handle_timeout(now=self.t)
                for _peer, dgram in src.transmits():
                    moved = True
                    assert dst.open(dgram, now=self.t).kind == "control"
            if not moved:
                return
        raise AssertionError("control messages never settle")

    def newest(self) -> int:
        return self.client.status().newest_generation

    def send(self, from_server: bool, length: int, forge: bool = False) -> None:
        src, dst = (self.server, self.client) if from_server else (self.client, self.server)
        peer = self.peer if from_server else 0
        sealed = bytearray(src.seal(ipv4(length, 7), peer=peer, now=self.t))
        if forge:
            sealed[-1] ^= 1
            with pytest.raises(pktcrypt.AuthenticationError):
                dst.open(bytes(sealed), now=self.t)
        else:
            assert dst.open(bytes(sealed), now=self.t).kind == "data"


def step(p: Pair, side: str, trigger: str, i: int) -> None:
    server = side == "server"
    if trigger == "packets_sealed":
        p.send(server, 100)
    elif trigger == "packets_opened":
        p.send(not server, 100)
    elif trigger == "packets_total":
        # A client alternates sealing and opening; a key server opens (its client's packets are
        # the proofs it rotates at).
        p.send(server if (i % 2 and not server) else not server, 60)
    elif trigger == "bytes":
        # 1000-byte packets against multiples of 1000 bytes: the handshake's control messages
        # (well under 1000 bytes) cannot move the step at which it fires.
        p.send(not server if server else server, 1000)
    elif trigger == "auth_failures":
        p.send(not server, 100, forge=True)
    else:
        raise AssertionError(trigger)


def fires_at(side: str, trigger: str, k: int) -> Optional[int]:
    value = k * 1000 if trigger == "bytes" else k
    p = Pair(side, {trigger: value})
    for i in range(1, 2 * k + 1):
        step(p, side, trigger, i)
        p.pump()
        # A key server rotates a client at its next proof of the key (any packet under it from
        # the client): where the step is not one itself, the client sends one, which counts
        # only towards what is not being tested (the server's packets opened).
        if side == "server" and trigger in ("packets_sealed", "auth_failures") and p.newest() == 1:
            p.send(False, 40)
            p.pump()
        if p.newest() != 1:
            assert p.newest() == 2
            return i
    return None


TRIGGERS = ["packets_sealed", "packets_opened", "packets_total", "bytes", "auth_failures"]


@pytest.mark.parametrize("side", ["client", "server"])
@pytest.mark.parametrize("trigger", TRIGGERS)
def test_each_trigger_fires_at_its_threshold(side: str, trigger: str) -> None:
    k0 = fires_at(side, trigger, STEPS)
    k3 = fires_at(side, trigger, STEPS + 3)
    assert k0 is not None and k3 == k0 + 3, f"{side} {trigger}: step {k0} at K, {k3} at K + 3"


def test_the_client_age_trigger_fires_at_the_age() -> None:
    p = Pair("client", {"max_age": 90.0})
    installed = p.client.status().newest_installed
    assert installed is not None
    p.t = installed + 90.0 - 0.001
    p.pump()
    assert p.newest() == 1
    deadline = p.client.poll_timeout()
    assert deadline is not None and deadline <= installed + 90.0 + 1e-6
    p.t = installed + 90.0
    p.pump()
    assert p.newest() == 2


def test_unknown_and_bad_triggers_are_refused() -> None:
    with pytest.raises(pktcrypt.ConfigError, match="packets_totl"):
        pktcrypt.Endpoint(pktcrypt.Role.SERVER, triggers={"packets_totl": 5})
    with pytest.raises(pktcrypt.ConfigError, match="packets_total"):
        pktcrypt.Endpoint(pktcrypt.Role.SERVER, triggers={"packets_total": 0})


def test_the_8192_packet_window_edges() -> None:
    p = Pair("client", {}, window=8192)
    n = 8300
    sealed = [p.client.seal(ipv4(60, i % 256), now=p.t) for i in range(n)]
    assert p.server.open(sealed[n - 1], now=p.t).kind == "data"
    # With packet n - 1 on top, packet n - 8192 is the oldest in the window.
    with pytest.raises(pktcrypt.ReplayError):
        p.server.open(sealed[n - 8193], now=p.t)
    for i in range(n - 8192, n - 1):
        assert p.server.open(sealed[i], now=p.t).kind == "data"
    with pytest.raises(pktcrypt.ReplayError):
        p.server.open(sealed[n - 8192], now=p.t)


def test_rekey_on_demand() -> None:
    p = Pair("client", {})
    # A key server rotates its client at the client's next packet.
    assert p.server.rekey(p.peer, now=p.t) == 1
    p.pump()
    assert p.newest() == 1
    p.send(False, 40)
    p.pump()
    assert p.newest() == 2
    # A client asks at once (a moment later: rotations are rate-limited).
    p.t += 1.0
    assert p.client.rekey(now=p.t) == 1
    p.pump()
    assert p.newest() == 3
    assert p.server.rekey(now=p.t) == 1  # every client
    with pytest.raises(pktcrypt.SealError, match="no peer"):
        p.server.rekey(99, now=p.t)
    lonely = pktcrypt.Endpoint(pktcrypt.Role.CLIENT, pktcrypt.keygen())
    with pytest.raises(pktcrypt.SealError, match="no generation yet"):
        lonely.rekey()
