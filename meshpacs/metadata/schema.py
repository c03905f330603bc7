"""The catalog's SQLite schema, as versioned migrations from the first schema on.

A catalog file outlives the software that wrote it (it is restored from peers after a
disaster), so every schema change is a new entry in :data:`MIGRATIONS`, never an edit of
an old one. :func:`migrate` applies the missing ones in order, each in its own
``BEGIN IMMEDIATE`` transaction together with its row in ``schema_version``, so a crash
leaves the file at a whole version. A file from a newer meshpacs is refused
(:class:`~meshpacs.errors.SchemaTooNew`): an older reader could misread or damage it.

Version 1::

    schema_version (version PK, applied_at)
    patients     (id, patient_id, issuer, name, name_fold, birth_date, sex)
                  UNIQUE(patient_id, issuer)
    studies      (id, study_uid UNIQUE, patient_ref -> patients, date, time, accession,
                  study_id, description, referring, referring_fold, state,
                  first_received, last_received)
    series       (id, series_uid UNIQUE, study_ref -> studies, modality, number,
                  description, body_part)
    instances    (id, sop_instance_uid, sop_class_uid, transfer_syntax_uid, instance_number,
                  size, sha256, calling_ae, received_at, series_ref -> series (NULL when
                  unparsed), parse_error, conflict)  UNIQUE(sop_instance_uid, sha256)
    backup_queue (id, study_ref -> studies UNIQUE, queued_at)

Version 3: ``instances.pruned_at`` (NULL while the file is kept here; see the ledger's
retention functions).

Version 2 (the backup ledger, :mod:`meshpacs.metadata.ledger`)::

    bundles        (id, bundle_id UNIQUE (16 random bytes), study_ref -> studies (NULL for
                    unparsed instances), k, n, segment_size, length, set_hash, wrapped_key,
                    state planned|encoded|stored|degraded, created_at, stored_at)
    bundle_members (bundle_ref -> bundles, position, instance_ref -> instances UNIQUE)
                    PRIMARY KEY (bundle_ref, position)
    placements     (bundle_ref -> bundles, share, holder_site, fragment_id, stored_at)
                    PRIMARY KEY (bundle_ref, share, holder_site)

Version 4 (audits, :mod:`meshpacs.metadata.health`)::

    audit_sets      (bundle_ref -> bundles, share, challenges (a challenge set, see
                     :mod:`meshpacs.audit.challenge`), total, spent)
                     PRIMARY KEY (bundle_ref, share)
    placements     + verdict unaudited|ok|failed|missing, audited_at
    peer_reputation (site_id PK, successes, failures (decayed counts), latency_seconds,
                     updated_at, passed, failed (plain totals), last_audit_at,
                     last_failure_at, last_seen_at, unreachable_at)

Version 5 (repair, :mod:`meshpacs.metadata.repair`)::

    superseded      (bundle_ref -> bundles, share, holder_site, fragment_id, superseded_at)
                     PRIMARY KEY (bundle_ref, share, holder_site): placements a repair
                     replaced, whose fragment is deleted at the holder once it answers
    repairs         (id, bundle_ref -> bundles, at, regenerated, placed, outcome
                     repaired|partial|failed, detail)

Version 6 (forgetting a study, :mod:`meshpacs.metadata.forget`)::

    forget_requests  (id, study_ref (no foreign key: the study row goes), requested_at,
                      requested_by, state pending|deleting|done, instances, bundles,
                      fragments, records, forgotten_at, completed_at)
    forget_deletions (request_ref -> forget_requests, kind fragment|record, site, name,
                      attempts) PRIMARY KEY (request_ref, kind, site, name): deletions
                      still to send to partners

Version 7: ``peer_reputation.leaving_at`` (when the peer answered that it is leaving the
federation; see ``meshpacs node leave``).

Version 8: ``forget_deletions.kind`` may also be ``manifest`` (a bundle's repair manifest
at a trusted peer, :mod:`meshpacs.metadata.manifest`); SQLite cannot change a CHECK, so
the table is rebuilt.

``*_fold`` columns hold the case-folded person names that PN matching compares against.
Foreign-key columns are named ``*_ref`` so they are not mistaken for DICOM's Patient ID
and Study ID. Only features of SQLite 3.30 are used (no STRICT tables, no RETURNING).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence

import aiosqlite

from meshpacs.durable import split_statements
from meshpacs.errors import CatalogError, SchemaTooNew

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "current_version",
    "migrate",
    "rollback_quietly",
    "split_statements",
]

_V1 = """
CREATE TABLE schema_version (
    version     INTEGER PRIMARY KEY,
    applied_at  REAL NOT NULL
);

