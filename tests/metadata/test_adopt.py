"""Adopting study records into a fresh catalog (restore), and the recall side of the ledger."""

from __future__ import annotations

import secrets
import sqlite3
from functools import partial
from pathlib import Path
from typing import Any

from meshpacs.metadata import Catalog, FindQuery, StudyState, ledger
from meshpacs.metadata.adopt import adopt_documents, mark_recalled, recall_bundles
from meshpacs.metadata.ledger import BundlePlan
from meshpacs.metadata.replica import export_study, export_unplaced

from .helpers import FakeClock, make_record

PLAN = BundlePlan(k=2, n=3, segment_size=4096, max_bundle_bytes=100)


def new_bundle() -> tuple[bytes, bytes]:
    return secrets.token_bytes(16), b"wrapped:" + secrets.token_bytes(8)


async def protect(catalog: Catalog, clock: FakeClock) -> list[int]:
    """Queue, bundle, encode, place at three sites and settle every study; bundle refs."""
    clock.advance(61)
    await catalog.mark_stable(60)
    refs: list[int] = []
    for study in await catalog.read(ledger.queued_studies):
        made = await catalog.write(
            lambda db, s=study: ledger.plan_bundles(db, s, PLAN, new_bundle, clock())
        )
        for ref in made:
            await catalog.write(
                lambda db, r=ref: ledger.record_encoded(db, r, 1234, secrets.token_bytes(32))
            )
            for share, site in enumerate(("site-b", "site-c", "site-d")):
                await catalog.write(
                    lambda db, r=ref, s=share, h=site: ledger.record_placement(
                        db, r, s, h, f"frag-{r}-{s}", clock()
                    )
                )
            await catalog.write(lambda db, r=ref: ledger.settle_bundle(db, r, 3, clock()))
        await catalog.write(lambda db, s=study: ledger.settle_study(db, s))
        refs += made
    return refs


async def documents(catalog: Catalog) -> list[dict[str, Any]]:
    def export(db: sqlite3.Connection) -> list[dict[str, Any]]:
        studies = [int(r[0]) for r in db.execute("SELECT id FROM studies ORDER BY id")]
        records = [export_study(db, ref) for ref in studies]
        unplaced = db.execute("SELECT id FROM bundles WHERE study_ref IS NULL ORDER BY id")
        records += [export_unplaced(db, int(r[0])) for r in unplaced]
        return [record.document for record in records]

    return await catalog.read(export)


def ledger_view(db: sqlite3.Connection) -> set[tuple[object, ...]]:
    """Bundles with their members (by SOP Instance UID) and placements, row ids left out."""
    rows = db.execute(
        "SELECT b.bundle_id, b.k, b.n, b.length, b.set_hash, b.wrapped_key, b.state,"
        " m.position, i.sop_instance_uid, i.sha256 FROM bundles b"
        " JOIN bundle_members m ON m.bundle_ref = b.id JOIN instances i ON i.id = m.instance_ref"
    ).fetchall()
    placed = db.execute(
        "SELECT b.bundle_id, p.share, p.holder_site, p.fragment_id FROM placements p"
        " JOIN bundles b ON b.id = p.bundle_ref"
    ).fetchall()
    return {tuple(r) for r in rows} | {("placement", *r) for r in placed}


async def test_records_adopted_into_a_fresh_catalog_answer_queries_and_keep_the_ledger(
    catalog: Catalog, clock: FakeClock, tmp_path: Path
) -> None:
    await catalog.add_instances(
        [make_record(f"1.2.3.4.{i}", data=bytes([i]) * 40, instance_number=i) for i in (1, 2, 3)]
        + [make_record("1.2.9.4.1", data=b"x" * 30, study_uid="1.2.9.1", series_uid="1.2.9.2",
                       patient_id="PID2", patient_name="Other^One")]
    )  # fmt: skip
    await protect(catalog, clock)
    sent = await documents(catalog)

    async with await Catalog.open(tmp_path / "rebuilt.sqlite", clock=clock) as rebuilt:
        counts = await rebuilt.write(partial(adopt_documents, documents=sent, now=clock()))
        assert (counts.studies, counts.series, counts.instances, counts.patients) == (2, 2, 4, 2)
        assert counts.bundles == 3 and counts.placements == 9 and counts.malformed == 0
        assert await catalog.read(ledger_view) == await rebuilt.read(ledger_view)
        assert await rebuilt.study_state("1.2.3.1") == StudyState.PROTECTED
        found = await rebuilt.find(
            FindQuery("STUDY", "STUDY", {"StudyInstanceUID": "", "PatientName": "other*",
                                         "NumberOfStudyRelatedInstances": ""})
        )  # fmt: skip
        assert [(f["StudyInstanceUID"], f["NumberOfStudyRelatedInstances"]) for f in found] == [
            ("1.2.9.1", "1")
        ]
        pruned = await rebuilt.read(
            lambda db: db.execute(
                "SELECT COUNT(*) FROM instances WHERE pruned_at IS NULL"
            ).fetchone()[0]
        )
        assert pruned == 0  # no bytes here: every instance is the mesh's to give back

        # Again, and from a second peer: nothing is added twice.
        again = await rebuilt.write(partial(adopt_documents, documents=sent + sent, now=clock()))
        assert (again.studies, again.instances, again.bundles, again.placements) == (0, 0, 0, 0)
        assert (await rebuilt.counts())["instances"] == 4


