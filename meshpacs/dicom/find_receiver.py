"""Query associations served by the node itself: C-FIND answers written straight to the socket.

Through pynetdicom each C-FIND answer costs about 1 ms of Python after its identifier is
encoded (a DIMSE primitive, a command set dataset written by pydicom, the group length,
a P-DATA primitive per fragment, the DUL thread's queue): a query matching 1,238 studies
took 2.6 s to answer, its catalog query 82 ms (docs/benchmarks.md, "The catalog at
scale"). For associations that propose only the Q/R FIND models and Verification,
:mod:`acceptor` negotiates as it does for storage and :class:`FindAssociation` serves
them in the accepting thread: it reads the C-FIND-RQ and its identifier itself (bounded),
asks :meth:`QueryRetrieveService.find` (the same query, answers and audit event as the
pynetdicom path), encodes each answer with :meth:`QueryRetrieveService.encode_answer`,
puts the pending command set, the same bytes for every answer, in front of it, and
writes the PDUs in batches of about 64 KiB.

Between batches it reads what the peer sent meanwhile, so a C-CANCEL-RQ stops the answers
with a Cancel status (pynetdicom checks before every answer; here it is every batch, and
before the first). A-RELEASE-RQ and A-ABORT end the association as on the storage path.

The PDU loop (reading, bounds, release and abort) is the one the storage receiver uses
(:mod:`association`). What a peer sends is bounded before anything is allocated: a PDU
longer than the maximum the node announced, a command set over its bound, an identifier
over :data:`MAX_IDENTIFIER_BYTES`, a PDV on a context that was not accepted, a second request
while one is being answered (asynchronous operations are never negotiated) or a command
other than C-FIND, C-CANCEL and C-ECHO end the association with an A-ABORT. No fragment
the node writes is longer than the peer's Maximum Length Received allows.
"""

from __future__ import annotations

import logging
import select
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import dsutils

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
from meshpacs.dicom.qr import (
    CANCEL,
    FIND_MODELS,
    PENDING,
    FindCaller,
    Found,
    QueryRetrieveService,
)

__all__ = ["MAX_IDENTIFIER_BYTES", "FindAssociation"]

LOG = logging.getLogger("meshpacs.dicom")
# matching.py bounds a query to 256 keys of 1,024 characters and 1,000 UIDs in a list:
# about 330 KB at most. Anything larger is not a query.
MAX_IDENTIFIER_BYTES = 1 << 20
C_FIND_RQ = 0x0020
C_FIND_RSP = 0x8020
C_CANCEL_RQ = 0x0FFF
SUCCESS = 0x0000
CANNOT_ENCODE = 0xC312  # pynetdicom's status when an answer fails to encode
_DATASET_PRESENT = 0x0001
_FLUSH_BYTES = 64 * 1024


@dataclass
class _Request:
    """A C-FIND-RQ whose identifier is arriving."""

    context: AcceptedContext
    command: pdu.Command
    identifier: bytearray = field(default_factory=bytearray)