CREATE TABLE patients (
    id          INTEGER PRIMARY KEY,
    patient_id  TEXT NOT NULL,
    issuer      TEXT NOT NULL DEFAULT '',
    name        TEXT NOT NULL DEFAULT '',
    name_fold   TEXT NOT NULL DEFAULT '',
    birth_date  TEXT NOT NULL DEFAULT '',
    sex         TEXT NOT NULL DEFAULT '',
    UNIQUE (patient_id, issuer)
);
CREATE INDEX patients_name_fold ON patients (name_fold);
CREATE INDEX patients_birth_date ON patients (birth_date);

CREATE TABLE studies (
    id              INTEGER PRIMARY KEY,
    study_uid       TEXT NOT NULL UNIQUE,
    patient_ref     INTEGER NOT NULL REFERENCES patients (id),
    date            TEXT NOT NULL DEFAULT '',
    time            TEXT NOT NULL DEFAULT '',
    accession       TEXT NOT NULL DEFAULT '',
    study_id        TEXT NOT NULL DEFAULT '',
    description     TEXT NOT NULL DEFAULT '',
    referring       TEXT NOT NULL DEFAULT '',
    referring_fold  TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL DEFAULT 'receiving'
                    CHECK (state IN ('receiving', 'stable', 'queued', 'protected')),
    first_received  REAL NOT NULL,
    last_received   REAL NOT NULL
);
CREATE INDEX studies_patient ON studies (patient_ref);
CREATE INDEX studies_date ON studies (date);
CREATE INDEX studies_accession ON studies (accession);
CREATE INDEX studies_state ON studies (state, last_received);

