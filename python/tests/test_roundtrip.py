from __future__ import annotations

import pytest

import pktcrypt
from conftest import Pair, ipv4


def test_round_trip_through_rotations(pair: Pair) -> None:
    opened = 0
    for i in range(500):  # 5 s of simulated time, keys rotate every second
        pair.step(0.01)
        for src, dst, peer in ((pair.client, pair.server, 0), (pair.server, pair.client, pair.peer)):
            inner = ipv4(20 + i % 1400, i)
            packet = dst.open(src.seal(inner, peer=peer, now=pair.t), now=pair.t)
            assert packet.kind == "data"
            assert packet.data == inner
            opened += 1
    status = pair.server.status(pair.peer)
    assert status.newest_generation >= 4
    assert status.tx_generation == status.newest_generation - 1
    assert pair.client.status().tx_generation == status.newest_generation
    # pfs = "every-rekey" (the default): every generation came from a fresh key exchange.
    assert status.newest_exchanged and pair.client.status().newest_exchanged
    assert status.newest_installed is not None and status.newest_installed <= pair.t
    assert opened == 1000


@pytest.mark.parametrize("pfs", ["off", "init-only", 3, "every-rekey"])
def test_pfs_policies(pfs: object) -> None:
    p = Pair(rekey_interval=0.5, reorder_grace=0.01, pfs=pfs)
    exchanged: list[tuple[int, bool]] = []
    for _ in range(400):
        p.step(0.01)
        inner = ipv4(64)
        assert p.server.open(p.client.seal(inner, now=p.t), now=p.t).data == inner
        assert p.client.open(p.server.seal(inner, peer=p.peer, now=p.t), now=p.t).data == inner
        st = p.server.status(p.peer)
        if not exchanged or exchanged[-1][0] != st.newest_generation:
            exchanged.append((st.newest_generation, st.newest_exchanged))
    assert exchanged[-1][0] >= 5
    for generation, was in exchanged:
        if pfs == "off":
            assert not was
        elif pfs == "init-only":
            assert was == (generation == 1)
        elif pfs == 3:
            assert was == ((generation - 1) % 3 == 0)
        else:
            assert was


def test_a_bad_pfs_policy_is_refused() -> None:
    with pytest.raises(pktcrypt.ConfigError, match="pfs"):
        pktcrypt.Endpoint(pktcrypt.Role.SERVER, pfs="sometimes")


def test_control_loss_is_survived() -> None:
    p = Pair(loss=0.3, seed=7, rekey_interval=0.5, reorder_grace=0.01)
    # Nothing is sealed under the init key (protocol version 3): data flows once the first
    # handshake is through, which loss may delay.
    while p.client.status().tx_generation == 0:
        p.step(0.01)
    for _ in range(1000):
        p.step(0.01)
        inner = ipv4(64)
        assert p.server.open(p.client.seal(inner, now=p.t), now=p.t).data == inner
        assert p.client.open(p.server.seal(inner, peer=p.peer, now=p.t), now=p.t).data == inner
    assert p.lost > 0
    assert p.server.status(p.peer).newest_generation >= 5


def test_buffers_of_every_kind(pair: Pair) -> None:
    inner = ipv4(100, 3)
    for arg in (inner, bytearray(inner), memoryview(inner)):
        sealed = pair.client.seal(arg)
        assert pair.server.open(memoryview(bytearray(sealed))).data == inner
    out = bytearray(300)
    n = pair.client.seal_into(inner, out)
    assert pair.server.open(out[:n]).data == inner


def test_batches(pair: Pair) -> None:
    packets = [ipv4(20 + i, i) for i in range(100)]
    sealed = pair.client.seal_many(packets)
    sealed.insert(10, sealed[3])  # a replay
    results = pair.server.open_many(sealed)
    assert isinstance(results[10], pktcrypt.ReplayError)
    assert [r.data for r in results if isinstance(r, pktcrypt.Packet)] == packets


def test_context_manager_closes() -> None:
    with pktcrypt.Endpoint(pktcrypt.Role.CLIENT, pktcrypt.keygen()) as c:
        assert not c.closed
    assert c.closed
    with pytest.raises(pktcrypt.PktcryptError):
        c.seal(ipv4(40))


def test_packet_trigger_rotates() -> None:
    key = pktcrypt.keygen()
    t = 100.0
    server = pktcrypt.Endpoint(pktcrypt.Role.SERVER, rekey_interval=None, reorder_grace=0.005, now=t)
    peer = server.add_peer(key, now=t)
    client = pktcrypt.Endpoint(pktcrypt.Role.CLIENT, key, triggers={"packets_sealed": 20}, now=t)

    def pump() -> None:
        for ep in (server, client):
            deadline = ep.poll_timeout()
            if deadline is not None and deadline <= t:
                ep.handle_timeout(now=t)
        for src, dst in ((client, server), (server, client)):
            for _p, d in src.transmits():
                dst.open(d, now=t)

    pump()
    for _ in range(100):
        t += 0.01
        pump()
        server.open(client.seal(ipv4(60), now=t), now=t)
    assert server.status(peer).newest_generation >= 4  # 100 packets / 20 per generation
    with pytest.raises(pktcrypt.ConfigError, match="triggers"):
        pktcrypt.Endpoint(pktcrypt.Role.CLIENT, key, triggers={"packets": 5})
