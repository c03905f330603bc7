"""Delivery into a directory and, by C-STORE, into a real dcmtk storescp; resumed by the journal.

Every test checks the bytes that arrive, not only the outcomes: the target must receive each
instance exactly as restored, never one that failed its check, and never one twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import stat
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from pydicom.filereader import read_file_meta_info

from meshpacs.dicom.part10 import dataset_offset
from meshpacs.dicom.scu import Target
from meshpacs.erasure.layout import BundleRef, CodingParams
from meshpacs.recovery.deliver import (
    MANIFEST,
    AeDeliverer,
    DeliveryOutcome,
    DirDeliverer,
    OutcomeKind,
    Restored,
    ae_identity,
    dir_identity,
)
from meshpacs.recovery.journal import RecoveryJournal
from meshpacs.recovery.model import PlannedBundle, PlannedInstance, PlannedStudy
from meshpacs.testing.dcmtk import dcmtk_env, dcmtk_tool
from meshpacs.testing.loopback import free_port
from meshpacs.testing.synth import SeriesSpec, StudySpec, generate_study, write_study

STORESCP = dcmtk_tool("storescp")
ECHOSCU = dcmtk_tool("echoscu")
needs_dcmtk = pytest.mark.skipif(STORESCP is None or ECHOSCU is None, reason="dcmtk missing")

SMALL = StudySpec(series=(SeriesSpec("CT", 6, 16, 16), SeriesSpec("MR", 4, 16, 16)))
SCP_AE = "RESTOREPACS"
CALLING = "MESHRECOVER"
SAFE_NAME = re.compile(r"(study-[0-9]{6}|unsorted)/[0-9a-f]{64}\.dcm")


# -- restored instances, as the decoder would hand them over ---------------------------------


def restored_study(
    directory: Path, *, seed: int = 11, number: int = 0, spec: StudySpec = SMALL,
    per_bundle: int = 4, unparsed: bool = False,
) -> tuple[PlannedStudy, list[Restored]]:  # fmt: skip
    """A synthetic study written as restored files, and its plan (bundles of ``per_bundle``)."""
    generated = list(generate_study(seed, spec, study=number))
    paths = write_study(directory / f"restored-{seed}-{number}", generated)
    uid = "" if unparsed else generated[0].study_instance_uid
    instances = []
    for position, (synth, path) in enumerate(zip(generated, paths, strict=True)):
        data = path.read_bytes()
        instances.append(PlannedInstance(
            position % per_bundle, synth.sop_instance_uid, synth.sop_class_uid,
            synth.transfer_syntax_uid, len(data), hashlib.sha256(data).digest(),
        ))  # fmt: skip
    bundles = []
    for start in range(0, len(instances), per_bundle):
        bundle_id = hashlib.sha256(f"{seed}/{number}/{start}".encode()).digest()[:16]
        ref = BundleRef(bundle_id, CodingParams(2, 3, 4096), 1, b"\0" * 32)
        bundles.append(
            PlannedBundle(ref, b"", (), (), tuple(instances[start : start + per_bundle]))
        )
    study = PlannedStudy(uid, "", "", "", ("CT", "MR"), 0.0, tuple(bundles))
    return study, [Restored(i, p, uid) for i, p in zip(instances, paths, strict=True)]


def dataset_part(data: bytes) -> bytes:
    return data[dataset_offset(data) :]


def kinds(outcomes: Sequence[DeliveryOutcome]) -> Counter[OutcomeKind]:
    return Counter(o.kind for o in outcomes)


def alter_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, other digest
    path.write_bytes(bytes(data))


# -- to a directory --------------------------------------------------------------------------


async def test_to_dir_writes_exact_bytes_under_safe_names_with_manifests(tmp_path: Path) -> None:
    study, items = restored_study(tmp_path)
    root = tmp_path / "target"
    seen: list[DeliveryOutcome] = []
    with RecoveryJournal.open(tmp_path / "work" / "journal.sqlite", dir_identity(root)) as journal:
        deliverer = DirDeliverer(root, journal, flush_every=3)
        outcomes = await deliverer.deliver(items, progress=seen.append)
        await deliverer.finish()
    assert [o.item for o in outcomes] == items
    assert kinds(outcomes) == {OutcomeKind.DELIVERED: len(items)}
    assert sorted(o.item.instance.sop_instance_uid for o in seen) == sorted(
        i.instance.sop_instance_uid for i in items)  # fmt: skip

    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.dcm"))
    assert len(files) == len(items) and all(SAFE_NAME.fullmatch(f) for f in files)
    for item in items:
        written = root / "study-000001" / f"{item.instance.sha256.hex()}.dcm"
        assert written.read_bytes() == item.path.read_bytes()
        assert stat.S_IMODE(written.stat().st_mode) == 0o600
    uids = {i.instance.sop_instance_uid for i in items} | {study.study_uid}
    for path in root.rglob("*"):
        assert not any(uid in str(path) for uid in uids)
    assert not [p for p in root.rglob("*.tmp")]

    manifest = json.loads((root / "study-000001" / MANIFEST).read_text())
    assert manifest["version"] == 1 and manifest["study_uid"] == study.study_uid
    listed = {row["file"]: row for row in manifest["instances"]}
    assert set(listed) == set(files)
    for item in items:
        row = listed[f"study-000001/{item.instance.sha256.hex()}.dcm"]
        i = item.instance
        assert (row["sop_instance_uid"], row["sop_class_uid"], row["transfer_syntax_uid"],
                row["size"], row["sha256"], row["study_uid"]) == (
            i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.size,
            i.sha256.hex(), study.study_uid)  # fmt: skip
    index = json.loads((root / MANIFEST).read_text())
    assert index["instances"] == len(items)
    assert index["studies"] == [{
        "folder": "study-000001", "manifest": "study-000001/manifest.json",
        "study_uid": study.study_uid, "instances": len(items),
        "bytes": sum(i.instance.size for i in items),
    }]  # fmt: skip


async def test_to_dir_again_with_the_journal_writes_nothing_twice(tmp_path: Path) -> None:
    _, items = restored_study(tmp_path)
    root = tmp_path / "target"
    journal_path = tmp_path / "journal.sqlite"
    with RecoveryJournal.open(journal_path, dir_identity(root)) as journal:
        first = await DirDeliverer(root, journal).deliver(items[:6])
    assert kinds(first) == {OutcomeKind.DELIVERED: 6}
    before = {p: p.stat().st_ino for p in root.rglob("*.dcm")}
    with RecoveryJournal.open(journal_path, dir_identity(root)) as journal:
        second = await DirDeliverer(root, journal).deliver(items)
    assert [o.kind for o in second] == [OutcomeKind.ALREADY_DELIVERED] * 6 + [
        OutcomeKind.DELIVERED] * (len(items) - 6)  # fmt: skip
    after = {p: p.stat().st_ino for p in root.rglob("*.dcm")}
    assert len(after) == len(items)
    assert all(after[p] == inode for p, inode in before.items())  # not rewritten
    manifest = json.loads((root / "study-000001" / MANIFEST).read_text())
    assert len(manifest["instances"]) == len(items)  # kept up to date without finish()


async def test_to_dir_refuses_an_altered_file_and_writes_the_rest(tmp_path: Path) -> None:
    _, items = restored_study(tmp_path)
    alter_one_byte(items[2].path)
    items[5].path.unlink()
    root = tmp_path / "target"
    with RecoveryJournal.open(tmp_path / "journal.sqlite", dir_identity(root)) as journal:
        outcomes = await DirDeliverer(root, journal).deliver(items)
        held = journal.delivered_among(i.instance.sha256 for i in items)
    assert outcomes[2].kind is OutcomeKind.REFUSED
    assert outcomes[2].detail == "refused: the restored file's SHA-256 does not match the catalog's"
    assert outcomes[5].detail == "refused: the restored file is missing"
    assert kinds(outcomes) == {OutcomeKind.DELIVERED: len(items) - 2, OutcomeKind.REFUSED: 2}
    names = {p.name for p in root.rglob("*.dcm")}
    assert f"{items[2].instance.sha256.hex()}.dcm" not in names
    assert len(names) == len(items) - 2
    assert items[2].instance.sha256 not in held and len(held) == len(items) - 2
    assert not [p for p in root.rglob("*.tmp")]


async def test_study_folders_keep_their_numbers_across_runs(tmp_path: Path) -> None:
    first, first_items = restored_study(tmp_path, number=0)
    second, second_items = restored_study(tmp_path, number=1)
    _, loose = restored_study(tmp_path, seed=12, unparsed=True, spec=StudySpec(
        series=(SeriesSpec("CT", 2, 16, 16),)))  # fmt: skip
    root = tmp_path / "target"
    journal_path = tmp_path / "journal.sqlite"
    with RecoveryJournal.open(journal_path, dir_identity(root)) as journal:
        await DirDeliverer(root, journal).deliver(first_items[:2] + second_items[:2])
    with RecoveryJournal.open(journal_path, dir_identity(root)) as journal:
        deliverer = DirDeliverer(root, journal)
        # Another order this time: folders follow the journal, not the order.
        await deliverer.deliver(loose + second_items + first_items)
        await deliverer.finish()
    for folder, items in (("study-000001", first_items), ("study-000002", second_items),
                          ("unsorted", loose)):  # fmt: skip
        names = {p.name for p in (root / folder).glob("*.dcm")}
        assert names == {f"{i.instance.sha256.hex()}.dcm" for i in items}, folder
    index = json.loads((root / MANIFEST).read_text())
    assert {s["folder"]: s["study_uid"] for s in index["studies"]} == {
        "study-000001": first.study_uid,
        "study-000002": second.study_uid,
        "unsorted": "",
    }


async def test_what_a_crash_left_half_written_is_swept(tmp_path: Path) -> None:
    root = tmp_path / "target"
    (root / "study-000001").mkdir(parents=True)
    leftover = root / "study-000001" / f".{'ab' * 32}.dcm.{'0' * 16}.tmp"
    leftover.write_bytes(b"half")
    manifest_leftover = root / f".manifest.json.{'1' * 16}.tmp"
    manifest_leftover.write_bytes(b"{")
    theirs = root / "study-000001" / "notes.tmp"
    theirs.write_bytes(b"not ours")
    with RecoveryJournal.open(tmp_path / "journal.sqlite", dir_identity(root)) as journal:
        DirDeliverer(root, journal)
    assert not leftover.exists() and not manifest_leftover.exists()
    assert theirs.exists()


async def test_duplicates_in_a_batch_are_written_once(tmp_path: Path) -> None:
    _, items = restored_study(tmp_path)
    root = tmp_path / "target"
    with RecoveryJournal.open(tmp_path / "journal.sqlite", dir_identity(root)) as journal:
        outcomes = await DirDeliverer(root, journal).deliver(items[:3] + items[:2])
    assert [o.kind for o in outcomes] == [OutcomeKind.DELIVERED] * 5
    assert [o.item for o in outcomes] == items[:3] + items[:2]
    assert len(list(root.rglob("*.dcm"))) == 3


def test_a_journal_for_another_target_is_refused(tmp_path: Path) -> None:
    with RecoveryJournal.open(tmp_path / "journal.sqlite", dir_identity(tmp_path / "a")) as j:
        with pytest.raises(ValueError, match="journal is open for"):
            DirDeliverer(tmp_path / "b", j)
        with pytest.raises(ValueError, match="journal is open for"):
            AeDeliverer(Target(SCP_AE, "127.0.0.1", 104, CALLING), j)
    target = Target(SCP_AE, "127.0.0.1", 104, CALLING)
    assert ae_identity(target) == f"ae:{SCP_AE}@127.0.0.1:104"


# -- to a PACS: a real dcmtk storescp ---------------------------------------------------------


class Storescp:
    """dcmtk storescp taking every transfer syntax, bit-preserving, a unique file per instance
    received (so repeats show)."""

    def __init__(self, out: Path, *options: str) -> None:
        self.out = out
        self.options = options
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        out.mkdir(parents=True, exist_ok=True)

    @property
    def target(self) -> Target:
        return Target(SCP_AE, "127.0.0.1", self.port, CALLING)

    def start(self) -> None:
        assert STORESCP and ECHOSCU
        args = [STORESCP, "-aet", SCP_AE, "+xa", *self.options, "+B", "+uf", "-od", str(self.out),
                str(self.port)]  # fmt: skip
        self.proc = subprocess.Popen(
            args, env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while subprocess.run([ECHOSCU, "-aec", SCP_AE, "127.0.0.1", str(self.port)],
                             env=dcmtk_env(), capture_output=True).returncode:  # fmt: skip
            assert self.proc.poll() is None, "storescp exited"
            assert time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def received(self) -> Counter[tuple[str, bytes]]:
        """(SOP Instance UID, dataset bytes) of every file received, with repeats."""
        found: Counter[tuple[str, bytes]] = Counter()
        for path in (p for p in self.out.rglob("*") if p.is_file()):
            meta = read_file_meta_info(path)
            found[(str(meta.MediaStorageSOPInstanceUID), dataset_part(path.read_bytes()))] += 1
        return found


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Storescp]:
    scp = Storescp(tmp_path / "received")
    yield scp
    scp.kill()


def sent(items: Sequence[Restored]) -> Counter[tuple[str, bytes]]:
    return Counter((i.instance.sop_instance_uid, dataset_part(i.path.read_bytes())) for i in items)


@needs_dcmtk
async def test_to_ae_byte_identical_over_two_associations_then_nothing_twice(
    tmp_path: Path, storescp: Storescp
) -> None:
    _, items = restored_study(tmp_path)
    _, rle = restored_study(tmp_path, number=1, spec=StudySpec(SMALL.series, "rle"))
    items += rle
    storescp.options = ("--fork",)  # two associations at once
    storescp.start()
    journal_path = tmp_path / "work" / "journal.sqlite"
    threads: set[str] = set()

    def progress(outcome: DeliveryOutcome) -> None:
        threads.add(threading.current_thread().name)

    with RecoveryJournal.open(journal_path, ae_identity(storescp.target)) as journal:
        deliverer = AeDeliverer(storescp.target, journal, associations=2)
        outcomes = await deliverer.deliver(items, progress=progress)
        assert journal.totals().instances == len(items)
    assert kinds(outcomes) == {OutcomeKind.DELIVERED: len(items)}
    assert all(o.status == 0 for o in outcomes)
    assert storescp.received() == sent(items)
    assert len({t for t in threads if t.startswith("meshpacs-scu-")}) == 2

    with RecoveryJournal.open(journal_path, ae_identity(storescp.target)) as journal:
        again = await AeDeliverer(storescp.target, journal, associations=2).deliver(items)
    assert kinds(again) == {OutcomeKind.ALREADY_DELIVERED: len(items)}
    assert storescp.received() == sent(items)  # nothing more arrived


@needs_dcmtk
async def test_to_ae_killed_half_way_then_resumed_delivers_the_rest_exactly_once(
    tmp_path: Path, storescp: Storescp
) -> None:
    _, items = restored_study(tmp_path, spec=StudySpec(series=(SeriesSpec("CT", 14, 16, 16),)))
    storescp.start()
    journal_path = tmp_path / "journal.sqlite"
    acknowledged = 0

    def progress(outcome: DeliveryOutcome) -> None:
        nonlocal acknowledged
        acknowledged += outcome.kind is OutcomeKind.DELIVERED
        if acknowledged == 5:
            storescp.kill()  # the sender waits for this call: nothing is in flight

    with RecoveryJournal.open(journal_path, ae_identity(storescp.target)) as journal:
        deliverer = AeDeliverer(storescp.target, journal, associations=1, max_retries=1,
                                retry_delay=0.05)  # fmt: skip
        first = await deliverer.deliver(items, progress=progress)
    assert [o.kind for o in first] == [OutcomeKind.DELIVERED] * 5 + [OutcomeKind.FAILED] * 9
    assert all(o.detail.startswith("not delivered: ") for o in first[5:])

    storescp.start()  # the PACS is back
    with RecoveryJournal.open(journal_path, ae_identity(storescp.target)) as journal:
        second = await AeDeliverer(storescp.target, journal, associations=2).deliver(items)
        assert journal.totals().instances == len(items)
    assert [o.kind for o in second] == [OutcomeKind.ALREADY_DELIVERED] * 5 + [
        OutcomeKind.DELIVERED] * 9  # fmt: skip
    assert storescp.received() == sent(items)  # every instance, each exactly once


@needs_dcmtk
async def test_to_ae_cancelled_like_ctrl_c_then_resumed_delivers_each_once(
    tmp_path: Path, storescp: Storescp
) -> None:
    _, items = restored_study(tmp_path, spec=StudySpec(series=(SeriesSpec("CT", 12, 16, 16),)))
    storescp.start()
    journal_path = tmp_path / "journal.sqlite"
    loop = asyncio.get_running_loop()
    task: asyncio.Task[list[DeliveryOutcome]] | None = None

    def progress(outcome: DeliveryOutcome) -> None:
        if outcome.item is items[0]:
            assert task is not None
            loop.call_soon_threadsafe(task.cancel)
            time.sleep(0.5)  # the cancellation reaches the deliverer while this chunk runs

    with RecoveryJournal.open(journal_path, ae_identity(storescp.target)) as journal:
        deliverer = AeDeliverer(storescp.target, journal, associations=1, chunk_instances=4)
        task = asyncio.ensure_future(deliverer.deliver(items, progress=progress))
        with pytest.raises(asyncio.CancelledError):
            await task
        # The chunk in flight was finished and journaled; no further chunk was started.
        assert journal.totals().instances == 4
    assert sum(storescp.received().values()) == 4

    with RecoveryJournal.open(journal_path, ae_identity(storescp.target)) as journal:
        resumed = await AeDeliverer(storescp.target, journal).deliver(items)
    assert kinds(resumed) == {OutcomeKind.ALREADY_DELIVERED: 4, OutcomeKind.DELIVERED: 8}
    assert storescp.received() == sent(items)


@needs_dcmtk
async def test_to_ae_never_sends_an_altered_instance(tmp_path: Path, storescp: Storescp) -> None:
    _, items = restored_study(tmp_path)
    original = items[3].path.read_bytes()
    alter_one_byte(items[3].path)
    longer = items[7].path
    longer.write_bytes(longer.read_bytes() + b"\0\0")
    storescp.start()
    with RecoveryJournal.open(tmp_path / "journal.sqlite", ae_identity(storescp.target)) as j:
        outcomes = await AeDeliverer(storescp.target, j).deliver(items)
        assert not j.delivered(items[3].instance.sha256)
    assert outcomes[3].kind is OutcomeKind.REFUSED
    assert outcomes[3].detail == "refused: the restored file's SHA-256 does not match the catalog's"
    assert outcomes[7].kind is OutcomeKind.REFUSED
    assert "bytes, the catalog says" in outcomes[7].detail
    good = [i for n, i in enumerate(items) if n not in (3, 7)]
    assert storescp.received() == sent(good)
    uids = {uid for uid, _ in storescp.received()}
    assert items[3].instance.sop_instance_uid not in uids
    assert dataset_part(original) not in {data for _, data in storescp.received()}


@needs_dcmtk
async def test_to_ae_with_the_pacs_down_fails_clearly_and_journals_nothing(
    tmp_path: Path,
) -> None:
    _, items = restored_study(tmp_path)
    target = Target(SCP_AE, "127.0.0.1", free_port(), CALLING)  # nobody listens
    with RecoveryJournal.open(tmp_path / "journal.sqlite", ae_identity(target)) as journal:
        deliverer = AeDeliverer(target, journal, max_retries=0, retry_delay=0.01)
        outcomes = await deliverer.deliver(items[:3])
        assert journal.totals().instances == 0
    assert [o.kind for o in outcomes] == [OutcomeKind.FAILED] * 3
    assert all("no association with" in o.detail and o.status is None for o in outcomes)
    assert not any(o.item.instance.sop_instance_uid in o.detail for o in outcomes)


def test_the_directory_target_and_its_files_are_private(tmp_path: Path) -> None:
    _, items = restored_study(tmp_path, spec=StudySpec(series=(SeriesSpec("CT", 1, 16, 16),)))
    root = tmp_path / "new" / "target"
    with RecoveryJournal.open(tmp_path / "journal.sqlite", dir_identity(root)) as journal:
        asyncio.run(DirDeliverer(root, journal).deliver(items))
    assert stat.S_IMODE(os.stat(root / "study-000001").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(root / "study-000001" / MANIFEST).st_mode) == 0o600


async def test_overlapping_deliveries_to_one_directory_take_turns(tmp_path: Path) -> None:
    _, first = restored_study(tmp_path, number=0)
    _, second = restored_study(tmp_path, number=1)
    root = tmp_path / "target"
    with RecoveryJournal.open(tmp_path / "journal.sqlite", dir_identity(root)) as journal:
        deliverer = DirDeliverer(root, journal, flush_every=2)
        results = await asyncio.gather(deliverer.deliver(first), deliverer.deliver(second))
        await deliverer.finish()
        assert journal.totals().instances == len(first) + len(second)
    assert all(o.kind is OutcomeKind.DELIVERED for r in results for o in r)
    for items in (first, second):
        folders = {p.parent.name for p in root.rglob("*.dcm")
                   if p.name == f"{items[0].instance.sha256.hex()}.dcm"}  # fmt: skip
        [folder] = folders
        assert len(list((root / folder).glob("*.dcm"))) == len(items)
        manifest = json.loads((root / folder / MANIFEST).read_text())
        assert len(manifest["instances"]) == len(items)
