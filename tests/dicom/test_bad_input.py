"""Bad input over real sockets: each case is refused or ended cleanly, then a normal
C-STORE on a new association must still work. The node never crashes and keeps nothing
partial."""

from __future__ import annotations

import asyncio
import io
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from meshpacs.dicom.pdulimit import MAX_CONTROL_PDU

from .conftest import AE_TITLE, Node, running_node


@pytest.fixture(name="node")
def _node(either_node: Node) -> Node:
    """Every test here runs against both receive paths (meshpacs.dicom.receiver, pynetdicom)."""
    return either_node


CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def part10(path: Path, sop_uid: str, pixels: int = 64) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = EXPLICIT
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = sop_uid
    ds.PatientID = "BAD-INPUT"
    ds.StudyInstanceUID = "1.2.3.200"
    ds.SeriesInstanceUID = "1.2.3.200.1"
    ds.Modality = "CT"
    ds.add_new(0x7FE00010, "OB", bytes(pixels))  # bulk without an image module
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def store(port: int, path: Path, calling: str = "GOODSCU") -> int | None:
    """One C-STORE on a new association; the status, or None if not associated."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(CT, EXPLICIT)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


async def assert_store_still_works(node: Node, tmp_path: Path) -> None:
    good = part10(
        tmp_path / f"good-{time.monotonic_ns()}.dcm", f"1.2.3.200.1.{time.monotonic_ns()}"
    )
    assert await asyncio.to_thread(store, node.port, good) == 0x0000


def instance_files(node: Node) -> list[Path]:
    return list(node.store.instances_dir.rglob("*.dcm"))


@pytest.fixture(params=["direct", "pynetdicom"])
async def guarded(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Node]:
    """A node with an allow-list, two associations at most and a short idle timeout."""
    async with running_node(
        tmp_path / "node",
        direct_storage=request.param == "direct",
        allowed_calling_aets=("GOODSCU",),
        max_associations=2,
        network_timeout=1.0,
        max_instance_bytes=1_000_000,
    ) as node:
        yield node


async def test_calling_ae_not_on_the_allow_list_is_rejected(guarded: Node, tmp_path: Path) -> None:
    sample = part10(tmp_path / "a.dcm", "1.2.3.200.1.1")
    assert await asyncio.to_thread(store, guarded.port, sample, "INTRUDER") is None
    assert instance_files(guarded) == []
    await assert_store_still_works(guarded, tmp_path)


async def test_associations_over_the_limit_are_rejected(guarded: Node, tmp_path: Path) -> None:
    def hold_two_then_try_a_third() -> tuple[bool, bool]:
        ae = AE(ae_title="GOODSCU")
        ae.add_requested_context(Verification)
        held = [ae.associate("127.0.0.1", guarded.port, ae_title=AE_TITLE) for _ in range(2)]
        try:
            third = ae.associate("127.0.0.1", guarded.port, ae_title=AE_TITLE)
            rejected = not third.is_established
            if third.is_established:
                third.release()
            return all(a.is_established for a in held), rejected
        finally:
            for assoc in held:
                if assoc.is_established:
                    assoc.release()

    both_held, third_rejected = await asyncio.to_thread(hold_two_then_try_a_third)
    assert both_held and third_rejected
    await assert_store_still_works(guarded, tmp_path)


async def test_an_idle_peer_is_cut_off_after_the_network_timeout(
    guarded: Node, tmp_path: Path
) -> None:
    def idle() -> bool:
        ae = AE(ae_title="GOODSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", guarded.port, ae_title=AE_TITLE)
        assert assoc.is_established
        deadline = time.monotonic() + 10
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.1)
        return not assoc.is_established

    assert await asyncio.to_thread(idle)
    await assert_store_still_works(guarded, tmp_path)


async def test_an_instance_over_the_size_cap_is_refused(guarded: Node, tmp_path: Path) -> None:
    big = part10(tmp_path / "big.dcm", "1.2.3.200.1.9", pixels=2_000_000)
    assert await asyncio.to_thread(store, guarded.port, big) == 0xA700
    assert instance_files(guarded) == []
    await assert_store_still_works(guarded, tmp_path)


def raw_connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def send_until_refused(sock: socket.socket, total: int) -> int:
    """Stream ``total`` junk bytes; how many got out before the node closed the connection."""
    sent = 0
    chunk = b"\x00" * 65536
    try:
        while sent < total:
            sent += sock.send(chunk)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    return sent


async def test_a_pdu_longer_than_the_limit_ends_the_association_unread(
    node: Node, tmp_path: Path
) -> None:
    declared = 200 * 1024 * 1024  # a 200 MB association request
    assert declared > MAX_CONTROL_PDU

    def attack() -> int:
        with raw_connect(node.port) as sock:
            sock.sendall(struct.pack(">BBL", 0x01, 0, declared))
            return send_until_refused(sock, declared)

    sent = await asyncio.to_thread(attack)
    assert sent < 32 * 1024 * 1024, f"node kept reading: {sent} bytes accepted"
    await assert_store_still_works(node, tmp_path)


def associate_raw(port: int) -> tuple[socket.socket, int]:
    """A real association, whose socket the test then drives by hand."""
    ae = AE(ae_title="RAWSCU")
    ae.add_requested_context(CT, EXPLICIT)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    sock = assoc.dul.socket.socket
    assert sock is not None
    return sock, int(assoc.accepted_contexts[0].context_id)


async def test_a_peer_vanishing_mid_dataset_leaves_nothing_behind(
    node: Node, tmp_path: Path
) -> None:
    source = part10(tmp_path / "cut.dcm", "1.2.3.200.1.7", pixels=400_000)
    data = source.read_bytes()
    dataset = data[data.index(b"\x08\x00\x16\x00") :]  # from (0008,0016) on: the dataset

    def send_half_then_vanish() -> None:
        sock, context_id = associate_raw(node.port)
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = CT
        request.AffectedSOPInstanceUID = "1.2.3.200.1.7"
        request.Priority = 2
        request.DataSet = io.BytesIO(dataset)
        message = C_STORE_RQ()
        message.primitive_to_message(request)
        pdus = []
        for p_data in message.encode_msg(context_id, 16384):
            pdu = P_DATA_TF()
            pdu.from_primitive(p_data)
            pdus.append(pdu)
        for pdu in pdus[: len(pdus) // 2]:
            sock.sendall(pdu.encode())
        time.sleep(0.3)
        sock.shutdown(socket.SHUT_RDWR)  # the peer vanishes: no release, no abort
        sock.close()

    await asyncio.to_thread(send_half_then_vanish)
    await asyncio.sleep(0.5)
    assert instance_files(node) == []
    # pynetdicom streams into the store's tmp directory (the fixture sets it, as the daemon does)
    assert list(node.store.tmp_dir.iterdir()) == [], "a partial dataset file was left behind"
    assert (await node.catalog.counts())["instances"] == 0
    await assert_store_still_works(node, tmp_path)


async def test_deflated_datasets_are_not_accepted(node: Node, tmp_path: Path) -> None:
    """The node would have to inflate them to catalogue them: a bomb it will not open."""

    def propose_deflated() -> list[str]:
        ae = AE(ae_title="DEFLATER")
        ae.add_requested_context(CT, ["1.2.840.10008.1.2.1.99"])
        assoc = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
        try:
            return [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts]
        finally:
            if assoc.is_established:
                assoc.release()

    assert await asyncio.to_thread(propose_deflated) == []
    await assert_store_still_works(node, tmp_path)
