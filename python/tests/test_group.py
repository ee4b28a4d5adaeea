"""Group mode in one process: a controller and three members wired in memory, rollouts with and
without control loss, and the group API's errors."""
from __future__ import annotations

import random
from typing import List, Optional

import pytest

import pktcrypt
from conftest import ipv4

MEMBERS = 3
SETTINGS: dict[str, float] = {"rekey_interval": 1.0, "retry": 0.1, "max_backoff": 0.4, "phase_grace": 0.02}


class Group:
    """A controller and members wired in memory, with simulated time and optional control loss."""

    def __init__(self, n: int = MEMBERS, loss: float = 0.0, seed: int = 1, derived: bool = False) -> None:
        self.t = 1000.0
        self.rng = random.Random(seed)
        self.loss = loss
        self.lost = 0
        group_key = pktcrypt.keygen(pktcrypt.Suite.AES_128_GCM, spi=0x10000)
        keys = [pktcrypt.keygen(spi=0x20000 + i) for i in range(n)]
        self.controller = pktcrypt.GroupController(
            group_key, derived=derived, max_retries=12, **SETTINGS  # type: ignore[arg-type]
        )
        self.members: List[pktcrypt.GroupMember] = []
        for i, key in enumerate(keys):
            self.controller.add_member(i, key, now=self.t)
            self.members.append(
                pktcrypt.GroupMember(i, n, key, group_key, max_retries=12, now=self.t, **SETTINGS)  # type: ignore[arg-type]
            )
        self.phases: List[set[pktcrypt.GroupPhase]] = [set() for _ in range(n)]

    def dropped(self) -> bool:
        if self.rng.random() < self.loss:
            self.lost += 1
            return True
        return False

    def pump(self) -> None:
        moved = True
        while moved:
            moved = False
            for member, dgram in self.controller.transmits():
                moved = True
                if not self.dropped():
                    p = self.members[member].open(dgram, now=self.t)
                    assert (p.kind, p.peer) == ("control", pktcrypt.CONTROLLER)
            for i, m in enumerate(self.members):
                for dgram in m.transmits():
                    moved = True
                    if not self.dropped():
                        p = self.controller.open(dgram, now=self.t)
                        assert (p.kind, p.peer) == ("control", i)

    def step(self, dt: float = 0.01) -> None:
        self.t += dt
        for ep in [self.controller, *self.members]:
            deadline = ep.poll_timeout()
            if deadline is not None and deadline <= self.t:
                ep.handle_timeout(now=self.t)
        self.pump()
        for i, m in enumerate(self.members):
            self.phases[i].add(m.group_status().phase)

    def ready(self) -> bool:
        return all(m.group_status().can_seal for m in self.members)

    def data(self, counter: int) -> int:
        """Every member that can seal sends one packet; every other member opens it."""
        opened = 0
        for i, m in enumerate(self.members):
            if not m.group_status().can_seal:
                with pytest.raises(pktcrypt.SealError):
                    m.seal(ipv4(60), now=self.t)
                continue
            inner = ipv4(40 + counter % 300, counter)
            sealed = m.seal(inner, now=self.t)
            for j, other in enumerate(self.members):
                if j != i:
                    p = other.open(sealed, now=self.t)
                    assert (p.kind, p.peer, p.data) == ("data", i, inner)
                    opened += 1
        return opened


def joined(loss: float = 0.0, derived: bool = False) -> Group:
    g = Group(loss=loss, derived=derived)
    for _ in range(300):
        g.step()
        if g.ready():
            return g
    raise AssertionError("the members never got their first keys")


def test_rollouts_every_member_opens_every_other() -> None:
    g = joined()
    first = g.controller.group_status().generation
    opened = 0
    for s in range(400):  # 4 s of simulated time, a rollout every second
        g.step()
        opened += g.data(s)
    st = g.controller.group_status()
    assert st.generation - first >= 3
    assert st.member_count == MEMBERS and st.active_members == (0, 1, 2)
    assert opened == 400 * MEMBERS * (MEMBERS - 1)
    for i, m in enumerate(g.members):
        ms = m.group_status()
        assert (ms.index, ms.member_count) == (i, MEMBERS)
        assert ms.generation + 1 >= st.generation and ms.tx_generation > 0 and ms.can_seal
        assert g.phases[i] == set(pktcrypt.GroupPhase)  # every phase of a rollout was seen
        assert m.status(i).packets_sealed > 0 and m.status(i).tx_generation == ms.tx_generation
        assert m.status((i + 1) % MEMBERS).packets_opened > 0
        assert any(sa.outbound for sa in m.export_sas(i))
        assert m.drops().get("auth_failed", 0) == 0
    assert g.controller.status(0).newest_generation >= 1  # the member's control channel


