"""Counts the status document does not carry, read from the node's own files.

The dashboard and ``/metrics`` want a few figures more than ``meshpacs status`` prints:
studies by their catalog state (receiving, stable, queued, protected), the age of the
oldest study still waiting for backup, what was ingested (instances and bytes), this
site's bundles by state, and the fragments held for partners. All are counts and sizes
from two SQLite files, opened read-only beside the running node (WAL lets a reader in):
no UID, no patient field is selected, so nothing here can carry PHI.

A file or table that does not exist yet gives no figure (the key is left out), never a
made-up 0.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

__all__ = ["catalog_figures"]


def _open(path: Path) -> sqlite3.Connection | None:
    if not path.exists():
        return None
    try:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return None


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}


def catalog_figures(
    catalog_path: Path, fragments_index: Path, now: float | None = None
) -> dict[str, Any]:
    """Studies by state, backlog age, ingest, bundles and fragments held (see the module)."""
    now = time.time() if now is None else now
    figures: dict[str, Any] = {}
    db = _open(catalog_path)
    if db is not None:
        try:
            db.execute("BEGIN")  # one snapshot: the node writes meanwhile
            _catalog(db, now, figures)
        except sqlite3.Error:
            pass  # a catalog being created or migrated: no figures this time
        finally:
            db.close()
    index = _open(fragments_index)
    if index is not None:
        with contextlib.suppress(sqlite3.Error):
            row = index.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), COUNT(DISTINCT owner) FROM fragments"
            ).fetchone()
            figures["held"] = {"fragments": row[0], "bytes": row[1], "owners": row[2]}
        index.close()
    return figures


def _catalog(db: sqlite3.Connection, now: float, figures: dict[str, Any]) -> None:
    tables = _tables(db)
    if "studies" in tables:
        by_state = {"receiving": 0, "stable": 0, "queued": 0, "protected": 0}
        for state, count in db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state"):
            by_state[str(state)] = int(count)
        figures["studies_by_state"] = by_state
        oldest = db.execute(
            "SELECT MIN(first_received) FROM studies WHERE state != 'protected'"
        ).fetchone()[0]
        figures["backlog_oldest_age_seconds"] = (
            max(0.0, now - float(oldest)) if oldest is not None else 0.0
        )
        figures["backlog_oldest_since"] = float(oldest) if oldest is not None else None
    if "instances" in tables:
        local = "SUM(pruned_at IS NULL)" if "pruned_at" in _columns(db, "instances") else "COUNT(*)"
        row = db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE({local}, 0) FROM instances"
        ).fetchone()
        figures["ingest"] = {"instances": row[0], "bytes": row[1], "local_instances": row[2]}
    if "bundles" in tables:
        figures["bundles"] = {
            str(state): {"count": int(count), "bytes": int(size)}
            for state, count, size in db.execute(
                "SELECT state, COUNT(*), COALESCE(SUM(length), 0) FROM bundles GROUP BY state"
            )
        }
