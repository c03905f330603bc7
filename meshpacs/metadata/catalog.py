"""The catalog itself: one SQLite file in WAL mode behind an async API.

Durability contract: :meth:`Catalog.add_instances` returns only after its transaction is
committed with ``synchronous=FULL`` (the WAL is fsynced at COMMIT), so the C-STORE
handler may acknowledge the PACS as soon as it returns. A batch is one transaction
(group commit): one fsync for every instance in it, all or none of them.

The catalog lives on one event loop, over one aiosqlite connection. One
``asyncio.Lock`` orders all use of that connection, reads included: a read on the same
connection in the middle of a write transaction would see rows that may still be rolled
back. Ingest is the exception: the group-commit writer (``meshpacs.dicom.ingest``) adds
instances from its own thread over a second, plain connection
(:meth:`Catalog.connect_writer`), and SQLite orders the two connections' writes.

Log messages (logger ``meshpacs.catalog``) name rows by their row id only, never by UID
or patient data: the log leaves the site, the catalog does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar, cast

import aiosqlite

from meshpacs.durable import transaction
from meshpacs.errors import CatalogError, QueryTooLarge
from meshpacs.metadata.matching import answer, find_statement, fold_person_name, locate_statement
from meshpacs.metadata.records import (
    AddResult,
    FindQuery,
    InstanceLocation,
    InstanceRecord,
    PatientInfo,
    SeriesInfo,
    StudyInfo,
    StudyState,
)
from meshpacs.metadata.schema import migrate, rollback_quietly

__all__ = ["MAX_FIND_RESULTS", "Catalog"]

# A C-FIND answering more than this is refused (the SCP answers "out of resources")
# rather than held in memory; a narrower query always works.
MAX_FIND_RESULTS = 100_000

_log = logging.getLogger("meshpacs.catalog")

_T = TypeVar("_T")
# A warning to log once the transaction that caused it has committed: message, arguments.
_LogEntry = tuple[str, tuple[object, ...]]


# Each SET clause writes the new value only where the stored one is empty (the first
# non-empty value wins); a ``*_fold`` column follows the column it folds, tested before
# that column is filled (all right-hand sides see the old row).
_PATIENT_UPDATE = (
    "UPDATE patients SET "
    "name_fold = CASE WHEN name = '' THEN ? ELSE name_fold END, "
    "name = CASE WHEN name = '' THEN ? ELSE name END, "
    "birth_date = CASE WHEN birth_date = '' THEN ? ELSE birth_date END, "
    "sex = CASE WHEN sex = '' THEN ? ELSE sex END "
    "WHERE id = ?"
)
_STUDY_UPDATE = (
    "UPDATE studies SET "
    "date = CASE WHEN date = '' THEN ? ELSE date END, "
    "time = CASE WHEN time = '' THEN ? ELSE time END, "
    "accession = CASE WHEN accession = '' THEN ? ELSE accession END, "
    "study_id = CASE WHEN study_id = '' THEN ? ELSE study_id END, "
    "description = CASE WHEN description = '' THEN ? ELSE description END, "
    "referring_fold = CASE WHEN referring = '' THEN ? ELSE referring_fold END, "
    "referring = CASE WHEN referring = '' THEN ? ELSE referring END "
    "WHERE id = ?"
)
_SERIES_UPDATE = (
    "UPDATE series SET "
    "modality = CASE WHEN modality = '' THEN ? ELSE modality END, "
    "number = COALESCE(number, ?), "
    "description = CASE WHEN description = '' THEN ? ELSE description END, "
    "body_part = CASE WHEN body_part = '' THEN ? ELSE body_part END "
    "WHERE id = ?"
)
_INSERT_INSTANCE = (
    "INSERT INTO instances (sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
    " instance_number, size, sha256, calling_ae, received_at, series_ref, parse_error)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@contextlib.contextmanager
def _sqlite_errors(what: str) -> Iterator[None]:
    """Turn a SQLite failure into a CatalogError naming the operation (never the data)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise CatalogError(f"catalog {what} failed ({type(exc).__name__}): {exc}") from exc


