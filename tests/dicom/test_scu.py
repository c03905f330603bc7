"""The C-STORE SCU against real receivers: dcmtk storescp, the node itself, pynetdicom SCPs.

Delivered datasets must be byte-identical to the stored files (the dataset part after the
file meta) and arrive in their own transfer syntax. Refused contexts, failure statuses, a
receiver killed mid-transfer (restarted or not) must each give clear per-instance results.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.association import Association

from meshpacs.dicom.part10 import dataset_offset
from meshpacs.dicom.scu import (
    MAX_CONTEXTS,
    Delivery,
    Outgoing,
    Target,
    context_refused_detail,
    send_instances,
)
from meshpacs.testing import SeriesSpec, StudySpec, generate_study, write_study
from meshpacs.testing.dcmtk import dcmtk_tool

from .conftest import AE_TITLE, Node, dcmtk_env, free_port

STORESCP = dcmtk_tool("storescp") or "storescp"
ECHOSCU = dcmtk_tool("echoscu") or "echoscu"
pytestmark = pytest.mark.skipif(dcmtk_tool("storescp") is None, reason="dcmtk not installed")

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
STANDARD_STORAGE = {str(c.abstract_syntax) for c in AllStoragePresentationContexts}
DEFLATED = "1.2.840.10008.1.2.1.99"
SCP_AE = "STORESCP"
CALLING = "MESHSCU"
SMALL = StudySpec(series=(SeriesSpec("CT", 12, 32, 32), SeriesSpec("MR", 8, 24, 24)))


# -- helpers -------------------------------------------------------------------------------


def outgoing(path: Path) -> Outgoing:
    meta = read_file_meta_info(path)
    return Outgoing(
        path,
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
    )


def dataset_part(path: Path) -> bytes:
    data = path.read_bytes()
    return data[dataset_offset(data) :]


def study(directory: Path, spec: StudySpec = SMALL, *, syntax: str = "explicit",
          seed: int = 7, number: int = 0) -> list[Outgoing]:  # fmt: skip
    spec = StudySpec(series=spec.series, transfer_syntax=syntax)
    paths = write_study(directory, generate_study(seed, spec, study=number))
    return [outgoing(p) for p in paths]


def pydicom_test_files() -> list[Outgoing]:
    """pydicom's test files a conformant receiver can take: meta, standard class, even length.

    Left out: deflated files (pynetdicom sends their odd-length deflated stream, which
    storescp rejects) and malformed ones of odd length; both abort any DICOM association.
    """
    found = []
    for path in sorted(TEST_FILES.glob("*.dcm")):
        try:
            item = outgoing(path)
        except Exception:
            continue  # no file meta, or no UIDs in it
        if item.sop_class_uid not in STANDARD_STORAGE or item.transfer_syntax_uid == DEFLATED:
            continue
        if len(dataset_part(path)) % 2:
            continue
        found.append(item)
    return found


def received(directory: Path, *, cut_off: int = 0) -> list[tuple[str, str, bytes]]:
    """(SOP Instance UID, transfer syntax, dataset bytes) of every file a receiver wrote.

    ``cut_off``: how many files may be the start of an instance a killed receiver was
    writing, so short they do not even hold a file meta header; those are skipped (and
    counted against it), everything else must read.
    """
    found = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        try:
            meta = read_file_meta_info(path)
        except InvalidDicomError:
            assert cut_off > 0, f"{path.name} is not DICOM"
            cut_off -= 1
            continue
        found.append((str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID),
                      dataset_part(path)))  # fmt: skip
    return found


def sent(items: list[Outgoing]) -> list[tuple[str, str, bytes]]:
    return [(i.sop_instance_uid, i.transfer_syntax_uid, dataset_part(i.path)) for i in items]


class Storescp:
    """dcmtk storescp as a child process: bit-preserving, unique file names, TCP_NODELAY."""

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
        args = [STORESCP, "-aet", SCP_AE, *self.options, "+B", "+uf", "-od", str(self.out),
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

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Callable[..., Storescp]]:
    started: list[Storescp] = []

    def start(*options: str, out: str = "received") -> Storescp:
        scp = Storescp(tmp_path / out, *options)
        scp.start()
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


class PynScp:
    """An in-process pynetdicom storage SCP with chosen contexts, statuses and a request log."""

    def __init__(self, contexts: list[tuple[str, list[str]]],
                 statuses: dict[str, int] | None = None) -> None:  # fmt: skip
        self.statuses = statuses or {}
        self.stored: list[str] = []
        self.requested: list[list[tuple[str, tuple[str, ...]]]] = []
        self._lock = threading.Lock()
        ae = AE(ae_title=SCP_AE)
        for sop_class, syntaxes in contexts:
            ae.add_supported_context(sop_class, syntaxes)
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_REQUESTED, self._requested)]
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = int(self.server.server_address[1])

    @property
    def target(self) -> Target:
        return Target(SCP_AE, "127.0.0.1", self.port, CALLING)

    def _requested(self, event: Any) -> None:
        contexts = [(str(cx.abstract_syntax), tuple(str(ts) for ts in cx.transfer_syntax))
                    for cx in event.assoc.requestor.requested_contexts]  # fmt: skip
        with self._lock:
            self.requested.append(contexts)

    def _store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            self.stored.append(uid)
        return self.statuses.get(uid, 0x0000)

    def close(self) -> None:
        self.server.shutdown()


def assert_no_uids_logged(caplog: pytest.LogCaptureFixture, items: list[Outgoing],
                          results: list[Delivery]) -> None:  # fmt: skip
    uids = {i.sop_instance_uid for i in items}
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("meshpacs"))
    text += "\n".join(d.detail for d in results)
    for uid in uids:
        assert uid not in text


# -- byte-exact delivery -------------------------------------------------------------------


def test_generated_study_and_rle_variant_arrive_byte_identical_in_their_own_syntax(
    tmp_path: Path, storescp: Callable[..., Storescp]
) -> None:
    items = study(tmp_path / "explicit") + study(tmp_path / "rle", syntax="rle", number=1)
    scp = storescp("+xa")
    results = send_instances(items, scp.target)
    assert [d.item for d in results] == items
    assert all(d.ok and d.status == 0 and d.detail == "stored" for d in results)
    assert sorted(received(scp.out)) == sorted(sent(items))
    assert {i.transfer_syntax_uid for i in items} == {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5"}


def test_pydicom_test_files_of_many_syntaxes_arrive_byte_identical(
    tmp_path: Path, storescp: Callable[..., Storescp]
) -> None:
    items = pydicom_test_files()
    syntaxes = {i.transfer_syntax_uid for i in items}
    assert len(items) >= 50 and len(syntaxes) >= 8, syntaxes
    scp = storescp("+xa", "--fork")
    results = send_instances(items, scp.target, associations=3)
    failed = [(d.item.path.name, d.detail) for d in results if not d.ok]
    assert not failed
    # Several test files share a SOP Instance UID in different syntaxes: compare multisets.
    assert sorted(received(scp.out)) == sorted(sent(items))


@pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning")  # a mislabelled file
async def test_the_node_receives_pydicom_test_files_byte_identical(node: Node) -> None:
    items = pydicom_test_files()
    target = Target(AE_TITLE, "127.0.0.1", node.port, CALLING)
    results = await asyncio.to_thread(send_instances, items, target, associations=3)
    assert [(d.item.path.name, d.detail) for d in results if not d.ok] == []
    stored = received(node.store.instances_dir)
    # The node keeps byte-identical copies once: compare distinct contents.
    assert sorted(set(stored)) == sorted(set(sent(items)))


# -- parallel associations and contexts ----------------------------------------------------


def test_three_associations_deliver_everything_exactly_once(
    tmp_path: Path, storescp: Callable[..., Storescp]
) -> None:
    spec = StudySpec(series=(SeriesSpec("CT", 30, 32, 32), SeriesSpec("MR", 15, 24, 24)))
    items = study(tmp_path / "a", spec) + study(tmp_path / "b", spec, syntax="rle", number=1)
    scp = storescp("+xa", "--fork")
    calls: list[tuple[str, str]] = []

    def progress(delivery: Delivery) -> None:
        calls.append((threading.current_thread().name, delivery.item.sop_instance_uid))

    results = send_instances(items, scp.target, associations=3, progress=progress)
    assert all(d.ok for d in results)
    got = received(scp.out)
    assert Counter(uid for uid, _, _ in got) == Counter(i.sop_instance_uid for i in items)
    assert sorted(got) == sorted(sent(items))
    assert sorted(uid for _, uid in calls) == sorted(i.sop_instance_uid for i in items)
    assert len({thread for thread, _ in calls}) == 3


def test_each_association_proposes_exactly_its_pairs_one_syntax_per_context(
    tmp_path: Path,
) -> None:
    ct = study(tmp_path / "ct", StudySpec(series=(SeriesSpec("CT", 6, 16, 16),)))
    mr_rle = study(tmp_path / "mr", StudySpec(series=(SeriesSpec("MR", 6, 16, 16),)),
                   syntax="rle", number=1)  # fmt: skip
    items = ct + mr_rle
    syntaxes = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5"]
    scp = PynScp([(ct[0].sop_class_uid, syntaxes), (mr_rle[0].sop_class_uid, syntaxes)])
    try:
        results = send_instances(items, scp.target, associations=2)
    finally:
        scp.close()
    assert all(d.ok for d in results)
    assert sorted(scp.stored) == sorted(i.sop_instance_uid for i in items)
    proposals = sorted(scp.requested)
    assert proposals == sorted([
        [(ct[0].sop_class_uid, (ct[0].transfer_syntax_uid,))],
        [(mr_rle[0].sop_class_uid, (mr_rle[0].transfer_syntax_uid,))],
    ])  # fmt: skip


def tiny_instances(directory: Path, count: int) -> list[Outgoing]:
    """``count`` minimal Part 10 files, each of its own private SOP class."""
    directory.mkdir(parents=True)
    items = []
    for n in range(count):
        ds = Dataset()
        ds.SOPClassUID = f"1.2.826.0.1.3680043.8.498.77.{n + 1}"
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = directory / f"{n:04d}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        items.append(outgoing(path))
    return items


def test_more_than_128_pairs_go_over_successive_associations(tmp_path: Path) -> None:
    items = tiny_instances(tmp_path / "tiny", MAX_CONTEXTS + 5)
    scp = PynScp([(i.sop_class_uid, [ExplicitVRLittleEndian]) for i in items])
    try:
        results = send_instances(items, scp.target)
    finally:
        scp.close()
    assert all(d.ok for d in results)
    assert sorted(scp.stored) == sorted(i.sop_instance_uid for i in items)
    assert sorted(len(contexts) for contexts in scp.requested) == [5, MAX_CONTEXTS]


class LingeringCheckpoint(threading.Event):
    """pynetdicom's reactor checkpoint, with the reactor lingering 2 ms after passing it.

    That widens the race window from microseconds (about one lost association per 800
    small instances here) to most of every reactor cycle, so a sender without the fix
    loses nearly every instance.
    """

    def wait(self, timeout: float | None = None) -> bool:
        passed = super().wait(timeout)
        time.sleep(0.002)
        return passed


def test_no_response_is_lost_to_the_reactor_race(
    tmp_path: Path, storescp: Callable[..., Storescp], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """pynetdicom's reactor can take a fast C-STORE-RSP meant for ``send_c_store``, which
    then waits for the whole DIMSE timeout and aborts (see ``reactor.pause_reactor``)."""
    original = Association.__init__

    def init(self: Association, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._reactor_checkpoint = LingeringCheckpoint()
        self._reactor_checkpoint.set()

    monkeypatch.setattr(Association, "__init__", init)
    caplog.set_level(logging.WARNING)
    items = study(tmp_path / "ct", StudySpec(series=(SeriesSpec("CT", 150, 16, 16),)))
    scp = storescp("+xa", "--fork", "--ignore")
    results = send_instances(items, scp.target, associations=2, dimse_timeout=2)
    assert all(d.ok for d in results)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_pynetdicom_internals_the_race_fix_relies_on_still_exist() -> None:
    ae = AE()
    assoc = Association(ae, "requestor")
    assert hasattr(assoc, "_is_paused")
    assert isinstance(assoc._reactor_checkpoint, threading.Event)
    source = inspect.getsource(Association._run_reactor)
    assert "self._is_paused = True" in source and "self._reactor_checkpoint.wait()" in source


# -- refusals and statuses -----------------------------------------------------------------


def test_contexts_the_peer_refuses_fail_clearly_while_others_succeed(
    tmp_path: Path, storescp: Callable[..., Storescp], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshpacs")
    implicit = [outgoing(TEST_FILES / name)
                for name in ("MR_small_implicit.dcm", "rtplan.dcm", "rtdose.dcm")]  # fmt: skip
    assert {i.transfer_syntax_uid for i in implicit} == {ImplicitVRLittleEndian}
    explicit = study(tmp_path / "explicit", StudySpec(series=(SeriesSpec("CT", 3, 16, 16),)))
    rle = study(tmp_path / "rle", StudySpec(series=(SeriesSpec("MR", 2, 16, 16),)),
                syntax="rle", number=1)  # fmt: skip
    items = explicit + implicit + rle
    scp = storescp("+xi")  # implicit VR little endian only
    results = send_instances(items, scp.target)
    by_item = {d.item: d for d in results}
    for item in implicit:
        assert by_item[item].ok and by_item[item].status == 0
    for item in explicit:
        d = by_item[item]
        assert not d.ok and d.status is None
        assert d.detail == "peer does not accept CT Image Storage in Explicit VR Little Endian"
    for item in rle:
        assert by_item[item].detail == "peer does not accept MR Image Storage in RLE Lossless"
    assert sorted(received(scp.out)) == sorted(sent(implicit))
    assert_no_uids_logged(caplog, items, results)


def test_a_peer_refusing_every_context_fails_every_instance_without_retrying(
    tmp_path: Path, storescp: Callable[..., Storescp]
) -> None:
    items = study(tmp_path / "rle", StudySpec(series=(SeriesSpec("CT", 3, 16, 16),)),
                  syntax="rle")  # fmt: skip
    scp = storescp("+xi")
    started = time.monotonic()
    results = send_instances(items, scp.target, retry_delay=5.0)
    assert time.monotonic() - started < 4  # no backoff: a refusal is final
    assert [d.detail for d in results] == [context_refused_detail(
        items[0].sop_class_uid, items[0].transfer_syntax_uid)] * 3  # fmt: skip
    assert "RLE Lossless" in results[0].detail
    assert not any(d.ok for d in results)


def test_warning_statuses_count_as_delivered_and_failures_carry_their_status(
    tmp_path: Path,
) -> None:
    items = study(tmp_path / "ct", StudySpec(series=(SeriesSpec("CT", 7, 16, 16),)))
    answers = [0x0000, 0xB000, 0xB006, 0xB007, 0xA700, 0xC000, 0x0122]
    statuses = {i.sop_instance_uid: s for i, s in zip(items, answers, strict=True)}
    scp = PynScp([(items[0].sop_class_uid, [ExplicitVRLittleEndian])], statuses)
    try:
        results = send_instances(items, scp.target)
    finally:
        scp.close()
    assert [d.status for d in results] == answers
    assert [d.ok for d in results] == [True] * 4 + [False] * 3
    assert results[1].detail == "stored with warning 0xB000 (Coercion of Data Elements)"
    assert results[4].detail.startswith("peer refused the instance: failure 0xA700")
    assert sorted(scp.stored) == sorted(statuses)  # each sent once: a failure is not retried


def test_a_progress_callback_that_raises_does_not_stop_delivery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    items = study(tmp_path / "ct", StudySpec(series=(SeriesSpec("CT", 4, 16, 16),)))
    scp = PynScp([(items[0].sop_class_uid, [ExplicitVRLittleEndian])])

    def progress(delivery: Delivery) -> None:
        raise KeyError(delivery.item.sop_instance_uid)

    try:
        results = send_instances(items, scp.target, progress=progress)
    finally:
        scp.close()
    assert all(d.ok for d in results)
    assert sum("progress callback raised KeyError" in r.getMessage() for r in caplog.records) == 4
    assert_no_uids_logged(caplog, items, results)


def test_a_file_that_disagrees_with_its_record_or_is_missing_is_not_sent(
    tmp_path: Path,
) -> None:
    good, wrong, gone = study(tmp_path / "ct", StudySpec(series=(SeriesSpec("CT", 3, 16, 16),)))
    wrong = Outgoing(wrong.path, wrong.sop_class_uid, wrong.sop_instance_uid,
                     str(ImplicitVRLittleEndian))  # fmt: skip
    gone.path.unlink()
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    scp = PynScp([(good.sop_class_uid, syntaxes)])
    try:
        results = send_instances([good, wrong, gone], scp.target)
    finally:
        scp.close()
    assert results[0].ok
    assert results[1].detail == (
        "not sent: the stored file's meta names another SOP class or transfer syntax"
    )
    assert results[2].detail == "not sent: stored file unreadable (FileNotFoundError)"
    assert scp.stored == [good.sop_instance_uid]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        Target("", "127.0.0.1", 104, CALLING)
    with pytest.raises(ValueError):
        Target("A" * 17, "127.0.0.1", 104, CALLING)
    with pytest.raises(ValueError):
        Target(SCP_AE, "127.0.0.1", 0, CALLING)
    target = Target(SCP_AE, "127.0.0.1", 104, CALLING)
    with pytest.raises(ValueError):
        send_instances([], target, associations=0)
    with pytest.raises(ValueError):
        send_instances([], target, max_retries=-1)
    assert send_instances([], target) == []


# -- lost associations ---------------------------------------------------------------------


@pytest.mark.parametrize("moment", ["between instances", "during an instance"])
def test_a_receiver_killed_mid_transfer_and_restarted_gets_everything(
    tmp_path: Path, storescp: Callable[..., Storescp], caplog: pytest.LogCaptureFixture,
    moment: str,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO, logger="meshpacs")
    if moment == "between instances":
        spec = StudySpec(series=(SeriesSpec("CT", 40, 32, 32),))
        kill_after = (10, 25)  # twice: kill it, and have it back at once
    else:
        spec = StudySpec(series=(SeriesSpec("CT", 16),))  # 512x512: ~0.5 MB each
        kill_after = (4,)
    items = study(tmp_path / "ct", spec)
    scp = storescp("+xa")
    seen: list[Delivery] = []
    due = threading.Event()

    def progress(delivery: Delivery) -> None:
        seen.append(delivery)
        if len(seen) in kill_after:
            if moment == "between instances":
                scp.kill()  # the sender is waiting for this callback: nothing is in flight
                scp.start()
            else:
                due.set()  # the killer strikes while the next instance streams out

    def killer() -> None:
        if due.wait(20):
            scp.kill()
            scp.start()

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        results = send_instances(items, scp.target, retry_delay=0.2, progress=progress)
    finally:
        due.set()
        thread.join()
    assert [(d.item.path.name, d.detail) for d in results if not d.ok] == []
    got = received(scp.out, cut_off=len(kill_after))  # may hold the instances cut off
    assert {uid for uid, _, _ in got} == {i.sop_instance_uid for i in items}
    assert set(sent(items)) <= set(got)
    assert len(got) <= len(items) + len(kill_after)
    associations = sum("association 1/1 to" in r.getMessage() for r in caplog.records)
    assert associations == 1 + len(kill_after)
    assert_no_uids_logged(caplog, items, results)


def test_a_receiver_that_stays_down_gives_clear_failures(
    tmp_path: Path, storescp: Callable[..., Storescp], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshpacs")
    items = study(tmp_path / "ct", StudySpec(series=(SeriesSpec("CT", 12, 32, 32),)))
    scp = storescp("+xa")
    seen: list[Delivery] = []

    def progress(delivery: Delivery) -> None:
        seen.append(delivery)
        if len(seen) == 5:
            scp.kill()

    started = time.monotonic()
    results = send_instances(items, scp.target, retry_delay=0.1, max_retries=2, progress=progress)
    assert time.monotonic() - started < 10
    assert [d.ok for d in results] == [True] * 5 + [False] * 7
    assert len(seen) == len(items)
    for d in results[5:]:
        assert d.status is None
        assert d.detail.startswith("not delivered: ")
        assert d.detail.endswith("(gave up after 3 attempts)")
    # The instance in flight lost its association; the others never got one again.
    assert all("no association with STORESCP at 127.0.0.1" in d.detail for d in results[6:])
    assert_no_uids_logged(caplog, items, results)


def test_max_retries_zero_gives_up_at_the_first_loss(
    tmp_path: Path,
) -> None:
    items = study(tmp_path / "ct", StudySpec(series=(SeriesSpec("CT", 2, 16, 16),)))
    port = free_port()  # nobody listens
    results = send_instances(items, Target(SCP_AE, "127.0.0.1", port, CALLING), max_retries=0)
    assert [d.detail for d in results] == [
        f"not delivered: no association with {SCP_AE} at 127.0.0.1:{port} "
        "(connection refused, unreachable or timed out) (gave up after 1 attempt)"
    ] * 2
