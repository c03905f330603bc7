"""The fragment index: one SQLite row per stored fragment, and each owner's usage.

The index lives beside the fragments (``fragments/index.sqlite``) in WAL mode with
``synchronous=FULL``, so a committed row survives a power cut. It is not thread-safe on its
own: :class:`~meshpacs.store.store.FragmentStore` calls it under its lock. Every change is
one ``BEGIN IMMEDIATE`` transaction.

Schema version 2 (``PRAGMA user_version``)::

    fragments    (id PK, owner, size, share, set_hash, stored_at, lease_expires, state)
    owner_usage  (owner PK, bytes, fragments)     kept by triggers on ``fragments``

    fragments_lease     (lease_expires)  WHERE lease_expires IS NOT NULL    v1
    fragments_unleased  (stored_at)      WHERE lease_expires IS NULL        v2

``state`` is ``writing`` while a fragment is being put in place (see the store's ordering),
``ok`` once it is, and ``quarantined`` once a scrub found it bad. ``lease_expires`` is when
the owner's lease on the fragment ends (Unix seconds): every put since version 2 sets it.
A row stored before leases existed keeps NULL (rows are never rewritten by a migration)
and counts as leased until ``stored_at`` plus the policy's lease, so each lease query
reads NULL through ``COALESCE``; finding expired rows is two index range scans, one per
kind of row, since no one index can order both (the policy's lease is not in the file).
``owner_usage`` makes the quota check one lookup instead of a sum over an owner's
(possibly millions of) rows, and the triggers keep it exact inside the same transaction as
the row change. A file written by a newer meshpacs is refused.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from meshpacs.durable import split_statements, transaction
from meshpacs.errors import CatalogError, SchemaTooNew

__all__ = ["SCHEMA_VERSION", "FragmentIndex", "FragmentState", "StoredFragment", "held_counts"]


class FragmentState(StrEnum):
    WRITING = "writing"  # an index row ahead of its file: settled at the next open
    OK = "ok"
    QUARANTINED = "quarantined"  # failed a scrub: kept as evidence, never served


@dataclass(frozen=True)
class StoredFragment:
    """What the store knows of one fragment it holds (all of it verified on receipt)."""

    fragment_id: str
    owner_site: str
    size: int
    share: int
    set_hash: bytes
    stored_at: float
    lease_expires: float | None
    state: FragmentState


_V1 = """
CREATE TABLE fragments (
    id             TEXT PRIMARY KEY CHECK (length(id) = 64),
    owner          TEXT NOT NULL,
    size           INTEGER NOT NULL CHECK (size > 0),
    share          INTEGER NOT NULL CHECK (share >= 0 AND share < 256),
    set_hash       BLOB NOT NULL CHECK (length(set_hash) = 32),
    stored_at      REAL NOT NULL,
    lease_expires  REAL,
    state          TEXT NOT NULL DEFAULT 'ok'
                   CHECK (state IN ('writing', 'ok', 'quarantined'))
) WITHOUT ROWID;
CREATE INDEX fragments_owner ON fragments (owner, id);
CREATE INDEX fragments_lease ON fragments (lease_expires) WHERE lease_expires IS NOT NULL;
CREATE INDEX fragments_unsettled ON fragments (state) WHERE state <> 'ok';

CREATE TABLE owner_usage (
    owner      TEXT PRIMARY KEY,
    bytes      INTEGER NOT NULL CHECK (bytes >= 0),
    fragments  INTEGER NOT NULL CHECK (fragments >= 0)
) WITHOUT ROWID;

CREATE TRIGGER fragments_added AFTER INSERT ON fragments BEGIN
    INSERT INTO owner_usage (owner, bytes, fragments) VALUES (NEW.owner, NEW.size, 1)
    ON CONFLICT (owner) DO UPDATE SET bytes = bytes + excluded.bytes,
                                      fragments = fragments + 1;
END;

CREATE TRIGGER fragments_removed AFTER DELETE ON fragments BEGIN
    UPDATE owner_usage SET bytes = bytes - OLD.size, fragments = fragments - 1
    WHERE owner = OLD.owner;
END;

