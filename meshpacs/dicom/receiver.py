"""The storage receiver: one established association's C-STOREs, read straight off the socket.

pynetdicom spends most of an instance's time in its per-PDU machinery (two polling reactor
threads per association, a state machine, a primitive per PDU; docs/benchmarks.md, "Where
the node's time goes"). For associations that only store and echo, the node reads the
P-DATA PDUs itself, in the thread that accepted the connection, with blocking reads: each
dataset fragment goes from the PDU buffer to the temporary file and into the SHA-256 as it
arrives, so the file is never read back, and nothing polls. Framing lives in :mod:`pdu`
(sans-I/O), the PDU loop it shares with the query receiver in :mod:`association`; the
association was negotiated by :mod:`acceptor`; storing and cataloguing is
:class:`IngestService`'s, the same code the pynetdicom path uses.

What a peer sends is bounded before anything is allocated (:mod:`association`: a PDU
longer than the maximum the node announced, a command set over its bound, a PDV on a
context that was not accepted); a dataset with no C-STORE before it ends the association
with an A-ABORT too. A dataset over the size cap is read to its end but not written, and answered
with Out of Resources, so the association and the instances behind it carry on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshpacs.dicom import pdu
from meshpacs.dicom.association import (
    C_ECHO_RQ,
    C_ECHO_RSP,
    NO_DATASET,
    UNEXPECTED_PDU,
    AcceptedContext,
    DirectAssociation,
    ProtocolAbort,
)
from meshpacs.dicom.attributes import HeaderAttributes, attributes_from_head
from meshpacs.dicom.identifiers import is_valid_uid
from meshpacs.dicom.ingest import STATUS, IngestService, ReceivedInstance, refusal_fields
from meshpacs.dicom.part10 import file_meta
from meshpacs.dicom.storage import HEAD_BYTES, InstanceStore, PendingFile

__all__ = ["StorageAssociation"]

LOG = logging.getLogger("meshpacs.dicom")
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001


@dataclass
class _Incoming:
    """The C-STORE whose dataset is arriving."""

    context: AcceptedContext
    message_id: int
    command: pdu.Command  # the C-STORE-RQ: its UIDs as sent, echoed in the response
    status: int = STATUS.SUCCESS  # anything else: drain the dataset, write nothing
    file: PendingFile | None = None
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)
    head: bytearray = field(default_factory=bytearray)
    size: int = 0
    early: HeaderAttributes | None = None  # parsed as soon as the head was in


class StorageAssociation(DirectAssociation):
    """Serve one storage association on a connected, negotiated socket until it ends."""

    served = "storage"
    data_name = "a dataset"

    def __init__(
        self,
        sock: socket.socket,
        *,
        ingest: IngestService,
        contexts: Mapping[int, AcceptedContext],
        calling_ae: str,
        max_pdu: int,
        implementation_class_uid: str,
        implementation_version_name: str,
    ) -> None:
        super().__init__(sock, contexts=contexts, calling_ae=calling_ae, max_pdu=max_pdu)
        self._ingest = ingest
        self._implementation = (implementation_class_uid, implementation_version_name)
        self._incoming: _Incoming | None = None
        self.instances = 0
        self.refused = 0  # instances answered with a failure status

    @property
    def tally(self) -> str:
        return f"{self.instances} instances"

    def _data_arriving(self) -> bool:
        return self._incoming is not None

    def _abort_fields(self) -> dict[str, object]:
        return {"event": "association_aborted", "calling_ae": self.calling_ae,
                "instances": self.instances}  # fmt: skip

    def _ended(self) -> None:
        if self._incoming is not None:
            _drop(self._incoming)
            self._incoming = None

    # -- commands -----------------------------------------------------------------

    def _dispatch(self, context: AcceptedContext, command: pdu.Command) -> None:
        message_id = command.message_id
        if message_id is None:
            raise ProtocolAbort("command without a Message ID")
        if command.field == C_ECHO_RQ and not command.has_dataset:
            self._respond(context, C_ECHO_RSP, message_id, STATUS.SUCCESS,
                          command.elements.get(0x0002, b""), None)  # fmt: skip
        elif command.field == C_STORE_RQ and command.has_dataset:
            self._begin_store(context, command, message_id)
        else:
            raise ProtocolAbort(f"DIMSE command 0x{command.field or 0:04x} is not served here",
                                UNEXPECTED_PDU)  # fmt: skip

    def _begin_store(self, context: AcceptedContext, command: pdu.Command, message_id: int) -> None:
        sop_class, sop_instance = command.text(0x0002), command.text(0x1000)
        incoming = _Incoming(context, message_id, command)
        self._incoming = incoming
        if not (is_valid_uid(sop_class) and is_valid_uid(sop_instance)):
            fields = refusal_fields(self.calling_ae, "invalid_uid")
            LOG.warning("refusing an instance from %s: invalid SOP Class or Instance UID",
                        self.calling_ae, extra=fields)  # fmt: skip
            incoming.status = STATUS.CANNOT_UNDERSTAND
            return
        meta = file_meta(
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            transfer_syntax_uid=context.transfer_syntax,
            implementation_class_uid=self._implementation[0],
            implementation_version_name=self._implementation[1],
        )
        try:
            incoming.file = self._ingest.store.open_pending()
        except OSError as exc:
            self._refuse(incoming, "no_temp_file", f"no temporary file: {exc.strerror or exc}")
            return
        self._append(incoming, memoryview(meta))

    # -- datasets -----------------------------------------------------------------

    def _on_data_fragment(self, pdv: pdu.Pdv) -> None:
        incoming = self._incoming
        if incoming is None:
            raise ProtocolAbort("dataset fragment without a C-STORE request", UNEXPECTED_PDU)
        if pdv.context_id != incoming.context.context_id:
            raise ProtocolAbort("dataset on another presentation context than its command")
        if incoming.status == STATUS.SUCCESS:
            if incoming.size + len(pdv.data) > self._ingest.max_instance_bytes:
                limit = self._ingest.max_instance_bytes
                self._refuse(incoming, "too_large", f"instance over {limit} bytes", limit=limit)
            else:
                self._append(incoming, pdv.data)
        if pdv.is_last:
            self._incoming = None
            self._finish(incoming)

    def _append(self, incoming: _Incoming, data: memoryview) -> None:
        assert incoming.file is not None
        try:
            written = 0
            while written < len(data):
                written += os.write(incoming.file.fd, data[written:])
        except OSError as exc:
            self._refuse(incoming, "write_failed", f"write failed: {exc.strerror or exc}")
            return
        incoming.hasher.update(data)
        incoming.size += len(data)
        if len(incoming.head) < HEAD_BYTES:
            incoming.head += data[: HEAD_BYTES - len(incoming.head)]
            if len(incoming.head) == HEAD_BYTES:
                # The peer is still sending pixel data: parse the header meanwhile.
                incoming.early = attributes_from_head(
                    bytes(incoming.head), incoming.context.transfer_syntax
                )

    def _refuse(self, incoming: _Incoming, code: str, reason: str, **more: int) -> None:
        """Stop writing this dataset: it will be drained and answered Out of Resources."""
        LOG.warning("refusing an instance from %s: %s", self.calling_ae, reason,
                    extra=refusal_fields(self.calling_ae, code, **more))  # fmt: skip
        incoming.status = STATUS.OUT_OF_RESOURCES
        _drop(incoming)

    def _finish(self, incoming: _Incoming) -> None:
        status = incoming.status
        if status == STATUS.SUCCESS:
            status = self._commit(incoming)
        if status != STATUS.SUCCESS:
            self.refused += 1
        self._respond(incoming.context, C_STORE_RSP, incoming.message_id, status,
                      *_echoable_uids(incoming.command))  # fmt: skip

    def _commit(self, incoming: _Incoming) -> int:
        assert incoming.file is not None
        received = ReceivedInstance(
            pending=incoming.file,
            sha256=incoming.hasher.digest(),
            size=incoming.size,
            head=bytes(incoming.head),
            sop_class_uid=incoming.command.text(0x0002),
            sop_instance_uid=incoming.command.text(0x1000),
            transfer_syntax_uid=incoming.context.transfer_syntax,
            calling_ae=self.calling_ae,
            early=incoming.early,
        )
        incoming.file = None  # the ingest service owns the file now
        status = self._ingest.commit_received(received)
        if status == STATUS.SUCCESS:
            self.instances += 1
        return status

    # -- writing ------------------------------------------------------------------

    def _respond(
        self,
        context: AcceptedContext,
        command_field: int,
        message_id: int,
        status: int,
        sop_class_raw: bytes | None,
        sop_instance_raw: bytes | None,
    ) -> None:
        elements = {
            0x0100: pdu.us_value(command_field),
            0x0120: pdu.us_value(message_id),
            0x0800: pdu.us_value(NO_DATASET),
            0x0900: pdu.us_value(status),
        }
        if sop_class_raw is not None:
            elements[0x0002] = _even(sop_class_raw)
        if sop_instance_raw is not None:
            elements[0x1000] = _even(sop_instance_raw)
        self._send(pdu.p_data_pdu(context.context_id, pdu.encode_command(elements)))


def _drop(incoming: _Incoming) -> None:
    if incoming.file is not None:
        InstanceStore.discard_pending(incoming.file)
        incoming.file = None


def _echoable_uids(command: pdu.Command) -> tuple[bytes | None, bytes | None]:
    """The Affected SOP Class and Instance UIDs to echo in a C-STORE-RSP.

    A UID we refused as invalid is left out: echoing it would make the response
    itself undecodable to a strict SCU, which then never reads the refusal.
    """
    class_raw = command.elements.get(0x0002)
    instance_raw = command.elements.get(0x1000)
    return (
        class_raw if is_valid_uid(command.text(0x0002)) else None,
        instance_raw if is_valid_uid(command.text(0x1000)) else None,
    )


def _even(value: bytes) -> bytes:
    return value + b"\x00" if len(value) % 2 else value
