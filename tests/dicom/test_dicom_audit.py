"""The AE's retrieve and refusal audit events, driven by dcmtk's movescu, getscu, storescu."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pydicom
import pytest

from meshpacs.testing import SeriesSpec, StudySpec, generate_study, write_study
from meshpacs.testing.dcmtk import dcmtk_env, dcmtk_tool
from meshpacs.trail import TrailLog, TrailWriter, verify
from meshpacs.trail.log import read_entries
from meshpacs.trail.messages import AuditSource
from meshpacs.trail.throttle import Throttle

from .conftest import AE_TITLE, RECEIVER_AE, Node, dcmtk, running_node

pytestmark = pytest.mark.skipif(dcmtk_tool("movescu") is None, reason="dcmtk not installed")
KEY = b"d" * 32
INSTANCES = 4


class Audited:
    def __init__(self, node: Node, trail: TrailWriter, directory: Path, study_uid: str) -> None:
        self.node, self.trail, self.directory, self.study_uid = node, trail, directory, study_uid

    def events(self) -> list[ET.Element]:
        assert verify(self.directory, KEY).ok
        return [ET.fromstring(e.message) for e in read_entries(self.directory, KEY)]

    def of(self, code: str) -> list[ET.Element]:
        return [e for e in self.events() if _attr(e, "EventIdentification/EventID") == code]


def _attr(event: ET.Element, path: str, name: str = "csd-code") -> str:
    found = event.find(path)
    assert found is not None, path
    return str(found.get(name))


def _outcome(event: ET.Element) -> str:
    return _attr(event, "EventIdentification", "EventOutcomeIndicator")


def _people(event: ET.Element) -> list[tuple[str, str, str]]:
    """(UserID, role code or "", UserIsRequestor) of each active participant."""
    found = []
    for who in event.findall("ActiveParticipant"):
        role = who.find("RoleIDCode")
        found.append(
            (str(who.get("UserID")), "" if role is None else str(role.get("csd-code")),
             str(who.get("UserIsRequestor")))
        )  # fmt: skip
    return found


def _instances(event: ET.Element) -> int:
    (detail,) = [
        d for d in event.iter("ParticipantObjectDetail") if d.get("type") == "NumberOfInstances"
    ]
    return int(base64.b64decode(detail.get("value", "")))


async def _audited(root: Path, **settings: object) -> AsyncIterator[Audited]:
    directory = root / "trail"
    trail = TrailWriter(TrailLog(directory, KEY), AuditSource(AE_TITLE, "site-a"))
    trail.throttle = Throttle(interval=0)  # every refusal recorded, for these tests
    async with running_node(root / "node", trail=trail, **settings) as node:  # type: ignore[arg-type]
        study = generate_study(11, StudySpec(series=(SeriesSpec("MR", INSTANCES, 8, 8),)))
        files = write_study(root / "study", study)
        done = await dcmtk(["storescu", "-aet", "LOADER", "-aec", AE_TITLE, "127.0.0.1",
                            str(node.port), *map(str, files)])  # fmt: skip
        assert done.returncode == 0, done.stderr
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        yield Audited(node, trail, directory, uid)


@pytest.fixture
async def audited(tmp_path: Path) -> AsyncIterator[Audited]:
    async for found in _audited(tmp_path):
        yield found


@pytest.fixture
def receiver(audited: Audited, tmp_path: Path) -> Iterator[Path]:
    out = tmp_path / "received"
    out.mkdir()
    port = str(audited.node.receiver_port)
    proc = subprocess.Popen(
        [dcmtk_tool("storescp") or "storescp", "-aet", RECEIVER_AE, "+xa", "-od", str(out), port],
        env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    echo = [dcmtk_tool("echoscu") or "echoscu", "-aec", RECEIVER_AE, "127.0.0.1", port]
    deadline = time.monotonic() + 10
    while subprocess.run(echo, env=dcmtk_env(), capture_output=True).returncode:
        assert time.monotonic() < deadline, "storescp did not start"
        time.sleep(0.05)
    try:
        yield out
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _retrieve(audited: Audited, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    study = f"StudyInstanceUID={audited.study_uid}"
    return await dcmtk([tool, "-S", "-aet", "ASKER", "-aec", AE_TITLE, *args,
                        "-k", "QueryRetrieveLevel=STUDY", "-k", study,
                        "127.0.0.1", str(audited.node.port)])  # fmt: skip


async def test_a_c_move_is_begun_then_transferred_from_us_to_the_destination(
    audited: Audited, receiver: Path
) -> None:
    done = await _retrieve(audited, "movescu", "-aem", RECEIVER_AE)
    assert done.returncode == 0, done.stderr
    assert len(list(receiver.iterdir())) == INSTANCES
    (begun,) = audited.of("110102")
    moved = [
        e for e in audited.of("110104") if _attr(e, "EventIdentification", "EventActionCode") == "R"
    ]
    assert len(moved) == 1
    (done_event,) = moved
    for event in (begun, done_event):
        assert _outcome(event) == "0"
        assert _instances(event) == INSTANCES
        # This node the source, storescp the destination, movescu the one who asked.
        assert _people(event) == [
            (AE_TITLE, "110153", "false"),
            (RECEIVER_AE, "110152", "false"),
            ("ASKER", "", "true"),
        ]
    codes = [_attr(e, "EventIdentification/EventID") for e in audited.events()]
    assert codes.index("110102") < len(codes) - 1 and codes[-1] == "110104"
    assert audited.study_uid.encode() not in b"".join(ET.tostring(e) for e in audited.events())


async def test_a_c_move_to_a_destination_that_is_down_is_a_failed_transfer(
    audited: Audited,
) -> None:
    await _retrieve(audited, "movescu", "-aem", RECEIVER_AE)  # nobody listens there
    (begun,) = audited.of("110102")
    (moved,) = [e for e in audited.of("110104") if _people(e)[0][0] == AE_TITLE]
    assert _outcome(begun) == "0" and _outcome(moved) == "8"
    assert _instances(moved) == 0
    assert f"0 of {INSTANCES} instances sent, {INSTANCES} failed" in ET.tostring(moved).decode()


async def test_a_c_move_to_an_unknown_destination_is_a_failed_begin(audited: Audited) -> None:
    await _retrieve(audited, "movescu", "-aem", "NOSUCHAE")
    (begun,) = audited.of("110102")
    assert _outcome(begun) == "8"
    assert "unknown move destination" in ET.tostring(begun).decode()
    assert [e for e in audited.of("110104") if _people(e)[0][0] == AE_TITLE] == []


async def test_a_c_get_is_transferred_to_the_caller(audited: Audited, tmp_path: Path) -> None:
    out = tmp_path / "got"
    out.mkdir()
    done = await _retrieve(audited, "getscu", "-od", str(out))
    assert done.returncode == 0, done.stderr
    assert len(list(out.iterdir())) == INSTANCES
    (begun,) = audited.of("110102")
    (got,) = [e for e in audited.of("110104") if _people(e)[0][0] == AE_TITLE]
    assert _outcome(got) == "0" and _instances(got) == INSTANCES
    assert _people(got) == [(AE_TITLE, "110153", "false"), ("ASKER", "110152", "true")]
    assert _people(begun) == _people(got)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "pynetdicom"])
async def test_a_caller_whose_ae_title_is_not_allowed_is_a_security_alert(
    tmp_path: Path, direct: bool
) -> None:
    settings = {"allowed_calling_aets": ("LOADER", "ASKER"), "direct_storage": direct}
    async for audited in _audited(tmp_path, **settings):
        files = write_study(
            tmp_path / "other", generate_study(12, StudySpec(series=(SeriesSpec("CT", 1, 8, 8),)))
        )
        done = await dcmtk(["storescu", "-aet", "ROGUE", "-aec", AE_TITLE, "127.0.0.1",
                            str(audited.node.port), str(files[0])])  # fmt: skip
        assert done.returncode != 0
        # The node's own path records the alert before it answers; pynetdicom's tells the
        # handler while its DUL thread sends the rejection, so the record may follow.
        deadline = time.monotonic() + 10
        while not audited.of("110113")[1:] and not direct and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        (alert,) = audited.of("110113")[1:]  # after the trail's own start
        assert _attr(alert, "EventIdentification/EventTypeCode") == "110126"
        assert _outcome(alert) == "4"
        assert ("ROGUE", "", "true") in _people(alert)
        assert "calling AE title not allowed" in ET.tostring(alert).decode()
