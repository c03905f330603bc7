"""A running node forwards its trail to the collector ``[audit_trail]`` names, and a
collector that hangs never holds up a C-STORE (dcmtk's storescu) or the node's stop."""

from __future__ import annotations

import asyncio
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from meshpacs.keys.secret import audit_trail_key
from meshpacs.node.config import NodeConfig, Setting, load_config
from meshpacs.node.daemon import NodeStarted, open_trail, run_node
from meshpacs.node.site import create_site, load_site_secret
from meshpacs.testing import SeriesSpec, StudySpec, generate_study, write_study
from meshpacs.testing.dcmtk import dcmtk_tool
from meshpacs.testing.loopback import free_port
from meshpacs.trail import local_user, trail_dir, verify
from meshpacs.trail.log import read_entries
from meshpacs.trail.messages import StudyRef, study_deleted
from tests.dicom.conftest import dcmtk
from tests.trail.conftest import Collector

AE_TITLE = "MESH_FWD"
pytestmark = pytest.mark.skipif(dcmtk_tool("storescu") is None, reason="dcmtk not installed")


def _config(directory: Path, audit: dict[str, Setting]) -> NodeConfig:
    settings: dict[tuple[str, str], Setting] = {
        ("dicom", "bind"): "127.0.0.1",
        ("web", "enabled"): False,
    }
    settings.update({("audit_trail", key): value for key, value in audit.items()})
    created = create_site(directory, "st-marys", AE_TITLE, free_port(), settings)
    return load_config(created.config_path)


@asynccontextmanager
async def _running(config: NodeConfig) -> AsyncIterator[NodeStarted]:
    stop = asyncio.Event()
    ready: asyncio.Future[NodeStarted] = asyncio.get_running_loop().create_future()
    node = asyncio.create_task(
        run_node(config, stop=stop, started=ready.set_result, handle_signals=False)
    )
    await asyncio.wait_for(asyncio.shield(ready), 30)
    try:
        yield ready.result()
    finally:
        stop.set()
        await asyncio.wait_for(node, 60)


def _study(directory: Path) -> list[Path]:
    return write_study(directory, generate_study(5, StudySpec(series=(SeriesSpec("CT", 3, 8, 8),))))


async def _storescu(port: int, files: list[Path]) -> None:
    done = await dcmtk(["storescu", "-aet", "PACS", "-aec", AE_TITLE, "127.0.0.1", str(port),
                        *map(str, files)])  # fmt: skip
    assert done.returncode == 0, done.stderr


def _trail(config: NodeConfig) -> list[bytes]:
    key = audit_trail_key(load_site_secret(config.key_file))
    assert verify(trail_dir(config.data_dir), key).ok
    return [e.message for e in read_entries(trail_dir(config.data_dir), key)]


def _event_id(message: bytes) -> str:
    found = ET.fromstring(message).find("EventIdentification/EventID")
    assert found is not None
    return str(found.get("csd-code"))


async def test_the_collector_gets_the_nodes_trail_in_order(
    tmp_path: Path, collector: Collector
) -> None:
    config = _config(
        tmp_path / "site",
        {
            "syslog_host": "127.0.0.1",
            "syslog_port": collector.port,
            "syslog_ca": str(collector.ca_file),
        },
    )
    async with _running(config) as started:
        await _storescu(started.dicom_port, _study(tmp_path / "study"))
    kept = _trail(config)
    # Start (after the trail's own start), the association's instances, stop.
    assert [_event_id(m) for m in kept] == ["110113", "110100", "110104", "110100"]
    assert await asyncio.to_thread(collector.wait_for, len(kept))
    assert collector.messages() == kept


async def test_a_hanging_collector_holds_up_neither_c_store_nor_stop(tmp_path: Path) -> None:
    # Connections are taken into the backlog and never answered: each TLS handshake
    # would wait for the sender's timeout (10 s).
    with socket.create_server(("127.0.0.1", 0)) as listener:
        config = _config(
            tmp_path / "site",
            {"syslog_host": "127.0.0.1", "syslog_port": listener.getsockname()[1]},
        )
        files = _study(tmp_path / "study")
        began = time.monotonic()
        async with _running(config) as started:
            for instance in files:
                await _storescu(started.dicom_port, [instance])
        assert time.monotonic() - began < 9
    assert [_event_id(m) for m in _trail(config)].count("110104") == len(files)


@pytest.mark.parametrize("include_uids", [False, True])
def test_include_uids_reaches_the_rendering(tmp_path: Path, include_uids: bool) -> None:
    config = _config(tmp_path / "site", {"include_uids": include_uids})
    trail = open_trail(config)
    assert trail is not None
    study = StudyRef(record_id="ab" * 32, uid="1.2.826.0.1.3680043.8.498.77")
    trail.record(study_deleted(local_user(), trail.application, [study]))
    (_, deleted) = _trail(config)
    assert (study.uid.encode() in deleted) is include_uids
    # Named by its UID, the study keeps its record ID as a detail (base64).
    assert (study.record_id.encode() in deleted) is not include_uids
