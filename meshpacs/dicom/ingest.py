"""C-STORE ingest: exact bytes on disk and a committed catalog row before Success.

Two receive paths end here. Plain storage associations are read by the node's own
receiver (:mod:`receiver`): it streams each dataset, as received, into a pending Part 10
file (file meta built from the presentation context), hashing it and parsing its header
on the way, and calls :meth:`IngestService.commit_received`. Other associations are
pynetdicom's, which streams the dataset into its own temporary file
(``STORE_RECV_CHUNKED_DATASET``) and calls :meth:`IngestService.handle_store`; that
handler hashes the file in one read. Nothing is decoded or re-encoded on either path.

Then, in the association's thread: fsync the file, give it its content address and fsync
the directory entry (:class:`InstanceStore`), and have the :class:`CatalogWriter` commit
its row (WAL, synchronous=FULL). On the receiver's path the row is committed *while* the
file is made durable (the two disk flushes overlap); on pynetdicom's, after. Either way
the PACS gets Success only once both are on stable storage. A row left without its file
by a crash between the two was never acknowledged; :func:`reconcile_recent` removes it at
the next start.

Group commit: the writer takes every record waiting when it starts a batch, so parallel
associations share one commit (one WAL fsync) instead of paying one each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshpacs.dicom.attributes import HeaderAttributes, read_instance_record
from meshpacs.dicom.identifiers import is_valid_uid
from meshpacs.dicom.storage import InstanceStore, PendingFile, StoredFile
from meshpacs.errors import CatalogError, LimitExceeded
from meshpacs.metadata.catalog import Catalog
from meshpacs.metadata.records import AddResult, InstanceRecord

__all__ = ["STATUS", "CatalogWriter", "IngestService", "ReceivedInstance", "reconcile_recent"]

LOG = logging.getLogger("meshpacs.ingest")


class STATUS:
    """C-STORE statuses the node answers (PS3.4 Annex B.2.3)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  # disk full, or an instance over the size cap
    CANNOT_UNDERSTAND = 0xC000  # invalid identifiers in the request
    PROCESSING_FAILURE = 0xC211  # anything unexpected: nothing was acknowledged


@dataclass(frozen=True)
class ReceivedInstance:
    """A dataset received whole into a pending Part 10 file, hashed as it was written."""

    pending: PendingFile
    sha256: bytes
    size: int
    head: bytes = field(repr=False)
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    calling_ae: str
    early: HeaderAttributes | None = None  # the header, parsed while the rest arrived


@dataclass
class _Pending:
    record: InstanceRecord
    done: concurrent.futures.Future[AddResult]
    retract: bool = False  # remove the row this record added, instead of adding it


def _settle(pending: _Pending, outcome: AddResult | BaseException) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if isinstance(outcome, BaseException):
            pending.done.set_exception(outcome)
        else:
            pending.done.set_result(outcome)


