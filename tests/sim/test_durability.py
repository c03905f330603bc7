"""A year of churn over many simulated sites: what is lost, what is repaired, and when."""

from __future__ import annotations

import dataclasses
import heapq
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from meshpacs.node.config import MaintenanceConfig
from meshpacs.sim.durability import (
    DAY,
    Churn,
    DurabilityConfig,
    DurabilitySim,
    Scheme,
    SiteEvent,
    _Closest,
    durability,
    rule_of_three,
)
from meshpacs.sim.sites import make_sites
from meshpacs.upkeep.repair import RepairSettings

SMALL = DurabilityConfig(sites=60, bundles_per_site=3, seed=5, days=120.0)


async def placed(scheme: Scheme, config: DurabilityConfig = SMALL) -> DurabilitySim:
    sim = DurabilitySim(config, scheme, Churn.none())
    await sim.place_all()
    return sim


def holders(sim: DurabilitySim, ref: int) -> list[int]:
    return [sim.index[p.holder_site] for p, _ in sim.bundles[ref].placed]


def test_the_timing_is_the_node_config_defaults() -> None:
    node = MaintenanceConfig()
    upkeep = SMALL.upkeep
    assert upkeep.audits_per_hour == node.audits_per_hour
    assert upkeep.audit_challenges == node.audit_challenges
    assert upkeep.audit_spread_seconds == node.audit_spread_seconds
    assert upkeep.lease_renew_seconds == node.lease_renew_seconds
    assert SMALL.settings.lost_after_seconds == node.lost_after_seconds
    assert SMALL.settings.interval_seconds == node.repair_interval_seconds
    assert SMALL.settings.threshold == node.repair_threshold
    # The gap, not the budget, paces audits of a site with a few hundred placements.
    assert upkeep.audit_period(350) == upkeep.audit_gap == pytest.approx(365 * DAY / 16)
    assert upkeep.audit_period(10**6) > upkeep.audit_gap


def test_the_closest_live_sites_are_those_a_full_scan_finds() -> None:
    sites = make_sites(300, seed=3)
    closest = _Closest(sites)
    usable = [i % 7 != 0 for i in range(300)]
    for index in range(40):
        key = bytes([index]) * 20
        target = int.from_bytes(key, "big")
        scan = heapq.nsmallest(
            12,
            (s.index for s in sites if usable[s.index] and s.index != 5),
            key=lambda i: int.from_bytes(sites[i].node_id, "big") ^ target,
        )
        assert closest.nearest(key, 12, usable, 5) == scan


@pytest.mark.parametrize("scheme", [Scheme(4, 7), Scheme(1, 3)])
async def test_without_churn_nothing_is_lost_or_repaired(scheme: Scheme) -> None:
    sim = await placed(scheme)
    out = await sim.run(churn=False)
    assert out.bundles == 180 and out.lost == 0 and out.repairs == 0
    assert out.traffic_bytes == 0 and out.ever_unavailable == 0
    assert out.min_live == {scheme.n: 180}
    assert {fewest for _, fewest, *_ in out.samples} == {scheme.n}
    assert len(out.samples) == 121
    assert out.stored_bytes == 180 * scheme.n * sim.fragment_size


@pytest.mark.parametrize("scheme", [Scheme(4, 7), Scheme(1, 3)])
@pytest.mark.parametrize("kind", ["gone", "disk"])
async def test_more_than_n_minus_k_holders_lost_before_repair_lose_the_bundle(
    scheme: Scheme, kind: str
) -> None:
    sim = await placed(scheme)
    ref = 17
    doomed = holders(sim, ref)[: scheme.n - scheme.k + 1]
    events = [SiteEvent(3600.0 * (i + 1), kind, site) for i, site in enumerate(doomed)]
    out = await sim.run(events, churn=False)
    assert sim.bundles[ref].lost_at == pytest.approx(3600.0 * len(doomed))
    assert out.lost >= 1 and out.lost_at_days[0] == pytest.approx(len(doomed) / 24)
    lost = {b.ref for b in sim.bundles if b.lost_at is not None}
    # Every bundle lost had more than n-k of its shares on the failed sites.
    for b in sim.bundles:
        on_failed = sum(1 for site in holders(sim, b.ref) if site in doomed)
        assert (b.ref in lost) == (on_failed > scheme.n - scheme.k), b.ref


@pytest.mark.parametrize("scheme", [Scheme(4, 7), Scheme(1, 3)])
async def test_n_minus_k_failures_with_time_to_repair_lose_nothing(scheme: Scheme) -> None:
    sim = await placed(scheme)
    ref = 17
    # One holder after another, each long after the last was found and repaired: the
    # audit gap (22.8 days) plus the grace bound how long finding out takes.
    spaced = holders(sim, ref)[: scheme.n - scheme.k]
    events = [SiteEvent(DAY + 30 * DAY * i, "gone", site) for i, site in enumerate(spaced)]
    out = await sim.run(events, churn=False)
    assert out.lost == 0 and sim.bundles[ref].lost_at is None
    assert out.repairs > 0 and out.shares_placed >= out.repairs
    assert out.bytes_read == out.repairs * scheme.k * sim.fragment_size
    assert out.bytes_written == out.shares_placed * sim.fragment_size
    # What the owner counts good is at least its threshold, all on sites still there.
    good = sim._shares(sim.bundles[ref]).good
    assert len(good) >= scheme.threshold
    assert not {sim.index[p.holder_site] for p in good.values()} & set(spaced[:-1])


