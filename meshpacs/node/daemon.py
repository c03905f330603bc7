"""The node daemon: the DICOM AE, its store and catalog, and the mesh, run until told to stop.

Run in the foreground under systemd (or a terminal): logs go to stderr, SIGTERM and SIGINT
stop it cleanly. On stop the AE refuses new associations, lets those in flight finish for a
grace period and aborts the rest; an instance is acknowledged only once durable, so an
aborted one is simply sent again by the PACS.

The node's start and stop, each storage association and each C-FIND are recorded as ATNA
audit events in the site's trail (``<data_dir>/trail``, :mod:`meshpacs.trail`); with
``[audit_trail] syslog_host`` each is also queued for that collector, sent by a background
thread so that neither DICOM nor the node waits for it.

With ``[web] enabled`` the node also serves its read-only dashboard and ``/metrics``
(:mod:`meshpacs.web`), drawn from the same status document as ``meshpacs status``, and
appends a snapshot of its study counts to ``state/history.jsonl`` for the dashboard's
chart. The log gives the dashboard's address, never its token (``state/dashboard.token``).
A dashboard that cannot start is logged as an error and the node runs on without it.

pynetdicom runs associations in its own threads; the catalog and its group-commit writer
run on this module's event loop, and the C-STORE handler hands records across.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshpacs.dicom.ingest import CatalogWriter, IngestService, reconcile_recent
from meshpacs.dicom.qr import QueryRetrieveService
from meshpacs.dicom.scp import AeSettings, DicomAE, configure_pynetdicom
from meshpacs.dicom.storage import InstanceStore
from meshpacs.errors import MeshError
from meshpacs.metadata.catalog import Catalog
from meshpacs.node.config import NodeConfig
from meshpacs.node.forwarding import trail_forwarder
from meshpacs.node.mesh import MeshNode
from meshpacs.node.mesh_retrieve import RestoreCounts, retriever_for
from meshpacs.node.site import load_site_secret
from meshpacs.node.status import site_status
from meshpacs.store.store import INDEX_NAME
from meshpacs.trail import TrailWriter, local_user
from meshpacs.trail.messages import AuditSource, Outcome, application_activity
from meshpacs.web import (
    HISTORY_FILE,
    TOKEN_FILE,
    DashboardServer,
    catalog_figures,
    ensure_token,
    keep_history,
    read_history,
)

__all__ = [
    "NodeStarted",
    "node_figures",
    "open_trail",
    "run_node",
]

LOG = logging.getLogger("meshpacs.node")
# How long associations in flight may finish after a stop request before they are aborted.
SHUTDOWN_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class NodeStarted:
    """Told to the caller once the node accepts associations."""

    dicom_port: int
    dht_port: int = 0  # 0: the mesh is off
    transport_port: int = 0
    web_port: int = 0  # 0: no dashboard ([web] enabled = false, or it could not start)


def _ae_settings(config: NodeConfig) -> AeSettings:
    d = config.dicom
    return AeSettings(
        ae_title=d.ae_title,
        bind=d.bind,
        port=d.port,
        max_associations=d.max_associations,
        max_pdu=d.max_pdu,
        allowed_calling_aets=d.allowed_calling_aets,
        network_timeout=d.network_timeout,
        acse_timeout=d.acse_timeout,
        dimse_timeout=d.dimse_timeout,
        max_instance_bytes=d.max_instance_bytes,
    )


async def run_node(
    config: NodeConfig,
    *,
    stop: asyncio.Event | None = None,
    started: Callable[[NodeStarted], None] = lambda _: None,
    handle_signals: bool = True,
) -> None:
    """Run the node until ``stop`` is set or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    if config.logging.log_phi:
        LOG.warning("PHI LOGGING IS ON: patient names, IDs and UIDs will appear in this log. "
                    "Turn [logging] log_phi off as soon as debugging is done.")  # fmt: skip
    configure_pynetdicom(log_phi=config.logging.log_phi)
    store = InstanceStore(config.instances_dir, config.tmp_dir)
    swept = store.sweep_tmp()
    if swept:
        LOG.info("removed %d partial files left by an earlier run", swept)
    # pynetdicom streams each incoming dataset to a temporary file: keep those on the same
    # filesystem as the store so they are renamed into place, not copied.
    tempfile.tempdir = str(config.tmp_dir)

    catalog = await Catalog.open(config.catalog_path)
    await reconcile_recent(catalog, store)
    writer = CatalogWriter(catalog)
    writer.start()
    ingest = IngestService(store, writer, max_instance_bytes=config.dicom.max_instance_bytes)
    destinations = {aet: (d.host, d.port) for aet, d in config.dicom.destinations.items()}
    trail = await asyncio.to_thread(open_trail, config)
    qr = QueryRetrieveService(catalog, store, loop, destinations, trail=trail)
    restores = RestoreCounts()  # what C-MOVE/C-GET delivered, for /metrics
    qr.sent = restores.sent
    ae = DicomAE(_ae_settings(config), ingest, qr, trail)
    background: asyncio.Task[None] | None = None
    mesh: MeshNode | None = None
    web: DashboardServer | None = None
    history: asyncio.Task[None] | None = None
    running = False
    try:
        try:
            port = await asyncio.to_thread(ae.start)
        except Exception as exc:
            await _record_activity(trail, True, Outcome.SERIOUS_FAILURE, f"cannot start: {exc}")
            raise
        running = True
        await _record_activity(trail, True)
        LOG.info("site %s: node running, DICOM AE %s on port %d",
                 config.site.id, config.dicom.ae_title, port)  # fmt: skip
        if config.mesh.enabled:
            secret = load_site_secret(config.key_file)
            mesh = MeshNode(config, secret, catalog, store, dicom_port=port, trail=trail)
            await mesh.start()
            # C-MOVE/C-GET of instances pruned from this disk now gather them from the mesh.
            qr.missing = retriever_for(mesh, secret, catalog, store, restores)
            # The backup service marks studies stable itself, pass by pass.
            background = loop.create_task(mesh.run(stop))
        else:
            background = loop.create_task(
                _watch_stability(catalog, config.catalog.stable_after_seconds)
            )
        if config.web.enabled:
            web = await _start_web(config, restores, trail)
            history = loop.create_task(
                keep_history(
                    functools.partial(site_status, config),
                    config.state_dir / HISTORY_FILE,
                    config.web.history_interval_seconds,
                    stop,
                )
            )
        started(
            NodeStarted(
                dicom_port=port,
                dht_port=mesh.dht_port if mesh else 0,
                transport_port=mesh.transport_port if mesh else 0,
                web_port=web.port if web else 0,
            )
        )
        await stop.wait()
        LOG.info(
            "stopping: finishing associations in flight (up to %.0f s)", SHUTDOWN_GRACE_SECONDS
        )
    finally:
        await asyncio.to_thread(ae.stop, SHUTDOWN_GRACE_SECONDS)
        if web is not None:
            await web.close()
        if history is not None:
            history.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await history
        if background is not None:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
        if mesh is not None:
            await mesh.close()
        await writer.stop()
        await catalog.close()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        if running:
            await _record_activity(trail, False)
        if trail is not None:
            await asyncio.to_thread(trail.close)
        LOG.info("node stopped")


