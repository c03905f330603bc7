"""Durability over a year of churn: k-of-n erasure against replication, on a simulated clock.

Sites go down for a while and come back, leave for good (alone or in a regional disaster)
and lose their disks; each owner finds out as the node would (an audit that finds a holder
unreachable, a grace counted from the last time it answered; an audit that finds a fragment
missing) and repairs as the node does. A bundle is **lost** once fewer than k of its shares
exist anywhere; nothing can bring it back.

What is real here (called, not copied): node IDs (:mod:`meshpacs.sim.sites`), placement keys,
fragment IDs and sizes; placement (:func:`~meshpacs.backup.placement.rank_candidates`, then
:func:`~meshpacs.backup.upload.place_shares` with puts that succeed at once on a live site);
which shares count (:func:`~meshpacs.metadata.repair.good_shares` under each owner's own set
of lost sites and each placement's verdict), the threshold and order of repairs
(:func:`~meshpacs.metadata.repair.bundles_below`), where regenerated shares go
(:mod:`meshpacs.upkeep.targets`), the repairer's settings
(:class:`~meshpacs.upkeep.repair.RepairSettings`).

What is modelled (:class:`Churn` and :class:`Upkeep` hold every parameter):

* churn: per site, outages as a Poisson process with log-normal durations, permanent
  departures and disk losses at yearly rates, regional disasters that take every site within
  a radius; a departed site is replaced by a new, empty member some days later;
* finding out: owner O's first audit of a share on a site that went down comes after
  ``min`` of O's shares there of a uniform wait in one audit period (each placement is
  audited once per ``audit_spread / audit_challenges``, the node's defaults); the site then
  counts as lost for O once it has not answered for the grace, counted from O's last lease
  renewal there (daily); once back, O sees it at its next renewal. A lost disk is found share
  by share, at each placement's next audit;
* repair time: a pass starts on the owner's grid of ``interval_seconds``; each repair reads k
  fragments and writes the missing ones over the owner's link, one after another, and takes
  effect when the pass starts (a pass lasts minutes, churn acts over hours and days);
* a repair needs k fragments it can read (live sites that still hold them), else it fails
  and is tried again when one of the bundle's holders comes back;
* a down owner's bundles are repaired, as by its delegates, once it has been down for the
  grace, with the owner's view of lost sites; a replaced placement's copy is taken as
  deleted at once (it would be, once its holder answers): a conservative count.

Nothing here touches a socket, a file or the wall clock; the same seed gives the same run,
and every scheme of one run meets the same churn.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import math
import random
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from meshpacs.backup.placement import Candidate, rank_candidates
from meshpacs.backup.upload import place_shares
from meshpacs.dht import placement_key
from meshpacs.erasure import fragment_id
from meshpacs.erasure.layout import FragmentHeader
from meshpacs.errors import PeerUnreachable
from meshpacs.metadata.ledger import Placement
from meshpacs.metadata.repair import BundleShares, bundles_below, good_shares, repair_threshold
from meshpacs.sim.federation import settings_figures
from meshpacs.sim.sites import LatencyModel, SimSite, as_candidates, make_sites
from meshpacs.upkeep.repair import RepairSettings
from meshpacs.upkeep.targets import repair_sites, repair_targets

__all__ = [
    "Churn",
    "DurabilityConfig",
    "DurabilityOutcome",
    "DurabilitySim",
    "Scheme",
    "SiteEvent",
    "Upkeep",
    "durability",
    "rule_of_three",
]

DAY = 86400.0
YEAR = 365 * DAY
_MISSING = "missing"  # the audit verdict of a fragment its holder no longer has
_NEW = "unaudited"


@dataclass(frozen=True)
class Scheme:
    """k-of-n coding; k = 1 is n-fold replication (each share is the whole bundle)."""

    k: int
    n: int

    @property
    def label(self) -> str:
        return f"{self.n}x replication" if self.k == 1 else f"{self.k}-of-{self.n}"

    @property
    def overhead(self) -> float:
        return self.n / self.k

    @property
    def threshold(self) -> int:
        return repair_threshold(self.k, self.n)


@dataclass(frozen=True)
class Churn:
    """What happens to the sites over the year; rates are per site per year."""

    name: str
    outages_per_year: float = 0.0
    outage_median_hours: float = 4.0
    outage_sigma: float = 1.0  # of the log-normal duration (natural log)
    departures_per_year: float = 0.0  # gone for good, with every fragment held
    disk_losses_per_year: float = 0.0  # stays a member, every fragment held gone
    regions_per_year: float = 0.0  # disasters in the whole federation, not per site
    region_radius_km: float = 150.0
    replaced_after_days: float = 30.0  # a departed site's place taken by a new member

    @classmethod
    def none(cls) -> Churn:
        return cls("none")

    @classmethod
    def typical(cls) -> Churn:
        return cls(
            "typical",
            outages_per_year=6.0,
            outage_median_hours=4.0,
            outage_sigma=1.2,
            departures_per_year=0.02,
            disk_losses_per_year=0.03,
        )

    @classmethod
    def harsh(cls) -> Churn:
        return cls(
            "harsh",
            outages_per_year=24.0,
            outage_median_hours=12.0,
            outage_sigma=1.5,
            departures_per_year=0.10,
            disk_losses_per_year=0.10,
            regions_per_year=2.0,
            region_radius_km=250.0,
        )

    def outage_over(self, seconds: float) -> float:
        """The share of outages that last longer than ``seconds``."""
        if seconds <= 0:
            return 1.0
        z = (math.log(seconds / 3600.0) - math.log(self.outage_median_hours)) / self.outage_sigma
        return 0.5 * math.erfc(z / math.sqrt(2))


@dataclass(frozen=True)
class Upkeep:
    """The node's ``[maintenance]`` defaults that decide when an owner finds a loss
    (``meshpacs.node.config.MaintenanceConfig``; a test keeps them equal)."""

    audits_per_hour: float = 120.0
    audit_challenges: int = 16
    audit_spread_seconds: float = 365 * DAY
    lease_renew_seconds: float = DAY

    @property
    def audit_gap(self) -> float:
        """The least time between two audits of one placement, as the node sets it."""
        return self.audit_spread_seconds / max(1, self.audit_challenges)

    def audit_period(self, placements: int) -> float:
        """How long a round of audits of every placement of an owner's takes."""
        return max(self.audit_gap, 3600.0 * placements / self.audits_per_hour)