CREATE TRIGGER fragments_resized AFTER UPDATE OF owner, size ON fragments BEGIN
    UPDATE owner_usage SET bytes = bytes - OLD.size, fragments = fragments - 1
    WHERE owner = OLD.owner;
    INSERT INTO owner_usage (owner, bytes, fragments) VALUES (NEW.owner, NEW.size, 1)
    ON CONFLICT (owner) DO UPDATE SET bytes = bytes + excluded.bytes,
                                      fragments = fragments + 1;
END;
"""

# Leases: rows from before them (NULL lease) found by age for expiry. IF NOT EXISTS, so
# that a file whose version number was set back by hand is upgraded again, not refused.
_V2 = """
CREATE INDEX IF NOT EXISTS fragments_unleased ON fragments (stored_at)
    WHERE lease_expires IS NULL;
"""

# (version, script) in ascending order. Append only: a released entry is never edited.
_MIGRATIONS: tuple[tuple[int, str], ...] = ((1, _V1), (2, _V2))
SCHEMA_VERSION = _MIGRATIONS[-1][0]

_COLUMNS = "id, owner, size, share, set_hash, stored_at, lease_expires, state"
_Row = tuple[str, str, int, int, bytes, float, float | None, str]

# A lease never gets shorter: the later of what the row has (NULL: stored_at + the
# policy's lease) and what is asked. Only fragments that are whole or kept as evidence.
_RENEW = (
    "UPDATE fragments SET lease_expires = MAX(COALESCE(lease_expires, stored_at + ?), ?)"
    " WHERE id = ? AND owner = ? AND state IN ('ok', 'quarantined')"
)

# Leased rows by fragments_lease, pre-lease rows by fragments_unleased, each already in
# the order of when its lease ended, so each side stops after ``limit`` rows; only the
# merge of at most 2 * limit rows is sorted. A ``writing`` row is the store's own, mid-put.
_EXPIRED = """
SELECT id FROM (
    SELECT * FROM (
        SELECT id, lease_expires AS ended FROM fragments
        WHERE lease_expires < :cutoff AND state <> 'writing'
        ORDER BY lease_expires LIMIT :limit)
    UNION ALL
    SELECT * FROM (
        SELECT id, stored_at + :lease AS ended FROM fragments
        WHERE lease_expires IS NULL AND stored_at < :cutoff - :lease AND state <> 'writing'
        ORDER BY stored_at LIMIT :limit))
