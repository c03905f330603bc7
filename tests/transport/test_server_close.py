"""The fragment server stops promptly and keeps no dead connections, whatever state its
peers' handshakes are in: real TCP and TLS on 127.0.0.1.

A node stopping while a peer was mid-handshake once waited forever (CPython 3.11 never
tells a stream that a socket closed after its ``start_tls`` failed or was cancelled)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from meshpacs.federation import MutualTls, create_federation_ca
from meshpacs.store import FragmentStore, QuotaPolicy
from meshpacs.store.records import HeldRecords
from meshpacs.transport.client import PartnerConnection
from meshpacs.transport.server import FragmentServer

from ..federation.helpers import make_site

# Far longer than a close takes, far shorter than the 15 s handshake timeout: a close that
# waited for the handshake to time out (or forever) fails here.
PROMPT = 5.0


@pytest.fixture
def tls(tmp_path: Path) -> MutualTls:
    ca = create_federation_ca(tmp_path / "ca", "Test Mesh")
    site = make_site(ca, tmp_path / "sites", "holder", 1)
    return MutualTls(site.identity, site.files)


@pytest.fixture
async def served(tls: MutualTls, tmp_path: Path) -> AsyncIterator[tuple[FragmentServer, int]]:
    store = FragmentStore(tmp_path / "fragments", QuotaPolicy(10**8))
    server = FragmentServer(
        store, HeldRecords(tmp_path / "records"), tls.server_context(), tls.peer_member
    )
    _, port = await server.start("127.0.0.1", 0)
    yield server, port
    await asyncio.wait_for(server.close(), PROMPT)
    store.close()


@pytest.fixture(autouse=True)
def quiet_loop(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """However a connection ends, the event loop has nothing to report: CPython 3.11 logs
    "Exception in callback" for a connection handler that ends cancelled."""
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        yield
    records = caplog.get_records("setup") + caplog.get_records("call")
    loop_errors = [r.getMessage() for r in records if r.name == "asyncio"]
    assert not loop_errors, loop_errors


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(250):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within 5 s: {what}")


async def test_close_while_a_peer_is_mid_handshake_is_prompt(
    served: tuple[FragmentServer, int],
) -> None:
    server, port = served
    # A TCP peer that never sends its ClientHello: the server sits in start_tls.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _until(lambda: server.connections == 1, "the server took the connection")
    await asyncio.wait_for(server.close(), PROMPT)
    assert server.connections == 0
    assert await asyncio.wait_for(reader.read(), PROMPT) == b""  # the peer was hung up on
    writer.close()


async def test_a_failed_handshake_leaves_no_connection_behind(
    served: tuple[FragmentServer, int],
) -> None:
    server, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")  # not TLS: the handshake fails at once
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), PROMPT) == b""
    await _until(lambda: server.connections == 0, "the refused connection was let go")
    writer.close()


async def test_close_with_a_member_connected_is_prompt(
    served: tuple[FragmentServer, int], tls: MutualTls
) -> None:
    server, port = served
    conn = await PartnerConnection.open(
        "holder", "127.0.0.1", port, tls.client_context(), tls.peer_member, timeout=5
    )
    await conn.ping()
    assert server.connections == 1
    await asyncio.wait_for(server.close(), PROMPT)
    assert server.connections == 0
    await conn.close()
