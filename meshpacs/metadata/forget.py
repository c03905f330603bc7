"""The forget ledger: a study an administrator asked to forget, and what is left to delete.

Forgetting goes in three steps, each a transaction of its own::

    request   (meshpacs forget)   a forget_requests row, state pending; the study leaves
                                  the backup queue and is never queued again
    forget    (the node)          once no bundle of the study is being backed up: every
                                  row of the study goes (instances, series, study, its
                                  bundles, placements, audits, repairs; the patient when
                                  no other study is theirs), and what partners hold for
                                  it becomes forget_deletions rows: each placed or
                                  replaced fragment at its holder, the catalog record and
                                  each bundle's repair manifest at each trusted peer;
                                  state deleting
    delete    (the node)          each deletion sent; a confirmed one (or one the partner
                                  no longer had) leaves the table; once none is left,
                                  state done

The request row stays, as the record of who asked when and what went (counts only: once
the study is gone the row names it by nothing but its old row number). A fragment whose
holder cannot be reached is given up after :data:`FRAGMENT_ATTEMPTS` tries: it is no
longer leased, so the holder removes it when its lease runs out. A catalog record or a
manifest has no lease and is tried until its trusted peer answers.

Plain functions over a ``sqlite3`` connection; rows are named by row id, never by UID.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from meshpacs.errors import CatalogError
from meshpacs.metadata.manifest import manifest_record_id

__all__ = [
    "FRAGMENT_ATTEMPTS",
    "Deletion",
    "ForgetRequest",
    "ForgetSummary",
    "ForgottenStudy",
    "deletion_attempted",
    "deletion_done",
    "deletions_due",
    "finish_requests",
    "forget_study",
    "forget_summary",
    "pending_requests",
    "request",
    "request_state",
    "study_busy",
]

FRAGMENT_ATTEMPTS = 20


@dataclass(frozen=True)
class ForgetRequest:
    """A pending request: forget the study in row ``study_ref``."""

    request_ref: int
    study_ref: int
    study_uid: str  # read here, at the site, for the record ID; never logged


@dataclass(frozen=True)
class ForgottenStudy:
    """What :func:`forget_study` removed, and the local files it leaves to unlink."""

    instances: int
    bundles: int
    fragments: int
    records: int
    unlink: tuple[bytes, ...]  # SHA-256 of local files no remaining instance row needs


@dataclass(frozen=True)
class Deletion:
    """One deletion to send: a fragment at its holder or a record at a trusted peer."""

    request_ref: int
    kind: str  # "fragment" | "record" | "manifest"
    site: str
    name: str  # fragment ID or record ID (keyed HMACs in hex)
    attempts: int


@dataclass(frozen=True)
class ForgetSummary:
    """What ``status`` shows of forgetting."""

    pending: int = 0  # requests waiting for the node
    deleting: int = 0  # studies gone here, deletions still going out
    done: int = 0
    deletions_waiting: int = 0
    last_forgotten_at: float | None = None


def request(db: sqlite3.Connection, study_uid: str, requested_by: str, now: float) -> int | None:
    """Ask for the study to be forgotten; the request's row id (an earlier pending one if
    there is one), or None when the catalog holds no such study."""
    row = db.execute("SELECT id FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
    if row is None:
        return None
    study_ref = int(row[0])
    waiting = db.execute(
        "SELECT id FROM forget_requests WHERE study_ref = ? AND state = 'pending'", (study_ref,)
    ).fetchone()
    if waiting is not None:
        return int(waiting[0])
    db.execute("DELETE FROM backup_queue WHERE study_ref = ?", (study_ref,))
    cursor = db.execute(
        "INSERT INTO forget_requests (study_ref, requested_at, requested_by) VALUES (?, ?, ?)",
        (study_ref, now, requested_by[:64]),
    )
    return int(cursor.lastrowid or 0)


def request_state(db: sqlite3.Connection, request_ref: int) -> dict[str, object] | None:
    """The request's row as a dict (for the CLI's answer); None for an unknown one."""
    cursor = db.execute("SELECT * FROM forget_requests WHERE id = ?", (request_ref,))
    row = cursor.fetchone()
    if row is None:
        return None
    return {d[0]: value for d, value in zip(cursor.description, row, strict=True)}


def pending_requests(db: sqlite3.Connection) -> list[ForgetRequest]:
    rows = db.execute(
        "SELECT r.id, r.study_ref, s.study_uid FROM forget_requests r"
        " JOIN studies s ON s.id = r.study_ref WHERE r.state = 'pending' ORDER BY r.id"
    ).fetchall()
    return [ForgetRequest(int(r[0]), int(r[1]), str(r[2])) for r in rows]


def study_busy(db: sqlite3.Connection, study_ref: int) -> bool:
    """Whether a bundle of the study is being made or uploaded (planned or encoded)."""
    row = db.execute(
        "SELECT 1 FROM bundles WHERE study_ref = ? AND state IN ('planned', 'encoded') LIMIT 1",
        (study_ref,),
    ).fetchone()
    return row is not None


def forget_study(
    db: sqlite3.Connection,
    pending: ForgetRequest,
    record_id: str,
    trusted_peers: Sequence[str],
    now: float,
) -> ForgottenStudy:
    """Remove every row of the study and queue what partners hold of it for deletion."""
    ref, request_ref = pending.study_ref, pending.request_ref
    if study_busy(db, ref):
        raise CatalogError(f"study row {ref} is being backed up; forget it after")
    rows = db.execute("SELECT id, bundle_id FROM bundles WHERE study_ref = ?", (ref,)).fetchall()
    bundles = [int(r[0]) for r in rows]
    manifests = [manifest_record_id(bytes(r[1])) for r in rows]
    fragments = _held_fragments(db, bundles)
    db.executemany(
        "INSERT OR IGNORE INTO forget_deletions (request_ref, kind, site, name)"
        " VALUES (?, ?, ?, ?)",
        [(request_ref, "fragment", site, name) for site, name in fragments]
        + [(request_ref, "record", peer, record_id) for peer in trusted_peers]
        + [(request_ref, "manifest", peer, name) for peer in trusted_peers for name in manifests],
    )
    instances = _instances_of(db, ref)
    unlink = _remove_rows(db, ref, bundles, instances)
    db.execute(
        "UPDATE forget_requests SET state = 'deleting', study_ref = NULL, instances = ?,"
        " bundles = ?, fragments = ?, records = ?, forgotten_at = ? WHERE id = ?",
        (len(instances), len(bundles), len(fragments), len(trusted_peers), now, request_ref),
    )
    return ForgottenStudy(len(instances), len(bundles), len(fragments), len(trusted_peers), unlink)


def _held_fragments(db: sqlite3.Connection, bundles: list[int]) -> list[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for table in ("placements", "superseded"):
        for bundle in bundles:
            found.update(
                (str(site), str(name))
                for site, name in db.execute(
                    f"SELECT holder_site, fragment_id FROM {table} WHERE bundle_ref = ?",
                    (bundle,),
                )
            )
    return sorted(found)


def _instances_of(db: sqlite3.Connection, study_ref: int) -> list[tuple[int, bytes, bool]]:
    """(row id, sha256, still here) of the study's instances."""
    rows = db.execute(
        "SELECT i.id, i.sha256, i.pruned_at IS NULL FROM instances i"
        " JOIN series s ON s.id = i.series_ref WHERE s.study_ref = ?",
        (study_ref,),
    ).fetchall()
    return [(int(r[0]), bytes(r[1]), bool(r[2])) for r in rows]


