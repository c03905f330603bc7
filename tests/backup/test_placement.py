"""Placement ranks distinct partner sites by XOR distance, never the owner."""

from __future__ import annotations

import random

import pytest

from meshpacs.backup.placement import Candidate, placement_key, rank_candidates


def candidates(seed: int, count: int = 12) -> list[Candidate]:
    rng = random.Random(seed)
    return [Candidate(f"site-{i}", rng.randbytes(20), 10**9) for i in range(count)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ranked_by_xor_distance_to_the_bundle_key(seed: int) -> None:
    rng = random.Random(seed)
    key = placement_key(rng.randbytes(16))
    ranked = rank_candidates(key, candidates(seed), owner_site="site-0", fragment_size=10)
    distances = [int.from_bytes(c.node_id, "big") ^ int.from_bytes(key, "big") for c in ranked]
    assert distances == sorted(distances), f"seed {seed}"
    assert "site-0" not in {c.site_id for c in ranked}
    assert len(ranked) == 11


def test_different_bundles_get_different_orders() -> None:
    sites = candidates(7)
    orders = {
        tuple(
            c.site_id
            for c in rank_candidates(
                placement_key(bytes([b]) * 16), sites, owner_site="x", fragment_size=1
            )
        )
        for b in range(8)
    }
    assert len(orders) > 1


def test_offline_full_excluded_and_duplicate_sites_are_dropped() -> None:
    key = bytes(20)
    near = Candidate("a", bytes(19) + b"\x01", 100)
    far_same_site = Candidate("a", b"\xff" * 20, 100)
    full = Candidate("b", bytes(19) + b"\x02", 5)
    offline = Candidate("c", bytes(19) + b"\x03", 100, online=False)
    excluded = Candidate("d", bytes(19) + b"\x04", 100)
    ok = Candidate("e", bytes(19) + b"\x05", 100)
    ranked = rank_candidates(
        key,
        [far_same_site, full, offline, excluded, ok, near],
        owner_site="owner",
        fragment_size=10,
        exclude=["d"],
    )
    assert ranked == [near, ok]


def test_placement_key_is_deterministic_and_160_bits() -> None:
    bundle_id = bytes(range(16))
    assert placement_key(bundle_id) == placement_key(bundle_id)
    assert len(placement_key(bundle_id)) == 20
    assert placement_key(bundle_id) != placement_key(bytes(16))
