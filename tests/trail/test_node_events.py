"""A running node records its start and stop, each storage association and each C-FIND."""

from __future__ import annotations

import asyncio
import base64
import xml.etree.ElementTree as ET
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from meshpacs.keys.secret import audit_trail_key
from meshpacs.node.config import load_config
from meshpacs.node.daemon import NodeStarted, run_node
from meshpacs.node.site import create_site, load_site_secret
from meshpacs.testing import SeriesSpec, StudySpec, generate_study, write_study
from meshpacs.testing.loopback import free_port
from meshpacs.trail import trail_dir, verify
from meshpacs.trail.log import read_entries

AE_TITLE = "MESH_STM"


def _store(port: int, files: list[Path], with_find: bool) -> list[int]:
    """One association; with_find also proposes C-FIND (so pynetdicom serves it)."""
    ae = AE(ae_title="PACS_TEST")
    datasets = [pydicom.dcmread(f) for f in files]
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    if with_find:
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    if with_find:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientName = "SYNTH*"
        query.StudyInstanceUID = ""
        answers = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
        assert answers and int(answers[-1][0].Status) == 0
    assoc.release()
    return statuses


async def test_the_node_records_what_it_does(tmp_path: Path) -> None:
    port = free_port()
    created = create_site(tmp_path / "site", "st-marys", AE_TITLE, port, {})
    text = created.config_path.read_text().replace('bind = "0.0.0.0"', 'bind = "127.0.0.1"')
    created.config_path.write_text(text)
    config = load_config(created.config_path)
    spec = StudySpec(series=(SeriesSpec("CT", 3, 16, 16),))
    files = write_study(tmp_path / "study", generate_study(7, spec))

    stop = asyncio.Event()
    ready: asyncio.Future[NodeStarted] = asyncio.get_running_loop().create_future()
    node = asyncio.create_task(
        run_node(config, stop=stop, started=ready.set_result, handle_signals=False)
    )
    await asyncio.wait_for(asyncio.shield(ready), 30)
    try:
        # The node's own receiver serves a storage-only association; pynetdicom the other.
        assert await asyncio.to_thread(_store, port, files[:2], False) == [0, 0]
        assert await asyncio.to_thread(_store, port, files[2:], True) == [0]
    finally:
        stop.set()
        await asyncio.wait_for(node, 60)

    key = audit_trail_key(load_site_secret(config.key_file))
    directory = trail_dir(config.data_dir)
    report = verify(directory, key)
    assert report.ok and report.entries == 6, report
    events = [ET.fromstring(e.message) for e in read_entries(directory, key)]
    codes = [_code(e, "EventIdentification/EventID") for e in events]
    # Start first and stop last; between them, each association's store is recorded when
    # that association ends, the C-FIND when it is answered.
    # A new trail begins with a Security Alert: Audit Recording Started.
    assert (codes[0], _code(events[0], "EventIdentification/EventTypeCode")) == ("110113", "110134")
    assert (codes[1], codes[-1]) == ("110100", "110100")
    assert sorted(codes[2:-1]) == ["110104", "110104", "110112"]
    assert _code(events[1], "EventIdentification/EventTypeCode") == "110120"
    assert _code(events[-1], "EventIdentification/EventTypeCode") == "110121"
    stored = [e for e in events if _code(e, "EventIdentification/EventID") == "110104"]
    assert sorted(_instances(e) for e in stored) == ["1", "2"]
    for event in stored:
        source = event.find("ActiveParticipant")
        assert source is not None
        assert (source.get("UserID"), source.get("NetworkAccessPointID")) == (
            "PACS_TEST",
            "127.0.0.1",
        )
    (find,) = [e for e in events if _code(e, "EventIdentification/EventID") == "110112"]
    whole = ET.tostring(find)
    assert b"SYNTH" not in whole  # the query's values stay out of the trail
    for event in events:
        for instance in files:
            uid = str(pydicom.dcmread(instance, stop_before_pixels=True).StudyInstanceUID)
            assert uid.encode() not in ET.tostring(event)


def _code(event: ET.Element, path: str) -> str:
    element = event.find(path)
    assert element is not None
    return str(element.get("csd-code"))


def _instances(event: ET.Element) -> str:
    (detail,) = [
        d for d in event.iter("ParticipantObjectDetail") if d.get("type") == "NumberOfInstances"
    ]
    return base64.b64decode(detail.get("value", "")).decode()
