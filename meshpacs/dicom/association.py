"""The PDU loop shared by the associations the node serves itself (storage and query).

:class:`~meshpacs.dicom.receiver.StorageAssociation` and
:class:`~meshpacs.dicom.find_receiver.FindAssociation` differ only in what they do with a
command set and the data after it; the rest of the upper layer is the same and lives here:
blocking reads in the accepting thread, every length bounded before anything is allocated
(a P-DATA-TF over the maximum the node announced, a control PDU over 64 bytes, a command set
over :data:`MAX_COMMAND_BYTES`), PDVs checked against the accepted contexts, command fragments
gathered into one command set, A-RELEASE-RQ answered, A-ABORT and a closed connection ending
the association, and whatever breaks the protocol answered with an A-ABORT. :meth:`run`
never raises: a peer never crashes the daemon.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from meshpacs.dicom import pdu
from meshpacs.errors import FormatError

__all__ = [
    "C_ECHO_RQ",
    "C_ECHO_RSP",
    "MAX_COMMAND_BYTES",
    "NO_DATASET",
    "UNEXPECTED_PDU",
    "AcceptedContext",
    "AssociationClosed",
    "DirectAssociation",
    "ProtocolAbort",
]

LOG = logging.getLogger("meshpacs.dicom")
# A C-STORE-RQ or C-FIND-RQ command set is about 200 bytes; nothing legitimate comes near this.
MAX_COMMAND_BYTES = 64 * 1024
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
NO_DATASET = 0x0101
# A-ABORT source and reasons (PS3.8 9.3.8).
_PROVIDER = 2
_UNRECOGNIZED_PDU = 1
UNEXPECTED_PDU = 2
_INVALID_PARAMETER = 6
_MAX_CONTROL = 64
_UNEXPECTED_KINDS = (pdu.A_ASSOCIATE_RQ, pdu.A_ASSOCIATE_AC, pdu.A_ASSOCIATE_RJ, pdu.A_RELEASE_RP)


@dataclass(frozen=True)
class AcceptedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntax: str


class ProtocolAbort(Exception):
    """The peer broke the protocol: send A-ABORT with ``reason`` and end the association."""

    def __init__(self, message: str, reason: int = _INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


class AssociationClosed(Exception):
    """The association is over (released, aborted by the peer, connection gone)."""


class DirectAssociation(abc.ABC):
    """One negotiated association on a connected socket, served until it ends.

    A subclass says what a whole command set starts (:meth:`_dispatch`), what a data
    fragment after it is for (:meth:`_on_data_fragment`) and whether such data is arriving
    (:meth:`_data_arriving`, so that a command in the middle of it is refused and data cut
    off is logged as discarded).
    """

    served = "direct"  # what log lines call the association: "storage", "query"
    data_name = "data"  # what follows a command set: "a dataset", "an identifier"

    def __init__(
        self,
        sock: socket.socket,
        *,
        contexts: Mapping[int, AcceptedContext],
        calling_ae: str,
        max_pdu: int,
    ) -> None:
        self._sock = sock
        self._contexts = dict(contexts)
        self.calling_ae = calling_ae
        self._max_pdu = max_pdu
        self._header = bytearray(pdu.HEADER_LENGTH)
        self._buffer = bytearray(max_pdu)
        self._command = bytearray()
        self._command_cx: int | None = None
        self._send_lock = threading.Lock()
        self._aborted = False

    @property
    def socket(self) -> socket.socket:
        return self._sock

    @property
    @abc.abstractmethod
    def tally(self) -> str:
        """What the association did, for the log line at its end ("12 instances")."""

    def run(self) -> None:
        """Read PDUs until release, abort, timeout or a protocol error; never raises."""
        try:
            while True:
                self._serve_pdu()
        except ProtocolAbort as exc:
            LOG.warning("aborting the association from %s: %s", self.calling_ae, exc,
                        extra=self._abort_fields())  # fmt: skip
            self._send_abort(exc.reason)
        except AssociationClosed:
            pass
        except TimeoutError:
            LOG.warning("association from %s idle past the network timeout: aborted",
                        self.calling_ae)  # fmt: skip
            self._send_abort(0)
        except OSError as exc:
            if not self._aborted:
                LOG.warning("connection from %s lost: %s", self.calling_ae, exc.strerror or exc)
        except Exception:
            LOG.exception("%s association from %s failed", self.served, self.calling_ae)
            self._send_abort(0)
        finally:
            self._ended()
            with contextlib.suppress(OSError):
                self._sock.close()

    def abort(self) -> None:
        """From another thread (shutdown): A-ABORT the peer and unblock the reader."""
        self._send_abort(0, source=0)
        self._aborted = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    # -- what a subclass does ---------------------------------------------------------

    @abc.abstractmethod
    def _dispatch(self, context: AcceptedContext, command: pdu.Command) -> None:
        """A whole command set arrived on ``context``: start what it asks for."""

    @abc.abstractmethod
    def _on_data_fragment(self, pdv: pdu.Pdv) -> None:
        """A data fragment of what the last command set announced."""

    def _data_arriving(self) -> bool:
        return False

    def _abort_fields(self) -> dict[str, object]:
        """Log fields of the A-ABORT line (never a UID)."""
        return {}

    def _ended(self) -> None:  # noqa: B027 (a hook only storage needs; optional)
        """The association is over, however it ended: let go of what it held."""

    # -- reading ----------------------------------------------------------------------

    def _serve_pdu(self) -> None:
        """Read one PDU and act on it; AssociationClosed once the association is over."""
        self._read_into(memoryview(self._header))
        kind, length = pdu.parse_header(self._header)
        if kind == pdu.P_DATA_TF:
            if length > self._max_pdu:
                raise ProtocolAbort(f"P-DATA PDU of {length} bytes, over {self._max_pdu}")
            body = memoryview(self._buffer)[:length]
            self._read_into(body)
            self._on_p_data(body)
        elif kind == pdu.A_RELEASE_RQ:
            self._read_control(length)
            if self._data_arriving() or self._command:
                LOG.warning("association from %s released mid-message: partial data discarded",
                            self.calling_ae)  # fmt: skip
            self._send(pdu.release_rp_pdu())
            raise AssociationClosed
        elif kind == pdu.A_ABORT:
            self._read_control(length)
            self._warn_if_cut_off("aborted")
            raise AssociationClosed
        elif kind in _UNEXPECTED_KINDS:
            raise ProtocolAbort(f"unexpected PDU type 0x{kind:02x}", UNEXPECTED_PDU)
        else:
            raise ProtocolAbort(f"unrecognised PDU type 0x{kind:02x}", _UNRECOGNIZED_PDU)

    def _read_into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            n = self._sock.recv_into(view[got:])
            if n == 0:
                self._warn_if_cut_off("ended")
                raise AssociationClosed
            got += n

    def _read_control(self, length: int) -> None:
        if length > _MAX_CONTROL:
            raise ProtocolAbort(f"control PDU of {length} bytes")
        self._read_into(memoryview(bytearray(length)))

    def _warn_if_cut_off(self, how: str) -> None:
        if self._data_arriving():
            LOG.warning("association from %s %s mid-dataset: partial data discarded",
                        self.calling_ae, how)  # fmt: skip

    def _on_p_data(self, body: memoryview) -> None:
        try:
            pdvs = list(pdu.iter_pdvs(body))
        except FormatError as exc:
            raise ProtocolAbort(str(exc)) from None
        for pdv in pdvs:
            if pdv.context_id not in self._contexts:
                raise ProtocolAbort(f"data on presentation context {pdv.context_id}, not accepted")
            if pdv.is_command:
                self._on_command_fragment(pdv)
            else:
                self._on_data_fragment(pdv)

    def _on_command_fragment(self, pdv: pdu.Pdv) -> None:
        if self._data_arriving():
            raise ProtocolAbort(f"command fragment while {self.data_name} was arriving",
                                UNEXPECTED_PDU)  # fmt: skip
        if self._command_cx is not None and pdv.context_id != self._command_cx:
            raise ProtocolAbort("command fragments on two presentation contexts")
        self._command_cx = pdv.context_id
        if len(self._command) + len(pdv.data) > MAX_COMMAND_BYTES:
            raise ProtocolAbort(f"command set over {MAX_COMMAND_BYTES} bytes")
        self._command += pdv.data
        if not pdv.is_last:
            return
        try:
            command = pdu.decode_command(self._command)
        except FormatError as exc:
            raise ProtocolAbort(f"unreadable command set: {exc}") from None
        self._command.clear()
        self._command_cx = None
        self._dispatch(self._contexts[pdv.context_id], command)

    # -- writing ----------------------------------------------------------------------

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