async def test_an_outage_shorter_than_the_grace_costs_no_repair() -> None:
    sim = await placed(Scheme(4, 7))
    two = holders(sim, 17)[:2]
    events = [SiteEvent(DAY, "down", s) for s in two] + [SiteEvent(2 * DAY, "up", s) for s in two]
    out = await sim.run(events, churn=False)
    assert out.repairs == 0 and out.events["down"] == 2 and out.events["up"] == 2
    assert out.min_live[5] >= 1  # two shares of bundle 17 were not live for a day
    assert out.samples[-1][1] == 7  # all back


async def test_an_outage_past_the_grace_is_repaired_and_found_later_than_the_grace() -> None:
    sim = await placed(Scheme(4, 7))
    two = holders(sim, 17)[:2]
    events = [SiteEvent(DAY, "down", s) for s in two]
    out = await sim.run(events, churn=False)
    assert out.repairs > 0 and out.lost == 0
    grace_days = SMALL.settings.lost_after_seconds / DAY
    traffic = [(day, sent) for day, *_, sent in out.samples]
    first = min(day for day, sent in traffic if sent > 0)
    assert first > 1 + grace_days - 1  # never before the grace (less a day of renewals)
    assert first <= 1 + SMALL.upkeep.audit_gap / DAY + 1


def timeless(result: dict[str, Any]) -> dict[str, Any]:
    for run in result["runs"]:
        run.pop("elapsed_s")
    return result


def test_the_same_seed_gives_the_same_year_and_the_schemes_meet_the_same_churn() -> None:
    config = dataclasses.replace(
        SMALL, sites=40, bundles_per_site=2, days=90.0, schemes=(Scheme(4, 7), Scheme(1, 3)),
        churns=(Churn.harsh(),),
    )  # fmt: skip
    first = timeless(durability(config))
    assert timeless(durability(config)) == first
    assert timeless(durability(dataclasses.replace(config, seed=6))) != first
    a, b = first["runs"]
    assert (a["scheme"], b["scheme"]) == ("4-of-7", "3x replication")
    assert a["events"]["down"] == b["events"]["down"] > 0
    one = DurabilitySim(config, Scheme(4, 7), Churn.harsh())
    other = DurabilitySim(config, Scheme(1, 3), Churn.harsh())
    assert one.site_trace(3, 0.0) == other.site_trace(3, 0.0) != []
    assert first["config"]["seed"] == 5


def test_the_harsh_churn_is_harsher_and_zero_losses_get_an_upper_bound() -> None:
    typical, harsh = Churn.typical(), Churn.harsh()
    grace = RepairSettings().lost_after_seconds
    assert 0 < typical.outage_over(grace) < harsh.outage_over(grace) < 1
    assert typical.outage_over(3600 * typical.outage_median_hours) == pytest.approx(0.5)
    assert rule_of_three(30_000) == pytest.approx(1e-4)


def load_script() -> Any:
    path = Path(__file__).resolve().parents[2] / "scripts" / "simulate_federation.py"
    spec = importlib.util.spec_from_file_location("simulate_federation", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_report_names_its_seed_and_each_rewrite_keeps_the_other_part() -> None:
    script = load_script()
    config = dataclasses.replace(
        SMALL, sites=30, bundles_per_site=2, days=30.0, schemes=(Scheme(4, 7), Scheme(1, 3)),
        churns=(Churn.typical(),),
    )  # fmt: skip
    result = durability(config)
    result.update(elapsed_s=1.0, command="simulate_federation.py --durability --write-docs")
    assert "seed 5" in script.durability_summary(result)
    section = script.durability_document(result)
    assert section.startswith(script.BEGIN) and section.endswith(script.END)
    assert (
        "| typical | 4-of-7 | 1.75x | 6 | 0 of 60 | 0 (< 608,333) |"
    )  # 3 / 60 over 30 days, a year in section
    page = "# scale\n\nthe rest\n"
    with_it = script.with_section(page, section)
    assert with_it.startswith(page.rstrip("\n")) and script.marked_section(with_it) == section
    # The main run's page keeps the durability section; the durability run keeps the rest.
    assert script.marked_section(script.with_section("# new\n", section)) == section
    newer = script.with_section(with_it, section.replace("typical", "mild"))
    assert (
        newer.startswith("# scale\n\nthe rest")
        and "mild" in newer
        and newer.count(script.BEGIN) == 1
    )
    assert script.with_section(page, "") == page
