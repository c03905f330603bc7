"""The recovery run: plan, then for each bundle gather, decode, check and deliver.

::

    sealed records from the peers ─► plan (newest first) ─► for each bundle, in order:
        skip if the journal says the target holds all of it
        gather any k good fragments (parallel, fallbacks)      recovery.gather
        decode into instance files, each SHA-256 checked       recovery.decode
        deliver (C-STORE or files), journal what is acked      recovery.deliver
    ─► report (what came back, what could not and why)         recovery.report

Bundles are gathered and decoded a little ahead of delivery (``prefetch`` bundles), so
the network fetch of the next bundle overlaps the C-STOREs of this one, while the disk
holds at most ``prefetch + 1`` bundles' instances at a time. A bundle with fewer than k
good fragments is reported as unrecoverable and the run goes on with the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meshpacs.errors import CorruptBundle, MeshError, Unrecoverable
from meshpacs.recovery.decode import decode_to_files
from meshpacs.recovery.deliver import Deliverer, Restored
from meshpacs.recovery.gather import Fetch, FindHolders, gather_bundle
from meshpacs.recovery.journal import RecoveryJournal
from meshpacs.recovery.model import PlannedBundle, PlannedStudy
from meshpacs.recovery.report import RecoveryReport, ReportTally

__all__ = ["RecoveryRun", "RunSettings"]

_log = logging.getLogger("meshpacs.recovery")


@dataclass(frozen=True)
class RunSettings:
    fetch_parallel: int = 4
    fetch_timeout: float = 30.0
    prefetch: int = 2


@dataclass
class _Ready:
    study: PlannedStudy
    bundle: PlannedBundle
    items: list[Restored] = field(default_factory=list)
    folder: Path | None = None


class RecoveryRun:
    """One recovery of ``studies`` into ``deliverer``, journaled in ``journal``."""

    def __init__(
        self,
        *,
        studies: Sequence[PlannedStudy],
        key_wrap_key: bytes,
        fetch: Fetch,
        find_holders: FindHolders,
        deliverer: Deliverer,
        journal: RecoveryJournal,
        workdir: Path,
        settings: RunSettings | None = None,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        self._studies = list(studies)
        self._key = key_wrap_key
        self._fetch = fetch
        self._find = find_holders
        self._deliverer = deliverer
        self._journal = journal
        self._workdir = workdir
        self._settings = settings or RunSettings()
        self._say = say
        digests = [i.sha256 for s in self._studies for b in s.bundles for i in b.instances]
        self.tally = ReportTally(
            deliverer.identity, self._studies, journal.delivered_among(digests)
        )

    async def run(self) -> RecoveryReport:
        started = time.monotonic()
        self._workdir.mkdir(parents=True, exist_ok=True)
        queue: asyncio.Queue[_Ready | None] = asyncio.Queue(maxsize=self._settings.prefetch)
        producer = asyncio.create_task(self._produce(queue))
        try:
            await self._consume(queue)
            await producer
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
        return self.tally.report(time.monotonic() - started)

    def _pending(self) -> list[tuple[PlannedStudy, PlannedBundle]]:
        todo = []
        for study in self._studies:
            for bundle in study.bundles:
                if not self._journal.bundle_complete(bundle.bundle_id):
                    todo.append((study, bundle))
        return todo

    async def _produce(self, queue: asyncio.Queue[_Ready | None]) -> None:
        for study, bundle in self._pending():
            ready = await self._prepare(study, bundle)
            if ready is not None:
                await queue.put(ready)
        await queue.put(None)

    async def _prepare(self, study: PlannedStudy, bundle: PlannedBundle) -> _Ready | None:
        """Gather and decode one bundle into instance files; None if it cannot be had."""
        folder = self._workdir / bundle.bundle_id.hex()
        fragments_dir, instances_dir = folder / "fragments", folder / "instances"
        try:
            gathered = await gather_bundle(
                bundle,
                self._fetch,
                self._find,
                fragments_dir,
                parallel=self._settings.fetch_parallel,
                timeout=self._settings.fetch_timeout,
            )
            decoded = await asyncio.to_thread(
                lambda: list(decode_to_files(bundle, self._key, gathered.paths, instances_dir))
            )
        except (Unrecoverable, CorruptBundle) as error:
            shutil.rmtree(folder, ignore_errors=True)
            self.tally.record_unrecoverable(bundle, str(error))
            _log.error("bundle %s cannot be recovered: %s", bundle.bundle_id.hex(), error)
            return None
        except MeshError as error:
            shutil.rmtree(folder, ignore_errors=True)
            self.tally.record_unrecoverable(bundle, f"failed: {error}")
            _log.error("bundle %s failed: %s", bundle.bundle_id.hex(), error)
            return None
        shutil.rmtree(fragments_dir, ignore_errors=True)
        items = [Restored(instance, path, study.study_uid) for instance, path in decoded]
        return _Ready(study, bundle, items, folder)

    async def _consume(self, queue: asyncio.Queue[_Ready | None]) -> None:
        done = 0
        while (ready := await queue.get()) is not None:
            try:
                await self._deliverer.deliver(ready.items, progress=self.tally.record)
                self._journal.mark_complete(ready.study)
            finally:
                if ready.folder is not None:
                    shutil.rmtree(ready.folder, ignore_errors=True)
            done += 1
            self._say(f"bundle {done}: {len(ready.items)} instances delivered or already held")