def _integer(value: int | None) -> int | None:
    """An IS value as SQLite can hold it; one beyond 64 bits (a broken dataset: IS has 12
    characters) is catalogued as absent rather than failing the whole batch."""
    if value is None or not -(2**63) <= value < 2**63:
        return None
    return value


def _row_id(cursor: sqlite3.Cursor) -> int:
    row_id = cursor.lastrowid
    if row_id is None:  # pragma: no cover - SQLite always sets it after an INSERT
        raise CatalogError("catalog insert returned no row id")
    return row_id


class Catalog:
    """The node's catalog of patients, studies, series and instances.

    Open it with :meth:`open` (``async with await Catalog.open(path) as catalog``); the
    constructor is for :meth:`open` only.
    """

    def __init__(self, conn: aiosqlite.Connection, path: Path, clock: Callable[[], float]):
        self._conn = conn
        self._clock = clock
        self._lock = asyncio.Lock()
        self.path = path

    @classmethod
    async def open(cls, path: Path, *, clock: Callable[[], float] = time.time) -> Catalog:
        """Open the catalog at ``path``, creating it or migrating it to the newest schema."""
        with _sqlite_errors("open"):
            conn = await aiosqlite.connect(path, isolation_level=None)
        try:
            with _sqlite_errors("open"):
                await _configure(conn)
            await migrate(conn, clock=clock)
        except BaseException:
            await conn.close()
            raise
        return cls(conn, path, clock)

    async def close(self) -> None:
        """Close the connection; committed data is already durable."""
        async with self._lock:
            await self._conn.close()

    async def __aenter__(self) -> Catalog:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            with _sqlite_errors("read"):
                yield self._conn

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; committed on exit, rolled back on any exception."""
        async with self._lock:
            try:
                with _sqlite_errors("write"):
                    if self._conn.in_transaction:  # left open by a cancelled rollback
                        await rollback_quietly(self._conn)
                    await self._conn.execute("BEGIN IMMEDIATE")
                    yield self._conn
                    await self._conn.execute("COMMIT")
            except BaseException:
                await rollback_quietly(self._conn)
                raise

    async def add_instances(self, records: Sequence[InstanceRecord]) -> list[AddResult]:
        """Add received instances in one transaction; one result per record, in order.

        Patients, studies and series are created as needed; a later record fills their
        empty attributes but never overwrites a non-empty one (the first non-empty value
        wins). A study receiving a new (not duplicate) instance goes back to RECEIVING,
        leaves the backup queue, and its ``last_received`` moves to now.

        The whole transaction, BEGIN to COMMIT (or ROLLBACK), is one synchronous function
        run in the connection's thread: one round trip per batch, not one per statement.
        """
        if not records:
            return []
        batch = list(records)
        async with self._lock:
            now = self._clock()
            with _sqlite_errors("write"):
                results, messages = await self._in_sqlite_thread(
                    lambda db: self._add_batch(db, batch, now)
                )
        for message, args in messages:
            _log.warning(message, *args)
        return results

    def connect_writer(self) -> sqlite3.Connection:
        """A second connection, for one thread that only adds instances (the ingest writer).

        Ingest waits on every commit, so its transactions go straight from the writer's
        thread to SQLite instead of hopping through the event loop and aiosqlite's thread
        (measured: those hops cost more than the WAL fsync). SQLite orders the two
        connections' writes (``BEGIN IMMEDIATE``, ``busy_timeout``); WAL readers are not
        blocked. Use it from one thread only, with :meth:`add_instances_on`.
        """
        with _sqlite_errors("open"):
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                _configure_sync(db)
            except BaseException:
                db.close()
                raise
        return db

    def add_instances_on(
        self, db: sqlite3.Connection, records: Sequence[InstanceRecord]
    ) -> list[AddResult]:
        """:meth:`add_instances` on a connection from :meth:`connect_writer`, blocking."""
        if not records:
            return []
        with _sqlite_errors("write"):
            results, messages = self._add_batch(db, list(records), self._clock())
        for message, args in messages:
            _log.warning(message, *args)
        return results

    def retract_on(self, db: sqlite3.Connection, record: InstanceRecord) -> bool:
        """Remove the row ``record`` added, on a writer connection; False if there was none.

        For an instance whose row was committed but whose file could not be put in place
        (ingest commits the row while the file is being made durable).
        """
        with _sqlite_errors("write"), transaction(db):
            row = db.execute(
                "SELECT id FROM instances WHERE sop_instance_uid = ? AND sha256 = ?",
                (record.sop_instance_uid, record.sha256),
            ).fetchone()
            if row is not None:
                _forget_rows(db, [int(row[0])])
        return row is not None

    async def write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` as one write transaction in the catalog's thread; its result back.

        For the synchronous ledger functions (:mod:`meshpacs.metadata.ledger`): the whole
        transaction is one call into SQLite's thread, committed before this returns, rolled
        back if ``fn`` raises.
        """
        async with self._lock:
            with _sqlite_errors("write"):
                return await self._in_sqlite_thread(lambda db: _in_transaction(db, fn))

    async def read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run the read-only ``fn`` in the catalog's thread (one consistent snapshot)."""
        async with self._lock:
            with _sqlite_errors("read"):
                return await self._in_sqlite_thread(lambda db: _in_transaction(db, fn, "BEGIN"))

    async def latest_instances(self, limit: int) -> list[tuple[int, bytes]]:
        """(row id, sha256) of the ``limit`` most recently added rows whose file is kept here.

        Rows pruned under the retention setting are left out: their files are gone on
        purpose, not lost in a crash.
        """
        async with self._read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT id, sha256 FROM instances WHERE pruned_at IS NULL ORDER BY id DESC LIMIT ?",
                (limit,),
            )
        return [(int(row[0]), bytes(row[1])) for row in rows]

    async def forget_instances(self, row_ids: Sequence[int]) -> None:
        """Remove instance rows whose files are gone (see ``ingest.reconcile_recent``)."""
        if not row_ids:
            return
        ids = list(row_ids)
        async with self._lock:
            with _sqlite_errors("write"):
                await self._in_sqlite_thread(lambda db: _forget_in_transaction(db, ids))

    async def _in_sqlite_thread(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` on the raw connection in aiosqlite's own thread, as one queued call.

        aiosqlite has no public way to run a function in its thread; ``_execute`` is what
        each of its own methods uses (checked against aiosqlite 0.22.1; a release that
        drops it fails every test that stores an instance). The caller holds
        ``self._lock``, and the thread runs one call at a time, so nothing interleaves.
        """
        conn = self._conn

        def call() -> _T:
            return fn(conn._conn)

        result = await conn._execute(call)  # type: ignore[no-untyped-call]
        return cast(_T, result)

    def _add_batch(
        self, db: sqlite3.Connection, records: Sequence[InstanceRecord], now: float
    ) -> tuple[list[AddResult], list[_LogEntry]]:
        """The add_instances transaction; runs in the connection's thread."""
        log: list[_LogEntry] = []
        with transaction(db):
            results = [self._add_one(db, record, now, log) for record in records]
        return results, log

    def _add_one(
        self, db: sqlite3.Connection, record: InstanceRecord, now: float, log: list[_LogEntry]
    ) -> AddResult:
        stored = db.execute(
            "SELECT id, sha256 FROM instances WHERE sop_instance_uid = ? ORDER BY id",
            (record.sop_instance_uid,),
        ).fetchall()
        if any(bytes(row[1]) == record.sha256 for row in stored):
            # Received again after its local copy was pruned: the file is back.
            db.execute(
                "UPDATE instances SET pruned_at = NULL WHERE sop_instance_uid = ? AND sha256 = ?",
                (record.sop_instance_uid, record.sha256),
            )
            return AddResult.DUPLICATE
        study_ref: int | None = None
        series_ref: int | None = None
        new_study = False
        if record.patient is not None and record.study is not None and record.series is not None:
            patient_ref = self._upsert_patient(db, record.patient)
            study_ref, new_study = self._upsert_study(db, record.study, patient_ref, now, log)
            series_ref = self._upsert_series(db, record.series, study_ref, log)
        cursor = db.execute(
            _INSERT_INSTANCE,
            (
                record.sop_instance_uid,
                record.sop_class_uid,
                record.transfer_syntax_uid,
                _integer(record.instance_number),
                record.size,
                record.sha256,
                record.calling_ae,
                record.received_at,
                series_ref,
                record.parse_error,
            ),
        )
        instance_ref = _row_id(cursor)
        if study_ref is not None and not new_study:
            # A study inserted by this record is already RECEIVING at ``now``, unqueued.
            db.execute(
                "UPDATE studies SET state = ?, last_received = max(last_received, ?) WHERE id = ?",
                (StudyState.RECEIVING.value, now, study_ref),
            )
            db.execute("DELETE FROM backup_queue WHERE study_ref = ?", (study_ref,))
        if not stored:
            return AddResult.STORED
        db.execute(
            "UPDATE instances SET conflict = 1 WHERE sop_instance_uid = ?",
            (record.sop_instance_uid,),
        )
        log.append(
            (
                "instance row %d has the SOP Instance UID of row(s) %s with different bytes;"
                " all versions kept and flagged as conflicting",
                (instance_ref, ", ".join(str(row[0]) for row in stored)),
            )
        )
        return AddResult.CONFLICT

    def _upsert_patient(self, db: sqlite3.Connection, patient: PatientInfo) -> int:
        found = db.execute(
            "SELECT id FROM patients WHERE patient_id = ? AND issuer = ?",
            (patient.patient_id, patient.issuer),
        ).fetchone()
        fold = fold_person_name(patient.name)
        if found is None:
            cursor = db.execute(
                "INSERT INTO patients (patient_id, issuer, name, name_fold, birth_date, sex)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    patient.patient_id,
                    patient.issuer,
                    patient.name,
                    fold,
                    patient.birth_date,
                    patient.sex,
                ),
            )
            return _row_id(cursor)
        patient_ref = int(found[0])
        db.execute(
            _PATIENT_UPDATE, (fold, patient.name, patient.birth_date, patient.sex, patient_ref)
        )
        return patient_ref

    def _upsert_study(
        self,
        db: sqlite3.Connection,
        study: StudyInfo,
        patient_ref: int,
        now: float,
        log: list[_LogEntry],
    ) -> tuple[int, bool]:
        """The study's row id, and whether this call inserted it."""
        found = db.execute(
            "SELECT id, patient_ref FROM studies WHERE study_uid = ?", (study.study_uid,)
        ).fetchone()
        fold = fold_person_name(study.referring_physician)
        if found is None:
            cursor = db.execute(
                "INSERT INTO studies (study_uid, patient_ref, date, time, accession, study_id,"
                " description, referring, referring_fold, state, first_received,"
                " last_received) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    study.study_uid,
                    patient_ref,
                    study.date,
                    study.time,
                    study.accession,
                    study.study_id,
                    study.description,
                    study.referring_physician,
                    fold,
                    StudyState.RECEIVING.value,
                    now,
                    now,
                ),
            )
            return _row_id(cursor), True
        study_ref, filed_under = int(found[0]), int(found[1])
        if filed_under != patient_ref:
            log.append(
                (
                    "study row %d belongs to patient row %d; an instance naming patient row %d"
                    " was filed under it anyway",
                    (study_ref, filed_under, patient_ref),
                )
            )
        db.execute(
            _STUDY_UPDATE,
            (
                study.date,
                study.time,
                study.accession,
                study.study_id,
                study.description,
                fold,
                study.referring_physician,
                study_ref,
            ),
        )
        return study_ref, False

    def _upsert_series(
        self, db: sqlite3.Connection, series: SeriesInfo, study_ref: int, log: list[_LogEntry]
    ) -> int:
        found = db.execute(
            "SELECT id, study_ref FROM series WHERE series_uid = ?", (series.series_uid,)
        ).fetchone()
        if found is None:
            cursor = db.execute(
                "INSERT INTO series (series_uid, study_ref, modality, number, description,"
                " body_part) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    series.series_uid,
                    study_ref,
                    series.modality,
                    _integer(series.number),
                    series.description,
                    series.body_part,
                ),
            )
            return _row_id(cursor)
        series_ref, filed_under = int(found[0]), int(found[1])
        if filed_under != study_ref:
            log.append(
                (
                    "series row %d belongs to study row %d; an instance naming study row %d"
                    " was filed under it anyway",
                    (series_ref, filed_under, study_ref),
                )
            )
        db.execute(
            _SERIES_UPDATE,
            (
                series.modality,
                _integer(series.number),
                series.description,
                series.body_part,
                series_ref,
            ),
        )
        return series_ref

    async def find(
        self, query: FindQuery, *, limit: int = MAX_FIND_RESULTS
    ) -> list[dict[str, str]]:
        """Answer a C-FIND: one dict per match, with every requested key, the unique keys
        of the level and above, and QueryRetrieveLevel. More than ``limit`` matches raise
        :class:`~meshpacs.errors.QueryTooLarge`."""
        statement = find_statement(query, limit=limit + 1)
        async with self._read() as conn:
            rows = list(await conn.execute_fetchall(statement.sql.text, statement.sql.params))
        if len(rows) > limit:
            raise QueryTooLarge(f"C-FIND matches more than {limit} entities")
        return [answer(statement, row) for row in rows]

    async def locate(self, level: str, uids: Mapping[str, str]) -> list[InstanceLocation]:
        """Every stored instance version under ``uids`` at ``level``, for C-MOVE/C-GET.

        Ordered by study, series number, instance number; every version of a conflicting
        SOP Instance UID is returned, and unparsed instances are found by SOP Instance UID.
        """
        sql = locate_statement(level, uids)
        async with self._read() as conn:
            rows = list(await conn.execute_fetchall(sql.text, sql.params))
        return [
            InstanceLocation(str(r[0]), str(r[1]), str(r[2]), bytes(r[3]), int(r[4])) for r in rows
        ]

    async def mark_stable(self, quiet_seconds: float) -> list[str]:
        """Queue for backup every RECEIVING study quiet for ``quiet_seconds``.

        Each such study goes RECEIVING -> STABLE -> QUEUED in one transaction, with a row
        in the backup queue. Returns the Study Instance UIDs queued, oldest first.
        """
        if quiet_seconds < 0:
            raise ValueError("quiet_seconds must be >= 0")
        async with self._write() as conn:
            now = self._clock()
            rows = list(
                await conn.execute_fetchall(
                    "SELECT id, study_uid FROM studies WHERE state = ? AND last_received <= ?"
                    " AND id NOT IN (SELECT study_ref FROM forget_requests"
                    "   WHERE state = 'pending' AND study_ref IS NOT NULL)"
                    " ORDER BY last_received, id",
                    (StudyState.RECEIVING.value, now - quiet_seconds),
                )
            )
            refs = [(int(r[0]),) for r in rows]
            await conn.executemany(
                f"UPDATE studies SET state = '{StudyState.STABLE.value}' WHERE id = ?", refs
            )
            await conn.executemany(
                "INSERT INTO backup_queue (study_ref, queued_at) VALUES (?, ?)"
                " ON CONFLICT (study_ref) DO NOTHING",
                [(ref, now) for (ref,) in refs],
            )
            await conn.executemany(
                f"UPDATE studies SET state = '{StudyState.QUEUED.value}' WHERE id = ?", refs
            )
        return [str(r[1]) for r in rows]

    async def backup_queue(self) -> list[str]:
        """The Study Instance UIDs waiting for backup, in the order they were queued."""
        async with self._read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT s.study_uid FROM backup_queue q JOIN studies s ON q.study_ref = s.id"
                " ORDER BY q.queued_at, q.id"
            )
        return [str(r[0]) for r in rows]

    async def study_state(self, study_uid: str) -> StudyState | None:
        """The study's backup state, or None for a study the catalog does not hold."""
        async with self._read() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT state FROM studies WHERE study_uid = ?", (study_uid,)
                )
            )
        return StudyState(rows[0][0]) if rows else None

    async def counts(self) -> dict[str, int]:
        """How much the catalog holds.

        ``instances`` counts stored versions (rows); ``conflicts`` counts SOP Instance
        UIDs held in more than one version; ``unparsed`` counts instances kept without a
        place in the hierarchy.
        """
        async with self._read() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT (SELECT COUNT(*) FROM patients), (SELECT COUNT(*) FROM studies),"
                    " (SELECT COUNT(*) FROM series), (SELECT COUNT(*) FROM instances),"
                    " (SELECT COUNT(DISTINCT sop_instance_uid) FROM instances"
                    "  WHERE conflict = 1),"
                    " (SELECT COUNT(*) FROM instances WHERE series_ref IS NULL)"
                )
            )
        names = ("patients", "studies", "series", "instances", "conflicts", "unparsed")
        return {name: int(value) for name, value in zip(names, rows[0], strict=True)}


def _forget_rows(db: sqlite3.Connection, row_ids: Sequence[int]) -> None:
    """Delete instance rows inside the caller's transaction; a version left alone is no
    longer in conflict."""
    for row_id in row_ids:
        uid = db.execute(
            "SELECT sop_instance_uid FROM instances WHERE id = ?", (row_id,)
        ).fetchone()
        if uid is None:
            continue
        db.execute("DELETE FROM instances WHERE id = ?", (row_id,))
        db.execute(
            "UPDATE instances SET conflict = 0 WHERE sop_instance_uid = ?1"
            " AND (SELECT count(*) FROM instances WHERE sop_instance_uid = ?1) = 1",
            (uid[0],),
        )


def _forget_in_transaction(db: sqlite3.Connection, row_ids: Sequence[int]) -> None:
    _in_transaction(db, lambda conn: _forget_rows(conn, row_ids))


def _in_transaction(
    db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T], begin: str = "BEGIN IMMEDIATE"
) -> _T:
    with transaction(db, begin):
        return fn(db)


def _configure_sync(db: sqlite3.Connection) -> None:
    """The same settings as :func:`_configure`, on a plain connection (WAL is already on)."""
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA busy_timeout = 5000")
    mode = db.execute("PRAGMA journal_mode").fetchone()
    synchronous = db.execute("PRAGMA synchronous").fetchone()
    checks = db.execute("PRAGMA foreign_keys").fetchone()
    if str(mode[0]).lower() != "wal" or int(synchronous[0]) != 2 or int(checks[0]) != 1:
        raise CatalogError("the catalog's writer connection could not get WAL, synchronous=FULL")


async def _configure(conn: aiosqlite.Connection) -> None:
    """WAL, fsync at every commit, foreign keys enforced; checked, not assumed."""
    mode = list(await conn.execute_fetchall("PRAGMA journal_mode = WAL"))
    if not mode or str(mode[0][0]).lower() != "wal":
        raise CatalogError("the catalog's file system does not support SQLite WAL mode")
    await conn.execute("PRAGMA synchronous = FULL")
    await conn.execute("PRAGMA foreign_keys = ON")
    await conn.execute("PRAGMA busy_timeout = 5000")
    checks = list(await conn.execute_fetchall("PRAGMA foreign_keys"))
    synchronous = list(await conn.execute_fetchall("PRAGMA synchronous"))
    if int(checks[0][0]) != 1 or int(synchronous[0][0]) != 2:
        raise CatalogError("the catalog could not enable foreign keys and synchronous=FULL")
