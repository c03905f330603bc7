"""One whole simulation: DHT lookups at several sizes, placement, failures and repair.

:func:`simulate` returns plain data (dicts, lists, numbers) so that the script can print
it, write it as JSON and plot it; the same config and seed give the same result.
"""

from __future__ import annotations

import asyncio
import copy
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from meshpacs.sim.federation import FailureOutcome, Federation, settings_figures
from meshpacs.sim.network import LookupResult, SimDht
from meshpacs.sim.sites import make_sites
from meshpacs.upkeep.repair import RepairSettings

__all__ = ["SimConfig", "lookup_stats", "simulate"]


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. ``quick`` sizes are for a first look and for tests."""

    sites: int = 1000
    seed: int = 1
    dht_sizes: tuple[int, ...] = (64, 128, 256, 512, 1000)
    lookups: int = 300
    failed_lookups: int = 100  # lookups with 10% of the DHT nodes down
    bundles_per_site: int = 20
    bundle_bytes: int = 256 * 1024**2
    segment_size: int = 1024**2
    k: int = 4
    n: int = 7
    failure_fractions: tuple[float, ...] = (0.01, 0.05, 0.10)
    link_bits_per_s: float = 100e6  # each owner's link to the mesh, both ways
    settings: RepairSettings = field(default_factory=RepairSettings)

    @classmethod
    def quick(cls, sites: int = 200, seed: int = 1) -> SimConfig:
        return cls(
            sites=sites,
            seed=seed,
            dht_sizes=(32, 64, 128),
            lookups=100,
            failed_lookups=40,
            bundles_per_site=10,
        )


def lookup_stats(size: int, results: Sequence[LookupResult]) -> dict[str, Any]:
    rounds = [r.rounds for r in results]
    latency = sorted(r.latency_ms for r in results)
    return {
        "sites": size,
        "log2_sites": math.log2(size),
        "lookups": len(results),
        "rounds_mean": statistics.fmean(rounds),
        "rounds_max": max(rounds),
        "rpcs_mean": statistics.fmean(r.rpcs for r in results),
        "closest_round_mean": statistics.fmean(
            r.closest_round for r in results if r.closest_round is not None
        ),
        "latency_ms_mean": statistics.fmean(latency),
        "latency_ms_p95": latency[min(len(latency) - 1, int(0.95 * len(latency)))],
        "exact_fraction": sum(r.exact for r in results) / len(results),
        "closest_found_fraction": sum(r.closest_found for r in results) / len(results),
        "recall_mean": statistics.fmean(r.recall for r in results),
    }


async def _dht_at(size: int, config: SimConfig, *, failed_lookups: int = 0) -> dict[str, Any]:
    dht = SimDht(make_sites(size, config.seed), seed=config.seed)
    await dht.join_all()
    rng = random.Random(f"meshpacs-sim-lookups/{config.seed}/{size}")
    pairs = [(rng.randrange(size), rng.randbytes(20)) for _ in range(config.lookups)]
    stats = lookup_stats(size, await dht.lookups(pairs))
    if failed_lookups:
        down = rng.sample(range(size), size // 10)
        dht.fail(down)
        alive = [i for i in range(size) if dht.is_up(i)]
        pairs = [(rng.choice(alive), rng.randbytes(20)) for _ in range(failed_lookups)]
        stats["with_10pct_down"] = lookup_stats(size, await dht.lookups(pairs))
    return stats


async def _simulate(config: SimConfig) -> dict[str, Any]:
    dht = []
    for size in config.dht_sizes:
        wanted = config.failed_lookups if size == max(config.dht_sizes) else 0
        dht.append(await _dht_at(size, config, failed_lookups=wanted))
    lookup_ms = dht[-1]["latency_ms_mean"]

    federation = Federation(
        make_sites(config.sites, config.seed), seed=config.seed, settings=config.settings
    )
    balance = await federation.back_up(
        config.bundles_per_site,
        bundle_bytes=config.bundle_bytes,
        k=config.k,
        n=config.n,
        segment_size=config.segment_size,
    )
    failures: list[dict[str, Any]] = []
    for fraction in config.failure_fractions:
        for threshold in (config.settings.threshold, config.n):
            trial = copy.deepcopy(federation)
            trial.settings = RepairSettings(**{**asdict(config.settings), "threshold": threshold})
            outcome = await trial.repair_after_failure(
                fraction, link_bits_per_s=config.link_bits_per_s, lookup_ms=lookup_ms
            )
            failures.append(_outcome(outcome))
    return {
        "config": _config(config),
        "dht": dht,
        "placement": {
            "sites": config.sites,
            "bundles": len(federation.bundles),
            "fragments": sum(balance.per_site),
            "unplaced_shares": balance.unplaced_shares,
            "mean": balance.mean,
            "max": max(balance.per_site),
            "min": min(balance.per_site),
            "max_over_mean": balance.max_over_mean,
            "histogram": balance.histogram(),
        },
        "failures": failures,
    }


def _config(config: SimConfig) -> dict[str, Any]:
    out = asdict(config)
    out["settings"] = settings_figures(config.settings)
    return out


def _outcome(outcome: FailureOutcome) -> dict[str, Any]:
    out = asdict(outcome)
    out["traffic_bytes"] = outcome.traffic_bytes
    return out


def simulate(config: SimConfig) -> dict[str, Any]:
    """Run the whole simulation in a fresh event loop."""
    return asyncio.run(_simulate(config))
