"""The storage receiver: one established association's C-STOREs, read straight off the socket.

pynetdicom spends most of an instance's time in its per-PDU machinery (two polling reactor
threads per association, a state machine, a primitive per PDU; docs/benchmarks.md, "Where
the node's time goes"). For associations that only store and echo, the node reads the
P-DATA PDUs itself, in the thread that accepted the connection, with blocking reads: each
dataset fragment goes from the PDU buffer to the temporary file and into the SHA-256 as it
arrives, so the file is never read back, and nothing polls. Framing lives in :mod:`pdu`
(sans-I/O); the association was negotiated by :mod:`acceptor`; storing and cataloguing is
:class:`IngestService`'s, the same code the pynetdicom path uses.

What a peer sends is bounded before anything is allocated: a PDU longer than the maximum
the node announced, a command set over :data:`MAX_COMMAND_BYTES`, a PDV on a context that
was not accepted, or a dataset with no C-STORE before it ends the association with an
A-ABORT. A dataset over the size cap is read to its end but not written, and answered
with Out of Resources, so the association and the instances behind it carry on.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshpacs.dicom import pdu
from meshpacs.dicom.attributes import HeaderAttributes, attributes_from_head
from meshpacs.dicom.identifiers import is_valid_uid
from meshpacs.dicom.ingest import STATUS, IngestService, ReceivedInstance
from meshpacs.dicom.part10 import file_meta
from meshpacs.dicom.storage import HEAD_BYTES, InstanceStore, PendingFile
from meshpacs.errors import FormatError

__all__ = ["MAX_COMMAND_BYTES", "AcceptedContext", "StorageAssociation"]

LOG = logging.getLogger("meshpacs.dicom")
# A C-STORE-RQ command set is about 200 bytes; nothing legitimate comes near this.
MAX_COMMAND_BYTES = 64 * 1024
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
_NO_DATASET = 0x0101
# A-ABORT source and reasons (PS3.8 9.3.8).
_PROVIDER = 2
_UNEXPECTED_PDU = 2
_UNRECOGNIZED_PDU = 1
_INVALID_PARAMETER = 6


@dataclass(frozen=True)
class AcceptedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntax: str


class _Abort(Exception):
    """The peer broke the protocol: send A-ABORT with ``reason`` and end the association."""

    def __init__(self, message: str, reason: int = _INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


class _Closed(Exception):
    """The association is over (released, aborted by the peer, connection gone)."""


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


class StorageAssociation:
    """Serve one storage association on a connected, negotiated socket until it ends."""

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
        self._sock = sock
        self._ingest = ingest
        self._contexts = dict(contexts)
        self.calling_ae = calling_ae
        self._max_pdu = max_pdu
        self._implementation = (implementation_class_uid, implementation_version_name)
        self._buffer = bytearray(max_pdu)
        self._command = bytearray()
        self._command_cx: int | None = None
        self._incoming: _Incoming | None = None
        self._send_lock = threading.Lock()
        self._aborted = False
        self.instances = 0
        self.refused = 0  # instances answered with a failure status

    @property
    def socket(self) -> socket.socket:
        return self._sock

    def run(self) -> None:
        """Read PDUs until release, abort, timeout or a protocol error; never raises."""
        try:
            self._serve()
        except _Abort as exc:
            LOG.warning("aborting the association from %s: %s", self.calling_ae, exc,
                        extra={"event": "association_aborted", "calling_ae": self.calling_ae,
                               "instances": self.instances})  # fmt: skip
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
            LOG.exception("storage association from %s failed", self.calling_ae)
            self._send_abort(0)
        finally:
            self._discard_partial()
            self._close()

    def abort(self) -> None:
        """From another thread (shutdown): A-ABORT the peer and unblock the reader."""
        self._send_abort(0, source=0)
        self._aborted = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    # -- reading ------------------------------------------------------------------

    def _serve(self) -> None:
        header = bytearray(pdu.HEADER_LENGTH)
        while True:
            self._read_into(memoryview(header))
            kind, length = pdu.parse_header(header)
            if kind == pdu.P_DATA_TF:
                if length > self._max_pdu:
                    raise _Abort(f"P-DATA PDU of {length} bytes, over {self._max_pdu}")
                body = memoryview(self._buffer)[:length]
                self._read_into(body)
                self._on_p_data(body)
            elif kind == pdu.A_RELEASE_RQ:
                self._read_small(length)
                if self._incoming is not None or self._command:
                    LOG.warning("association from %s released mid-message: partial data discarded",
                                self.calling_ae)  # fmt: skip
                self._send(pdu.release_rp_pdu())
                raise _Closed
            elif kind == pdu.A_ABORT:
                self._read_small(length)
                if self._incoming is not None:
                    LOG.warning("association from %s aborted mid-dataset: partial data discarded",
                                self.calling_ae)  # fmt: skip
                raise _Closed
            elif kind in (pdu.A_ASSOCIATE_RQ, pdu.A_ASSOCIATE_AC, pdu.A_ASSOCIATE_RJ,
                          pdu.A_RELEASE_RP):  # fmt: skip
                raise _Abort(f"unexpected PDU type 0x{kind:02x}", _UNEXPECTED_PDU)
            else:
                raise _Abort(f"unrecognised PDU type 0x{kind:02x}", _UNRECOGNIZED_PDU)

    def _read_into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            n = self._sock.recv_into(view[got:])
            if n == 0:
                if self._incoming is not None:
                    LOG.warning("association from %s ended mid-dataset: partial data discarded",
                                self.calling_ae)  # fmt: skip
                raise _Closed
            got += n

    def _read_small(self, length: int) -> None:
        if length > 64:
            raise _Abort(f"control PDU of {length} bytes")
        self._read_into(memoryview(bytearray(length)))

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
                self._on_dataset_fragment(pdv)

    # -- commands -----------------------------------------------------------------

    def _on_command_fragment(self, pdv: pdu.Pdv) -> None:
        if self._incoming is not None:
            raise _Abort("command fragment while a dataset was arriving", _UNEXPECTED_PDU)
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
        message_id = command.message_id
        if message_id is None:
            raise _Abort("command without a Message ID")
        if command.field == C_ECHO_RQ and not command.has_dataset:
            self._respond(context, C_ECHO_RSP, message_id, STATUS.SUCCESS,
                          command.elements.get(0x0002, b""), None)  # fmt: skip
        elif command.field == C_STORE_RQ and command.has_dataset:
            self._begin_store(context, command, message_id)
        else:
            raise _Abort(f"DIMSE command 0x{command.field or 0:04x} is not served here",
                         _UNEXPECTED_PDU)  # fmt: skip

    def _begin_store(self, context: AcceptedContext, command: pdu.Command, message_id: int) -> None:
        sop_class, sop_instance = command.text(0x0002), command.text(0x1000)
        incoming = _Incoming(context, message_id, command)
        self._incoming = incoming
        if not (is_valid_uid(sop_class) and is_valid_uid(sop_instance)):
            LOG.warning("refusing an instance from %s: invalid SOP Class or Instance UID",
                        self.calling_ae, extra=self._refusal("invalid_uid"))  # fmt: skip
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

    def _on_dataset_fragment(self, pdv: pdu.Pdv) -> None:
        incoming = self._incoming
        if incoming is None:
            raise _Abort("dataset fragment without a C-STORE request", _UNEXPECTED_PDU)
        if pdv.context_id != incoming.context.context_id:
            raise _Abort("dataset on another presentation context than its command")
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
                    extra=self._refusal(code, **more))  # fmt: skip
        incoming.status = STATUS.OUT_OF_RESOURCES
        _drop(incoming)

    def _refusal(self, code: str, **more: int) -> dict[str, object]:
        """Log fields of a refused instance (as the pynetdicom path's): never a UID."""
        return {"event": "instance_refused", "calling_ae": self.calling_ae, "reason": code,
                **more}  # fmt: skip

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

    def _discard_partial(self) -> None:
        if self._incoming is not None:
            _drop(self._incoming)
            self._incoming = None

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
            0x0800: pdu.us_value(_NO_DATASET),
            0x0900: pdu.us_value(status),
        }
        if sop_class_raw is not None:
            elements[0x0002] = _even(sop_class_raw)
        if sop_instance_raw is not None:
            elements[0x1000] = _even(sop_instance_raw)
        self._send(pdu.p_data_pdu(context.context_id, pdu.encode_command(elements)))

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self._sock.sendall(data)

    def _send_abort(self, reason: int, source: int = _PROVIDER) -> None:
        if self._aborted:
            return
        with contextlib.suppress(OSError):
            self._send(pdu.abort_pdu(source, reason))

    def _close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


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
