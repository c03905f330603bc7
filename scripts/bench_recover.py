#!/usr/bin/env python3
"""Recovery through the mesh into an empty Orthanc, beside an Orthanc-to-Orthanc C-MOVE copy.

A testbed federation of ``--sites`` sites (default 8) runs on 127.0.0.1, each site's node
its own process (``meshpacs.testbed``), k=4 and n=7 unless told otherwise (the node's
defaults, as ``bench_backup.py``), 1 MiB segments, bundles of up to 1 GiB (one bundle per
study here), studies stable after 1 s, a backup pass every 0.2 s. Once, before the rounds
and not timed:

* about ``--gb`` GB of generated CT studies (``--studies`` of them, a mix of sizes: the
  study sizes cycle through the weights 4, 1, 8, 2, so with the defaults 17 to 133 MB) are
  pushed by C-STORE into site-a's node, and uploaded by REST into a **replica** Orthanc;
* the script waits until site-a's node says every study is protected and both of its
  trusted peers hold its catalog record of every study (what recovery reads back);
* site-a's node is stopped (SIGTERM, by PID), as in a disaster. Its directory stays on disk
  but nothing reads it: recovery uses only what ``testbed.json``'s ``recover_args`` lists
  (phrase file, CA, kept certificate copy, CRL, bootstrap addresses), all outside it.

Then every round measures two ways of filling an **empty target Orthanc** (a fresh one for
each, same ports, config and AE title, storage deleted afterwards) with the same studies,
in an order rotated every round so that machine noise hits both alike:

* **mesh**: ``meshpacs recover`` as the operator runs it (a subprocess: ``python -m
  meshpacs recover`` with ``recover_args``, ``--peer`` naming site-a's trusted peers as the
  disaster drill does, ``--to-ae`` the target, default 4 associations, a fresh
  ``--workdir`` every round): it rejoins the federation from the phrase, reads the sealed
  catalog back, gathers k fragments of each bundle from the partner nodes over mutual TLS,
  decodes them, checks every instance's SHA-256 and C-STOREs it into the target;
* **orthanc**: what a conventional mirrored PACS gives. The target Orthanc issues one C-MOVE
  per study (REST ``POST /modalities/replica/move``, synchronous; ``--moves`` of them at once,
  default 1) to the live replica, which C-STOREs the study back to the target. The studies
  are moved in the order recovery plans them (newest StudyDate first), so that both
  answer "when is the first study there" for the same study.

Both clocks start when the step is launched (the ``meshpacs recover`` process spawned; the
first C-MOVE asked) and read the target Orthanc's change feed (``GET /changes``, polled
every 0.1 s from a thread of this script): a study is **complete** when every one of its
instances has been announced there (instances are known by the Orthanc IDs the replica gave
them, which depend only on the UIDs), and the step ends when every instance is. So the
mesh's time includes the Python start of ``meshpacs recover``, joining the DHT and reading
the catalog back (reported apart as ``plan at``, when it prints its plan). MB/s is 10^6
bytes/s of study data (the pushed Part 10 files). After each step, not timed, every file in
the target's storage area is read and its dataset (the bytes after the file meta group) is
compared with the pushed ones: the figures count only if every instance is there, byte for
byte, and nothing else. ``meshpacs recover`` must also exit 0 with a complete report.

Targets (issue 5): mesh >= 1.0x the Orthanc copy (ratio of the best rounds and of the
medians are both given, and the ratio within each round), and the first study complete in
the target within 5 s of starting the recovery (every round).

CPU seconds are reported per step, from /proc and from ``wait4``: the ``meshpacs recover``
process (its whole life), the target Orthanc, the replica, the partner nodes (the fragment
holders; seven idle ones burn about 0.1 CPU-s per second between them, measured once
before the rounds), this script (the change-feed poller), and the machine's average busy
cores. On a shared 2-core machine CPU seconds are the steadier figure. Every process of the
benchmark shares those two cores: the partners serving fragments, the recovering process
and the target PACS all run side by side, where in a real disaster they would be on
different machines; the Orthanc copy has only two processes on them.

``--py-spy DIR`` records the ``meshpacs recover`` process and the node of site-b (one
fragment holder) during every mesh step: raw collapsed stacks per thread, CPU samples only
(no idle frames), 100 Hz, without pausing the process (``--nonblocking``); the sampling
still takes CPU from the same two cores, so those rounds' times are not comparable. The testbed
and the Orthancs live in a temporary directory, removed at the end (``--keep`` keeps it);
every process the script started is stopped by PID on errors, Ctrl-C and SIGTERM.

    .venv/bin/python scripts/bench_recover.py               # 1 GB, 16 studies, 2 rounds (~2.5 min)
    .venv/bin/python scripts/bench_recover.py --json        # the same, one JSON object
    .venv/bin/python scripts/bench_recover.py --gb 0.05 --rounds 1   # smoke check (under a minute)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import pydicom

from meshpacs.dicom.part10 import dataset_offset
from meshpacs.dicom.scu import Outgoing, Target, send_instances
from meshpacs.metadata import ledger
from meshpacs.node.config import load_config
from meshpacs.store.records import owner_directory
from meshpacs.testbed.drill import recover_argv as drill_recover_argv
from meshpacs.testbed.layout import TestbedPlan, TestbedSite, create_testbed
from meshpacs.testbed.processes import is_our_process, start_nodes, stop_nodes
from meshpacs.testing.orthanc import (
    Modality,
    OrthancError,
    OrthancProcess,
    free_port,
    orthanc_available,
)
from meshpacs.testing.synth import SynthInstance, study_of_size, write_study
from meshpacs.transport.frames import RecordKind

STABLE_SECONDS = 1.0
PASS_INTERVAL = 0.2
POLL = 0.1
SIZE_WEIGHTS = (4, 1, 8, 2)  # study i gets weight SIZE_WEIGHTS[i % 4]: a mix of sizes
SCU_AET = "BENCH_PACS"
REPLICA_AET = "REPLICA_PACS"
TARGET_AET = "RESTORED_PACS"
REPLICA_NAME = "replica"  # the replica in the target's DicomModalities
TARGET_NAME = "target"  # the target in the replica's DicomModalities
STEPS = ("mesh", "orthanc")
FIRST_STUDY_TARGET = 5.0
RATIO_TARGET = 1.0


# -- CPU accounting -------------------------------------------------------------------------


def process_cpu(pid: int | None) -> float:
    """User + system CPU seconds of a process, from /proc (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    steal = values[7] if len(values) > 7 else 0
    return sum(values[:8]) - idle - steal, sum(values[:8])


class CpuWindow:
    """CPU seconds of named groups of processes, and of the machine, over a time window."""

    def __init__(self, groups: dict[str, list[int | None]]) -> None:
        self._groups = groups
        self._start = {name: sum(map(process_cpu, pids)) for name, pids in groups.items()}
        self._machine = machine_ticks()
        self._self = time.process_time()

    def close(self) -> dict[str, float]:
        """Seconds per group; ``busy_cores`` (average cores busy), ``this`` (this script)."""
        out = {
            name: round(sum(map(process_cpu, pids)) - self._start[name], 2)
            for name, pids in self._groups.items()
        }
        busy, total = (b - a for a, b in zip(self._machine, machine_ticks(), strict=True))
        out["busy_cores"] = round((os.cpu_count() or 1) * busy / total, 2) if total else 0.0
        out["this"] = round(time.process_time() - self._self, 2)
        return out


# -- generated studies ----------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    path: Path
    size: int
    dataset_sha256: bytes  # of the bytes after the file meta group
    outgoing: Outgoing


@dataclass
class Study:
    number: int  # push order; recovery breaks StudyDate ties by it (last received)
    study_uid: str
    study_date: str
    instances: list[Instance]
    orthanc_ids: set[str] = field(default_factory=set)  # as the replica names them

    @property
    def size(self) -> int:
        return sum(i.size for i in self.instances)


def study_sizes(gb: float, studies: int) -> list[int]:
    weights = [SIZE_WEIGHTS[i % len(SIZE_WEIGHTS)] for i in range(studies)]
    unit = gb * 1e9 / sum(weights)
    return [max(1, int(w * unit)) for w in weights]


def write_generated(directory: Path, number: int, instances: Iterator[SynthInstance]) -> Study:
    """Write a generated study; keep each file's identity and dataset digest, not its bytes."""
    seen: list[tuple[int, bytes, str, str, str]] = []
    uids: set[str] = set()

    def keep(stream: Iterator[SynthInstance]) -> Iterator[SynthInstance]:
        for i in stream:
            digest = hashlib.sha256(memoryview(i.data)[dataset_offset(i.data) :]).digest()
            seen.append(
                (len(i.data), digest, i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid)
            )
            uids.add(i.study_instance_uid)
            yield i

    paths = write_study(directory, keep(instances))
    (study_uid,) = uids
    items = [
        Instance(path, size, digest, Outgoing(path, sop_class, uid, syntax))
        for path, (size, digest, sop_class, uid, syntax) in zip(paths, seen, strict=True)
    ]
    return Study(number, study_uid, read_study_date(paths[0]), items)


def read_study_date(path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyDate"])
    return str(dataset.get("StudyDate", ""))


def generate(directory: Path, args: argparse.Namespace) -> list[Study]:
    return [
        write_generated(
            directory / f"study-{number}", number, study_of_size(args.seed, size, patient=number)
        )
        for number, size in enumerate(study_sizes(args.gb, args.studies))
    ]


def plan_order(studies: Sequence[Study]) -> list[Study]:
    """Newest first, as ``meshpacs recover`` plans (StudyDate, then last received)."""
    return sorted(studies, key=lambda s: (s.study_date, s.number), reverse=True)


# -- loading the sources (not timed) --------------------------------------------------------


def upload_replica(replica: OrthancProcess, studies: Sequence[Study]) -> None:
    """POST every file to the replica; note the Orthanc ID it gives each instance."""

    def upload(item: tuple[Study, Instance]) -> tuple[Study, str]:
        study, instance = item
        answer = replica.upload(instance.path.read_bytes())
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise RuntimeError(f"the replica refused an instance: {answer.get('Status')}")
        return study, str(answer["ID"])

    items = [(s, i) for s in studies for i in s.instances]
    with ThreadPoolExecutor(2) as pool:
        for study, orthanc_id in pool.map(upload, items):
            study.orthanc_ids.add(orthanc_id)


def push_node(site: TestbedSite, studies: Sequence[Study]) -> None:
    """C-STORE every study into the site's node, study after study."""
    target = Target(site.ae_title, site.host, site.dicom_port, SCU_AET)
    for study in studies:
        items = [i.outgoing for i in study.instances]
        failed = [d.detail for d in send_instances(items, target, associations=2) if not d.ok]
        if failed:
            raise RuntimeError(f"{len(failed)} instances refused by {site.site_id}: {failed[0]}")


def records_held(peer: TestbedSite, owner: TestbedSite) -> int:
    """Catalog records ``peer`` keeps for ``owner`` (as the drill counts them)."""
    folder = owner_directory(Path(peer.data_dir) / "records", RecordKind.CATALOG, owner.site_id)
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if len(p.name) == 64)


def wait_protected(plan: TestbedPlan, owner: TestbedSite, studies: int, timeout: float) -> None:
    """Until every study is protected and each trusted peer holds a record of each."""
    path = load_config(Path(owner.config)).catalog_path
    peers = [plan.site(peer) for peer in owner.trusted]
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            counts = ledger.protection_counts(db)
        records = min((records_held(peer, owner) for peer in peers), default=studies)
        if counts.protected + counts.degraded >= studies and records >= studies:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"not protected within {timeout:.0f} s: {counts}, {records} records")
        time.sleep(0.2)