def node_figures(config: NodeConfig, restores: RestoreCounts | None = None) -> dict[str, Any]:
    """What the dashboard and ``/metrics`` show beyond the status document (all counts)."""
    figures = catalog_figures(config.catalog_path, config.fragments_dir / INDEX_NAME)
    figures["backup"] = {"k": config.backup.k, "n": config.backup.n, "happy": config.backup.happy}
    if restores is not None:
        figures["restores"] = restores.figures()
    return figures


async def _start_web(
    config: NodeConfig, restores: RestoreCounts | None = None, trail: TrailWriter | None = None
) -> DashboardServer | None:
    """The dashboard, listening; None (logged as an error) if it cannot start."""
    try:
        token = await asyncio.to_thread(ensure_token, config.state_dir / TOKEN_FILE)
        server = DashboardServer(
            token=token,
            status=functools.partial(site_status, config),
            figures=functools.partial(node_figures, config, restores),
            history=functools.partial(read_history, config.state_dir / HISTORY_FILE),
            bind=config.web.bind,
            port=config.web.port,
            trail=trail,  # refused requests are User Authentication events
        )
        await server.start()
    except (OSError, MeshError) as exc:
        # Backups must not wait for a web page: the node runs on, and says so loudly.
        LOG.error("dashboard not started on %s port %d: %s", config.web.bind, config.web.port, exc)
        return None
    LOG.info("dashboard at %s (token in %s)", server.url, config.state_dir / TOKEN_FILE)
    return server


def open_trail(config: NodeConfig) -> TrailWriter | None:
    """The site's audit trail writer; None (logged) when the site key cannot be read."""
    try:
        secret = load_site_secret(config.key_file)
    except MeshError as exc:
        LOG.error("audit trail off: %s", exc)
        return None
    return TrailWriter.for_site(
        config.data_dir,
        secret,
        AuditSource(config.dicom.ae_title, config.site.id),
        include_uids=config.audit_trail.include_uids,
        forward=trail_forwarder(config.audit_trail),
    )


async def _record_activity(
    trail: TrailWriter | None,
    started: bool,
    outcome: Outcome = Outcome.SUCCESS,
    description: str = "",
) -> None:
    """Application Activity: the node started (or failed to) or stopped."""
    if trail is None:
        return
    event = application_activity(
        trail.application,
        started=started,
        launcher=local_user(),
        outcome=outcome,
        description=description,
    )
    await trail.arecord_quietly(event)


async def _watch_stability(catalog: Catalog, quiet_seconds: float) -> None:
    """Promote studies that stopped receiving to stable and queue them for backup."""
    interval = max(0.5, min(quiet_seconds / 4, 5.0))
    while True:
        await asyncio.sleep(interval)
        try:
            queued = await catalog.mark_stable(quiet_seconds)
        except Exception:
            LOG.exception("could not update study stability; will retry",
                          extra={"event": "stability_error"})  # fmt: skip
            continue
        if queued:
            # The same event as the backup pass's, which queues them when the mesh is on.
            LOG.info("%d studies stable and queued for backup", len(queued),
                     extra={"event": "studies_stable", "studies": len(queued)})  # fmt: skip
