"""An encrypted UDP echo between two processes.

    python udp_echo.py server PORT KEY [SECONDS]
    python udp_echo.py client PORT KEY COUNT

Make a key with ``python -c "import pktcrypt; print(pktcrypt.keygen())"`` and give it to both.
"""
from __future__ import annotations

import select
import socket
import sys
import time
from typing import Optional, Tuple

import pktcrypt


def pump(ep: pktcrypt.Endpoint, sock: socket.socket, to: Optional[Tuple[str, int]]) -> None:
    deadline = ep.poll_timeout()
    if deadline is not None and deadline <= pktcrypt.now():
        ep.handle_timeout()
    for _peer, datagram in ep.transmits():
        if to is not None:
            sock.sendto(datagram, to)


def server(port: int, key: str, seconds: float) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    client: Optional[Tuple[str, int]] = None
    echoed = 0
    with pktcrypt.Endpoint(pktcrypt.Role.SERVER, rekey_interval=0.5) as ep:
        peer = ep.add_peer(key)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if select.select([sock], [], [], 0.01)[0]:
                data, client = sock.recvfrom(4096)
                try:
                    packet = ep.open(data)
                except pktcrypt.DroppedError as e:
                    print(f"dropped: {e!r}", file=sys.stderr)
                    continue
                if packet.kind == "data":
                    sock.sendto(ep.seal(packet.data, peer=peer), client)
                    echoed += 1
            pump(ep, sock, client)
        print(f"echo server: echoed {echoed} packets, generation {ep.status(peer).newest_generation}")
    return 0


def client(port: int, key: str, count: int) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    to = ("127.0.0.1", port)
    back = sent = 0
    with pktcrypt.Endpoint(pktcrypt.Role.CLIENT, key, hello_interval=0.5, request_timeout=0.1) as ep:
        end = time.monotonic() + count * 0.02 + 3
        next_send = 0.0
        while back < count and time.monotonic() < end:
            # Data once the handshake is through (nothing is sealed under the init key).
            if sent < count and time.monotonic() >= next_send and ep.status().tx_generation > 0:
                next_send = time.monotonic() + 0.02
                inner = bytearray(120)
                inner[0], inner[3] = 0x45, 120
                inner[20:40] = f"hello {sent}".encode().ljust(20)
                sock.sendto(ep.seal(bytes(inner)), to)
                sent += 1
            if select.select([sock], [], [], 0.005)[0]:
                try:
                    packet = ep.open(sock.recv(4096))
                except pktcrypt.DroppedError:
                    continue
                if packet.kind == "data" and packet.data[20:26] == b"hello ":
                    back += 1
            pump(ep, sock, to)
        print(f"echo client: {back} of {count} echoes came back, generation {ep.status().tx_generation}")
    return 0 if back == count else 1


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[1] not in ("server", "client"):
        print(__doc__, file=sys.stderr)
        return 2
    port, key = int(argv[2]), argv[3]
    if argv[1] == "server":
        return server(port, key, float(argv[4]) if len(argv) > 4 else 10.0)
    return client(port, key, int(argv[4]) if len(argv) > 4 else 100)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
