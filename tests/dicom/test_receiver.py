"""The node's own storage receiver: framing, routing, negotiation, and protocol abuse.

The ingest and bad-input suites already run every C-STORE case through both receive
paths; these tests cover what only the direct path does: its PDU codec, which requests it
takes, that it negotiates exactly as pynetdicom would, and what a peer that breaks the
protocol after association gets (an A-ABORT, and a node that goes on working).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import socket
import struct
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import AE, build_context
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.dsutils import decode as decode_dataset
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from meshpacs.dicom import pdu
from meshpacs.dicom.association import MAX_COMMAND_BYTES
from meshpacs.dicom.part10 import file_meta
from meshpacs.dicom.storage import InstanceStore
from meshpacs.errors import FormatError
from meshpacs.node.logs import formatter_for

from ..node.logfields import event_fields
from .conftest import AE_TITLE, Node, running_node
from .routing import served_by
from .test_bad_input import CT, EXPLICIT, assert_store_still_works, part10, store

IMPLICIT = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
PRIVATE_SOP = "1.3.6.1.4.1.9590.100.1.2.999"


# -- the sans-I/O codec -------------------------------------------------------------------


def test_command_set_round_trips_with_pynetdicom() -> None:
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = CT
    request.AffectedSOPInstanceUID = "1.2.3.4.5"
    request.Priority = 2
    request.DataSet = io.BytesIO(b"")
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    encoded = b"".join(
        bytes(pdv[1][1:])
        for p_data in message.encode_msg(1, 16384)
        for pdv in p_data.presentation_data_value_list
        if pdv[1][0] & 1
    )
    command = pdu.decode_command(encoded)
    assert (command.field, command.message_id, command.has_dataset) == (0x0001, 7, True)
    assert command.text(0x0002) == CT and command.text(0x1000) == "1.2.3.4.5"

    ours = pdu.encode_command(
        {
            0x0002: pdu.uid_value(CT),
            0x0100: pdu.us_value(0x8001),
            0x0120: pdu.us_value(7),
            0x0800: pdu.us_value(0x0101),
            0x0900: pdu.us_value(0xA700),
        }
    )
    theirs = decode_dataset(io.BytesIO(ours), True, True)
    assert theirs.CommandGroupLength == len(ours) - 12
    assert (theirs.CommandField, theirs.MessageIDBeingRespondedTo, theirs.Status) == (
        0x8001, 7, 0xA700,
    )  # fmt: skip
    assert theirs.AffectedSOPClassUID == CT


@pytest.mark.parametrize(
    "body",
    [
        b"",  # no PDV at all
        b"\x00\x00\x00",  # truncated PDV header
        struct.pack(">IBB", 1, 1, 3),  # item length under 2
        struct.pack(">IBB", 100, 1, 3) + b"x" * 10,  # runs past the PDU
    ],
)
def test_malformed_p_data_is_a_format_error(body: bytes) -> None:
    with pytest.raises(FormatError):
        list(pdu.iter_pdvs(memoryview(body)))


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00",  # truncated element
        struct.pack("<HHI", 0x0008, 0x0016, 0),  # not group 0000
        struct.pack("<HHI", 0x0000, 0x0100, 50) + b"\x01\x00",  # value past the end
    ],
)
def test_malformed_command_set_is_a_format_error(data: bytes) -> None:
    with pytest.raises(FormatError):
        pdu.decode_command(data)


def test_pdvs_are_views_in_order() -> None:
    body = struct.pack(">IBB", 4, 1, 0x03) + b"ab" + struct.pack(">IBB", 3, 5, 0x00) + b"c"
    pdvs = list(pdu.iter_pdvs(memoryview(body)))
    assert [(p.context_id, p.is_command, p.is_last, bytes(p.data)) for p in pdvs] == [
        (1, True, True, b"ab"),
        (5, False, False, b"c"),
    ]


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "syntax"),
    [(CT, "1.2.3.4", EXPLICIT), ("1.2.3", "1.22.3", IMPLICIT), (PRIVATE_SOP, "9" * 64, EXPLICIT)],
)
def test_file_meta_is_byte_identical_to_pynetdicoms(
    sop_class: str, sop_instance: str, syntax: str
) -> None:
    """Same meta on both paths, so one instance has one content address whichever took it."""
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    theirs = io.BytesIO()
    theirs.write(b"\x00" * 128 + b"DICM")
    meta = create_file_meta(
        sop_class_uid=UID(sop_class),
        sop_instance_uid=UID(sop_instance),
        transfer_syntax=UID(syntax),
    )
    write_file_meta_info(theirs, meta)  # type: ignore[arg-type]
    ours = file_meta(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        transfer_syntax_uid=syntax,
        implementation_class_uid=PYNETDICOM_IMPLEMENTATION_UID,
        implementation_version_name=PYNETDICOM_IMPLEMENTATION_VERSION,
    )
    assert ours == theirs.getvalue()


# -- the store's pending files ------------------------------------------------------------


@pytest.mark.parametrize("unnamed", [True, False])
def test_pending_files_are_placed_under_their_digest(tmp_path: Path, unnamed: bool) -> None:
    store = InstanceStore(tmp_path / "instances", tmp_path / "tmp")
    store._unnamed = unnamed and store._unnamed
    data = b"pending" * 1000
    digest = hashlib.sha256(data).digest()
    for attempt in range(2):
        pending = store.open_pending()
        assert (pending.path is None) == store._unnamed
        with open(pending.fd, "wb", closefd=False) as out:
            out.write(data)
        stored = store.place_pending(pending, digest, len(data), data[:10])
        assert stored.path == store.path_for(digest)
        assert stored.path.read_bytes() == data
        assert stored.existed is (attempt == 1)
        assert pending.fd == -1
    assert list(store.tmp_dir.iterdir()) == []


def test_unnamed_pending_files_work_here(tmp_path: Path) -> None:
    """CI and this machine run on ext4/overlayfs: the O_TMPFILE path must be the one tested."""
    assert InstanceStore(tmp_path / "instances", tmp_path / "tmp")._unnamed


# -- routing and negotiation --------------------------------------------------------------


def _accepted(port: int, contexts: Sequence[PresentationContext]) -> tuple[object, ...]:
    ae = AE(ae_title="NEGOTIATE")
    ae.requested_contexts = list(contexts)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    try:
        assert assoc.is_established
        accepted = sorted(
            (int(cx.context_id), str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in assoc.accepted_contexts
        )
        rejected = sorted((int(cx.context_id), int(cx.result)) for cx in assoc.rejected_contexts)
        return tuple(accepted), tuple(rejected)
    finally:
        assoc.release()


async def test_both_paths_accept_and_reject_the_same_contexts(tmp_path: Path) -> None:
    contexts = [
        build_context(CT, [DEFLATED, EXPLICIT]),  # first allowed syntax wins
        build_context("1.2.840.10008.5.1.4.1.1.4", [DEFLATED]),  # only deflated: rejected
        build_context(PRIVATE_SOP, [IMPLICIT]),
        build_context("1.2.840.10008.5.1.4.1.1.7", ["1.2.3.999"]),  # unheard-of syntax
        build_context(Verification),
    ]
    answers = []
    for direct in (True, False):
        async with running_node(
            tmp_path / str(direct), direct_storage=direct, direct_find=direct
        ) as node:
            answers.append(await asyncio.to_thread(_accepted, node.port, contexts))
            server = node.ae._server
            assert server is not None and (server.hub is not None) is direct
    assert answers[0] == answers[1]
    accepted, rejected = answers[0]
    assert [cx[2] for cx in accepted] == [EXPLICIT, IMPLICIT, EXPLICIT]
    assert [reason for _, reason in rejected] == [0x04, 0x04]


async def test_storage_and_find_go_direct_and_retrieves_to_pynetdicom(node: Node) -> None:
    find = str(StudyRootQueryRetrieveInformationModelFind)
    move = str(StudyRootQueryRetrieveInformationModelMove)
    assert await asyncio.to_thread(served_by, node, CT) == (1, 0)
    assert await asyncio.to_thread(served_by, node, find) == (1, 0)
    assert await asyncio.to_thread(served_by, node, move) == (0, 1)


async def test_the_association_limit_counts_both_paths(tmp_path: Path) -> None:
    async with running_node(tmp_path, max_associations=2) as node:

        def hold_one_of_each_then_try() -> list[bool]:
            ae = AE(ae_title="LIMITS")
            ae.add_requested_context(Verification)
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
            direct_ae = AE(ae_title="LIMITS")
            direct_ae.add_requested_context(Verification)
            held = [
                direct_ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE),
                ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE),
            ]
            time.sleep(0.2)  # let pynetdicom's thread register
            try:
                third_direct = direct_ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
                third_query = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
                outcome = [a.is_established for a in (*held, third_direct, third_query)]
                for extra in (third_direct, third_query):
                    if extra.is_established:
                        extra.release()
                return outcome
            finally:
                for assoc in held:
                    if assoc.is_established:
                        assoc.release()

        assert await asyncio.to_thread(hold_one_of_each_then_try) == [True, True, False, False]
        await assert_store_still_works(node, tmp_path)


async def test_stop_aborts_a_storage_association_that_does_not_end(tmp_path: Path) -> None:
    async with running_node(tmp_path, network_timeout=60) as node:
        ae = AE(ae_title="LINGER")
        ae.add_requested_context(CT, EXPLICIT)
        assoc = await asyncio.to_thread(ae.associate, "127.0.0.1", node.port, ae_title=AE_TITLE)
        assert assoc.is_established
        started = time.monotonic()
        await asyncio.to_thread(node.ae.stop, 0.3)
        assert time.monotonic() - started < 5
        deadline = time.monotonic() + 5
        while assoc.is_established and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert assoc.is_aborted


# -- a raw peer that breaks the protocol after association --------------------------------


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = _read_exactly(sock, 6)
    kind, length = pdu.parse_header(header)
    return kind, _read_exactly(sock, length)


def _read_exactly(sock: socket.socket, length: int) -> bytes:
    data = b""
    while len(data) < length:
        chunk = sock.recv(length - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _raw_association(port: int) -> socket.socket:
    """An association on a plain socket: CT on context 1; nothing else reads the socket."""
    request = A_ASSOCIATE()
    request.application_context_name = UID("1.2.840.10008.3.1.1.1")
    request.calling_ae_title = "RAWPEER"
    request.called_ae_title = AE_TITLE
    cx = PresentationContext()
    cx.context_id = 1
    cx.abstract_syntax = UID(CT)
    cx.transfer_syntax = [UID(EXPLICIT)]
    request.presentation_context_definition_list = [cx]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = UID("1.2.826.0.1.3680043.9.7433.1")
    request.user_information = [max_length, class_uid]
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(request)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(rq.encode())
    kind, _ = _read_pdu(sock)
    assert kind == pdu.A_ASSOCIATE_AC
    return sock


def _store_command(message_id: int = 1, sop_instance: str = "1.2.3.300.1") -> bytes:
    return pdu.encode_command(
        {
            0x0002: pdu.uid_value(CT),
            0x0100: pdu.us_value(0x0001),
            0x0110: pdu.us_value(message_id),
            0x0700: pdu.us_value(0),
            0x0800: pdu.us_value(0x0000),
            0x1000: pdu.uid_value(sop_instance),
        }
    )


def _p_data(context_id: int, control: int, data: bytes) -> bytes:
    item = struct.pack(">IBB", len(data) + 2, context_id, control) + data
    return struct.pack(">BxI", pdu.P_DATA_TF, len(item)) + item


def _expect_abort(sock: socket.socket) -> None:
    """The node answers with A-ABORT and closes (a reset after it counts as closed)."""
    try:
        kind, _ = _read_pdu(sock)
    except (ConnectionError, TimeoutError) as exc:
        pytest.fail(f"no A-ABORT before the connection ended: {exc}")
    assert kind == pdu.A_ABORT
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""


ABUSES = {
    "data on a context that was not accepted": [_p_data(3, 0x03, _store_command())],
    "a dataset with no C-STORE before it": [_p_data(1, 0x02, b"\x08\x00\x16\x00")],
    "a command set without end": [_p_data(1, 0x01, b"\x00" * 16000)] * 5,
    "a command on another context mid-command": [
        _p_data(1, 0x01, _store_command()[:20]),
        _p_data(3, 0x03, _store_command()[20:]),
    ],
    "a command while a dataset arrives": [
        _p_data(1, 0x03, _store_command()),
        _p_data(1, 0x00, b"\x08\x00\x16\x00"),
        _p_data(1, 0x03, _store_command(2)),
    ],
    "an unreadable command set": [_p_data(1, 0x03, b"\x08\x00\x16\x00\x00\x00\x00\x00")],
    "a C-FIND on a storage association": [
        _p_data(
            1,
            0x03,
            pdu.encode_command(
                {0x0100: pdu.us_value(0x0020), 0x0110: pdu.us_value(1), 0x0800: pdu.us_value(0)}
            ),
        )
    ],
    "a second association request": [bytes([1, 0, 0, 0, 0, 4]) + b"\x00" * 4],
    "an unknown PDU type": [bytes([0x09, 0, 0, 0, 0, 2, 0, 0])],
}


@pytest.mark.parametrize("abuse", list(ABUSES))
async def test_protocol_abuse_is_aborted_and_the_node_goes_on(
    node: Node, tmp_path: Path, abuse: str
) -> None:
    assert MAX_COMMAND_BYTES < 5 * 16000  # the endless command set does exceed the bound

    def attack() -> None:
        with _raw_association(node.port) as sock:
            for data in ABUSES[abuse]:
                sock.sendall(data)
            _expect_abort(sock)

    await asyncio.to_thread(attack)
    assert list(node.store.instances_dir.rglob("*.dcm")) == []
    await assert_store_still_works(node, tmp_path)


async def test_a_p_data_pdu_over_the_announced_maximum_is_not_read(
    node: Node, tmp_path: Path
) -> None:
    def attack() -> int:
        with _raw_association(node.port) as sock:
            sock.sendall(struct.pack(">BxI", pdu.P_DATA_TF, 100 * 1024 * 1024))
            sent = 0
            try:
                while sent < 100 * 1024 * 1024:
                    sent += sock.send(b"\x00" * 65536)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass
            return sent

    assert await asyncio.to_thread(attack) < 32 * 1024 * 1024
    await assert_store_still_works(node, tmp_path)


async def test_over_the_cap_is_refused_midstream_and_the_association_goes_on(
    tmp_path: Path,
) -> None:
    async with running_node(tmp_path / "node", max_instance_bytes=200_000) as node:
        big = part10(tmp_path / "big.dcm", "1.2.3.300.9", pixels=5_000_000)
        small = part10(tmp_path / "small.dcm", "1.2.3.300.10")

        def both_on_one_association() -> list[int]:
            ae = AE(ae_title="CAPPED")
            ae.add_requested_context(CT, EXPLICIT)
            assoc = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
            assert assoc.is_established
            try:
                return [int(assoc.send_c_store(p).Status) for p in (big, small, big)]
            finally:
                assoc.release()

        assert await asyncio.to_thread(both_on_one_association) == [0xA700, 0x0000, 0xA700]
        assert len(list(node.store.instances_dir.rglob("*.dcm"))) == 1
        assert (await node.catalog.counts())["instances"] == 1


async def test_both_paths_store_the_same_bytes(tmp_path: Path) -> None:
    sample = part10(tmp_path / "same.dcm", "1.2.3.300.11", pixels=300_000)
    stored = []
    for direct in (True, False):
        async with running_node(tmp_path / str(direct), direct_storage=direct) as node:
            assert await asyncio.to_thread(store, node.port, sample) == 0x0000
            (path,) = node.store.instances_dir.rglob("*.dcm")
            stored.append(path.read_bytes())
    assert stored[0] == stored[1]


# -- what the log says of a refusal ---------------------------------------------------------


def _c_store_status(sock: socket.socket) -> int | None:
    kind, body = _read_pdu(sock)
    assert kind == pdu.P_DATA_TF
    (pdv,) = pdu.iter_pdvs(memoryview(body))
    return pdu.decode_command(pdv.data).us(0x0900)


async def test_refusals_and_aborts_are_logged_with_fields_and_no_uid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad_uid = "1.2.840.10008.99..7"  # two dots in a row: not a UID, still UID-shaped
    async with running_node(tmp_path / "node", max_instance_bytes=200_000) as node:

        def refused() -> int | None:
            with _raw_association(node.port) as sock:
                sock.sendall(_p_data(1, 0x03, _store_command(sop_instance=bad_uid)))
                sock.sendall(_p_data(1, 0x02, b"\x08\x00\x16\x00"))
                status = _c_store_status(sock)
                sock.sendall(ABUSES["an unknown PDU type"][0])
                _expect_abort(sock)
                return status

        assert await asyncio.to_thread(refused) == 0xC000  # cannot understand
        big = part10(tmp_path / "big.dcm", "1.2.3.300.11", pixels=1_000_000)
        assert await asyncio.to_thread(store, node.port, big, "CAPPED") == 0xA700

    invalid, too_large = event_fields(caplog.records, "instance_refused")
    assert (invalid["level"], invalid["logger"]) == ("WARNING", "meshpacs.dicom")
    assert (invalid["calling_ae"], invalid["reason"]) == ("RAWPEER", "invalid_uid")
    assert (too_large["calling_ae"], too_large["reason"]) == ("CAPPED", "too_large")
    assert too_large["limit"] == 200_000
    (aborted,) = event_fields(caplog.records, "association_aborted")
    assert (aborted["calling_ae"], aborted["instances"]) == ("RAWPEER", 0)
    assert "0x09" in aborted["msg"]
    assert bad_uid not in caplog.text and "1.2.3.300.11" not in caplog.text


async def test_the_pynetdicom_path_logs_refusals_with_the_same_fields(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad_uid = "1.2.840.10008.99..7"
    async with running_node(
        tmp_path / "node", max_instance_bytes=200_000, direct_storage=False
    ) as node:

        def refused() -> int | None:
            with _raw_association(node.port) as sock:
                sock.sendall(_p_data(1, 0x03, _store_command(sop_instance=bad_uid)))
                sock.sendall(_p_data(1, 0x02, b"\x08\x00\x16\x00"))
                return _c_store_status(sock)

        assert await asyncio.to_thread(refused) == 0xC000
        big = part10(tmp_path / "big.dcm", "1.2.3.300.12", pixels=1_000_000)
        assert await asyncio.to_thread(store, node.port, big, "CAPPED") == 0xA700

    invalid, too_large = event_fields(caplog.records, "instance_refused")
    assert (invalid["calling_ae"], invalid["reason"]) == ("RAWPEER", "invalid_uid")
    assert (too_large["calling_ae"], too_large["reason"]) == ("CAPPED", "too_large")
    assert too_large["limit"] == 200_000
    # pydicom and pynetdicom log the bad UID themselves: the node's log lines must not.
    assert bad_uid in caplog.text
    node_lines = [formatter_for("kv").format(r) for r in caplog.records]
    assert not [line for line in node_lines if bad_uid in line or "1.2.3.300.12" in line]
