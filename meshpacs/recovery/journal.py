"""The recovery journal: what each target has acknowledged, so an interrupted run resumes.

Recovery can take hours, and anything may stop it half way: Ctrl-C, a crash, the rebuilt
PACS restarting. The journal is a SQLite file (WAL, ``synchronous=FULL``: a commit is on
disk when it returns) in the recovery's own working directory, never in the destroyed site
directory. A run reopens it and skips every instance the target already holds.

One journal file may serve several targets, each under its identity string
(``ae:AET@host:port``, ``dir:/abs/path``; see :mod:`meshpacs.recovery.deliver`): a
:class:`RecoveryJournal` is the view of one of them, and an instance counts as delivered
only to the target that acknowledged it. An instance is recorded once the target has it:
the PACS answered its C-STORE with a success or warning status, or its file and directory
entry in the target directory are fsynced. It is keyed by the SHA-256 of its bytes, so a
different version of an instance (other bytes, same SOP Instance UID) is not taken for it.

Before an instance goes out it is recorded **in flight** for its target (a whole batch in
one commit, before the first of it is sent); the acknowledgement that records it delivered
removes that row in the same transaction, and an instance the target plainly refused has
its row cleared. So after a crash, however hard, an instance is either delivered, or in
flight (sent or about to be: only the target knows whether it holds it, and the deliverer
asks it before sending again), or neither (never sent: send it)::

    record_in_flight(batch)   commit   ─► send ─► ack ─► record_delivered   commit (row moves)
                                                  └─► refused ─► clear_in_flight

Tables (``PRAGMA user_version`` is the schema version; a newer one is refused, an older one
migrated in one transaction, so a journal an older meshpacs left half way still resumes)::

    targets    id, identity, created_at
    delivered  target, sha256 (32 bytes), sop_instance_uid, sop_class_uid,
               transfer_syntax_uid, size, study_uid, name, delivered_at
    studies    target, study_uid, number       stable per-target study numbers
    complete   target, kind ('bundle'|'study'), key, completed_at
    in_flight  target, sha256, sop_instance_uid, study_uid, sent_at      (since schema 2)

The journal holds DICOM UIDs (study, SOP instance) and, for a directory target, the names
of the files written: it lives on the recovering site's own machine and must be treated as
PHI there (it is created readable by its owner only). It holds no patient names, IDs or
dates. Every value is bounded before it is written (UIDs 64 characters, names 255,
identities 1024, batches 100,000 rows) and the file itself is capped at
:data:`MAX_JOURNAL_BYTES` through SQLite's ``max_page_count``.

One process at a time: opening takes an exclusive ``flock`` on ``<journal>.lock``, so two
recoveries cannot interleave deliveries into one journal. Methods are thread-safe (one
connection behind a lock): the C-STORE sender reports acknowledgements from its threads.
"""

from __future__ import annotations

import fcntl
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from meshpacs.durable import transaction
from meshpacs.errors import ConfigError, LimitExceeded
from meshpacs.recovery.model import PlannedInstance, PlannedStudy

__all__ = [
    "MAX_BATCH",
    "MAX_IDENTITY",
    "MAX_JOURNAL_BYTES",
    "MAX_NAME",
    "MAX_UID",
    "SCHEMA_VERSION",
    "JournalEntry",
    "JournalTotals",
    "RecoveryJournal",
]

SCHEMA_VERSION = 2
MAX_IDENTITY = 1024
MAX_UID = 64  # DICOM's UI value representation
MAX_NAME = 255
MAX_BATCH = 100_000
MAX_JOURNAL_BYTES = 16 << 30
"""About 40 million instances; a journal that grows past this is refused, not extended."""

_PAGE_SIZE = 4096
_LOOKUP_CHUNK = 500  # under SQLite's 999 bound parameters, on every build
_FIRST_TABLES = {"targets", "delivered", "studies", "complete"}  # schema 1
_T = TypeVar("_T")

