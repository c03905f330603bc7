"""The DHT's local storage: verified records in SQLite, kept across restarts.

``kademlia`` keeps values in an in-memory dict with a one-week TTL and lets any peer
overwrite any key. :class:`RecordStore` replaces it through the package's storage hook
(``Server(storage=...)``, the ``IStorage`` abstract class) and changes three things:

* **Only verified records get in.** Every value written (by a peer's STORE RPC, by the
  package's republish or hand-off, by our own publish) goes through
  :func:`~meshpacs.dht.records.verify_record` and must sit under its own key
  (:func:`~meshpacs.dht.records.record_key`); anything else is dropped and the reason
  logged. Reasons are fixed phrases and records carry no PHI, so the log carries none.
* **One slot per (key, author), highest seq wins.** A key may hold records from several
  authors (several sites can hold one fragment; a node key has only one possible author),
  and an author's record is replaced only by one with a higher ``seq``. A lower seq is a
  replay and is ignored; the same record again only refreshes its storage time, which is
  what keeps every holder from re-publishing it (Kademlia's republish optimisation); a
  different record with the same seq is ignored (first one wins).
* **Values survive a restart.** The table lives in a SQLite file; reopening it brings the
  values back, expired ones pruned.

Why the standard ``sqlite3`` module and not ``aiosqlite`` (which the catalog uses): the
package calls its storage synchronously, ``self.storage[key] = value`` inside plain
(non-async) RPC handlers and ``storage.get(key)`` inside ``rpc_find_value``, so the
interface cannot await. Each call is one indexed statement on a small local table, done on
the event loop thread. WAL with ``synchronous=NORMAL``: readers never block the writer,
and the worst a power cut costs is the last few writes, which peers and authors republish.

Bounds: a value is at most :data:`~meshpacs.dht.records.MAX_RECORD_SIZE` bytes (checked
before it is parsed) and the table at most ``max_rows`` rows; once full, records for new
(key, author) slots are dropped until expired rows are pruned, while held slots can still
be updated.

Times: ``stored_at`` is wall-clock (it must mean the same after a restart, which
``time.monotonic`` does not); it only drives :meth:`RecordStore.iter_older_than`, the
package's hourly republish.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kademlia.storage import IStorage

from meshpacs.dht.identity import MemberVerifier
from meshpacs.dht.records import MAX_RECORD_SIZE, VerifiedRecord, verify_record
from meshpacs.errors import ConfigError, InvalidRecord
from meshpacs.keys.identity import NODE_ID_SIZE

__all__ = ["DEFAULT_MAX_ROWS", "SCHEMA_VERSION", "RecordStore"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# About 3 GB at the largest record size; a federation of 20 sites each keeping a
# year of provider records for ~140 fragments a day stays under it.
DEFAULT_MAX_ROWS = 1_000_000
_PAGE = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    dht_key     BLOB    NOT NULL,
    author_site TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    stored_at   REAL    NOT NULL,
    value       BLOB    NOT NULL,
    PRIMARY KEY (dht_key, author_site)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_expires_at ON records (expires_at);
CREATE INDEX IF NOT EXISTS records_stored_at ON records (stored_at);
"""