CREATE TABLE series (
    id           INTEGER PRIMARY KEY,
    series_uid   TEXT NOT NULL UNIQUE,
    study_ref    INTEGER NOT NULL REFERENCES studies (id),
    modality     TEXT NOT NULL DEFAULT '',
    number       INTEGER,
    description  TEXT NOT NULL DEFAULT '',
    body_part    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX series_study ON series (study_ref, number);
CREATE INDEX series_modality ON series (modality);

CREATE TABLE instances (
    id                   INTEGER PRIMARY KEY,
    sop_instance_uid     TEXT NOT NULL,
    sop_class_uid        TEXT NOT NULL,
    transfer_syntax_uid  TEXT NOT NULL,
    instance_number      INTEGER,
    size                 INTEGER NOT NULL CHECK (size >= 0),
    sha256               BLOB NOT NULL CHECK (length(sha256) = 32),
    calling_ae           TEXT NOT NULL,
    received_at          REAL NOT NULL,
    series_ref           INTEGER REFERENCES series (id),
    parse_error          TEXT,
    conflict             INTEGER NOT NULL DEFAULT 0 CHECK (conflict IN (0, 1)),
    UNIQUE (sop_instance_uid, sha256)
);
CREATE INDEX instances_series ON instances (series_ref, instance_number);
CREATE INDEX instances_unplaced ON instances (id) WHERE series_ref IS NULL;
CREATE INDEX instances_conflict ON instances (sop_instance_uid) WHERE conflict = 1;

CREATE TABLE backup_queue (
    id         INTEGER PRIMARY KEY,
    study_ref  INTEGER NOT NULL UNIQUE REFERENCES studies (id),
    queued_at  REAL NOT NULL
);
"""

# Each instance belongs to at most one bundle (UNIQUE instance_ref): a late instance of a
# protected study goes into a new bundle, never into a second copy of an old one.
_V2 = """
CREATE TABLE bundles (
    id            INTEGER PRIMARY KEY,
    bundle_id     BLOB NOT NULL UNIQUE CHECK (length(bundle_id) = 16),
    study_ref     INTEGER REFERENCES studies (id),
    k             INTEGER NOT NULL CHECK (k >= 1),
    n             INTEGER NOT NULL CHECK (n >= k AND n <= 256),
    segment_size  INTEGER NOT NULL CHECK (segment_size > 0),
    length        INTEGER CHECK (length >= 0),
    set_hash      BLOB CHECK (length(set_hash) = 32),
    wrapped_key   BLOB NOT NULL,
    state         TEXT NOT NULL DEFAULT 'planned'
                  CHECK (state IN ('planned', 'encoded', 'stored', 'degraded')),
    created_at    REAL NOT NULL,
    stored_at     REAL
);
CREATE INDEX bundles_study ON bundles (study_ref);
CREATE INDEX bundles_state ON bundles (state, id);

CREATE TABLE bundle_members (
    bundle_ref    INTEGER NOT NULL REFERENCES bundles (id),
    position      INTEGER NOT NULL CHECK (position >= 0),
    instance_ref  INTEGER NOT NULL UNIQUE REFERENCES instances (id),
    PRIMARY KEY (bundle_ref, position)
);

CREATE TABLE placements (
    bundle_ref    INTEGER NOT NULL REFERENCES bundles (id),
    share         INTEGER NOT NULL CHECK (share >= 0 AND share < 256),
    holder_site   TEXT NOT NULL,
    fragment_id   TEXT NOT NULL,
    stored_at     REAL NOT NULL,
    PRIMARY KEY (bundle_ref, share, holder_site)
);
CREATE INDEX placements_holder ON placements (holder_site);
"""

# An instance whose local file was removed under the retention setting keeps its row (it
# is still the site's, held by the mesh): pruned_at says when its file went.
_V3 = """
ALTER TABLE instances ADD COLUMN pruned_at REAL;
CREATE INDEX instances_pruned ON instances (pruned_at) WHERE pruned_at IS NOT NULL;
"""

# Audits: the challenges kept per share (stored shuffled, spent in that order, so a holder
# cannot tell from the offsets asked so far which bytes will never be asked about), each
# placement's last verdict, and what the audits say of each peer.
_V4 = """
CREATE TABLE audit_sets (
    bundle_ref  INTEGER NOT NULL REFERENCES bundles (id),
    share       INTEGER NOT NULL CHECK (share >= 0 AND share < 256),
    challenges  BLOB NOT NULL,
    total       INTEGER NOT NULL CHECK (total >= 0),
    spent       INTEGER NOT NULL DEFAULT 0 CHECK (spent >= 0),
    PRIMARY KEY (bundle_ref, share)
);

ALTER TABLE placements ADD COLUMN verdict TEXT NOT NULL DEFAULT 'unaudited'
    CHECK (verdict IN ('unaudited', 'ok', 'failed', 'missing'));
ALTER TABLE placements ADD COLUMN audited_at REAL;
CREATE INDEX placements_audited ON placements (audited_at);

CREATE TABLE peer_reputation (
    site_id          TEXT PRIMARY KEY,
    successes        REAL NOT NULL DEFAULT 0,
    failures         REAL NOT NULL DEFAULT 0,
    latency_seconds  REAL,
    updated_at       REAL NOT NULL,
    passed           INTEGER NOT NULL DEFAULT 0,
    failed           INTEGER NOT NULL DEFAULT 0,
    last_audit_at    REAL,
    last_failure_at  REAL,
    last_seen_at     REAL,
    unreachable_at   REAL
);
"""

# Repair: a placement it replaces moves to ``superseded`` until its holder deletes the
# fragment (a lost site may come back); each repair attempt leaves one row in ``repairs``.
_V5 = """
CREATE TABLE superseded (
    bundle_ref     INTEGER NOT NULL REFERENCES bundles (id),
    share          INTEGER NOT NULL CHECK (share >= 0 AND share < 256),
    holder_site    TEXT NOT NULL,
    fragment_id    TEXT NOT NULL,
    superseded_at  REAL NOT NULL,
    PRIMARY KEY (bundle_ref, share, holder_site)
);

CREATE TABLE repairs (
    id           INTEGER PRIMARY KEY,
    bundle_ref   INTEGER NOT NULL REFERENCES bundles (id),
    at           REAL NOT NULL,
    regenerated  INTEGER NOT NULL CHECK (regenerated >= 0),
    placed       INTEGER NOT NULL CHECK (placed >= 0),
    outcome      TEXT NOT NULL CHECK (outcome IN ('repaired', 'partial', 'failed')),
    detail       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX repairs_at ON repairs (at);
"""

# Forgetting a study (:mod:`meshpacs.metadata.forget`): the request stays as the record of
# who asked and what went; the deletions still to send to partners wait in their own table.
_V6 = """
CREATE TABLE forget_requests (
    id            INTEGER PRIMARY KEY,
    study_ref     INTEGER,
    requested_at  REAL NOT NULL,
    requested_by  TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'deleting', 'done')),
    instances     INTEGER,
    bundles       INTEGER,
    fragments     INTEGER,
    records       INTEGER,
    forgotten_at  REAL,
    completed_at  REAL
);
CREATE UNIQUE INDEX forget_pending_study ON forget_requests (study_ref)
    WHERE state = 'pending';