_SCHEMA = f"""
CREATE TABLE targets (
    id INTEGER PRIMARY KEY,
    identity TEXT NOT NULL UNIQUE CHECK (length(identity) BETWEEN 1 AND {MAX_IDENTITY}),
    created_at REAL NOT NULL
);
CREATE TABLE delivered (
    target INTEGER NOT NULL REFERENCES targets (id),
    sha256 BLOB NOT NULL CHECK (length(sha256) = 32),
    sop_instance_uid TEXT NOT NULL CHECK (length(sop_instance_uid) BETWEEN 1 AND {MAX_UID}),
    sop_class_uid TEXT NOT NULL CHECK (length(sop_class_uid) <= {MAX_UID}),
    transfer_syntax_uid TEXT NOT NULL CHECK (length(transfer_syntax_uid) <= {MAX_UID}),
    size INTEGER NOT NULL CHECK (size >= 0),
    study_uid TEXT NOT NULL CHECK (length(study_uid) <= {MAX_UID}),
    name TEXT NOT NULL CHECK (length(name) <= {MAX_NAME}),
    delivered_at REAL NOT NULL,
    PRIMARY KEY (target, sha256)
) WITHOUT ROWID;
CREATE INDEX delivered_by_study ON delivered (target, study_uid);
CREATE TABLE studies (
    target INTEGER NOT NULL REFERENCES targets (id),
    study_uid TEXT NOT NULL CHECK (length(study_uid) BETWEEN 1 AND {MAX_UID}),
    number INTEGER NOT NULL CHECK (number >= 1),
    PRIMARY KEY (target, study_uid),
    UNIQUE (target, number)
) WITHOUT ROWID;
CREATE TABLE complete (
    target INTEGER NOT NULL REFERENCES targets (id),
    kind TEXT NOT NULL CHECK (kind IN ('bundle', 'study')),
    key TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND {MAX_UID}),
    completed_at REAL NOT NULL,
    PRIMARY KEY (target, kind, key)
) WITHOUT ROWID;
"""

# Each step takes a journal from the version before it to its own, in the opening
# transaction: a journal an interrupted older run left behind resumes after an upgrade.
_MIGRATIONS = {
    2: f"""
CREATE TABLE in_flight (
    target INTEGER NOT NULL REFERENCES targets (id),
    sha256 BLOB NOT NULL CHECK (length(sha256) = 32),
    sop_instance_uid TEXT NOT NULL CHECK (length(sop_instance_uid) BETWEEN 1 AND {MAX_UID}),
    study_uid TEXT NOT NULL CHECK (length(study_uid) <= {MAX_UID}),
    sent_at REAL NOT NULL,
    PRIMARY KEY (target, sha256)
) WITHOUT ROWID;
""",
}


@dataclass(frozen=True)
class JournalEntry:
    """One instance a target acknowledged; ``name`` is its file in a directory target."""

    sha256: bytes
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int
    study_uid: str
    name: str = ""
    delivered_at: float = 0.0  # set by the journal when recorded

    @classmethod
    def of(cls, instance: PlannedInstance, study_uid: str, name: str = "") -> JournalEntry:
        return cls(
            instance.sha256,
            instance.sop_instance_uid,
            instance.sop_class_uid,
            instance.transfer_syntax_uid,
            instance.size,
            study_uid,
            name,
        )

    def check(self) -> None:
        """Refuse, before anything is written, a value over its bound."""
        if len(self.sha256) != 32:
            raise ValueError("sha256 must be 32 bytes")
        if not self.sop_instance_uid:
            raise ValueError("an instance needs its SOP Instance UID")
        for what, value, bound in (
            ("a SOP Instance UID", self.sop_instance_uid, MAX_UID),
            ("a SOP Class UID", self.sop_class_uid, MAX_UID),
            ("a transfer syntax UID", self.transfer_syntax_uid, MAX_UID),
            ("a Study Instance UID", self.study_uid, MAX_UID),
            ("a file name", self.name, MAX_NAME),
        ):
            if len(value) > bound:
                raise LimitExceeded(f"{what} of {len(value)} characters (at most {bound})")
        if self.size < 0:
            raise ValueError("size must not be negative")


@dataclass(frozen=True)
class JournalTotals:
    """What one target holds according to the journal."""

    instances: int
    bytes: int
    bundles_complete: int
    studies_complete: int