@dataclass(frozen=True)
class DurabilityConfig:
    """What to simulate; ``quick`` sizes are for a first look and for tests."""

    sites: int = 1000
    bundles_per_site: int = 20
    seed: int = 1
    days: float = 365.0
    bundle_bytes: int = 256 * 1024**2
    segment_size: int = 1024**2
    schemes: tuple[Scheme, ...] = (Scheme(4, 7), Scheme(1, 2), Scheme(1, 3), Scheme(4, 12))
    churns: tuple[Churn, ...] = (Churn.typical(), Churn.harsh())
    link_bits_per_s: float = 100e6
    lookup_ms: float = 150.0  # a lookup on 1,000 sites (docs/scale.md's table)
    ksize: int = 20  # what a lookup returns at most
    sample_seconds: float = DAY
    settings: RepairSettings = field(default_factory=RepairSettings)
    upkeep: Upkeep = field(default_factory=Upkeep)

    @classmethod
    def quick(cls, sites: int = 200, seed: int = 1) -> DurabilityConfig:
        return cls(sites=sites, seed=seed, bundles_per_site=10)


@dataclass(frozen=True, order=True)
class SiteEvent:
    """One thing that happens to a site: ``down``, ``up``, ``gone``, ``disk`` (its stored
    fragments lost) or ``join``; ``region`` takes every site within the radius of (x, y)."""

    at: float
    kind: str
    site: int = -1
    x_km: float = 0.0
    y_km: float = 0.0


