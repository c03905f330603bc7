"""A network namespace of the test's own, joined to this one by a veth pair, to partition.

::

    this namespace (pytest, the other sites)        namespace meshpacs-<pid>
    10.231.<x>.1 on mph<pid>  <---- veth ---->  10.231.<x>.2 on mpn<pid>  (the isolated site)

The sites here bind 10.231.<x>.1: that address stays reachable from this namespace when
the link is down (it is local), so only the isolated site is cut off. ``cut`` sets this
side of the link down: the isolated site's packets vanish (its connections time out, as
behind a dead WAN link) and ours fail at once with ENETUNREACH. ``heal`` sets it up again.
Everything lives in addresses and a namespace the test created; ``close`` removes them.
Needs root and ``ip``; :func:`isolated_network` skips the test otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

SUBNET = "10.231"


@dataclass(frozen=True)
class IsolatedNetwork:
    namespace: str
    link: str  # this side of the veth pair
    here: str  # the address of the sites in this namespace
    there: str  # the isolated site's address

    @property
    def prefix(self) -> tuple[str, ...]:
        """Put before a command to run it in the isolated namespace."""
        return ("ip", "netns", "exec", self.namespace)

    def hosts(self, sites: int, isolated: int) -> list[str]:
        """Each site's address for ``create_testbed``: site ``isolated`` (0-based) there."""
        return [self.there if index == isolated else self.here for index in range(sites)]

    def cut(self) -> None:
        _ip("link", "set", self.link, "down")

    def heal(self) -> None:
        _ip("link", "set", self.link, "up")


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@contextlib.contextmanager
def isolated_network() -> Iterator[IsolatedNetwork]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a partition needs root and ip(8) to make a network namespace")
    tag = os.getpid() % 100_000
    octet = tag % 250 + 1
    net = IsolatedNetwork(
        namespace=f"meshpacs-{tag}",
        link=f"mph{tag}",
        here=f"{SUBNET}.{octet}.1",
        there=f"{SUBNET}.{octet}.2",
    )
    inside = f"mpn{tag}"
    try:
        _ip("netns", "add", net.namespace)
    except RuntimeError as error:
        pytest.skip(f"cannot make a network namespace here: {error}")
    try:
        _ip("link", "add", net.link, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", net.namespace)
        _ip("addr", "add", f"{net.here}/30", "dev", net.link)
        _ip("link", "set", net.link, "up")
        for args in (
            ("addr", "add", f"{net.there}/30", "dev", inside),
            ("link", "set", inside, "up"),
            ("link", "set", "lo", "up"),
        ):
            _ip("-n", net.namespace, *args)
        yield net
    finally:
        # Deleting the namespace destroys its end of the pair, and with it ours.
        with contextlib.suppress(RuntimeError):
            _ip("link", "del", net.link)
        _ip("netns", "del", net.namespace)
