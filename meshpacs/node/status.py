"""What ``meshpacs status`` reports: the site's studies by backup state, and its peers.

Read from the site's own files, so it works whether or not the node is running: study
counts from the catalog (SQLite in WAL mode lets a reader in beside the running node),
peers from ``state/peers.json``, which the running node rewrites every half minute. When
that file is missing or old, the peers are listed from the config with ``online: false``
and ``peers_as_of`` says how old the news is.

Audits come from the catalog too: each placement's last verdict, and per peer what this
site's audits found (reputation score, passed and failed audits, latency); peers the
audits score below ``[maintenance] reputation_floor`` are marked ``shunned``: they get no
new shares. The last scrub of what partners store here is read from ``state/scrub.json``;
the last renewal of this site's leases at its partners from ``state/leases.json``, and
what lease expiry removed of partners' shares here from ``state/expiry.json``; what this
node did as the delegate of trusted sites that are down from ``state/delegate.json``; a
recovery's progress (``meshpacs recover --show-on-dashboard``) from ``state/recovery.json``. Forget
requests (``meshpacs forget``) are counted from the catalog: pending, deleting at
partners, done.

Space, per peer: what this site keeps for it (its fragments in this node's fragment
index) and what it keeps for this site (this site's placements there, each share's size
worked out from its bundle's coding, as the fragment layout fixes it). The backlog is the
studies not yet protected and when the oldest of them arrived; ``storage`` is this node's
disk and its offer to partners. ``warnings`` (:mod:`meshpacs.node.status_warnings`) turns
all of it into the sentences an administrator should act on, each with a stable code.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshpacs.erasure.layout import FragmentHeader
from meshpacs.metadata import forget, health, ledger, repair
from meshpacs.node.config import NodeConfig
from meshpacs.node.expiry import expiry_report
from meshpacs.node.leave import held_now, leave_requested
from meshpacs.node.mesh import DELEGATE_FILE, EXPIRY_FILE, LEASES_FILE, PEERS_FILE, SCRUB_FILE
from meshpacs.node.status_warnings import STALE_AFTER_SECONDS, site_warnings, trail_problem
from meshpacs.recovery.progress import DASHBOARD_FILE as RECOVERY_FILE
from meshpacs.store.store import INDEX_NAME
from meshpacs.upkeep.leases import last_renewal

__all__ = ["STALE_AFTER_SECONDS", "site_status"]


def _study_counts(db: sqlite3.Connection, tables: set[str]) -> dict[str, int]:
    if "bundles" not in tables:  # a catalog the node has not opened since upgrading
        total = int(db.execute("SELECT COUNT(*) FROM studies").fetchone()[0])
        return {"total": total, "protected": 0, "degraded": 0, "unprotected": total}
    counts = ledger.protection_counts(db)
    return {
        "total": counts.total,
        "protected": counts.protected,
        "degraded": counts.degraded,
        "unprotected": counts.unprotected,
    }


def _audit_report(
    db: sqlite3.Connection, config: NodeConfig, now: float
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Placements by verdict, and per peer what the audits found."""
    counts = health.verdict_counts(db)
    records = health.peer_records(db)
    maintenance = config.maintenance
    half_life = maintenance.reputation_half_life_seconds
    by_peer: dict[str, dict[str, Any]] = {}
    for record in records:
        score = record.reputation.score(now, half_life)
        latency = record.reputation.latency_seconds
        by_peer[record.site_id] = {
            "reputation": round(score, 3),
            "shunned": score < maintenance.reputation_floor,
            "leaving": record.leaving_at is not None,
            "audits_passed": record.passed,
            "audits_failed": record.failed,
            "last_audit_at": record.last_audit_at,
            "last_failure_at": record.last_failure_at,
            "latency_ms": None if latency is None else round(latency * 1000, 1),
        }
    audited = [r.last_audit_at for r in records if r.last_audit_at is not None]
    summary = {
        "placements": {
            "unaudited": counts.unaudited,
            "ok": counts.ok,
            "failed": counts.failed,
            "missing": counts.missing,
            "out_of_challenges": counts.exhausted,
        },
        "passed": sum(r.passed for r in records),
        "failed": sum(r.failed for r in records),
        "last_audit_at": max(audited) if audited else None,
    }
    return summary, by_peer


def _repair_report(db: sqlite3.Connection, config: NodeConfig, now: float) -> dict[str, Any]:
    """What repair did, and how many bundles have fewer than n good shares now."""
    lost = repair.lost_sites(db, now, config.maintenance.lost_after_seconds)
    summary = repair.repair_summary(db, lost)
    return {
        "repaired": summary.repairs,
        "failed": summary.failed,
        "shares_placed": summary.shares_placed,
        "last_repair_at": summary.last_repair_at,
        "last_outcome": summary.last_outcome,
        "bundles_below_n": summary.below_n,
        "replaced_copies_to_delete": summary.superseded,
        "lost_sites": sorted(lost),
    }


