"""A real node AE on 127.0.0.1, port 0, over a temp dir: store, catalog, writer, SCP."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshpacs.dicom.ingest import CatalogWriter, IngestService
from meshpacs.dicom.qr import QueryRetrieveService
from meshpacs.dicom.scp import AeSettings, DicomAE, configure_pynetdicom
from meshpacs.dicom.storage import InstanceStore
from meshpacs.metadata.catalog import Catalog

AE_TITLE = "MESHTEST"
RECEIVER_AE = "RECEIVER"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    port: int
    store: InstanceStore
    catalog: Catalog
    writer: CatalogWriter
    ae: DicomAE
    root: Path
    receiver_port: int  # where C-MOVE to RECEIVER_AE goes


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    configure_pynetdicom()
    store = InstanceStore(tmp_path / "instances", tmp_path / "tmp")
    catalog = await Catalog.open(tmp_path / "catalog.sqlite")
    writer = CatalogWriter(catalog, store)
    writer.start()
    ingest = IngestService(store, writer, asyncio.get_running_loop(), max_instance_bytes=64 << 20)
    receiver_port = free_port()
    qr = QueryRetrieveService(
        catalog, store, asyncio.get_running_loop(), {RECEIVER_AE: ("127.0.0.1", receiver_port)}
    )
    ae = DicomAE(AeSettings(ae_title=AE_TITLE, bind="127.0.0.1", port=0), ingest, qr)
    port = await asyncio.to_thread(ae.start)
    try:
        yield Node(port, store, catalog, writer, ae, tmp_path, receiver_port)
    finally:
        await asyncio.to_thread(ae.stop, 2.0)
        await writer.stop()
        await catalog.close()


def dcmtk_env() -> dict[str, str]:
    # dcmtk leaves Nagle on unless told; every figure would measure delayed ACKs.
    return {**os.environ, "TCP_NODELAY": "1"}


async def dcmtk(args: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, list(args), capture_output=True, text=True, timeout=timeout, env=dcmtk_env()
    )
