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
node did as the delegate of trusted sites that are down from ``state/delegate.json``. Forget
requests (``meshpacs forget``) are counted from the catalog: pending, deleting at
partners, done.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from typing import Any

from meshpacs.metadata import forget, health, ledger, repair
from meshpacs.node.config import NodeConfig
from meshpacs.node.expiry import expiry_report
from meshpacs.node.leave import held_now, leave_requested
from meshpacs.node.mesh import DELEGATE_FILE, EXPIRY_FILE, LEASES_FILE, PEERS_FILE, SCRUB_FILE
from meshpacs.upkeep.leases import last_renewal

__all__ = ["STALE_AFTER_SECONDS", "site_status"]

STALE_AFTER_SECONDS = 120.0


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


def _catalog_report(
    config: NodeConfig, now: float
) -> tuple[dict[str, int], dict[str, Any], dict[str, dict[str, Any]], dict[str, Any] | None]:
    empty = {"total": 0, "protected": 0, "degraded": 0, "unprotected": 0}
    no_audits: dict[str, Any] = {
        "placements": {},
        "passed": 0,
        "failed": 0,
        "last_audit_at": None,
        "repairs": None,
    }
    if not config.catalog_path.exists():
        return empty, no_audits, {}, None
    db = sqlite3.connect(config.catalog_path, timeout=10, isolation_level=None)
    try:
        # One snapshot for every query below: the running node writes meanwhile, and a
        # bundle settling between two of them would make the answers disagree.
        db.execute("BEGIN")
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        studies = _study_counts(db, tables)
        forgets = _forget_report(db) if "forget_requests" in tables else None
        if "peer_reputation" not in tables:
            return studies, no_audits, {}, forgets
        audits, by_peer = _audit_report(db, config, now)
        audits["repairs"] = _repair_report(db, config, now) if "repairs" in tables else None
    finally:
        db.close()
    return studies, audits, by_peer, forgets


def _state_document(config: NodeConfig, name: str) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        document = json.loads((config.state_dir / name).read_text(encoding="utf-8"))
        if isinstance(document, dict):
            return document
    return None


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


def site_status(config: NodeConfig, now: float | None = None) -> dict[str, Any]:
    """The status document (``--json`` prints it as is)."""
    now = time.time() if now is None else now
    peers, as_of = _peer_report(config, now)
    studies, audits, by_peer, forgets = _catalog_report(config, now)
    known = {peer["site_id"] for peer in peers}
    peers += [{"site_id": s, "online": False, "trusted": False} for s in by_peer if s not in known]
    for peer in peers:
        peer["audits"] = by_peer.get(peer["site_id"])
    return {
        "site_id": config.site.id,
        "mesh_enabled": config.mesh.enabled,
        "studies": studies,
        "audits": audits,
        "scrub": _scrub_report(config),
        "delegate": _state_document(config, DELEGATE_FILE),
        "forgets": forgets,
        "leaving": _leave_report(config),
        "leases": {
            "renewal": last_renewal(config.state_dir / LEASES_FILE),
            "expiry": expiry_report(config.state_dir / EXPIRY_FILE),
        },
        "peers": sorted(peers, key=lambda p: p["site_id"]),
        "peers_as_of": as_of,
    }