class CatalogWriter:
    """Commits records in batches from its own thread; callers wait for their batch.

    The instance files reach the writer already durable, directory entries included
    (:meth:`InstanceStore.place`); the writer only commits their catalog rows, over its
    own SQLite connection (:meth:`Catalog.connect_writer`): a receiving thread hands a
    record over and is woken by the commit, two thread switches in all, with no event
    loop in between.
    """

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._running = False
        self.batches = 0

    def start(self) -> None:
        db = self._catalog.connect_writer()
        with self._lock:
            self._running = True
        self._thread = threading.Thread(
            target=self._run, args=(db,), name="catalog-writer", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        """Stop committing; records already handed over are committed first, later ones
        fail at once (the PACS resends)."""
        with self._lock:
            self._running = False
            self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if pending is not None:
                _settle(pending, CatalogError("the catalog writer has stopped"))

    def submit(self, record: InstanceRecord) -> concurrent.futures.Future[AddResult]:
        """Queue ``record`` from any thread; the future resolves once it is committed."""
        return self._queue_up(_Pending(record, concurrent.futures.Future()))

    def retract(self, record: InstanceRecord) -> concurrent.futures.Future[AddResult]:
        """Remove the row an earlier :meth:`submit` of ``record`` added (its file failed)."""
        return self._queue_up(_Pending(record, concurrent.futures.Future(), retract=True))

    def _queue_up(self, pending: _Pending) -> concurrent.futures.Future[AddResult]:
        with self._lock:
            if self._running:
                self._queue.put(pending)
                return pending.done
        message = "the catalog writer has " + ("stopped" if self._thread else "not started")
        _settle(pending, CatalogError(message))
        return pending.done

    async def commit(self, record: InstanceRecord) -> AddResult:
        """Queue ``record`` and wait, from an event loop, until it is committed."""
        return await asyncio.wrap_future(self.submit(record))

    def _run(self, db: sqlite3.Connection) -> None:
        try:
            while (first := self._queue.get()) is not None:
                batch = [first]
                stopping = False
                while not self._queue.empty():
                    item = self._queue.get_nowait()
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                self._commit(db, batch)
                if stopping:
                    break
        finally:
            db.close()

    def _commit(self, db: sqlite3.Connection, batch: list[_Pending]) -> None:
        for pending in [p for p in batch if p.retract]:
            try:
                self._catalog.retract_on(db, pending.record)
            except Exception as exc:
                _settle(pending, exc)
            else:
                _settle(pending, AddResult.STORED)
        batch = [p for p in batch if not p.retract]
        if not batch:
            return
        try:
            results = self._catalog.add_instances_on(db, [p.record for p in batch])
        except Exception as exc:
            for pending in batch:
                _settle(pending, exc)
            return
        self.batches += 1
        for pending, result in zip(batch, results, strict=True):
            _settle(pending, result)


# More rows than can ever be in flight at once (one per association, a few per batch).
RECONCILE_ROWS = 10_000


async def reconcile_recent(catalog: Catalog, store: InstanceStore) -> int:
    """At start-up, before accepting peers: drop the newest rows whose file is missing.

    Ingest commits a row while its file is made durable; a crash in between leaves the row
    without its file. Such an instance was never acknowledged, so its row goes (the PACS
    sends it again). Returns how many rows were removed.
    """
    latest = await catalog.latest_instances(RECONCILE_ROWS)
    missing = await asyncio.to_thread(
        lambda: [row for row, sha in latest if not store.path_for(sha).exists()]
    )
    if missing:
        await catalog.forget_instances(missing)
        LOG.warning("removed %d catalog rows of instances never acknowledged (their files "
                    "were not written before the node stopped)", len(missing))  # fmt: skip
    return len(missing)


class IngestService:
    """The C-STORE handler, bound to a store, a writer and the loop the writer runs on."""

    def __init__(
        self,
        store: InstanceStore,
        writer: CatalogWriter,
        *,
        max_instance_bytes: int,
        clock: Callable[[], float] = time.time,
        commit_timeout: float = 120.0,
    ) -> None:
        self._store = store
        self._writer = writer
        self._max_bytes = max_instance_bytes
        self._clock = clock
        self._commit_timeout = commit_timeout

    def handle_store(self, event: Any) -> int:
        """EVT_C_STORE handler: returns a status; Success only once durable."""
        request = event.request
        sop_class = str(request.AffectedSOPClassUID or "")
        sop_instance = str(request.AffectedSOPInstanceUID or "")
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        if not (is_valid_uid(sop_class) and is_valid_uid(sop_instance)):
            LOG.warning(
                "refused an instance from %s: invalid SOP Class or Instance UID", calling_ae,
                extra=refusal_fields(calling_ae, "invalid_uid"),
            )  # fmt: skip
            return STATUS.CANNOT_UNDERSTAND
        try:
            stored = self._store.adopt(Path(event.dataset_path), self._max_bytes)
        except LimitExceeded as exc:
            fields = refusal_fields(calling_ae, "too_large", limit=self._max_bytes)
            LOG.warning("refused an instance from %s: %s", calling_ae, exc, extra=fields)
            return STATUS.OUT_OF_RESOURCES
        except OSError as exc:
            LOG.error("could not store an instance from %s: %s", calling_ae, exc.strerror or exc)
            return STATUS.OUT_OF_RESOURCES
        return self._catalogue(
            stored, sop_class, sop_instance, str(event.context.transfer_syntax), calling_ae
        )

    @property
    def store(self) -> InstanceStore:
        return self._store

    @property
    def max_instance_bytes(self) -> int:
        return self._max_bytes

    def commit_received(self, received: ReceivedInstance) -> int:
        """For the storage receiver: make its file durable and catalogue it, together.

        The receiver has hashed the file and checked the UIDs and the size cap while
        receiving, and usually parsed the header too, so the row can be committed while
        the file is fsynced and linked: the two disk flushes overlap. Success still waits
        for both. A row whose file then fails is retracted; a crash between the two leaves
        a row without a file, which :func:`reconcile_recent` removes at the next start
        (it was never acknowledged).
        """
        # A header running past the head is read from the placed file, after placing.
        early = received.early is not None or len(received.head) >= received.size
        submitted = self._submit(received) if early else None
        stored = self._place(received)
        if stored is None:
            if submitted is not None:
                self._retract(*submitted)
            return STATUS.OUT_OF_RESOURCES
        row, record = submitted or self._submit(received)
        return self._await_row(row, stored, record, received.calling_ae)

    def _submit(
        self, received: ReceivedInstance
    ) -> tuple[concurrent.futures.Future[AddResult], InstanceRecord]:
        """Hand the instance's catalog row to the writer; its future and the record."""
        record = self._record(
            self._store.path_for(received.sha256),
            received.head,
            received.size,
            received.sha256,
            received.sop_class_uid,
            received.sop_instance_uid,
            received.transfer_syntax_uid,
            received.calling_ae,
            received.early,
        )
        return self._writer.submit(record), record

    def _place(self, received: ReceivedInstance) -> StoredFile | None:
        try:
            return self._store.place_pending(
                received.pending, received.sha256, received.size, received.head
            )
        except OSError as exc:
            LOG.error("could not store an instance from %s: %s",
                      received.calling_ae, exc.strerror or exc)  # fmt: skip
            return None

    def _retract(self, row: concurrent.futures.Future[AddResult], record: InstanceRecord) -> None:
        try:
            if row.result(self._commit_timeout) is AddResult.DUPLICATE:
                return  # the row and its file were there before
            self._writer.retract(record).result(self._commit_timeout)
        except Exception as exc:
            LOG.error("could not retract the catalog row of a failed instance (%s); "
                      "it is removed at the next start", exc)  # fmt: skip

    def _catalogue(
        self,
        stored: StoredFile,
        sop_class: str,
        sop_instance: str,
        transfer_syntax: str,
        calling_ae: str,
    ) -> int:
        record = self._record(stored.path, stored.head, stored.size, stored.sha256,
                              sop_class, sop_instance, transfer_syntax, calling_ae)  # fmt: skip
        return self._await_row(self._writer.submit(record), stored, record, calling_ae)

    def _record(
        self,
        path: Path,
        head: bytes,
        size: int,
        sha256: bytes,
        sop_class: str,
        sop_instance: str,
        transfer_syntax: str,
        calling_ae: str,
        early: HeaderAttributes | None = None,
    ) -> InstanceRecord:
        """The catalog record of an instance stored (or about to be) at ``path``."""
        return read_instance_record(
            path,
            head=head,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            transfer_syntax_uid=transfer_syntax,
            size=size,
            sha256=sha256,
            calling_ae=calling_ae,
            received_at=self._clock(),
            early=early,
        )

    def _await_row(
        self,
        row: concurrent.futures.Future[AddResult],
        stored: StoredFile,
        record: InstanceRecord,
        calling_ae: str,
    ) -> int:
        try:
            result = row.result(self._commit_timeout)
        except Exception as exc:
            ref = stored.sha256.hex()[:12]
            LOG.error("catalog commit failed for instance %s: %s", ref, exc,
                      extra={"event": "instance_failed", "instance": ref})  # fmt: skip
            return STATUS.PROCESSING_FAILURE
        self._log_stored(stored, record, result, calling_ae)
        return STATUS.SUCCESS

    def discard_partial(self, event: Any) -> None:
        """EVT_CONN_CLOSE: delete the dataset a vanished peer left half-written.

        pynetdicom streams a dataset into a temporary file as it arrives and forgets it if
        the connection ends mid-dataset; nothing of it was acknowledged or catalogued.
        """
        message = getattr(getattr(event.assoc, "dimse", None), "message", None)
        partial = getattr(message, "_data_set_file", None)
        if partial is None:
            return
        with contextlib.suppress(OSError):
            partial.close()
            Path(partial.name).unlink(missing_ok=True)
            LOG.warning("association from %s ended mid-dataset: partial data discarded",
                        str(event.assoc.requestor.ae_title).strip())  # fmt: skip

    @staticmethod
    def _log_stored(
        stored: StoredFile, record: InstanceRecord, result: AddResult, calling_ae: str
    ) -> None:
        # Content digests, sizes and AE titles only: no UID or patient value in the log.
        ref = stored.sha256.hex()[:12]
        fields = {"instance": ref, "bytes": stored.size, "calling_ae": calling_ae}
        if result is AddResult.CONFLICT:
            LOG.warning(
                "instance %s from %s: same SOP Instance UID as a stored instance "
                "with different bytes; both versions kept and flagged",
                ref,
                calling_ae,
                extra={"event": "instance_conflict", **fields},
            )
        elif record.parse_error:
            LOG.warning(
                "instance %s from %s kept but not catalogued: %s",
                ref,
                calling_ae,
                record.parse_error,
                extra={"event": "instance_unparsed", **fields},
            )
        else:
            LOG.info("stored instance %s (%d bytes) from %s: %s",
                     ref, stored.size, calling_ae, result.name.lower(),
                     extra={"event": "instance_stored", **fields,
                            "result": result.value})  # fmt: skip


def refusal_fields(calling_ae: str, reason: str, **more: int) -> dict[str, object]:
    """Log fields of a refused instance, on either receive path: never a UID."""
    return {"event": "instance_refused", "calling_ae": calling_ae, "reason": reason, **more}
