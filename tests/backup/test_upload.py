"""Placing shares: one site per share, failures moved on, slow puts hedged, surplus deleted."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from meshpacs.backup.upload import UploadPolicy, place_shares
from meshpacs.errors import PeerUnreachable

FAST = UploadPolicy(hedge_fraction=0.5, hedge_factor=2.0, hedge_min=0.05, tick=0.01)


@dataclass
class Partners:
    """Sites that take shares after a delay, or fail; records what each site holds."""

    delay: dict[str, float] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)
    held: dict[str, set[int]] = field(default_factory=dict)
    deleted: list[tuple[str, int]] = field(default_factory=list)
    recorded: list[tuple[int, str]] = field(default_factory=list)

    async def put(self, site: str, share: int) -> None:
        await asyncio.sleep(self.delay.get(site, 0.001))
        if site in self.failing:
            raise PeerUnreachable(f"site {site} unreachable")
        self.held.setdefault(site, set()).add(share)

    async def delete(self, site: str, share: int) -> None:
        self.held[site].discard(share)
        self.deleted.append((site, share))

    async def on_placed(self, share: int, site: str) -> None:
        self.recorded.append((share, site))


async def test_every_share_on_its_own_site_in_placement_order() -> None:
    partners = Partners()
    sites = [f"s{i}" for i in range(7)]
    outcome = await place_shares(
        range(5), sites, partners.put, partners.delete, partners.on_placed, policy=FAST
    )
    assert outcome.placed == {i: f"s{i}" for i in range(5)}
    assert sorted(partners.recorded) == sorted(outcome.placed.items())
    assert {s: h for s, h in partners.held.items() if h} == {f"s{i}": {i} for i in range(5)}


async def test_a_failed_site_passes_its_share_to_a_spare() -> None:
    partners = Partners(failing={"s1"})
    sites = ["s0", "s1", "s2", "s3"]
    outcome = await place_shares(
        range(3), sites, partners.put, partners.delete, partners.on_placed, policy=FAST
    )
    assert outcome.placed == {0: "s0", 1: "s3", 2: "s2"}
    assert "unreachable" in outcome.failed["s1"]


async def test_too_few_sites_leaves_shares_unplaced() -> None:
    partners = Partners(failing={"s1"})
    outcome = await place_shares(
        range(3), ["s0", "s1", "s2"], partners.put, partners.delete, partners.on_placed, policy=FAST
    )
    assert set(outcome.placed) == {0, 2}
    assert set(outcome.failed) == {"s1"}


async def test_a_slow_site_is_hedged_and_its_copy_cancelled() -> None:
    partners = Partners(delay={"s2": 5.0})
    sites = ["s0", "s1", "s2", "s3", "s4"]
    outcome = await asyncio.wait_for(
        place_shares(
            range(4), sites, partners.put, partners.delete, partners.on_placed, policy=FAST
        ),
        timeout=3,
    )
    assert outcome.hedged >= 1
    assert outcome.placed[2] in {"s4"}
    assert 2 not in partners.held.get("s2", set())
    holders = [site for site, shares in partners.held.items() for _ in shares]
    assert len(holders) == len(set(holders)) == 4  # one share per site, no surplus


async def test_shares_already_placed_are_not_sent_again() -> None:
    partners = Partners()
    outcome = await place_shares(
        range(3),
        ["s0", "s1", "s2", "s3"],
        partners.put,
        partners.delete,
        partners.on_placed,
        policy=FAST,
        already={0: "s1"},
    )
    assert outcome.placed == {0: "s1", 1: "s0", 2: "s2"}
    assert sorted(partners.recorded) == [(1, "s0"), (2, "s2")]
