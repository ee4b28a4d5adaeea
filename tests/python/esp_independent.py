#!/usr/bin/env python3
"""An independent ESP implementation (RFC 4303 / 4106 / 7634) on the `cryptography` package.

Reads commands on stdin, one per line, and answers on stdout:

  open  SUITE KEYMAT_HEX ESN(0|1) ESN_HIGH PACKET_HEX
        -> "inner NEXT_HEADER INNER_HEX"   (decrypts a packet pktcrypt sealed)
  seal  SUITE KEYMAT_HEX ESN(0|1) SPI SEQ64 NEXT_HEADER INNER_HEX
        -> "packet PACKET_HEX"             (builds a packet for pktcrypt to open)
  topen SUITE KEYMAT_HEX ESN(0|1) ESN_HIGH IP_PACKET_HEX
        -> "ip NEXT_HEADER IP_PACKET_HEX"  (a transport-mode IP | UDP | ESP packet pktcrypt
                                            sealed, back to the original IP packet)
  tseal SUITE KEYMAT_HEX ESN(0|1) SPI SEQ64 SPORT DPORT IP_PACKET_HEX
        -> "ip IP_PACKET_HEX"              (an IP packet in transport mode, RFC 4303 §3.1.1
                                            and RFC 3948, for pktcrypt to open)

Transport mode here takes IPv4 (with options) and IPv6 without extension headers.

SUITE is aes-128-gcm, aes-256-gcm or chacha20-poly1305; KEYMAT is key || 4-byte salt.
Any failure exits non-zero with a message: the caller's test then fails.
"""
import os
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

KEY_LEN = {"aes-128-gcm": 16, "aes-256-gcm": 32, "chacha20-poly1305": 32}


def aead(suite, key):
    return ChaCha20Poly1305(key) if suite == "chacha20-poly1305" else AESGCM(key)


def aad(spi, seq, esn):
    if esn:
        return struct.pack(">IQ", spi, seq)
    return struct.pack(">II", spi, seq & 0xFFFFFFFF)


def open_packet(suite, keymat, esn, esn_high, packet):
    n = KEY_LEN[suite]
    key, salt = keymat[:n], keymat[n:]
    assert len(salt) == 4, "salt must be 4 bytes"
    spi, seq_low = struct.unpack(">II", packet[:8])
    iv = packet[8:16]
    seq = (esn_high << 32) | seq_low
    plain = aead(suite, key).decrypt(salt + iv, packet[16:], aad(spi, seq, esn))
    pad_len, next_header = plain[-2], plain[-1]
    payload_len = len(plain) - 2 - pad_len
    assert payload_len >= 0, "pad length overruns"
    padding = plain[payload_len:-2]
    assert padding == bytes(range(1, pad_len + 1)), "non-standard padding"
    assert len(packet) % 4 == 0, "ESP packet not 4-byte aligned"
    return next_header, plain[:payload_len]


def seal_packet(suite, keymat, esn, spi, seq, next_header, inner):
    n = KEY_LEN[suite]
    key, salt = keymat[:n], keymat[n:]
    iv = os.urandom(8)  # an IV unrelated to the sequence number: receivers must use the wire IV
    pad = (4 - (len(inner) + 2) % 4) % 4
    plain = inner + bytes(range(1, pad + 1)) + bytes([pad, next_header])
    sealed = aead(suite, key).encrypt(salt + iv, plain, aad(spi, seq, esn))
    return struct.pack(">II", spi, seq & 0xFFFFFFFF) + iv + sealed


def checksum(data, acc=0):
    if len(data) % 2:
        data += b"\0"
    acc += sum(struct.unpack(">%dH" % (len(data) // 2), data))
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return ~acc & 0xFFFF


def split_ip(packet):
    """(header length, offset of the protocol byte) of an IPv4 or extension-free IPv6 packet."""
    if packet[0] >> 4 == 4:
        return (packet[0] & 0x0F) * 4, 9
    assert packet[0] >> 4 == 6, "not IPv4 or IPv6"
    return 40, 6


def fix_ip(header, proto_at, protocol, total_len):
    """The header with a new protocol and length (and IPv4 checksum)."""
    header = bytearray(header)
    header[proto_at] = protocol
    if header[0] >> 4 == 4:
        struct.pack_into(">HH", header, 2, total_len, struct.unpack_from(">H", header, 4)[0])
        struct.pack_into(">H", header, 10, 0)
        struct.pack_into(">H", header, 10, checksum(bytes(header)))
    else:
        struct.pack_into(">H", header, 4, total_len - 40)
    return bytes(header)


def pseudo_sum(header, protocol, length):
    addrs = header[12:20] if header[0] >> 4 == 4 else header[8:40]
    return (~checksum(addrs) & 0xFFFF) + protocol + length


def transport_open(suite, keymat, esn, esn_high, packet):
    h, proto_at = split_ip(packet)
    assert packet[proto_at] == 17, "not UDP"
    udp = packet[h:]
    sport, dport, udp_len, _ = struct.unpack(">HHHH", udp[:8])
    assert udp_len == len(udp), "UDP length"
    if packet[0] >> 4 == 4:
        assert checksum(packet[:h]) == 0, "IPv4 header checksum"
    else:
        assert checksum(udp, pseudo_sum(packet, 17, len(udp))) == 0, "UDP checksum over IPv6"
    next_header, payload = open_packet(suite, keymat, esn, esn_high, udp[8:])
    assert next_header not in (4, 41, 59, 253), f"next header {next_header} is not transport mode"
    return next_header, fix_ip(packet[:h], proto_at, next_header, h + len(payload)) + payload


def transport_seal(suite, keymat, esn, spi, seq, sport, dport, packet):
    h, proto_at = split_ip(packet)
    protocol = packet[proto_at]
    esp = seal_packet(suite, keymat, esn, spi, seq, protocol, packet[h:])
    udp = bytearray(struct.pack(">HHHH", sport, dport, 8 + len(esp), 0))
    header = fix_ip(packet[:h], proto_at, 17, h + 8 + len(esp))
    if header[0] >> 4 == 6:
        c = checksum(bytes(udp) + esp, pseudo_sum(header, 17, len(udp) + len(esp))) or 0xFFFF
        struct.pack_into(">H", udp, 6, c)
    return header + bytes(udp) + esp


def main():
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "open":
            _, suite, keymat, esn, esn_high, packet = words
            nh, inner = open_packet(suite, bytes.fromhex(keymat), esn == "1", int(esn_high),
                                    bytes.fromhex(packet))
            print("inner", nh, inner.hex())
        elif words[0] == "seal":
            _, suite, keymat, esn, spi, seq, nh, inner = words
            pkt = seal_packet(suite, bytes.fromhex(keymat), esn == "1", int(spi), int(seq),
                              int(nh), bytes.fromhex(inner))
            print("packet", pkt.hex())
        elif words[0] == "topen":
            _, suite, keymat, esn, esn_high, packet = words
            nh, ip = transport_open(suite, bytes.fromhex(keymat), esn == "1", int(esn_high),
                                    bytes.fromhex(packet))
            print("ip", nh, ip.hex())
        elif words[0] == "tseal":
            _, suite, keymat, esn, spi, seq, sport, dport, packet = words
            ip = transport_seal(suite, bytes.fromhex(keymat), esn == "1", int(spi), int(seq),
                                int(sport), int(dport), bytes.fromhex(packet))
            print("ip", ip.hex())
        else:
            sys.exit(f"unknown command {words[0]!r}")


if __name__ == "__main__":
    main()
