"""The node's own C-FIND path (find_receiver) answers exactly as pynetdicom's does.

A raw SCU written here (pynetdicom's PDU classes for the association request, our framing
for the rest) records every PDU each path sends back after the association is accepted;
the two recordings must be byte for byte the same: command sets, identifiers, their
fragmentation under a small Maximum Length, non-ASCII names, both Little Endian syntaxes.
Then the protocol's edges: C-CANCEL, C-ECHO, A-ABORT and release, bounds, the association
limit, and the audit trail's Query event.
"""

from __future__ import annotations

import asyncio
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, dsutils, pdu_primitives
from pynetdicom._globals import APPLICATION_CONTEXT_NAME
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from meshpacs.dicom import pdu
from meshpacs.dicom.find_receiver import MAX_IDENTIFIER_BYTES, FindAssociation
from meshpacs.metadata.catalog import Catalog
from meshpacs.metadata.records import InstanceRecord, PatientInfo, SeriesInfo, StudyInfo
from meshpacs.trail import TrailLog, TrailWriter
from meshpacs.trail.log import read_entries
from meshpacs.trail.messages import AuditSource

from .conftest import AE_TITLE, Node, running_node
from .routing import served_by

STUDY_FIND = str(StudyRootQueryRetrieveInformationModelFind)
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
VERIFICATION = str(Verification)
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
AUDIT_KEY = b"q" * 32
NAMES = ["SMITH^JOHN", "SMITHSON^ANN", "MÜLLER^JÜRGEN", "山田^太郎=やまだ^たろう", "O'NEIL^MARY",
         "SMYTHE^Ø", "JONES^", "", "ΔΗΜΗΤΡΙΟΥ^ΝΙΚΟΣ", "SMI"]  # fmt: skip


