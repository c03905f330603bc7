"""Bundles placed and repaired over many simulated sites, with meshpacs' own decisions.

What is real here (called, not copied):

* IDs: node IDs from certified keys (:mod:`meshpacs.sim.sites`), placement keys
  (:func:`meshpacs.dht.placement_key`), fragment IDs (:func:`meshpacs.erasure.fragment_id`),
  fragment sizes (:class:`meshpacs.erasure.layout.FragmentHeader`);
* placement: :func:`meshpacs.backup.placement.rank_candidates` over the candidates a DHT
  lookup returns, then :func:`meshpacs.backup.upload.place_shares` (the hedged uploader)
  with puts that succeed at once on a live site with room;
* repair: the repair threshold and the choice of bundles
  (:func:`meshpacs.metadata.repair.bundles_below`), which shares still count
  (:func:`meshpacs.metadata.repair.good_shares`), where regenerated shares go
  (:mod:`meshpacs.upkeep.targets`), and the repairer's settings
  (:class:`meshpacs.upkeep.RepairSettings`: grace before a site is lost, pass interval,
  bundles per pass, spare sites).

What is modelled: a bundle's candidates are the ``ksize`` live sites closest to its key
(what a lookup returns when it is exact; :mod:`meshpacs.sim.network` measures how often it
is); a failed site is last seen when it fails and lost ``lost_after_seconds`` later; a
repair moves k fragments in and the regenerated ones out over the owner's link, one bundle
after another, and passes follow each other ``interval_seconds`` apart; the repair of a
failed owner's bundles (by its delegates) is not simulated, only counted.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from meshpacs.backup.placement import Candidate, rank_candidates
from meshpacs.backup.upload import place_shares
from meshpacs.dht import placement_key
from meshpacs.erasure import fragment_id
from meshpacs.erasure.layout import FragmentHeader
from meshpacs.errors import PeerUnreachable
from meshpacs.metadata.ledger import Placement
from meshpacs.metadata.repair import BundleShares, bundles_below, good_shares
from meshpacs.sim.sites import SimSite, as_candidates
from meshpacs.upkeep.repair import RepairSettings
from meshpacs.upkeep.targets import repair_sites, repair_targets

__all__ = [
    "Balance",
    "FailureOutcome",
    "Federation",
    "SimBundle",
    "settings_figures",
]

_GOOD = "ok"


@dataclass
class SimBundle:
    """One owner's bundle and where its shares are, as the owner's ledger records it."""

    ref: int
    owner: int
    bundle_id: bytes
    k: int
    n: int
    segment_size: int
    length: int
    placements: list[Placement] = field(default_factory=list)

    @property
    def fragment_size(self) -> int:
        return FragmentHeader(
            self.k, self.n, 0, self.segment_size, self.length, self.bundle_id
        ).fragment_size

    def shares(self, lost: set[str]) -> BundleShares:
        """The bundle as the repairer's reassessment sees it."""
        good, bad = good_shares([(p, _GOOD) for p in self.placements], self.n, lost)
        return BundleShares(
            bundle_ref=self.ref,
            bundle_id=self.bundle_id,
            study_ref=None,
            k=self.k,
            n=self.n,
            segment_size=self.segment_size,
            length=self.length,
            set_hash=b"",
            state="stored" if len(good) >= self.n else "degraded",
            good=good,
            bad=bad,
        )


@dataclass(frozen=True)
class Balance:
    """Fragments per site after placement."""

    per_site: tuple[int, ...]
    unplaced_shares: int

    @property
    def mean(self) -> float:
        return sum(self.per_site) / len(self.per_site)

    @property
    def max_over_mean(self) -> float:
        return max(self.per_site) / self.mean if self.mean else 0.0

    def histogram(self) -> dict[int, int]:
        """fragments held -> how many sites hold that many."""
        return dict(sorted(Counter(self.per_site).items()))


@dataclass
class FailureOutcome:
    """What the repairers did after ``failed`` sites failed at once at time 0."""

    fraction: float
    failed: int
    threshold: int | None
    bundles: int
    orphaned: int = 0  # owned by a failed site: left to its delegates
    orphaned_below_k: int = 0
    hit: int = 0  # bundles of live owners that lost at least one share
    repaired: int = 0  # bundles brought back to n
    left_degraded: int = 0  # at or above their threshold, below n: not repaired by design
    unrecoverable: int = 0  # fewer than k good shares: nothing to regenerate from
    shares_placed: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    passes: int = 0
    first_repair_s: float | None = None
    all_repaired_s: float | None = None  # the last repair of a bundle that could be repaired
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (s, bundles below n)

    @property
    def traffic_bytes(self) -> int:
        return self.bytes_read + self.bytes_written


