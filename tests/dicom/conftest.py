"""A real node AE on 127.0.0.1, port 0, over a temp dir: store, catalog, writer, SCP."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshpacs.dicom.ingest import CatalogWriter, IngestService
from meshpacs.dicom.qr import QueryRetrieveService
from meshpacs.dicom.scp import AeSettings, DicomAE, configure_pynetdicom
from meshpacs.dicom.storage import InstanceStore
from meshpacs.metadata.catalog import Catalog
from meshpacs.testing.dcmtk import dcmtk_env, dcmtk_tool
from meshpacs.testing.loopback import free_port
from meshpacs.trail import TrailWriter

AE_TITLE = "MESHTEST"
RECEIVER_AE = "RECEIVER"


@dataclass
class Node:
    port: int
    store: InstanceStore
    catalog: Catalog
    writer: CatalogWriter
    ae: DicomAE
    root: Path
    receiver_port: int  # where C-MOVE to RECEIVER_AE goes


@contextlib.asynccontextmanager
async def running_node(
    root: Path,
    *,
    max_instance_bytes: int = 64 << 20,
    trail: TrailWriter | None = None,
    **settings: Any,
) -> AsyncIterator[Node]:
    """A node on 127.0.0.1 port 0 under ``root``; ``settings`` override AeSettings."""
    configure_pynetdicom()
    store = InstanceStore(root / "instances", root / "tmp")
    catalog = await Catalog.open(root / "catalog.sqlite")
    writer = CatalogWriter(catalog)
    writer.start()
    loop = asyncio.get_running_loop()
    ingest = IngestService(store, writer, max_instance_bytes=max_instance_bytes)
    receiver_port = free_port()
    qr = QueryRetrieveService(
        catalog, store, loop, {RECEIVER_AE: ("127.0.0.1", receiver_port)}, trail=trail
    )
    options = {"ae_title": AE_TITLE, "bind": "127.0.0.1", "port": 0, **settings}
    ae = DicomAE(AeSettings(**options), ingest, qr, trail)
    # As the daemon does: pynetdicom streams datasets into the store's own tmp directory.
    previous_tempdir, tempfile.tempdir = tempfile.tempdir, str(store.tmp_dir)
    port = await asyncio.to_thread(ae.start)
    try:
        yield Node(port, store, catalog, writer, ae, root, receiver_port)
    finally:
        tempfile.tempdir = previous_tempdir
        await asyncio.to_thread(ae.stop, 2.0)
        await writer.stop()
        await catalog.close()


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with running_node(tmp_path) as started:
        yield started


@pytest.fixture(params=["direct", "pynetdicom"])
async def either_node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Node]:
    """A node whose storage associations go through one receive path, then the other."""
    async with running_node(tmp_path, direct_storage=request.param == "direct") as started:
        yield started


@pytest.fixture(params=["direct", "pynetdicom"])
async def either_find_node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Node]:
    """A node whose query associations go through one path (find_receiver), then the other."""
    async with running_node(tmp_path, direct_find=request.param == "direct") as started:
        yield started


async def dcmtk(args: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool (dcmtk's own, never pynetdicom's namesake) with Nagle off."""
    tool = dcmtk_tool(args[0]) or args[0]
    return await asyncio.to_thread(
        subprocess.run,
        [tool, *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dcmtk_env(),
    )
