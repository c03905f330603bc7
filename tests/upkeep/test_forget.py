"""The forgetter over a real catalog and the real backup pipeline; partners and trusted
peers as directories and a dict (tests/mesh/test_forget.py runs it over the transport)."""

from __future__ import annotations

import hashlib
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshpacs.backup.replicate import TrustedReplicator
from meshpacs.metadata import forget, ledger
from meshpacs.metadata.manifest import manifest_record_id
from meshpacs.metadata.replica import study_record_id
from meshpacs.upkeep import Forgetter

from ..backup.helpers import Site, decode_all, open_site
from ..metadata.helpers import make_record
from .helpers import DirHolders

FORGET, KEEP = "1.2.3.1", "1.2.3.9"  # the harness's study, and a second one
TRUSTED = ("peer-1", "peer-2")


async def receive_second_study(site: Site) -> dict[str, bytes]:
    rng = random.Random(99)
    sent = {}
    for i in range(2):
        data = rng.randbytes(8000)
        site.store.write(data)
        uid = f"1.2.3.9.{i}"
        await site.catalog.add_instances(
            [make_record(uid, data=data, study_uid=KEEP, series_uid="1.2.3.8", patient_id="P2")]
        )
        sent[uid] = data
    site.clock.advance(61)
    return sent


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with open_site(tmp_path) as opened:
        opened.forgotten = await opened.receive(3, size=20_000)  # type: ignore[attr-defined]
        opened.kept = await receive_second_study(opened)  # type: ignore[attr-defined]
        report = await opened.service(k=2, n=4, happy=4).run_once()
        assert report.stored == 2, report
        yield opened


def forgetter(site: Site, holders: DirHolders) -> Forgetter:
    return Forgetter(
        catalog=site.catalog,
        partners=holders,
        catalog_key=site.keys.catalog,
        trusted=TRUSTED,
        instance_path=site.store.path_for,
        clock=site.clock,
    )


async def study_rows(site: Site) -> dict[str, int]:
    def count(db: sqlite3.Connection) -> dict[str, int]:
        return {
            str(uid): int(n)
            for uid, n in db.execute(
                "SELECT s.study_uid, COUNT(i.id) FROM studies s JOIN series r"
                " ON r.study_ref = s.id JOIN instances i ON i.series_ref = r.id"
                " GROUP BY s.study_uid"
            )
        }

    return await site.catalog.read(count)


async def fragments_of(site: Site, study_uid: str) -> set[tuple[str, str]]:
    def read(db: sqlite3.Connection) -> set[tuple[str, str]]:
        rows = db.execute(
            "SELECT p.holder_site, p.fragment_id FROM placements p JOIN bundles b"
            " ON b.id = p.bundle_ref JOIN studies s ON s.id = b.study_ref WHERE s.study_uid = ?",
            (study_uid,),
        )
        return {(str(a), str(b)) for a, b in rows}

    return await site.catalog.read(read)


async def ask(site: Site, study_uid: str) -> int:
    ref = await site.catalog.write(lambda db: forget.request(db, study_uid, "tester", 1.0))
    assert ref is not None
    return ref


async def state(site: Site, ref: int) -> dict[str, object]:
    found = await site.catalog.read(lambda db: forget.request_state(db, ref))
    assert found is not None
    return found


async def test_a_forgotten_study_goes_here_and_at_every_partner_and_the_other_stays(
    site: Site,
) -> None:
    holders = DirHolders(site.partners.root)
    record_id = study_record_id(site.keys.catalog, FORGET)
    bundle_ids = await site.catalog.read(
        lambda db: [
            bytes(r[0])
            for r in db.execute(
                "SELECT b.bundle_id FROM bundles b JOIN studies s ON s.id = b.study_ref"
                " WHERE s.study_uid = ?",
                (FORGET,),
            )
        ]
    )
    for peer in TRUSTED:
        holders.records[(peer, record_id)] = b"sealed record"
        holders.records[(peer, study_record_id(site.keys.catalog, KEEP))] = b"other record"
        for bundle_id in bundle_ids:  # its bundles' repair manifests go too
            holders.records[(peer, manifest_record_id(bundle_id))] = b"sealed manifest"
    doomed, kept = await fragments_of(site, FORGET), await fragments_of(site, KEEP)
    assert len(doomed) == 4 and len(kept) == 4
    files = {
        uid: site.store.path_for(hashlib.sha256(data).digest())
        for uid, data in site.forgotten.items()  # type: ignore[attr-defined]
    }
    assert all(path.exists() for path in files.values())

    ref = await ask(site, FORGET)
    result = await forgetter(site, holders).forget_once()

    # 4 fragments, and at each of the 2 peers the catalog record and 1 manifest
    assert len(bundle_ids) == 1
    assert (result.forgotten, result.deleted, result.failed, result.done) == (1, 8, 0, 1)
    assert await study_rows(site) == {KEEP: 2}
    assert not any(path.exists() for path in files.values())
    assert not any((site.partners.root / s / f).exists() for s, f in doomed)
    assert all((site.partners.root / s / f).exists() for s, f in kept)
    assert set(holders.records) == {(p, study_record_id(site.keys.catalog, KEEP)) for p in TRUSTED}
    assert await decode_all(site, 2) == site.kept  # type: ignore[attr-defined]
    leased = await site.catalog.read(ledger.leased_fragments)
    assert {(s, f) for s, ids in leased.items() for f in ids} == kept
    row = await state(site, ref)
    assert row["state"] == "done" and row["study_ref"] is None
    assert (row["instances"], row["bundles"], row["fragments"], row["records"]) == (3, 1, 4, 2)
    assert row["requested_by"] == "tester"
    summary = await site.catalog.read(forget.forget_summary)
    assert (summary.done, summary.pending, summary.deletions_waiting) == (1, 0, 0)


