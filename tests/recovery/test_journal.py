"""The recovery journal: durable, per target, bounded, one recovery at a time."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from meshpacs.erasure.layout import BundleRef, CodingParams
from meshpacs.errors import ConfigError, LimitExceeded
from meshpacs.recovery.journal import (
    MAX_BATCH,
    SCHEMA_VERSION,
    JournalEntry,
    RecoveryJournal,
)
from meshpacs.recovery.model import PlannedBundle, PlannedInstance, PlannedStudy

AE = "ae:PACS@127.0.0.1:104"
DIR = "dir:/srv/restored"
STUDY = "1.2.826.0.1.3680043.8.498.1"


def instance(n: int) -> PlannedInstance:
    digest = hashlib.sha256(f"instance {n}".encode()).digest()
    return PlannedInstance(n, f"1.2.826.0.1.3680043.8.498.2.{n}", "1.2.840.10008.5.1.4.1.1.2",
                           "1.2.840.10008.1.2.1", 1000 + n, digest)  # fmt: skip


def entry(n: int, study: str = STUDY) -> JournalEntry:
    return JournalEntry.of(instance(n), study)


def bundle(first: int, count: int, tag: int) -> PlannedBundle:
    ref = BundleRef(bytes([tag]) * 16, CodingParams(2, 3, 4096), 1, b"\0" * 32)
    return PlannedBundle(ref, b"", (), (), tuple(instance(first + k) for k in range(count)))


def study(*bundles: PlannedBundle, uid: str = STUDY) -> PlannedStudy:
    return PlannedStudy(uid, "", "", "", ("CT",), 0.0, bundles)


def test_delivered_instances_are_remembered_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "work" / "journal.sqlite"
    with RecoveryJournal.open(path, AE) as journal:
        journal.record_delivered([entry(1), entry(2)])
        assert journal.delivered(instance(1).sha256)
        assert not journal.delivered(instance(3).sha256)
    with RecoveryJournal.open(path, AE) as journal:
        wanted = [instance(n).sha256 for n in range(5)]
        assert journal.delivered_among(wanted) == {instance(1).sha256, instance(2).sha256}
        [first, second] = journal.entries_of_study(STUDY)
        assert {first.sop_instance_uid, second.sop_instance_uid} == {
            instance(1).sop_instance_uid, instance(2).sop_instance_uid}  # fmt: skip
        assert first.delivered_at > 0
        totals = journal.totals()
        assert (totals.instances, totals.bytes) == (2, 1001 + 1002)


def test_lookups_of_many_digests_go_in_chunks(tmp_path: Path) -> None:
    with RecoveryJournal.open(tmp_path / "j.sqlite", AE) as journal:
        journal.record_delivered([entry(n) for n in range(0, 3000, 2)])
        held = journal.delivered_among(instance(n).sha256 for n in range(3000))
        assert held == {instance(n).sha256 for n in range(0, 3000, 2)}


def test_each_target_has_its_own_view_of_one_journal_file(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    with RecoveryJournal.open(path, AE) as journal:
        journal.record_delivered([entry(1)])
        assert journal.study_number("1.2.3") == 1
    with RecoveryJournal.open(path, DIR) as journal:
        assert not journal.delivered(instance(1).sha256)
        assert journal.totals().instances == 0
        assert journal.study_number("1.2.4") == 1  # numbers are per target


def test_a_recorded_instance_keeps_its_first_record(tmp_path: Path) -> None:
    with RecoveryJournal.open(tmp_path / "j.sqlite", DIR) as journal:
        journal.record_delivered([JournalEntry.of(instance(1), STUDY, "study-000001/a.dcm")])
        journal.record_delivered([JournalEntry.of(instance(1), STUDY, "elsewhere.dcm")])
        [kept] = journal.entries_of_study(STUDY)
        assert kept.name == "study-000001/a.dcm"


def test_a_batch_with_a_value_over_its_bound_records_nothing(tmp_path: Path) -> None:
    with RecoveryJournal.open(tmp_path / "j.sqlite", AE) as journal:
        long_uid = JournalEntry.of(instance(2), "1." * 40)
        with pytest.raises(LimitExceeded, match="Study Instance UID of 80 characters"):
            journal.record_delivered([entry(1), long_uid])
        assert journal.totals().instances == 0
        with pytest.raises(LimitExceeded, match="file name"):
            journal.record_delivered([JournalEntry.of(instance(1), STUDY, "x" * 256)])
        with pytest.raises(LimitExceeded, match="journal batch"):
            journal.record_delivered([entry(1)] * (MAX_BATCH + 1))
        with pytest.raises(ValueError, match="32 bytes"):
            journal.record_delivered([JournalEntry("", "1.2", "", "", 1, "")])  # type: ignore[arg-type]
        assert journal.totals().instances == 0


def test_study_numbers_are_stable_and_dense(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with RecoveryJournal.open(path, DIR) as journal:
        assert [journal.study_number(u) for u in ("1.1", "1.2", "1.1")] == [1, 2, 1]
    with RecoveryJournal.open(path, DIR) as journal:
        assert journal.study_number("1.3") == 3
        assert journal.study_number("1.2") == 2
        assert journal.study_numbers() == {"1.1": 1, "1.2": 2, "1.3": 3}
        with pytest.raises(ValueError):
            journal.study_number("")


def test_bundles_and_studies_are_marked_complete_once_every_instance_is_held(
    tmp_path: Path,
) -> None:
    planned = study(bundle(0, 3, 1), bundle(3, 2, 2))
    with RecoveryJournal.open(tmp_path / "j.sqlite", AE) as journal:
        journal.record_delivered([entry(0), entry(1), entry(2), entry(3)])
        assert not journal.mark_complete(planned)
        assert journal.bundle_complete(bytes([1]) * 16)
        assert not journal.bundle_complete(bytes([2]) * 16)
        assert not journal.study_complete(STUDY)
        journal.record_delivered([entry(4)])
        assert journal.mark_complete(planned)
        assert journal.bundle_complete(bytes([2]) * 16) and journal.study_complete(STUDY)
        assert journal.totals().bundles_complete == 2
        assert journal.totals().studies_complete == 1
        unparsed = study(bundle(10, 1, 3), uid="")
        journal.record_delivered([entry(10, "")])
        assert journal.mark_complete(unparsed)  # tracked by its bundle only
        assert journal.bundle_complete(bytes([3]) * 16) and not journal.study_complete("")
        assert journal.totals().studies_complete == 1


def test_the_journal_is_wal_fsynced_at_commit_and_private(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with RecoveryJournal.open(path, AE) as journal:
        journal.record_delivered([entry(1)])
        assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        for name in ("j.sqlite", "j.sqlite-wal"):
            assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()


def test_only_one_recovery_at_a_time_uses_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    first = RecoveryJournal.open(path, AE)
    try:
        with pytest.raises(ConfigError, match="in use by another recovery"):
            RecoveryJournal.open(path, DIR)
    finally:
        first.close()
    RecoveryJournal.open(path, DIR).close()  # free again once closed


def test_files_that_are_not_this_journal_are_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite"
    with RecoveryJournal.open(newer, AE):
        pass
    db = sqlite3.connect(newer)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(ConfigError, match="newer meshpacs"):
        RecoveryJournal.open(newer, AE)

    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.close()
    with pytest.raises(ConfigError, match="not a meshpacs recovery journal"):
        RecoveryJournal.open(other, AE)

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database, not even close" * 200)
    with pytest.raises(ConfigError, match="cannot open the recovery journal"):
        RecoveryJournal.open(garbage, AE)


@pytest.mark.parametrize("identity", ["", "x" * 1025, "dir:/a\nb"])
def test_bad_target_identities_are_refused(tmp_path: Path, identity: str) -> None:
    with pytest.raises(ValueError):
        RecoveryJournal.open(tmp_path / "j.sqlite", identity)


def test_threads_may_record_at_once(tmp_path: Path) -> None:
    with RecoveryJournal.open(tmp_path / "j.sqlite", AE) as journal:

        def record(start: int) -> None:
            for n in range(start, start + 20):
                journal.record_delivered([entry(n)])

        threads = [threading.Thread(target=record, args=(k * 20,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert journal.totals().instances == 80


def test_a_closed_journal_refuses_use(tmp_path: Path) -> None:
    journal = RecoveryJournal.open(tmp_path / "j.sqlite", AE)
    journal.close()
    journal.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        journal.delivered(instance(1).sha256)