def _forget_report(db: sqlite3.Connection) -> dict[str, Any]:
    summary = forget.forget_summary(db)
    return {
        "pending": summary.pending,
        "deleting": summary.deleting,
        "done": summary.done,
        "deletions_waiting": summary.deletions_waiting,
        "last_forgotten_at": summary.last_forgotten_at,
    }


def _backlog(db: sqlite3.Connection, now: float) -> dict[str, Any]:
    """Studies not yet protected, and when the first instance of the oldest arrived."""
    count, oldest = db.execute(
        "SELECT COUNT(*), MIN(first_received) FROM studies WHERE state != 'protected'"
    ).fetchone()
    return {
        "studies": int(count),
        "oldest_received_at": None if oldest is None else float(oldest),
        "oldest_age_seconds": None if oldest is None else max(0.0, now - float(oldest)),
    }


def _held_by_peers(db: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """Per holder site: this site's shares placed there, and their size in bytes.

    A share's size follows from its bundle's coding and length alone (the fragment
    layout), so one row per distinct coding is enough; bundles not yet encoded have no
    placement.
    """
    held: dict[str, dict[str, int]] = {}
    rows = db.execute(
        "SELECT p.holder_site, b.k, b.n, b.segment_size, b.length, COUNT(*)"
        " FROM placements p JOIN bundles b ON b.id = p.bundle_ref WHERE b.length IS NOT NULL"
        " GROUP BY p.holder_site, b.k, b.n, b.segment_size, b.length"
    )
    for site, k, n, segment_size, length, shares in rows:
        size = FragmentHeader(k, n, 0, segment_size, length, bytes(16)).fragment_size
        entry = held.setdefault(str(site), {"shares": 0, "bytes": 0})
        entry["shares"] += int(shares)
        entry["bytes"] += int(shares) * size
    return held


def _held_for_peers(index: Path) -> dict[str, dict[str, int]]:
    """Per owner site: its fragments in this node's fragment index, and their bytes."""
    if not index.exists():
        return {}
    with contextlib.suppress(sqlite3.Error):
        db = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=10)
        try:
            rows = db.execute(
                "SELECT owner, COUNT(*), COALESCE(SUM(size), 0) FROM fragments GROUP BY owner"
            ).fetchall()
        finally:
            db.close()
        return {str(o): {"fragments": int(c), "bytes": int(b)} for o, c, b in rows}
    return {}


def _catalog_report(
    config: NodeConfig, now: float
) -> tuple[
    dict[str, int],
    dict[str, Any],
    dict[str, dict[str, Any]],
    dict[str, Any] | None,
    dict[str, Any],
    dict[str, dict[str, int]],
]:
    empty = {"total": 0, "protected": 0, "degraded": 0, "unprotected": 0}
    no_audits: dict[str, Any] = {
        "placements": {},
        "passed": 0,
        "failed": 0,
        "last_audit_at": None,
        "repairs": None,
    }
    no_backlog: dict[str, Any] = {"studies": 0, "oldest_received_at": None}
    no_backlog["oldest_age_seconds"] = None
    if not config.catalog_path.exists():
        return empty, no_audits, {}, None, no_backlog, {}
    db = sqlite3.connect(config.catalog_path, timeout=10, isolation_level=None)
    try:
        # One snapshot for every query below: the running node writes meanwhile, and a
        # bundle settling between two of them would make the answers disagree.
        db.execute("BEGIN")
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        studies = _study_counts(db, tables)
        backlog = _backlog(db, now) if "studies" in tables else no_backlog
        held = _held_by_peers(db) if "placements" in tables else {}
        forgets = _forget_report(db) if "forget_requests" in tables else None
        if "peer_reputation" not in tables:
            return studies, no_audits, {}, forgets, backlog, held
        audits, by_peer = _audit_report(db, config, now)
        audits["repairs"] = _repair_report(db, config, now) if "repairs" in tables else None
    finally:
        db.close()
    return studies, audits, by_peer, forgets, backlog, held


def _state_document(config: NodeConfig, name: str) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        document = json.loads((config.state_dir / name).read_text(encoding="utf-8"))
        if isinstance(document, dict):
            return document
    return None


RECOVERY_SHOWN_SECONDS = 86400.0  # a finished recovery stays on the dashboard a day
RECOVERY_STALLED_SECONDS = 300.0  # a running one silent this long has probably stopped


