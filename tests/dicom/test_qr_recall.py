"""The Q/R's hook for instances not on disk: sent as each batch arrives, failed when not.

The hook here is a real :class:`~meshpacs.dicom.qr.MissingInstances` that brings files
back from a shelf (where the test moved them out of the store, as retention would have
removed them); the mesh's own hook is tested in ``tests/mesh/test_mesh_retrieve.py``.
A dcmtk ``getscu`` retrieves by C-GET over the same association.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

import pydicom
import pytest

from meshpacs.dicom.part10 import dataset_offset
from meshpacs.dicom.qr import QueryRetrieveService, Recalled
from meshpacs.dicom.scu import Outgoing, Target, send_instances
from meshpacs.metadata.records import InstanceLocation
from meshpacs.testing.dcmtk import dcmtk_tool
from meshpacs.testing.synth import SeriesSpec, StudySpec, generate_study, write_study

from .conftest import AE_TITLE, Node, dcmtk

pytestmark = pytest.mark.skipif(dcmtk_tool("getscu") is None, reason="dcmtk not installed")

SPEC = StudySpec(series=(SeriesSpec("CT", 6, 32, 32), SeriesSpec("MR", 4, 32, 32)))


class Shelf:
    """Brings instances back from ``shelf`` in two batches; the second only once the first
    reached the requestor (``arrived``); one instance it cannot bring back."""

    def __init__(self, shelf: Path, arrived: Path, *, fail_after_first: bool = False) -> None:
        self.shelf = shelf
        self.arrived = arrived
        self.fail_after_first = fail_after_first
        self.closed = False

    async def recall(self, missing: Sequence[InstanceLocation]) -> AsyncGenerator[Recalled, None]:
        try:
            ordered = sorted(missing, key=lambda m: m.sop_instance_uid)
            first, rest = ordered[: len(ordered) // 2], ordered[len(ordered) // 2 :]
            yield Recalled(paths={m.sha256: self.shelf / m.sha256.hex() for m in first})
            deadline = time.monotonic() + 30
            while len(list(self.arrived.iterdir())) < len(first):  # streamed, not held back
                assert time.monotonic() < deadline, "the first batch was not sent on its own"
                await asyncio.sleep(0.05)
            if self.fail_after_first:
                raise RuntimeError("the hook broke")
            *back, lost = rest
            yield Recalled(
                paths={m.sha256: self.shelf / m.sha256.hex() for m in back},
                failed={lost.sha256: "test: cannot be brought back"},
            )
        finally:
            self.closed = True


def qr_of(node: Node) -> QueryRetrieveService:
    qr = node.ae._qr  # the service the node's AE answers with
    assert qr is not None
    return qr


async def loaded_and_pruned(node: Node, tmp_path: Path) -> tuple[dict[str, bytes], Path, str]:
    """A study stored on the node, then every file moved from the store to a shelf."""
    instances = list(generate_study(77, SPEC))
    paths = write_study(tmp_path / "pacs", instances)
    items = [
        Outgoing(path, i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid)
        for path, i in zip(paths, instances, strict=True)
    ]
    deliveries = await asyncio.to_thread(
        send_instances, items, Target(AE_TITLE, "127.0.0.1", node.port, "LOADER")
    )
    assert all(d.ok for d in deliveries)
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    study = instances[0].study_instance_uid
    for location in await node.catalog.locate("STUDY", {"StudyInstanceUID": study}):
        shutil.move(node.store.path_for(location.sha256), shelf / location.sha256.hex())
    originals = {i.sop_instance_uid: i.data[dataset_offset(i.data) :] for i in instances}
    return originals, shelf, study


async def getscu(node: Node, study: str, out: Path) -> str:
    done = await dcmtk(["getscu", "-S", "-aet", "GETSCU", "-aec", AE_TITLE, "+B", "-od", str(out),
                        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                        "127.0.0.1", str(node.port)])  # fmt: skip
    return done.stdout + done.stderr


def received(out: Path) -> dict[str, bytes]:
    found = {}
    for path in out.iterdir():
        data = path.read_bytes()
        found[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = data[
            dataset_offset(data) :
        ]
    return found


async def test_instances_come_back_batch_by_batch_and_the_lost_one_fails(
    node: Node, tmp_path: Path
) -> None:
    originals, shelf, study = await loaded_and_pruned(node, tmp_path)
    out = tmp_path / "got"
    out.mkdir()
    hook = Shelf(shelf, out)
    qr_of(node).missing = hook
    report = await getscu(node, study, out)
    got = received(out)
    assert len(got) == len(originals) - 1, report
    assert all(originals[uid] == data for uid, data in got.items())
    assert "Warning" in report or "B000" in report, report  # 0xB000: one sub-operation failed
    assert hook.closed


async def test_a_hook_that_breaks_fails_the_rest_and_the_node_goes_on(
    node: Node, tmp_path: Path
) -> None:
    originals, shelf, study = await loaded_and_pruned(node, tmp_path)
    out = tmp_path / "got"
    out.mkdir()
    hook = Shelf(shelf, out, fail_after_first=True)
    qr_of(node).missing = hook
    report = await getscu(node, study, out)
    got = received(out)
    assert len(got) == len(originals) // 2, report
    assert all(originals[uid] == data for uid, data in got.items())
    assert hook.closed
    echo = await dcmtk(["echoscu", "-aec", AE_TITLE, "127.0.0.1", str(node.port)])
    assert echo.returncode == 0


async def test_without_a_hook_instances_not_on_disk_fail(node: Node, tmp_path: Path) -> None:
    originals, _, study = await loaded_and_pruned(node, tmp_path)
    out = tmp_path / "got"
    out.mkdir()
    report = await getscu(node, study, out)
    assert received(out) == {}, report
    assert len(originals) > 0
    assert "OutOfResourcesSubOperations" in report, report  # 0xA702: every one failed
