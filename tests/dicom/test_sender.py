"""The direct C-STORE sender, node to node: a C-MOVE from one node into another.

The receiving node aborts any P-DATA PDU longer than the maximum it announced, so a
sender that ignored the peer's maximum would fail here; it announces a small one on
purpose. Both nodes build the file meta the same way, so the files must be identical.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

from meshpacs.dicom import reactor
from meshpacs.dicom.sender import send_stored

from .conftest import AE_TITLE, RECEIVER_AE, Node, running_node
from .test_bad_input import CT, EXPLICIT, part10, store


def _move_study(port: int, study_uid: str) -> list[int]:
    ae = AE(ae_title="MOVER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    try:
        return [
            int(status.Status)
            for status, _ in assoc.send_c_move(
                identifier, RECEIVER_AE, StudyRootQueryRetrieveInformationModelMove
            )
            if status
        ]
    finally:
        assoc.release()


def _digests(node: Node) -> set[str]:
    return {
        hashlib.sha256(p.read_bytes()).hexdigest() for p in node.store.instances_dir.rglob("*.dcm")
    }


async def test_c_move_into_a_node_with_a_small_pdu_arrives_byte_for_byte(
    tmp_path: Path,
) -> None:
    sizes = [0, 1, 4000, 4090, 100_000]  # around the 4 KiB PDU, empty, and many PDUs
    async with (
        running_node(tmp_path / "source") as source,
        running_node(
            tmp_path / "destination",
            ae_title=RECEIVER_AE,
            port=source.receiver_port,
            max_pdu=4096,
        ) as destination,
    ):
        for i, size in enumerate(sizes):
            sample = part10(tmp_path / f"{i}.dcm", f"1.2.3.200.1.{i + 50}", pixels=size)
            assert await asyncio.to_thread(store, source.port, sample) == 0x0000
        statuses = await asyncio.to_thread(_move_study, source.port, "1.2.3.200")
        assert statuses[-1] == 0x0000, [hex(s) for s in statuses]
        assert len(_digests(source)) == len(sizes)
        assert _digests(destination) == _digests(source)


async def test_a_file_that_does_not_match_its_context_is_not_sent(
    node: Node, tmp_path: Path
) -> None:
    """The sender refuses, as pynetdicom does, a syntax no accepted context carries."""
    sample = part10(tmp_path / "x.dcm", "1.2.3.200.1.99")
    ae = AE(ae_title="GOODSCU")
    ae.add_requested_context(CT, EXPLICIT)

    def attempt() -> str:
        assoc = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
        try:
            send_stored(assoc, sample, sop_class_uid=CT, sop_instance_uid="1.2.3.200.1.99",
                        transfer_syntax_uid="1.2.840.10008.1.2")  # fmt: skip
        except ValueError as exc:
            return str(exc)
        finally:
            assoc.release()
        return "sent"

    assert await asyncio.to_thread(attempt) != "sent"


async def test_a_held_reactor_resumes_when_the_sender_goes_quiet(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sending from another thread keeps the reactor paused between instances; an
    association nobody releases gets its reactor back after the idle limit."""
    monkeypatch.setattr(reactor, "HOLD_IDLE_SECONDS", 0.3)
    sample = part10(tmp_path / "x.dcm", "1.2.3.200.1.98")
    ae = AE(ae_title="GOODSCU")
    ae.add_requested_context(CT, EXPLICIT)
    assoc = await asyncio.to_thread(ae.associate, "127.0.0.1", node.port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        for _ in range(2):
            status = await asyncio.to_thread(
                send_stored, assoc, sample, sop_class_uid=CT,
                sop_instance_uid="1.2.3.200.1.98", transfer_syntax_uid=EXPLICIT,
            )  # fmt: skip
            assert int(status.Status) == 0x0000
            assert not assoc._reactor_checkpoint.is_set()  # still held for the next send
        deadline = time.monotonic() + 5
        while not assoc._reactor_checkpoint.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert assoc._reactor_checkpoint.is_set()
    finally:
        await asyncio.to_thread(assoc.release)
    assert not assoc.is_established
