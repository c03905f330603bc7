"""C-STORE ingest: exact bytes on disk and a committed catalog row before Success.

pynetdicom calls :meth:`IngestService.handle_store` in one of its association threads. The
dataset has already been streamed, as received, into a Part 10 temporary file whose file
meta pynetdicom built from the association's presentation context
(``STORE_RECV_CHUNKED_DATASET``): nothing is decoded or re-encoded. In that thread the
handler hashes the file in one read and fsyncs it, renames it to its content address and
fsyncs the directory entry (:meth:`InstanceStore.adopt`), parses the catalog attributes
from the head of the file that the hashing read kept in memory, and hands the record to the
:class:`CatalogWriter` on the node's event loop (one hop). It then blocks until the batch
holding the record is committed (WAL, synchronous=FULL). Only then does the PACS get
Success.

Group commit: the writer takes every record waiting when it starts a batch, so parallel
associations share one commit (one WAL fsync) instead of paying one each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshpacs.dicom.attributes import read_instance_record
from meshpacs.dicom.identifiers import is_valid_uid
from meshpacs.dicom.storage import InstanceStore, StoredFile
from meshpacs.errors import CatalogError, LimitExceeded
from meshpacs.metadata.catalog import Catalog
from meshpacs.metadata.records import AddResult, InstanceRecord

__all__ = ["STATUS", "CatalogWriter", "IngestService"]

LOG = logging.getLogger("meshpacs.ingest")


class STATUS:
    """C-STORE statuses the node answers (PS3.4 Annex B.2.3)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  # disk full, or an instance over the size cap
    CANNOT_UNDERSTAND = 0xC000  # invalid identifiers in the request
    PROCESSING_FAILURE = 0xC211  # anything unexpected: nothing was acknowledged


@dataclass
class _Pending:
    record: InstanceRecord
    done: concurrent.futures.Future[AddResult]


def _settle(pending: _Pending, outcome: AddResult | BaseException) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if isinstance(outcome, BaseException):
            pending.done.set_exception(outcome)
        else:
            pending.done.set_result(outcome)


class CatalogWriter:
    """Commits records in batches on the event loop; callers wait for their batch.

    The instance files reach the writer already durable, directory entries included
    (:meth:`InstanceStore.adopt`); the writer only commits their catalog rows.
    """

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self.batches = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._task = self._loop.create_task(self._run(), name="catalog-writer")

    async def stop(self) -> None:
        """Stop committing; whatever is still waiting fails at once (the PACS resends)."""
        self._running = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            _settle(self._queue.get_nowait(), CatalogError("the catalog writer has stopped"))

    def submit(self, record: InstanceRecord) -> concurrent.futures.Future[AddResult]:
        """Queue ``record`` from any thread; the future resolves once it is committed.

        One hop onto the loop (no task per record); the writer resolves the future from
        the loop and the caller's thread wakes directly.
        """
        pending = _Pending(record, concurrent.futures.Future())
        if self._loop is None:
            _settle(pending, CatalogError("the catalog writer has not started"))
        else:
            self._loop.call_soon_threadsafe(self._enqueue, pending)
        return pending.done

    def _enqueue(self, pending: _Pending) -> None:
        if self._running:
            self._queue.put_nowait(pending)
        else:
            _settle(pending, CatalogError("the catalog writer has stopped"))

    async def commit(self, record: InstanceRecord) -> AddResult:
        """Queue ``record`` from the writer's loop and wait until it is committed."""
        return await asyncio.wrap_future(self.submit(record))

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await self._catalog.add_instances([p.record for p in batch])
            except asyncio.CancelledError:
                for pending in batch:
                    _settle(pending, CatalogError("the catalog writer has stopped"))
                raise
            except Exception as exc:
                for pending in batch:
                    _settle(pending, exc)
                continue
            self.batches += 1
            for pending, result in zip(batch, results, strict=True):
                _settle(pending, result)


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
                "refused an instance from %s: invalid SOP Class or Instance UID", calling_ae
            )
            return STATUS.CANNOT_UNDERSTAND
        try:
            stored = self._store.adopt(Path(event.dataset_path), self._max_bytes)
        except LimitExceeded as exc:
            LOG.warning("refused an instance from %s: %s", calling_ae, exc)
            return STATUS.OUT_OF_RESOURCES
        except OSError as exc:
            LOG.error("could not store an instance from %s: %s", calling_ae, exc.strerror or exc)
            return STATUS.OUT_OF_RESOURCES
        record = read_instance_record(
            stored.path,
            head=stored.head,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            transfer_syntax_uid=str(event.context.transfer_syntax),
            size=stored.size,
            sha256=stored.sha256,
            calling_ae=calling_ae,
            received_at=self._clock(),
        )
        try:
            result = self._writer.submit(record).result(self._commit_timeout)
        except Exception as exc:
            LOG.error("catalog commit failed for instance %s: %s", stored.sha256.hex()[:12], exc)
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
        if result is AddResult.CONFLICT:
            LOG.warning(
                "instance %s from %s: same SOP Instance UID as a stored instance "
                "with different bytes; both versions kept and flagged",
                ref,
                calling_ae,
            )
        elif record.parse_error:
            LOG.warning(
                "instance %s from %s kept but not catalogued: %s",
                ref,
                calling_ae,
                record.parse_error,
            )
        else:
            LOG.info("stored instance %s (%d bytes) from %s: %s",
                     ref, stored.size, calling_ae, result.name.lower())  # fmt: skip
