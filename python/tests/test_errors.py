from __future__ import annotations

import pytest

import pktcrypt
from conftest import Pair, ipv4


def test_hierarchy() -> None:
    for exc in (pktcrypt.AuthenticationError, pktcrypt.ReplayError, pktcrypt.UnknownSpiError, pktcrypt.MalformedError):
        assert issubclass(exc, pktcrypt.DroppedError)
    for base in (pktcrypt.DroppedError, pktcrypt.ConfigError, pktcrypt.InitKeyError, pktcrypt.RoleError, pktcrypt.SealError):
        assert issubclass(base, pktcrypt.PktcryptError)


def test_drops_map_to_exceptions(pair: Pair) -> None:
    sealed = pair.client.seal(ipv4(80))
    pair.server.open(sealed)
    with pytest.raises(pktcrypt.ReplayError):
        pair.server.open(sealed)
    forged = bytearray(pair.client.seal(ipv4(80)))
    forged[-1] ^= 1
    with pytest.raises(pktcrypt.AuthenticationError):
        pair.server.open(forged)
    unknown = bytearray(pair.client.seal(ipv4(80)))
    unknown[0:4] = (0xDEADBEEF).to_bytes(4, "big")
    with pytest.raises(pktcrypt.UnknownSpiError):
        pair.server.open(unknown)
    with pytest.raises(pktcrypt.MalformedError):
        pair.server.open(b"\x01\x02")
    drops = pair.server.drops()
    assert drops["replay"] == 1 and drops["auth_failed"] == 1 and drops["unknown_spi"] == 1


def test_bad_keys_and_config() -> None:
    with pytest.raises(pktcrypt.InitKeyError):
        pktcrypt.Endpoint(pktcrypt.Role.CLIENT, "pkc1-AAAA")
    with pytest.raises(pktcrypt.InitKeyError):
        pktcrypt.Endpoint(pktcrypt.Role.CLIENT)
    key = pktcrypt.keygen()
    typo = key[:-2] + ("A" if key[-2] != "A" else "B") + key[-1]
    with pytest.raises(pktcrypt.InitKeyError, match="checksum"):
        pktcrypt.Endpoint(pktcrypt.Role.CLIENT, typo)
    with pytest.raises(pktcrypt.ConfigError, match="replay_window"):
        pktcrypt.Endpoint(pktcrypt.Role.CLIENT, key, replay_window=100)
    with pytest.raises(pktcrypt.ConfigError, match="hello_interval"):
        pktcrypt.Endpoint(pktcrypt.Role.CLIENT, key, hello_interval=0)
    with pytest.raises(pktcrypt.ConfigError, match="spi"):
        pktcrypt.keygen(spi=7)
    with pytest.raises(ValueError):
        pktcrypt.Endpoint(pktcrypt.Role.CLIENT, key, suite="des")  # type: ignore[arg-type]


def test_wrong_role_and_bad_packets() -> None:
    key = pktcrypt.keygen()
    client = pktcrypt.Endpoint(pktcrypt.Role.CLIENT, key)
    with pytest.raises(pktcrypt.RoleError):
        client.add_peer(key)
    with pytest.raises(pktcrypt.RoleError):
        pktcrypt.Endpoint(pktcrypt.Role.SERVER, key)
    with pytest.raises(pktcrypt.SealError, match="IPv4 or IPv6"):
        client.seal(b"\x00" * 40)
    server = pktcrypt.Endpoint(pktcrypt.Role.SERVER)
    with pytest.raises(pktcrypt.SealError, match="no peer"):
        server.seal(ipv4(40), peer=5)
    with pytest.raises(TypeError):
        client.seal("not bytes")  # type: ignore[arg-type]


def test_keys_are_not_printed(pair: Pair) -> None:
    for sa in pair.client.export_sas():
        assert sa.key.hex() not in repr(sa)
        assert "redacted" in repr(sa)