def stop_node(plan: TestbedPlan, site: TestbedSite, grace: float = 20.0) -> None:
    """SIGTERM the site's node (while it is still ours), SIGKILL after ``grace``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if site.pid is None or not is_our_process(site):
            break
        with contextlib.suppress(ProcessLookupError):
            os.kill(site.pid, sig)
        deadline = time.monotonic() + grace
        while is_our_process(site) and time.monotonic() < deadline:
            time.sleep(0.1)
    site.pid = None
    plan.save()


# -- watching the target --------------------------------------------------------------------


class Arrivals(threading.Thread):
    """Polls the target's change feed; notes when each study, and the last instance, arrived.

    Times are seconds since ``started`` (``time.monotonic()``), as this thread saw them.
    """

    def __init__(self, target: OrthancProcess, studies: Sequence[Study], started: float) -> None:
        super().__init__(name="arrivals", daemon=True)
        self._target = target
        self._study_of = {oid: s.number for s in studies for oid in s.orthanc_ids}
        self._missing = {s.number: len(s.orthanc_ids) for s in studies}
        self._t0 = started
        self._since = 0
        self._halt = threading.Event()
        self.complete: dict[int, float] = {}  # study number -> seconds
        self.all_seconds: float | None = None
        self.errors = 0

    def run(self) -> None:
        while not self._halt.is_set() and self.all_seconds is None:
            try:
                self._poll()
            except (OSError, OrthancError, ValueError):
                self.errors += 1
            self._halt.wait(POLL)

    def _poll(self) -> None:
        while True:
            answer = self._target.rest("GET", f"/changes?since={self._since}&limit=1000")
            now = time.monotonic() - self._t0
            for change in answer["Changes"]:
                number = self._study_of.pop(str(change["ID"]), None)
                if change["ChangeType"] != "NewInstance" or number is None:
                    continue
                self._missing[number] -= 1
                if self._missing[number] == 0:
                    self.complete[number] = now
            self._since = int(answer["Last"])
            if not self._study_of:
                self.all_seconds = now
            if answer["Done"]:
                return

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def first(self) -> tuple[int, float] | None:
        """(study number, seconds) of the first study complete."""
        if not self.complete:
            return None
        number = min(self.complete, key=lambda n: self.complete[n])
        return number, self.complete[number]


def wait_arrivals(arrivals: Arrivals, timeout: float) -> None:
    arrivals.join(timeout)
    if arrivals.is_alive():
        arrivals.stop()


def verify_storage(target: OrthancProcess, studies: Sequence[Study]) -> tuple[int, int, list[str]]:
    """(files, identical, problems): the target's stored datasets against the pushed ones."""
    expected = {i.dataset_sha256 for s in studies for i in s.instances}
    got: list[bytes] = []
    for path in target.storage_dir.rglob("*"):
        if path.is_file() and path.parent != target.storage_dir:
            data = path.read_bytes()
            if data[128:132] == b"DICM":
                got.append(hashlib.sha256(memoryview(data)[dataset_offset(data) :]).digest())
    identical = len(set(got) & expected)
    problems = []
    if len(got) != len(expected):
        problems.append(f"{len(got)} files in the target, {len(expected)} instances pushed")
    if identical != len(expected):
        problems.append(f"{len(expected) - identical} pushed datasets not found byte for byte")
    return len(got), identical, problems


