"""Which receive path serves a new association: the storage receiver or pynetdicom.

The listening socket is pynetdicom's (its server, its TCP_NODELAY and TLS handling). For
each connection the handler *peeks* at the A-ASSOCIATE-RQ without consuming it. A request
that only proposes storage SOP classes (known, private or unknown, as pynetdicom's
unrestricted storage service counts them) and Verification, with no extended negotiation
(roles, user identity, asynchronous operations), is what a PACS pushing studies sends:
the node negotiates it here and :class:`StorageAssociation` serves it. Everything else
(Query/Retrieve, C-GET with its role selection, TLS, anything unusual) goes to pynetdicom
untouched, as the socket was never read. A request of the same plain kind that proposes
only the Q/R FIND models (and Verification) is served by :class:`FindAssociation`, which
answers C-FINDs without pynetdicom's per-message machinery (``direct_find``).

Negotiation is pynetdicom's own: the same presentation-context function
(``negotiate_unrestricted``, with the node's transfer-syntax rule installed by
:mod:`negotiation`), the same reject reasons in the same order, and pynetdicom's PDU
classes to decode the request and encode the answer, so both paths accept exactly the
same things. The association limit counts both paths.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

from pydicom.uid import UID
from pynetdicom import (
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    acse,
    pdu_primitives,
    presentation,
    sop_class,
)
from pynetdicom._globals import APPLICATION_CONTEXT_NAME
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from meshpacs.dicom import pdu
from meshpacs.dicom.association import AcceptedContext, DirectAssociation
from meshpacs.dicom.auditing import record_received, record_rejected_caller
from meshpacs.dicom.find_receiver import FindAssociation
from meshpacs.dicom.ingest import IngestService
from meshpacs.dicom.pdulimit import MAX_CONTROL_PDU
from meshpacs.dicom.qr import FIND_MODELS, FindCaller, QueryRetrieveService
from meshpacs.dicom.receiver import StorageAssociation
from meshpacs.dicom.settings import AeSettings
from meshpacs.trail import TrailWriter

__all__ = ["MeshAssociationServer", "MeshRequestHandler", "ReceiverHub", "calling_ae_refused"]

LOG = logging.getLogger("meshpacs.dicom")
VERIFICATION = "1.2.840.10008.1.1"
# The same table negotiate_unrestricted consults (private to pynetdicom, pinned).
_STORAGE_UIDS = frozenset(getattr(presentation, "_STORAGE_CLASSES").values())  # noqa: B009
# User information items a storage SCU sends; any other item goes to pynetdicom.
_PLAIN_USER_ITEMS = (
    pdu_primitives.MaximumLengthNotification,
    pdu_primitives.ImplementationClassUIDNotification,
    pdu_primitives.ImplementationVersionNameNotification,
)
# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4.
_CALLING_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x03)
_CALLED_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x07)
_LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)


class Served(Protocol):
    """An association the node serves itself (storage or query)."""

    calling_ae: str

    def run(self) -> None: ...

    def abort(self) -> None: ...


_Direct = TypeVar("_Direct", bound=DirectAssociation)


class ReceiverHub:
    """The associations the node serves itself, in flight: for the limit and for shutdown.

    ``qr`` set: query associations are served here too (when ``direct_find``).
    """

    def __init__(
        self,
        settings: AeSettings,
        ingest: IngestService,
        trail: TrailWriter | None = None,
        qr: QueryRetrieveService | None = None,
    ) -> None:
        self.settings = settings
        self.ingest = ingest
        self.trail = trail
        self.qr = qr
        self._active: set[Served] = set()
        self._lock = threading.Lock()

    @property
    def active(self) -> list[Served]:
        with self._lock:
            return list(self._active)

    def admit(self, association: Served, others: int) -> bool:
        with self._lock:
            if len(self._active) + others >= self.settings.max_associations:
                return False
            self._active.add(association)
            return True

    def release(self, association: Served) -> None:
        with self._lock:
            self._active.discard(association)


class MeshAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server; connections are handled by :class:`MeshRequestHandler`.

    The request threads may serve whole storage associations, so they must neither keep
    the process alive nor make ``shutdown`` wait for them: the AE's ``stop`` lets them
    finish, then aborts them.
    """

    daemon_threads = True
    block_on_close = False
    hub: ReceiverHub | None = None


