"""The repairer over a real catalog, the real codec and the real gatherer; partners as
directories (the transport and the mesh have their own tests)."""

from __future__ import annotations

import io
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshpacs.erasure import verify_fragment
from meshpacs.metadata import health, ledger
from meshpacs.metadata import repair as repair_ledger
from meshpacs.upkeep import Auditor, AuditSettings, Repairer, RepairSettings

from ..backup.helpers import Site, decode_all, open_site
from ..node.logfields import event_fields
from .helpers import DirHolders

K, N = 2, 4  # threshold 3: one lost share waits, two are repaired
GRACE = 3600.0


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with open_site(tmp_path) as opened:
        opened.sent = await opened.receive(3, size=20_000)  # type: ignore[attr-defined]
        report = await opened.service(k=K, n=N, happy=N).run_once()
        assert report.stored == 1
        yield opened


def holders_of(site: Site) -> DirHolders:
    return DirHolders(site.partners.root)


def repairer(
    site: Site, holders: DirHolders, *, adopt: bool = False, **settings: object
) -> Repairer:
    return Repairer(
        site_id="owner",
        fragment_id_key=site.keys.fragment_id,
        catalog=site.catalog,
        partners=site.partners,
        fetch=holders.fetch,
        find_holders=holders.find_holders,
        work_dir=site.work / "repair",
        settings=RepairSettings(lost_after_seconds=GRACE, **settings),  # type: ignore[arg-type]
        has_fragment=holders.has_fragment if adopt else None,
        clock=site.clock,
    )


async def placements(site: Site) -> list[ledger.Placement]:
    return await site.catalog.read(lambda db: ledger.placements(db, 1))


async def state(site: Site) -> str:
    return (await site.catalog.read(lambda db: ledger.bundle(db, 1))).state


async def lose(site: Site, holders: DirHolders, *sites: str) -> dict[str, bytes]:
    """The sites go down for good (their disks gone) and audits notice; past the grace.

    Returns the fragments they held, by fragment ID, as they were."""
    held = {}
    for name in sites:
        for path in (site.partners.root / name).iterdir():
            held[path.name] = path.read_bytes()
        shutil.rmtree(site.partners.root / name)
        site.partners.down.add(name)
        holders.down.add(name)
    checker = Auditor(site.catalog, holders, AuditSettings(), clock=site.clock)
    for _ in range(N):
        site.clock.advance(1)
        await checker.audit_once()
    site.clock.advance(GRACE + 1)
    return held


async def lose_holders_of_shares_0_and_1(
    site: Site, holders: DirHolders
) -> tuple[dict[int, ledger.Placement], list[str], dict[str, bytes]]:
    """Two of the bundle's sites lost for good: below its threshold, so repair must act.

    Returns the placements before, by share, the lost sites and what they held."""
    before = {p.share: p for p in await placements(site)}
    gone = sorted({before[0].holder_site, before[1].holder_site})
    return before, gone, await lose(site, holders, *gone)


def free_sites(site: Site, before: dict[int, ledger.Placement]) -> list[str]:
    """The partner sites that held none of the bundle's shares."""
    return sorted(set(site.partners.sites) - {p.holder_site for p in before.values()} - {"owner"})


def put_copy(site: Site, holder: str, fragment_id: str, data: bytes) -> None:
    """``data`` on ``holder``'s disk under ``fragment_id``, as a delegate would leave it."""
    (site.partners.root / holder).mkdir(exist_ok=True)
    (site.partners.root / holder / fragment_id).write_bytes(data)


async def test_a_bundle_below_its_threshold_is_regenerated_exactly_on_new_sites(
    site: Site,
) -> None:
    holders = holders_of(site)
    _, gone, originals = await lose_holders_of_shares_0_and_1(site, holders)

    report = await repairer(site, holders).repair_once()

    assert report.lost_sites == tuple(gone)
    assert (report.attempted, report.repaired, report.shares_placed) == (1, 1, 2)
    after = {p.share: p for p in await placements(site)}
    assert sorted(after) == list(range(N))
    assert len({p.holder_site for p in after.values()}) == N  # distinct sites
    assert not {p.holder_site for p in after.values()} & {*gone, "owner"}
    row = await site.catalog.read(lambda db: ledger.bundle(db, 1))
    assert row.set_hash is not None
    for share in (0, 1):
        placed = after[share]
        data = (site.partners.root / placed.holder_site / placed.fragment_id).read_bytes()
        assert data == originals[placed.fragment_id]  # byte for byte what was first made
        assert verify_fragment(io.BytesIO(data), row.set_hash).header.share == share
    assert await state(site) == "stored"
    assert await decode_all(site, K) == site.sent  # type: ignore[attr-defined]
    summary = await site.catalog.read(lambda db: repair_ledger.repair_summary(db, set(gone)))
    assert (summary.repairs, summary.shares_placed, summary.last_outcome) == (1, 2, "repaired")
    assert summary.below_n == 0 and summary.superseded == 2