@dataclass
class DurabilityOutcome:
    """One scheme through one year of one churn."""

    scheme: str
    k: int
    n: int
    churn: str
    bundles: int
    threshold: int
    lost: int = 0
    lost_at_days: list[float] = field(default_factory=list)
    ever_unavailable: int = 0  # bundles with fewer than k live shares at some moment
    repairs: int = 0  # repairs that placed at least one share
    repairs_failed: int = 0  # fewer than k fragments could be read
    shares_placed: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    stored_bytes: int = 0  # fragments stored at the start, all bundles
    # Per day: (day, fewest live shares of any bundle not lost, bundles below n live,
    # bundles below k live, repair bytes so far)
    samples: list[tuple[float, int, int, int, int]] = field(default_factory=list)
    min_live: dict[int, int] = field(default_factory=dict)  # fewest live shares -> bundles
    events: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def traffic_bytes(self) -> int:
        return self.bytes_read + self.bytes_written


def rule_of_three(trials: int) -> float:
    """The 95% upper bound on a rate when none of ``trials`` showed it."""
    return 3.0 / trials if trials else math.inf


@dataclass
class _Bundle:
    ref: int
    owner: int
    bundle_id: bytes
    placed: list[tuple[Placement, str]] = field(default_factory=list)  # the owner's ledger
    lost_at: float | None = None


