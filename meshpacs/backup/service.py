"""The backup service: turns stable studies into bundles stored on partner sites.

One pass (:meth:`BackupService.run_once`) does, in order, each step a catalog transaction
so that a stop anywhere resumes without losing or repeating work::

    mark quiet studies stable and queue them          (catalog)
    plan bundles for every queued study               (ledger: planned)
    encode each planned bundle, its shares streaming  (worker thread + transport;
        to n partners as the codec makes them          ledger: encoded, placements)
    place shares that did not stream, from work files (hedged uploads; ledger: placements)
        (BUNDLES_AT_ONCE bundles in flight at a time)
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
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

from meshpacs.audit.reputation import DEFAULT_FLOOR, DEFAULT_HALF_LIFE
from meshpacs.audit.tap import DEFAULT_CHALLENGES
from meshpacs.backup.encode import (
    Encoded,
    EncodedFiles,
    NullSink,
    discard_work,
    encode_into,
    encode_to_files,
    length_of,
    reuse_encoded,
)
from meshpacs.backup.placement import Candidate, placement_key, rank_candidates
from meshpacs.backup.stream import ShareChannel
from meshpacs.backup.upload import UploadPolicy, place_shares
from meshpacs.erasure import fragment_id
from meshpacs.erasure.layout import FragmentHeader
from meshpacs.errors import InputChanged, MeshError
from meshpacs.keys import SiteKeys, unwrap_data_key, wrap_data_key
from meshpacs.keys.wrap import DATA_KEY_SIZE
from meshpacs.metadata import Catalog, health, ledger
from meshpacs.metadata.ledger import BundleMember, BundlePlan, BundleRow

__all__ = ["BackupService", "BackupSettings", "Partners", "PassReport", "StudyPublisher"]

# Bundles streaming or being placed at once: while one waits on its slowest partner's
# commit, the codec already works on the next; memory and work files stay bounded.
BUNDLES_AT_ONCE = 2

_log = logging.getLogger("meshpacs.backup")


class Partners(Protocol):
    """The mesh as the backup pipeline sees it."""

    async def candidates(self, key: bytes, count: int) -> list[Candidate]:
        """Up to ``count`` member sites near ``key``, from their signed node records."""
        ...

    async def put(self, site_id: str, fragment_id: str, path: Path) -> None:
        """Store the fragment file at the site; returns once it is durably acknowledged."""
        ...

    async def put_stream(
        self, site_id: str, fragment_id: str, size: int, chunks: AsyncIterator[bytes]
    ) -> None:
        """Store a fragment of ``size`` bytes as ``chunks`` yields it; acknowledged durably.

        If ``chunks`` raises, the site must keep nothing of it.
        """
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
    challenges_per_share: int = DEFAULT_CHALLENGES  # audit challenges planned at upload
    reputation_floor: float = DEFAULT_FLOOR  # peers audited below it get no new fragments
    reputation_half_life: float = DEFAULT_HALF_LIFE

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
                _log.error("backup pass failed: %s", error, extra={"event": "backup_failed"})
            self._wake.clear()
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            await asyncio.wait(waiters, timeout=interval, return_when="FIRST_COMPLETED")
            for waiter in waiters:
                waiter.cancel()

    async def run_once(self) -> PassReport:
        report = PassReport()
        plan = self._settings.plan
        report.queued = len(await self._catalog.mark_stable(self._settings.stable_seconds))
        if report.queued:
            _log.info("%d studies stable and queued for backup", report.queued,
                      extra={"event": "studies_stable", "studies": report.queued})  # fmt: skip
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
                _log.info("study row %d protected", study_ref,
                          extra={"event": "study_protected", "study_row": study_ref})  # fmt: skip
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
            _log.info("retention: removed %d local instance files now held by the mesh",
                      len(batch), extra={"event": "pruned", "instances": len(batch)})  # fmt: skip

    async def _encode_and_place(self, report: PassReport) -> None:
        """Stream each planned bundle to its partners; place what earlier passes left.

        At most ``BUNDLES_AT_ONCE`` bundles are in flight, so memory (each streaming share
        holds a few chunks) and work files stay bounded while the codec, the network and
        the partners' disks all stay busy.
        """
        slots = asyncio.Semaphore(BUNDLES_AT_ONCE)
        running: list[asyncio.Task[None]] = []

        async def settled(row: BundleRow, state: str) -> None:
            if state == "stored":
                report.stored += 1
            elif state == "degraded":
                report.degraded += 1
            else:
                report.waiting += 1
            settled = state in ("stored", "degraded")
            if settled:
                await self._log_placed(row, state)
            if row.study_ref is None and settled and self._publisher is not None:
                await self._publisher.unplaced_protected(row.ref)

        async def place(row: BundleRow) -> None:
            try:
                state = await self._place(row)
            finally:
                slots.release()
            await settled(row, state)

        async def stream(row: BundleRow) -> None:
            try:
                state = await self._stream(row)
            finally:
                slots.release()
            if state is None:
                report.failed += 1
                return
            report.encoded += 1
            await settled(row, state)

        try:
            for row in await self._catalog.read(ledger.encoded_bundles):
                await slots.acquire()
                running.append(asyncio.create_task(place(row)))
            for row in await self._catalog.read(ledger.planned_bundles):
                await slots.acquire()
                running.append(asyncio.create_task(stream(row)))
            await asyncio.gather(*running)
        finally:
            for task in running:
                task.cancel()

    async def _log_placed(self, row: BundleRow, state: str) -> None:
        """The bundle's one line as it settles: random ID prefix, size, shape and holders."""
        placed = await self._catalog.read(lambda db: ledger.placements(db, row.ref))
        length = (await self._catalog.read(partial(ledger.bundle, ref=row.ref))).length
        sites = [site for _, site in sorted(ledger.distinct_shares(placed).items())]
        prefix = row.bundle_id.hex()[:8]
        _log.info(
            "bundle %s (row %d) placed: %d bytes as %d-of-%d on %d sites, %s",
            prefix, row.ref, length or 0, row.k, row.n, len(sites), state,
            extra={"event": "bundle_placed", "bundle": prefix, "bundle_row": row.ref,
                   "bytes": length, "k": row.k, "n": row.n, "sites": sites, "state": state},
        )  # fmt: skip

    def _new_bundle(self) -> tuple[bytes, bytes]:
        bundle_id = secrets.token_bytes(16)
        data_key = secrets.token_bytes(DATA_KEY_SIZE)
        return bundle_id, wrap_data_key(self._keys.key_wrap, bundle_id, data_key)

    def _data_key(self, row: BundleRow) -> bytes:
        return unwrap_data_key(self._keys.key_wrap, row.bundle_id, row.wrapped_key)

    async def _stream(self, row: BundleRow) -> str | None:
        """Encode a planned bundle while its shares stream to partners; its state after.

        Shares that did not stream (partner failed or stalled, too few partners) are then
        placed from work files by :meth:`_place`. None when the bundle cannot be encoded.
        """
        members = await self._catalog.read(lambda db: ledger.bundle_members(db, row.ref))
        header = self._header(row, length_of(members))
        already = ledger.distinct_shares(
            await self._catalog.read(lambda db: ledger.placements(db, row.ref))
        )
        ranked = await self._ranked(row, header.fragment_size, already)
        missing = [share for share in range(row.n) if share not in already]
        targets = dict(zip(missing, ranked, strict=False))
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        channels = {
            share: ShareChannel(loop, stall_seconds=self._settings.upload.stall_seconds, stop=stop)
            for share in targets
        }
        ids = self._fragment_ids(row)
        uploads = [
            asyncio.create_task(
                self._stream_share(row, share, site, ids[share], header, channels[share])
            )
            for share, site in targets.items()
        ]
        outputs = [channels.get(share, NullSink()) for share in range(row.n)]
        try:
            encoded = await asyncio.to_thread(self._encode_streams, row, members, outputs)
        except (InputChanged, OSError) as error:
            await asyncio.gather(*uploads, return_exceptions=True)
            # Never place what does not match the catalog: the bundle waits and the
            # operator sees why (the integrity audit of a later issue repairs it).
            _log.error("bundle row %d cannot be encoded: %s", row.ref, error,
                       extra={"event": "bundle_unreadable", "bundle_row": row.ref})  # fmt: skip
            return None
        except BaseException:
            stop.set()
            for upload in uploads:
                upload.cancel()
            raise
        await self._catalog.write(partial(_record_encoded, bundle_ref=row.ref, encoded=encoded))
        await _finish_uploads(uploads, [channels[share] for share in targets])
        state = await self._settle(row)
        if state == "stored":
            return state
        now_encoded = await self._catalog.read(partial(ledger.bundle, ref=row.ref))
        return await self._place(now_encoded)

    def _encode_streams(
        self, row: BundleRow, members: list[BundleMember], outputs: list[ShareChannel | NullSink]
    ) -> Encoded:
        channels = [output for output in outputs if isinstance(output, ShareChannel)]
        try:
            encoded = encode_into(
                row,
                members,
                self._instance_path,
                self._data_key(row),
                outputs,
                challenges=self._settings.challenges_per_share,
            )
        except BaseException as error:
            for channel in channels:
                channel.fail(error)
            raise
        for channel in channels:
            channel.close()
        return encoded

    async def _stream_share(
        self,
        row: BundleRow,
        share: int,
        site: str,
        fragment: str,
        header: FragmentHeader,
        channel: ShareChannel,
    ) -> None:
        try:
            await self._partners.put_stream(site, fragment, header.fragment_size, channel.chunks())
        except (MeshError, OSError, TimeoutError) as error:
            reason = str(error) or type(error).__name__
            channel.release(reason)
            _log.info("share %d of bundle row %d not streamed to site %s: %s",
                      share, row.ref, site, reason,
                      extra={"bundle_row": row.ref, "share": share, "site": site})  # fmt: skip
            return
        except BaseException:
            channel.release("cancelled")
            raise
        now = self._clock()
        await self._catalog.write(
            lambda db: ledger.record_placement(db, row.ref, share, site, fragment, now)
        )

    async def _encode_files(self, row: BundleRow, shares: list[int]) -> EncodedFiles | None:
        members = await self._catalog.read(lambda db: ledger.bundle_members(db, row.ref))
        try:
            files = await asyncio.to_thread(
                encode_to_files,
                row,
                members,
                self._instance_path,
                self._data_key(row),
                self._work_dir,
                shares,
                challenges=self._settings.challenges_per_share,
            )
        except (InputChanged, OSError) as error:
            _log.error("bundle row %d cannot be encoded: %s", row.ref, error,
                       extra={"event": "bundle_unreadable", "bundle_row": row.ref})  # fmt: skip
            return None
        sets = files.challenge_sets
        await self._catalog.write(lambda db: health.record_challenges(db, row.ref, sets))
        return files

    def _header(self, row: BundleRow, length: int) -> FragmentHeader:
        return FragmentHeader(row.k, row.n, 0, row.segment_size, length, row.bundle_id)

    def _fragment_ids(self, row: BundleRow) -> list[str]:
        return [fragment_id(self._keys.fragment_id, row.bundle_id, s) for s in range(row.n)]

    async def _ranked(
        self, row: BundleRow, fragment_size: int, already: dict[int, str]
    ) -> list[str]:
        """Candidate sites for the bundle's missing shares, closest first, spares after."""
        key = placement_key(row.bundle_id)
        wanted = row.n + self._settings.spare_sites
        shunned = await self._shunned()
        ranked = rank_candidates(
            key,
            await self._partners.candidates(key, wanted + len(already) + len(shunned) + 1),
            owner_site=self.site_id,
            fragment_size=fragment_size,
            exclude=[*already.values(), *shunned],
        )
        return [candidate.site_id for candidate in ranked]

    async def _shunned(self) -> set[str]:
        """Peers whose audits went badly enough that they get no new fragments."""
        settings = self._settings
        now = self._clock()
        return await self._catalog.read(
            lambda db: health.shunned_sites(
                db, settings.reputation_floor, now, settings.reputation_half_life
            )
        )

    async def _settle(self, row: BundleRow) -> str:
        return await self._catalog.write(
            lambda db: ledger.settle_bundle(db, row.ref, self._settings.happy, self._clock())
        )

    async def _place(self, row: BundleRow) -> str:
        """Place an encoded bundle's missing shares from work files (hedged), then settle."""
        assert row.length is not None
        already = ledger.distinct_shares(
            await self._catalog.read(lambda db: ledger.placements(db, row.ref))
        )
        missing = [share for share in range(row.n) if share not in already]
        if missing:
            files = reuse_encoded(row, self._work_dir, missing) or await self._encode_files(
                row, missing
            )
            if files is None:
                return row.state
            await self._upload_files(row, files, already, missing)
        state = await self._settle(row)
        if state in ("stored", "degraded"):
            discard_work(row, self._work_dir)
        else:
            placed = await self._catalog.read(lambda db: ledger.placements(db, row.ref))
            count = len(ledger.distinct_shares(placed))
            _log.warning(
                "bundle row %d has %d of %d shares placed (happy is %d); will retry",
                row.ref, count, row.n, self._settings.happy,
                extra={"event": "bundle_waiting", "bundle_row": row.ref, "placed": count,
                       "n": row.n, "happy": self._settings.happy},
            )  # fmt: skip
        return state

    async def _upload_files(
        self, row: BundleRow, files: EncodedFiles, already: dict[int, str], missing: list[int]
    ) -> None:
        assert row.length is not None
        header = self._header(row, row.length)
        sites = await self._ranked(row, header.fragment_size, already)
        ids = self._fragment_ids(row)

        async def put(site: str, share: int) -> None:
            await self._partners.put(site, ids[share], files.paths[share])

        async def delete(site: str, share: int) -> None:
            await self._partners.delete(site, ids[share])

        async def on_placed(share: int, site: str) -> None:
            now = self._clock()
            await self._catalog.write(
                lambda db: ledger.record_placement(db, row.ref, share, site, ids[share], now)
            )

        await place_shares(
            missing, sites, put, delete, on_placed, policy=self._settings.upload, already=already
        )


def _record_encoded(db: sqlite3.Connection, bundle_ref: int, encoded: Encoded) -> None:
    """Length, set hash and audit challenges of a bundle, in one transaction."""
    ledger.record_encoded(db, bundle_ref, encoded.ref.length, encoded.ref.set_hash)
    health.record_challenges(db, bundle_ref, encoded.challenge_sets)


async def _finish_uploads(uploads: list[asyncio.Task[None]], channels: list[ShareChannel]) -> None:
    """Wait for the streamed uploads; cancel those whose share was detached.

    A detached share's partner stopped taking bytes: its upload may be stuck in a write
    that never drains, so it is cancelled (the partner discards a fragment that did not
    arrive whole) and the share is placed afterwards from a work file.
    """
    for upload, channel in zip(uploads, channels, strict=True):
        if channel.detached is not None:
            upload.cancel()
    results = await asyncio.gather(*uploads, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
