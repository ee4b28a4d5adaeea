"""An independent implementation (the `cryptography` package, i.e. OpenSSL) decrypts pktcrypt's
packets from the exported SAs, in tunnel and in transport mode, and builds transport-mode
packets pktcrypt opens."""
from __future__ import annotations

import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

import pktcrypt
from conftest import connect, csum, ipv4, ipv4_tcp, ipv6_udp, pseudo


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


@pytest.mark.parametrize("suite", list(pktcrypt.Suite))
def test_cryptography_opens_ours_and_we_open_theirs(suite: pktcrypt.Suite) -> None:
    key = pktcrypt.keygen(suite)
    server = pktcrypt.Endpoint(pktcrypt.Role.SERVER, suite=suite)
    server.add_peer(key)
    client = pktcrypt.Endpoint(pktcrypt.Role.CLIENT, key)
    connect(server, client)
    sa = next(s for s in client.export_sas() if s.outbound and s.generation == 1)
    aead = ChaCha20Poly1305(sa.key) if suite is pktcrypt.Suite.CHACHA20_POLY1305 else AESGCM(sa.key)
    packets = [ipv4_tcp(b""), ipv4_tcp(b"abc"), ipv6_udp(b"hello"), ipv6_udp(bytes(range(256)) * 5)]
    # pktcrypt seals; cryptography opens and rebuilds the original packet.
    for packet in packets:
        sealed = client.seal_transport(packet)
        v6 = sealed[0] >> 4 == 6
        h = 40 if v6 else 20
        esp = sealed[h + 8 :]
        spi, seq_low = struct.unpack(">II", esp[:8])
        iv = esp[8:16]
        seq = int.from_bytes(iv, "big")
        assert spi == sa.spi and seq & 0xFFFFFFFF == seq_low
        plain = aead.decrypt(sa.salt + iv, esp[16:], struct.pack(">IQ", spi, seq))
        pad, next_header = plain[-2], plain[-1]
        assert plain[len(plain) - 2 - pad : -2] == bytes(range(1, pad + 1))
        payload = plain[: len(plain) - 2 - pad]
        header = bytearray(sealed[:h])
        if v6:
            assert csum(sealed[h:], pseudo(sealed, 17, len(sealed) - h)) == 0
            header[6] = next_header
            header[4:6] = len(payload).to_bytes(2, "big")
        else:
            header[9] = next_header
            header[2:4] = (h + len(payload)).to_bytes(2, "big")
            header[10:12] = b"\0\0"
            struct.pack_into(">H", header, 10, csum(bytes(header)))
        assert bytes(header) + payload == packet
    # cryptography seals (IVs of its own, sequence numbers ahead); pktcrypt opens.
    for i, packet in enumerate(packets):
        v6 = packet[0] >> 4 == 6
        h = 40 if v6 else 20
        protocol = packet[6] if v6 else packet[9]
        seq = 1000 + i
        iv = os.urandom(8)
        body = packet[h:]
        pad = (4 - (len(body) + 2) % 4) % 4
        plain = body + bytes(range(1, pad + 1)) + bytes([pad, protocol])
        esp = struct.pack(">II", sa.spi, seq) + iv + aead.encrypt(sa.salt + iv, plain, struct.pack(">IQ", sa.spi, seq))
        udp = bytearray(struct.pack(">HHHH", 4500, 4500, 8 + len(esp), 0))
        header = bytearray(packet[:h])
        if v6:
            header[6] = 17
            header[4:6] = (8 + len(esp)).to_bytes(2, "big")
            struct.pack_into(">H", udp, 6, csum(bytes(udp) + esp, pseudo(bytes(header), 17, 8 + len(esp))) or 0xFFFF)
        else:
            header[9] = 17
            header[2:4] = (h + 8 + len(esp)).to_bytes(2, "big")
            header[10:12] = b"\0\0"
            struct.pack_into(">H", header, 10, csum(bytes(header)))
        got = server.open_transport(bytes(header) + bytes(udp) + esp)
        assert got.kind == "data" and got.data == packet and got.next_header == protocol
