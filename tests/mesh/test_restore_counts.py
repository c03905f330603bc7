"""Restore counts on ``/metrics``: what dcmtk movescu got from a running node, first
gathered from the mesh (the node had pruned its copies), then from its own disk."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import urllib.request
from pathlib import Path

import pytest

from meshpacs.node.config import Destination
from meshpacs.testing.dcmtk import dcmtk_env, dcmtk_tool
from meshpacs.web.token import read_token
from tests.web.exposition import ParsedFamily, parse_exposition

from .conftest import FederationFactory, RunningSite
from .test_mesh_retrieve import (
    RECEIVER,
    originals,
    pruned_site,
    received,
    receiver,
    restart_with,
)

MOVESCU = dcmtk_tool("movescu")

pytestmark = pytest.mark.skipif(MOVESCU is None, reason="dcmtk not installed")

__all__ = ["receiver"]  # the fixture, used by name


def metrics(site: RunningSite) -> dict[str, ParsedFamily]:
    base = site.plan.dashboard_url.split("?")[0]
    request = urllib.request.Request(base + "metrics")
    token = read_token(site.data_dir / "state" / "dashboard.token")
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return parse_exposition(answer.read().decode())


def stored_bytes(site: RunningSite) -> int:
    """The catalog's sizes of the instances: the files exactly as kept and sent."""
    path = site.data_dir / "catalog.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT SUM(size) FROM instances").fetchone()[0])


async def movescu(site: RunningSite, study_uid: str) -> None:
    assert MOVESCU is not None and site.started is not None
    args = [MOVESCU, "-S", "-aet", "MOVESCU", "-aec", site.plan.ae_title, "-aem", RECEIVER,
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
            "127.0.0.1", str(site.started.dicom_port)]  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run, args, env=dcmtk_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr


async def test_movescu_restores_are_counted_from_the_mesh_and_from_disk(
    federation: FederationFactory, tmp_path: Path, receiver: tuple[int, Path]
) -> None:
    port, out = receiver
    _, owner, [instances] = await pruned_site(federation, tmp_path, port, studies=1)
    # Retention off from now on: what the mesh brings back stays on the disk.
    await restart_with(
        owner, keep_local=None, destinations={RECEIVER: Destination("127.0.0.1", port)}
    )
    size = stored_bytes(owner)
    before = await asyncio.to_thread(metrics, owner)
    assert before["meshpacs_restore_instances_total"].value(result="sent") == 0

    await movescu(owner, instances[0].study_instance_uid)
    assert received(out) == originals(instances)
    m = await asyncio.to_thread(metrics, owner)
    assert m["meshpacs_restore_instances_total"].value(result="sent") == len(instances)
    assert m["meshpacs_restore_instances_total"].value(result="failed") == 0
    assert m["meshpacs_restore_bytes_total"].value() == size
    assert m["meshpacs_restore_mesh_bundles_total"].value(result="gathered") >= 1
    assert m["meshpacs_restore_mesh_bundles_total"].value(result="failed") == 0
    assert m["meshpacs_restore_mesh_instances_total"].value() == len(instances)
    assert m["meshpacs_restore_mesh_bytes_total"].value() == size

    for path in out.iterdir():
        path.unlink()
    await movescu(owner, instances[0].study_instance_uid)  # from the disk this time
    assert received(out) == originals(instances)
    m = await asyncio.to_thread(metrics, owner)
    assert m["meshpacs_restore_instances_total"].value(result="sent") == 2 * len(instances)
    assert m["meshpacs_restore_bytes_total"].value() == 2 * size
    assert m["meshpacs_restore_mesh_instances_total"].value() == len(instances)
