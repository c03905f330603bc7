"""The lease renewer over a real catalog; holders as partner directories (the transport,
the holders' stores and expiry over them are in tests/mesh/test_leases.py)."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshpacs.metadata import ledger
from meshpacs.store import MAX_RENEW
from meshpacs.upkeep import LeaseRenewer, LeaseSettings
from meshpacs.upkeep.leases import last_renewal

from ..backup.helpers import Site, open_site
from .helpers import DirHolders

DAY = 86400.0
SETTINGS = LeaseSettings(lease_seconds=30 * DAY, interval_seconds=DAY, retry_seconds=600)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with open_site(tmp_path) as opened:
        await opened.receive(3, size=20_000)
        report = await opened.service(k=2, n=4, happy=4).run_once()
        assert report.stored == 1
        yield opened


def renewer(site: Site, holders: DirHolders, state: Path) -> LeaseRenewer:
    return LeaseRenewer(site.catalog, holders, SETTINGS, state_file=state, clock=site.clock)


async def placed(site: Site) -> dict[str, list[str]]:
    return await site.catalog.read(ledger.leased_fragments)


async def test_every_placement_is_renewed_at_its_holder_and_the_pass_is_recorded(
    site: Site, tmp_path: Path
) -> None:
    holders = DirHolders(site.partners.root)
    state = tmp_path / "state" / "leases.json"
    result = await renewer(site, holders, state).renew_once()
    at = await placed(site)
    assert len(at) == 4 and all(len(ids) == 1 for ids in at.values())
    assert sorted(s for s, _, _ in holders.renewals) == sorted(at)
    assert {seconds for _, _, seconds in holders.renewals} == {int(30 * DAY)}
    assert (result.sites, result.fragments, result.renewed, result.not_held) == (4, 4, 4, 0)
    assert last_renewal(state) == json.loads(state.read_text()) == result.to_json()
    assert result.renewed_at == site.clock()


async def test_a_missing_fragment_and_a_down_holder_are_reported_and_retried_sooner(
    site: Site, tmp_path: Path
) -> None:
    holders = DirHolders(site.partners.root)
    at = await placed(site)
    gone, down, *_ = sorted(at)
    (site.partners.root / gone / at[gone][0]).unlink()
    holders.down.add(down)
    state = tmp_path / "leases.json"
    leases = renewer(site, holders, state)
    result = await leases.renew_once()
    assert (result.renewed, result.not_held, result.unreachable) == (2, 1, [down])
    assert leases._wait() == pytest.approx(SETTINGS.retry_seconds)

    holders.down.clear()
    site.clock.advance(SETTINGS.retry_seconds)
    assert (await leases.renew_once()).unreachable == []
    assert leases._wait() == pytest.approx(SETTINGS.interval_seconds)


async def test_a_site_holding_more_than_one_request_is_asked_in_batches(
    site: Site, tmp_path: Path
) -> None:
    extra = MAX_RENEW + 5
    ids = [secrets.token_hex(32) for _ in range(extra)]

    def place(db: sqlite3.Connection) -> None:
        # Bundles copied from the real one (shares are 0..255 per bundle), all at one site.
        for copy in range(1, extra // 256 + 2):
            db.execute(
                "INSERT INTO bundles (id, bundle_id, study_ref, k, n, segment_size, length,"
                " set_hash, wrapped_key, state, created_at) SELECT ?, ?, study_ref, k, n,"
                " segment_size, length, set_hash, wrapped_key, state, created_at"
                " FROM bundles WHERE id = 1",
                (1 + copy, secrets.token_bytes(16)),
            )
        for i, fragment in enumerate(ids):
            ledger.record_placement(db, 2 + i // 256, i % 256, "partner-0", fragment, 0.0)

    await site.catalog.write(place)
    holders = DirHolders(site.partners.root)
    await renewer(site, holders, tmp_path / "leases.json").renew_once()
    sizes = [count for s, count, _ in holders.renewals if s == "partner-0"]
    assert max(sizes) == MAX_RENEW and sum(sizes) == len((await placed(site))["partner-0"])


async def test_run_renews_once_per_interval_and_stops_when_told(site: Site, tmp_path: Path) -> None:
    holders = DirHolders(site.partners.root)
    waits: list[float] = []
    stop = asyncio.Event()

    async def pause(seconds: float, event: asyncio.Event) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            event.set()
        site.clock.advance(seconds)

    leases = LeaseRenewer(
        site.catalog, holders, SETTINGS, state_file=tmp_path / "l.json", clock=site.clock,
        pause=pause,
    )  # fmt: skip
    await asyncio.wait_for(leases.run(stop), 10)
    assert waits == [0.0, SETTINGS.interval_seconds, SETTINGS.interval_seconds]
    assert len({s for s, _, _ in holders.renewals}) == 4 and len(holders.renewals) == 8


def test_settings_refuse_a_renewal_slower_than_the_lease() -> None:
    with pytest.raises(ValueError, match="more often"):
        LeaseSettings(lease_seconds=DAY, interval_seconds=DAY)
