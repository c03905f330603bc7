"""Placement and repair over many simulated sites, decided by meshpacs' own functions."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from meshpacs.dht import placement_key
from meshpacs.erasure import fragment_id
from meshpacs.metadata.repair import repair_threshold
from meshpacs.sim.federation import Federation, SimBundle
from meshpacs.sim.run import SimConfig, simulate
from meshpacs.sim.sites import make_sites
from meshpacs.upkeep.repair import RepairSettings

K, N = 4, 7
LINK = 100e6


async def backed_up(sites: int = 100, per_site: int = 10, *, threshold: int | None = None,
                    capacity: dict[int, int] | None = None) -> Federation:  # fmt: skip
    members = make_sites(sites, seed=2)
    for index, room in (capacity or {}).items():
        members[index] = dataclasses.replace(members[index], capacity_bytes=room)
    federation = Federation(members, seed=2, settings=RepairSettings(threshold=threshold))
    await federation.back_up(per_site, bundle_bytes=8 * 1024**2, k=K, n=N, segment_size=2**20)
    return federation


def holders(bundle: SimBundle) -> list[str]:
    return [p.holder_site for p in bundle.placements]


def distance(federation: Federation, site_id: str, key: bytes) -> int:
    site = next(s for s in federation.sites if s.site_id == site_id)
    return int.from_bytes(site.node_id, "big") ^ int.from_bytes(key, "big")


async def test_each_bundle_goes_to_the_n_closest_sites_but_its_owner() -> None:
    federation = await backed_up()
    balance = federation.balance()
    assert sum(balance.per_site) == len(federation.bundles) * N
    for bundle in federation.bundles[::17]:
        owner = federation.sites[bundle.owner]
        key = placement_key(bundle.bundle_id)
        others = [s.site_id for s in federation.sites if s.index != bundle.owner]
        closest = sorted(others, key=lambda site: distance(federation, site, key))[:N]
        assert sorted(holders(bundle)) == sorted(closest)
        assert owner.site_id not in holders(bundle)
        for p in bundle.placements:
            assert p.fragment_id == fragment_id(owner.fragment_id_key, bundle.bundle_id, p.share)
    assert balance.max_over_mean >= 1.0 and sum(balance.histogram().values()) == 100


async def test_a_site_without_room_takes_no_fragment() -> None:
    federation = await backed_up(capacity={5: 1000, 6: 0})
    per_site = federation.balance().per_site
    assert per_site[5] == 0 and per_site[6] == 0
    assert all(len(set(holders(b))) == N for b in federation.bundles)


async def test_after_ten_percent_fail_every_bundle_that_can_be_is_back_at_n() -> None:
    federation = await backed_up(threshold=N)
    doomed = federation.bundles[3]
    failed = {federation.index_of(s) for s in holders(doomed)[: N - K + 1]}
    others = [i for i in range(100) if i not in failed and i != doomed.owner]
    failed |= set(others[:: len(others) // (10 - len(failed))][: 10 - len(failed)])
    before = copy.deepcopy(federation.bundles)
    outcome = await federation.repair_after_failure(
        0.1, link_bits_per_s=LINK, failed=sorted(failed)
    )

    lost = {federation.sites[i].site_id for i in failed}
    assert outcome.failed == 10 and outcome.unrecoverable >= 1
    for bundle, old in zip(federation.bundles, before, strict=True):
        good = bundle.shares(lost).good
        sites = holders(bundle)
        assert len(sites) == len(set(sites))  # never two shares on one site
        if bundle.owner in failed:
            assert bundle.placements == old.placements  # its owner is down: nobody repaired
        elif len(old.shares(lost).good) >= K:
            assert len(good) == N and not set(sites) & lost
        else:
            assert bundle.placements == old.placements  # nothing to regenerate from
    assert len(doomed.shares(lost).good) < K
    short = sum(
        1 for b in federation.bundles if b.owner not in failed and len(b.shares(lost).good) < K
    )
    assert outcome.unrecoverable == short
    assert outcome.repaired + outcome.unrecoverable == outcome.hit
    size = federation.bundles[0].fragment_size
    assert outcome.bytes_written == outcome.shares_placed * size
    assert outcome.bytes_read == outcome.repaired * K * size
    # Nobody repairs before the grace ends; the timeline ends with only the hopeless left.
    grace = federation.settings.lost_after_seconds
    assert outcome.first_repair_s is not None and outcome.first_repair_s > grace
    assert outcome.all_repaired_s is not None and outcome.all_repaired_s >= outcome.first_repair_s
    assert outcome.timeline[0] == (0.0, outcome.hit)
    assert outcome.timeline[-1][1] == outcome.unrecoverable


async def test_with_the_default_threshold_one_lost_share_waits() -> None:
    federation = await backed_up()
    outcome = await federation.repair_after_failure(0.05, link_bits_per_s=LINK)
    lost = {federation.sites[i].site_id for i in federation.down}
    threshold = repair_threshold(K, N)
    assert threshold == 6
    counts = [
        len(b.shares(lost).good) for b in federation.bundles if b.owner not in federation.down
    ]
    assert all(c >= threshold or c < K for c in counts)
    assert outcome.left_degraded == sum(1 for c in counts if threshold <= c < N) > 0
    assert outcome.repaired == sum(1 for c in counts if c == N) - (len(counts) - outcome.hit)


@pytest.mark.parametrize("fraction", [0.01, 0.05])
async def test_more_failures_cost_more_repair_traffic(fraction: float) -> None:
    small = await (await backed_up(threshold=N)).repair_after_failure(
        fraction, link_bits_per_s=LINK
    )
    large = await (await backed_up(threshold=N)).repair_after_failure(0.10, link_bits_per_s=LINK)
    assert 0 < small.traffic_bytes < large.traffic_bytes
    assert small.shares_placed < large.shares_placed


def test_the_same_seed_gives_the_same_simulation() -> None:
    config = dataclasses.replace(
        SimConfig.quick(sites=40, seed=3), dht_sizes=(16,), lookups=10, failed_lookups=0,
        bundles_per_site=3,
    )  # fmt: skip
    first = simulate(config)
    assert simulate(config) == first
    assert simulate(dataclasses.replace(config, seed=4)) != first
    assert [f["fraction"] for f in first["failures"]] == [0.01, 0.01, 0.05, 0.05, 0.1, 0.1]
