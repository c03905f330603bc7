"""The backup ledger: planning bundles, recording placements, settling studies."""

from __future__ import annotations

import secrets
import sqlite3

import pytest

from meshpacs.metadata import Catalog, StudyState, ledger
from meshpacs.metadata.ledger import BundlePlan

from .helpers import FakeClock, make_record

PLAN = BundlePlan(k=2, n=3, segment_size=4096, max_bundle_bytes=100)


def new_bundle() -> tuple[bytes, bytes]:
    return secrets.token_bytes(16), b"wrapped:" + secrets.token_bytes(8)


async def study_ref(catalog: Catalog, uid: str = "1.2.3.1") -> int:
    def find(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT id FROM studies WHERE study_uid = ?", (uid,)).fetchone()[0])

    return await catalog.read(find)


async def queue(catalog: Catalog, clock: FakeClock, *records: object) -> int:
    await catalog.add_instances(list(records))  # type: ignore[arg-type]
    clock.advance(61)
    await catalog.mark_stable(60)
    ref = await catalog.read(ledger.next_queued_study)
    assert ref is not None
    return ref


async def plan(catalog: Catalog, ref: int, clock: FakeClock) -> list[int]:
    return await catalog.write(lambda db: ledger.plan_bundles(db, ref, PLAN, new_bundle, clock()))


async def test_a_study_is_cut_into_bundles_under_the_byte_cap(
    catalog: Catalog, clock: FakeClock
) -> None:
    records = [
        make_record(f"1.2.3.4.{i}", data=bytes([i]) * 40, instance_number=i) for i in range(1, 6)
    ]
    ref = await queue(catalog, clock, *records)
    bundles = await plan(catalog, ref, clock)
    # 40-byte instances, 100-byte cap: 2 + 2 + 1.
    sizes = []
    for bundle_ref in bundles:
        members = await catalog.read(lambda db, b=bundle_ref: ledger.bundle_members(db, b))
        sizes.append(len(members))
        assert [m.position for m in members] == list(range(len(members)))
    assert sizes == [2, 2, 1]
    uids = [
        m.sop_instance_uid
        for b in bundles
        for m in await catalog.read(lambda db, b=b: ledger.bundle_members(db, b))
    ]
    assert uids == [f"1.2.3.4.{i}" for i in range(1, 6)]  # study order kept
    # Planning again finds nothing left to bundle.
    assert await plan(catalog, ref, clock) == []


async def test_an_instance_over_the_cap_gets_a_bundle_of_its_own(
    catalog: Catalog, clock: FakeClock
) -> None:
    ref = await queue(
        catalog,
        clock,
        make_record("1.2.3.4.1", data=b"a" * 10, instance_number=1),
        make_record("1.2.3.4.2", data=b"b" * 500, instance_number=2),
        make_record("1.2.3.4.3", data=b"c" * 10, instance_number=3),
    )
    bundles = await plan(catalog, ref, clock)
    counts = [
        len(await catalog.read(lambda db, b=b: ledger.bundle_members(db, b))) for b in bundles
    ]
    assert counts == [1, 1, 1]


async def test_a_study_is_protected_once_every_bundle_is_stored(
    catalog: Catalog, clock: FakeClock
) -> None:
    ref = await queue(catalog, clock, make_record("1.2.3.4.1"), make_record("1.2.3.4.2"))
    [bundle_ref] = await plan(catalog, ref, clock)
    assert [b.ref for b in await catalog.read(ledger.planned_bundles)] == [bundle_ref]
    await catalog.write(lambda db: ledger.record_encoded(db, bundle_ref, 1234, b"h" * 32))
    assert [b.ref for b in await catalog.read(ledger.encoded_bundles)] == [bundle_ref]
    for share, site in [(0, "site-b"), (1, "site-c")]:
        await catalog.write(
            lambda db, s=share, h=site: ledger.record_placement(
                db, bundle_ref, s, h, "f" * 64, clock()
            )
        )
    # Two of three shares: not settled when happy is 3, degraded when happy is 2.
    assert await catalog.write(lambda db: ledger.settle_bundle(db, bundle_ref, 3, clock())) == (
        "encoded"
    )
    assert not await catalog.write(lambda db: ledger.settle_study(db, ref))
    assert await catalog.write(lambda db: ledger.settle_bundle(db, bundle_ref, 2, clock())) == (
        "degraded"
    )
    assert await catalog.write(lambda db: ledger.settle_study(db, ref))
    assert await catalog.study_state("1.2.3.1") is StudyState.PROTECTED
    assert await catalog.backup_queue() == []
    counts = await catalog.read(ledger.protection_counts)
    assert (counts.total, counts.protected, counts.degraded, counts.unprotected) == (1, 0, 1, 0)

    await catalog.write(
        lambda db: ledger.record_placement(db, bundle_ref, 2, "site-d", "e" * 64, clock())
    )
    assert await catalog.write(lambda db: ledger.settle_bundle(db, bundle_ref, 2, clock())) == (
        "stored"
    )
    counts = await catalog.read(ledger.protection_counts)
    assert (counts.protected, counts.degraded) == (1, 0)


async def test_one_site_holding_two_shares_counts_once(catalog: Catalog, clock: FakeClock) -> None:
    ref = await queue(catalog, clock, make_record("1.2.3.4.1"))
    [bundle_ref] = await plan(catalog, ref, clock)
    await catalog.write(lambda db: ledger.record_encoded(db, bundle_ref, 10, b"h" * 32))
    for share in range(3):
        await catalog.write(
            lambda db, s=share: ledger.record_placement(
                db, bundle_ref, s, "site-b", "f" * 64, clock()
            )
        )
    assert await catalog.write(lambda db: ledger.settle_bundle(db, bundle_ref, 2, clock())) == (
        "encoded"
    )


async def test_a_late_instance_goes_into_a_new_bundle(catalog: Catalog, clock: FakeClock) -> None:
    ref = await queue(catalog, clock, make_record("1.2.3.4.1"))
    [first] = await plan(catalog, ref, clock)
    await catalog.write(lambda db: ledger.record_encoded(db, first, 10, b"h" * 32))
    for share, site in enumerate(["b", "c", "d"]):
        await catalog.write(
            lambda db, s=share, h=site: ledger.record_placement(db, first, s, h, "f" * 64, 1.0)
        )
    await catalog.write(lambda db: ledger.settle_bundle(db, first, 3, clock()))
    assert await catalog.write(lambda db: ledger.settle_study(db, ref))

    await catalog.add_instances([make_record("1.2.3.4.2", data=b"late", instance_number=2)])
    assert await catalog.study_state("1.2.3.1") is StudyState.RECEIVING
    clock.advance(61)
    await catalog.mark_stable(60)
    [second] = await plan(catalog, ref, clock)
    members = await catalog.read(lambda db: ledger.bundle_members(db, second))
    assert [m.sop_instance_uid for m in members] == ["1.2.3.4.2"]
    assert not await catalog.write(lambda db: ledger.settle_study(db, ref))


async def test_a_study_that_went_back_to_receiving_is_not_protected(
    catalog: Catalog, clock: FakeClock
) -> None:
    ref = await queue(catalog, clock, make_record("1.2.3.4.1"))
    [bundle_ref] = await plan(catalog, ref, clock)
    await catalog.add_instances([make_record("1.2.3.4.2", data=b"other", instance_number=2)])
    await catalog.write(lambda db: ledger.record_encoded(db, bundle_ref, 10, b"h" * 32))
    for share, site in enumerate(["b", "c", "d"]):
        await catalog.write(
            lambda db, s=share, h=site: ledger.record_placement(db, bundle_ref, s, h, "f" * 64, 1)
        )
    assert await catalog.write(lambda db: ledger.settle_bundle(db, bundle_ref, 3, clock())) == (
        "stored"
    )
    assert not await catalog.write(lambda db: ledger.settle_study(db, ref))
    assert await catalog.study_state("1.2.3.1") is StudyState.RECEIVING


async def test_encoding_twice_is_refused(catalog: Catalog, clock: FakeClock) -> None:
    ref = await queue(catalog, clock, make_record("1.2.3.4.1"))
    [bundle_ref] = await plan(catalog, ref, clock)
    await catalog.write(lambda db: ledger.record_encoded(db, bundle_ref, 10, b"h" * 32))
    with pytest.raises(KeyError):
        await catalog.write(lambda db: ledger.record_encoded(db, bundle_ref, 11, b"i" * 32))
    assert (await catalog.read(lambda db: ledger.bundle(db, bundle_ref))).length == 10


async def test_a_failing_write_leaves_nothing(catalog: Catalog, clock: FakeClock) -> None:
    ref = await queue(catalog, clock, make_record("1.2.3.4.1"))

    def plan_then_fail(db: sqlite3.Connection) -> None:
        ledger.plan_bundles(db, ref, PLAN, new_bundle, clock())
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        await catalog.write(plan_then_fail)
    assert await catalog.read(ledger.planned_bundles) == []
    assert len(await plan(catalog, ref, clock)) == 1