async def test_a_stale_and_a_newer_record_of_a_study_merge(
    catalog: Catalog, clock: FakeClock, tmp_path: Path
) -> None:
    await catalog.add_instances([make_record("1.2.3.4.1", data=b"a" * 40)])
    await protect(catalog, clock)
    [stale] = await documents(catalog)
    await catalog.add_instances([make_record("1.2.3.4.2", data=b"b" * 40, instance_number=2)])
    await protect(catalog, clock)  # the late instance: a second bundle of the same study
    [newer] = await documents(catalog)

    async with await Catalog.open(tmp_path / "rebuilt.sqlite", clock=clock) as rebuilt:
        await rebuilt.write(partial(adopt_documents, documents=[newer, stale], now=clock()))
        assert await catalog.read(ledger_view) == await rebuilt.read(ledger_view)
        assert (await rebuilt.counts())["instances"] == 2


async def test_a_malformed_record_is_rolled_back_alone_and_unbacked_instances_are_left_out(
    catalog: Catalog, clock: FakeClock, tmp_path: Path
) -> None:
    await catalog.add_instances([make_record("1.2.3.4.1", data=b"a" * 40)])
    await catalog.add_instances(
        [make_record("1.2.8.4.1", data=b"c" * 40, study_uid="1.2.8.1", series_uid="1.2.8.2")]
    )
    await protect(catalog, clock)
    good, broken = await documents(catalog)
    broken["bundles"][0]["members"][0]["instance_ref"] = "not a row id"
    # A record exported after a late instance arrived: that one is in no bundle yet.
    good["instances"].append({**good["instances"][0], "id": 999, "sop_instance_uid": "1.2.3.4.9",
                              "sha256": "ab" * 32})  # fmt: skip

    async with await Catalog.open(tmp_path / "rebuilt.sqlite", clock=clock) as rebuilt:
        counts = await rebuilt.write(
            partial(adopt_documents, documents=[broken, good], now=clock())
        )
        assert counts.malformed == 1 and counts.not_backed_up == 1
        assert counts.studies == 1 and counts.instances == 1
        total = await rebuilt.counts()
        assert (total["studies"], total["instances"], total["patients"]) == (1, 1, 1)


async def test_recall_finds_each_missing_instance_s_bundle_and_marks_it_back(
    catalog: Catalog, clock: FakeClock
) -> None:
    records = [make_record(f"1.2.3.4.{i}", data=bytes([i]) * 40, instance_number=i)
               for i in (1, 2, 3)]  # fmt: skip
    await catalog.add_instances(records)
    [first, second] = await protect(catalog, clock)  # 40-byte instances, 100-byte cap: 2 + 1
    late = make_record("1.2.3.4.7", data=b"z" * 10, instance_number=7)
    await catalog.add_instances([late])  # not backed up yet
    wanted = [(r.sop_instance_uid, r.sha256) for r in (records[2], late)]

    plan = await catalog.read(partial(recall_bundles, wanted=wanted))
    assert plan.not_backed_up == ((late.sop_instance_uid, late.sha256),)
    [bundle] = plan.bundles
    assert bundle.bundle_id == (await catalog.read(partial(ledger.bundle, ref=second))).bundle_id
    assert [m.sop_instance_uid for m in bundle.members] == ["1.2.3.4.3"]
    assert bundle.members[0].sha256 == records[2].sha256
    assert {p.holder_site for p in bundle.placements} == {"site-b", "site-c", "site-d"}
    assert first != second

    await catalog.write(partial(ledger.mark_pruned, row_ids=[1, 2, 3], now=clock()))
    changed = await catalog.write(partial(mark_recalled, instances=wanted[:1]))
    assert changed == 1
    kept = await catalog.latest_instances(10)
    assert {sha for _, sha in kept} == {records[2].sha256, late.sha256}
