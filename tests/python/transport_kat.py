#!/usr/bin/env python3
"""Computes the expected bytes of the transport-mode known-answer test
(userspace/pktcrypt-core/tests/transport.rs, `known_answers`) independently of pktcrypt: Python's
`cryptography` for the AEAD, hand-written IPv4/IPv6, UDP and ESP framing.

    python3 tests/python/transport_kat.py aes KEYMAT_HEX      # IPv4 TCP, AES-128-GCM
    python3 tests/python/transport_kat.py chacha KEYMAT_HEX   # IPv6 UDP, ChaCha20-Poly1305
"""
import struct, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack(">%dH" % (len(b)//2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff

def l4(src, dst, proto, seg):
    return csum(src + dst + bytes([0, proto]) + struct.pack(">H", len(seg)) + seg)

def ipv4_tcp(payload):
    src, dst = bytes([192,0,2,1]), bytes([198,51,100,7])
    tcp = bytearray(struct.pack(">HHIIBBHHH", 40000, 80, 1, 0, 0x50, 0x18, 0x2000, 0, 0)) + payload
    struct.pack_into(">H", tcp, 16, l4(src, dst, 6, bytes(tcp)))
    ip = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0x1234, 0x4000, 64, 6, 0, src, dst))
    struct.pack_into(">H", ip, 10, csum(bytes(ip)))
    return bytes(ip), bytes(tcp), 6

def ipv6_udp(payload):
    src = bytes.fromhex("20010db8000000000000000000000001"); dst = bytes.fromhex("20010db8000000000000000000000002")
    udp = bytearray(struct.pack(">HHHH", 5353, 53, 8 + len(payload), 0)) + payload
    struct.pack_into(">H", udp, 6, l4(src, dst, 17, bytes(udp)))
    ip = struct.pack(">IHBB", 0x60000000, len(udp), 17, 64) + src + dst
    return ip, bytes(udp), 17

def transport(ip, payload, proto, aead, salt, spi, seq, sport, dport):
    pad = (4 - (len(payload) + 2) % 4) % 4
    plain = payload + bytes(range(1, pad + 1)) + bytes([pad, proto])
    iv = struct.pack(">Q", seq)
    aad = struct.pack(">IQ", spi, seq)  # 64-bit ESN (the engine default)
    esp = struct.pack(">II", spi, seq & 0xffffffff) + iv + aead.encrypt(salt + iv, plain, aad)
    udp = bytearray(struct.pack(">HHHH", sport, dport, 8 + len(esp), 0))
    ip = bytearray(ip)
    if ip[0] >> 4 == 4:
        ip[9] = 17
        struct.pack_into(">H", ip, 2, len(ip) + len(udp) + len(esp))
        struct.pack_into(">H", ip, 10, 0)
        struct.pack_into(">H", ip, 10, csum(bytes(ip)))
    else:
        ip[6] = 17
        struct.pack_into(">H", ip, 4, len(udp) + len(esp))
        c = l4(bytes(ip[8:24]), bytes(ip[24:40]), 17, bytes(udp) + esp) or 0xffff
        struct.pack_into(">H", udp, 6, c)
    return bytes(ip) + bytes(udp) + esp

which, keymat = sys.argv[1], bytes.fromhex(sys.argv[2])
if which == "aes":
    ip, pl, proto = ipv4_tcp(b"hello")
    print(transport(ip, pl, proto, AESGCM(keymat[:16]), keymat[16:], 0xc0de0001, 1, 4500, 4500).hex())
else:
    ip, pl, proto = ipv6_udp(b"example")
    print(transport(ip, pl, proto, ChaCha20Poly1305(keymat[:32]), keymat[32:], 0xc0de0001, 1, 40001, 4500).hex())