class RecordStore(IStorage):  # type: ignore[misc]  # kademlia ships no type hints
    """Kademlia storage that keeps only verified, newest records, in a SQLite file."""

    def __init__(
        self,
        path: str | Path,
        verifier: MemberVerifier,
        *,
        clock: Callable[[], float] = time.time,
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self._path = Path(path)
        self._verifier = verifier
        self._clock = clock
        self._max_rows = max_rows
        self._db = _open(self._path)
        self._rows = 0
        self.prune_expired()
        self._rows = self._db.execute("SELECT count(*) FROM records").fetchone()[0]

    # --- writes ---------------------------------------------------------------------------

    def __setitem__(self, key: bytes, value: object) -> None:
        self.put(key, value)

    def put(self, key: object, value: object) -> bool:
        """Verify and keep ``value`` under ``key``; True if this store now holds it."""
        if not (isinstance(key, bytes) and len(key) == NODE_ID_SIZE):
            log.info("DHT record dropped: key is not a %d-byte DHT key", NODE_ID_SIZE)
            return False
        if not isinstance(value, bytes) or len(value) > MAX_RECORD_SIZE:
            log.info("DHT record dropped: not a record (wrong type or too large)")
            return False
        now = self._clock()
        try:
            verified = verify_record(value, self._verifier, now)
        except InvalidRecord as error:
            log.info("DHT record dropped: %s", error.reason)
            return False
        if verified.key != key:
            log.info("DHT record dropped: stored under a key that is not its own")
            return False
        return self._keep_if_newer(verified, now)

    def _keep_if_newer(self, verified: VerifiedRecord, now: float) -> bool:
        slot = (verified.key, verified.author.site_id)
        held = self._db.execute(
            "SELECT seq, value FROM records WHERE dht_key = ? AND author_site = ?", slot
        ).fetchone()
        if held is None:
            return self._insert(verified, now)
        held_seq, held_value = held
        if verified.seq > held_seq:
            self._db.execute(
                "UPDATE records SET seq = ?, expires_at = ?, stored_at = ?, value = ?"
                " WHERE dht_key = ? AND author_site = ?",
                (verified.seq, verified.expires_at, now, verified.raw, *slot),
            )
            return True
        if verified.seq == held_seq and verified.raw == held_value:
            self._db.execute(
                "UPDATE records SET stored_at = ? WHERE dht_key = ? AND author_site = ?",
                (now, *slot),
            )
            return True
        log.info("DHT record dropped: replayed (seq not above the one held)")
        return False

    def _insert(self, verified: VerifiedRecord, now: float) -> bool:
        if self._rows >= self._max_rows:
            self.prune_expired()
        if self._rows >= self._max_rows:
            log.warning("DHT record dropped: storage holds its maximum of %d", self._max_rows)
            return False
        self._db.execute(
            "INSERT INTO records (dht_key, author_site, seq, expires_at, stored_at, value)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                verified.key,
                verified.author.site_id,
                verified.seq,
                verified.expires_at,
                now,
                verified.raw,
            ),
        )
        self._rows += 1
        return True

    def prune_expired(self) -> int:
        """Delete every expired record; returns how many went."""
        deleted = self._db.execute(
            "DELETE FROM records WHERE expires_at <= ?", (int(self._clock()),)
        ).rowcount
        self._rows -= deleted
        return int(deleted)

    # --- reads (expired records are never returned, pruned or not) ------------------------

    def __getitem__(self, key: bytes) -> bytes:
        row = self._db.execute(
            "SELECT value FROM records WHERE dht_key = ? AND expires_at > ?"
            " ORDER BY stored_at DESC LIMIT 1",
            (key, self._clock()),
        ).fetchone()
        if row is None:
            raise KeyError(key)
        return bytes(row[0])

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        """One record under ``key`` (the latest stored), as the package's FIND_VALUE wants."""
        try:
            return self[key]
        except KeyError:
            return default

    def values_for(self, key: bytes, budget: int = 8000) -> list[bytes]:
        """Every author's record under ``key``, newest stored first, up to ``budget`` bytes."""
        rows = self._db.execute(
            "SELECT value FROM records WHERE dht_key = ? AND expires_at > ?"
            " ORDER BY stored_at DESC",
            (key, self._clock()),
        )
        values: list[bytes] = []
        for (value,) in rows:
            budget -= len(value)
            if budget < 0:
                break
            values.append(bytes(value))
        return values

    def iter_older_than(self, seconds_old: float) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of every record stored at least ``seconds_old`` seconds ago."""
        return self._pages("AND stored_at <= ?", (self._clock() - seconds_old,))

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return self._pages("", ())

    def __len__(self) -> int:
        return self._rows

    def __bool__(self) -> bool:
        # kademlia picks its storage with ``storage or ForgetfulStorage()``: an empty store
        # must still be truthy, or the package would silently use its in-memory dict.
        return True

    def _pages(self, condition: str, params: tuple[float, ...]) -> Iterator[tuple[bytes, bytes]]:
        # Keyset pages by primary key: the package awaits between items (its republish
        # stores each one again), so rows may change under the iteration; a page query
        # never revisits or skips a slot because of that, and memory stays one page.
        now = self._clock()
        last: tuple[bytes, str] = (b"", "")
        while True:
            page = self._db.execute(
                "SELECT dht_key, author_site, value FROM records"
                f" WHERE expires_at > ? AND (dht_key, author_site) > (?, ?) {condition}"
                " ORDER BY dht_key, author_site LIMIT ?",
                (now, *last, *params, _PAGE),
            ).fetchall()
            for dht_key, _author, value in page:
                yield bytes(dht_key), bytes(value)
            if len(page) < _PAGE:
                return
            last = (page[-1][0], page[-1][1])

    def close(self) -> None:
        self._db.close()

    def __repr__(self) -> str:
        return f"RecordStore({str(self._path)!r}, rows={self._rows})"


def _open(path: Path) -> sqlite3.Connection:
    try:
        # Autocommit: each write is one statement, so each is its own transaction.
        db = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as error:
        raise ConfigError(f"{path}: cannot open the DHT store: {error}") from None
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{path}: DHT store schema version {version} is newer than this meshpacs"
                f" knows ({SCHEMA_VERSION}); upgrade meshpacs or move the file away"
            )
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except sqlite3.Error as error:
        db.close()
        raise ConfigError(f"{path}: not a usable DHT store: {error}") from None
    except ConfigError:
        db.close()
        raise
    return db