class _Closest:
    """The live sites closest to a key by XOR, without scanning them all: every site in
    the aligned block of the keyspace around the key is closer than any outside it."""

    def __init__(self, sites: Sequence[SimSite]) -> None:
        self.bits = 8 * len(sites[0].node_id)
        pairs = sorted((int.from_bytes(s.node_id, "big"), s.index) for s in sites)
        self.ids = [i for i, _ in pairs]
        self.order = [s for _, s in pairs]
        self.node = {s.index: int.from_bytes(s.node_id, "big") for s in sites}

    def nearest(self, key: bytes, count: int, usable: Sequence[bool], skip: int) -> list[int]:
        """The ``count`` sites closest to ``key`` of those ``usable``, but ``skip``."""
        target = int.from_bytes(key, "big")
        start = max(0, self.bits - max(1, len(self.ids) // max(1, count)).bit_length())
        for shift in range(start, self.bits + 1):
            low = (target >> shift) << shift
            lo = bisect.bisect_left(self.ids, low)
            hi = bisect.bisect_left(self.ids, low + (1 << shift))
            inside = [s for s in self.order[lo:hi] if usable[s] and s != skip]
            if len(inside) >= count or shift == self.bits:
                return heapq.nsmallest(count, inside, key=lambda s: self.node[s] ^ target)
        return []  # pragma: no cover - the last block is the whole keyspace


class DurabilitySim:
    """One scheme's bundles on one federation through one churn trace."""

    def __init__(self, config: DurabilityConfig, scheme: Scheme, churn: Churn) -> None:
        self.config = config
        self.scheme = scheme
        self.churn = churn
        self.settings = config.settings
        self.horizon = config.days * DAY
        s, c = scheme, config
        # Replacements come from a pool of members that have not joined yet.
        self.sites = make_sites(2 * c.sites, c.seed)
        self.closest = _Closest(self.sites)
        total = len(self.sites)
        self.joined = [i < c.sites for i in range(total)]
        self.up = list(self.joined)
        self.gone = [False] * total
        self.down_since = [0.0] * total
        self.epoch = [0] * total
        self.used = [0] * total
        self.held: list[dict[int, int]] = [{} for _ in range(total)]  # ref -> share on disk
        self.placed_on: list[set[int]] = [set() for _ in range(total)]  # in owners' ledgers
        self.lost_view: list[set[str]] = [set() for _ in range(total)]  # per owner
        self.lost_for: list[set[int]] = [set() for _ in range(total)]  # owners who lost a site
        self.attention: list[set[int]] = [set() for _ in range(total)]  # maybe below n
        self.stalled: list[set[int]] = [set() for _ in range(total)]  # could not be read
        self.pass_due: list[float | None] = [None] * total
        self.busy_until = [0.0] * total
        self.next_replacement = c.sites
        self.index = {site.site_id: site.index for site in self.sites}
        self.bundles: list[_Bundle] = []
        self.live: list[int] = []
        self.exist: list[int] = []
        self.fewest: list[int] = []
        self.hist: Counter[int] = Counter()
        self.unavailable: set[int] = set()
        self.fragment_size = FragmentHeader(
            s.k, s.n, 0, c.segment_size, c.bundle_bytes, b"\0" * 16
        ).fragment_size
        self.period = c.upkeep.audit_period(c.bundles_per_site * s.n)
        self._rng = random.Random(f"meshpacs-sim-durability/{c.seed}/{s.k}-{s.n}/{churn.name}")
        self.phase = [self._rng.uniform(0.0, self.settings.interval_seconds) for _ in range(total)]
        self._queue: list[tuple[float, int, str, tuple[Any, ...]]] = []
        self._seq = 0
        self.out = DurabilityOutcome(
            scheme.label, s.k, s.n, churn.name, c.sites * c.bundles_per_site, scheme.threshold
        )
        self.events: Counter[str] = Counter()

    # --- the trace ---------------------------------------------------------------------------

    def site_trace(self, site: int, joined_at: float) -> list[SiteEvent]:
        """A site's outages, disk losses and departure from ``joined_at`` to the horizon:
        the same for every scheme (its own random stream)."""
        ch = self.churn
        rng = random.Random(f"meshpacs-sim-churn/{self.config.seed}/{ch.name}/{site}")
        gone_at = joined_at + _wait(rng, ch.departures_per_year)
        end = min(self.horizon, gone_at)
        trace = [SiteEvent(gone_at, "gone", site)] if gone_at < self.horizon else []
        at = joined_at
        while (at := at + _wait(rng, ch.outages_per_year)) < end:
            length = rng.lognormvariate(math.log(ch.outage_median_hours * 3600), ch.outage_sigma)
            trace.append(SiteEvent(at, "down", site))
            if at + length < end:
                trace.append(SiteEvent(at + length, "up", site))
            at += length
        at = joined_at
        while (at := at + _wait(rng, ch.disk_losses_per_year)) < end:
            trace.append(SiteEvent(at, "disk", site))
        return trace

    def region_trace(self) -> list[SiteEvent]:
        rng = random.Random(f"meshpacs-sim-churn/{self.config.seed}/{self.churn.name}/regions")
        span = LatencyModel().span_km
        trace, at = [], 0.0
        while (at := at + _wait(rng, self.churn.regions_per_year)) < self.horizon:
            trace.append(SiteEvent(at, "region", -1, rng.uniform(0, span), rng.uniform(0, span)))
        return trace

    # --- the clock ---------------------------------------------------------------------------

    def _push(self, at: float, kind: str, *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, kind, args))

    def _push_event(self, event: SiteEvent) -> None:
        self._push(event.at, event.kind, event.site, event.x_km, event.y_km)

    async def run(
        self, scripted: Sequence[SiteEvent] = (), *, churn: bool = True
    ) -> DurabilityOutcome:
        """Place every bundle (unless :meth:`place_all` did), then run the year;
        ``scripted`` events come on top of the churn (or alone, ``churn=False``)."""
        started = time.perf_counter()
        if not self.bundles:
            await self.place_all()
        if churn:
            for site in range(self.config.sites):
                for event in self.site_trace(site, 0.0):
                    self._push_event(event)
            for event in self.region_trace():
                self._push_event(event)
        for event in scripted:
            self._push_event(event)
        step = self.config.sample_seconds
        for day in range(int(self.horizon // step) + 1):
            self._push(day * step, "sample")
        while self._queue:
            at, _, kind, args = heapq.heappop(self._queue)
            if at > self.horizon:
                break
            await self._handle(at, kind, args)
        self.out.ever_unavailable = len(self.unavailable)
        self.out.min_live = dict(sorted(Counter(self.fewest).items()))
        self.out.events = dict(sorted(self.events.items()))
        self.out.elapsed_s = time.perf_counter() - started
        return self.out

    async def _handle(self, at: float, kind: str, args: tuple[Any, ...]) -> None:
        if kind == "pass":
            await self._pass(at, args[0])
        elif kind == "sample":
            self._sample(at)
        elif kind == "silent":
            self._silent(at, *args)
        elif kind == "lost":
            self._found_unreachable(at, *args)
        elif kind == "seen":
            self._seen_again(*args)
        elif kind == "audit":
            self._audit_missing(at, *args)
        elif kind == "region":
            self.events["region"] += 1
            self._region(at, args[1], args[2])
        else:
            getattr(self, f"_{kind}")(at, args[0])

    # --- placing -----------------------------------------------------------------------------

    async def place_all(self) -> None:
        c, s = self.config, self.scheme
        rng = random.Random(f"meshpacs-sim-durability/{c.seed}/bundles")
        for owner in range(c.sites):
            for _ in range(c.bundles_per_site):
                bundle = _Bundle(len(self.bundles), owner, rng.randbytes(16))
                self.bundles.append(bundle)
                self.live.append(0)
                self.exist.append(0)
                self.hist[0] += 1
                key = placement_key(bundle.bundle_id)
                ranked = rank_candidates(
                    key,
                    self._candidates(key, s.n + self.settings.spare_sites + 1, owner),
                    owner_site=self.sites[owner].site_id,
                    fragment_size=self.fragment_size,
                )
                await self._place(bundle, range(s.n), [c.site_id for c in ranked], 0.0)
                self.fewest.append(self.live[bundle.ref])
        self.out.stored_bytes = sum(len(b.placed) for b in self.bundles) * self.fragment_size

    def _candidates(self, key: bytes, count: int, owner: int) -> list[Candidate]:
        """The live members closest to ``key``, as ``DhtNode.closest_sites`` returns them."""
        nearest = self.closest.nearest(key, min(count, self.config.ksize), self.up, owner)
        return as_candidates(self.sites, self.used, nearest)

    async def _place(
        self, bundle: _Bundle, shares: Iterable[int], sites: Sequence[str], now: float
    ) -> dict[int, str]:
        size = self.fragment_size
        owner = self.sites[bundle.owner]

        async def put(site_id: str, share: int) -> None:
            site = self.index[site_id]
            if not self.up[site]:
                raise PeerUnreachable(f"{site_id} does not answer")
            if self.sites[site].capacity_bytes - self.used[site] < size:
                raise PeerUnreachable(f"{site_id} has no room")
            self.used[site] += size

        async def delete(site_id: str, share: int) -> None:
            self.used[self.index[site_id]] -= size

        async def on_placed(share: int, site_id: str) -> None:
            # As ledger.record_repaired_share: what the new placement replaces stops
            # counting; its copy is taken as deleted now (a conservative count).
            for old, _ in [x for x in bundle.placed if x[0].share == share]:
                self._forget_placement(bundle, old)
            site = self.index[site_id]
            fid = fragment_id(owner.fragment_id_key, bundle.bundle_id, share)
            bundle.placed.append((Placement(share, site_id, fid, now), _NEW))
            self.placed_on[site].add(bundle.ref)
            self.held[site][bundle.ref] = share
            self.exist[bundle.ref] += 1
            self._add_live(bundle.ref, 1)

        outcome = await place_shares(list(shares), sites, put, delete, on_placed)
        return outcome.placed

    def _forget_placement(self, bundle: _Bundle, old: Placement) -> None:
        bundle.placed = [x for x in bundle.placed if x[0] != old]
        site = self.index[old.holder_site]
        if not any(p.holder_site == old.holder_site for p, _ in bundle.placed):
            self.placed_on[site].discard(bundle.ref)
        if self.held[site].get(bundle.ref) == old.share:
            del self.held[site][bundle.ref]
            self.used[site] -= self.fragment_size
            self.exist[bundle.ref] -= 1
            if self.up[site]:
                self._add_live(bundle.ref, -1)

    # --- counting ----------------------------------------------------------------------------

    def _add_live(self, ref: int, delta: int) -> None:
        if self.bundles[ref].lost_at is not None:
            return
        self.hist[self.live[ref]] -= 1
        self.live[ref] += delta
        self.hist[self.live[ref]] += 1
        if delta < 0 and self.live[ref] < self.fewest[ref]:
            self.fewest[ref] = self.live[ref]
            if self.live[ref] < self.scheme.k:
                self.unavailable.add(ref)

    def _lose_copy(self, at: float, site: int, ref: int) -> None:
        self.exist[ref] -= 1
        if self.up[site]:
            self._add_live(ref, -1)
        bundle = self.bundles[ref]
        if bundle.lost_at is None and self.exist[ref] < self.scheme.k:
            bundle.lost_at = at
            self.hist[self.live[ref]] -= 1
            self.out.lost += 1
            self.out.lost_at_days.append(at / DAY)

    def _sample(self, at: float) -> None:
        counts = [(live, many) for live, many in self.hist.items() if many > 0]
        fewest = min((live for live, _ in counts), default=self.scheme.n)
        below_n = sum(many for live, many in counts if live < self.scheme.n)
        below_k = sum(many for live, many in counts if live < self.scheme.k)
        self.out.samples.append((at / DAY, fewest, below_n, below_k, self.out.traffic_bytes))

    # --- what happens to sites ---------------------------------------------------------------

    def _down(self, at: float, site: int) -> None:
        if not self.up[site]:
            return
        self.events["down"] += 1
        self.up[site] = False
        self.down_since[site] = at
        self.epoch[site] += 1
        for ref in self.held[site]:
            self._add_live(ref, -1)
        # No owner can count it lost before the grace, less a day of lease renewals, has
        # passed: most outages end sooner and cost nothing more.
        grace = self.settings.lost_after_seconds
        renew = self.config.upkeep.lease_renew_seconds
        self._push(at + max(0.0, grace - renew), "silent", site, self.epoch[site])

    def _silent(self, at: float, site: int, epoch: int) -> None:
        """Still down: each owner with shares here found it unreachable at its first audit
        of one of them, and counts it lost once it has not answered for the grace."""
        if self.epoch[site] != epoch or self.up[site]:
            return
        since = self.down_since[site]
        owners = Counter(self.bundles[ref].owner for ref in self.placed_on[site])
        grace = self.settings.lost_after_seconds
        renew = self.config.upkeep.lease_renew_seconds
        for owner, shares in sorted(owners.items()):
            audited = since + min(self._rng.uniform(0, self.period) for _ in range(shares))
            silent = since - self._rng.uniform(0, renew) + grace
            self._push(max(audited, silent, at), "lost", owner, site, epoch)

    def _up(self, at: float, site: int) -> None:
        if self.up[site] or self.gone[site] or not self.joined[site]:
            return
        self.events["up"] += 1
        self.up[site] = True
        self.epoch[site] += 1
        if at - self.down_since[site] > self.settings.lost_after_seconds:
            self.events["outage past the grace"] += 1
        for ref in self.held[site]:
            self._add_live(ref, 1)
        renew = self.config.upkeep.lease_renew_seconds
        for owner in sorted(self.lost_for[site]):
            self._push(at + self._rng.uniform(0, renew), "seen", owner, site, self.epoch[site])
        for owner in sorted({self.bundles[r].owner for r in self.placed_on[site]}):
            if self.stalled[owner] & self.placed_on[site]:
                self._request_pass(at, owner)

    def _gone(self, at: float, site: int) -> None:
        if self.gone[site] or not self.joined[site]:
            return
        self.events["gone"] += 1
        self._down(at, site)
        self.gone[site] = True
        for ref in list(self.held[site]):
            self._lose_copy(at, site, ref)
        self.held[site].clear()
        self.used[site] = 0
        if self.next_replacement < len(self.sites):
            replacement = self.next_replacement
            self.next_replacement += 1
            self._push(at + self.churn.replaced_after_days * DAY, "join", replacement)

    def _disk(self, at: float, site: int) -> None:
        if self.gone[site] or not self.joined[site]:
            return
        self.events["disk"] += 1
        for ref in sorted(self.held[site]):
            self._lose_copy(at, site, ref)
            owner = self.bundles[ref].owner
            self._push(at + self._rng.uniform(0, self.period), "audit", owner, ref, site)
        self.held[site].clear()
        self.used[site] = 0

    def _region(self, at: float, x_km: float, y_km: float) -> None:
        radius = self.churn.region_radius_km
        for site in self.sites:
            if self.joined[site.index] and math.hypot(site.x_km - x_km, site.y_km - y_km) <= radius:
                self._gone(at, site.index)

    def _join(self, at: float, site: int) -> None:
        self.events["join"] += 1
        self.joined[site] = self.up[site] = True
        for event in self.site_trace(site, at):
            self._push_event(event)

    # --- what owners find out ------------------------------------------------------------

    def _found_unreachable(self, at: float, owner: int, site: int, epoch: int) -> None:
        if self.epoch[site] != epoch or self.up[site]:
            return  # it came back before the grace ended
        self.lost_view[owner].add(self.sites[site].site_id)
        self.lost_for[site].add(owner)
        mine = {r for r in self.placed_on[site] if self.bundles[r].owner == owner}
        if mine:
            self.attention[owner] |= mine
            self._request_pass(at, owner)

    def _seen_again(self, owner: int, site: int, epoch: int) -> None:
        if self.epoch[site] == epoch and self.up[site]:
            self.lost_view[owner].discard(self.sites[site].site_id)
            self.lost_for[site].discard(owner)

    def _audit_missing(self, at: float, owner: int, ref: int, site: int) -> None:
        bundle = self.bundles[ref]
        if bundle.lost_at is not None or self.gone[site] or ref not in self.placed_on[site]:
            return
        if ref in self.held[site]:
            return  # a later repair put a share back on this site
        if not self.up[site]:
            self._push(at + self.period, "audit", owner, ref, site)  # unreachable: next round
            return
        holder = self.sites[site].site_id
        bundle.placed = [(p, _MISSING if p.holder_site == holder else v) for p, v in bundle.placed]
        self.attention[owner].add(ref)
        self._request_pass(at, owner)

    # --- repair ------------------------------------------------------------------------------

    def _request_pass(self, at: float, owner: int) -> None:
        interval = self.settings.interval_seconds
        start = max(at, self.busy_until[owner])
        due = self.phase[owner] + interval * math.ceil((start - self.phase[owner]) / interval)
        if self.pass_due[owner] is None or due < (self.pass_due[owner] or 0.0):
            self.pass_due[owner] = due
            self._push(due, "pass", owner)

    def _shares(self, bundle: _Bundle) -> BundleShares:
        s = self.scheme
        good, bad = good_shares(bundle.placed, s.n, self.lost_view[bundle.owner])
        return BundleShares(
            bundle_ref=bundle.ref,
            bundle_id=bundle.bundle_id,
            study_ref=None,
            k=s.k,
            n=s.n,
            segment_size=self.config.segment_size,
            length=self.config.bundle_bytes,
            set_hash=b"",
            state="stored" if len(good) >= s.n else "degraded",
            good=good,
            bad=bad,
        )

    async def _pass(self, at: float, owner: int) -> None:
        if self.pass_due[owner] != at:
            return  # superseded by an earlier pass
        self.pass_due[owner] = None
        s, grace = self.settings, self.settings.lost_after_seconds
        if not self.up[owner] and at < self.down_since[owner] + grace:
            self._request_pass(self.down_since[owner] + grace, owner)  # its delegates' turn
            return
        settled = [
            self._shares(self.bundles[ref])
            for ref in sorted(self.attention[owner])
            if self.bundles[ref].lost_at is None
        ]
        # Those at or above their threshold wait, by design, until another loss brings
        # them back here.
        threshold = repair_threshold(self.scheme.k, self.scheme.n, s.threshold)
        self.attention[owner] = {b.bundle_ref for b in settled if len(b.good) < threshold}
        due = bundles_below(settled, s.threshold, s.bundles_per_pass)
        waiting = len(bundles_below(settled, s.threshold, len(settled) + 1))
        now = at
        for shares in due:
            if len(shares.good) >= shares.k:
                now = await self._repair(self.bundles[shares.bundle_ref], shares, now)
        self.busy_until[owner] = now
        if waiting > len(due):
            self._request_pass(now + s.interval_seconds, owner)

    async def _repair(self, bundle: _Bundle, shares: BundleShares, now: float) -> float:
        readable = {p.share for p, _ in bundle.placed if self._readable(bundle.ref, p)}
        if len(readable) < self.scheme.k:
            self.out.repairs_failed += 1
            self.stalled[bundle.owner].add(bundle.ref)
            return now
        self.stalled[bundle.owner].discard(bundle.ref)
        lost = self.lost_view[bundle.owner]
        targets = repair_targets(
            shares, lost=lost, shunned=set(), spare_sites=self.settings.spare_sites
        )
        key = placement_key(bundle.bundle_id)
        sites = repair_sites(
            key,
            self._candidates(key, targets.wanted, bundle.owner),
            targets,
            owner_site=self.sites[bundle.owner].site_id,
            fragment_size=self.fragment_size,
        )
        placed = await self._place(bundle, shares.missing_shares, sites, now)
        read, written = self.scheme.k * self.fragment_size, len(placed) * self.fragment_size
        if placed:
            self.out.repairs += 1
            self.out.shares_placed += len(placed)
            self.out.bytes_read += read
            self.out.bytes_written += written
        link = self.config.link_bits_per_s
        return now + self.config.lookup_ms / 1000 + 8 * (read + written) / link

    def _readable(self, ref: int, placement: Placement) -> bool:
        site = self.index[placement.holder_site]
        return self.up[site] and self.held[site].get(ref) == placement.share


def _wait(rng: random.Random, per_year: float) -> float:
    """The time to the next event of a Poisson process of ``per_year`` events a year."""
    return rng.expovariate(per_year / YEAR) if per_year > 0 else math.inf


def durability(config: DurabilityConfig) -> dict[str, Any]:
    """Every scheme through every churn of ``config``, as plain data."""
    runs = []
    for churn in config.churns:
        for scheme in config.schemes:
            outcome = asyncio.run(DurabilitySim(config, scheme, churn).run())
            runs.append(_outcome(outcome, config))
    return {"config": _config(config), "runs": runs}


def _outcome(outcome: DurabilityOutcome, config: DurabilityConfig) -> dict[str, Any]:
    out = asdict(outcome)
    out["traffic_bytes"] = outcome.traffic_bytes
    years = config.days / 365.0
    out["lost_per_million_per_year"] = 1e6 * outcome.lost / outcome.bundles / years
    out["upper_per_million_per_year"] = (
        1e6 * rule_of_three(outcome.bundles) / years if outcome.lost == 0 else None
    )
    out["overhead"] = outcome.n / outcome.k
    return out


def _config(config: DurabilityConfig) -> dict[str, Any]:
    out = asdict(config)
    out["settings"] = settings_figures(config.settings)
    out["audit_gap_seconds"] = config.upkeep.audit_gap
    out["churns"] = [
        {**asdict(c), "outages_past_grace": c.outage_over(config.settings.lost_after_seconds)}
        for c in config.churns
    ]
    return out