class MeshRequestHandler(RequestHandler):
    server: MeshAssociationServer

    def handle(self) -> None:
        hub = self.server.hub
        sock = self.request
        if hub is None or isinstance(sock, ssl.SSLSocket) or not isinstance(sock, socket.socket):
            super().handle()
            return
        try:
            raw = _peek_pdu(sock, hub.settings.acse_timeout)
        except (OSError, TimeoutError):
            _close(sock)
            return
        request = _plain_request(raw)
        others = self._pynetdicom_acceptors()
        if request is not None and hub.settings.direct_storage and _only(request, _is_storage):
            _serve_storage(_Arrival(sock, len(raw), request, hub, self.server.contexts, others))
        elif (
            request is not None
            and hub.qr is not None
            and hub.settings.direct_find
            and _only(request, _is_find)
            and _proposes(request, _is_find)
        ):
            arrival = _Arrival(sock, len(raw), request, hub, self.server.contexts, others)
            _serve_find(arrival, hub.qr)
        else:
            if others + len(hub.active) >= hub.settings.max_associations and raw:
                _reject(sock, len(raw), _LOCAL_LIMIT_EXCEEDED,
                        "association rejected: the association limit is reached")  # fmt: skip
                return
            super().handle()

    def _pynetdicom_acceptors(self) -> int:
        return sum(1 for a in self.server.active_associations if a.is_acceptor)


def _peek_pdu(sock: socket.socket, timeout: float) -> bytes:
    """The first PDU, left unread on the socket; b"" if it is not a bounded RQ.

    ``recv(MSG_PEEK)`` returns what has arrived so far; a request split over several
    segments is peeked again until whole (rare: a request is a few KiB).
    """
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    want = pdu.HEADER_LENGTH
    seen = -1
    while True:
        data = sock.recv(want, socket.MSG_PEEK)
        if not data:
            raise ConnectionResetError("closed before the association request")
        if len(data) >= pdu.HEADER_LENGTH:
            kind, length = pdu.parse_header(data)
            if kind != pdu.A_ASSOCIATE_RQ or length > MAX_CONTROL_PDU:
                return b""  # pynetdicom answers and bounds whatever this is
            want = pdu.HEADER_LENGTH + length
        if len(data) >= want:
            return data[:want]
        if time.monotonic() > deadline:
            raise TimeoutError("association request incomplete")
        if len(data) == seen:
            time.sleep(0.001)
        seen = len(data)


def _plain_request(raw: bytes) -> pdu_primitives.A_ASSOCIATE | None:
    """The request as a primitive when it has no extended negotiation, else None."""
    if not raw:
        return None
    try:
        rq = A_ASSOCIATE_RQ()
        rq.decode(raw)
        primitive = rq.to_primitive()
    except Exception:
        return None
    if not all(isinstance(item, _PLAIN_USER_ITEMS) for item in primitive.user_information):
        return None
    return primitive


def _only(request: pdu_primitives.A_ASSOCIATE, kind: Any) -> bool:
    """Whether every proposed context is Verification or of ``kind``."""
    contexts = request.presentation_context_definition_list
    return bool(contexts) and all(
        str(cx.abstract_syntax) == VERIFICATION or kind(UID(str(cx.abstract_syntax)))
        for cx in contexts
    )


def _proposes(request: pdu_primitives.A_ASSOCIATE, kind: Any) -> bool:
    """Whether some proposed context is of ``kind`` (an echo alone stays on its old path)."""
    contexts = request.presentation_context_definition_list
    return any(kind(UID(str(cx.abstract_syntax))) for cx in contexts)


def _is_storage(uid: UID) -> bool:
    """What ``negotiate_unrestricted`` treats as a storage SOP class."""
    return bool(uid.is_private or uid in _STORAGE_UIDS or not hasattr(sop_class, uid.keyword))


def _is_find(uid: UID) -> bool:
    return uid in FIND_MODELS


