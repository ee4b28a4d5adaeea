"""ESP transport mode in UDP (RFC 4303 §3.1.1, RFC 3948): whole IP packets sealed host to host,
opened back to the original packet; the mode named by the next header; refusals and drops. (The
`cryptography` package against it: test_independent.py.)"""
from __future__ import annotations

import struct

import pytest
import pktcrypt
from conftest import Pair, csum, ipv4_tcp, ipv6_udp


def test_round_trip_both_ways(pair: Pair) -> None:
    for i, packet in enumerate([ipv4_tcp(b""), ipv4_tcp(b"hello" * 200), ipv6_udp(b"x"), ipv6_udp(bytes(1200))]):
        for tx, rx, peer in ((pair.client, pair.server, 0), (pair.server, pair.client, pair.peer)):
            sealed = tx.seal_transport(packet, peer=peer, now=pair.t)
            v6 = packet[0] >> 4 == 6
            h = 40 if v6 else 20
            assert sealed[6 if v6 else 9] == 17
            assert struct.unpack(">HHH", sealed[h : h + 6]) == (4500, 4500, len(sealed) - h)
            assert len(sealed) <= len(packet) + 45
            got = rx.open_transport(sealed, now=pair.t)
            assert got.kind == "data" and got.data == packet, i
            assert got.next_header == (17 if v6 else 6)


def test_ports_and_the_tunnel_mode_next_header(pair: Pair) -> None:
    packet = ipv4_tcp(b"ports")
    sealed = pair.client.seal_transport(packet, src_port=40001, dst_port=4501, now=pair.t)
    assert struct.unpack(">HH", sealed[20:24]) == (40001, 4501)
    assert pair.server.open_transport(sealed, now=pair.t).data == packet
    # A tunnel-mode packet in an IP/UDP packet: the transport receiver says so (next header 4)
    # and gives the inner packet.
    esp = pair.client.seal(packet, now=pair.t)
    outer = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 28 + len(esp), 0, 0, 64, 17, 0, bytes(4), bytes(4)))
    struct.pack_into(">H", outer, 10, csum(bytes(outer)))
    got = pair.server.open_transport(bytes(outer) + struct.pack(">HHHH", 4500, 4500, 8 + len(esp), 0) + esp)
    assert (got.next_header, got.data) == (4, packet)
    # The tunnel-mode receiver refuses a transport-mode packet's ESP by its next header.
    with pytest.raises(pktcrypt.MalformedError, match="bad_next_header"):
        pair.server.open(pair.client.seal_transport(packet, now=pair.t)[28:], now=pair.t)


def test_a_nat_changes_the_source_and_the_checksum_is_fixed(pair: Pair) -> None:
    packet = ipv4_tcp(b"through a NAT")
    sealed = bytearray(pair.client.seal_transport(packet, now=pair.t))
    sealed[12:16] = bytes([203, 0, 113, 9])
    sealed[10:12] = b"\0\0"
    struct.pack_into(">H", sealed, 10, csum(bytes(sealed[:20])))
    got = pair.server.open_transport(bytes(sealed), now=pair.t).data
    assert got == ipv4_tcp(b"through a NAT", src=bytes([203, 0, 113, 9]))


def test_refused_and_dropped(pair: Pair) -> None:
    fragment = bytearray(ipv4_tcp(b"frag"))
    fragment[6] = 0x20
    with pytest.raises(pktcrypt.SealError, match="fragment"):
        pair.client.seal_transport(bytes(fragment))
    ipip = bytearray(ipv4_tcp(b"")[:20]) + ipv4_tcp(b"inner")
    ipip[9] = 4
    ipip[2:4] = len(ipip).to_bytes(2, "big")
    with pytest.raises(pktcrypt.SealError, match="tunnel mode"):
        pair.client.seal_transport(bytes(ipip))
    with pytest.raises(pktcrypt.SealError):
        pair.client.seal_transport(b"\x45\x00")
    sealed = pair.client.seal_transport(ipv4_tcp(b"once"), now=pair.t)
    pair.server.open_transport(sealed, now=pair.t)
    with pytest.raises(pktcrypt.ReplayError):
        pair.server.open_transport(sealed, now=pair.t)
    forged = bytearray(pair.client.seal_transport(ipv4_tcp(b"x"), now=pair.t))
    forged[-1] ^= 1
    with pytest.raises(pktcrypt.AuthenticationError):
        pair.server.open_transport(bytes(forged), now=pair.t)
    with pytest.raises(pktcrypt.MalformedError, match="truncated"):
        pair.server.open_transport(bytes(forged[:-1]), now=pair.t)
    unknown = bytearray(forged)
    unknown[28:32] = (0x0BAD0BAD).to_bytes(4, "big")
    with pytest.raises(pktcrypt.UnknownSpiError):
        pair.server.open_transport(bytes(unknown), now=pair.t)
    drops = pair.server.drops()
    assert drops["replay"] == 1 and drops["auth_failed"] == 1 and drops["truncated"] == 1
    assert drops["unknown_spi"] == 1
