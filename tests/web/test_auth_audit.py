"""A refused dashboard request is an ATNA User Authentication failure, rate-limited per
client address, and never carries what was presented."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshpacs.trail import TrailLog, TrailWriter, verify
from meshpacs.trail.log import read_entries
from meshpacs.trail.messages import AuditSource
from meshpacs.trail.throttle import Throttle
from meshpacs.web.server import DashboardServer

from .documents import full_figures, full_status
from .test_server import TOKEN, get

KEY = b"w" * 32
GUESS = "guessed-" + "g" * 35


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def served(tmp_path: Path, clock: Clock) -> AsyncIterator[tuple[DashboardServer, Path]]:
    trail = TrailWriter(TrailLog(tmp_path / "trail", KEY), AuditSource("MESH_A", "site-a"))
    trail.throttle = Throttle(60.0, clock=clock)
    server = DashboardServer(token=TOKEN, status=full_status, figures=full_figures, trail=trail)
    await server.start()
    yield server, tmp_path / "trail"
    await server.close()


def _failures(directory: Path) -> list[ET.Element]:
    assert verify(directory, KEY).ok
    events = [ET.fromstring(e.message) for e in read_entries(directory, KEY)]
    return [e for e in events if _code(e, "EventIdentification/EventID") == "110114"]


def _code(event: ET.Element, path: str) -> str:
    found = event.find(path)
    assert found is not None
    return str(found.get("csd-code"))


def _description(event: ET.Element) -> str:
    found = event.find("EventIdentification/EventOutcomeDescription")
    return "" if found is None or found.text is None else found.text


async def test_a_wrong_or_missing_token_is_one_failed_login_a_minute_per_address(
    served: tuple[DashboardServer, Path], clock: Clock
) -> None:
    server, directory = served
    assert (await get(server.port, f"/?token={GUESS}"))[0] == 401
    for _ in range(5):  # a scanner: counted, not recorded
        assert (await get(server.port, "/metrics"))[0] == 401
    assert (await get(server.port, f"/?token={TOKEN}"))[0] == 200  # never recorded
    (first,) = _failures(directory)
    assert _code(first, "EventIdentification/EventTypeCode") == "110122"  # Login
    assert first.find("EventIdentification").get("EventOutcomeIndicator") == "4"  # type: ignore[union-attr]
    assert _description(first) == "dashboard request refused: wrong token"
    client = first.find("ActiveParticipant")
    assert client is not None
    assert (client.get("NetworkAccessPointID"), client.get("UserIsRequestor")) == (
        "127.0.0.1",
        "true",
    )

    clock.now += 61
    assert (await get(server.port, "/", "Authorization: Bearer nope"))[0] == 401
    _, second = _failures(directory)
    assert _description(second) == (
        "dashboard request refused: wrong token;"
        " 5 more like it from the same source since the last one recorded"
    )
    clock.now += 61
    assert (await get(server.port, "/"))[0] == 401
    assert _description(_failures(directory)[2]) == "dashboard request refused: missing token"


async def test_the_presented_token_never_reaches_the_trail(
    served: tuple[DashboardServer, Path],
) -> None:
    server, directory = served
    await get(server.port, "/", f"Authorization: Bearer {GUESS}")
    whole = b"".join(e.message for e in read_entries(directory, KEY))
    assert _failures(directory)
    for secret in (GUESS, TOKEN):
        assert secret.encode() not in whole
        assert base64.b64encode(secret.encode())[:20] not in whole


async def test_without_a_trail_refusals_are_answered_the_same(tmp_path: Path) -> None:
    server = DashboardServer(token=TOKEN, status=full_status)
    await server.start()
    try:
        assert (await get(server.port, "/"))[0] == 401
    finally:
        await server.close()
