"""The end report: required keys, honest counts across resumed runs, the exit code."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from meshpacs.recovery.deliver import (
    DeliveryOutcome,
    DirDeliverer,
    OutcomeKind,
    Restored,
    dir_identity,
)
from meshpacs.recovery.journal import RecoveryJournal
from meshpacs.recovery.model import PlannedStudy
from meshpacs.recovery.report import MAX_LISTED, RecoveryReport, ReportTally

from .test_deliver import restored_study

REQUIRED = {
    "studies_planned",
    "studies_delivered",
    "instances_delivered",
    "bytes_delivered",
    "seconds",
    "unrecoverable",
}


def outcome(item: Restored, kind: OutcomeKind, detail: str = "") -> DeliveryOutcome:
    return DeliveryOutcome(item, kind, detail or str(kind))


def two_studies(tmp_path: Path) -> tuple[list[PlannedStudy], list[Restored], list[Restored]]:
    first, first_items = restored_study(tmp_path, number=0)
    second, second_items = restored_study(tmp_path, number=1)
    return [first, second], first_items, second_items


def test_everything_delivered_gives_exit_code_0_and_the_required_keys(tmp_path: Path) -> None:
    studies, a, b = two_studies(tmp_path)
    tally = ReportTally("dir:/restored", studies)
    for item in a + b:
        tally.record(outcome(item, OutcomeKind.DELIVERED))
    report = tally.report(seconds=2.5)
    document = report.to_json()
    assert set(document) >= REQUIRED
    assert isinstance(document["unrecoverable"], list) and not document["unrecoverable"]
    size = sum(i.instance.size for i in a + b)
    assert (document["studies_planned"], document["studies_delivered"]) == (2, 2)
    assert (document["instances_planned"], document["instances_delivered"]) == (20, 20)
    assert document["bytes_delivered"] == document["bytes_this_run"] == size
    assert document["seconds"] == 2.5
    assert document["bundles_delivered"] == document["bundles_planned"] > 1
    assert report.complete and report.exit_code == 0 and document["exit_code"] == 0
    assert "complete" in report.summary()


def test_failures_and_an_unrecoverable_bundle_give_exit_code_1_and_name_studies(
    tmp_path: Path,
) -> None:
    studies, a, b = two_studies(tmp_path)
    lost = studies[1].bundles[0]  # instances 0..3 of the second study
    tally = ReportTally("ae:PACS@10.0.0.5:104", studies)
    for item in a:
        tally.record(outcome(item, OutcomeKind.DELIVERED))
    tally.record(outcome(b[5], OutcomeKind.REFUSED, "refused: digest"))
    tally.record(outcome(b[6], OutcomeKind.FAILED, "peer refused the instance"))
    for item in b[7:]:
        tally.record(outcome(item, OutcomeKind.DELIVERED))
    tally.record_unrecoverable(lost, "need 2 good fragments, have 1")
    report = tally.report(seconds=1.0)
    assert report.exit_code == 1 and not report.complete
    document = json.loads(json.dumps(report.to_json()))
    assert (document["studies_planned"], document["studies_delivered"]) == (2, 1)
    assert document["instances_delivered"] == 10 + 3
    # every bundle of the first study is whole; of the second's (0-3, 4-7, 8-9) only 8-9
    first_bundles = len(studies[0].bundles)
    assert document["bundles_planned"] == first_bundles + len(studies[1].bundles)
    assert document["bundles_delivered"] == first_bundles + 1
    assert document["unrecoverable"] == [{
        "bundle": lost.bundle_id.hex(), "study": studies[1].study_uid, "instances": 4,
        "reason": "need 2 good fragments, have 1",
    }]  # fmt: skip
    assert {(f["sop_instance_uid"], f["kind"]) for f in document["failed"]} == {
        (b[5].instance.sop_instance_uid, "refused"),
        (b[6].instance.sop_instance_uid, "failed"),
    }
    assert all(f["study"] == studies[1].study_uid for f in document["failed"])
    assert document["failed_count"] == 2
    text = report.summary()
    assert "INCOMPLETE" in text and "1 bundle(s), 4 instance(s)" in text
    assert "1 x refused: digest" in text
    for item in a + b:  # the terminal gets counts and reasons, the JSON file the UIDs
        assert item.instance.sop_instance_uid not in text and item.study_uid not in text


def test_a_resumed_run_counts_what_earlier_runs_delivered(tmp_path: Path) -> None:
    studies, a, b = two_studies(tmp_path)
    earlier = {i.instance.sha256 for i in a}
    tally = ReportTally("dir:/restored", studies, already_delivered=earlier)
    tally.record(outcome(b[0], OutcomeKind.FAILED, "no association"))  # then retried
    for item in a:
        tally.record(outcome(item, OutcomeKind.ALREADY_DELIVERED))
    for item in b:
        tally.record(outcome(item, OutcomeKind.DELIVERED))
    report = tally.report(seconds=3.0)
    assert report.exit_code == 0
    assert report.instances_delivered == 20 and report.instances_resumed == 10
    assert report.instances_this_run == 10
    assert report.bytes_this_run == sum(i.instance.size for i in b)
    assert report.bytes_delivered == report.bytes_planned
    assert report.failed_count == 0  # delivered after all
    assert "(10 by an earlier run)" in report.summary()


def test_nothing_delivered_and_an_interruption_is_incomplete(tmp_path: Path) -> None:
    studies, a, _ = two_studies(tmp_path)
    tally = ReportTally("dir:/restored", studies)
    tally.record(outcome(a[0], OutcomeKind.DELIVERED))
    report = tally.report(seconds=0.1)  # e.g. at Ctrl-C: the rest never had an outcome
    assert (report.instances_delivered, report.studies_delivered, report.exit_code) == (1, 0, 1)
    assert report.to_json()["unrecoverable"] == []


def test_an_unrecoverable_bundle_an_earlier_run_delivered_is_not_reported(
    tmp_path: Path,
) -> None:
    studies, a, _ = two_studies(tmp_path)
    tally = ReportTally("dir:/restored", studies[:1], {i.instance.sha256 for i in a})
    tally.record_unrecoverable(studies[0].bundles[0], "too few fragments")
    report = tally.report(seconds=0.0)
    assert report.unrecoverable == () and report.exit_code == 0


def test_failed_instances_are_listed_up_to_a_bound(tmp_path: Path) -> None:
    studies, a, b = two_studies(tmp_path)
    tally = ReportTally("dir:/restored", studies)
    for item in a + b:
        tally.record(outcome(item, OutcomeKind.FAILED, "down"))
    report = tally.report(seconds=1.0)
    assert report.failed_count == 20 and len(report.failed) == min(20, MAX_LISTED)
    assert report.failed_reasons == (("down", 20),)


def test_the_json_file_is_written_whole_and_private(tmp_path: Path) -> None:
    studies, _, _ = two_studies(tmp_path)
    report = ReportTally("dir:/restored", studies).report(seconds=0.5)
    path = tmp_path / "report.json"
    report.write_json(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document == json.loads(json.dumps(report.to_json()))
    assert set(document) >= REQUIRED and document["exit_code"] == 1
    assert isinstance(report, RecoveryReport)


async def test_a_deliverer_feeds_the_tally_through_progress(tmp_path: Path) -> None:
    studies, a, b = two_studies(tmp_path)
    root = tmp_path / "target"
    with RecoveryJournal.open(tmp_path / "journal.sqlite", dir_identity(root)) as journal:
        deliverer = DirDeliverer(root, journal)
        await deliverer.deliver(a)
        planned = [i.sha256 for s in studies for bundle in s.bundles for i in bundle.instances]
        held = journal.delivered_among(planned)
        tally = ReportTally(deliverer.identity, studies, held)
        await deliverer.deliver(a + b, progress=tally.record)
        for study in studies:
            assert journal.mark_complete(study)
    report = tally.report(seconds=1.0)
    assert report.exit_code == 0
    assert (report.instances_resumed, report.instances_this_run) == (10, 10)
    assert report.target == dir_identity(root)
