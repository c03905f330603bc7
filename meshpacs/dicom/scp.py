"""The node's DICOM Application Entity: who may connect, what it accepts, how it stops.

Storage is accepted for every SOP class, known or not (``UNRESTRICTED_STORAGE_SERVICE``:
otherwise pynetdicom aborts the whole association at the first private SOP class, losing
every object behind it), in every transfer syntax except Deflated Explicit VR Little Endian,
and the two JPIP Referenced Deflate syntaxes: the node would have to inflate their whole
dataset to catalogue it, and so could be made to inflate a bomb.
Datasets are streamed to disk as received and never decoded for storage.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, cast

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from meshpacs.dicom.acceptor import (
    MeshAssociationServer,
    MeshRequestHandler,
    ReceiverHub,
    calling_ae_refused,
)
from meshpacs.dicom.auditing import record_received, record_rejected_caller
from meshpacs.dicom.contexts import CheapCopyContexts
from meshpacs.dicom.ingest import IngestService
from meshpacs.dicom.negotiation import install_storage_negotiation
from meshpacs.dicom.nodelay import install_tcp_nodelay
from meshpacs.dicom.pdulimit import install_pdu_limit
from meshpacs.dicom.qr import (
    FIND_MODELS,
    GET_MODELS,
    MOVE_MODELS,
    QueryRetrieveService,
    install_fast_find_answers,
    install_raw_retrieve,
)
from meshpacs.dicom.settings import AeSettings
from meshpacs.trail import TrailWriter

__all__ = ["AeSettings", "DicomAE", "configure_pynetdicom", "storage_transfer_syntaxes"]

LOG = logging.getLogger("meshpacs.dicom")
# Syntaxes whose whole dataset is deflated (PS3.5 A.5, A.6): reading one for the catalog
# means inflating whatever the peer sent. Deflated Image Frame Compression only deflates
# pixel frames, which the node never decodes, so it stays accepted.
DEFLATED_DATASET_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
        "1.2.840.10008.1.2.4.95",  # JPIP Referenced Deflate
        "1.2.840.10008.1.2.4.205",  # JPIP HTJ2K Referenced Deflate
    }
)


# Identifiers are decoded, so they never come deflated.
QUERY_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
]


def storage_transfer_syntaxes() -> list[str]:
    return [str(ts) for ts in ALL_TRANSFER_SYNTAXES if str(ts) not in DEFLATED_DATASET_SYNTAXES]


def configure_pynetdicom(*, log_phi: bool = False) -> None:
    """Process-wide pynetdicom settings the node depends on; idempotent."""
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    _config.STORE_RECV_CHUNKED_DATASET = True
    # pynetdicom logs C-FIND identifiers (names, IDs, dates) by default.
    _config.LOG_REQUEST_IDENTIFIERS = log_phi
    _config.LOG_RESPONSE_IDENTIFIERS = log_phi
    install_tcp_nodelay()
    install_pdu_limit()
    install_storage_negotiation(storage_transfer_syntaxes())
    install_raw_retrieve()
    install_fast_find_answers()
    if not log_phi:
        # At INFO pynetdicom logs every DIMSE message, with UIDs in them.
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)


class DicomAE:
    """The node's SCP: start it, read its bound port, stop it."""

    def __init__(
        self,
        settings: AeSettings,
        ingest: IngestService,
        qr: QueryRetrieveService | None = None,
        trail: TrailWriter | None = None,
    ) -> None:
        self.settings = settings
        self._ingest = ingest
        self._qr = qr
        self._trail = trail  # each storage association is recorded there (dicom.auditing)
        self._server: MeshAssociationServer | None = None
        self._lock = threading.Lock()
        self._received: dict[Any, list[int]] = {}  # pynetdicom's associations: stored, failed

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the DICOM AE is not running")
        return int(self._server.server_address[1])

    def start(self) -> int:
        """Start listening; returns the bound port (useful with port 0 in tests)."""
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.maximum_associations = s.max_associations
        ae.maximum_pdu_size = s.max_pdu
        ae.network_timeout = s.network_timeout
        ae.acse_timeout = s.acse_timeout
        ae.dimse_timeout = s.dimse_timeout
        ae.require_called_aet = True
        if s.allowed_calling_aets:
            ae.require_calling_aet = list(s.allowed_calling_aets)
        ae.add_supported_context(Verification, QUERY_TRANSFER_SYNTAXES)
        syntaxes = storage_transfer_syntaxes()
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                # Role selection accepted as proposed: a C-GET requestor acts as storage SCP.
                ae.add_supported_context(
                    context.abstract_syntax, syntaxes, scu_role=True, scp_role=True
                )
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, _echo),
            (evt.EVT_C_STORE, self._ingest.handle_store if self._trail is None else self._store),
            (evt.EVT_CONN_CLOSE, self._ingest.discard_partial),
        ]
        if self._trail is not None:
            handlers.append((evt.EVT_CONN_CLOSE, self._record_received))
            handlers.append((evt.EVT_REJECTED, self._record_rejected))
        if self._qr is not None:
            for model in (*FIND_MODELS, *MOVE_MODELS, *GET_MODELS):
                ae.add_supported_context(model, QUERY_TRANSFER_SYNTAXES)
            handlers += [
                (evt.EVT_C_FIND, self._qr.handle_find),
                (evt.EVT_C_MOVE, self._qr.handle_move),
                (evt.EVT_C_GET, self._qr.handle_get),
            ]
        server = self._serve(ae, handlers)
        with self._lock:
            self._server = server
        LOG.info("DICOM AE %s listening on %s:%d", s.ae_title, s.bind, self.port)
        return self.port

    def _serve(self, ae: AE, handlers: list[Any]) -> MeshAssociationServer:
        """pynetdicom's ``start_server(block=False)``, with the node's connection handler."""
        s = self.settings
        server = cast(
            MeshAssociationServer,
            ae.make_server(
                (s.bind, s.port),
                evt_handlers=handlers,
                server_class=MeshAssociationServer,
                request_handler=MeshRequestHandler,
            ),
        )
        server.contexts = CheapCopyContexts(server.contexts)  # copied for every association
        if s.direct_storage or s.direct_find:
            server.hub = ReceiverHub(s, self._ingest, self._trail, self._qr)
        thread = threading.Thread(target=server.serve_forever, name="meshpacs-dicom-accept")
        thread.daemon = True
        thread.start()
        ae._servers.append(server)
        return server

    def _store(self, event: Any) -> int:
        """EVT_C_STORE when auditing: the ingest's answer, counted for the association."""
        status = self._ingest.handle_store(event)
        with self._lock:
            counts = self._received.setdefault(event.assoc, [0, 0])
            counts[0 if status == 0 else 1] += 1
        return status

    def _record_received(self, event: Any) -> None:
        """EVT_CONN_CLOSE: one Instances Transferred event for the association's stores."""
        with self._lock:
            counts = self._received.pop(event.assoc, None)
        if counts is None:
            return
        record_received(
            self._trail,
            calling_ae=str(event.assoc.requestor.ae_title).strip(),
            address=str(event.assoc.requestor.address),
            called_ae=self.settings.ae_title,
            stored=counts[0],
            failed=counts[1],
        )

    def _record_rejected(self, event: Any) -> None:
        """EVT_REJECTED: a Security Alert when the calling AE title was the reason."""
        calling = str(event.assoc.requestor.ae_title).strip()
        if calling_ae_refused(calling, self.settings):
            record_rejected_caller(
                self._trail,
                calling_ae=calling,
                address=str(event.assoc.requestor.address),
                called_ae=self.settings.ae_title,
            )

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let associations in flight finish for ``grace`` s, then abort them."""
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # stops accepting and closes the listening socket
        active = server.active_associations
        hub = server.hub
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (
            any(a.is_alive() for a in active) or (hub is not None and hub.active)
        ):
            time.sleep(0.05)
        for assoc in active:
            if assoc.is_alive():
                LOG.warning("aborting an association from %s at shutdown", assoc.requestor.ae_title)
                assoc.abort()
        for receiving in hub.active if hub is not None else []:
            LOG.warning("aborting an association from %s at shutdown", receiving.calling_ae)
            receiving.abort()


def _echo(event: Any) -> int:
    return 0x0000
