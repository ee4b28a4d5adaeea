#!/usr/bin/env python3
"""An independent ESP implementation (RFC 4303 / 4106 / 7634) on the `cryptography` package.

Reads commands on stdin, one per line, and answers on stdout:

  open  SUITE KEYMAT_HEX ESN(0|1) ESN_HIGH PACKET_HEX
        -> "inner NEXT_HEADER INNER_HEX"   (decrypts a packet pktcrypt sealed)
  seal  SUITE KEYMAT_HEX ESN(0|1) SPI SEQ64 NEXT_HEADER INNER_HEX
        -> "packet PACKET_HEX"             (builds a packet for pktcrypt to open)

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
        else:
            sys.exit(f"unknown command {words[0]!r}")


if __name__ == "__main__":
    main()