class Federation:
    """Sites, the bundles they own and the fragments they hold."""

    def __init__(
        self,
        sites: Sequence[SimSite],
        *,
        seed: int,
        ksize: int = 20,
        settings: RepairSettings | None = None,
    ) -> None:
        self.sites = list(sites)
        self.ksize = ksize
        self.settings = settings or RepairSettings()
        self.down: set[int] = set()
        self.used = [0] * len(self.sites)
        self.bundles: list[SimBundle] = []
        self._rng = random.Random(f"meshpacs-sim-federation/{seed}")
        self._index = {site.site_id: site.index for site in self.sites}
        self._ids = [int.from_bytes(site.node_id, "big") for site in self.sites]

    def index_of(self, site_id: str) -> int:
        return self._index[site_id]

    # --- what a DHT lookup would return -------------------------------------------------------

    def candidates(self, key: bytes, count: int, owner: int) -> list[Candidate]:
        """The live sites closest to ``key``, as ``DhtNode.closest_sites`` returns them."""
        target = int.from_bytes(key, "big")
        live = (i for i in range(len(self.sites)) if i not in self.down and i != owner)
        nearest = heapq.nsmallest(min(count, self.ksize), live, key=lambda i: self._ids[i] ^ target)
        return as_candidates(self.sites, self.used, nearest)

    # --- placing --------------------------------------------------------------------------

    async def _put(self, site_id: str, size: int) -> None:
        index = self._index[site_id]
        if index in self.down:
            raise PeerUnreachable(f"{site_id} does not answer")
        if self.sites[index].capacity_bytes - self.used[index] < size:
            raise PeerUnreachable(f"{site_id} has no room")
        self.used[index] += size

    async def _place(
        self, bundle: SimBundle, shares: Sequence[int], sites: Sequence[str], now: float
    ) -> dict[int, str]:
        size = bundle.fragment_size
        owner = self.sites[bundle.owner]

        async def put(site: str, share: int) -> None:
            await self._put(site, size)

        async def delete(site: str, share: int) -> None:
            self.used[self._index[site]] -= size

        async def on_placed(share: int, site: str) -> None:
            # As ledger.record_repaired_share: what the new placement replaces stops counting.
            bundle.placements = [p for p in bundle.placements if p.share != share]
            fid = fragment_id(owner.fragment_id_key, bundle.bundle_id, share)
            bundle.placements.append(Placement(share, site, fid, now))

        outcome = await place_shares(shares, sites, put, delete, on_placed)
        return outcome.placed

    async def back_up(
        self, bundles_per_site: int, *, bundle_bytes: int, k: int, n: int, segment_size: int
    ) -> Balance:
        """Every site backs up ``bundles_per_site`` bundles; returns fragments per site."""
        unplaced = 0
        spare = self.settings.spare_sites
        for owner in self.sites:
            for _ in range(bundles_per_site):
                bundle = SimBundle(
                    ref=len(self.bundles),
                    owner=owner.index,
                    bundle_id=self._rng.randbytes(16),
                    k=k,
                    n=n,
                    segment_size=segment_size,
                    length=bundle_bytes,
                )
                self.bundles.append(bundle)
                key = placement_key(bundle.bundle_id)
                ranked = rank_candidates(
                    key,
                    self.candidates(key, n + spare + 1, owner.index),
                    owner_site=owner.site_id,
                    fragment_size=bundle.fragment_size,
                )
                sites = [c.site_id for c in ranked]
                placed = await self._place(bundle, range(n), sites, 0.0)
                unplaced += n - len(placed)
        return self.balance(unplaced)

    def balance(self, unplaced: int = 0) -> Balance:
        held = Counter(self._index[p.holder_site] for b in self.bundles for p in b.placements)
        return Balance(tuple(held.get(i, 0) for i in range(len(self.sites))), unplaced)

    # --- failing and repairing --------------------------------------------------------------

    def fail(self, fraction: float) -> list[int]:
        """A random ``fraction`` of the live sites fail at once (and lose what they held)."""
        live = [i for i in range(len(self.sites)) if i not in self.down]
        count = max(1, round(fraction * len(self.sites)))
        chosen = sorted(self._rng.sample(live, count))
        self.down.update(chosen)
        return chosen

    async def repair_after_failure(
        self, fraction: float, *, link_bits_per_s: float, lookup_ms: float = 0.0,
        failed: Sequence[int] | None = None,
    ) -> FailureOutcome:  # fmt: skip
        """Fail ``fraction`` of the sites (or exactly ``failed``) at time 0, then let every
        live owner's repairer run its passes until nothing it can repair is below threshold."""
        if failed is None:
            failed = self.fail(fraction)
        else:
            self.down.update(failed)
        s = self.settings
        lost = {self.sites[i].site_id for i in self.down}
        outcome = FailureOutcome(fraction, len(failed), s.threshold, len(self.bundles))
        owned: dict[int, list[SimBundle]] = {}
        for bundle in self.bundles:
            if bundle.owner in self.down:
                outcome.orphaned += 1
                outcome.orphaned_below_k += len(bundle.shares(lost).good) < bundle.k
                continue
            if len(bundle.shares(lost).good) < bundle.n:
                outcome.hit += 1
            owned.setdefault(bundle.owner, []).append(bundle)
        changes: list[tuple[float, int]] = [(0.0, outcome.hit)]
        for owner, bundles in sorted(owned.items()):
            await self._owner_repairs(owner, bundles, lost, outcome, changes, link_bits_per_s,
                                      lookup_ms)  # fmt: skip
        for bundle in (b for bs in owned.values() for b in bs):
            good = len(bundle.shares(lost).good)
            if good < bundle.k:
                outcome.unrecoverable += 1
            elif good < bundle.n:
                outcome.left_degraded += 1
        outcome.timeline = _running_total(changes)
        return outcome

    async def _owner_repairs(
        self,
        owner: int,
        bundles: list[SimBundle],
        lost: set[str],
        outcome: FailureOutcome,
        changes: list[tuple[float, int]],
        link_bits_per_s: float,
        lookup_ms: float,
    ) -> None:
        s = self.settings
        by_ref = {b.ref: b for b in bundles}
        # The first pass that finds the failed sites lost: passes run every interval, at a
        # phase of their own; a site is lost once it has been silent for longer than the grace.
        phase = self._rng.uniform(0.0, s.interval_seconds)
        passes = int((s.lost_after_seconds - phase) // s.interval_seconds) + 1
        now = phase + s.interval_seconds * passes
        while True:
            settled = [b.shares(lost) for b in bundles]
            due = bundles_below(settled, s.threshold, s.bundles_per_pass)
            repairable = [b for b in due if len(b.good) >= b.k]
            if not repairable:
                return
            outcome.passes += 1
            for shares in repairable:
                now = await self._repair_one(
                    by_ref[shares.bundle_ref], shares, owner, lost, outcome, now,
                    link_bits_per_s, lookup_ms,
                )  # fmt: skip
                if len(by_ref[shares.bundle_ref].shares(lost).good) >= shares.n:
                    changes.append((now, -1))
                outcome.first_repair_s = min(outcome.first_repair_s or now, now)
                outcome.all_repaired_s = max(outcome.all_repaired_s or 0.0, now)
            now += s.interval_seconds

    async def _repair_one(
        self,
        bundle: SimBundle,
        shares: BundleShares,
        owner: int,
        lost: set[str],
        outcome: FailureOutcome,
        now: float,
        link_bits_per_s: float,
        lookup_ms: float,
    ) -> float:
        s = self.settings
        targets = repair_targets(shares, lost=lost, shunned=set(), spare_sites=s.spare_sites)
        key = placement_key(bundle.bundle_id)
        sites = repair_sites(
            key,
            self.candidates(key, targets.wanted, owner),
            targets,
            owner_site=self.sites[owner].site_id,
            fragment_size=bundle.fragment_size,
        )
        missing = shares.missing_shares
        placed = await self._place(bundle, missing, sites, now)
        size = bundle.fragment_size
        read, written = bundle.k * size, len(placed) * size
        outcome.bytes_read += read
        outcome.bytes_written += written
        outcome.shares_placed += len(placed)
        if len(bundle.shares(lost).good) >= bundle.n:
            outcome.repaired += 1
        return now + lookup_ms / 1000.0 + 8 * (read + written) / link_bits_per_s


def _running_total(changes: list[tuple[float, int]]) -> list[tuple[float, int]]:
    total = 0
    series = []
    for at, delta in sorted(changes):
        total += delta
        series.append((at, total))
    return series


def settings_figures(settings: RepairSettings) -> dict[str, object]:
    """The repair settings a report of a simulation names (the rest are the node's defaults)."""
    return {
        "threshold": settings.threshold,
        "lost_after_seconds": settings.lost_after_seconds,
        "interval_seconds": settings.interval_seconds,
        "bundles_per_pass": settings.bundles_per_pass,
        "spare_sites": settings.spare_sites,
    }
