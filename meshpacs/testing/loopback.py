"""Loopback helpers for tests and benchmarks: every test peer listens on 127.0.0.1.

A testbed must write its ports into config files before any node binds them, so the port
is chosen, released, and bound later. Taken from the kernel's ephemeral range (what
binding port 0 gives), such a port can meanwhile become the local end of some outgoing
connection (one node dialling another), and the later bind fails with EADDRINUSE. Ports
here are therefore drawn below that range, where the kernel never picks source ports,
at random (so that concurrent test processes rarely meet) and never twice in a process.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

__all__ = ["free_port"]

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000
_handed_out: set[int] = set()
_lock = threading.Lock()
_random = random.SystemRandom()


def _ephemeral_low() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # the Linux default


def _bindable(port: int) -> bool:
    """Free for TCP and UDP alike (a DHT port is UDP, its neighbour TCP)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _kernel_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port() -> int:
    """A port free on 127.0.0.1 for TCP and UDP now, outside the ephemeral range."""
    high = _ephemeral_low()
    with _lock:
        if high - _LOWEST < 1000:  # an unusual range: fall back to what the kernel gives
            return _kernel_port()
        for _ in range(200):
            port = _random.randrange(_LOWEST, high)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    return _kernel_port()