def _remove_rows(
    db: sqlite3.Connection,
    study_ref: int,
    bundles: list[int],
    instances: list[tuple[int, bytes, bool]],
) -> tuple[bytes, ...]:
    for bundle in bundles:
        for table in ("audit_sets", "superseded", "repairs", "placements", "bundle_members"):
            db.execute(f"DELETE FROM {table} WHERE bundle_ref = ?", (bundle,))
        db.execute("DELETE FROM bundles WHERE id = ?", (bundle,))
    db.executemany(
        "DELETE FROM bundle_members WHERE instance_ref = ?", [(row,) for row, _, _ in instances]
    )
    db.executemany("DELETE FROM instances WHERE id = ?", [(row,) for row, _, _ in instances])
    (patient,) = db.execute("SELECT patient_ref FROM studies WHERE id = ?", (study_ref,)).fetchone()
    db.execute("DELETE FROM series WHERE study_ref = ?", (study_ref,))
    db.execute("DELETE FROM backup_queue WHERE study_ref = ?", (study_ref,))
    db.execute("DELETE FROM studies WHERE id = ?", (study_ref,))
    db.execute(
        "DELETE FROM patients WHERE id = ? AND NOT EXISTS"
        " (SELECT 1 FROM studies WHERE patient_ref = ?)",
        (patient, patient),
    )
    # Identical bytes under another row (the same object in another study) keep the file.
    kept = {sha for _, sha, here in instances if here}
    return tuple(
        sorted(
            sha
            for sha in kept
            if db.execute("SELECT 1 FROM instances WHERE sha256 = ? LIMIT 1", (sha,)).fetchone()
            is None
        )
    )


