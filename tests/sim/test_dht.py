"""The simulated DHT: the node's own Kademlia protocol, many nodes over an in-memory network."""

from __future__ import annotations

import math
import os
import random

import pytest

from meshpacs.sim.network import SimDht
from meshpacs.sim.run import lookup_stats
from meshpacs.sim.sites import make_sites

LONG_FORM_ONLY = pytest.mark.skipif(
    os.environ.get("MESHPACS_FULL") != "1", reason="long form only (MESHPACS_FULL=1)"
)


async def joined(size: int, seed: int = 1) -> SimDht:
    dht = SimDht(make_sites(size, seed), seed=seed)
    await dht.join_all()
    return dht


def random_lookups(size: int, count: int, seed: int) -> list[tuple[int, bytes]]:
    rng = random.Random(seed)
    return [(rng.randrange(size), rng.randbytes(20)) for _ in range(count)]


async def test_lookups_find_the_true_closest_nodes() -> None:
    dht = await joined(64)
    results = await dht.lookups(random_lookups(64, 40, seed=7))
    assert all(r.closest_found for r in results)
    assert all(len(r.found) == dht.ksize for r in results)
    assert sum(r.recall for r in results) / len(results) >= 0.95
    assert all(r.rounds >= 1 and r.rpcs >= r.rounds and r.latency_ms > 0 for r in results)


async def test_a_lookup_with_sites_down_returns_only_sites_that_answer() -> None:
    dht = await joined(64)
    down = random.Random(3).sample(range(64), 6)
    dht.fail(down)
    down_ids = {dht.sites[i].node_id for i in down}
    alive = [i for i in range(64) if i not in down]
    rng = random.Random(4)
    results = await dht.lookups([(rng.choice(alive), rng.randbytes(20)) for _ in range(24)])
    assert all(not down_ids & set(r.found) for r in results)
    assert sum(r.closest_found for r in results) >= 0.9 * len(results)
    # A round that asked a failed site waits for its RPC timeout.
    assert max(r.latency_ms for r in results) >= dht.rpc_timeout_ms


async def hop_growth(small: int, large: int) -> tuple[dict[str, float], dict[str, float]]:
    stats = []
    for size in (small, large):
        dht = await joined(size)
        stats.append(lookup_stats(size, await dht.lookups(random_lookups(size, 60, seed=size))))
    return stats[0], stats[1]


def assert_logarithmic(small: dict[str, float], large: dict[str, float]) -> None:
    doublings = large["log2_sites"] - small["log2_sites"]
    grew = large["closest_round_mean"] - small["closest_round_mean"]
    # More rounds before the closest node is known, but far fewer than one per doubling
    # of the federation per alpha-wide round, and never more crawl rounds than log2 N.
    assert 0.05 * doublings < grew < doublings
    for stats in (small, large):
        assert stats["rounds_mean"] <= stats["log2_sites"]
        # alpha RPCs a round, the k closest asked once more, then their node records
        assert stats["rpcs_mean"] <= 3 * math.log2(stats["sites"]) + 2 * 20


async def test_hops_grow_like_log2_of_the_federation() -> None:
    assert_logarithmic(*(await hop_growth(32, 256)))


@pytest.mark.slow
@LONG_FORM_ONLY
async def test_hops_grow_like_log2_from_64_to_512_sites() -> None:
    assert_logarithmic(*(await hop_growth(64, 512)))


async def test_the_same_seed_gives_the_same_lookups() -> None:
    pairs = random_lookups(32, 20, seed=9)
    first = await (await joined(32, seed=5)).lookups(pairs)
    again = await (await joined(32, seed=5)).lookups(pairs)
    other = await (await joined(32, seed=6)).lookups(pairs)
    assert [(r.found, r.rounds, r.rpcs, r.latency_ms) for r in first] == [
        (r.found, r.rounds, r.rpcs, r.latency_ms) for r in again
    ]
    assert [r.found for r in first] != [r.found for r in other]