async def test_shares_a_delegate_placed_while_the_owner_was_down_are_adopted_not_rebuilt(
    site: Site,
) -> None:
    holders = holders_of(site)
    before, gone, originals = await lose_holders_of_shares_0_and_1(site, holders)
    # A delegate rebuilt share 0 on a free site (same ID, same bytes); share 1 it did not.
    free = free_sites(site, before)
    put_copy(site, free[0], before[0].fragment_id, originals[before[0].fragment_id])
    # A copy whose bytes do not belong to the bundle is not taken for the share: another
    # share's bytes (all shares are one size) under share 1's ID.
    other = (site.partners.root / before[2].holder_site / before[2].fragment_id).read_bytes()
    put_copy(site, free[1], before[1].fragment_id, other)
    held_before = {p.name for p in (site.partners.root / free[0]).iterdir()}

    report = await repairer(site, holders, adopt=True).repair_once()

    assert (report.shares_adopted, report.shares_placed, report.repaired) == (1, 2, 1)
    after = {p.share: p for p in await placements(site)}
    assert after[0].holder_site == free[0]  # adopted where the delegate put it
    assert after[1].holder_site not in {*gone, "owner"}
    # Share 1 was rebuilt, not taken from the copy of another share filed under its ID.
    placed = site.partners.root / after[1].holder_site / after[1].fragment_id
    assert placed.read_bytes() == originals[before[1].fragment_id]
    # Adopting wrote nothing: share 0 was not put again at its site.
    assert {p.name for p in (site.partners.root / free[0]).iterdir()} >= held_before
    assert await state(site) == "stored"
    assert await decode_all(site, K) == site.sent  # type: ignore[attr-defined]


async def test_an_adopted_share_counts_in_its_pass_even_when_the_rest_cannot_be_rebuilt(
    site: Site,
) -> None:
    holders = holders_of(site)
    before = {p.share: p for p in await placements(site)}
    originals = await lose(site, holders, *sorted({p.holder_site for p in before.values()}))
    # Every holder is gone; a delegate had rebuilt share 0 only: one share, k is 2.
    free = free_sites(site, before)
    put_copy(site, free[0], before[0].fragment_id, originals[before[0].fragment_id])
    owner = repairer(site, holders, adopt=True)

    report = await owner.repair_once()
    assert (report.shares_adopted, report.unrecoverable, report.shares_placed) == (1, 1, 0)
    assert {p.share: p.holder_site for p in await placements(site)}[0] == free[0]  # recorded
    # The next pass finds nothing new to adopt, and says so: counts are per pass.
    again = await owner.repair_once()
    assert (again.shares_adopted, again.unrecoverable) == (0, 1)


async def test_one_lost_share_marks_the_bundle_degraded_and_waits_for_a_second(
    site: Site,
) -> None:
    holders = holders_of(site)
    first = (await placements(site))[0].holder_site
    await lose(site, holders, first)
    report = await repairer(site, holders).repair_once()
    assert (report.below_n, report.attempted) == (1, 0)
    assert await state(site) == "degraded"
    # The same loss with the threshold at n is repaired at once.
    report = await repairer(site, holders, threshold=N).repair_once()
    assert (report.repaired, report.shares_placed) == (1, 1)
    assert await state(site) == "stored"


async def test_a_lost_site_that_comes_back_has_its_surplus_copy_deleted(site: Site) -> None:
    holders = holders_of(site)
    before = await placements(site)
    gone = [before[0].holder_site, before[1].holder_site]
    originals = await lose(site, holders, *gone)
    mended = repairer(site, holders)
    await mended.repair_once()
    # Still down: nothing to collect, the replaced placements wait.
    assert (await mended.repair_once()).collected == 0

    back = gone[0]
    (site.partners.root / back).mkdir()
    for placed in before[:2]:
        if placed.holder_site == back:
            (site.partners.root / back / placed.fragment_id).write_bytes(
                originals[placed.fragment_id]
            )
    site.partners.down.discard(back)
    holders.down.discard(back)
    report = await mended.repair_once()
    assert back in report.lost_sites  # audits no longer reach it: no placement of it is left
    assert report.collected == 1  # but its answer to the deletion is enough
    assert list((site.partners.root / back).iterdir()) == []
    # ...to count as back: it is not lost any more, and may take new shares again.
    assert back not in (await mended.repair_once()).lost_sites
    summary = await site.catalog.read(lambda db: repair_ledger.repair_summary(db, {gone[1]}))
    assert summary.superseded == 1  # the other lost site's copy still waits


