"""The owner's repairer: brings bundles with too few good shares back to n, on new sites.

One pass (:meth:`Repairer.repair_once`)::

    lost sites      audits found them unreachable for longer than the grace period
    reassess        each settled bundle stored (n good shares) or degraded (fewer)
    repair          for each bundle below its threshold, neediest first:
                      adopt what a delegate placed      (a missing share the DHT says a
                                                        new site holds, that the site
                                                        confirms: size, set hash, share)
                      gather k verified fragments      (recovery's gatherer: recorded
                                                        holders, then the DHT)
                      regenerate the missing shares    (erasure, keyless, in a thread)
                      place each on a new distinct site (closest to the bundle's key,
                                                        never the owner, a current holder,
                                                        a lost or a shunned site; hedged)
                      record each placement as it is acknowledged, then the attempt
                      tell the trusted peers (the study's catalog record names holders)
    collect         ask the holders of replaced placements to delete them; a lost site
                    that came back thus gives its surplus copies back

The holder of a new share publishes its own provider record on receipt, so the DHT
learns of the repair without the owner. A bundle with fewer than k good shares anywhere is
left for a later pass (its shares may come back) and logged as unrecoverable for now.

A trusted peer may have repaired while this site was down (:mod:`meshpacs.upkeep.
delegate`): its shares have the same IDs and bytes as the ones this site would make, so
adopting them is only recording where they are.

Logs name bundles by catalog row, shares by number and holders by site ID: no UID, no
patient data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO

from meshpacs.audit.reputation import DEFAULT_FLOOR, DEFAULT_HALF_LIFE
from meshpacs.backup.placement import placement_key
from meshpacs.backup.service import Partners, StudyPublisher
from meshpacs.backup.upload import UploadPolicy, place_shares
from meshpacs.erasure import BundleRef, CodingParams, fragment_id, regenerate_shares
from meshpacs.errors import MeshError, PeerUnreachable, Unrecoverable, brief
from meshpacs.metadata import Catalog, health
from meshpacs.metadata import repair as ledger
from meshpacs.recovery.gather import Fetch, FindHolders, gather_bundle
from meshpacs.recovery.model import PlannedBundle, ShareHolder
from meshpacs.transport.client import FragmentInfo
from meshpacs.upkeep.pacing import Pause, wait_or_stop
from meshpacs.upkeep.targets import repair_sites, repair_targets

__all__ = ["RepairPass", "RepairSettings", "Repairer", "regenerate_files"]

_log = logging.getLogger("meshpacs.repair")

# has_fragment(site, fragment_id): what the site holds of ours under that ID, if anything.
HasFragment = Callable[[str, str], Awaitable[FragmentInfo | None]]


@dataclass(frozen=True)
class RepairSettings:
    """When to repair and how hard to try (the node's ``[maintenance]`` config)."""

    threshold: int | None = None  # None: halfway between k and n (see repair_threshold)
    lost_after_seconds: float = 3 * 86400.0
    interval_seconds: float = 600.0
    bundles_per_pass: int = 20
    fetch_timeout_seconds: float = 30.0
    parallel_fetches: int = 4
    spare_sites: int = 2
    collect_per_pass: int = 200
    reputation_floor: float = DEFAULT_FLOOR
    half_life: float = DEFAULT_HALF_LIFE
    upload: UploadPolicy = field(default_factory=UploadPolicy)

    def __post_init__(self) -> None:
        if self.threshold is not None and not 2 <= self.threshold <= 256:
            raise ValueError(f"repair threshold must be 2..256 shares, not {self.threshold}")
        if self.lost_after_seconds < 0 or self.interval_seconds <= 0:
            raise ValueError("lost_after must not be negative, the repair interval positive")
        if self.bundles_per_pass < 1 or self.collect_per_pass < 1:
            raise ValueError("a repair pass must handle at least one bundle and one deletion")


@dataclass
class RepairPass:
    """What one pass found and did: counts, for logs, status and tests."""

    lost_sites: tuple[str, ...] = ()
    checked: int = 0  # settled bundles reassessed
    below_n: int = 0
    below_threshold: int = 0  # due for repair, of which ``attempted`` this pass
    attempted: int = 0
    repaired: int = 0
    partial: int = 0
    failed: int = 0
    unrecoverable: int = 0
    shares_placed: int = 0  # adopted ones included
    shares_adopted: int = 0  # placed by a delegate while this site was down
    shares_regenerated: int = 0  # rebuilt here and placed on a new site
    shares_failed: int = 0  # missing shares of bundles tried that are still missing
    collected: int = 0

    def fields(self) -> dict[str, object]:
        """The pass as log fields (counts and site IDs only)."""
        return {
            "event": "repair_pass",
            "lost_sites": list(self.lost_sites),
            "bundles_checked": self.checked,
            "below_n": self.below_n,
            "below_threshold": self.below_threshold,
            "attempted": self.attempted,
            "repaired": self.repaired,
            "partial": self.partial,
            "failed": self.failed,
            "unrecoverable": self.unrecoverable,
            "shares_regenerated": self.shares_regenerated,
            "shares_adopted": self.shares_adopted,
            "shares_failed": self.shares_failed,
            "collected": self.collected,
        }


class Repairer:
    """Repairs one site's bundles, a few per pass, and cleans up what repairs replaced."""

    def __init__(
        self,
        *,
        site_id: str,
        fragment_id_key: bytes,
        catalog: Catalog,
        partners: Partners,
        fetch: Fetch,
        find_holders: FindHolders,
        work_dir: Path,
        settings: RepairSettings | None = None,
        publisher: StudyPublisher | None = None,
        has_fragment: HasFragment | None = None,
        clock: Callable[[], float] = time.time,
        pause: Pause = wait_or_stop,
    ) -> None:
        self.site_id = site_id
        self._has = has_fragment
        self._fid_key = fragment_id_key
        self._catalog = catalog
        self._partners = partners
        self._fetch = fetch
        self._find_holders = find_holders
        self._work_dir = work_dir
        self.settings = settings or RepairSettings()
        self._publisher = publisher
        self._clock = clock
        self._pause = pause

    async def run(self, stop: asyncio.Event) -> None:
        """A pass every ``interval_seconds`` until ``stop``; a failing pass is logged."""
        while not stop.is_set():
            try:
                await self.repair_once()
            except MeshError as error:
                _log.error("repair pass failed: %s", error, extra={"event": "repair_error"})
            await self._pause(self.settings.interval_seconds, stop)

    async def repair_once(self) -> RepairPass:
        report = RepairPass()
        s = self.settings
        now = self._clock()
        lost = await self._catalog.read(lambda db: ledger.lost_sites(db, now, s.lost_after_seconds))
        leaving = await self._catalog.read(health.leaving_sites)
        report.lost_sites = tuple(sorted(lost))
        lost |= leaving
        settled = await self._catalog.write(lambda db: ledger.reassess(db, lost, now))
        report.checked = len(settled)
        report.below_n = sum(1 for b in settled if len(b.good) < b.n)
        due = ledger.bundles_below(settled, s.threshold, len(settled), urgent=leaving)
        report.below_threshold = len(due)
        for bundle in due[: s.bundles_per_pass]:
            await self._repair(bundle, lost, report, sources=leaving)
        report.collected = await self._collect()
        if report.attempted or report.collected or lost:
            _log.info(
                "repair pass: %d lost site(s) %s, %d bundle(s) below n, %d repaired, %d partly,"
                " %d failed, %d short of k; %d share(s) placed, %d replaced fragment(s) deleted",
                len(lost), ",".join(report.lost_sites) or "-", report.below_n, report.repaired,
                report.partial, report.failed, report.unrecoverable, report.shares_placed,
                report.collected, extra=report.fields(),
            )  # fmt: skip
        return report

    # -- one bundle ---------------------------------------------------------------------

    async def _repair(
        self,
        bundle: ledger.BundleShares,
        lost: set[str],
        report: RepairPass,
        sources: AbstractSet[str] = frozenset(),
    ) -> None:
        report.attempted += 1
        workdir = self._work_dir / f"bundle-{bundle.bundle_ref}"
        missing = bundle.missing_shares
        fields = {"bundle_row": bundle.bundle_ref, "good": len(bundle.good), "k": bundle.k,
                  "n": bundle.n}  # fmt: skip
        adopted: dict[int, str] = {}
        try:
            planned = self._planned(bundle, sources)
            adopted = await self._adopt(bundle, planned, missing, lost)
            # Counted now: adopted shares are recorded even if the rest of the repair fails.
            report.shares_adopted += len(adopted)
            placed = await self._regenerate_and_place(
                bundle, planned, missing, adopted, lost, workdir
            )
            detail = "" if placed == len(missing) else "too few eligible sites took a share"
        except Unrecoverable as error:
            report.unrecoverable += 1
            _log.warning(
                "repair: bundle row %d has %d good share(s), k is %d; waiting for more: %s",
                bundle.bundle_ref, len(bundle.good), bundle.k, error,
                extra={"event": "repair_unrecoverable", **fields},
            )  # fmt: skip
            return
        except (MeshError, OSError) as error:
            placed, detail = 0, brief(error)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)
        after = await self._catalog.write(
            partial(
                ledger.record_repair,
                bundle_ref=bundle.bundle_ref,
                regenerated=len(missing),
                placed=placed,
                lost=lost,
                now=self._clock(),
                detail=detail,
            )
        )
        report.shares_placed += placed
        # An error after adopting leaves placed at 0, the adopted shares recorded all the same.
        report.shares_regenerated += max(0, placed - len(adopted))
        report.shares_failed += len(missing) - max(placed, len(adopted))
        if not placed:
            report.failed += 1
            _log.warning("repair of bundle row %d placed nothing: %s", bundle.bundle_ref, detail,
                         extra={"event": "repair_failed", **fields,
                                "missing": len(missing)})  # fmt: skip
            return
        if len(after.good) >= after.n:
            report.repaired += 1
        else:
            report.partial += 1
        _log.info(
            "repair: bundle row %d back to %d of %d good shares (%d regenerated, %d placed)",
            bundle.bundle_ref, len(after.good), after.n, len(missing), placed,
            extra={"event": "repair_bundle", **fields, "good_after": len(after.good),
                   "missing": len(missing), "placed": placed, "adopted": len(adopted)},
        )  # fmt: skip
        await self._announce(after)

    async def _regenerate_and_place(
        self,
        bundle: ledger.BundleShares,
        planned: PlannedBundle,
        missing: list[int],
        adopted: dict[int, str],
        lost: set[str],
        workdir: Path,
    ) -> int:
        """How many of ``missing`` are now placed on new sites, ``adopted`` ones included.

        ``planned`` may gather from shares at sites leaving the federation (they no longer
        count, but still serve reads), after the good ones.
        """
        missing = [share for share in missing if share not in adopted]
        if not missing:
            return len(adopted)
        s = self.settings
        gathered = await gather_bundle(
            planned,
            self._fetch,
            self._find_holders,
            workdir / "gathered",
            parallel=s.parallel_fetches,
            timeout=s.fetch_timeout_seconds,
        )
        outputs = {share: workdir / f"share-{share}" for share in missing}
        fragments = list(gathered.paths.values())
        await asyncio.to_thread(regenerate_files, planned.ref, fragments, outputs)
        # A site that just took an adopted share must not take a second share of it.
        sites = await self._sites(
            bundle, lost, planned.ref.header.fragment_size, taken=set(adopted.values())
        )

        spoilt = {p.holder_site: p.fragment_id for p in bundle.bad}

        async def put(site: str, share: int) -> None:
            if site in spoilt:  # a bad copy kept "as is" by the store must not stand in
                await self._partners.delete(site, spoilt[site])
            await self._partners.put(site, planned.fragment_ids[share], outputs[share])

        async def delete(site: str, share: int) -> None:
            await self._partners.delete(site, planned.fragment_ids[share])

        async def on_placed(share: int, site: str) -> None:
            await self._catalog.write(
                partial(
                    ledger.record_repaired_share,
                    bundle_ref=bundle.bundle_ref,
                    share=share,
                    site=site,
                    fragment=planned.fragment_ids[share],
                    lost=lost,
                    now=self._clock(),
                )
            )

        outcome = await place_shares(missing, sites, put, delete, on_placed, policy=s.upload)
        for site, why in outcome.failed.items():
            _log.warning(
                "repair: site %s did not take a share of bundle row %d: %s",
                site, bundle.bundle_ref, why,
                extra={"event": "repair_share_refused", "bundle_row": bundle.bundle_ref,
                       "site": site},
            )  # fmt: skip
        return len(adopted) + sum(1 for share in missing if share in outcome.placed)

    async def _adopt(
        self, bundle: ledger.BundleShares, planned: PlannedBundle, missing: list[int],
        lost: set[str],
    ) -> dict[int, str]:  # fmt: skip
        """Missing shares a delegate already placed: share -> site, recorded as placed."""
        if self._has is None:
            return {}
        taken = {p.holder_site for p in bundle.good.values()} | lost | {self.site_id}
        expected = planned.ref.header.fragment_size
        adopted: dict[int, str] = {}
        for share in missing:
            fid = planned.fragment_ids[share]
            spoilt = {p.holder_site for p in bundle.bad if p.share == share}
            with contextlib.suppress(MeshError, OSError, TimeoutError):
                for site in await self._find_holders(fid):
                    if site in taken or site in spoilt:
                        continue
                    info = await self._has(site, fid)
                    found = None if info is None else (info.size, info.set_hash, info.share)
                    if found != (expected, bundle.set_hash, share):
                        continue
                    await self._catalog.write(
                        partial(ledger.record_repaired_share, bundle_ref=bundle.bundle_ref,
                                share=share, site=site, fragment=fid, lost=lost,
                                now=self._clock())
                    )  # fmt: skip
                    adopted[share] = site
                    taken.add(site)
                    break
        if adopted:
            _log.info(
                "repair: bundle row %d: %d share(s) a trusted peer placed while this site was"
                " down are recorded (%s)", bundle.bundle_ref, len(adopted),
                ",".join(f"{share}@{site}" for share, site in sorted(adopted.items())),
                extra={"event": "repair_adopted", "bundle_row": bundle.bundle_ref,
                       "shares": sorted(adopted),
                       "sites": [adopted[share] for share in sorted(adopted)]},
            )  # fmt: skip
        return adopted

    def _planned(self, bundle: ledger.BundleShares, sources: AbstractSet[str]) -> PlannedBundle:
        ref = BundleRef(
            bundle.bundle_id,
            CodingParams(bundle.k, bundle.n, bundle.segment_size),
            bundle.length,
            bundle.set_hash,
        )
        ids = tuple(fragment_id(self._fid_key, bundle.bundle_id, s) for s in range(bundle.n))
        usable = [*bundle.good.values(), *(p for p in bundle.bad if p.holder_site in sources)]
        holders = tuple(ShareHolder(p.share, p.holder_site, p.fragment_id) for p in usable)
        return PlannedBundle(ref=ref, wrapped_key=b"", fragment_ids=ids, holders=holders,
                             instances=())  # fmt: skip

    async def _sites(
        self,
        bundle: ledger.BundleShares,
        lost: set[str],
        fragment_size: int,
        taken: AbstractSet[str] = frozenset(),
    ) -> list[str]:
        """Sites for the missing shares: those new to the bundle, closest to its key first;
        then those whose copy went bad (not lost, not shunned), their bad copy deleted
        before they take a share. A small federation would otherwise leave the bundle
        degraded once every other site holds a share or is shunned."""
        s = self.settings
        now = self._clock()
        shunned = await self._catalog.read(
            lambda db: health.shunned_sites(db, s.reputation_floor, now, s.half_life)
        )
        targets = repair_targets(
            bundle, lost=lost, shunned=shunned, spare_sites=s.spare_sites, taken=taken
        )
        key = placement_key(bundle.bundle_id)
        return repair_sites(
            key,
            await self._partners.candidates(key, targets.wanted),
            targets,
            owner_site=self.site_id,
            fragment_size=fragment_size,
        )

    async def _announce(self, after: ledger.BundleShares) -> None:
        """The catalog record at the trusted peers names holders: send it again."""
        if self._publisher is None:
            return
        try:
            if after.study_ref is None:
                await self._publisher.unplaced_protected(after.bundle_ref)
            else:
                await self._publisher.study_protected(after.study_ref)
        except MeshError as error:
            _log.warning("repair: trusted peers not told of bundle row %d: %s",
                         after.bundle_ref, error,
                         extra={"event": "repair_announce_failed",
                                "bundle_row": after.bundle_ref})  # fmt: skip

    # -- cleaning up --------------------------------------------------------------------

    async def _collect(self) -> int:
        """Delete replaced fragments at holders that answer; how many went."""
        limit = self.settings.collect_per_pass
        due = await self._catalog.read(lambda db: ledger.superseded_due(db, limit))
        collected = 0
        unreachable: set[str] = set()
        for item in due:
            if item.holder_site in unreachable:
                continue
            try:
                await self._partners.delete(item.holder_site, item.fragment_id)
            except (PeerUnreachable, OSError, TimeoutError):
                unreachable.add(item.holder_site)
                continue
            except MeshError as error:
                _log.warning("repair: site %s refused to delete a replaced fragment: %s",
                             item.holder_site, error,
                             extra={"event": "repair_delete_refused",
                                    "site": item.holder_site})  # fmt: skip
                continue
            await self._catalog.write(partial(ledger.forget_superseded, item=item))
            await self._catalog.write(
                partial(health.record_seen, site=item.holder_site, now=self._clock())
            )
            collected += 1
        return collected


def regenerate_files(ref: BundleRef, sources: list[Path], outputs: dict[int, Path]) -> None:
    """Write the shares ``outputs`` names from the verified fragment files ``sources``."""
    with contextlib.ExitStack() as stack:
        opened = [stack.enter_context(path.open("rb")) for path in sources]
        written: list[BinaryIO] = [stack.enter_context(p.open("wb")) for p in outputs.values()]
        regenerate_shares(ref, opened, list(outputs), written)