ORDER BY ended, id LIMIT :limit
"""


class FragmentIndex:
    """Rows of the fragments this node holds; call only under the store's lock."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection

    @classmethod
    def open(cls, path: Path) -> FragmentIndex:
        try:
            # The store's lock serialises every call, from whichever thread.
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise CatalogError(f"cannot open the fragment index {path.name}: {exc}") from exc
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            _migrate(db)
        except sqlite3.Error as exc:
            db.close()
            raise CatalogError(f"cannot prepare the fragment index {path.name}: {exc}") from exc
        except BaseException:
            db.close()
            raise
        return cls(db)

    def close(self) -> None:
        self._db.close()

    # --- reads -----------------------------------------------------------------------

    def get(self, fragment_id: str) -> StoredFragment | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM fragments WHERE id = ?", (fragment_id,)
        ).fetchone()
        return _record(row) if row else None

    def usage(self, owner: str) -> int:
        row = self._db.execute("SELECT bytes FROM owner_usage WHERE owner = ?", (owner,)).fetchone()
        return int(row[0]) if row else 0

    def total_usage(self) -> int:
        row = self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM owner_usage").fetchone()
        return int(row[0])

    def owned(self, owner: str, after: str, limit: int) -> list[StoredFragment]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM fragments WHERE owner = ? AND id > ? ORDER BY id LIMIT ?",
            (owner, after, limit),
        ).fetchall()
        return [_record(row) for row in rows]

    def held(self, after: str, limit: int) -> list[str]:
        """IDs of whole fragments (state ok) after ``after``, in ID order."""
        rows = self._db.execute(
            "SELECT id FROM fragments WHERE state = 'ok' AND id > ? ORDER BY id LIMIT ?",
            (after, limit),
        ).fetchall()
        return [str(row[0]) for row in rows]

    def ids_with_prefix(self, prefix: str) -> set[str]:
        """IDs starting with ``prefix`` (hex): one fan-out directory's worth."""
        # "g" sorts after every hex digit, so [prefix, prefix + "g") is exactly the prefix.
        rows = self._db.execute(
            "SELECT id FROM fragments WHERE id >= ? AND id < ?", (prefix, prefix + "g")
        )
        return {row[0] for row in rows}

    def in_state(self, state: FragmentState) -> list[str]:
        rows = self._db.execute("SELECT id FROM fragments WHERE state = ?", (state.value,))
        return [row[0] for row in rows]

    def expired(self, cutoff: float, lease_seconds: float, limit: int) -> list[str]:
        """Up to ``limit`` IDs whose lease ended before ``cutoff``, the earliest ended first.

        A row with no lease of its own ended ``lease_seconds`` after it was stored.
        """
        params = {"cutoff": cutoff, "lease": lease_seconds, "limit": limit}
        return [str(row[0]) for row in self._db.execute(_EXPIRED, params)]

    # --- writes, each one transaction ------------------------------------------------

    def put(self, record: StoredFragment) -> None:
        """Insert or replace the row of ``record.fragment_id``, keeping the later lease.

        NULL on either side means no lease of its own, so the other side's is kept.
        """
        with self._transaction():
            self._db.execute(
                f"INSERT INTO fragments ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET owner = excluded.owner,"
                " size = excluded.size, share = excluded.share, set_hash = excluded.set_hash,"
                " stored_at = excluded.stored_at, state = excluded.state,"
                " lease_expires = MAX(COALESCE(excluded.lease_expires, lease_expires),"
                " COALESCE(lease_expires, excluded.lease_expires))",
                (
                    record.fragment_id,
                    record.owner_site,
                    record.size,
                    record.share,
                    record.set_hash,
                    record.stored_at,
                    record.lease_expires,
                    record.state.value,
                ),
            )

    def set_state(self, fragment_id: str, state: FragmentState) -> None:
        with self._transaction():
            self._db.execute(
                "UPDATE fragments SET state = ? WHERE id = ?", (state.value, fragment_id)
            )

    def renew(
        self, owner: str, fragment_ids: Sequence[str], until: float, lease_seconds: float
    ) -> int:
        """Lease ``owner``'s listed fragments until at least ``until``; how many are its.

        Another owner's ID, or one not held, changes nothing and is not counted. A row
        already leased for longer is counted but left as it is.
        """
        rows = [(lease_seconds, until, fragment_id, owner) for fragment_id in fragment_ids]
        with self._transaction():
            cursor = self._db.executemany(_RENEW, rows)
        return cursor.rowcount

    def remove(self, fragment_id: str) -> bool:
        with self._transaction():
            cursor = self._db.execute("DELETE FROM fragments WHERE id = ?", (fragment_id,))
        return cursor.rowcount > 0

    def remove_all(self, fragment_ids: Sequence[str]) -> int:
        """Remove the rows of ``fragment_ids`` in one transaction; how many there were."""
        with self._transaction():
            cursor = self._db.executemany(
                "DELETE FROM fragments WHERE id = ?", [(i,) for i in fragment_ids]
            )
        return cursor.rowcount

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise CatalogError(f"fragment index: cannot begin a write: {exc}") from exc
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise CatalogError(f"fragment index: write failed: {exc}") from exc
            raise


def held_counts(path: Path) -> tuple[int, int]:
    """(fragments, owner sites) an index file holds, read-only, beside a running store
    (WAL lets a reader in); (0, 0) when there is no index yet."""
    if not path.exists():
        return 0, 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        row = db.execute("SELECT COUNT(*), COUNT(DISTINCT owner) FROM fragments").fetchone()
    finally:
        db.close()
    return int(row[0]), int(row[1])


def _record(row: _Row) -> StoredFragment:
    fragment_id, owner, size, share, set_hash, stored_at, lease_expires, state = row
    return StoredFragment(
        fragment_id, owner, size, share, bytes(set_hash), stored_at, lease_expires,
        FragmentState(state),
    )  # fmt: skip


def _migrate(db: sqlite3.Connection) -> None:
    found = int(db.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(found, SCHEMA_VERSION)
    for version, script in _MIGRATIONS:
        if version <= found:
            continue
        with transaction(db):
            for statement in split_statements(script):
                db.execute(statement)
            # user_version lives in the file header and changes with this transaction.
            db.execute(f"PRAGMA user_version = {int(version)}")