@dataclass(frozen=True)
class _Arrival:
    """A plain association request, peeked at and left unread on its socket."""

    sock: socket.socket
    length: int  # of the A-ASSOCIATE-RQ on the socket
    request: pdu_primitives.A_ASSOCIATE
    hub: ReceiverHub
    supported: list[PresentationContext]
    others: int  # associations pynetdicom accepted and still serves

    @property
    def calling_ae(self) -> str:
        return str(self.request.calling_ae_title).strip()


def _serve_storage(arrival: _Arrival) -> None:
    settings, hub = arrival.hub.settings, arrival.hub
    peer = _peer_address(arrival.sock)

    def storage(contexts: dict[int, AcceptedContext]) -> StorageAssociation:
        return StorageAssociation(
            arrival.sock,
            ingest=hub.ingest,
            contexts=contexts,
            calling_ae=arrival.calling_ae,
            max_pdu=settings.max_pdu,
            implementation_class_uid=PYNETDICOM_IMPLEMENTATION_UID,
            implementation_version_name=PYNETDICOM_IMPLEMENTATION_VERSION,
        )

    def record(association: StorageAssociation) -> None:
        record_received(
            hub.trail,
            calling_ae=arrival.calling_ae,
            address=peer,
            called_ae=settings.ae_title,
            stored=association.instances,
            failed=association.refused,
        )

    _serve_direct(arrival, storage, record)


def _serve_find(arrival: _Arrival, qr: QueryRetrieveService) -> None:
    caller = FindCaller(
        calling_ae=arrival.calling_ae,
        address=_peer_address(arrival.sock),
        called_ae=str(arrival.request.called_ae_title).strip(),
    )

    def query(contexts: dict[int, AcceptedContext]) -> FindAssociation:
        return FindAssociation(
            arrival.sock,
            qr=qr,
            contexts=contexts,
            caller=caller,
            max_pdu=arrival.hub.settings.max_pdu,
            peer_max_pdu=_peer_max_pdu(arrival.request),
        )

    _serve_direct(arrival, query)


def _serve_direct(
    arrival: _Arrival,
    make: Callable[[dict[int, AcceptedContext]], _Direct],
    record: Callable[[_Direct], None] | None = None,
) -> None:
    """Negotiate, admit, accept, then serve the association ``make`` builds until it ends.

    ``record`` (the audit trail's) runs once it ended, before the association is released,
    so that a stopping AE waits for the record too.
    """
    sock, length, request, hub = arrival.sock, arrival.length, arrival.request, arrival.hub
    results = _negotiate(sock, length, request, hub, arrival.supported)
    if results is None:
        return
    association = make(_accepted(results))
    if not _admit(sock, length, hub, association, arrival.others):
        return
    try:
        _accept(sock, length, request, results, hub.settings)
        LOG.info("%s association from %s accepted", association.served, arrival.calling_ae)
        association.run()
        LOG.info("%s association from %s ended after %s",
                 association.served, arrival.calling_ae, association.tally)  # fmt: skip
    except OSError as exc:
        LOG.warning("association from %s failed: %s", arrival.calling_ae, exc.strerror or exc)
        _close(sock)
    finally:
        if record is not None:
            record(association)
        hub.release(association)


def _negotiate(
    sock: socket.socket,
    request_length: int,
    request: pdu_primitives.A_ASSOCIATE,
    hub: ReceiverHub,
    supported: list[PresentationContext],
) -> list[PresentationContext] | None:
    """pynetdicom's checks and context negotiation; None once the request is rejected."""
    calling = str(request.calling_ae_title).strip()
    rejection = _ae_rejection(request, hub.settings)
    if rejection is not None:
        if calling_ae_refused(calling, hub.settings):
            # In the trail before the caller hears no: what it was told has been recorded.
            record_rejected_caller(
                hub.trail,
                calling_ae=calling,
                address=_peer_address(sock),
                called_ae=str(request.called_ae_title).strip(),
            )
        _reject(sock, request_length, rejection, f"association from {calling} rejected")
        return None
    negotiate = getattr(acse, "negotiate_unrestricted")  # noqa: B009 - wrapped at run time
    results, _roles = negotiate(request.presentation_context_definition_list, supported, None)
    return list(results)


