"""The node's callbacks into the trail: an Export per study the backup protects (a real
backup pass over a real catalog), a Security Alert per refused mesh peer."""

from __future__ import annotations

import asyncio
import base64
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshpacs.metadata.replica import study_record_id
from meshpacs.node.trail_events import ExportingPublisher, peer_refused_recorder
from meshpacs.trail import TrailLog, TrailWriter, verify
from meshpacs.trail.log import read_entries
from meshpacs.trail.messages import AuditSource
from meshpacs.transport.server import RefusedPeer

from ..backup.helpers import Site, open_site

KEY = b"n" * 32
STUDY_UID = "1.2.3.1"  # what the backup helpers' instances belong to


class Replicator:
    def __init__(self) -> None:
        self.studies: list[int] = []

    async def study_protected(self, study_ref: int) -> None:
        self.studies.append(study_ref)

    async def unplaced_protected(self, bundle_ref: int) -> None:
        raise AssertionError("no unparsed instances here")


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with open_site(tmp_path) as opened:
        yield opened


def _trail(tmp_path: Path, include_uids: bool = False) -> TrailWriter:
    log = TrailLog(tmp_path / "trail", KEY)
    return TrailWriter(log, AuditSource("MESH_A", "owner"), include_uids=include_uids)


def _events(tmp_path: Path) -> list[ET.Element]:
    assert verify(tmp_path / "trail", KEY).ok
    return [ET.fromstring(e.message) for e in read_entries(tmp_path / "trail", KEY)]


@pytest.mark.parametrize("include_uids", [False, True])
async def test_each_study_protected_is_one_export_naming_it_and_its_holders(
    site: Site, tmp_path: Path, include_uids: bool
) -> None:
    await site.receive(3)
    trail = _trail(tmp_path, include_uids)
    inner = Replicator()
    service = site.service()
    service._publisher = ExportingPublisher(inner, trail, site.catalog, site.keys.catalog)
    report = await service.run_once()
    assert report.protected == 1 and len(inner.studies) == 1  # passed on as before
    assert (await service.run_once()).protected == 0  # once per protection, not per pass
    _, exported = _events(tmp_path)  # after the trail's own start
    ident = exported.find("EventIdentification")
    assert ident is not None
    assert (ident.find("EventID").get("csd-code"), ident.get("EventOutcomeIndicator")) == (  # type: ignore[union-attr]
        "110106",
        "0",
    )
    people = [
        (p.get("UserID"), p.find("RoleIDCode").get("csd-code"))  # type: ignore[union-attr]
        for p in exported.findall("ActiveParticipant")
    ]
    holders = sorted(site.partners.held())
    assert people == [
        ("MESH_A", "110153"),
        ("federation partners", "110154"),
        *[(h, "110152") for h in holders],
    ]
    (study,) = exported.findall("ParticipantObjectIdentification")
    record_id = study_record_id(site.keys.catalog, STUDY_UID)
    named = study.get("ParticipantObjectID")
    assert named == (STUDY_UID if include_uids else record_id)
    details = {
        d.get("type"): base64.b64decode(d.get("value", "")).decode()
        for d in study.findall("ParticipantObjectDetail")
    }
    assert details["NumberOfInstances"] == "3"
    whole = ET.tostring(exported)
    assert (STUDY_UID.encode() in whole) is include_uids
    assert b"any 2 of 4 rebuild it" in whole


async def test_a_refused_peer_is_one_security_alert_a_minute_per_address(
    tmp_path: Path,
) -> None:
    trail = _trail(tmp_path)
    refused = peer_refused_recorder(trail)
    peer = RefusedPeer("192.0.2.7", "not a member", "site-x", "ab" * 32)
    for _ in range(3):
        refused(peer)
    refused(RefusedPeer("192.0.2.8", "TLS handshake refused: certificate revoked"))
    for _ in range(200):
        if trail.log.exists and len(list(read_entries(tmp_path / "trail", KEY))) >= 3:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # and no more than those
    _, first, second = _events(tmp_path)
    assert first.find("EventIdentification/EventTypeCode").get("csd-code") == "110126"  # type: ignore[union-attr]
    assert first.find("EventIdentification").get("EventOutcomeIndicator") == "4"  # type: ignore[union-attr]
    (who,) = [p for p in first.findall("ActiveParticipant") if p.get("UserID") == "site-x"]
    assert who.get("AlternativeUserID") == "sha256:" + "ab" * 32
    assert who.get("NetworkAccessPointID") == "192.0.2.7"
    (anonymous,) = [
        p for p in second.findall("ActiveParticipant") if p.get("UserID") == "unauthenticated peer"
    ]
    assert anonymous.get("NetworkAccessPointID") == "192.0.2.8"
    text = second.find("EventIdentification/EventOutcomeDescription").text  # type: ignore[union-attr]
    assert text == "mesh transport: TLS handshake refused: certificate revoked"