async def test_fewer_than_k_good_shares_is_left_for_later_and_recorded_nowhere(
    site: Site,
) -> None:
    holders = holders_of(site)
    placed = await placements(site)
    gone = [p.holder_site for p in placed[:3]]
    await lose(site, holders, *gone)
    report = await repairer(site, holders).repair_once()
    assert (report.attempted, report.unrecoverable, report.shares_placed) == (1, 1, 0)
    assert await state(site) == "degraded"
    summary = await site.catalog.read(lambda db: repair_ledger.repair_summary(db, set(gone)))
    assert summary.repairs == 0 and summary.failed == 0


async def test_no_eligible_site_is_a_failed_repair_with_its_reason(site: Site) -> None:
    holders = holders_of(site)
    placed = await placements(site)
    gone = [p.holder_site for p in placed[:2]]
    await lose(site, holders, *gone)
    spare = set(site.partners.sites) - {p.holder_site for p in placed} - {"owner"}
    site.partners.down |= spare  # the only sites free to take a share refuse every put
    report = await repairer(site, holders).repair_once()
    assert (report.failed, report.shares_placed) == (1, 0)
    summary = await site.catalog.read(lambda db: repair_ledger.repair_summary(db, set(gone)))
    assert (summary.failed, summary.last_outcome) == (1, "failed")
    assert await state(site) == "degraded"


async def test_a_corrupt_fragment_failed_by_audit_counts_as_lost(site: Site) -> None:
    holders = holders_of(site)
    placed = await placements(site)
    for victim in placed[:2]:
        path = site.partners.root / victim.holder_site / victim.fragment_id
        data = bytearray(path.read_bytes())
        for at in range(0, len(data), 1024):  # a flip inside every audit range (4 KiB)
            data[at] ^= 0xFF
        path.write_bytes(bytes(data))
    checker = Auditor(
        site.catalog, holders, AuditSettings(), clock=site.clock
    )  # any range now fails; audit until both holders have been asked
    verdicts: dict[str, str] = {}
    for _ in range(200):
        site.clock.advance(1)
        result = await checker.audit_once()
        if result is None:
            break
        verdicts[result.holder_site] = result.outcome
        if all(verdicts.get(v.holder_site) == "failed" for v in placed[:2]):
            break
    assert all(verdicts.get(v.holder_site) == "failed" for v in placed[:2]), verdicts
    report = await repairer(site, holders).repair_once()
    assert report.repaired == 1 and report.lost_sites == ()
    after = await placements(site)
    assert {p.holder_site for p in after}.isdisjoint({v.holder_site for v in placed[:2]})
    assert await decode_all(site, K) == site.sent  # type: ignore[attr-defined]


async def test_a_leaving_holder_has_its_share_rebuilt_elsewhere_at_once_and_deleted(
    site: Site,
) -> None:
    holders = holders_of(site)
    placed = await placements(site)
    leaving = placed[0]
    holders.leaving.add(leaving.holder_site)
    # The other holders are down at once: the leaving one must serve as a source.
    others = [p.holder_site for p in placed[1:3]]
    checker = Auditor(site.catalog, holders, AuditSettings(), clock=site.clock)
    outcomes = set()
    for _ in range(N):
        site.clock.advance(1)
        result = await checker.audit_once()
        assert result is not None
        outcomes.add((result.holder_site, result.outcome))
    assert (leaving.holder_site, "LEAVING") in outcomes
    leaving_now = await site.catalog.read(health.leaving_sites)
    assert leaving_now == {leaving.holder_site}
    shunned = await site.catalog.read(lambda db: health.shunned_sites(db, 0.0, site.clock()))
    assert shunned == {leaving.holder_site}  # no new shares for it, whatever its score
    holders.down |= set(others)
    site.partners.down |= set(others)

    report = await repairer(site, holders).repair_once()  # threshold 3: one loss would wait

    assert (report.repaired, report.shares_placed, report.collected) == (1, 1, 1)
    after = {p.share: p.holder_site for p in await placements(site)}
    assert after[leaving.share] not in {leaving.holder_site, "owner", *others}
    assert (leaving.holder_site, leaving.fragment_id) in holders.fetched  # gathered from it
    assert not (site.partners.root / leaving.holder_site / leaving.fragment_id).exists()
    holders.down.clear()
    site.partners.down.clear()
    assert await decode_all(site, K) == site.sent  # type: ignore[attr-defined]