# -- the two steps --------------------------------------------------------------------------


@dataclass
class Bench:
    """Everything the rounds share."""

    args: argparse.Namespace
    plan: TestbedPlan
    owner: TestbedSite
    studies: list[Study]
    replica: OrthancProcess
    target_ports: tuple[int, int]  # DICOM, HTTP: the same for every fresh target
    work: Path
    say: Callable[[str], None]
    running: list[OrthancProcess] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(s.size for s in self.studies)

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.studies)

    def partners(self) -> list[int | None]:
        return [s.pid for s in self.plan.sites if s is not self.owner]

    def fresh_target(self, name: str) -> OrthancProcess:
        target = OrthancProcess(
            self.work / name,
            aet=TARGET_AET,
            modalities={REPLICA_NAME: self.replica.modality},
            dicom_port=self.target_ports[0],
            http_port=self.target_ports[1],
        )
        self.running.append(target)
        target.start()
        return target

    def drop_target(self, target: OrthancProcess) -> None:
        target.stop()
        self.running.remove(target)
        shutil.rmtree(target.directory, ignore_errors=True)

    def timeout(self) -> float:
        return 300.0 + 600.0 * float(self.args.gb)


@dataclass
class StepRun:
    seconds: float | None  # start -> every instance announced by the target
    first_study: int | None
    first_seconds: float | None
    complete: dict[int, float]
    cpu: dict[str, float]
    files: int = 0
    identical: int = 0
    problems: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def finish_step(
    bench: Bench, target: OrthancProcess, arrivals: Arrivals, cpu: dict[str, float]
) -> StepRun:
    first = arrivals.first()
    run = StepRun(
        seconds=arrivals.all_seconds,
        first_study=first[0] if first else None,
        first_seconds=first[1] if first else None,
        complete=dict(arrivals.complete),
        cpu=cpu,
    )
    if run.seconds is None:
        run.problems.append(f"{len(arrivals.complete)} of {len(bench.studies)} studies complete")
    run.files, run.identical, problems = verify_storage(target, bench.studies)
    run.problems += problems
    return run


