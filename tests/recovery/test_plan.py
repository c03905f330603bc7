"""Sealed records back into a plan: opened with the site's key, merged, filtered, ordered."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from meshpacs.keys import SiteKeys, SiteSecret, wrap_data_key
from meshpacs.metadata import Catalog, ledger
from meshpacs.metadata.ledger import BundlePlan
from meshpacs.metadata.replica import export_study, seal_record
from meshpacs.recovery.catalog import open_records, plan_studies
from meshpacs.recovery.plan import PlanFilter, select_studies

from ..metadata.helpers import FakeClock, make_record

KEYS = SiteKeys.derive(SiteSecret.generate())
PLAN = BundlePlan(k=2, n=3, segment_size=4096, max_bundle_bytes=10**6)


def new_bundle() -> tuple[bytes, bytes]:
    bundle_id = secrets.token_bytes(16)
    return bundle_id, wrap_data_key(KEYS.key_wrap, bundle_id, secrets.token_bytes(32))


async def protect(catalog: Catalog, clock: FakeClock, *records: object) -> int:
    await catalog.add_instances(list(records))  # type: ignore[arg-type]
    clock.advance(61)
    await catalog.mark_stable(60)
    [ref] = await catalog.read(ledger.queued_studies)
    for bundle in await catalog.write(lambda db: ledger.plan_bundles(db, ref, PLAN, new_bundle, 1)):
        await catalog.write(lambda db, b=bundle: ledger.record_encoded(db, b, 100, b"h" * 32))
        for share, site in enumerate(["site-b", "site-c", "site-d"]):
            await catalog.write(
                lambda db, b=bundle, s=share, h=site: ledger.record_placement(
                    db, b, s, h, "f" * 64, 2.0
                )
            )
        await catalog.write(lambda db, b=bundle: ledger.settle_bundle(db, b, 3, 3.0))
    await catalog.write(lambda db: ledger.settle_study(db, ref))
    return ref


async def sealed_studies(tmp_path: Path) -> list[tuple[str, bytes]]:
    clock = FakeClock()
    out = []
    async with await Catalog.open(tmp_path / "c.sqlite", clock=clock) as catalog:
        studies = [
            ("1.2.3.1", "20240101", "CT", "PID1"),
            ("1.2.3.2", "20240301", "MR", "PID2"),
            ("1.2.3.3", "20240201", "CT", "PID1"),
        ]
        for n, (uid, date, modality, pid) in enumerate(studies):
            ref = await protect(
                catalog,
                clock,
                make_record(
                    f"1.2.3.4.{n}",
                    data=f"instance {n}".encode(),
                    study_uid=uid,
                    series_uid=f"1.2.3.5.{n}",
                    study_date=date,
                    modality=modality,
                    patient_id=pid,
                ),
            )
            record = await catalog.read(lambda db, r=ref: export_study(db, r))
            out.append(seal_record(KEYS.catalog, "site-a", record))
    return out


async def test_records_open_merge_and_plan_newest_first(tmp_path: Path) -> None:
    sealed = await sealed_studies(tmp_path)
    other_site = seal_record(
        SiteKeys.derive(SiteSecret.generate()).catalog,
        "site-a",
        open_records(KEYS, "site-a", sealed[:1]).records[0],
    )
    # Two peers return the same records, one also a record sealed by someone else.
    opened = open_records(KEYS, "site-a", [*sealed, *sealed, other_site])
    assert opened.refused == 1 and len(opened.records) == 6
    studies = plan_studies(KEYS, opened.records)
    assert len(studies) == 3
    ordered = select_studies(studies, PlanFilter())
    assert [s.study_uid for s in ordered] == ["1.2.3.2", "1.2.3.3", "1.2.3.1"]
    first = ordered[0]
    assert first.modalities == ("MR",) and first.patient_id == "PID2"
    [bundle] = first.bundles  # the same bundle from two peers is one bundle
    assert {h.site_id for h in bundle.holders} == {"site-b", "site-c", "site-d"}
    assert len(bundle.fragment_ids) == 3 and bundle.k == 2
    [instance] = bundle.instances
    assert instance.sop_instance_uid == "1.2.3.4.1" and instance.size == len(b"instance 1")


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        (PlanFilter(order="oldest"), ["1.2.3.1", "1.2.3.3", "1.2.3.2"]),
        (PlanFilter(since="20240201"), ["1.2.3.2", "1.2.3.3"]),
        (PlanFilter(patient_id="PID1"), ["1.2.3.3", "1.2.3.1"]),
        (PlanFilter(modality="mr"), ["1.2.3.2"]),
        (PlanFilter(study_uid="1.2.3.3"), ["1.2.3.3"]),
    ],
)
async def test_filters_and_order(tmp_path: Path, plan: PlanFilter, expected: list[str]) -> None:
    studies = plan_studies(
        KEYS, open_records(KEYS, "site-a", await sealed_studies(tmp_path)).records
    )
    assert [s.study_uid for s in select_studies(studies, plan)] == expected


def test_a_bad_filter_is_refused() -> None:
    with pytest.raises(ValueError):
        PlanFilter(since="2024-01-01")
    with pytest.raises(ValueError):
        PlanFilter(order="random")