class RecoveryJournal:
    """One target's view of a recovery journal file; see the module docstring."""

    def __init__(
        self, path: Path, target: str, db: sqlite3.Connection, target_id: int, lock_fd: int
    ) -> None:
        self.path = path
        self.target = target
        self._db = db
        self._target_id = target_id
        self._lock_fd = lock_fd
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"RecoveryJournal({str(self.path)!r}, {self.target!r})"

    # -- opening and closing -------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, target: str) -> RecoveryJournal:
        """Open (creating if needed) the journal at ``path`` for ``target``.

        Raises :class:`ConfigError` when the file cannot be used (unreadable, not a SQLite
        journal, written by a newer meshpacs, or in use by another recovery).
        """
        _check_identity(target)
        path = Path(path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = _lock(path)
        try:
            db = _connect(path)
        except BaseException:
            os.close(lock_fd)
            raise
        try:
            target_id = _target_id(db, path, target)
        except BaseException:
            db.close()
            os.close(lock_fd)
            raise
        return cls(path, target, db, target_id, lock_fd)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()
            os.close(self._lock_fd)

    def __enter__(self) -> RecoveryJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- instances -------------------------------------------------------------------------

    def delivered(self, sha256: bytes) -> bool:
        """Whether this target acknowledged the instance whose bytes hash to ``sha256``."""
        row = self._read(
            lambda db: db.execute(
                "SELECT 1 FROM delivered WHERE target = ? AND sha256 = ?",
                (self._target_id, bytes(sha256)),
            ).fetchone()
        )
        return row is not None

    def delivered_among(self, digests: Iterable[bytes]) -> set[bytes]:
        """The digests in ``digests`` this target acknowledged."""
        return self._select_among("delivered", digests)

    def record_delivered(self, entries: Sequence[JournalEntry]) -> None:
        """Record acknowledged instances, all in one transaction (one fsync); their
        in-flight rows go in the same transaction.

        An instance already recorded keeps its first record.
        """
        _check_batch(entries)
        if not entries:
            return
        now = time.time()
        rows = [
            (self._target_id, e.sha256, e.sop_instance_uid, e.sop_class_uid,
             e.transfer_syntax_uid, e.size, e.study_uid, e.name, now)
            for e in entries
        ]  # fmt: skip
        landed = [(self._target_id, e.sha256) for e in entries]

        def record(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR IGNORE INTO delivered (target, sha256, sop_instance_uid, "
                "sop_class_uid, transfer_syntax_uid, size, study_uid, name, delivered_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.executemany("DELETE FROM in_flight WHERE target = ? AND sha256 = ?", landed)

        self._write(record)

    # -- in flight -------------------------------------------------------------------------

    def record_in_flight(self, entries: Sequence[JournalEntry]) -> None:
        """Record that these instances are about to be sent, in one transaction: call it
        before the first of them goes out. A row already there keeps its first time."""
        _check_batch(entries)
        if not entries:
            return
        now = time.time()
        rows = [(self._target_id, e.sha256, e.sop_instance_uid, e.study_uid, now) for e in entries]
        self._write(
            lambda db: db.executemany(
                "INSERT OR IGNORE INTO in_flight (target, sha256, sop_instance_uid, study_uid, "
                "sent_at) VALUES (?, ?, ?, ?, ?)",
                rows,
            )
        )

    def clear_in_flight(self, digests: Iterable[bytes]) -> None:
        """Forget in-flight rows of instances known not to be held: the target refused
        them, or they were never sent. One transaction."""
        rows = [(self._target_id, bytes(d)) for d in dict.fromkeys(digests)]
        if len(rows) > MAX_BATCH:
            raise LimitExceeded(f"a journal batch of {len(rows)} rows (at most {MAX_BATCH})")
        if rows:
            self._write(
                lambda db: db.executemany(
                    "DELETE FROM in_flight WHERE target = ? AND sha256 = ?", rows
                )
            )

    def in_flight_among(self, digests: Iterable[bytes]) -> set[bytes]:
        """The digests in ``digests`` left in flight: sent, or about to be, by a run that
        did not learn (or record) whether the target took them."""
        return self._select_among("in_flight", digests)

    def in_flight_count(self) -> int:
        """How many instances are in flight for this target."""
        (count,) = self._read(
            lambda db: db.execute(
                "SELECT count(*) FROM in_flight WHERE target = ?", (self._target_id,)
            ).fetchone()
        )
        return int(count)

    def entries_of_study(self, study_uid: str) -> list[JournalEntry]:
        """Every instance of ``study_uid`` ("" for unparsed ones) this target holds, in the
        order they were delivered."""
        rows = self._read(
            lambda db: db.execute(
                "SELECT sha256, sop_instance_uid, sop_class_uid, transfer_syntax_uid, size, "
                "study_uid, name, delivered_at FROM delivered WHERE target = ? AND study_uid = ?"
                " ORDER BY delivered_at, sha256",
                (self._target_id, study_uid),
            ).fetchall()
        )
        return [
            JournalEntry(bytes(r[0]), r[1], r[2], r[3], int(r[4]), r[5], r[6], float(r[7]))
            for r in rows
        ]

    def delivered_study_uids(self) -> list[str]:
        """The distinct study UIDs ("" for unparsed instances) this target holds instances of."""
        rows = self._read(
            lambda db: db.execute(
                "SELECT DISTINCT study_uid FROM delivered WHERE target = ? ORDER BY study_uid",
                (self._target_id,),
            ).fetchall()
        )
        return [str(r[0]) for r in rows]

    # -- study numbers ---------------------------------------------------------------------

    def study_number(self, study_uid: str) -> int:
        """The study's number for this target, given on first use and kept for good.

        A directory target names study folders by these numbers: stable across runs, and
        no DICOM value in a path.
        """
        if not study_uid or len(study_uid) > MAX_UID:
            raise ValueError(f"a study UID must be 1..{MAX_UID} characters")

        def assign(db: sqlite3.Connection) -> int:
            row = db.execute(
                "SELECT number FROM studies WHERE target = ? AND study_uid = ?",
                (self._target_id, study_uid),
            ).fetchone()
            if row is not None:
                return int(row[0])
            (last,) = db.execute(
                "SELECT coalesce(max(number), 0) FROM studies WHERE target = ?",
                (self._target_id,),
            ).fetchone()
            db.execute(
                "INSERT INTO studies (target, study_uid, number) VALUES (?, ?, ?)",
                (self._target_id, study_uid, int(last) + 1),
            )
            return int(last) + 1

        return self._write(assign)

    def study_numbers(self) -> dict[str, int]:
        """Every numbered study of this target: study UID -> number."""
        rows = self._read(
            lambda db: db.execute(
                "SELECT study_uid, number FROM studies WHERE target = ?", (self._target_id,)
            ).fetchall()
        )
        return {str(r[0]): int(r[1]) for r in rows}

    # -- completeness ----------------------------------------------------------------------

    def bundle_complete(self, bundle_id: bytes) -> bool:
        return self._is_complete("bundle", bytes(bundle_id).hex())

    def study_complete(self, study_uid: str) -> bool:
        return bool(study_uid) and self._is_complete("study", study_uid)

    def mark_complete(self, study: PlannedStudy) -> bool:
        """Mark each bundle of ``study`` whose every instance this target holds, and the study
        when all of its bundles are (one transaction). True when the study is complete.

        Recovery calls this after delivering a study's batches; the next run skips complete
        bundles without fetching a fragment. A study without a UID (unparsed instances) is
        tracked by its bundles only.
        """
        if len(study.study_uid) > MAX_UID:
            raise LimitExceeded(f"a Study Instance UID over {MAX_UID} characters")
        held = self.delivered_among(i.sha256 for b in study.bundles for i in b.instances)
        done = [
            b.bundle_id.hex() for b in study.bundles if all(i.sha256 in held for i in b.instances)
        ]
        whole = len(done) == len(study.bundles) and bool(study.study_uid)
        now = time.time()
        rows = [(self._target_id, "bundle", key, now) for key in done]
        if whole:
            rows.append((self._target_id, "study", study.study_uid, now))
        if rows:
            self._write(
                lambda db: db.executemany(
                    "INSERT OR IGNORE INTO complete (target, kind, key, completed_at) "
                    "VALUES (?, ?, ?, ?)",
                    rows,
                )
            )
        return len(done) == len(study.bundles)

    def totals(self) -> JournalTotals:
        def count(db: sqlite3.Connection) -> JournalTotals:
            instances, size = db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM delivered WHERE target = ?",
                (self._target_id,),
            ).fetchone()
            kinds = dict(
                db.execute(
                    "SELECT kind, count(*) FROM complete WHERE target = ? GROUP BY kind",
                    (self._target_id,),
                ).fetchall()
            )
            return JournalTotals(
                int(instances), int(size), int(kinds.get("bundle", 0)), int(kinds.get("study", 0))
            )

        return self._read(count)

    # -- internals ---------------------------------------------------------------------------

    def _select_among(self, table: str, digests: Iterable[bytes]) -> set[bytes]:
        wanted = list(dict.fromkeys(bytes(d) for d in digests))
        found: set[bytes] = set()
        for start in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = wanted[start : start + _LOOKUP_CHUNK]
            found.update(self._read(functools.partial(self._select, table=table, digests=chunk)))
        return found

    def _select(self, db: sqlite3.Connection, table: str, digests: list[bytes]) -> set[bytes]:
        assert table in ("delivered", "in_flight")  # never a caller's string in the SQL
        marks = ",".join("?" * len(digests))
        rows = db.execute(
            f"SELECT sha256 FROM {table} WHERE target = ? AND sha256 IN ({marks})",
            (self._target_id, *digests),
        ).fetchall()
        return {bytes(r[0]) for r in rows}

    def _is_complete(self, kind: str, key: str) -> bool:
        row = self._read(
            lambda db: db.execute(
                "SELECT 1 FROM complete WHERE target = ? AND kind = ? AND key = ?",
                (self._target_id, kind, key),
            ).fetchone()
        )
        return row is not None

    def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            self._check_open()
            try:
                return fn(self._db)
            except sqlite3.Error as exc:
                raise ConfigError(f"cannot read the recovery journal {self.path}: {exc}") from None

    def _write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            self._check_open()
            try:
                return _in_transaction(self._db, fn)
            except sqlite3.Error as exc:
                if exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
                    raise LimitExceeded(
                        f"the recovery journal {self.path} is full (its disk, or its bound of "
                        f"{MAX_JOURNAL_BYTES >> 30} GiB)"
                    ) from None
                raise ConfigError(f"cannot write the recovery journal {self.path}: {exc}") from None

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the recovery journal is closed")


def _check_batch(entries: Sequence[JournalEntry]) -> None:
    """Refuse a batch over its bound, or with a value over its bound, before writing."""
    if len(entries) > MAX_BATCH:
        raise LimitExceeded(f"a journal batch of {len(entries)} rows (at most {MAX_BATCH})")
    for entry in entries:
        entry.check()


def _check_identity(target: str) -> None:
    if not isinstance(target, str) or not target or len(target) > MAX_IDENTITY:
        raise ValueError(f"a target identity must be 1..{MAX_IDENTITY} characters")
    if not target.isprintable():
        raise ValueError("a target identity must be printable")


def _lock(path: Path) -> int:
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open {lock_path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(
            f"the recovery journal {path} is in use by another recovery; wait for it to end"
        ) from None
    return fd


def _connect(path: Path) -> sqlite3.Connection:
    try:
        # Created private before SQLite sees it: its -wal and -shm files take its mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open the recovery journal {path}: {exc}") from None
    try:
        _configure(db, path)
        _migrate(db, path)
    except sqlite3.Error as exc:
        db.close()
        raise ConfigError(f"cannot open the recovery journal {path}: {exc}") from None
    except BaseException:
        db.close()
        raise
    return db


def _configure(db: sqlite3.Connection, path: Path) -> None:
    """WAL, fsync at every commit, foreign keys, a size cap; checked, not assumed."""
    db.execute(f"PRAGMA page_size = {_PAGE_SIZE}")  # only takes effect on a new file
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA busy_timeout = 5000")
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    db.execute(f"PRAGMA max_page_count = {MAX_JOURNAL_BYTES // int(page_size)}")
    synchronous = db.execute("PRAGMA synchronous").fetchone()
    checks = db.execute("PRAGMA foreign_keys").fetchone()
    if str(mode[0]).lower() != "wal" or int(synchronous[0]) != 2 or int(checks[0]) != 1:
        raise ConfigError(f"the recovery journal {path} could not get WAL and synchronous=FULL")


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"the recovery journal {path} was written by a newer meshpacs (schema {version}, "
            f"this one knows {SCHEMA_VERSION}); resume with that version"
        )
    tables = {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if (version, tables) == (0, set()):
        scripts = [_SCHEMA]
    elif version >= 1 and tables >= _FIRST_TABLES:
        scripts = []
    else:
        raise ConfigError(f"{path} is not a meshpacs recovery journal")
    scripts += [_MIGRATIONS[step] for step in range(max(version, 1) + 1, SCHEMA_VERSION + 1)]

    def upgrade(conn: sqlite3.Connection) -> None:
        for script in scripts:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    _in_transaction(db, upgrade)


def _target_id(db: sqlite3.Connection, path: Path, target: str) -> int:
    def find_or_add(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT id FROM targets WHERE identity = ?", (target,)).fetchone()
        if row is not None:
            return int(row[0])
        cursor = conn.execute(
            "INSERT INTO targets (identity, created_at) VALUES (?, ?)", (target, time.time())
        )
        return int(cursor.lastrowid or 0)

    try:
        return _in_transaction(db, find_or_add)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot write the recovery journal {path}: {exc}") from None


def _in_transaction(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T]) -> _T:
    with transaction(db):
        return fn(db)
