"""The backup service: turns stable studies into bundles stored on partner sites.

One pass (:meth:`BackupService.run_once`) does, in order, each step a catalog transaction
so that a stop anywhere resumes without losing or repeating work::

    mark quiet studies stable and queue them          (catalog)
    plan bundles for every queued study               (ledger: planned)
    encode each planned bundle into fragment files    (worker thread; ledger: encoded)
    place each encoded bundle's missing shares        (DHT + transport; ledger: placements)
        (the next bundle is encoded while earlier ones upload, PLACE_AHEAD at most)
    settle bundles (stored / degraded) and studies    (ledger; study PROTECTED)
    tell the trusted peers about protected studies    (catalog replicas)
    remove local copies the retention setting frees   (ledger: pruned_at, then unlink)

It runs beside ingest: the catalog orders the two, and a study that receives an instance
meanwhile simply goes back to RECEIVING and is bundled again (only its new instances)
once quiet.

The service reaches the mesh through :class:`Partners` (the node wires it to the DHT and
the fragment transport) and announces protected studies through :class:`StudyPublisher`
(the trusted-peer catalog replication); both are small protocols so that this module
stays about the pipeline's order, not about sockets.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

from meshpacs.backup.encode import EncodedFiles, discard_work, encode_to_files, reuse_encoded
from meshpacs.backup.placement import Candidate, placement_key, rank_candidates
from meshpacs.backup.upload import UploadPolicy, place_shares
from meshpacs.erasure import fragment_id
from meshpacs.erasure.layout import FragmentHeader
from meshpacs.errors import InputChanged, MeshError
from meshpacs.keys import SiteKeys, unwrap_data_key, wrap_data_key
from meshpacs.keys.wrap import DATA_KEY_SIZE
from meshpacs.metadata import Catalog, ledger
from meshpacs.metadata.ledger import BundlePlan, BundleRow

__all__ = ["BackupService", "BackupSettings", "Partners", "PassReport", "StudyPublisher"]

# Bundles encoded but not yet placed, at most: the codec works on the next while these
# upload, and their work files (n/k times the bundle) stay bounded on disk.
PLACE_AHEAD = 2

_log = logging.getLogger("meshpacs.backup")


class Partners(Protocol):
    """The mesh as the backup pipeline sees it."""

    async def candidates(self, key: bytes, count: int) -> list[Candidate]:
        """Up to ``count`` member sites near ``key``, from their signed node records."""
        ...

    async def put(self, site_id: str, fragment_id: str, path: Path) -> None:
        """Store the fragment file at the site; returns once it is durably acknowledged."""
        ...

    async def delete(self, site_id: str, fragment_id: str) -> None:
        """Ask the site to drop a fragment of ours."""
        ...


class StudyPublisher(Protocol):
    """Sends a protected study's catalog record to the site's trusted peers."""

    async def study_protected(self, study_ref: int) -> None: ...

    async def unplaced_protected(self, bundle_ref: int) -> None:
        """The same for a bundle of unparsed instances, which belongs to no study."""
        ...


@dataclass(frozen=True)
class BackupSettings:
    """Bundle shape, placement and timing (from the node's ``[backup]`` config)."""

    plan: BundlePlan
    happy: int
    stable_seconds: float = 60.0
    spare_sites: int = 2
    upload: UploadPolicy = field(default_factory=UploadPolicy)
    keep_local_seconds: float | None = None  # None: keep local copies for ever

    def __post_init__(self) -> None:
        if not self.plan.k <= self.happy <= self.plan.n:
            raise ValueError(f"happy must be between k and n, got {self.happy}")


@dataclass
class PassReport:
    """What one pass did: counts, for logs and tests."""

    queued: int = 0
    planned: int = 0
    encoded: int = 0
    stored: int = 0
    degraded: int = 0
    waiting: int = 0  # encoded bundles still below happy (too few partners)
    protected: int = 0
    failed: int = 0
    pruned: int = 0  # local instance files removed under the retention setting


class BackupService:
    """Runs the backup pipeline for one site over its catalog and instance store."""

    def __init__(
        self,
        *,
        site_id: str,
        keys: SiteKeys,
        catalog: Catalog,
        instance_path: Callable[[bytes], Path],
        partners: Partners,
        settings: BackupSettings,
        work_dir: Path,
        publisher: StudyPublisher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.site_id = site_id
        self._keys = keys
        self._catalog = catalog
        self._instance_path = instance_path
        self._partners = partners
        self._settings = settings
        self._work_dir = work_dir
        self._publisher = publisher
        self._clock = clock
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Start the next pass now (a study became stable, a partner came back...)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event, interval: float = 5.0) -> None:
        """Pass after pass until ``stop`` is set; a failing pass is logged, not fatal."""
        while not stop.is_set():
            try:
                await self.run_once()
            except MeshError as error:
                _log.error("backup pass failed: %s", error)
            self._wake.clear()
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            await asyncio.wait(waiters, timeout=interval, return_when="FIRST_COMPLETED")
            for waiter in waiters:
                waiter.cancel()

    async def run_once(self) -> PassReport:
        report = PassReport()
        plan = self._settings.plan
        report.queued = len(await self._catalog.mark_stable(self._settings.stable_seconds))
        studies = await self._catalog.read(ledger.queued_studies)
        for study_ref in studies:
            created = await self._catalog.write(
                partial(
                    ledger.plan_bundles,
                    study_ref=study_ref,
                    plan=plan,
                    new_bundle=self._new_bundle,
                    now=self._clock(),
                )
            )
            report.planned += len(created)
        unplaced = await self._catalog.write(
            partial(
                ledger.plan_unplaced,
                plan=plan,
                new_bundle=self._new_bundle,
                now=self._clock(),
                received_before=self._clock() - self._settings.stable_seconds,
            )
        )
        report.planned += len(unplaced)
        await self._encode_and_place(report)
        for study_ref in studies:
            if await self._catalog.write(partial(ledger.settle_study, study_ref=study_ref)):
                report.protected += 1
                _log.info("study row %d protected", study_ref)
                if self._publisher is not None:
                    await self._publisher.study_protected(study_ref)
        report.pruned = await self._prune()
        return report

    async def _prune(self) -> int:
        """Remove local copies the retention setting lets go; the rows stay (marked)."""
        keep = self._settings.keep_local_seconds
        if keep is None:
            return 0
        cutoff = self._clock() - keep
        pruned = 0
        while True:
            batch = await self._catalog.read(lambda db: ledger.prunable_instances(db, cutoff))
            if not batch:
                return pruned
            ids = [row for row, _ in batch]
            await self._catalog.write(partial(ledger.mark_pruned, row_ids=ids, now=self._clock()))
            for _, sha256 in batch:
                await asyncio.to_thread(self._instance_path(sha256).unlink, missing_ok=True)
            pruned += len(batch)
            _log.info("retention: removed %d local instance files now held by the mesh", len(batch))

    async def _encode_and_place(self, report: PassReport) -> None:
        """Encode planned bundles one by one while earlier ones are being placed.

        At most ``PLACE_AHEAD`` bundles are encoded and not yet placed at a time, so the
        work files on disk stay bounded while the codec and the uploads overlap.
        """
        ahead = asyncio.Semaphore(PLACE_AHEAD)
        placing: list[asyncio.Task[None]] = []

        async def place(row: BundleRow) -> None:
            try:
                state = await self._place(row)
            finally:
                ahead.release()
            if state == "stored":
                report.stored += 1
            elif state == "degraded":
                report.degraded += 1
            else:
                report.waiting += 1
            settled = state in ("stored", "degraded")
            if row.study_ref is None and settled and self._publisher is not None:
                await self._publisher.unplaced_protected(row.ref)

        try:
            for row in await self._catalog.read(ledger.encoded_bundles):
                await ahead.acquire()
                placing.append(asyncio.create_task(place(row)))
            for row in await self._catalog.read(ledger.planned_bundles):
                await ahead.acquire()
                if not await self._encode(row):
                    ahead.release()
                    report.failed += 1
                    continue
                report.encoded += 1
                encoded = await self._catalog.read(partial(ledger.bundle, ref=row.ref))
                placing.append(asyncio.create_task(place(encoded)))
            await asyncio.gather(*placing)
        finally:
            for task in placing:
                task.cancel()

    def _new_bundle(self) -> tuple[bytes, bytes]:
        bundle_id = secrets.token_bytes(16)
        data_key = secrets.token_bytes(DATA_KEY_SIZE)
        return bundle_id, wrap_data_key(self._keys.key_wrap, bundle_id, data_key)

    def _data_key(self, row: BundleRow) -> bytes:
        return unwrap_data_key(self._keys.key_wrap, row.bundle_id, row.wrapped_key)

    async def _encode(self, row: BundleRow) -> bool:
        files = await self._encode_files(row)
        if files is None:
            return False
        ref = files.ref
        await self._catalog.write(
            lambda db: ledger.record_encoded(db, row.ref, ref.length, ref.set_hash)
        )
        return True

    async def _files(self, row: BundleRow) -> EncodedFiles | None:
        """The encoded bundle's fragment files: left by an earlier pass, or encoded again."""
        return reuse_encoded(row, self._work_dir) or await self._encode_files(row)

    async def _encode_files(self, row: BundleRow) -> EncodedFiles | None:
        members = await self._catalog.read(lambda db: ledger.bundle_members(db, row.ref))
        try:
            return await asyncio.to_thread(
                encode_to_files,
                row,
                members,
                self._instance_path,
                self._data_key(row),
                self._work_dir,
            )
        except (InputChanged, OSError) as error:
            # Never place what does not match the catalog: the bundle waits and the
            # operator sees why (the integrity audit of a later issue repairs it).
            _log.error("bundle row %d cannot be encoded: %s", row.ref, error)
            return None

    async def _place(self, row: BundleRow) -> str:
        assert row.length is not None
        files = await self._files(row)
        if files is None:
            return row.state
        placed = await self._catalog.read(lambda db: ledger.placements(db, row.ref))
        already = ledger.distinct_shares(placed)
        header = FragmentHeader(row.k, row.n, 0, row.segment_size, row.length, row.bundle_id)
        key = placement_key(row.bundle_id)
        wanted = row.n + self._settings.spare_sites
        ranked = rank_candidates(
            key,
            await self._partners.candidates(key, wanted + len(already) + 1),
            owner_site=self.site_id,
            fragment_size=header.fragment_size,
            exclude=list(already.values()),
        )
        ids = [fragment_id(self._keys.fragment_id, row.bundle_id, s) for s in range(row.n)]

        async def put(site: str, share: int) -> None:
            await self._partners.put(site, ids[share], files.paths[share])

        async def delete(site: str, share: int) -> None:
            await self._partners.delete(site, ids[share])

        async def on_placed(share: int, site: str) -> None:
            now = self._clock()
            await self._catalog.write(
                lambda db: ledger.record_placement(db, row.ref, share, site, ids[share], now)
            )

        outcome = await place_shares(
            range(row.n),
            [c.site_id for c in ranked],
            put,
            delete,
            on_placed,
            policy=self._settings.upload,
            already=already,
        )
        state = await self._catalog.write(
            lambda db: ledger.settle_bundle(db, row.ref, self._settings.happy, self._clock())
        )
        if state in ("stored", "degraded"):
            discard_work(row, self._work_dir)
        else:
            _log.warning(
                "bundle row %d has %d of %d shares placed (happy is %d); will retry",
                row.ref,
                len(outcome.placed),
                row.n,
                self._settings.happy,
            )
        return state
