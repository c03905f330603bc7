"""C-STORE into the node from real dcmtk tools and pynetdicom: exact bytes, durable, idempotent."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pynetdicom import AE

from meshpacs.dicom.part10 import dataset_offset
from meshpacs.metadata.records import StudyState
from meshpacs.testing import SeriesSpec, StudySpec, generate_study, write_study
from meshpacs.testing.dcmtk import dcmtk_tool

from .conftest import AE_TITLE, Node, dcmtk

pytestmark = pytest.mark.skipif(dcmtk_tool("storescu") is None, reason="dcmtk not installed")

STUDY = StudySpec(series=(SeriesSpec("CT", 4, 64, 64), SeriesSpec("MR", 3, 32, 32)))


def dataset_part(data: bytes) -> bytes:
    return data[dataset_offset(data) :]


def stored_files(node: Node) -> list[Path]:
    return sorted(node.store.instances_dir.rglob("*.dcm"))


async def storescu(node: Node, *paths: Path, extra: tuple[str, ...] = ()) -> str:
    args = ["storescu", "-aet", "TESTSCU", "-aec", AE_TITLE, *extra, "127.0.0.1", str(node.port)]
    done = await dcmtk([*args, *map(str, paths)])
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


async def test_echoscu_gets_an_answer(node: Node) -> None:
    done = await dcmtk(
        ["echoscu", "-aet", "TESTSCU", "-aec", AE_TITLE, "127.0.0.1", str(node.port)]
    )
    assert done.returncode == 0, done.stderr


async def test_storescu_study_is_kept_byte_for_byte_and_catalogued(
    node: Node, tmp_path: Path
) -> None:
    instances = list(generate_study(21, STUDY))
    paths = write_study(tmp_path / "src", instances)
    await storescu(node, *paths)

    stored = {dataset_part(p.read_bytes()) for p in stored_files(node)}
    assert stored == {dataset_part(i.data) for i in instances}
    counts = await node.catalog.counts()
    assert (counts["studies"], counts["series"], counts["instances"]) == (1, 2, len(instances))
    assert counts["unparsed"] == 0
    assert await node.catalog.study_state(instances[0].study_instance_uid) is StudyState.RECEIVING
    for path in stored_files(node):  # named by content, never by a DICOM value
        assert path.stem == hashlib.sha256(path.read_bytes()).hexdigest()


async def test_compressed_transfer_syntax_is_stored_as_sent(node: Node, tmp_path: Path) -> None:
    spec = StudySpec(series=(SeriesSpec("CT", 2, 64, 64),), transfer_syntax="rle")
    instances = list(generate_study(22, spec))
    paths = write_study(tmp_path / "src", instances)
    # dcmsend proposes each file's own syntax and never decompresses with -dn.
    args = ["dcmsend", "-dn", "-aet", "TESTSCU", "-aec", AE_TITLE, "127.0.0.1", str(node.port)]
    done = await dcmtk([*args, *map(str, paths)])
    assert done.returncode == 0, done.stderr
    stored = {dataset_part(p.read_bytes()) for p in stored_files(node)}
    assert stored == {dataset_part(i.data) for i in instances}
    for path in stored_files(node):
        assert b"1.2.840.10008.1.2.5" in path.read_bytes()[: dataset_offset(path.read_bytes())]


async def test_same_instance_twice_is_stored_once(node: Node, tmp_path: Path) -> None:
    instances = list(generate_study(23, STUDY))[:2]
    paths = write_study(tmp_path / "src", instances)
    await storescu(node, *paths)
    await storescu(node, *paths)
    assert len(stored_files(node)) == 2
    assert (await node.catalog.counts())["instances"] == 2


async def test_same_uid_with_other_bytes_keeps_both_and_flags_them(
    node: Node, tmp_path: Path
) -> None:
    instance = next(generate_study(24, STUDY))
    first = tmp_path / "a.dcm"
    first.write_bytes(instance.data)
    changed = bytearray(instance.data)
    changed[-1] ^= 0xFF  # a pixel differs, same SOP Instance UID
    second = tmp_path / "b.dcm"
    second.write_bytes(bytes(changed))
    await storescu(node, first)
    await storescu(node, second)
    assert len(stored_files(node)) == 2
    counts = await node.catalog.counts()
    assert counts["conflicts"] >= 1
    located = await node.catalog.locate("IMAGE", {"SOPInstanceUID": instance.sop_instance_uid})
    assert len(located) == 2


def _send(port: int, path: Path) -> int:
    ae = AE(ae_title="PYSCU")
    ds_meta = _meta_of(path)
    ae.add_requested_context(ds_meta[0], ds_meta[1])
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
        return int(status.Status)
    finally:
        assoc.release()


def _meta_of(path: Path) -> tuple[str, str]:
    import pydicom

    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


def _file(path: Path, sop_class: str, sop_uid: str, body: Dataset | None = None) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds = body or Dataset()
    ds.file_meta = meta
    if body is None:
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.PatientID = "P1"
        ds.StudyInstanceUID = "1.2.3.100"
        ds.SeriesInstanceUID = "1.2.3.100.1"
        ds.Modality = "OT"
    dcmwrite(path, ds, enforce_file_format=True)
    return path


async def test_unknown_sop_class_is_stored_and_the_association_goes_on(
    node: Node, tmp_path: Path
) -> None:
    import asyncio

    private = _file(tmp_path / "p.dcm", "1.2.826.0.1.3680043.8.498.999.1", "1.2.3.100.1.1")
    assert await asyncio.to_thread(_send, node.port, private) == 0x0000
    assert (await node.catalog.counts())["instances"] == 1


async def test_invalid_uid_is_refused_and_the_node_still_works(node: Node, tmp_path: Path) -> None:
    import asyncio

    bad = _file(tmp_path / "bad.dcm", "1.2.840.10008.5.1.4.1.1.7", "1.2/../../etc/passwd")
    assert await asyncio.to_thread(_send, node.port, bad) == 0xC000
    assert stored_files(node) == []
    good = _file(tmp_path / "good.dcm", "1.2.840.10008.5.1.4.1.1.7", "1.2.3.100.1.2")
    assert await asyncio.to_thread(_send, node.port, good) == 0x0000


async def test_a_dataset_without_study_uid_is_kept_and_flagged(node: Node, tmp_path: Path) -> None:
    import asyncio

    body = Dataset()
    body.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    body.SOPInstanceUID = "1.2.3.100.1.3"
    body.PatientName = "NO^STUDY"
    odd = _file(tmp_path / "odd.dcm", "1.2.840.10008.5.1.4.1.1.7", "1.2.3.100.1.3", body)
    assert await asyncio.to_thread(_send, node.port, odd) == 0x0000
    assert len(stored_files(node)) == 1
    assert (await node.catalog.counts())["unparsed"] == 1


async def test_accepted_and_opened_sockets_have_tcp_nodelay(node: Node) -> None:
    import asyncio

    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    def check() -> tuple[int, int]:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
        assert assoc.is_established
        try:
            client = assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            server = node.ae._server
            assert server is not None
            acceptors = server.active_associations
            accepted = acceptors[0].dul.socket.socket.getsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY
            )
            return client, accepted
        finally:
            assoc.release()

    client, accepted = await asyncio.to_thread(check)
    assert client and accepted
