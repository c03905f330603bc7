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

What a peer sends is bounded before anything is allocated: a PDU longer than the maximum
the node announced, a command set over :data:`MAX_COMMAND_BYTES`, an identifier over
:data:`MAX_IDENTIFIER_BYTES`, a PDV on a context that was not accepted, a second request
while one is being answered (asynchronous operations are never negotiated) or a command
other than C-FIND, C-CANCEL and C-ECHO end the association with an A-ABORT. No fragment
the node writes is longer than the peer's Maximum Length Received allows.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import dsutils

from meshpacs.dicom import pdu
from meshpacs.dicom.qr import (
    CANCEL,
    FIND_MODELS,
    PENDING,
    FindCaller,
    Found,
    QueryRetrieveService,
)
from meshpacs.dicom.receiver import MAX_COMMAND_BYTES, AcceptedContext
from meshpacs.errors import FormatError

__all__ = ["MAX_IDENTIFIER_BYTES", "FindAssociation"]

LOG = logging.getLogger("meshpacs.dicom")
# matching.py bounds a query to 256 keys of 1,024 characters and 1,000 UIDs in a list:
# about 330 KB at most. Anything larger is not a query.
MAX_IDENTIFIER_BYTES = 1 << 20
C_FIND_RQ = 0x0020
C_FIND_RSP = 0x8020
C_CANCEL_RQ = 0x0FFF
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
SUCCESS = 0x0000
CANNOT_ENCODE = 0xC312  # pynetdicom's status when an answer fails to encode
_DATASET_PRESENT = 0x0001
_NO_DATASET = 0x0101
_FLUSH_BYTES = 64 * 1024
_MAX_CONTROL = 64
# A-ABORT source and reasons (PS3.8 9.3.8).
_PROVIDER = 2
_UNRECOGNIZED_PDU = 1
_UNEXPECTED_PDU = 2
_INVALID_PARAMETER = 6