async def test_when_no_new_site_is_left_the_site_whose_copy_rotted_takes_it_again(
    site: Site,
) -> None:
    holders = holders_of(site)
    placed = await placements(site)
    rotten = placed[0]
    path = site.partners.root / rotten.holder_site / rotten.fragment_id
    original = path.read_bytes()
    path.write_bytes(bytes(len(original)))  # zero-filled on the holder's disk
    await site.catalog.write(
        lambda db: health.record_corrupt_report(db, rotten.holder_site, rotten.fragment_id, 1.0)
    )
    spare = set(site.partners.sites) - {p.holder_site for p in placed} - {"owner"}
    site.partners.down |= spare  # every site new to the bundle refuses

    report = await repairer(site, holders, threshold=N).repair_once()

    assert (report.repaired, report.shares_placed) == (1, 1), report
    after = {p.share: p for p in await placements(site)}
    assert after[rotten.share].holder_site == rotten.holder_site
    assert path.read_bytes() == original  # the bad copy deleted, the share put again
    assert await state(site) == "stored"


async def test_a_pass_logs_its_counts_as_fields(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    holders = holders_of(site)
    before, gone, originals = await lose_holders_of_shares_0_and_1(site, holders)
    # A delegate rebuilt share 0 while the owner was down: adopted, share 1 regenerated.
    free = free_sites(site, before)
    put_copy(site, free[0], before[0].fragment_id, originals[before[0].fragment_id])
    caplog.set_level(logging.INFO, logger="meshpacs.repair")

    report = await repairer(site, holders, adopt=True).repair_once()

    assert (report.shares_adopted, report.shares_regenerated, report.shares_failed) == (1, 1, 0)
    (line,) = event_fields(caplog.records, "repair_pass")
    assert line["level"] == "INFO" and line["logger"] == "meshpacs.repair"
    assert line["lost_sites"] == gone
    assert (line["bundles_checked"], line["below_n"], line["below_threshold"]) == (1, 1, 1)
    assert (line["attempted"], line["repaired"], line["partial"], line["failed"]) == (1, 1, 0, 0)
    assert (line["shares_regenerated"], line["shares_adopted"], line["shares_failed"]) == (1, 1, 0)
    assert (line["unrecoverable"], line["collected"]) == (0, report.collected)
    (adopted,) = event_fields(caplog.records, "repair_adopted")
    assert (adopted["bundle_row"], adopted["shares"], adopted["sites"]) == (1, [0], [free[0]])
    (bundle,) = event_fields(caplog.records, "repair_bundle")
    assert (bundle["bundle_row"], bundle["good"], bundle["good_after"], bundle["n"]) == (1, 2, N, N)
    assert (bundle["missing"], bundle["placed"], bundle["adopted"]) == (2, 2, 1)
    assert "1.2.3." not in caplog.text  # the instances' UIDs


async def test_a_pass_short_of_k_or_of_sites_counts_it_in_its_fields(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    holders = holders_of(site)
    placed = await placements(site)
    await lose(site, holders, *(p.holder_site for p in placed[:2]))
    spare = set(site.partners.sites) - {p.holder_site for p in placed} - {"owner"}
    site.partners.down |= spare  # no site can take a share: both missing shares fail
    caplog.set_level(logging.INFO, logger="meshpacs.repair")
    await repairer(site, holders).repair_once()
    (line,) = event_fields(caplog.records, "repair_pass")
    assert (line["failed"], line["shares_regenerated"], line["shares_failed"]) == (1, 0, 2)
    (failed,) = event_fields(caplog.records, "repair_failed")
    assert (failed["bundle_row"], failed["good"], failed["missing"]) == (1, 2, 2)

    caplog.clear()
    site.clock.advance(1)
    await lose(site, holders, placed[2].holder_site)  # one good share left; k is 2
    await repairer(site, holders).repair_once()
    (line,) = event_fields(caplog.records, "repair_pass")
    assert (line["unrecoverable"], line["shares_failed"], line["below_threshold"]) == (1, 0, 1)
    (short,) = event_fields(caplog.records, "repair_unrecoverable")
    assert (short["bundle_row"], short["good"], short["k"], short["n"]) == (1, 1, K, N)
