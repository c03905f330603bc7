"""Instances in flight: recorded before they go out, moved by their acknowledgement, checked
on resume. Also: a journal from schema 1 (before in flight existed) is migrated and resumes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from meshpacs.errors import ConfigError, LimitExceeded
from meshpacs.recovery.deliver import DirDeliverer, OutcomeKind, dir_identity
from meshpacs.recovery.journal import MAX_BATCH, SCHEMA_VERSION, JournalEntry, RecoveryJournal
from meshpacs.recovery.model import PlannedInstance
from meshpacs.testing.synth import SeriesSpec, StudySpec

from .test_deliver import restored_study

AE = "ae:PACS@127.0.0.1:104"
STUDY = "1.2.826.0.1.3680043.8.498.1"


def instance(n: int) -> PlannedInstance:
    digest = hashlib.sha256(f"instance {n}".encode()).digest()
    return PlannedInstance(n, f"1.2.826.0.1.3680043.8.498.2.{n}", "1.2.840.10008.5.1.4.1.1.2",
                           "1.2.840.10008.1.2.1", 1000 + n, digest)  # fmt: skip


def entry(n: int) -> JournalEntry:
    return JournalEntry.of(instance(n), STUDY)


def digests(*numbers: int) -> set[bytes]:
    return {instance(n).sha256 for n in numbers}


def test_in_flight_rows_survive_reopening_and_leave_with_their_acknowledgement(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.sqlite"
    with RecoveryJournal.open(path, AE) as journal:
        journal.record_in_flight([entry(n) for n in range(6)])
        journal.record_in_flight([entry(0)])  # again: no second row
        assert journal.in_flight_count() == 6
    with RecoveryJournal.open(path, AE) as journal:
        wanted = [instance(n).sha256 for n in range(10)]
        assert journal.in_flight_among(wanted) == digests(*range(6))
        journal.record_delivered([entry(0), entry(1)])  # acknowledged: row moves, one commit
        journal.clear_in_flight(instance(2).sha256 for _ in range(3))  # refused by the PACS
        assert journal.in_flight_among(wanted) == digests(3, 4, 5)
        assert journal.delivered_among(wanted) == digests(0, 1)
        assert journal.in_flight_count() == 3
    with RecoveryJournal.open(path, "dir:/elsewhere") as other:
        assert other.in_flight_count() == 0  # per target, like everything else


def test_in_flight_batches_are_bounded_and_checked_before_writing(tmp_path: Path) -> None:
    with RecoveryJournal.open(tmp_path / "journal.sqlite", AE) as journal:
        with pytest.raises(LimitExceeded, match="Study Instance UID"):
            journal.record_in_flight([entry(1), JournalEntry.of(instance(2), "1." * 40)])
        with pytest.raises(LimitExceeded, match="journal batch"):
            journal.record_in_flight([entry(1)] * (MAX_BATCH + 1))
        with pytest.raises(LimitExceeded, match="journal batch"):
            journal.clear_in_flight(os.urandom(32) for _ in range(MAX_BATCH + 1))
        assert journal.in_flight_count() == 0


# -- schema 1 journals -------------------------------------------------------------------------

SCHEMA_1 = """
CREATE TABLE targets (
    id INTEGER PRIMARY KEY,
    identity TEXT NOT NULL UNIQUE CHECK (length(identity) BETWEEN 1 AND 1024),
    created_at REAL NOT NULL
);
CREATE TABLE delivered (
    target INTEGER NOT NULL REFERENCES targets (id),
    sha256 BLOB NOT NULL CHECK (length(sha256) = 32),
    sop_instance_uid TEXT NOT NULL CHECK (length(sop_instance_uid) BETWEEN 1 AND 64),
    sop_class_uid TEXT NOT NULL CHECK (length(sop_class_uid) <= 64),
    transfer_syntax_uid TEXT NOT NULL CHECK (length(transfer_syntax_uid) <= 64),
    size INTEGER NOT NULL CHECK (size >= 0),
    study_uid TEXT NOT NULL CHECK (length(study_uid) <= 64),
    name TEXT NOT NULL CHECK (length(name) <= 255),
    delivered_at REAL NOT NULL,
    PRIMARY KEY (target, sha256)
) WITHOUT ROWID;
CREATE INDEX delivered_by_study ON delivered (target, study_uid);
CREATE TABLE studies (
    target INTEGER NOT NULL REFERENCES targets (id),
    study_uid TEXT NOT NULL CHECK (length(study_uid) BETWEEN 1 AND 64),
    number INTEGER NOT NULL CHECK (number >= 1),
    PRIMARY KEY (target, study_uid),
    UNIQUE (target, number)
) WITHOUT ROWID;
CREATE TABLE complete (
    target INTEGER NOT NULL REFERENCES targets (id),
    kind TEXT NOT NULL CHECK (kind IN ('bundle', 'study')),
    key TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 64),
    completed_at REAL NOT NULL,
    PRIMARY KEY (target, kind, key)
) WITHOUT ROWID;
PRAGMA user_version = 1;
"""
"""The tables meshpacs wrote before in-flight rows existed (schema 1), as it wrote them."""


def schema_1_journal(path: Path) -> None:
    """A journal an interrupted schema-1 run left: instances 0 and 1 delivered, a study
    numbered, a bundle complete."""
    db = sqlite3.connect(path)
    try:
        db.executescript(SCHEMA_1)
        with db:
            db.execute("INSERT INTO targets (id, identity, created_at) VALUES (1, ?, 0)", (AE,))
            for n in (0, 1):
                i = instance(n)
                db.execute(
                    "INSERT INTO delivered VALUES (1, ?, ?, ?, ?, ?, ?, '', 1.0)",
                    (i.sha256, i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid,
                     i.size, STUDY),
                )  # fmt: skip
            db.execute("INSERT INTO studies VALUES (1, ?, 1)", (STUDY,))
            db.execute("INSERT INTO complete VALUES (1, 'bundle', 'ab', 1.0)")
    finally:
        db.close()


def test_a_schema_1_journal_is_migrated_and_resumes_where_it_stopped(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    schema_1_journal(path)
    with RecoveryJournal.open(path, AE) as journal:
        assert journal.delivered_among(digests(0, 1, 2)) == digests(0, 1)
        assert journal.study_numbers() == {STUDY: 1}
        assert journal.bundle_complete(bytes.fromhex("ab"))
        journal.record_in_flight([entry(2)])
        assert journal.in_flight_among(digests(2)) == digests(2)
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"targets", "delivered", "studies", "complete", "in_flight"}
    finally:
        db.close()
    with RecoveryJournal.open(path, AE) as journal:  # and opens again as it is now
        assert journal.in_flight_count() == 1


def test_a_file_claiming_schema_1_without_its_tables_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE targets (id INTEGER PRIMARY KEY)")
    db.execute("PRAGMA user_version = 1")
    db.close()
    with pytest.raises(ConfigError, match="not a meshpacs recovery journal"):
        RecoveryJournal.open(path, AE)
    db = sqlite3.connect(path)
    try:  # refused, and left as it was
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 1
    finally:
        db.close()


# -- a directory target ------------------------------------------------------------------------


async def test_to_dir_in_flight_files_in_place_are_kept_the_others_written(tmp_path: Path) -> None:
    _, items = restored_study(tmp_path, spec=StudySpec(series=(SeriesSpec("CT", 10, 16, 16),)))
    root = tmp_path / "target"
    journal_path = tmp_path / "journal.sqlite"
    with RecoveryJournal.open(journal_path, dir_identity(root)) as journal:
        await DirDeliverer(root, journal).deliver(items[:8])
    # What a kill after the renames, before the journal's commit, leaves: 0-7 written but
    # only in flight; 8-9 in flight and never written (killed before the copy).
    db = sqlite3.connect(journal_path)
    with db:
        db.execute("DELETE FROM delivered")
    db.close()
    with RecoveryJournal.open(journal_path, dir_identity(root)) as journal:
        journal.record_in_flight([JournalEntry.of(i.instance, i.study_uid) for i in items])
    folder = root / "study-000001"
    files = [folder / f"{i.instance.sha256.hex()}.dcm" for i in items]
    data = files[2].read_bytes()
    files[2].write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # same size, other bytes
    files[3].write_bytes(data[: len(data) // 2])  # cut short
    files[4].unlink()
    kept = {n: os.stat(files[n]).st_ino for n in (0, 1, 5, 6, 7)}

    with RecoveryJournal.open(journal_path, dir_identity(root)) as journal:
        outcomes = await DirDeliverer(root, journal).deliver(items)
        assert journal.in_flight_count() == 0
        assert journal.totals().instances == len(items)
    resumed = {n for n, o in enumerate(outcomes) if o.kind is OutcomeKind.ALREADY_DELIVERED}
    written = {n for n, o in enumerate(outcomes) if o.kind is OutcomeKind.DELIVERED}
    assert (resumed, written) == ({0, 1, 5, 6, 7}, {2, 3, 4, 8, 9})
    assert outcomes[0].detail == "an interrupted run wrote it; the file is in place"
    assert {n: os.stat(files[n]).st_ino for n in kept} == kept  # not written again
    for item, path in zip(items, files, strict=True):
        assert path.read_bytes() == item.path.read_bytes()
    assert not list(root.rglob("*.tmp"))


def test_to_dir_records_each_group_in_flight_before_writing_it(tmp_path: Path) -> None:
    _, items = restored_study(tmp_path, spec=StudySpec(series=(SeriesSpec("CT", 7, 16, 16),)))
    root = tmp_path / "target"
    seen: list[tuple[int, int]] = []

    class Watching(RecoveryJournal):
        def record_in_flight(self, entries: list[JournalEntry]) -> None:  # type: ignore[override]
            seen.append((len(entries), len(list(root.rglob("*.dcm")))))
            super().record_in_flight(entries)

    journal = Watching.open(tmp_path / "journal.sqlite", dir_identity(root))
    try:
        outcomes = asyncio.run(DirDeliverer(root, journal, flush_every=3).deliver(items))
        assert journal.in_flight_count() == 0
    finally:
        journal.close()
    assert [o.kind for o in outcomes] == [OutcomeKind.DELIVERED] * 7
    assert seen == [(3, 0), (3, 3), (1, 6)]  # each group in flight before its first file
