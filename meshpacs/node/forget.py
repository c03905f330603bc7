"""``meshpacs forget`` at a site: file the request, follow it, or carry it out locally.

With the mesh on, the running node does the work (:class:`~meshpacs.upkeep.Forgetter`:
it alone reaches the partners); this module files the request in the catalog and reads
how it went. With the mesh off nothing of the site is anywhere else, so the request is
carried out here and now.

The request is a Study Deleted event in the site's trail, forwarded like the node's own
events when ``[audit_trail] syslog_host`` names a collector; the command waits a few
seconds at most for it to get there before it exits (the local trail keeps it anyway).
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import time
from typing import Any

from meshpacs.dicom.storage import InstanceStore
from meshpacs.errors import ConfigError, MeshError
from meshpacs.keys import SiteKeys, SiteSecret
from meshpacs.metadata import Catalog
from meshpacs.metadata import forget as ledger
from meshpacs.metadata.replica import study_record_id
from meshpacs.node.config import NodeConfig
from meshpacs.node.forwarding import trail_forwarder
from meshpacs.node.site import load_site_secret
from meshpacs.trail import TrailWriter
from meshpacs.trail.messages import AuditSource, Outcome, Participant, StudyRef, study_deleted
from meshpacs.transport.frames import RecordKind
from meshpacs.upkeep import Forgetter

__all__ = ["file_request", "forget_here", "request_report", "wait_for"]

LOG = logging.getLogger("meshpacs.forget")


class _NoPartners:
    """A site whose mesh is off has placed nothing: nothing to reach."""

    async def delete_fragment(self, site_id: str, fragment_id: str) -> bool:
        raise ConfigError("the mesh is off: no partner to delete at")

    async def delete_record(self, site_id: str, kind: RecordKind, record_id: str) -> bool:
        raise ConfigError("the mesh is off: no partner to delete at")


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


async def file_request(config: NodeConfig, study_uid: str) -> int | None:
    """The request's row id; None when the site's catalog holds no such study.

    Either way the request is recorded in the site's audit trail as a DICOM Study Deleted
    event, the study named by its keyed catalog record ID (never its UID).
    """
    ref: int | None = None
    if config.catalog_path.exists():
        async with await Catalog.open(config.catalog_path) as catalog:
            now = time.time()
            ref = await catalog.write(lambda db: ledger.request(db, study_uid, _who(), now))
    await asyncio.to_thread(_record_request, config, study_uid, ref)
    return ref


def _record_request(config: NodeConfig, study_uid: str, ref: int | None) -> None:
    try:
        secret = load_site_secret(config.key_file)
    except MeshError as exc:
        LOG.error("forget request not recorded in the audit trail: %s", exc)
        return
    trail = TrailWriter.for_site(
        config.data_dir,
        secret,
        AuditSource(config.dicom.ae_title, config.site.id),
        include_uids=config.audit_trail.include_uids,
        forward=trail_forwarder(config.audit_trail),
    )
    try:
        _record_deleted(trail, secret, study_uid, ref)
    finally:
        trail.close()  # the collector's copy, within the node's own bound on stopping


def _record_deleted(
    trail: TrailWriter, secret: SiteSecret, study_uid: str, ref: int | None
) -> None:
    try:
        record_id = study_record_id(SiteKeys.derive(secret).catalog, study_uid)
    except UnicodeEncodeError:  # not a UID at all; the catalog matched nothing
        record_id = "not-a-uid"
    if ref is None:
        outcome = Outcome.MINOR_FAILURE
        description = "no study with that Study Instance UID in this site's catalog; nothing done"
    else:
        outcome = Outcome.SUCCESS
        description = (
            f"forget request {ref} filed: the study is deleted here, at every partner"
            " holding its fragments and at every trusted peer holding its record"
        )
    trail.record_quietly(
        study_deleted(
            Participant(user_id=_who(), requestor=True),
            trail.application,
            [StudyRef(record_id=record_id, uid=study_uid)],
            outcome=outcome,
            description=description,
        )
    )


async def request_report(config: NodeConfig, request_ref: int) -> dict[str, Any]:
    """The request's row and the deletions it still waits for."""
    async with await Catalog.open(config.catalog_path) as catalog:

        def read(db: Any) -> dict[str, Any]:
            row = ledger.request_state(db, request_ref) or {}
            (left,) = db.execute(
                "SELECT COUNT(*) FROM forget_deletions WHERE request_ref = ?", (request_ref,)
            ).fetchone()
            return {**row, "deletions_waiting": int(left)}

        return await catalog.read(read)


async def forget_here(config: NodeConfig) -> None:
    """Carry out the pending requests of a site whose mesh is off."""
    instances = InstanceStore(config.instances_dir, config.tmp_dir)
    async with await Catalog.open(config.catalog_path) as catalog:
        await Forgetter(
            catalog=catalog,
            partners=_NoPartners(),
            catalog_key=None,  # no trusted peer holds a record of this site
            trusted=(),
            instance_path=instances.path_for,
        ).forget_once()


async def wait_for(config: NodeConfig, request_ref: int, seconds: float) -> dict[str, Any]:
    """The request once done, or as it stands after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        report = await request_report(config, request_ref)
        if report.get("state") == "done" or time.monotonic() >= deadline:
            return report
        await asyncio.sleep(0.5)
