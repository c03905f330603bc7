"""The fragment index: one SQLite row per stored fragment, and each owner's usage.

The index lives beside the fragments (``fragments/index.sqlite``) in WAL mode with
``synchronous=FULL``, so a committed row survives a power cut. It is not thread-safe on its
own: :class:`~meshpacs.store.store.FragmentStore` calls it under its lock. Every change is
one ``BEGIN IMMEDIATE`` transaction.

Schema version 1 (``PRAGMA user_version``)::

    fragments    (id PK, owner, size, share, set_hash, stored_at, lease_expires, state)
    owner_usage  (owner PK, bytes, fragments)     kept by triggers on ``fragments``

``state`` is ``writing`` while a fragment is being put in place (see the store's ordering),
``ok`` once it is, and ``quarantined`` for the scrubber to come. ``lease_expires`` stays
NULL until leases exist. ``owner_usage`` makes the quota check one lookup instead of a sum
over an owner's (possibly millions of) rows, and the triggers keep it exact inside the
same transaction as the row change. A file written by a newer meshpacs is refused.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from meshpacs.durable import split_statements, transaction
from meshpacs.errors import CatalogError, SchemaTooNew

__all__ = ["SCHEMA_VERSION", "FragmentIndex", "FragmentState", "StoredFragment"]


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

# (version, script) in ascending order. Append only: a released entry is never edited.
_MIGRATIONS: tuple[tuple[int, str], ...] = ((1, _V1),)
SCHEMA_VERSION = _MIGRATIONS[-1][0]

_COLUMNS = "id, owner, size, share, set_hash, stored_at, lease_expires, state"
_Row = tuple[str, str, int, int, bytes, float, float | None, str]


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

    # --- writes, each one transaction ------------------------------------------------

    def put(self, record: StoredFragment) -> None:
        """Insert or replace the row of ``record.fragment_id``, keeping any lease."""
        with self._transaction():
            self._db.execute(
                f"INSERT INTO fragments ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET owner = excluded.owner,"
                " size = excluded.size, share = excluded.share, set_hash = excluded.set_hash,"
                " stored_at = excluded.stored_at, state = excluded.state",
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

    def remove(self, fragment_id: str) -> bool:
        with self._transaction():
            cursor = self._db.execute("DELETE FROM fragments WHERE id = ?", (fragment_id,))
        return cursor.rowcount > 0

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
