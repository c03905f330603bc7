"""The node's audit events that lower rooms only report: refused mesh peers, and studies
exported to the federation.

The transport and the backup service import nothing of the trail's wiring; the node
hands them these callbacks. A TLS peer the fragment server refuses (at the handshake or
after it, see :class:`~meshpacs.transport.server.RefusedPeer`) is a Security Alert (Node
Authentication, failed), at most one a minute per address. A study the backup service
has protected left the site's jurisdiction, as encrypted erasure-coded fragments at the
partners: one Export per study protected, the study named by its keyed catalog record ID
(its UID too only under ``[audit_trail] include_uids``), the partners holding its
fragments named beside it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import dataclass

from meshpacs.backup.service import StudyPublisher
from meshpacs.metadata.catalog import Catalog
from meshpacs.metadata.replica import study_record_id
from meshpacs.trail import TrailWriter
from meshpacs.trail.messages import (
    NODE_AUTHENTICATION,
    AuditEvent,
    Outcome,
    Participant,
    Role,
    StudyRef,
    export,
    security_alert,
)
from meshpacs.transport.server import OnRefused, RefusedPeer

__all__ = ["ExportingPublisher", "peer_refused_recorder"]

LOG = logging.getLogger("meshpacs.node")
_MAX_REASON = 200


def peer_refused_recorder(trail: TrailWriter) -> OnRefused:
    """The fragment server's ``on_refused``: records on the loop, never blocks it."""
    running: set[asyncio.Task[None]] = set()

    def refused(peer: RefusedPeer) -> None:
        who = Participant(
            user_id=peer.common_name or "unauthenticated peer",
            alternative_id=f"sha256:{peer.fingerprint}" if peer.fingerprint else "",
            network_address=peer.address,
            requestor=True,
        )

        def alert(note: str) -> AuditEvent:
            return security_alert(
                trail.application,
                NODE_AUTHENTICATION,
                others=(who,),
                outcome=Outcome.MINOR_FAILURE,
                description=f"mesh transport: {peer.reason[:_MAX_REASON]}{note}",
            )

        task = asyncio.get_running_loop().create_task(
            trail.arecord_refusal(f"mesh {peer.address}", alert)
        )
        running.add(task)  # kept until done: the loop holds tasks only weakly
        task.add_done_callback(running.discard)

    return refused


@dataclass(frozen=True)
class _Exported:
    study_uid: str
    instances: int
    holders: tuple[str, ...]
    k: int
    n: int


def _exported(db: sqlite3.Connection, study_ref: int) -> _Exported | None:
    row = db.execute("SELECT study_uid FROM studies WHERE id = ?", (study_ref,)).fetchone()
    if row is None:
        return None
    (instances,) = db.execute(
        "SELECT COUNT(*) FROM bundle_members m JOIN bundles b ON b.id = m.bundle_ref"
        " WHERE b.study_ref = ?",
        (study_ref,),
    ).fetchone()
    holders = db.execute(
        "SELECT DISTINCT p.holder_site FROM placements p JOIN bundles b ON b.id = p.bundle_ref"
        " WHERE b.study_ref = ? ORDER BY p.holder_site",
        (study_ref,),
    ).fetchall()
    shape = db.execute(
        "SELECT k, n FROM bundles WHERE study_ref = ? ORDER BY id DESC LIMIT 1", (study_ref,)
    ).fetchone()
    k, n = (int(shape[0]), int(shape[1])) if shape else (0, 0)
    return _Exported(str(row[0]), int(instances), tuple(str(h[0]) for h in holders), k, n)


class ExportingPublisher:
    """A :class:`~meshpacs.backup.service.StudyPublisher` that records an Export for each
    study protected, then passes it on (to the trusted peers' replication)."""

    def __init__(
        self, inner: StudyPublisher, trail: TrailWriter, catalog: Catalog, catalog_key: bytes
    ) -> None:
        self._inner = inner
        self._trail = trail
        self._catalog = catalog
        self._key = catalog_key

    async def study_protected(self, study_ref: int) -> None:
        await self._record_export(study_ref)
        await self._inner.study_protected(study_ref)

    async def unplaced_protected(self, bundle_ref: int) -> None:
        await self._inner.unplaced_protected(bundle_ref)

    async def _record_export(self, study_ref: int) -> None:
        try:
            found = await self._catalog.read(lambda db: _exported(db, study_ref))
        except Exception:  # the backup goes on; the trail misses this one, said loudly
            LOG.exception("study row %d protected but its Export not recorded", study_ref)
            return
        if found is None:
            return
        study = StudyRef(
            record_id=study_record_id(self._key, found.study_uid),
            uid=found.study_uid,
            instances=found.instances,
        )
        partners = [Participant(user_id=site, role=Role.DESTINATION) for site in found.holders]
        await self._trail.arecord_quietly(
            export(
                self._trail.application,
                Participant(user_id="federation partners"),
                [study],
                others=partners,
                description=(
                    f"backed up as encrypted fragments, any {found.k} of {found.n} rebuild it,"
                    f" held by {len(found.holders)} partner sites"
                ),
            )
        )
