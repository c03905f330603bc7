"""What ``meshpacs status`` reports: the site's studies by backup state, and its peers.

Read from the site's own files, so it works whether or not the node is running: study
counts from the catalog (SQLite in WAL mode lets a reader in beside the running node),
peers from ``state/peers.json``, which the running node rewrites every half minute. When
that file is missing or old, the peers are listed from the config with ``online: false``
and ``peers_as_of`` says how old the news is.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from typing import Any

from meshpacs.metadata import ledger
from meshpacs.node.config import NodeConfig
from meshpacs.node.mesh import PEERS_FILE

__all__ = ["STALE_AFTER_SECONDS", "site_status"]

STALE_AFTER_SECONDS = 120.0


def _study_counts(config: NodeConfig) -> dict[str, int]:
    if not config.catalog_path.exists():
        return {"total": 0, "protected": 0, "degraded": 0, "unprotected": 0}
    db = sqlite3.connect(config.catalog_path, timeout=10)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "bundles" not in tables:  # a catalog the node has not opened since upgrading
            total = int(db.execute("SELECT COUNT(*) FROM studies").fetchone()[0])
            return {"total": total, "protected": 0, "degraded": 0, "unprotected": total}
        counts = ledger.protection_counts(db)
    finally:
        db.close()
    return {
        "total": counts.total,
        "protected": counts.protected,
        "degraded": counts.degraded,
        "unprotected": counts.unprotected,
    }


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
    return {
        "site_id": config.site.id,
        "mesh_enabled": config.mesh.enabled,
        "studies": _study_counts(config),
        "peers": peers,
        "peers_as_of": as_of,
    }
