"""The examples run for real: two processes exchange an encrypted echo over UDP."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pktcrypt

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_udp_echo_between_two_processes() -> None:
    key = pktcrypt.keygen()
    port = 50000 + os.getpid() % 5000
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "udp_echo.py"), "server", str(port), key, "6"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    client = subprocess.run(
        [sys.executable, str(EXAMPLES / "udp_echo.py"), "client", str(port), key, "100"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    out, _ = server.communicate(timeout=30)
    assert client.returncode == 0, client.stdout + client.stderr
    assert "100 of 100 echoes came back" in client.stdout
    assert "echoed 100 packets" in out