def records(studies: int) -> Iterator[InstanceRecord]:
    for n in range(studies):
        patient = PatientInfo(f"P{n // 3:05d}", "", NAMES[(n // 3) % len(NAMES)], "19700101", "F")
        study = StudyInfo(f"2.25.{n}", f"2020{n % 12 + 1:02d}01", "101500", f"A{n}", str(n),
                          "made-up study" if n % 2 else "Étude", "REF^DOC")  # fmt: skip
        for s, modality in enumerate(("CT", "MR")[: 1 + n % 2]):
            series = SeriesInfo(f"2.25.{n}.{s}", modality, s + 1, "", "")
            yield InstanceRecord(
                sop_instance_uid=f"2.25.{n}.{s}.1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid=EXPLICIT,
                instance_number=1,
                size=1000,
                sha256=bytes(32),
                calling_ae="TEST",
                received_at=0.0,
                patient=patient,
                study=study,
                series=series,
            )


def fill(catalog: Catalog, studies: int) -> None:
    db = catalog.connect_writer()
    try:
        catalog.add_instances_on(db, list(records(studies)))
    finally:
        db.close()


@dataclass
class Answers:
    pdus: list[bytes]  # every PDU after the A-ASSOCIATE-AC, as received
    pending: int
    final: int


class RawScu:
    """A query SCU over a plain socket, to see exactly what the node sends."""

    def __init__(self, port: int, contexts: list[Any], max_pdu: int = 16384) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        for number, context in enumerate(contexts):
            context.context_id = context.context_id or 2 * number + 1
        primitive = pdu_primitives.A_ASSOCIATE()
        primitive.application_context_name = APPLICATION_CONTEXT_NAME
        primitive.calling_ae_title = "RAWSCU"
        primitive.called_ae_title = AE_TITLE
        primitive.presentation_context_definition_list = contexts
        length = pdu_primitives.MaximumLengthNotification()
        length.maximum_length_received = max_pdu
        uid = pdu_primitives.ImplementationClassUIDNotification()
        uid.implementation_class_uid = "1.2.3.4"
        primitive.user_information = [length, uid]
        rq = A_ASSOCIATE_RQ()
        rq.from_primitive(primitive)
        self.sock.sendall(rq.encode())
        kind, body = self.read_pdu()
        assert kind == pdu.A_ASSOCIATE_AC
        ac = A_ASSOCIATE_AC()
        ac.decode(pdu._HEADER.pack(kind, len(body)) + body)  # type: ignore[attr-defined]
        self.accepted = {
            int(cx.context_id): str(cx.transfer_syntax[0])
            for cx in ac.to_primitive().presentation_context_definition_results_list
            if cx.result == 0
        }

    def read_pdu(self) -> tuple[int, bytes]:
        header = self._exactly(6)
        kind, length = pdu.parse_header(header)
        return kind, self._exactly(length)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionResetError("closed")
            data += chunk
        return data

    def send_find(
        self, context_id: int, sop_class: str, identifier: Dataset, message_id: int = 1
    ) -> None:
        syntax = self.accepted[context_id]
        data = dsutils.encode(identifier, syntax == IMPLICIT, True)
        assert data is not None
        self.send_command(context_id, 0x0020, message_id, sop_class, has_dataset=True)
        self.sock.sendall(pdu.p_data_pdus(context_id, data, command=False, max_pdu=16384))

    def send_command(
        self, context_id: int, field: int, message_id: int, sop_class: str, has_dataset: bool
    ) -> None:
        elements = {
            0x0002: pdu.uid_value(sop_class),
            0x0100: pdu.us_value(field),
            0x0110: pdu.us_value(message_id),
            0x0800: pdu.us_value(0x0001 if has_dataset else 0x0101),
        }
        if field == 0x0020:
            elements[0x0700] = pdu.us_value(0)  # priority
        self.sock.sendall(pdu.p_data_pdu(context_id, pdu.encode_command(elements)))

    def send_cancel(self, context_id: int, message_id: int) -> None:
        elements = {
            0x0100: pdu.us_value(0x0FFF),
            0x0120: pdu.us_value(message_id),
            0x0800: pdu.us_value(0x0101),
        }
        self.sock.sendall(pdu.p_data_pdu(context_id, pdu.encode_command(elements)))

    def answers(self) -> Answers:
        """PDUs until the final (non-Pending) response to a C-FIND."""
        pdus: list[bytes] = []
        pending = 0
        command = b""
        while True:
            kind, body = self.read_pdu()
            pdus.append(bytes([kind]) + body)
            assert kind == pdu.P_DATA_TF, kind
            for pdv in pdu.iter_pdvs(memoryview(body)):
                if not pdv.is_command:
                    continue
                command += bytes(pdv.data)
                if not pdv.is_last:
                    continue
                status = pdu.decode_command(command).us(0x0900)
                command = b""
                assert status is not None
                if status in (0xFF00, 0xFF01):
                    pending += 1
                else:
                    return Answers(pdus, pending, status)

    def release(self) -> None:
        self.sock.sendall(pdu.release_rq_pdu())
        kind, _ = self.read_pdu()
        assert kind == pdu.A_RELEASE_RP
        self.sock.close()


def query(level: str, charset: str | None = None, **keys: str) -> Dataset:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


QUERIES = [
    (STUDY_FIND, query("STUDY", PatientName="SMI*", StudyDate="", StudyDescription="",
                       ModalitiesInStudy="", NumberOfStudyRelatedInstances="", PatientAge="")),
    (STUDY_FIND, query("STUDY", "ISO_IR 100", PatientName="*", AccessionNumber="")),
    (STUDY_FIND, query("SERIES", StudyInstanceUID="2.25.7", Modality="", SeriesNumber="")),
    (PATIENT_FIND, query("PATIENT", PatientName="", PatientID="", PatientBirthDate="",
                         NumberOfPatientRelatedStudies="")),
    (STUDY_FIND, query("STUDY", StudyDate="20200101-2020")),  # refused: not a date
    (STUDY_FIND, query("STUDY", PatientID="NOBODY")),  # no match
]  # fmt: skip


def run_queries(port: int, syntax: str, max_pdu: int) -> list[Answers]:
    contexts = [build_context(STUDY_FIND, [syntax]), build_context(PATIENT_FIND, [syntax])]
    contexts[0].context_id, contexts[1].context_id = 1, 3
    scu = RawScu(port, contexts, max_pdu)
    try:
        results = []
        for number, (sop_class, identifier) in enumerate(QUERIES, start=1):
            scu.send_find(1 if sop_class == STUDY_FIND else 3, sop_class, identifier, number)
            results.append(scu.answers())
        return results
    finally:
        scu.release()


@pytest.mark.parametrize(("syntax", "max_pdu"), [(EXPLICIT, 16384), (IMPLICIT, 0), (EXPLICIT, 64)])
async def test_both_paths_send_the_very_same_bytes(
    tmp_path: Path, syntax: str, max_pdu: int
) -> None:
    recorded = []
    for direct in (True, False):
        async with running_node(tmp_path / str(direct), direct_find=direct) as node:
            await asyncio.to_thread(fill, node.catalog, 60)
            recorded.append(await asyncio.to_thread(run_queries, node.port, syntax, max_pdu))
    direct_answers, pynetdicom_answers = recorded
    assert [a.final for a in direct_answers] == [0, 0, 0, 0, 0xA900, 0]
    smi = sum(1 for n in range(60) if NAMES[(n // 3) % len(NAMES)].casefold().startswith("smi"))
    assert [a.pending for a in direct_answers][:4] == [smi, 60, 2, 20]
    for ours, theirs in zip(direct_answers, pynetdicom_answers, strict=True):
        assert ours.pdus == theirs.pdus
    if max_pdu:
        assert all(len(p) - 1 <= max_pdu for a in direct_answers for p in a.pdus)


async def test_query_associations_go_direct_and_retrieves_to_pynetdicom(tmp_path: Path) -> None:
    async with running_node(tmp_path / "on") as node:
        assert await asyncio.to_thread(served_by, node, STUDY_FIND, VERIFICATION) == (1, 0)
        move = str(StudyRootQueryRetrieveInformationModelMove)
        assert await asyncio.to_thread(served_by, node, move, VERIFICATION) == (0, 1)
        server = node.ae._server
        assert server is not None and server.hub is not None
    async with running_node(tmp_path / "off", direct_find=False) as node:
        assert await asyncio.to_thread(served_by, node, STUDY_FIND, VERIFICATION) == (0, 1)


def _find_then_cancel(port: int) -> tuple[Answers, Answers]:
    scu = RawScu(port, [build_context(STUDY_FIND, [EXPLICIT])])
    try:
        scu.send_find(1, STUDY_FIND, query("STUDY", PatientName="", StudyDescription=""), 5)
        scu.send_cancel(1, 5)
        cancelled = scu.answers()
        scu.send_find(1, STUDY_FIND, query("STUDY", PatientName=""), 6)
        return cancelled, scu.answers()
    finally:
        scu.release()


async def test_c_cancel_stops_the_answers_and_the_association_goes_on(node: Node) -> None:
    """Only the direct path: pynetdicom's answering thread does not read the C-CANCEL
    until its generator is done (measured: all 3,000 answers, then Success)."""
    await asyncio.to_thread(fill, node.catalog, 3000)
    cancelled, after = await asyncio.to_thread(_find_then_cancel, node.port)
    assert cancelled.final == 0xFE00
    assert cancelled.pending < 3000
    assert (after.final, after.pending) == (0, 3000)


def _echo_on_a_find_association(port: int) -> int | None:
    contexts = [build_context(STUDY_FIND, [EXPLICIT]), build_context(Verification, [IMPLICIT])]
    contexts[0].context_id, contexts[1].context_id = 1, 3
    scu = RawScu(port, contexts)
    try:
        scu.send_command(3, 0x0030, 9, str(Verification), has_dataset=False)
        _, body = scu.read_pdu()
        (pdv,) = pdu.iter_pdvs(memoryview(body))
        return pdu.decode_command(pdv.data).us(0x0900)
    finally:
        scu.release()


async def test_c_echo_on_a_query_association(node: Node) -> None:
    assert await asyncio.to_thread(_echo_on_a_find_association, node.port) == 0


def _abort_reason(port: int, send: Any) -> int:
    """Send something bad on a query association; the A-ABORT's reason."""
    scu = RawScu(port, [build_context(STUDY_FIND, [EXPLICIT])])
    try:
        send(scu)
        while True:
            kind, body = scu.read_pdu()
            if kind == pdu.A_ABORT:
                return body[3]
    finally:
        scu.sock.close()


def _huge_identifier(scu: RawScu) -> None:
    scu.send_command(1, 0x0020, 1, STUDY_FIND, has_dataset=True)
    chunk = pdu.p_data_pdus(1, b"\x00" * 16000, command=False, max_pdu=16384)
    # Not the last fragment: bit 1 of the control byte cleared. Just past the bound, so
    # the node has read all of it when it aborts (unread bytes would reset the connection).
    for _ in range(MAX_IDENTIFIER_BYTES // 16000 + 1):
        scu.sock.sendall(chunk[:11] + bytes([chunk[11] & ~0x02]) + chunk[12:])


@pytest.mark.parametrize(
    ("send", "reason"),
    [
        pytest.param(_huge_identifier, 6, id="identifier-over-the-bound"),
        pytest.param(
            lambda scu: scu.sock.sendall(pdu._HEADER.pack(pdu.P_DATA_TF, 70_000)),  # type: ignore[attr-defined]
            6,
            id="pdu-over-max-length",
        ),
        pytest.param(
            lambda scu: scu.send_command(1, 0x0001, 1, STUDY_FIND, has_dataset=True),
            2,
            id="c-store-on-a-query-association",
        ),
        pytest.param(lambda scu: scu.sock.sendall(b"\x09\x00\x00\x00\x00\x02ab"), 1, id="bad-pdu"),
    ],
)
async def test_what_breaks_the_protocol_is_aborted_and_the_node_goes_on(
    node: Node, send: Any, reason: int
) -> None:
    assert await asyncio.to_thread(_abort_reason, node.port, send) == reason
    await asyncio.to_thread(fill, node.catalog, 3)
    (answers,) = await asyncio.to_thread(
        lambda: [a for a in run_queries(node.port, EXPLICIT, 16384)][5:]
    )
    assert answers.final == 0


def _abort_mid_answers(port: int) -> None:
    scu = RawScu(port, [build_context(STUDY_FIND, [EXPLICIT])])
    scu.send_find(1, STUDY_FIND, query("STUDY", PatientName=""), 1)
    scu.read_pdu()
    scu.sock.sendall(pdu.abort_pdu(0, 0))
    scu.sock.close()


async def test_a_peer_that_aborts_mid_answers_leaves_the_node_serving(node: Node) -> None:
    await asyncio.to_thread(fill, node.catalog, 3000)
    await asyncio.to_thread(_abort_mid_answers, node.port)
    server = node.ae._server
    assert server is not None and server.hub is not None
    deadline = time.monotonic() + 10
    while server.hub.active:
        assert time.monotonic() < deadline, "the aborted association is still held"
        await asyncio.sleep(0.05)
    results = await asyncio.to_thread(run_queries, node.port, EXPLICIT, 16384)
    assert results[1].pending == 3000


async def test_the_association_limit_counts_query_associations(tmp_path: Path) -> None:
    async with running_node(tmp_path, max_associations=1) as node:

        def hold_one_then_try() -> bool:
            held = RawScu(node.port, [build_context(STUDY_FIND, [EXPLICIT])])
            try:
                ae = AE(ae_title="SECOND")
                ae.add_requested_context(STUDY_FIND)
                second = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
                established = second.is_established
                if established:
                    second.release()
                return established
            finally:
                held.release()

        assert await asyncio.to_thread(hold_one_then_try) is False


async def test_stopping_the_node_aborts_a_query_association_it_holds(node: Node) -> None:
    def hold_then_stop() -> int:
        held = RawScu(node.port, [build_context(STUDY_FIND, [EXPLICIT])])
        try:
            server = node.ae._server
            assert server is not None and server.hub is not None
            (association,) = server.hub.active
            assert isinstance(association, FindAssociation)
            node.ae.stop(grace=0.2)
            kind, _ = held.read_pdu()
            return kind
        finally:
            held.sock.close()

    assert await asyncio.to_thread(hold_then_stop) == pdu.A_ABORT


def _query_events(directory: Path) -> list[str]:
    """The trail's Query events, their time removed (everything else must match)."""
    found = []
    for entry in read_entries(directory, AUDIT_KEY):
        event = ET.fromstring(entry.message)
        identification = event.find("EventIdentification")
        assert identification is not None
        code = identification.find("EventID")
        if code is None or code.get("csd-code") != "110112":
            continue
        identification.attrib.pop("EventDateTime", None)
        found.append(ET.tostring(event).decode())
    return found


def _ask_twice_and_be_refused(port: int) -> None:
    scu = RawScu(port, [build_context(STUDY_FIND, [EXPLICIT])])
    try:
        for number, (sop_class, identifier) in enumerate(QUERIES[:1] + QUERIES[4:5], start=1):
            scu.send_find(1, sop_class, identifier, number)
            scu.answers()
    finally:
        scu.release()


async def test_both_paths_record_the_same_query_events(tmp_path: Path) -> None:
    recorded = []
    for direct in (True, False):
        directory = tmp_path / str(direct) / "trail"
        trail = TrailWriter(TrailLog(directory, AUDIT_KEY), AuditSource(AE_TITLE, "site-a"))
        async with running_node(tmp_path / str(direct), trail=trail, direct_find=direct) as node:
            await asyncio.to_thread(fill, node.catalog, 30)
            await asyncio.to_thread(_ask_twice_and_be_refused, node.port)
        await asyncio.to_thread(trail.close)
        recorded.append(_query_events(directory))
    assert len(recorded[0]) == 2
    assert recorded[0] == recorded[1]
    assert 'EventOutcomeIndicator="0"' in recorded[0][0]
    assert 'EventOutcomeIndicator="4"' in recorded[0][1]  # the refused one


async def test_a_refused_caller_on_a_query_association_is_a_security_alert(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "trail"
    trail = TrailWriter(TrailLog(directory, AUDIT_KEY), AuditSource(AE_TITLE, "site-a"))
    async with running_node(tmp_path, trail=trail, allowed_calling_aets=("ASKER",)) as node:
        with pytest.raises(AssertionError):
            await asyncio.to_thread(RawScu, node.port, [build_context(STUDY_FIND, [EXPLICIT])])
    await asyncio.to_thread(trail.close)
    alerts = [
        ET.fromstring(e.message)
        for e in read_entries(directory, AUDIT_KEY)
        if b"110113" in e.message and b"RAWSCU" in e.message
    ]
    assert len(alerts) == 1
    assert "calling AE title not allowed" in ET.tostring(alerts[0]).decode()
    assert 'NetworkAccessPointID="127.0.0.1"' in ET.tostring(alerts[0]).decode()