def deletions_due(db: sqlite3.Connection, limit: int = 200) -> list[Deletion]:
    rows = db.execute(
        "SELECT request_ref, kind, site, name, attempts FROM forget_deletions"
        " ORDER BY attempts, request_ref, kind, site, name LIMIT ?",
        (limit,),
    ).fetchall()
    return [Deletion(int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4])) for r in rows]


def deletion_done(db: sqlite3.Connection, deletion: Deletion) -> None:
    db.execute(
        "DELETE FROM forget_deletions WHERE request_ref = ? AND kind = ? AND site = ? AND name = ?",
        (deletion.request_ref, deletion.kind, deletion.site, deletion.name),
    )


def deletion_attempted(db: sqlite3.Connection, deletion: Deletion) -> bool:
    """Count a failed try; True when the deletion is given up (a fragment, tried enough:
    its lease, no longer renewed, runs out at the holder)."""
    if deletion.kind == "fragment" and deletion.attempts + 1 >= FRAGMENT_ATTEMPTS:
        deletion_done(db, deletion)
        return True
    db.execute(
        "UPDATE forget_deletions SET attempts = attempts + 1 WHERE request_ref = ? AND kind = ?"
        " AND site = ? AND name = ?",
        (deletion.request_ref, deletion.kind, deletion.site, deletion.name),
    )
    return False


def finish_requests(db: sqlite3.Connection, now: float) -> list[int]:
    """Mark done every deleting request with no deletion left; their row ids."""
    rows = db.execute(
        "SELECT id FROM forget_requests r WHERE state = 'deleting' AND NOT EXISTS"
        " (SELECT 1 FROM forget_deletions d WHERE d.request_ref = r.id)"
    ).fetchall()
    done = [int(r[0]) for r in rows]
    db.executemany(
        "UPDATE forget_requests SET state = 'done', completed_at = ? WHERE id = ?",
        [(now, ref) for ref in done],
    )
    return done


def forget_summary(db: sqlite3.Connection) -> ForgetSummary:
    counts = dict(db.execute("SELECT state, COUNT(*) FROM forget_requests GROUP BY state"))
    (waiting,) = db.execute("SELECT COUNT(*) FROM forget_deletions").fetchone()
    (last,) = db.execute("SELECT MAX(forgotten_at) FROM forget_requests").fetchone()
    return ForgetSummary(
        pending=int(counts.get("pending", 0)),
        deleting=int(counts.get("deleting", 0)),
        done=int(counts.get("done", 0)),
        deletions_waiting=int(waiting),
        last_forgotten_at=None if last is None else float(last),
    )
