"""C-STORE into the node from real dcmtk tools and pynetdicom: exact bytes, durable, idempotent."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import hashlib
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pynetdicom import AE

from meshpacs.dicom.attributes import (
    HeaderAttributes,
    attributes_from_head,
    read_instance_record,
)
from meshpacs.dicom.ingest import CatalogWriter, reconcile_recent
from meshpacs.dicom.part10 import dataset_offset
from meshpacs.dicom.storage import FANOUT, HEAD_BYTES, InstanceStore
from meshpacs.errors import CatalogError
from meshpacs.metadata.catalog import Catalog
from meshpacs.metadata.records import AddResult, InstanceRecord, StudyState
from meshpacs.testing import SeriesSpec, StudySpec, generate_study, write_study
from meshpacs.testing.dcmtk import dcmtk_tool

from .conftest import AE_TITLE, Node, dcmtk, running_node


@pytest.fixture(name="node")
def _node(either_node: Node) -> Node:
    """Every test here runs against both receive paths (meshpacs.dicom.receiver, pynetdicom)."""
    return either_node


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
    private = _file(tmp_path / "p.dcm", "1.2.826.0.1.3680043.8.498.999.1", "1.2.3.100.1.1")
    assert await asyncio.to_thread(_send, node.port, private) == 0x0000
    assert (await node.catalog.counts())["instances"] == 1


async def test_invalid_uid_is_refused_and_the_node_still_works(node: Node, tmp_path: Path) -> None:
    bad = _file(tmp_path / "bad.dcm", "1.2.840.10008.5.1.4.1.1.7", "1.2/../../etc/passwd")
    assert await asyncio.to_thread(_send, node.port, bad) == 0xC000
    assert stored_files(node) == []
    good = _file(tmp_path / "good.dcm", "1.2.840.10008.5.1.4.1.1.7", "1.2.3.100.1.2")
    assert await asyncio.to_thread(_send, node.port, good) == 0x0000


async def test_a_dataset_without_study_uid_is_kept_and_flagged(node: Node, tmp_path: Path) -> None:
    body = Dataset()
    body.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    body.SOPInstanceUID = "1.2.3.100.1.3"
    body.PatientName = "NO^STUDY"
    odd = _file(tmp_path / "odd.dcm", "1.2.840.10008.5.1.4.1.1.7", "1.2.3.100.1.3", body)
    assert await asyncio.to_thread(_send, node.port, odd) == 0x0000
    assert len(stored_files(node)) == 1
    assert (await node.catalog.counts())["unparsed"] == 1


async def test_accepted_and_opened_sockets_have_tcp_nodelay(node: Node) -> None:
    """Both receive paths: the node's own (storage, echo, find) and pynetdicom's (retrieve)."""
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
        Verification,
    )

    def nodelay(sock: socket.socket) -> int:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    def check(abstract_syntax: str) -> tuple[int, int]:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(abstract_syntax)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
        assert assoc.is_established
        try:
            client = nodelay(assoc.dul.socket.socket)
            server = node.ae._server
            assert server is not None
            if server.hub is not None and server.hub.active:
                (receiving,) = server.hub.active
                return client, nodelay(receiving.socket)
            (acceptor,) = server.active_associations
            return client, nodelay(acceptor.dul.socket.socket)
        finally:
            assoc.release()

    for syntax in (
        Verification,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
    ):
        client, accepted = await asyncio.to_thread(check, syntax)
        assert client and accepted, syntax


# -- the store, the header read and the writer, without a network --------------------------


def test_store_is_one_level_of_256_directories_made_at_open(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "instances", tmp_path / "tmp")
    assert sorted(p.name for p in store.instances_dir.iterdir()) == list(FANOUT)
    data = b"\x01" * (HEAD_BYTES + 1000)
    digest = hashlib.sha256(data).digest()
    stored = store.write(data)
    name = digest.hex()
    assert stored.path == store.path_for(digest) == store.instances_dir / name[:2] / f"{name}.dcm"
    assert (stored.sha256, stored.size, stored.existed) == (digest, len(data), False)
    assert stored.path.read_bytes() == data
    assert stored.head == data[:HEAD_BYTES]
    assert store.write(data).existed
    small = store.write(b"tiny")
    assert small.head == b"tiny" and small.size == 4
    # Opening again keeps every file and makes no new directory.
    again = InstanceStore(store.instances_dir, store.tmp_dir)
    assert sorted(p.name for p in again.instances_dir.iterdir()) == list(FANOUT)
    assert stored.path.read_bytes() == data
    assert sorted(store.instances_dir.rglob("*.dcm")) == sorted([stored.path, small.path])


def test_adopt_syncs_the_file_then_renames_then_syncs_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = InstanceStore(tmp_path / "instances", tmp_path / "tmp")
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    stored = store.write(b"some bytes")
    assert events == ["fsync-file", "rename", "fsync-dir"]
    events.clear()
    assert store.write(b"some bytes").existed  # the name is made durable all the same
    assert events == ["fsync-file", "fsync-dir"]
    assert stored.path.parent.name == stored.sha256.hex()[:2]


def _dataset_file(path: Path, *, pixels: int = 64, description: str = "Head") -> bytes:
    body = Dataset()
    body.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    body.SOPInstanceUID = "1.2.3.300.1.1"
    body.PatientID = "P3"
    body.PatientName = "Doe^Jane"
    body.StudyInstanceUID = "1.2.3.300"
    body.StudyDescription = description
    body.SeriesInstanceUID = "1.2.3.300.1"
    body.SeriesNumber = 4
    body.InstanceNumber = 7
    body.Modality = "OT"
    if pixels:
        body.add_new(0x7FE00010, "OB", bytes(pixels))
    else:  # no pixel data: the parse runs to the end of the file
        body.add_new(0x00291010, "OB", bytes(3 * HEAD_BYTES))
        body.add_new(0x00290010, "LO", "PRIVATE")
    _file(path, "1.2.840.10008.5.1.4.1.1.7", "1.2.3.300.1.1", body)
    return path.read_bytes()


def _record_of(
    path: Path, data: bytes, head: bytes, early: HeaderAttributes | None = None
) -> InstanceRecord:
    return read_instance_record(
        path,
        head=head,
        early=early,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
        sop_instance_uid="1.2.3.300.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size=len(data),
        sha256=hashlib.sha256(data).digest(),
        calling_ae="PACS",
        received_at=1.0,
    )


@pytest.mark.parametrize(
    ("pixels", "description"),
    [
        (200_000, "Head"),  # the usual case: the header is in the head, pixels beyond it
        (64, "Head"),  # a small file: the head is the whole file
        (0, "Head"),  # no pixel data, the file longer than the head
        (200_000, "D" * 5000),  # a value pydicom defers (over 4096 bytes)
    ],
)
def test_attributes_from_the_head_match_those_from_the_file(
    tmp_path: Path, pixels: int, description: str
) -> None:
    path = tmp_path / "x.dcm"
    data = _dataset_file(path, pixels=pixels, description=description)
    from_file = _record_of(path, data, b"")
    assert from_file.parse_error is None and from_file.study is not None
    assert from_file.study.description == description
    for cut in (0, 1, 132, 300, len(data) // 2, HEAD_BYTES, len(data)):
        assert _record_of(path, data, data[:cut]) == from_file, cut


@pytest.mark.parametrize(("pixels", "description"), [(200_000, "Head"), (200_000, "D" * 5000)])
def test_a_header_parsed_while_arriving_gives_the_same_record(
    tmp_path: Path, pixels: int, description: str
) -> None:
    """The receiver parses the first HEAD_BYTES before the rest is in; cut anywhere, the
    early parse either answers exactly as the file does or declines (None)."""
    path = tmp_path / "x.dcm"
    data = _dataset_file(path, pixels=pixels, description=description)
    from_file = _record_of(path, data, b"")
    answered = 0
    for cut in (1, 132, 300, 2000, 4000, 9000, HEAD_BYTES):
        early = attributes_from_head(data[:cut], "1.2.840.10008.1.2.1")
        if early is None:
            continue
        answered += 1
        assert _record_of(path, data, data[:cut], early) == from_file, cut
    assert answered >= 1  # the full head always holds this header


def test_a_truncated_file_reads_the_same_from_the_head(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    data = _dataset_file(path, pixels=200_000)
    cut = data[: data.index(b"1.2.3.300.1\x00")]  # ends inside the Series Instance UID
    path.write_bytes(cut)
    from_file = _record_of(path, cut, b"")
    assert from_file.parse_error is not None
    assert _record_of(path, cut, cut) == from_file
    assert _record_of(path, cut, cut[:200]) == from_file


async def test_writer_commits_records_from_threads_and_fails_fast_once_stopped(
    tmp_path: Path,
) -> None:
    path = tmp_path / "x.dcm"
    data = _dataset_file(path)
    record = _record_of(path, data, data)
    async with await Catalog.open(tmp_path / "catalog.sqlite") as catalog:
        writer = CatalogWriter(catalog)
        with pytest.raises(CatalogError):  # not started
            writer.submit(record).result(5)
        writer.start()
        results = await asyncio.gather(
            *(asyncio.to_thread(lambda: writer.submit(record).result(10)) for _ in range(3))
        )
        assert sorted(r.value for r in results) == ["duplicate", "duplicate", "stored"]
        assert await writer.commit(record) is AddResult.DUPLICATE
        await writer.stop()
        with pytest.raises(CatalogError):
            await asyncio.to_thread(lambda: writer.submit(record).result(5))
        assert (await catalog.counts())["instances"] == 1


def test_nothing_is_placed_when_the_file_fsync_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = InstanceStore(tmp_path / "instances", tmp_path / "tmp")
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    temp = tmp_path / "tmp" / "received.part"
    temp.write_bytes(b"received bytes")
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError):
        store.adopt(temp, max_bytes=100)
    assert list(store.instances_dir.rglob("*.dcm")) == []


async def test_rows_without_their_file_are_removed_at_start(tmp_path: Path) -> None:
    """A crash between committing a row and linking its file leaves such a row."""
    store = InstanceStore(tmp_path / "instances", tmp_path / "tmp")
    path = tmp_path / "x.dcm"
    data = _dataset_file(path)
    kept = _record_of(path, data, data)
    store.write(data)
    lost = dataclasses.replace(kept, sha256=hashlib.sha256(b"never written").digest())
    other_uid = dataclasses.replace(lost, sop_instance_uid="1.2.3.300.1.2")
    async with await Catalog.open(tmp_path / "catalog.sqlite") as catalog:
        assert await catalog.add_instances([kept, lost, other_uid]) == [
            AddResult.STORED, AddResult.CONFLICT, AddResult.STORED,
        ]  # fmt: skip
        assert (await catalog.counts())["conflicts"] == 1
        assert await reconcile_recent(catalog, store) == 2
        counts = await catalog.counts()
        assert counts["instances"] == 1
        # The surviving version is alone again: no longer flagged as a conflict.
        assert counts["conflicts"] == 0
        assert await reconcile_recent(catalog, store) == 0


async def test_a_file_that_cannot_be_placed_takes_its_row_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the direct receive path commits the row before placing the file. Disk errors
    can't be made real here: place_pending is made to fail (ENOSPC)."""
    path = tmp_path / "x.dcm"
    _dataset_file(path, pixels=200_000)
    failing = True

    async with running_node(tmp_path / "node") as node:
        original = node.store.place_pending

        def place_pending(*args: Any) -> Any:
            if failing:
                InstanceStore.discard_pending(args[0])
                raise OSError(errno.ENOSPC, "No space left on device")
            return original(*args)

        monkeypatch.setattr(node.store, "place_pending", place_pending)
        assert await asyncio.to_thread(_send, node.port, path) == 0xA700
        assert (await node.catalog.counts())["instances"] == 0
        failing = False
        assert await asyncio.to_thread(_send, node.port, path) == 0x0000
        assert (await node.catalog.counts())["instances"] == 1
        assert len(stored_files(node)) == 1