def _recovery_report(config: NodeConfig, now: float) -> dict[str, Any] | None:
    """The progress of a ``meshpacs recover --show-on-dashboard`` run: while it runs, and
    for a day after it finished; ``stalled`` when it stopped writing without finishing."""
    document = _state_document(config, RECOVERY_FILE)
    if document is None:
        return None
    updated = document.get("updated_at")
    age = now - updated if isinstance(updated, int | float) else math.inf
    finished = bool(document.get("finished"))
    if finished and age > RECOVERY_SHOWN_SECONDS:
        return None
    return {**document, "stalled": not finished and age > RECOVERY_STALLED_SECONDS}


def _scrub_report(config: NodeConfig) -> dict[str, Any] | None:
    return _state_document(config, SCRUB_FILE)


def _leave_report(config: NodeConfig) -> dict[str, Any] | None:
    request = leave_requested(config)
    if request is None:
        return None
    held = held_now(config)
    return {**request, "fragments_held": held.fragments, "owners": held.owners}


def _peer_report(config: NodeConfig, now: float) -> tuple[list[dict[str, Any]], float | None]:
    trusted = set(config.mesh.trusted_peers)
    document: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        document = json.loads((config.state_dir / PEERS_FILE).read_text(encoding="utf-8"))
    updated = document.get("updated_at")
    fresh = isinstance(updated, int | float) and now - updated <= STALE_AFTER_SECONDS
    peers: dict[str, dict[str, Any]] = {}
    for entry in document.get("peers", []):
        if isinstance(entry, dict) and isinstance(entry.get("site_id"), str):
            site = entry["site_id"]
            online = bool(entry.get("online")) and fresh
            peers[site] = {"site_id": site, "online": online, "trusted": site in trusted}
    for site in trusted - peers.keys():
        peers[site] = {"site_id": site, "online": False, "trusted": True}
    return [peers[s] for s in sorted(peers)], updated if isinstance(updated, int | float) else None


def _storage_report(
    config: NodeConfig,
    held_for: dict[str, dict[str, int]],
    disk_usage: Callable[[Path], Any],
) -> dict[str, Any]:
    """This node's disk (the data directory's file system) and its offer to partners."""
    report: dict[str, Any] = {
        "held_for_partners_bytes": sum(e["bytes"] for e in held_for.values()),
        "offer_bytes": config.mesh.offer_bytes,
        "disk_total_bytes": None,
        "disk_free_bytes": None,
    }
    with contextlib.suppress(OSError):
        usage = disk_usage(config.data_dir)
        report["disk_total_bytes"], report["disk_free_bytes"] = int(usage.total), int(usage.free)
    return report


def _space(site: str, held_for: dict[str, Any], held_by: dict[str, Any]) -> dict[str, Any]:
    return {
        "held_for_them": held_for.get(site, {"fragments": 0, "bytes": 0}),
        "held_by_them": held_by.get(site, {"shares": 0, "bytes": 0}),
    }


def site_status(
    config: NodeConfig,
    now: float | None = None,
    *,
    disk_usage: Callable[[Path], Any] = shutil.disk_usage,
) -> dict[str, Any]:
    """The status document (``--json`` prints it as is).

    ``disk_usage`` is :func:`shutil.disk_usage` but for the tests of a full disk.
    """
    now = time.time() if now is None else now
    peers, as_of = _peer_report(config, now)
    studies, audits, by_peer, forgets, backlog, held_by = _catalog_report(config, now)
    held_for = _held_for_peers(config.fragments_dir / INDEX_NAME)
    known = {peer["site_id"] for peer in peers}
    others = sorted((by_peer.keys() | held_for.keys() | held_by.keys()) - known - {config.site.id})
    peers += [{"site_id": s, "online": False, "trusted": False} for s in others]
    for peer in peers:
        peer["audits"] = by_peer.get(peer["site_id"])
        peer["space"] = _space(peer["site_id"], held_for, held_by)
    document = {
        "site_id": config.site.id,
        "mesh_enabled": config.mesh.enabled,
        "warnings": [],
        "studies": studies,
        "backlog": backlog,
        "audits": audits,
        "scrub": _scrub_report(config),
        "delegate": _state_document(config, DELEGATE_FILE),
        "forgets": forgets,
        "leaving": _leave_report(config),
        "leases": {
            "renewal": last_renewal(config.state_dir / LEASES_FILE),
            "expiry": expiry_report(config.state_dir / EXPIRY_FILE),
        },
        "storage": _storage_report(config, held_for, disk_usage),
        "recovery": _recovery_report(config, now),
        "peers": sorted(peers, key=lambda p: p["site_id"]),
        "peers_as_of": as_of,
    }
    document["warnings"] = site_warnings(document, config, now, trail_problem(config))
    return document
