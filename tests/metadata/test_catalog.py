"""Adding instances: duplicates, conflicts, unparsed objects, group commit, durability,
study states, and locating instances for C-MOVE/C-GET."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from meshpacs.errors import InvalidQuery
from meshpacs.metadata import (
    AddResult,
    Catalog,
    FindQuery,
    InstanceLocation,
    InstanceRecord,
    StudyState,
)

from .helpers import FakeClock, dicomdir_records, make_record


async def test_add_then_duplicate_adds_nothing(catalog: Catalog) -> None:
    record = make_record()
    assert await catalog.add_instances([record]) == [AddResult.STORED]
    assert await catalog.add_instances([record]) == [AddResult.DUPLICATE]
    counts = await catalog.counts()
    assert counts == {
        "patients": 1,
        "studies": 1,
        "series": 1,
        "instances": 1,
        "conflicts": 0,
        "unparsed": 0,
    }


async def test_conflict_keeps_both_versions_and_logs_no_phi(
    catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    first = make_record("1.2.3.4.9", data=b"first bytes", patient_id="SECRET-PID")
    second = make_record("1.2.3.4.9", data=b"second bytes", patient_id="SECRET-PID")
    await catalog.add_instances([first])
    with caplog.at_level(logging.WARNING, logger="meshpacs.catalog"):
        assert await catalog.add_instances([second]) == [AddResult.CONFLICT]
        # Either version again is a duplicate, not a third version.
        assert await catalog.add_instances([first, second]) == [AddResult.DUPLICATE] * 2
    assert (await catalog.counts())["instances"] == 2
    assert (await catalog.counts())["conflicts"] == 1
    found = await catalog.locate("IMAGE", {"SOPInstanceUID": "1.2.3.4.9"})
    assert {loc.sha256 for loc in found} == {first.sha256, second.sha256}
    assert [loc.size for loc in found] == [len(b"first bytes"), len(b"second bytes")]
    # C-FIND answers once per SOP Instance UID.
    answers = await catalog.find(FindQuery("STUDY", "IMAGE", {"SOPInstanceUID": "1.2.3.4.9"}))
    assert len(answers) == 1
    conflicts = [r for r in caplog.records if r.name == "meshpacs.catalog"]
    assert len(conflicts) == 1
    message = conflicts[0].getMessage()
    assert "conflict" in message
    for phi in ("1.2.3.4.9", "SECRET-PID", "Test^Patient", "1.2.3.1", "1.2.3.2"):
        assert phi not in message


async def test_unparsed_instance_is_kept_and_flagged(catalog: Catalog) -> None:
    record = make_record("1.2.9.9", data=b"\x00garbage", placed=False, parse_error="bad")
    assert await catalog.add_instances([record]) == [AddResult.STORED]
    counts = await catalog.counts()
    assert counts["instances"] == 1 and counts["unparsed"] == 1
    assert counts["studies"] == 0
    located = await catalog.locate("IMAGE", {"SOPInstanceUID": "1.2.9.9"})
    assert located == [
        InstanceLocation(
            "1.2.9.9",
            record.sop_class_uid,
            record.transfer_syntax_uid,
            hashlib.sha256(b"\x00garbage").digest(),
            len(b"\x00garbage"),
        )
    ]
    # Unplaced instances have no place in the Q/R hierarchy.
    assert await catalog.find(FindQuery("STUDY", "IMAGE", {"SOPInstanceUID": ""})) == []
    # Unparsed, then the same UID parsed with other bytes: a conflict, both kept.
    placed = make_record("1.2.9.9", data=b"good")
    assert await catalog.add_instances([placed]) == [AddResult.CONFLICT]
    assert len(await catalog.locate("IMAGE", {"SOPInstanceUID": "1.2.9.9"})) == 2
    assert (await catalog.counts())["unparsed"] == 1


def test_record_checks_its_own_consistency() -> None:
    good = make_record()
    with pytest.raises(ValueError):
        InstanceRecord(**{**good.__dict__, "sha256": b"short"})
    with pytest.raises(ValueError):
        InstanceRecord(**{**good.__dict__, "sop_instance_uid": "1" * 65})
    with pytest.raises(ValueError):
        InstanceRecord(**{**good.__dict__, "series": None})
    with pytest.raises(ValueError):
        InstanceRecord(**{**good.__dict__, "patient": None, "study": None, "series": None})


async def test_batch_is_one_transaction(catalog: Catalog) -> None:
    statements: list[str] = []
    await catalog._conn.set_trace_callback(statements.append)
    results = await catalog.add_instances(dicomdir_records())
    await catalog._conn.set_trace_callback(None)  # type: ignore[arg-type]
    assert results == [AddResult.STORED] * len(dicomdir_records())
    assert sum(s.strip().upper() == "COMMIT" for s in statements) == 1
    assert sum(s.strip().upper().startswith("BEGIN") for s in statements) == 1


async def test_failed_batch_leaves_nothing(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    await catalog.add_instances([make_record("1.5.1")])
    before = await catalog.counts()
    batch = [
        make_record("1.5.2", data=b"a", study_uid="1.5.9", series_uid="1.5.9.1"),
        make_record("1.5.3", data=b"b", study_uid="1.5.9", series_uid="1.5.9.2"),
        make_record("1.5.4", data=b"c", study_uid="1.5.9", series_uid="1.5.9.3"),
    ]
    upsert = catalog._upsert_series
    calls = 0

    def failing_third(*args: Any) -> int:  # runs in the connection's thread
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("disk on fire")
        return upsert(*args)

    monkeypatch.setattr(catalog, "_upsert_series", failing_third)
    with pytest.raises(RuntimeError):
        await catalog.add_instances(batch)
    assert calls == 3  # two records were written before the failure...
    assert await catalog.counts() == before  # ...and rolled back with it
    assert await catalog.study_state("1.5.9") is None
    monkeypatch.undo()
    # The catalog is usable afterwards.
    assert await catalog.add_instances(batch) == [AddResult.STORED] * 3


async def test_numbers_beyond_sqlite_are_catalogued_as_absent(catalog: Catalog) -> None:
    record = make_record(instance_number=2**70, series_number=-(2**64))
    assert await catalog.add_instances([record]) == [AddResult.STORED]
    [answer] = await catalog.find(
        FindQuery("STUDY", "IMAGE", {"InstanceNumber": "", "SeriesNumber": ""})
    )
    assert answer["InstanceNumber"] == "" and answer["SeriesNumber"] == ""


async def test_committed_before_add_returns(tmp_path: Path, catalog: Catalog) -> None:
    await catalog.add_instances(dicomdir_records())
    # Another connection (another process, after a crash) sees every row already.
    with sqlite3.connect(catalog.path) as other:
        assert other.execute("SELECT COUNT(*) FROM instances").fetchone() == (81,)


async def test_close_and_reopen_keeps_everything(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "durable.sqlite"
    async with await Catalog.open(path, clock=clock) as catalog:
        await catalog.add_instances(dicomdir_records())
        await catalog.add_instances([make_record("1.7.1", data=b"x")])
        await catalog.add_instances([make_record("1.7.1", data=b"y")])
        clock.advance(100)
        await catalog.mark_stable(60)
        before = await catalog.counts()
        answers = await catalog.find(FindQuery("STUDY", "SERIES", {"Modality": ""}))
    async with await Catalog.open(path, clock=clock) as catalog:
        assert await catalog.counts() == before
        assert await catalog.find(FindQuery("STUDY", "SERIES", {"Modality": ""})) == answers
        assert len(await catalog.backup_queue()) == 8
        assert len(await catalog.locate("IMAGE", {"SOPInstanceUID": "1.7.1"})) == 2
    assert before == {
        "patients": 4,
        "studies": 8,
        "series": 15,
        "instances": 83,
        "conflicts": 1,
        "unparsed": 0,
    }


async def test_later_values_fill_empty_ones_only(catalog: Catalog) -> None:
    bare = make_record(
        "1.8.1", data=b"1", patient_name="", sex="", study_description="", referring="",
        series_number=None, body_part="",
    )  # fmt: skip
    full = make_record(
        "1.8.2", data=b"2", patient_name="Filled^Name", study_description="Filled",
        referring="Dr^Who", series_number=5, body_part="HEAD",
    )  # fmt: skip
    other = make_record(
        "1.8.3", data=b"3", patient_name="Other^Name", study_description="",
        series_number=7, body_part="",
    )  # fmt: skip
    await catalog.add_instances([bare])
    await catalog.add_instances([full, other])
    [series] = await catalog.find(
        FindQuery(
            "PATIENT",
            "SERIES",
            {
                "PatientName": "",
                "PatientSex": "",
                "StudyDescription": "",
                "ReferringPhysicianName": "",
                "SeriesNumber": "",
                "BodyPartExamined": "",
            },
        )
    )
    assert series["PatientName"] == "Filled^Name"
    assert series["PatientSex"] == "F"
    assert series["StudyDescription"] == "Filled"
    assert series["ReferringPhysicianName"] == "Dr^Who"
    assert series["SeriesNumber"] == "5"
    assert series["BodyPartExamined"] == "HEAD"
    # The folded name followed the name it was filled from.
    hits = await catalog.find(FindQuery("PATIENT", "PATIENT", {"PatientName": "filled*"}))
    assert len(hits) == 1
    assert await catalog.find(FindQuery("PATIENT", "PATIENT", {"PatientName": "other*"})) == []


async def test_study_states_with_fake_clock(catalog: Catalog, clock: FakeClock) -> None:
    a = make_record("1.9.1", data=b"a", study_uid="1.9.100", series_uid="1.9.101")
    b = make_record("1.9.2", data=b"b", study_uid="1.9.200", series_uid="1.9.201")
    await catalog.add_instances([a])
    clock.advance(30)
    await catalog.add_instances([b])
    assert await catalog.study_state("1.9.100") is StudyState.RECEIVING
    assert await catalog.study_state("1.9.999") is None

    clock.advance(30)  # a quiet for 60 s, b for 30 s
    assert await catalog.mark_stable(60) == ["1.9.100"]
    assert await catalog.study_state("1.9.100") is StudyState.QUEUED
    assert await catalog.study_state("1.9.200") is StudyState.RECEIVING
    assert await catalog.mark_stable(60) == []

    clock.advance(30)
    assert await catalog.mark_stable(60) == ["1.9.200"]
    assert await catalog.backup_queue() == ["1.9.100", "1.9.200"]

    # A duplicate changes nothing; a new instance sends the study back to RECEIVING.
    await catalog.add_instances([a])
    assert await catalog.study_state("1.9.100") is StudyState.QUEUED
    await catalog.add_instances([make_record("1.9.3", data=b"c", study_uid="1.9.100")])
    assert await catalog.study_state("1.9.100") is StudyState.RECEIVING
    assert await catalog.backup_queue() == ["1.9.200"]
    clock.advance(59)
    assert await catalog.mark_stable(60) == []
    clock.advance(1)
    assert await catalog.mark_stable(60) == ["1.9.100"]
    assert await catalog.backup_queue() == ["1.9.200", "1.9.100"]
    with pytest.raises(ValueError):
        await catalog.mark_stable(-1)


def study_of(records: tuple[InstanceRecord, ...], study_uid: str) -> list[InstanceRecord]:
    return [r for r in records if r.study is not None and r.study.study_uid == study_uid]


async def test_locate_by_each_level(loaded: Catalog) -> None:
    records = dicomdir_records()
    by_uid = {r.sop_instance_uid: r for r in records}

    patient = await loaded.locate("PATIENT", {"PatientID": "98890234"})
    assert len(patient) == 24
    assert all(by_uid[loc.sop_instance_uid].patient.patient_id == "98890234" for loc in patient)  # type: ignore[union-attr]

    study_uid = "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.1"
    study = await loaded.locate("STUDY", {"StudyInstanceUID": study_uid})
    assert {loc.sop_instance_uid for loc in study} == {
        r.sop_instance_uid for r in study_of(records, study_uid)
    }
    # Series-number then instance-number order.
    order = [
        (by_uid[loc.sop_instance_uid].series.number, by_uid[loc.sop_instance_uid].instance_number)  # type: ignore[union-attr]
        for loc in study
    ]
    assert order == sorted(order)
    assert [n for n, _ in order] == [1, 2, 2, 2] + [700] * 7

    series_uid = "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.118"
    series = await loaded.locate(
        "SERIES", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}
    )
    assert len(series) == 7
    first = by_uid[series[0].sop_instance_uid]
    assert series[0] == InstanceLocation(
        first.sop_instance_uid,
        first.sop_class_uid,
        first.transfer_syntax_uid,
        first.sha256,
        first.size,
    )

    wanted = [series[3].sop_instance_uid, series[1].sop_instance_uid]
    image = await loaded.locate("IMAGE", {"SOPInstanceUID": "\\".join(wanted)})
    assert [loc.sop_instance_uid for loc in image] == [wanted[1], wanted[0]]


async def test_locate_uid_lists_and_tolerated_keys(loaded: Catalog) -> None:
    studies = [
        "1.3.6.1.4.1.5962.1.1.0.0.0.1196527414.5534.0.1",
        "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.1",
    ]
    found = await loaded.locate(
        "STUDY",
        {
            "StudyInstanceUID": "\\".join(studies),
            "PatientID": "77654033",
            "AccessionNumber": "ignored",
            "QueryRetrieveLevel": "STUDY",
        },
    )
    assert len(found) == 7
    # A higher-level unique key that does not fit finds nothing.
    assert await loaded.locate("STUDY", {"StudyInstanceUID": studies[0], "PatientID": "X"}) == []
    assert await loaded.locate("PATIENT", {"PatientID": "77654033", "IssuerOfPatientID": "Z"}) == []
    assert await loaded.locate("SERIES", {"SeriesInstanceUID": "1.2.3.4.5"}) == []


@pytest.mark.parametrize(
    ("level", "uids"),
    [
        ("STUDY", {}),
        ("STUDY", {"StudyInstanceUID": ""}),
        ("STUDY", {"StudyInstanceUID": "*"}),
        ("SERIES", {"StudyInstanceUID": "1.2.3"}),
        ("IMAGE", {"PatientID": "98890234"}),
        ("PATIENT", {"PatientID": "  "}),
        ("FRAME", {"SOPInstanceUID": "1.2.3"}),
    ],
)
async def test_locate_needs_the_levels_unique_key(
    loaded: Catalog, level: str, uids: dict[str, str]
) -> None:
    with pytest.raises(InvalidQuery):
        await loaded.locate(level, uids)


async def test_calls_from_worker_threads(catalog: Catalog) -> None:
    """The C-STORE handler's pattern: pynetdicom threads submitting to the catalog's loop."""
    loop = asyncio.get_running_loop()

    def store_from_thread(n: int) -> list[AddResult]:
        record = make_record(f"1.10.{n}", data=str(n).encode(), series_uid=f"1.10.0.{n % 3}")
        future = asyncio.run_coroutine_threadsafe(catalog.add_instances([record]), loop)
        return future.result(timeout=10)

    results = await asyncio.gather(
        *(loop.run_in_executor(None, store_from_thread, n) for n in range(20)),
        catalog.find(FindQuery("STUDY", "STUDY", {})),
    )
    assert all(r == [AddResult.STORED] for r in results[:20])
    counts = await catalog.counts()
    assert (counts["instances"], counts["series"], counts["studies"]) == (20, 3, 1)


async def test_use_after_close_fails(tmp_path: Path) -> None:
    catalog = await Catalog.open(tmp_path / "c.sqlite")
    await catalog.close()
    with pytest.raises(ValueError):
        await catalog.counts()
