"""A site burns down; while it is gone its holders die one after another; its trusted peer
rebuilds the lost shares as its delegate, and the site is recovered from the federation,
byte for byte, from shares only the delegate made."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from meshpacs.node.status import site_status
from meshpacs.recovery.command import RecoverRequest, run_recovery
from meshpacs.store.names import fragment_path
from meshpacs.store.records import owner_directory
from meshpacs.testbed.layout import FAST_MAINTENANCE
from meshpacs.transport.frames import RecordKind

from .conftest import Federation, FederationFactory, RunningSite
from .helpers import eventually, held_catalog_records, push, study, wait_protected
from .test_recovery import lose_site, originals, restored


def kept_for(site: RunningSite, owner: str, kind: RecordKind) -> list[Path]:
    root = owner_directory(site.data_dir / "records", kind, owner)
    return sorted(p for p in root.glob("*") if p.is_file()) if root.is_dir() else []


def shares(owner: RunningSite) -> dict[int, tuple[str, str]]:
    """share -> (holder site, fragment ID), as the owner recorded them."""
    with sqlite3.connect(f"file:{owner.data_dir / 'catalog.sqlite'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT share, holder_site, fragment_id FROM placements").fetchall()
    return {int(s): (str(h), str(f)) for s, h, f in rows}


def running(fed: Federation) -> list[RunningSite]:
    return [s for s in fed.sites if s.task is not None]


def holders_now(fed: Federation, fragment: str) -> set[str]:
    return {
        s.site_id
        for s in running(fed)
        if fragment_path(s.data_dir / "fragments", fragment).exists()
    }


async def test_a_trusted_peer_rebuilds_a_burnt_sites_shares_and_the_site_comes_back_exact(
    federation: FederationFactory, tmp_path: Path
) -> None:
    fed = await federation(7, k=2, n=4, maintenance=FAST_MAINTENANCE)
    owner, delegate = fed.site("site-a"), fed.site("site-b")  # site-a trusts b and c
    instances = study(seed=81)
    await push(owner, instances, tmp_path / "pacs")
    await wait_protected(owner, {instances[0].study_instance_uid})
    await eventually(
        lambda: (
            bool(kept_for(delegate, "site-a", RecordKind.REPAIR))
            and bool(kept_for(delegate, "site-a", RecordKind.DELEGATION))
            and len(held_catalog_records(delegate, "site-a")) == 1
        ),
        30,
        "the delegate holds the owner's manifest, delegation and catalog record",
    )
    placed = shares(owner)
    assert len(placed) == 4

    await owner.halt()
    secret, credentials = lose_site(fed, "site-a", tmp_path / "kept")  # the fire
    originals_at = sorted({holder for holder, _ in placed.values()} - {delegate.site_id})
    first, rest = originals_at[:2], originals_at[2:]
    for site_id in first:
        await fed.site(site_id).halt()
    lost = {share: fid for share, (holder, fid) in placed.items() if holder in first}

    try:
        await eventually(
            lambda: all(holders_now(fed, fid) for fid in lost.values()),
            90,
            "the delegate rebuilt every share the dead holders had",
        )
    except AssertionError:  # say where every fragment is, for the failure's reader
        for site in fed.sites:
            held = [p.name[:12] for p in (site.data_dir / "fragments").glob("*/*")]
            print(site.site_id, "up" if site.task else "down", "holds", held)
        print("recorded", {k: (h, f[:12]) for k, (h, f) in placed.items()}, "first lost", first)
        raise
    rebuilt_at = {share: holders_now(fed, fid) for share, fid in lost.items()}
    assert not {s for sites in rebuilt_at.values() for s in sites} & set(first)
    await eventually(
        lambda: (
            (site_status(delegate.config)["delegate"] or {}).get("acting_for") == ["site-a"]
            and site_status(delegate.config)["delegate"]["since_start"]["shares_placed"] >= 2
        ),
        10,
        "status says whom the delegate acts for and what it rebuilt",
    )

    # The other original holders go too (the delegate keeps its own, if it had one): what
    # is left of the bundle is what the delegate made, and at most one original share.
    for site_id in rest:
        await fed.site(site_id).halt()
    surviving = [s for s, (h, f) in placed.items() if h in {x.site_id for x in running(fed)}]
    assert len(surviving) <= 1, surviving

    request = RecoverRequest(
        secret=secret,
        credentials=credentials,
        workdir=tmp_path / "recovery",
        to_dir=tmp_path / "restored",
        peers=tuple(p.site_id for p in running(fed) if p.site_id in ("site-b", "site-c")),
    )
    report = await run_recovery(request)
    assert report.exit_code == 0, report.summary()
    assert restored(tmp_path / "restored") == originals(instances)


async def test_an_owner_back_from_an_outage_adopts_what_its_delegate_rebuilt(
    federation: FederationFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fed = await federation(6, k=2, n=4, maintenance=FAST_MAINTENANCE)
    owner, delegate = fed.site("site-a"), fed.site("site-b")
    instances = study(seed=82)
    await push(owner, instances, tmp_path / "pacs")
    await wait_protected(owner, {instances[0].study_instance_uid})
    await eventually(
        lambda: (
            bool(kept_for(delegate, "site-a", RecordKind.REPAIR))
            and bool(kept_for(delegate, "site-a", RecordKind.DELEGATION))
        ),
        30,
        "the delegate holds the owner's manifest and delegation",
    )
    placed = shares(owner)
    await owner.halt()  # an outage, not a fire: its disk stays
    victim = sorted({holder for holder, _ in placed.values()} - {delegate.site_id})[0]
    [(share, fid)] = [(s, f) for s, (h, f) in placed.items() if h == victim]
    await fed.site(victim).halt()
    await eventually(lambda: bool(holders_now(fed, fid)), 90, "the delegate rebuilt the share")
    [rebuilt_at] = holders_now(fed, fid)

    with caplog.at_level(logging.INFO, logger="meshpacs.repair"):
        await owner.start()
        await eventually(
            lambda: shares(owner)[share][0] == rebuilt_at, 90, "the owner records the new holder"
        )
    assert "a trusted peer placed while this site was down" in caplog.text
    # Adopted, not rebuilt a second time elsewhere: one copy of the share, where it was put.
    assert holders_now(fed, fid) == {rebuilt_at}
    assert {h for h, _ in shares(owner).values()} == (
        {h for h, _ in placed.values()} - {victim} | {rebuilt_at}
    )
