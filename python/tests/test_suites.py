"""Cipher agility on a live pair: a key server switches the suite of future generations (a
rotation through a list, a client's own suite, the server-wide suite) while data flows both
ways every 20 ms of virtual time and the server rekeys about every second. Every data packet
opens across every switch; the status shows the suite of the newest and the previous
generation; the suites follow the rule (generation g of a rotation of n: suites[(g - 1) % n]).
(ffi/tests/test_suites.c does the same in C, tests/tests/control_scenarios.rs in Rust.)"""

from __future__ import annotations

import pytest

import pktcrypt
from conftest import ipv4
from pktcrypt import Suite

T0 = 1000.0
STEP = 0.02


class Pair:
    def __init__(self) -> None:
        self.t = T0
        key = pktcrypt.keygen()
        self.server = pktcrypt.Endpoint(pktcrypt.Role.SERVER, rekey_interval=1.0, now=self.t)
        self.peer = self.server.add_peer(key, now=self.t)
        self.client = pktcrypt.Endpoint(pktcrypt.Role.CLIENT, key, now=self.t)
        self.opened = 0
        # The suite of each generation as the client held it.
        self.seen: dict[int, Suite] = {}
        self.pump()

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

    def send(self, src: pktcrypt.Endpoint, dst: pktcrypt.Endpoint, peer: int) -> None:
        inner = ipv4(200, self.opened)
        p = dst.open(src.seal(inner, peer=peer, now=self.t), now=self.t)
        assert (p.kind, p.data) == ("data", inner)
        self.opened += 1

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.t += STEP
            self.pump()
            self.send(self.client, self.server, 0)
            self.send(self.server, self.client, self.peer)
            self.pump()
            st = self.client.status()
            g = st.newest_generation
            if g not in self.seen:
                assert st.newest_suite is not None
                self.seen[g] = st.newest_suite
                if g > 1:
                    # The previous generation is held beside it, under its own suite.
                    assert st.previous_generation == g - 1
                    assert st.previous_suite == self.seen[g - 1]
                    assert self.server.status(self.peer).previous_suite == self.seen[g - 1]

    def top(self) -> int:
        return max(self.seen)


def test_suites_switch_on_a_live_pair_and_every_packet_opens() -> None:
    p = Pair()
    p.run(10)
    assert p.seen == {1: Suite.AES_256_GCM}

    rotation = [Suite.AES_256_GCM, Suite.CHACHA20_POLY1305, Suite.AES_128_GCM]
    p.server.set_suite_rotation(rotation)
    assert p.server.suite_for(p.peer, 5) == Suite.CHACHA20_POLY1305
    p.run(400)
    rotated = p.top()
    assert rotated >= 6
    for g in range(2, rotated + 1):
        assert p.seen[g] == rotation[(g - 1) % 3], p.seen
    assert set(p.seen.values()) == set(Suite)

    # A client's own suite beats the rotation.
    p.server.set_suite(Suite.CHACHA20_POLY1305, peer=p.peer)
    p.run(200)
    own = p.top()
    assert own >= rotated + 2
    assert all(p.seen[g] == Suite.CHACHA20_POLY1305 for g in range(rotated + 2, own + 1))

    # Taken away, and a server-wide suite, which ends the rotation.
    p.server.set_suite(None, peer=p.peer)
    p.server.set_suite(Suite.AES_128_GCM)
    assert p.server.suite_for(p.peer, 5) == Suite.AES_128_GCM
    p.run(200)
    assert p.top() >= own + 2
    assert all(p.seen[g] == Suite.AES_128_GCM for g in range(own + 2, p.top() + 1))
    assert p.server.drops() == {} or all(n == 0 for n in p.server.drops().values())
    assert p.opened > 1500


def test_suite_changes_are_refused_where_they_do_not_fit() -> None:
    p = Pair()
    with pytest.raises(pktcrypt.RoleError):
        p.client.set_suite(Suite.AES_128_GCM)
    with pytest.raises(pktcrypt.RoleError):
        p.client.set_suite_rotation([Suite.AES_128_GCM])
    with pytest.raises(pktcrypt.ConfigError, match=r"suites\[1\]: \"aes\""):
        p.server.set_suite_rotation([Suite.AES_128_GCM, "aes"])  # type: ignore[list-item]
    with pytest.raises(pktcrypt.ConfigError, match="suite"):
        p.server.set_suite("des")  # type: ignore[arg-type]
    with pytest.raises(pktcrypt.ConfigError, match="needs its peer"):
        p.server.set_suite(None)
    with pytest.raises(pktcrypt.PktcryptError, match="no peer 9"):
        p.server.set_suite(Suite.AES_128_GCM, peer=9)
    with pytest.raises(pktcrypt.PktcryptError, match="no peer 9"):
        p.server.suite_for(9, 1)
    # Nothing changed; an empty rotation is the server-wide suite again.
    assert p.server.suite_for(p.peer, 2) == Suite.AES_256_GCM
    p.server.set_suite_rotation([Suite.CHACHA20_POLY1305])
    assert p.server.suite_for(p.peer, 2) == Suite.CHACHA20_POLY1305
    p.server.set_suite_rotation([])
    assert p.server.suite_for(p.peer, 2) == Suite.CHACHA20_POLY1305