class _Abort(Exception):
    """The peer broke the protocol: send A-ABORT with ``reason`` and end the association."""

    def __init__(self, message: str, reason: int = _INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


class _Closed(Exception):
    """The association is over (released, aborted by the peer, connection gone)."""


@dataclass
class _Request:
    """A C-FIND-RQ whose identifier is arriving."""

    context: AcceptedContext
    command: pdu.Command
    identifier: bytearray = field(default_factory=bytearray)


class FindAssociation:
    """Serve one query association on a connected, negotiated socket until it ends."""

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
        self._sock = sock
        self._qr = qr
        self._contexts = dict(contexts)
        self._caller = caller
        self.calling_ae = caller.calling_ae
        self._max_pdu = max_pdu
        self._peer_max_pdu = peer_max_pdu
        self._buffer = bytearray(max_pdu)
        self._command = bytearray()
        self._command_cx: int | None = None
        self._request: _Request | None = None
        self._answering: int | None = None  # the Message ID being answered
        self._cancelled = False
        self._send_lock = threading.Lock()
        self._aborted = False
        self.queries = 0

    @property
    def socket(self) -> socket.socket:
        return self._sock

    def run(self) -> None:
        """Read PDUs until release, abort, timeout or a protocol error; never raises."""
        try:
            while True:
                self._on_pdu(*self._read_pdu())
        except _Abort as exc:
            LOG.warning("aborting the association from %s: %s", self.calling_ae, exc)
            self._send_abort(exc.reason)
        except _Closed:
            pass
        except TimeoutError:
            LOG.warning("association from %s idle past the network timeout: aborted",
                        self.calling_ae)  # fmt: skip
            self._send_abort(0)
        except OSError as exc:
            if not self._aborted:
                LOG.warning("connection from %s lost: %s", self.calling_ae, exc.strerror or exc)
        except Exception:
            LOG.exception("query association from %s failed", self.calling_ae)
            self._send_abort(0)
        finally:
            with contextlib.suppress(OSError):
                self._sock.close()

    def abort(self) -> None:
        """From another thread (shutdown): A-ABORT the peer and unblock the reader."""
        self._send_abort(0, source=0)
        self._aborted = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    # -- reading ------------------------------------------------------------------

    def _read_pdu(self) -> tuple[int, memoryview]:
        header = bytearray(pdu.HEADER_LENGTH)
        self._read_into(memoryview(header))
        kind, length = pdu.parse_header(header)
        if kind == pdu.P_DATA_TF:
            if length > self._max_pdu:
                raise _Abort(f"P-DATA PDU of {length} bytes, over {self._max_pdu}")
            body = memoryview(self._buffer)[:length]
        elif length > _MAX_CONTROL:
            raise _Abort(f"control PDU of {length} bytes")
        else:
            body = memoryview(bytearray(length))
        self._read_into(body)
        return kind, body

    def _read_into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            n = self._sock.recv_into(view[got:])
            if n == 0:
                raise _Closed
            got += n

    def _on_pdu(self, kind: int, body: memoryview) -> None:
        if kind == pdu.P_DATA_TF:
            self._on_p_data(body)
        elif kind == pdu.A_RELEASE_RQ:
            self._send(pdu.release_rp_pdu())
            raise _Closed
        elif kind == pdu.A_ABORT:
            raise _Closed
        elif kind in (pdu.A_ASSOCIATE_RQ, pdu.A_ASSOCIATE_AC, pdu.A_ASSOCIATE_RJ,
                      pdu.A_RELEASE_RP):  # fmt: skip
            raise _Abort(f"unexpected PDU type 0x{kind:02x}", _UNEXPECTED_PDU)
        else:
            raise _Abort(f"unrecognised PDU type 0x{kind:02x}", _UNRECOGNIZED_PDU)

    def _on_p_data(self, body: memoryview) -> None:
        try:
            pdvs = list(pdu.iter_pdvs(body))
        except FormatError as exc:
            raise _Abort(str(exc)) from None
        for pdv in pdvs:
            if pdv.context_id not in self._contexts:
                raise _Abort(f"data on presentation context {pdv.context_id}, not accepted")
            if pdv.is_command:
                self._on_command_fragment(pdv)
            else:
                self._on_identifier_fragment(pdv)

    def _on_command_fragment(self, pdv: pdu.Pdv) -> None:
        if self._request is not None:
            raise _Abort("command fragment while an identifier was arriving", _UNEXPECTED_PDU)
        if self._command_cx is not None and pdv.context_id != self._command_cx:
            raise _Abort("command fragments on two presentation contexts")
        self._command_cx = pdv.context_id
        if len(self._command) + len(pdv.data) > MAX_COMMAND_BYTES:
            raise _Abort(f"command set over {MAX_COMMAND_BYTES} bytes")
        self._command += pdv.data
        if not pdv.is_last:
            return
        try:
            command = pdu.decode_command(self._command)
        except FormatError as exc:
            raise _Abort(f"unreadable command set: {exc}") from None
        self._command.clear()
        self._command_cx = None
        self._dispatch(self._contexts[pdv.context_id], command)

    def _dispatch(self, context: AcceptedContext, command: pdu.Command) -> None:
        if command.field == C_CANCEL_RQ:
            # A cancel for a request already answered is too late, and ignored.
            if self._answering is not None and command.us(0x0120) == self._answering:
                self._cancelled = True
            return
        message_id = command.message_id
        if message_id is None:
            raise _Abort("command without a Message ID")
        if self._answering is not None:
            raise _Abort("a second request while one is answered", _UNEXPECTED_PDU)
        if command.field == C_ECHO_RQ and not command.has_dataset:
            self._send(self._response(context, C_ECHO_RSP, message_id, SUCCESS,
                                      command.text(0x0002)))  # fmt: skip
        elif command.field == C_FIND_RQ and context.abstract_syntax in FIND_MODELS:
            if command.has_dataset:
                self._request = _Request(context, command)
            else:
                self._answer(context, command, message_id, b"")
        else:
            raise _Abort(f"DIMSE command 0x{command.field or 0:04x} is not served here",
                         _UNEXPECTED_PDU)  # fmt: skip

    def _on_identifier_fragment(self, pdv: pdu.Pdv) -> None:
        request = self._request
        if request is None:
            raise _Abort("dataset fragment without a C-FIND request", _UNEXPECTED_PDU)
        if pdv.context_id != request.context.context_id:
            raise _Abort("identifier on another presentation context than its command")
        if len(request.identifier) + len(pdv.data) > MAX_IDENTIFIER_BYTES:
            raise _Abort(f"C-FIND identifier over {MAX_IDENTIFIER_BYTES} bytes")
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
            self._on_pdu(*self._read_pdu())
        return self._cancelled

    # -- writing ------------------------------------------------------------------

    def _response(
        self,
        context: AcceptedContext,
        command_field: int,
        message_id: int,
        status: int,
        sop_class: str,
        dataset_type: int = _NO_DATASET,
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

    def _send(self, data: bytes | bytearray) -> None:
        if not data:
            return
        with self._send_lock:
            self._sock.sendall(data)

    def _send_abort(self, reason: int, source: int = _PROVIDER) -> None:
        if self._aborted:
            return
        with contextlib.suppress(OSError):
            self._send(pdu.abort_pdu(source, reason))


def _decode(identifier: bytes, implicit: bool, little: bool) -> Dataset:
    """The identifier as pynetdicom's ``event.identifier`` decodes it."""
    if not identifier:
        return Dataset()
    decoded = dsutils.decode(BytesIO(identifier), implicit, little, False)
    decoded.set_original_encoding(implicit, little)
    return decoded