def _accepted(results: list[PresentationContext]) -> dict[int, AcceptedContext]:
    return {
        cast(int, cx.context_id): AcceptedContext(
            cast(int, cx.context_id), str(cx.abstract_syntax), str(cx.transfer_syntax[0])
        )
        for cx in results
        if cx.result == 0x00
    }


def _admit(
    sock: socket.socket, request_length: int, hub: ReceiverHub, association: Served, others: int
) -> bool:
    if hub.admit(association, others):
        return True
    _reject(sock, request_length, _LOCAL_LIMIT_EXCEEDED,
            "association rejected: the association limit is reached")  # fmt: skip
    return False


def _accept(
    sock: socket.socket,
    request_length: int,
    request: pdu_primitives.A_ASSOCIATE,
    results: list[PresentationContext],
    settings: AeSettings,
) -> None:
    _recv_exactly(sock, request_length)  # consume the request we peeked at
    sock.settimeout(settings.network_timeout)
    sock.sendall(_accept_pdu(request, results, settings.max_pdu))


def _peer_max_pdu(request: pdu_primitives.A_ASSOCIATE) -> int:
    """The peer's Maximum Length Received (0: no limit, as PS3.8 D.1 reads a missing one)."""
    for item in request.user_information:
        if isinstance(item, pdu_primitives.MaximumLengthNotification):
            return int(item.maximum_length_received)
    return 0


def _ae_rejection(
    request: pdu_primitives.A_ASSOCIATE, settings: AeSettings
) -> tuple[int, int, int] | None:
    """pynetdicom's AE title checks, in its order (the later reason wins)."""
    rejection = None
    if calling_ae_refused(str(request.calling_ae_title), settings):
        rejection = _CALLING_AE_NOT_RECOGNIZED
    if str(request.called_ae_title).strip() != settings.ae_title.strip():
        rejection = _CALLED_AE_NOT_RECOGNIZED
    return rejection


def calling_ae_refused(calling_ae: str, settings: AeSettings) -> bool:
    """Whether ``allowed_calling_aets`` (when set) leaves ``calling_ae`` out."""
    allowed = [a.strip() for a in settings.allowed_calling_aets]
    return bool(allowed) and calling_ae.strip() not in allowed


def _accept_pdu(
    request: pdu_primitives.A_ASSOCIATE, results: list[PresentationContext], max_pdu: int
) -> bytes:
    primitive = pdu_primitives.A_ASSOCIATE()
    primitive.application_context_name = UID(APPLICATION_CONTEXT_NAME)
    primitive.calling_ae_title = request.calling_ae_title
    primitive.called_ae_title = request.called_ae_title
    primitive.result = 0x00
    primitive.result_source = 0x01
    primitive.presentation_context_definition_results_list = results
    max_length = pdu_primitives.MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    class_uid = pdu_primitives.ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = UID(PYNETDICOM_IMPLEMENTATION_UID)
    version = pdu_primitives.ImplementationVersionNameNotification()
    version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    primitive.user_information = [max_length, class_uid, version]
    ac = A_ASSOCIATE_AC()
    ac.from_primitive(primitive)
    return bytes(ac.encode())


def _reject_pdu(reason: tuple[int, int, int]) -> bytes:
    primitive = pdu_primitives.A_ASSOCIATE()
    primitive.result, primitive.result_source, primitive.diagnostic = reason
    rj = A_ASSOCIATE_RJ()
    rj.from_primitive(primitive)
    return bytes(rj.encode())


def _reject(
    sock: socket.socket, request_length: int, reason: tuple[int, int, int], why: str
) -> None:
    """Consume the peeked request, answer A-ASSOCIATE-RJ with ``reason``, close."""
    LOG.warning("%s (reason %d/%d/%d)", why, *reason)
    try:
        _recv_exactly(sock, request_length)
        sock.sendall(_reject_pdu(reason))
    except OSError:
        pass
    _close(sock)


def _recv_exactly(sock: socket.socket, length: int) -> None:
    view = memoryview(bytearray(length))
    got = 0
    while got < length:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionResetError("closed during the association request")
        got += n


def _peer_address(sock: socket.socket) -> str:
    try:
        return str(sock.getpeername()[0])
    except (OSError, IndexError):
        return ""


def _close(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.close()