async def test_unreachable_partners_are_asked_again_and_fragments_given_up_in_the_end(
    site: Site,
) -> None:
    holders = DirHolders(site.partners.root)
    (holder, fragment), *_ = sorted(await fragments_of(site, FORGET))
    holders.down |= {holder, TRUSTED[0]}
    ref = await ask(site, FORGET)
    leave = forgetter(site, holders)
    first = await leave.forget_once()
    assert first.forgotten == 1 and first.failed == 2 and first.done == 0
    assert (await state(site, ref))["state"] == "deleting"
    assert await study_rows(site) == {KEEP: 2}  # gone here at once

    for _ in range(forget.FRAGMENT_ATTEMPTS):
        await leave.forget_once()
    waiting = await site.catalog.read(forget.deletions_due)
    # No lease on the peer's record and manifest: they are kept until it answers.
    assert sorted((d.kind, d.site) for d in waiting) == [
        ("manifest", TRUSTED[0]),
        ("record", TRUSTED[0]),
    ]
    assert (site.partners.root / holder / fragment).exists()  # its lease will run out

    holders.down.clear()
    last = await leave.forget_once()
    assert last.deleted == 2 and last.done == 1
    assert (await state(site, ref))["state"] == "done"


async def test_a_study_being_backed_up_waits_and_a_second_request_is_the_same(
    site: Site,
) -> None:
    holders = DirHolders(site.partners.root)
    await site.catalog.write(
        lambda db: db.execute(
            "UPDATE bundles SET state = 'encoded' WHERE study_ref ="
            " (SELECT id FROM studies WHERE study_uid = ?)",
            (FORGET,),
        )
    )
    ref = await ask(site, FORGET)
    assert await ask(site, FORGET) == ref
    result = await forgetter(site, holders).forget_once()
    assert (result.forgotten, result.waiting) == (0, 1)
    assert FORGET in await study_rows(site)

    await site.catalog.write(lambda db: db.execute("UPDATE bundles SET state = 'stored'"))
    assert (await forgetter(site, holders).forget_once()).forgotten == 1
    assert FORGET not in await study_rows(site)


async def test_an_unknown_study_is_no_request(site: Site) -> None:
    assert await site.catalog.write(lambda db: forget.request(db, "9.9.9", "t", 1.0)) is None


async def test_a_record_queued_before_the_study_was_forgotten_is_never_sent(site: Site) -> None:
    sent: list[tuple[str, str]] = []

    async def put(peer: str, record_id: str, sealed: bytes) -> None:
        sent.append((peer, record_id))

    replicator = TrustedReplicator(
        site_id="owner",
        catalog_key=site.keys.catalog,
        catalog=site.catalog,
        trusted=TRUSTED,
        put_record=put,
    )
    await replicator.resend_all()  # both studies queued, not yet sent
    await ask(site, FORGET)
    leave = Forgetter(
        catalog=site.catalog,
        partners=DirHolders(site.partners.root),
        catalog_key=site.keys.catalog,
        trusted=TRUSTED,
        instance_path=site.store.path_for,
        withheld=replicator.withheld,
        clock=site.clock,
    )
    await leave.forget_once()
    await replicator.flush()
    kept = study_record_id(site.keys.catalog, KEEP)
    assert sorted(sent) == [(peer, kept) for peer in TRUSTED]
