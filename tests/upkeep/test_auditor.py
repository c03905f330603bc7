"""The auditor over a real catalog and the real pipeline's fragments, partners as directories.

A holder here answers from whatever bytes its directory has (the transport's own tests
cover the wire), so a fragment altered, truncated or removed on its disk is exactly what
the auditor must catch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshpacs.audit.reputation import Outcome
from meshpacs.metadata import health, ledger
from meshpacs.upkeep import Auditor, AuditSettings

from ..backup.helpers import Site, open_site
from .helpers import DirHolders


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with open_site(tmp_path) as opened:
        await opened.receive(3, size=20_000)
        await opened.service().run_once()
        yield opened


def auditor(site: Site, holders: DirHolders, **settings: float) -> Auditor:
    return Auditor(site.catalog, holders, AuditSettings(**settings), clock=site.clock)


async def placements(site: Site) -> list[ledger.Placement]:
    return await site.catalog.read(lambda db: ledger.placements(db, 1))


async def verdicts(site: Site) -> dict[str, str]:
    rows = await site.catalog.read(
        lambda db: db.execute("SELECT holder_site, verdict FROM placements").fetchall()
    )
    return {str(s): str(v) for s, v in rows}


async def audit_round(site: Site, checker: Auditor, count: int) -> list[str]:
    """``count`` audits a second apart."""
    outcomes = []
    for _ in range(count):
        site.clock.advance(1)
        result = await checker.audit_once()
        assert result is not None
        outcomes.append(result.outcome)
    return outcomes


async def test_intact_holders_pass_every_audit(site: Site) -> None:
    holders = DirHolders(site.partners.root)
    assert await audit_round(site, auditor(site, holders), 8) == [Outcome.PASSED] * 8
    assert set((await verdicts(site)).values()) == {"ok"}
    # Oldest first: the four placements were each asked twice, never the same nonce.
    sites = [s for s, _ in holders.asked]
    assert sorted(sites[:4]) == sorted(sites[4:]) and len(set(sites)) == 4
    assert len({c.nonce for _, c in holders.asked}) == 8
    records = await site.catalog.read(health.peer_records)
    assert [(r.passed, r.failed) for r in records] == [(2, 0)] * 4


async def test_altered_truncated_and_removed_fragments_fail_their_audit(site: Site) -> None:
    placed = await placements(site)
    files = {p.holder_site: site.partners.root / p.holder_site / p.fragment_id for p in placed}
    altered, truncated, removed, intact = sorted(files)
    data = bytearray(files[altered].read_bytes())
    for i in range(len(data) // 4, len(data)):  # every range a challenge may ask crosses it
        data[i] ^= 0xFF
    files[altered].write_bytes(bytes(data))
    files[truncated].write_bytes(files[truncated].read_bytes()[:100])
    files[removed].unlink()
    checker = auditor(site, DirHolders(site.partners.root))
    await audit_round(site, checker, 4)
    found = await verdicts(site)
    assert found[truncated] == "failed" and found[removed] == "missing"
    assert found[intact] == "ok"
    # A byte flip is caught when a challenge's range covers it; the last three quarters
    # of the fragment flipped is caught by nearly every challenge, so by a few audits.
    for _ in range(16):
        if (await verdicts(site))[altered] == "failed":
            break
        # Time moves on between audits: with equal audit times the oldest-first order
        # falls back to share number, and the intact share could win every turn.
        site.clock.advance(1)
        await checker.audit_once()
    assert (await verdicts(site))[altered] == "failed"
    counts = await site.catalog.read(health.verdict_counts)
    assert (counts.ok, counts.failed, counts.missing) == (1, 2, 1)


async def test_a_failed_placement_is_not_asked_again_and_its_peer_is_shunned(site: Site) -> None:
    await site.receive(2, start=10)  # a late instance: a second bundle of the study
    await site.service().run_once()
    first = await site.catalog.read(lambda db: ledger.placements(db, 1))
    second = await site.catalog.read(lambda db: ledger.placements(db, 2))
    # Four of six partners hold each bundle, so at least two hold a share of both.
    victim = sorted({p.holder_site for p in first} & {p.holder_site for p in second})[0]
    for placement in [*first, *second]:
        if placement.holder_site == victim:
            (site.partners.root / victim / placement.fragment_id).unlink()
    holders = DirHolders(site.partners.root)
    checker = auditor(site, holders)
    outcomes = await audit_round(site, checker, 16)
    assert outcomes.count(Outcome.MISSING) == 2
    assert [s for s, _ in holders.asked].count(victim) == 2  # each missing one asked once
    shunned = await site.catalog.read(lambda db: health.shunned_sites(db, 0.3, site.clock()))
    assert shunned == {victim}


async def test_an_unreachable_holder_keeps_its_verdict_and_is_left_alone_for_a_while(
    site: Site,
) -> None:
    holders = DirHolders(site.partners.root)
    checker = auditor(site, holders, retry_seconds=600)
    await audit_round(site, checker, 4)
    down = (await placements(site))[0].holder_site
    holders.down = {down}
    outcomes = await audit_round(site, checker, 8)
    assert outcomes.count(Outcome.UNREACHABLE) == 1  # asked once, then skipped
    assert (await verdicts(site))[down] == "ok"
    [record] = [r for r in await site.catalog.read(health.peer_records) if r.site_id == down]
    assert record.unreachable_at is not None and record.failed == 0
    site.clock.advance(601)
    holders.down = set()
    await audit_round(site, checker, 4)
    assert [s for s, _ in holders.asked[-4:]].count(down) == 1


async def test_every_challenge_is_spent_once_then_the_share_is_no_longer_audited(
    site: Site,
) -> None:
    holders = DirHolders(site.partners.root)
    checker = auditor(site, holders)
    total = 4 * 16  # n shares, DEFAULT_CHALLENGES each
    results = [await checker.audit_once() for _ in range(total)]
    assert all(r is not None and r.outcome == Outcome.PASSED for r in results)
    assert await checker.audit_once() is None
    assert len({c.nonce for _, c in holders.asked}) == total
    counts = await site.catalog.read(health.verdict_counts)
    assert counts.exhausted == 4


async def test_audits_are_spread_over_the_hour_within_the_budget(site: Site) -> None:
    gaps: list[float] = []
    stop = asyncio.Event()

    async def pause(seconds: float, event: asyncio.Event) -> None:
        gaps.append(seconds)
        if len(gaps) == 40:
            event.set()

    checker = Auditor(
        site.catalog,
        DirHolders(site.partners.root),
        AuditSettings(audits_per_hour=60),
        seed=7,
        clock=site.clock,
        pause=pause,
    )
    await checker.run(stop)
    assert len(gaps) == 40
    assert all(30 <= g <= 90 for g in gaps)  # 60 per hour: a minute apart, with jitter
    assert len(set(gaps)) == 40  # no rhythm
    assert 50 <= sum(gaps) / len(gaps) <= 70
    counts = await site.catalog.read(health.verdict_counts)
    assert counts.ok == 4


async def test_a_placement_is_audited_again_only_after_the_minimum_gap(site: Site) -> None:
    """Challenges last: each placement once, then nothing until its gap has passed."""
    holders = DirHolders(site.partners.root)
    checker = auditor(site, holders, min_gap_seconds=100.0)
    assert await audit_round(site, checker, 4) == [Outcome.PASSED] * 4  # each once
    site.clock.advance(1)
    assert await checker.audit_once() is None  # all four were audited within the gap
    site.clock.advance(100)
    assert await audit_round(site, checker, 4) == [Outcome.PASSED] * 4
    asked = [s for s, _ in holders.asked]
    assert sorted(asked[:4]) == sorted(asked[4:]) and len(set(asked)) == 4
    left = await site.catalog.read(
        lambda db: db.execute("SELECT total - spent FROM audit_sets").fetchall()
    )
    assert {int(r[0]) for r in left} == {14}  # two spent per share, not the budget's worth