class FindAssociation(DirectAssociation):
    """Serve one query association on a connected, negotiated socket until it ends."""

    served = "query"
    data_name = "an identifier"

    def __init__(
        self,
        sock: socket.socket,
        *,
        qr: QueryRetrieveService,
        contexts: Mapping[int, AcceptedContext],
        caller: FindCaller,
        max_pdu: int,
        peer_max_pdu: int,
    ) -> None:
        super().__init__(sock, contexts=contexts, calling_ae=caller.calling_ae, max_pdu=max_pdu)
        self._qr = qr
        self._caller = caller
        self._peer_max_pdu = peer_max_pdu
        self._request: _Request | None = None
        self._answering: int | None = None  # the Message ID being answered
        self._cancelled = False
        self.queries = 0

    @property
    def tally(self) -> str:
        return f"{self.queries} queries"

    def _data_arriving(self) -> bool:
        return self._request is not None

    def _dispatch(self, context: AcceptedContext, command: pdu.Command) -> None:
        if command.field == C_CANCEL_RQ:
            # A cancel for a request already answered is too late, and ignored.
            if self._answering is not None and command.us(0x0120) == self._answering:
                self._cancelled = True
            return
        message_id = command.message_id
        if message_id is None:
            raise ProtocolAbort("command without a Message ID")
        if self._answering is not None:
            raise ProtocolAbort("a second request while one is answered", UNEXPECTED_PDU)
        if command.field == C_ECHO_RQ and not command.has_dataset:
            self._send(self._response(context, C_ECHO_RSP, message_id, SUCCESS,
                                      command.text(0x0002)))  # fmt: skip
        elif command.field == C_FIND_RQ and context.abstract_syntax in FIND_MODELS:
            if command.has_dataset:
                self._request = _Request(context, command)
            else:
                self._answer(context, command, message_id, b"")
        else:
            raise ProtocolAbort(f"DIMSE command 0x{command.field or 0:04x} is not served here",
                                UNEXPECTED_PDU)  # fmt: skip

    def _on_data_fragment(self, pdv: pdu.Pdv) -> None:
        request = self._request
        if request is None:
            raise ProtocolAbort("dataset fragment without a C-FIND request", UNEXPECTED_PDU)
        if pdv.context_id != request.context.context_id:
            raise ProtocolAbort("identifier on another presentation context than its command")
        if len(request.identifier) + len(pdv.data) > MAX_IDENTIFIER_BYTES:
            raise ProtocolAbort(f"C-FIND identifier over {MAX_IDENTIFIER_BYTES} bytes")
        request.identifier += pdv.data
        if pdv.is_last:
            self._request = None
            message_id = request.command.message_id
            assert message_id is not None  # checked before the identifier was accepted
            self._answer(request.context, request.command, message_id, bytes(request.identifier))

    # -- answering ----------------------------------------------------------------

    def _answer(
        self, context: AcceptedContext, command: pdu.Command, message_id: int, identifier: bytes
    ) -> None:
        syntax = UID(context.transfer_syntax)
        implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
        sop_class = command.text(0x0002)
        self.queries += 1
        found = self._qr.find(
            sop_class, lambda: _decode(identifier, implicit, little), self._caller
        )
        if found.failure is not None:
            self._send(self._response(context, C_FIND_RSP, message_id, found.failure, sop_class))
            return
        self._answering, self._cancelled = message_id, False
        try:
            status = self._send_answers(context, message_id, sop_class, found, implicit, little)
        finally:
            self._answering = None
        self._send(self._response(context, C_FIND_RSP, message_id, status, sop_class))

    def _send_answers(
        self,
        context: AcceptedContext,
        message_id: int,
        sop_class: str,
        found: Found,
        implicit: bool,
        little: bool,
    ) -> int:
        """Every answer, Pending, in batches; the final status to send after them."""
        pending = self._response(
            context, C_FIND_RSP, message_id, PENDING, sop_class, _DATASET_PRESENT
        )
        batch = bytearray()
        for number, answer in enumerate(found.answers):
            if number == 0 or len(batch) >= _FLUSH_BYTES:
                self._send(batch)
                batch.clear()
                if self._cancel_arrived():
                    return CANCEL
            data = self._qr.encode_answer(found, answer, implicit=implicit, little_endian=little)
            if data is None:
                LOG.error("a C-FIND answer to %s could not be encoded", self.calling_ae)
                self._send(batch)
                return CANNOT_ENCODE
            batch += pending
            batch += pdu.p_data_pdus(
                context.context_id, data, command=False, max_pdu=self._peer_max_pdu
            )
        self._send(batch)
        return SUCCESS

    def _cancel_arrived(self) -> bool:
        """Handle whatever the peer sent meanwhile; True if it cancelled the answers."""
        while not self._cancelled and select.select([self._sock], [], [], 0)[0]:
            self._serve_pdu()
        return self._cancelled

    # -- writing ------------------------------------------------------------------

    def _response(
        self,
        context: AcceptedContext,
        command_field: int,
        message_id: int,
        status: int,
        sop_class: str,
        dataset_type: int = NO_DATASET,
    ) -> bytes:
        """A response command set as pynetdicom encodes it, as P-DATA-TF PDUs."""
        elements = {
            0x0100: pdu.us_value(command_field),
            0x0120: pdu.us_value(message_id),
            0x0800: pdu.us_value(dataset_type),
            0x0900: pdu.us_value(status),
        }
        if sop_class:
            elements[0x0002] = pdu.uid_value(sop_class)
        command = pdu.encode_command(elements)
        return pdu.p_data_pdus(
            context.context_id, command, command=True, max_pdu=self._peer_max_pdu
        )


def _decode(identifier: bytes, implicit: bool, little: bool) -> Dataset:
    """The identifier as pynetdicom's ``event.identifier`` decodes it."""
    if not identifier:
        return Dataset()
    decoded = dsutils.decode(BytesIO(identifier), implicit, little, False)
    decoded.set_original_encoding(implicit, little)
    return decoded