@pytest.mark.parametrize("derived", [False, True], ids=["distributed", "derived"])
def test_rollouts_survive_control_loss(derived: bool) -> None:
    """In derived mode every member computes each group key from the nonces it is sent."""
    g = joined(derived=derived)
    g.loss = 0.2
    before = g.controller.group_status().generation
    opened = 0
    for s in range(600):
        g.step()
        opened += g.data(s)
    g.loss = 0.0
    g.controller.rekey(now=g.t)
    for s in range(100):
        g.step()
        opened += g.data(s)
    st = g.controller.group_status()
    print(f"group: {opened} packets opened, rollouts {st.generation - before}, control lost {g.lost}")
    assert g.lost > 20
    assert st.generation - before >= 4
    assert opened == 700 * MEMBERS * (MEMBERS - 1)  # none lost to a key mismatch
    assert st.active_members == (0, 1, 2)
    assert all(m.group_status().generation + 1 >= st.generation for m in g.members)


def test_bulk_calls_and_context_managers() -> None:
    g = joined()
    packets = [ipv4(60, i) for i in range(10)]
    sealed = g.members[0].seal_many(packets, now=g.t)
    opened = g.members[1].open_many(sealed + [b"\x00" * 40], now=g.t)
    assert [p.data for p in opened[:10] if isinstance(p, pktcrypt.Packet)] == packets
    assert isinstance(opened[10], pktcrypt.DroppedError)
    with g.members[2] as m:
        assert m.role is pktcrypt.Role.GROUP_MEMBER
    assert g.members[2].closed
    with pytest.raises(pktcrypt.PktcryptError, match="closed"):
        g.members[2].seal(ipv4(60))
    with g.controller as c:
        assert c.role is pktcrypt.Role.GROUP_CONTROLLER
    assert "closed=True" in repr(g.controller)


def test_errors_and_wrong_roles() -> None:
    group_key = pktcrypt.keygen()
    k0, k1 = pktcrypt.keygen(), pktcrypt.keygen()
    with pytest.raises(pktcrypt.RoleError, match="GroupController"):
        pktcrypt.Endpoint(pktcrypt.Role.GROUP_CONTROLLER)
    with pytest.raises(pktcrypt.RoleError, match="GroupMember"):
        pktcrypt.Endpoint(pktcrypt.Role.GROUP_MEMBER, k0)
    with pytest.raises(pktcrypt.InitKeyError, match="group_key"):
        pktcrypt.GroupController("pkc1-AAAA")
    with pytest.raises(pktcrypt.ConfigError, match="retry"):
        pktcrypt.GroupController(group_key, retry=0)
    with pytest.raises(pktcrypt.ConfigError, match="pfs"):
        pktcrypt.GroupController(group_key, pfs="sometimes")
    with pytest.raises(pktcrypt.ConfigError, match="replay_window"):
        pktcrypt.GroupController(group_key, replay_window=100)
    with pytest.raises(pktcrypt.ConfigError, match="rekey_interval"):
        pktcrypt.GroupController(group_key, rekey_interval=-1)
    with pytest.raises(pktcrypt.ConfigError, match="index"):
        pktcrypt.GroupMember(2, 2, k0, group_key)
    with pytest.raises(pktcrypt.InitKeyError, match="member_key"):
        pktcrypt.GroupMember(0, 2, group_key, group_key)
    with pytest.raises(pktcrypt.InitKeyError, match="member_key"):
        pktcrypt.GroupMember(0, 2, "not a key", group_key)
    with pytest.raises(OverflowError):
        pktcrypt.GroupMember(-1, 2, k0, group_key)

    c = pktcrypt.GroupController(group_key)
    with pytest.raises(pktcrypt.ConfigError, match="in order"):
        c.add_member(1, k1)
    with pytest.raises(pktcrypt.InitKeyError, match="member_key"):
        c.add_member(0, "pkc1-XYZ")
    c.add_member(0, k0)
    with pytest.raises(pktcrypt.InitKeyError):
        c.add_member(1, k0)  # every member needs a key of its own
    c.add_member(1, k1)
    with pytest.raises(pktcrypt.PktcryptError, match="no member 2"):
        c.status(2)
    assert c.group_status() == pktcrypt.GroupStatus(
        generation=0,
        phase=pktcrypt.GroupPhase.UPDATE_COMPLETED,
        rollout_in_progress=False,
        member_count=2,
    )
    with pytest.raises(pktcrypt.MalformedError):
        c.open(b"\x00" * 3)

    m = pktcrypt.GroupMember(0, 2, k0, group_key)
    with pytest.raises(pktcrypt.SealError, match="key"):
        m.seal(ipv4(60))  # no key before the first rollout
    with pytest.raises(pktcrypt.SealError, match="IPv4 or IPv6"):
        m.seal(b"\x00" * 40)
    with pytest.raises(pktcrypt.PktcryptError, match="no member 5"):
        m.status(5)
    st = m.group_status()
    assert (st.index, st.member_count, st.generation, st.tx_generation) == (0, 2, 0, 0)
    assert st.phase is pktcrypt.GroupPhase.UPDATE_COMPLETED and not st.rollout_in_progress and not st.can_seal
    join: Optional[bytes] = m.poll_transmit()
    assert join is not None  # it joins at once
    # The native layer refuses what does not fit the role, whatever the wrapper offers.
    with pytest.raises(pktcrypt.RoleError):
        c._native.seal(ipv4(60))
    with pytest.raises(pktcrypt.RoleError):
        m._native.rekey()
    with pytest.raises(pktcrypt.RoleError):
        m._native.add_member(0, k1)
