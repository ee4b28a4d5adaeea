from __future__ import annotations

import random
import struct
from typing import List, Optional, Tuple

import pytest

import pktcrypt


def ipv4(length: int, fill: int = 0) -> bytes:
    """A minimal IPv4 packet of ``length`` bytes."""
    p = bytearray([fill & 0xFF]) * length
    p[0] = 0x45
    p[2:4] = length.to_bytes(2, "big")
    return bytes(p)


# Transport-mode test packets (valid IP and transport checksums).


def csum(data: bytes, acc: int = 0) -> int:
    if len(data) % 2:
        data += b"\0"
    acc += sum(struct.unpack(f">{len(data) // 2}H", data))
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return ~acc & 0xFFFF


def pseudo(header: bytes, protocol: int, length: int) -> int:
    addrs = header[12:20] if header[0] >> 4 == 4 else header[8:40]
    return (~csum(addrs) & 0xFFFF) + protocol + length


def ipv4_tcp(payload: bytes, src: bytes = bytes([192, 0, 2, 1])) -> bytes:
    dst = bytes([198, 51, 100, 7])
    tcp = bytearray(struct.pack(">HHIIBBHHH", 40000, 80, 1, 0, 0x50, 0x18, 0x2000, 0, 0)) + payload
    ip = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 7, 0x4000, 64, 6, 0, src, dst))
    struct.pack_into(">H", tcp, 16, csum(bytes(tcp), pseudo(bytes(ip), 6, len(tcp))))
    struct.pack_into(">H", ip, 10, csum(bytes(ip)))
    return bytes(ip + tcp)


def ipv6_udp(payload: bytes) -> bytes:
    src = bytes.fromhex("20010db8000000000000000000000001")
    dst = bytes.fromhex("20010db8000000000000000000000002")
    udp = bytearray(struct.pack(">HHHH", 5353, 53, 8 + len(payload), 0)) + payload
    ip = struct.pack(">IHBB", 0x60000000, len(udp), 17, 64) + src + dst
    struct.pack_into(">H", udp, 6, csum(bytes(udp), pseudo(ip, 17, len(udp))) or 0xFFFF)
    return ip + bytes(udp)


def connect(server: pktcrypt.Endpoint, client: pktcrypt.Endpoint) -> None:
    """Runs the init handshake between two endpoints wired in memory (every datagram both ways
    until both are quiet): afterwards both hold generation 1 and data can flow."""
    moved = True
    while moved:
        moved = False
        for src, dst in ((client, server), (server, client)):
            for _peer, dgram in src.transmits():
                moved = True
                dst.open(dgram)


class Pair:
    """A server and a client wired in memory, with simulated time and optional control loss."""

    def __init__(self, loss: float = 0.0, seed: int = 1, **server_kw: object) -> None:
        self.t = 1000.0
        self.rng = random.Random(seed)
        self.loss = loss
        key = pktcrypt.keygen()
        self.server = pktcrypt.Endpoint(pktcrypt.Role.SERVER, now=self.t, **server_kw)  # type: ignore[arg-type]
        self.peer = self.server.add_peer(key, now=self.t)
        self.client = pktcrypt.Endpoint(pktcrypt.Role.CLIENT, key, hello_interval=1.0, request_timeout=0.2, now=self.t)
        self.lost = 0

    def pump(self) -> None:
        moved = True
        while moved:
            moved = False
            for src, dst in ((self.client, self.server), (self.server, self.client)):
                for _peer, dgram in src.transmits():
                    moved = True
                    if self.rng.random() < self.loss:
                        self.lost += 1
                        continue
                    dst.open(dgram, now=self.t)

    def step(self, dt: float) -> None:
        self.t += dt
        for ep in (self.server, self.client):
            deadline = ep.poll_timeout()
            if deadline is not None and deadline <= self.t:
                ep.handle_timeout(now=self.t)
        self.pump()


@pytest.fixture
def pair() -> Pair:
    p = Pair(rekey_interval=1.0, reorder_grace=0.01)
    p.pump()
    return p