CREATE TABLE forget_deletions (
    request_ref  INTEGER NOT NULL REFERENCES forget_requests (id),
    kind         TEXT NOT NULL CHECK (kind IN ('fragment', 'record')),
    site         TEXT NOT NULL,
    name         TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (request_ref, kind, site, name)
);
"""

# A partner that said it is leaving the federation: its shares are rebuilt elsewhere now.
_V7 = """
ALTER TABLE peer_reputation ADD COLUMN leaving_at REAL;
"""

# Forgetting a study also deletes its bundles' repair manifests at the trusted peers.
_V8 = """
CREATE TABLE forget_deletions_v8 (
    request_ref  INTEGER NOT NULL REFERENCES forget_requests (id),
    kind         TEXT NOT NULL CHECK (kind IN ('fragment', 'record', 'manifest')),
    site         TEXT NOT NULL,
    name         TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (request_ref, kind, site, name)
);
INSERT INTO forget_deletions_v8 SELECT request_ref, kind, site, name, attempts
    FROM forget_deletions;
DROP TABLE forget_deletions;
ALTER TABLE forget_deletions_v8 RENAME TO forget_deletions;
"""

# (version, script) in ascending order. Append only: a released entry is never edited.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, _V1),
    (2, _V2),
    (3, _V3),
    (4, _V4),
    (5, _V5),
    (6, _V6),
    (7, _V7),
    (8, _V8),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _check_migrations(migrations: Sequence[tuple[int, str]]) -> None:
    versions = [v for v, _ in migrations]
    if not versions or versions != list(range(1, len(versions) + 1)):
        raise ValueError("migrations must be numbered 1, 2, 3, ... without gaps")


async def rollback_quietly(conn: aiosqlite.Connection) -> None:
    """Undo the open transaction, if there still is one.

    SQLite rolls back by itself on some errors (disk full, I/O), and a cancelled COMMIT
    may have gone through; either way a failing ROLLBACK must not hide the first error.
    """
    with contextlib.suppress(sqlite3.Error):
        await conn.execute("ROLLBACK")


async def current_version(conn: aiosqlite.Connection) -> int:
    """The catalog's schema version; 0 for a file that has no catalog yet."""
    rows = list(
        await conn.execute_fetchall(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        )
    )
    if not rows:
        return 0
    found = list(await conn.execute_fetchall("SELECT MAX(version) FROM schema_version"))
    value = found[0][0] if found else None
    return int(value) if value is not None else 0


async def migrate(
    conn: aiosqlite.Connection,
    *,
    migrations: Sequence[tuple[int, str]] = MIGRATIONS,
    clock: Callable[[], float] = time.time,
) -> int:
    """Bring the catalog on ``conn`` to the newest version; returns that version.

    ``conn`` must be in autocommit mode (``isolation_level=None``): the transactions here
    are explicit. Each step re-reads the version after taking the write lock, so two
    processes opening the same file cannot apply a migration twice.
    """
    _check_migrations(migrations)
    newest = migrations[-1][0]
    while True:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            version = await current_version(conn)
            if version > newest:
                raise SchemaTooNew(version, newest)
            if version == newest:
                await conn.execute("COMMIT")
                return version
            step, script = migrations[version]  # numbered 1.. so index == version
            for statement in split_statements(script):
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (step, clock()),
            )
            await conn.execute("COMMIT")
        except BaseException as exc:
            await rollback_quietly(conn)
            if isinstance(exc, sqlite3.Error):
                raise CatalogError(
                    f"catalog schema migration failed ({type(exc).__name__}): {exc}"
                ) from exc
            raise
