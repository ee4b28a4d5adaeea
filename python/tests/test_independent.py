"""An independent implementation (the `cryptography` package, i.e. OpenSSL) decrypts pktcrypt's
packets from the exported SAs."""
from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

import pktcrypt
from conftest import connect, ipv4


@pytest.mark.parametrize("backend", list(pktcrypt.Backend))
@pytest.mark.parametrize("suite", list(pktcrypt.Suite))
def test_cryptography_decrypts_our_packets(suite: pktcrypt.Suite, backend: pktcrypt.Backend) -> None:
    key = pktcrypt.keygen(suite)
    server = pktcrypt.Endpoint(pktcrypt.Role.SERVER, suite=suite)
    server.add_peer(key)
    client = pktcrypt.Endpoint(pktcrypt.Role.CLIENT, key, backend=backend)
    connect(server, client)  # data flows under generation 1 (the init key carries handshakes only)
    sa = next(s for s in client.export_sas() if s.outbound and s.generation == 1)
    aead = ChaCha20Poly1305(sa.key) if suite is pktcrypt.Suite.CHACHA20_POLY1305 else AESGCM(sa.key)
    # Short and long packets, long ones more than once: ring+aws-lc seals the first long packet
    # under a key with ring and the next ones with aws-lc-rs.
    for length in (20, 21, 22, 23, 200, 1400, 9000, 9000, 9000):
        inner = ipv4(length, length)
        packet = client.seal(inner)
        spi, seq_low = struct.unpack(">II", packet[:8])
        iv = packet[8:16]
        seq = int.from_bytes(iv, "big")  # the IV carries the 64-bit sequence number
        assert spi == sa.spi and seq & 0xFFFFFFFF == seq_low
        plain = aead.decrypt(sa.salt + iv, packet[16:], struct.pack(">IQ", spi, seq))
        pad, next_header = plain[-2], plain[-1]
        assert next_header == 4
        assert plain[: len(plain) - 2 - pad] == inner
        assert plain[len(plain) - 2 - pad : -2] == bytes(range(1, pad + 1))


@pytest.mark.parametrize("suite", list(pktcrypt.Suite))
def test_every_backend_opens_every_other_backends_packets(suite: pktcrypt.Suite) -> None:
    backends = [b for b in pktcrypt.Backend if b is not pktcrypt.Backend.DEFAULT]
    for tx in backends:
        for rx in backends:
            key = pktcrypt.keygen(suite)
            server = pktcrypt.Endpoint(pktcrypt.Role.SERVER, suite=suite, backend=rx)
            peer = server.add_peer(key)
            client = pktcrypt.Endpoint(pktcrypt.Role.CLIENT, key, backend=tx)
            connect(server, client)
            for length in (40, 300, 1400, 9000, 9000, 9000):
                inner = ipv4(length, length)
                assert server.open(client.seal(inner)).data == inner, (tx, rx, length)
                assert client.open(server.seal(inner, peer=peer)).data == inner, (tx, rx, length)