def recover_argv(bench: Bench, workdir: Path, target: OrthancProcess, report: Path) -> list[str]:
    """``meshpacs recover`` as the drill runs it, from the site's ``recover_args``."""
    to_ae = f"{TARGET_AET}@127.0.0.1:{target.dicom_port}"
    argv = drill_recover_argv(bench.owner, workdir, to_ae, bench.owner.trusted)
    return [*argv, "--associations", str(bench.args.associations), "--json", str(report)]


class Lines(threading.Thread):
    """Reads a child's stderr line by line, with the time each line arrived."""

    def __init__(self, stream: IO[bytes], started: float) -> None:
        super().__init__(name="stderr", daemon=True)
        self._stream = stream
        self._t0 = started
        self.lines: list[tuple[float, str]] = []

    def run(self) -> None:
        for raw in self._stream:
            now = time.monotonic() - self._t0
            self.lines.append((now, raw.decode("utf-8", "replace").rstrip()))

    def first_at(self, prefix: str) -> float | None:
        return next((t for t, line in self.lines if line.startswith(prefix)), None)


def wait_child(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    """Reap ``proc`` (killing it after ``timeout`` s): exit code and CPU seconds it used."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.05)


def start_py_spy(pid: int | None, out: Path) -> subprocess.Popen[bytes] | None:
    tool = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if tool is None or pid is None:
        return None
    argv = [tool, "record", "--pid", str(pid), "--threads", "--nonblocking", "-r", "100",
            "-f", "raw", "-o", str(out)]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_py_spy(profilers: Sequence[subprocess.Popen[bytes] | None]) -> None:
    for profiler in profilers:
        if profiler is not None and profiler.poll() is None:
            profiler.send_signal(signal.SIGINT)
    for profiler in profilers:
        if profiler is not None:
            try:
                profiler.wait(timeout=60)
            except subprocess.TimeoutExpired:
                profiler.kill()
                profiler.wait()


def run_mesh(bench: Bench, number: int) -> StepRun:
    target = bench.fresh_target(f"target-mesh-{number}")
    folder = bench.work / f"recover-{number}"
    folder.mkdir()
    report = folder / "report.json"
    argv = recover_argv(bench, folder / "workdir", target, report)
    profilers: list[subprocess.Popen[bytes] | None] = []
    window = CpuWindow({"target": [target.pid], "partners": bench.partners()})
    started = time.monotonic()
    arrivals = Arrivals(target, bench.studies, started)
    arrivals.start()
    with (folder / "stdout.log").open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        lines = Lines(proc.stderr, started)
        lines.start()
        if bench.args.py_spy is not None:
            spy = bench.args.py_spy
            profilers.append(start_py_spy(proc.pid, spy / f"recover-round{number + 1}.txt"))
            holder = bench.plan.sites[1]
            profilers.append(start_py_spy(holder.pid, spy / f"holder-round{number + 1}.txt"))
        code, recover_cpu = wait_child(proc, bench.timeout())
        exited = time.monotonic() - started
        wait_arrivals(arrivals, 30.0)
    finally:
        if proc.returncode is None:
            proc.kill()
            wait_child(proc, 10.0)
        stop_py_spy(profilers)
        arrivals.stop()
    lines.join(5.0)
    cpu = {"recover": round(recover_cpu, 2), **window.close()}
    run = finish_step(bench, target, arrivals, cpu)
    bench.drop_target(target)
    (folder / "stderr.log").write_text("\n".join(f"{t:8.3f} {line}" for t, line in lines.lines))
    run.extra = {
        "exit_code": code,
        "process_seconds": round(exited, 3),
        "plan_at_seconds": lines.first_at("plan:"),
        "first_bundle_line_seconds": lines.first_at("bundle 1:"),
        "profiled": bench.args.py_spy is not None,
    }
    document: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        document = json.loads(report.read_text())
    run.extra["report_seconds"] = document.get("seconds")
    delivered = document.get("instances_delivered")
    if code != 0 or delivered != bench.instance_count:
        tail = " | ".join(line for _, line in lines.lines[-3:])
        run.problems.append(f"meshpacs recover exit {code}, {delivered} delivered: {tail}")
    return run


def run_orthanc(bench: Bench, number: int) -> StepRun:
    target = bench.fresh_target(f"target-orthanc-{number}")
    order = plan_order(bench.studies)
    window = CpuWindow(
        {"target": [target.pid], "replica": [bench.replica.pid], "partners": bench.partners()}
    )
    failures: list[str] = []

    def move(study: Study) -> None:
        body = {
            "Level": "Study",
            "Resources": [{"StudyInstanceUID": study.study_uid}],
            "TargetAet": TARGET_AET,
        }
        try:
            target.rest("POST", f"/modalities/{REPLICA_NAME}/move", body, timeout=bench.timeout())
        except (OSError, OrthancError) as error:
            failures.append(str(error)[:300])

    started = time.monotonic()
    arrivals = Arrivals(target, bench.studies, started)
    arrivals.start()
    try:
        with ThreadPoolExecutor(bench.args.moves) as pool:
            list(pool.map(move, order))
        moved = time.monotonic() - started
        wait_arrivals(arrivals, 30.0)
    finally:
        arrivals.stop()
    run = finish_step(bench, target, arrivals, window.close())
    bench.drop_target(target)
    run.extra = {"moves_returned_seconds": round(moved, 3), "moves_at_once": bench.args.moves}
    run.problems += [f"C-MOVE failed: {f}" for f in failures]
    return run


# -- rounds and summary ---------------------------------------------------------------------


def mb_per_s(size: int, seconds: float | None) -> float | None:
    return round(size / seconds / 1e6, 1) if seconds else None


def one_round(bench: Bench, number: int) -> dict[str, Any]:
    order = STEPS[number % len(STEPS) :] + STEPS[: number % len(STEPS)]
    result: dict[str, Any] = {"round": number + 1, "order": list(order)}
    for step in order:
        run = run_mesh(bench, number) if step == "mesh" else run_orthanc(bench, number)
        speed = mb_per_s(bench.total_bytes, run.seconds)
        result[step] = {
            "seconds": round(run.seconds, 3) if run.seconds is not None else None,
            "mb_per_s": speed,
            "first_study": run.first_study,
            "first_study_seconds": run.first_seconds,
            "study_complete_seconds": {str(k): round(v, 3) for k, v in run.complete.items()},
            "cpu_seconds": run.cpu,
            "files": run.files,
            "identical": run.identical,
            "problems": run.problems,
            **run.extra,
        }
        first = run.first_seconds
        bench.say(
            f"  round {number + 1}: {step} {speed} MB/s, first study "
            f"{'-' if first is None else f'{first:.2f} s'}"
            + (f"; PROBLEMS: {run.problems}" if run.problems else "")
        )
    mesh, orth = result["mesh"]["mb_per_s"], result["orthanc"]["mb_per_s"]
    result["ratio"] = round(mesh / orth, 3) if mesh and orth else None
    return result


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def values(step: str, key: str) -> list[float]:
        return [r[step][key] for r in rounds if r[step][key] is not None]

    out: dict[str, Any] = {}
    for step in STEPS:
        speeds = values(step, "mb_per_s")
        firsts = values(step, "first_study_seconds")
        out[step] = {
            "mb_per_s_best": max(speeds, default=None),
            "mb_per_s_median": statistics.median(speeds) if speeds else None,
            "first_study_seconds_best": min(firsts, default=None),
            "first_study_seconds_median": statistics.median(firsts) if firsts else None,
            "first_study_seconds_worst": max(firsts, default=None),
        }
    mesh, orth = out["mesh"], out["orthanc"]
    ok = all(not r[s]["problems"] for r in rounds for s in STEPS)
    ratio = ratio_median = None
    if mesh["mb_per_s_best"] and orth["mb_per_s_best"]:
        ratio = round(mesh["mb_per_s_best"] / orth["mb_per_s_best"], 3)
        ratio_median = round(mesh["mb_per_s_median"] / orth["mb_per_s_median"], 3)
    worst_first = mesh["first_study_seconds_worst"]
    out.update(
        {
            "all_exact": ok,
            "ratio": ratio,
            "ratio_median": ratio_median,
            "ratio_per_round": [r["ratio"] for r in rounds],
            "ratio_target": RATIO_TARGET,
            "ratio_target_met": ok and ratio is not None and ratio >= RATIO_TARGET,
            "first_study_target_seconds": FIRST_STUDY_TARGET,
            "first_study_target_met": ok
            and worst_first is not None
            and len(values("mesh", "first_study_seconds")) == len(rounds)
            and worst_first <= FIRST_STUDY_TARGET,
        }
    )
    return out


def idle_cpu(bench: Bench, seconds: float = 5.0) -> dict[str, float]:
    """What the partner nodes and the replica burn doing nothing, per second."""
    window = CpuWindow({"partners": bench.partners(), "replica": [bench.replica.pid]})
    time.sleep(seconds)
    return {k: v if k == "busy_cores" else round(v / seconds, 3) for k, v in window.close().items()}


def prepare(bench: Bench) -> dict[str, Any]:
    """Generate, load both sources, wait until protected, stop site-a's node."""
    args, say = bench.args, bench.say
    started = time.monotonic()
    bench.studies.extend(generate(bench.work / "pacs", args))
    generated = time.monotonic()
    upload_replica(bench.replica, bench.studies)
    uploaded = time.monotonic()
    push_node(bench.owner, bench.studies)
    pushed = time.monotonic()
    wait_protected(bench.plan, bench.owner, len(bench.studies), bench.timeout())
    protected = time.monotonic()
    say(
        f"{len(bench.studies)} studies, {bench.instance_count} instances,"
        f" {bench.total_bytes / 1e6:.0f} MB: generated in {generated - started:.0f} s, replica"
        f" loaded in {uploaded - generated:.0f} s, pushed to {bench.owner.site_id} in"
        f" {pushed - uploaded:.0f} s, protected {protected - pushed:.1f} s later"
    )
    stop_node(bench.plan, bench.owner)
    shutil.rmtree(bench.work / "pacs")  # the node and the replica hold the studies now
    say(f"{bench.owner.site_id}'s node stopped (its directory is not read by recovery)")
    first = plan_order(bench.studies)[0]
    return {
        "studies": [
            {
                "number": s.number,
                "bytes": s.size,
                "instances": len(s.instances),
                "date_rank": plan_order(bench.studies).index(s) + 1,
            }
            for s in bench.studies
        ],
        "planned_first_study": first.number,
        "planned_first_study_bytes": first.size,
        "push_seconds": round(pushed - uploaded, 1),
        "protected_after_push_seconds": round(protected - pushed, 1),
    }


def _stop_on_term(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # run the finally blocks: stop every process, remove the temp dir


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--gb", type=float, default=1.0, help="study data, GB (10^9)")
    ap.add_argument("--studies", type=int, default=16, help="studies (sizes weighted 4,1,8,2)")
    ap.add_argument("--sites", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--n", type=int, default=7)
    ap.add_argument("--segment-kib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--associations", type=int, default=4, help="meshpacs recover's C-STOREs")
    ap.add_argument("--moves", type=int, default=1, help="C-MOVE requests at once (Orthanc)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--py-spy", type=Path, metavar="DIR", help="profile the mesh steps into DIR")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()
    if args.studies < 1 or args.rounds < 1 or args.gb <= 0 or args.moves < 1:
        ap.error("--studies, --rounds and --moves must be >= 1, --gb > 0")
    return args


def main() -> int:
    args = parse_args()

    def say(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    if not orthanc_available():
        say("bench_recover: Orthanc is not installed (apt-get install orthanc)")
        return 1
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _stop_on_term)
    work = Path(tempfile.mkdtemp(prefix="bench-recover-"))
    plan = create_testbed(
        work / "testbed",
        args.sites,
        k=args.k,
        n=args.n,
        stable_seconds=STABLE_SECONDS,
        pass_interval=PASS_INTERVAL,
        segment_kib=args.segment_kib,
    )
    target_ports = (free_port(), free_port())
    replica = OrthancProcess(
        work / "replica",
        aet=REPLICA_AET,
        modalities={TARGET_NAME: Modality(TARGET_AET, target_ports[0])},
    )
    bench = Bench(args, plan, plan.sites[0], [], replica, target_ports, work, say)
    rounds: list[dict[str, Any]] = []
    try:
        start_nodes(plan)
        bench.running.append(replica)
        replica.start()
        say(f"{args.sites} nodes (k={args.k}, n={args.n}) and the replica Orthanc up under {work}")
        setup = prepare(bench)
        idle = idle_cpu(bench)
        for number in range(args.rounds):
            rounds.append(one_round(bench, number))
    except KeyboardInterrupt:
        say("interrupted: stopping every process this script started")
        return 130
    finally:
        for orthanc in list(bench.running):
            orthanc.stop()
        stop_nodes(plan)
        if args.keep:
            say(f"working directory kept under {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": " ".join(["scripts/bench_recover.py", *sys.argv[1:]]),
        "sites": args.sites,
        "k": args.k,
        "n": args.n,
        "segment_size": args.segment_kib * 1024,
        "bytes": bench.total_bytes,
        "instances": bench.instance_count,
        "associations": args.associations,
        "moves_at_once": args.moves,
        "idle_cpu_per_second": idle,
        "setup": setup,
        "rounds": rounds,
        **summarise(rounds),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0 if result["all_exact"] else 1


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def print_table(result: dict[str, Any]) -> None:
    setup = result["setup"]
    print(
        f"{result['bytes'] / 1e6:.0f} MB in {len(setup['studies'])} studies"
        f" ({result['instances']} instances), {result['sites']} sites, k={result['k']}"
        f" n={result['n']}, {len(result['rounds'])} round(s); recover with"
        f" {result['associations']} associations, {result['moves_at_once']} C-MOVE(s) at once"
    )
    print(
        f"first study in plan order: #{setup['planned_first_study']},"
        f" {setup['planned_first_study_bytes'] / 1e6:.1f} MB"
    )
    idle = result["idle_cpu_per_second"]
    print(f"idle: partners {idle['partners']}, replica {idle['replica']} CPU s per second")
    for r in result["rounds"]:
        print(f"round {r['round']} ({', '.join(r['order'])}), ratio mesh/orthanc {r['ratio']}")
        m, o = r["mesh"], r["orthanc"]
        mc, oc = m["cpu_seconds"], o["cpu_seconds"]
        print(
            f"  mesh     {_fmt(m['mb_per_s'], ' MB/s'):>12}  all in {_fmt(m['seconds'], ' s', 2)}"
            f" (plan at {_fmt(m['plan_at_seconds'], ' s', 2)}), first study"
            f" #{m['first_study']} at {_fmt(m['first_study_seconds'], ' s', 2)};"
            f" {m['identical']}/{m['files']} identical; CPU s: recover {mc['recover']},"
            f" target {mc['target']}, partners {mc['partners']}; {mc['busy_cores']} cores busy"
        )
        print(
            f"  orthanc  {_fmt(o['mb_per_s'], ' MB/s'):>12}  all in {_fmt(o['seconds'], ' s', 2)},"
            f" first study #{o['first_study']} at {_fmt(o['first_study_seconds'], ' s', 2)};"
            f" {o['identical']}/{o['files']} identical; CPU s: replica {oc['replica']},"
            f" target {oc['target']}; {oc['busy_cores']} cores busy"
        )
        for step in STEPS:
            for problem in r[step]["problems"]:
                print(f"  problem ({step}): {problem}")
    m, o = result["mesh"], result["orthanc"]
    print(
        f"  mesh    {_fmt(m['mb_per_s_best'])} MB/s best, {_fmt(m['mb_per_s_median'])} median;"
        f" first study {_fmt(m['first_study_seconds_best'], ' s', 2)} best,"
        f" {_fmt(m['first_study_seconds_worst'], ' s', 2)} worst"
    )
    print(
        f"  orthanc {_fmt(o['mb_per_s_best'])} MB/s best, {_fmt(o['mb_per_s_median'])} median;"
        f" first study {_fmt(o['first_study_seconds_best'], ' s', 2)} best,"
        f" {_fmt(o['first_study_seconds_worst'], ' s', 2)} worst"
    )
    print(
        f"  ratio mesh / orthanc: {result['ratio']} (median {result['ratio_median']});"
        f" target >= {result['ratio_target']}:"
        f" {'met' if result['ratio_target_met'] else 'NOT met'}"
    )
    print(
        f"  first study complete within {result['first_study_target_seconds']:.0f} s in every"
        f" round: {'met' if result['first_study_target_met'] else 'NOT met'}"
    )


if __name__ == "__main__":
    sys.exit(main())
