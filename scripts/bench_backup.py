#!/usr/bin/env python3
"""Backup across a loopback federation, beside the codec's encode limit and a plain TLS copy.

A testbed federation of ``--sites`` sites (default 8) runs on 127.0.0.1, each site's node
its own process (``meshpacs.testbed``), k=4 and n=7 unless told otherwise, 1 MiB segments,
bundles of up to 1 GiB (the node's default), studies stable after 1 s of quiet, a backup
pass every 0.2 s. Every round measures, on the same bytes and in an order rotated every
round so that machine noise hits all alike:

* **backup**: about ``--gb`` GB of generated CT studies (``--studies`` of them) are pushed
  into site-a by C-STORE (not timed), and site-a's node encodes them into bundles and puts
  every share on its own partner node, acknowledged durably (received, fsynced, verified);
* **codec**: ``encode_bundle`` of the same instance files, one bundle per study as the node
  cuts them, same k, n and segment size, into sinks that drop the bytes, in this process;
* **TLS copy**: one process (with site-a's federation certificate) copies n/k times the
  same bytes over n mutual-TLS 1.3 connections at once, bytes/k each, to n other processes
  (with the partners' certificates) that read and drop them: the shape of the backup's
  traffic with nothing but TLS and asyncio streams, 1 MiB writes as the transport does;
* **TLS copy, durable** (a diagnostic, not in the target): the same, but each receiver
  writes what it reads to a file from a worker thread and fsyncs it before acknowledging,
  which is the least a partner must do before it may say "stored".

The figure is ``backup / min(codec, TLS copy)``, target >= 0.6; the best of the rounds and
the median of the rounds are both given. MB/s is 10^6 bytes/s of study data (the pushed
Part 10 files; the owner keeps a few bytes more per instance in its own file meta).

What the backup time is, and why. Ingest must not count, nor the wait for a study to
become quiet. The studies' instances are pushed round-robin over one association (one
instance of each study in turn), so every study receives its last instance within the last
few instances of the push and all become stable about 1 s after it: the backup never
overlaps ingest (the script checks that the first bundle was planned after the last
instance arrived). The time is then read from site-a's own catalog (``bundles`` table,
the node's ``time.time()``): each bundle is busy from being planned (``created_at``, in
the pass that found its study stable) to being stored (``stored_at``, all n shares
acknowledged); the backup time is the union of those intervals. That is the span from the
first planned to the last stored, except when the studies were found stable by two passes
(their last instances straddled a pass), where the idle gap between the passes is left
out; both the union and the span are reported, and the number of passes. A study is
protected in the same pass, right after its last bundle. The time from the end of the
push until this script saw every study protected, less the 1 s stable delay, is reported
beside it as a cross-check (it includes the wait for the next pass and 0.1 s polling).

CPU seconds are reported for every step (from /proc: the owner's and the partners' nodes
over the backup, the sender and receivers over a copy, this process over the codec),
with the machine's average busy cores, and once, before the rounds, what the idle nodes
burn per second. On a shared 2-core machine the CPU seconds are the steadier figure.

Before the rounds, one small study is pushed and backed up untimed (warm-up: the DHT has
settled and the owner has found its partners). Each round checks that every bundle of the
round is ``stored`` (n shares on n distinct sites) and every pushed instance bundled, and
prints a problem otherwise. The testbed lives in a temporary directory, removed at the end
(``--keep`` keeps it); node and copy processes are stopped on errors, Ctrl-C and SIGTERM.

    .venv/bin/python scripts/bench_backup.py                  # 1 GB in 4 studies, 3 rounds
    .venv/bin/python scripts/bench_backup.py --json           # the same, one JSON object
    .venv/bin/python scripts/bench_backup.py --gb 0.1 --rounds 1   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any

from meshpacs.dicom.scu import Outgoing, Target, send_instances
from meshpacs.erasure import CodingParams, IndexEntry, InstanceSource, encode_bundle
from meshpacs.federation import MutualTls, SiteFederationFiles
from meshpacs.keys import NodeIdentity
from meshpacs.metadata import ledger
from meshpacs.node.config import load_config
from meshpacs.node.site import load_site_secret
from meshpacs.testbed.layout import TestbedPlan, TestbedSite, create_testbed
from meshpacs.testbed.processes import start_nodes, stop_nodes
from meshpacs.testing.synth import (
    SeriesSpec,
    StudySpec,
    SynthInstance,
    generate_study,
    study_of_size,
    write_study,
)

STABLE_SECONDS = 1.0
PASS_INTERVAL = 0.2
MAX_BUNDLE_BYTES = 1024**3  # the node's default ([backup] max_bundle_mb = 1024)
CHUNK = 1024 * 1024  # the fragment transport's chunk
POLL = 0.1
WARM_UP_STUDY = StudySpec(series=(SeriesSpec("CT", 8),))
SCU_AET = "BENCH_PACS"
STEPS = ("backup", "codec", "tls_copy", "tls_copy_durable")


class NullSink:
    def write(self, data: bytes | memoryview, /) -> int:
        return len(data)


# -- CPU accounting -------------------------------------------------------------------------


def process_cpu(pid: int | None) -> float:
    """User + system CPU seconds of a process, from /proc (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int, int]:
    """(busy, all, steal) clock ticks of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    steal = values[7] if len(values) > 7 else 0
    return sum(values[:8]) - idle - steal, sum(values[:8]), steal


class CpuWindow:
    """CPU seconds of named groups of processes, and of the machine, over a time window."""

    def __init__(self, groups: dict[str, list[int | None]]) -> None:
        self._groups = groups
        self._start = {name: sum(map(process_cpu, pids)) for name, pids in groups.items()}
        self._machine = machine_ticks()
        self._self = time.process_time()

    def close(self) -> dict[str, float]:
        """Seconds per group; ``busy_cores`` (average cores busy), ``steal_share``, ``this``."""
        out = {
            name: round(sum(map(process_cpu, pids)) - self._start[name], 2)
            for name, pids in self._groups.items()
        }
        busy, total, steal = (b - a for a, b in zip(self._machine, machine_ticks(), strict=True))
        cores = os.cpu_count() or 1
        out["busy_cores"] = round(cores * busy / total, 2) if total else 0.0
        out["steal_share"] = round(steal / total, 3) if total else 0.0
        out["this"] = round(time.process_time() - self._self, 2)
        return out


# -- generated studies ----------------------------------------------------------------------


@dataclass(frozen=True)
class PushedInstance:
    path: Path
    size: int
    sha256: bytes
    outgoing: Outgoing


@dataclass
class RoundData:
    """One round's studies: instance files on disk, in study order, and the push order."""

    studies: list[list[PushedInstance]] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(i.size for study in self.studies for i in study)

    @property
    def count(self) -> int:
        return sum(len(study) for study in self.studies)

    def round_robin(self) -> list[Outgoing]:
        """One instance of each study in turn: every study ends within the last few sent."""
        out: list[Outgoing] = []
        longest = max(len(study) for study in self.studies)
        for position in range(longest):
            out.extend(s[position].outgoing for s in self.studies if position < len(s))
        return out


def write_generated(directory: Path, instances: Iterator[SynthInstance]) -> list[PushedInstance]:
    """Write a generated study; keep each file's identity and digest, not its bytes."""
    seen: list[tuple[int, bytes, str, str, str]] = []

    def keep(stream: Iterator[SynthInstance]) -> Iterator[SynthInstance]:
        for i in stream:
            digest = hashlib.sha256(i.data).digest()
            seen.append(
                (len(i.data), digest, i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid)
            )
            yield i

    paths = write_study(directory, keep(instances))
    return [
        PushedInstance(path, size, digest, Outgoing(path, sop_class, uid, syntax))
        for path, (size, digest, sop_class, uid, syntax) in zip(paths, seen, strict=True)
    ]


def generate_round(directory: Path, number: int, args: argparse.Namespace) -> RoundData:
    per_study = max(1, int(args.gb * 1e9 / args.studies))
    data = RoundData()
    for study in range(args.studies):
        patient = 1 + number * args.studies + study  # patient 0 is the warm-up's
        instances = study_of_size(args.seed, per_study, patient=patient)
        data.studies.append(write_generated(directory / f"study-{study}", instances))
    return data


# -- the backup -------------------------------------------------------------------------------


def catalog_path(site: TestbedSite) -> Path:
    return load_config(Path(site.config)).catalog_path


def read_catalog(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def push(site: TestbedSite, items: Sequence[Outgoing]) -> None:
    target = Target(site.ae_title, site.host, site.dicom_port, SCU_AET)
    failed = [d.detail for d in send_instances(items, target) if not d.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} instances refused by {site.site_id}: {failed[0]}")


def wait_protected(path: Path, studies: int, timeout: float) -> float:
    """Poll the owner's catalog until ``studies`` studies are protected; returns the time."""
    deadline = time.monotonic() + timeout
    while True:
        db = read_catalog(path)
        try:
            counts = ledger.protection_counts(db)
        finally:
            db.close()
        if counts.total >= studies and counts.protected + counts.degraded >= studies:
            return time.time()
        if time.monotonic() > deadline:
            raise RuntimeError(f"studies not protected within {timeout:.0f} s: {counts}")
        time.sleep(POLL)


def last_bundle_id(path: Path) -> int:
    db = read_catalog(path)
    try:
        return int(db.execute("SELECT coalesce(max(id), 0) FROM bundles").fetchone()[0])
    finally:
        db.close()


@dataclass
class BackupSpan:
    bytes: int  # as the owner stored them (its Part 10 files: a few bytes more per instance)
    instances: int
    bundles: int
    passes: int  # backup passes the round's bundles were planned in
    busy_seconds: float  # time at least one bundle was between planned and stored
    span_seconds: float  # first bundle planned -> last bundle stored
    planned_after_ingest: float  # first bundle planned - last instance received
    states: dict[str, int]
    problems: list[str]
    timeline: list[tuple[float, float]]  # (planned, stored) per bundle, from the first planned


def busy_time(intervals: Sequence[tuple[float, float]]) -> float:
    """Length of the union of the intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def count_passes(timeline: Sequence[tuple[float, float]]) -> int:
    """Bundles planned after every earlier one was stored came from a later pass."""
    passes, reach = 0, float("-inf")
    for planned, stored in timeline:
        if planned > reach:
            passes += 1
        reach = max(reach, stored)
    return passes


def backup_span(path: Path, after_id: int, n: int) -> BackupSpan:
    db = read_catalog(path)
    try:
        bundles = db.execute(
            "SELECT id, created_at, coalesce(stored_at, created_at), state FROM bundles"
            " WHERE id > ? ORDER BY id",
            (after_id,),
        ).fetchall()
        ids = tuple(int(b[0]) for b in bundles)
        marks = ",".join("?" * len(ids))
        size, count = db.execute(
            "SELECT coalesce(sum(i.size), 0), count(*) FROM bundle_members m"
            f" JOIN instances i ON i.id = m.instance_ref WHERE m.bundle_ref IN ({marks})",
            ids,
        ).fetchone()
        last_received = db.execute(
            "SELECT max(last_received) FROM studies WHERE id IN"
            f" (SELECT study_ref FROM bundles WHERE id IN ({marks}))",
            ids,
        ).fetchone()[0]
        holders = db.execute(
            "SELECT bundle_ref, count(DISTINCT share), count(DISTINCT holder_site)"
            f" FROM placements WHERE bundle_ref IN ({marks}) GROUP BY bundle_ref",
            ids,
        ).fetchall()
    finally:
        db.close()
    start = min(float(b[1]) for b in bundles)
    timeline = [(float(b[1]) - start, float(b[2]) - start) for b in bundles]
    states: dict[str, int] = {}
    for b in bundles:
        states[str(b[3])] = states.get(str(b[3]), 0) + 1
    problems = [f"bundle row {b[0]} is {b[3]}" for b in bundles if b[3] != "stored"]
    placed = {int(h[0]): (int(h[1]), int(h[2])) for h in holders}
    problems += [
        f"bundle row {i}: {placed.get(i, (0, 0))} shares/sites, not {n}"
        for i in ids
        if placed.get(i) != (n, n)
    ]
    return BackupSpan(
        bytes=int(size),
        instances=int(count),
        bundles=len(bundles),
        passes=count_passes(timeline),
        busy_seconds=busy_time(timeline),
        span_seconds=max(end for _, end in timeline),
        planned_after_ingest=start - float(last_received),
        states=states,
        problems=problems,
        timeline=timeline,
    )


@dataclass
class BackupRun:
    span: BackupSpan
    push_seconds: float
    observed_seconds: float  # push end -> seen protected, less the stable delay
    cpu: dict[str, float]  # push end -> seen protected


def run_backup(plan: TestbedPlan, data: RoundData, studies_so_far: int) -> BackupRun:
    owner = plan.sites[0]
    path = catalog_path(owner)
    before = last_bundle_id(path)
    started = time.monotonic()
    push(owner, data.round_robin())
    push_seconds = time.monotonic() - started
    pushed_at = time.time()
    window = CpuWindow({"owner": [owner.pid], "partners": [s.pid for s in plan.sites[1:]]})
    seen = wait_protected(path, studies_so_far, timeout=600 + 60 * data.total_bytes / 1e9)
    cpu = window.close()
    span = backup_span(path, before, plan.n)
    if span.instances != data.count:
        span.problems.append(f"{span.instances} instances bundled, {data.count} were pushed")
    if span.planned_after_ingest < 0:
        span.problems.append("the backup started before the push ended")
    return BackupRun(span, push_seconds, seen - pushed_at - STABLE_SECONDS, cpu)


# -- the codec --------------------------------------------------------------------------------


def study_bundles(study: list[PushedInstance]) -> list[list[PushedInstance]]:
    """The study cut as the node cuts it: consecutive instances up to the bundle cap."""
    bundles: list[list[PushedInstance]] = [[]]
    size = 0
    for item in study:
        if bundles[-1] and size + item.size > MAX_BUNDLE_BYTES:
            bundles.append([])
            size = 0
        bundles[-1].append(item)
        size += item.size
    return bundles


def _source(item: PushedInstance) -> InstanceSource:
    entry = IndexEntry(item.outgoing.sop_instance_uid, item.size, item.sha256)
    return InstanceSource(entry, lambda: open(item.path, "rb"))


def codec_seconds(data: RoundData, params: CodingParams) -> float:
    """Encode every bundle of the round from its instance files; digests are not timed
    (the node has them in its catalog), the codec still re-hashes every instance."""
    bundles = [[_source(i) for i in b] for study in data.studies for b in study_bundles(study)]
    started = time.perf_counter()
    for sources in bundles:
        encode_bundle(sources, params, [NullSink() for _ in range(params.n)])
    return time.perf_counter() - started


# -- the plain TLS copy -----------------------------------------------------------------------


def _site_tls(site_dir: str) -> MutualTls:
    directory = Path(site_dir)
    identity = NodeIdentity.from_secret(load_site_secret(directory / "site.key"))
    return MutualTls(identity, SiteFederationFiles.for_site(directory))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def tls_receiver(site_dir: str, sink_dir: str, conn: Connection) -> None:
    """A partner: reads the announced byte count and drops it, or (durable) writes it to a
    file in ``sink_dir`` from a worker thread, fsyncs it, acks, and deletes it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    tls = _site_tls(site_dir)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls.peer_member(writer.get_extra_info("ssl_object"))  # as the transport's server does
        head = await reader.readexactly(9)
        remaining, durable = int.from_bytes(head[:8], "big"), head[8] == 1
        fd, path = tempfile.mkstemp(dir=sink_dir) if durable else (-1, "")
        try:
            while remaining:
                chunk = await reader.read(min(CHUNK, remaining))
                if not chunk:
                    raise ConnectionError("sender went away")
                remaining -= len(chunk)
                if durable:
                    await asyncio.to_thread(_write_all, fd, chunk)
            if durable:
                await asyncio.to_thread(os.fsync, fd)
            writer.write(b"\x01")
            await writer.drain()
        finally:
            writer.close()
            if durable:
                os.close(fd)
                os.unlink(path)

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls.server_context())
        conn.send(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


def tls_sender(site_dir: str, ports: list[int], conn: Connection) -> None:
    """The owner: on each request, sends ``length`` bytes on every connection at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    tls = _site_tls(site_dir)
    block = memoryview(os.urandom(CHUNK))

    async def send(port: int, length: int, durable: bool) -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls.client_context(), server_hostname=None
        )
        tls.peer_member(writer.get_extra_info("ssl_object"))
        writer.write(length.to_bytes(8, "big") + bytes([durable]))
        remaining = length
        while remaining:
            size = min(CHUNK, remaining)
            writer.write(block[:size])
            await writer.drain()
            remaining -= size
        if await reader.readexactly(1) != b"\x01":
            raise ConnectionError("no acknowledgement")
        writer.close()

    async def copy(length: int, durable: bool) -> float:
        started = time.perf_counter()
        await asyncio.gather(*(send(port, length, durable) for port in ports))
        return time.perf_counter() - started

    while True:
        request = conn.recv()
        if request is None:
            return
        conn.send(asyncio.run(copy(*request)))


class TlsCopy:
    """The n receivers and the sender, each its own process, started once for all rounds."""

    def __init__(self, plan: TestbedPlan, sink_root: Path) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._processes: list[Any] = []
        self._plan = plan
        self._sink_root = sink_root
        self._sender: Connection | None = None

    def start(self) -> None:
        ports = []
        for site in self._plan.sites[1 : self._plan.n + 1]:
            sink = self._sink_root / site.site_id
            sink.mkdir(parents=True)
            ours, theirs = self._context.Pipe()
            self._spawn(tls_receiver, site.data_dir, str(sink), theirs)
            if not ours.poll(60):
                raise RuntimeError("a TLS copy receiver did not start")
            ports.append(int(ours.recv()))
        ours, theirs = self._context.Pipe()
        self._spawn(tls_sender, self._plan.sites[0].data_dir, ports, theirs)
        self._sender = ours

    def _spawn(self, target: Any, *args: Any) -> None:
        process = self._context.Process(target=target, args=args, daemon=True)
        process.start()
        self._processes.append(process)

    def seconds(self, study_bytes: int, durable: bool) -> tuple[float, dict[str, float]]:
        """Copy n/k x ``study_bytes``: ``study_bytes / k`` on each of the n connections;
        ``durable``: the receivers write and fsync it (not part of the target)."""
        assert self._sender is not None
        window = CpuWindow(
            {
                "sender": [self._processes[-1].pid],
                "receivers": [p.pid for p in self._processes[:-1]],
            }
        )
        self._sender.send((-(-study_bytes // self._plan.k), durable))
        if not self._sender.poll(600):
            raise RuntimeError("the TLS copy did not finish in 600 s")
        seconds = float(self._sender.recv())
        return seconds, window.close()

    def stop(self) -> None:
        """Ask the sender to end, then stop every process we started (receivers never end)."""
        if self._sender is not None:
            with contextlib.suppress(OSError):
                self._sender.send(None)
            self._processes[-1].join(timeout=2)
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()


# -- the run ----------------------------------------------------------------------------------


def warm_up(plan: TestbedPlan, directory: Path, seed: int) -> None:
    owner = plan.sites[0]
    items = write_generated(directory, generate_study(seed, WARM_UP_STUDY, patient=0))
    push(owner, [i.outgoing for i in items])
    wait_protected(catalog_path(owner), 1, timeout=300)


def idle_cpu(plan: TestbedPlan, seconds: float = 5.0) -> dict[str, float]:
    """What the nodes burn doing nothing (passes, DHT upkeep, DICOM listener), per second."""
    window = CpuWindow({"owner": [plan.sites[0].pid], "partners": [s.pid for s in plan.sites[1:]]})
    time.sleep(seconds)
    shares = ("busy_cores", "steal_share")
    return {k: v if k in shares else round(v / seconds, 3) for k, v in window.close().items()}


def mb_per_s(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def summarise(rounds: list[dict[str, Any]], target: float) -> dict[str, Any]:
    def speeds(key: str) -> list[float]:
        return [r["mb_per_s"][key] for r in rounds]

    best = {key: max(speeds(key)) for key in STEPS}
    median = {key: statistics.median(speeds(key)) for key in STEPS}
    ratio = best["backup"] / min(best["codec"], best["tls_copy"])
    ratio_median = median["backup"] / min(median["codec"], median["tls_copy"])
    per_round = [r["ratio"] for r in rounds]
    return {
        "mb_per_s_best": {k: round(v, 1) for k, v in best.items()},
        "mb_per_s_median": {k: round(v, 1) for k, v in median.items()},
        "ratio": round(ratio, 3),
        "ratio_median": round(ratio_median, 3),
        "ratio_per_round": per_round,
        "target": target,
        "target_met": ratio >= target,
        "target_met_median": ratio_median >= target,
    }


def one_round(
    number: int,
    args: argparse.Namespace,
    plan: TestbedPlan,
    copier: TlsCopy,
    work: Path,
    say: Any,
) -> dict[str, Any]:
    data = generate_round(work / f"round-{number}", number, args)
    size = data.total_bytes
    params = CodingParams(args.k, args.n, args.segment_kib * 1024)
    order = STEPS[number % len(STEPS) :] + STEPS[: number % len(STEPS)]
    seconds: dict[str, float] = {}
    cpu: dict[str, dict[str, float]] = {}
    result: dict[str, Any] = {"round": number + 1, "order": list(order), "bytes": size}
    for step in order:
        if step == "backup":
            run = run_backup(plan, data, studies_so_far=1 + (number + 1) * args.studies)
            span = run.span
            seconds["backup"] = span.busy_seconds
            cpu["backup"] = run.cpu
            result["backup"] = {
                "push_seconds": round(run.push_seconds, 3),
                "push_mb_per_s": round(mb_per_s(size, run.push_seconds), 1),
                "busy_seconds": round(span.busy_seconds, 3),
                "span_seconds": round(span.span_seconds, 3),
                "observed_seconds": round(run.observed_seconds, 3),
                "planned_after_ingest_seconds": round(span.planned_after_ingest, 3),
                "owner_bytes": span.bytes,
                "instances": span.instances,
                "bundles": span.bundles,
                "passes": span.passes,
                "states": span.states,
                "timeline": [[round(a, 3), round(b, 3)] for a, b in span.timeline],
                "problems": span.problems,
            }
        elif step == "codec":
            window = CpuWindow({})
            seconds["codec"] = codec_seconds(data, params)
            cpu["codec"] = window.close()
        else:
            durable = step == "tls_copy_durable"
            seconds[step], cpu[step] = copier.seconds(size, durable)
        say(f"  round {number + 1}: {step} {mb_per_s(size, seconds[step]):.1f} MB/s")
    speeds = {k: mb_per_s(size, v) for k, v in seconds.items()}
    result["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    result["cpu_seconds"] = cpu
    result["mb_per_s"] = {k: round(v, 1) for k, v in speeds.items()}
    result["tls_copy_wire_mb_per_s"] = round(speeds["tls_copy"] * args.n / args.k, 1)
    result["ratio"] = round(speeds["backup"] / min(speeds["codec"], speeds["tls_copy"]), 3)
    for study in data.studies:  # the node keeps its own copies; free the disk
        for item in study:
            item.path.unlink()
    return result


def _stop_on_term(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # run the finally blocks: stop the nodes, remove the temp dir


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--gb", type=float, default=1.0, help="study data per round, GB (10^9)")
    ap.add_argument("--studies", type=int, default=4, help="studies per round")
    ap.add_argument("--sites", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--n", type=int, default=7)
    ap.add_argument("--segment-kib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--target", type=float, default=0.6)
    ap.add_argument("--keep", action="store_true", help="keep the testbed directory")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()
    if args.studies < 1 or args.rounds < 1 or args.gb <= 0:
        ap.error("--studies and --rounds must be >= 1, --gb > 0")

    def say(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    signal.signal(signal.SIGTERM, _stop_on_term)
    work = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    plan = create_testbed(
        work / "testbed",
        args.sites,
        k=args.k,
        n=args.n,
        stable_seconds=STABLE_SECONDS,
        pass_interval=PASS_INTERVAL,
        segment_kib=args.segment_kib,
    )
    copier = TlsCopy(plan, work / "copies")
    rounds: list[dict[str, Any]] = []
    idle: dict[str, float] = {}
    try:
        start_nodes(plan)
        copier.start()
        say(f"{args.sites} nodes and {args.n + 1} TLS copy processes up under {work}")
        warm_up(plan, work / "warm-up", args.seed)
        say("warm-up study protected")
        idle = idle_cpu(plan)
        for number in range(args.rounds):
            rounds.append(one_round(number, args, plan, copier, work / "pacs", say))
    except KeyboardInterrupt:
        say("interrupted: stopping the nodes and the copy processes")
        return 130
    finally:
        copier.stop()
        stop_nodes(plan)
        if args.keep:
            say(f"testbed kept under {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "sites": args.sites,
        "k": args.k,
        "n": args.n,
        "segment_size": args.segment_kib * 1024,
        "studies_per_round": args.studies,
        "idle_cpu_per_second": idle,
        "rounds": rounds,
        **summarise(rounds, args.target),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print_table(result)
    return 0


def print_table(result: dict[str, Any]) -> None:
    r0 = result["rounds"][0]
    print(
        f"{r0['bytes'] / 1e6:.0f} MB in {result['studies_per_round']} studies per round, "
        f"{result['sites']} sites, k={result['k']} n={result['n']}, "
        f"segments of {result['segment_size']} B, {len(result['rounds'])} round(s)"
    )
    idle = result["idle_cpu_per_second"]
    print(
        f"idle nodes: owner {idle['owner']}, partners {idle['partners']} CPU s per second;"
        f" {idle['busy_cores']} cores busy"
    )
    for r in result["rounds"]:
        b, cpu, speed = r["backup"], r["cpu_seconds"], r["mb_per_s"]
        print(f"round {r['round']} ({', '.join(r['order'])}), ratio {r['ratio']:.3f}")
        print(
            f"  backup   {speed['backup']:7.1f} MB/s  busy {b['busy_seconds']:.2f} s (span"
            f" {b['span_seconds']:.2f} s, {b['passes']} pass(es); seen protected"
            f" {b['observed_seconds']:.2f} s after push + stable delay)  CPU s: owner"
            f" {cpu['backup']['owner']}, partners {cpu['backup']['partners']};"
            f" {cpu['backup']['busy_cores']} cores busy"
        )
        print(
            f"  codec    {speed['codec']:7.1f} MB/s  CPU s {cpu['codec']['this']};"
            f" {cpu['codec']['busy_cores']} cores busy"
        )
        print(
            f"  TLS copy {speed['tls_copy']:7.1f} MB/s  ({r['tls_copy_wire_mb_per_s']:.0f} MB/s"
            f" on the wire)  CPU s: sender {cpu['tls_copy']['sender']}, receivers"
            f" {cpu['tls_copy']['receivers']}; {cpu['tls_copy']['busy_cores']} cores busy"
        )
        durable = cpu["tls_copy_durable"]
        print(
            f"  (TLS copy written + fsynced {speed['tls_copy_durable']:.1f} MB/s, not in the"
            f" target; CPU s: sender {durable['sender']}, receivers {durable['receivers']};"
            f" {durable['busy_cores']} cores busy)"
        )
        print(f"  (push, not timed: {b['push_mb_per_s']:.0f} MB/s)")
        for problem in b["problems"]:
            print(f"  problem: {problem}")
    best, median = result["mb_per_s_best"], result["mb_per_s_median"]
    labels = {
        "backup": "backup",
        "codec": "codec encode",
        "tls_copy": "TLS copy",
        "tls_copy_durable": "(TLS + fsync)",
    }
    for name, label in labels.items():
        print(f"  {label:14s} {best[name]:8.1f} MB/s best  {median[name]:8.1f} median")
    print(
        f"  ratio backup / min(codec, TLS copy): {result['ratio']:.3f}"
        f" (median {result['ratio_median']:.3f}); target >= {result['target']}:"
        f" {'met' if result['target_met'] else 'NOT met'}"
    )


if __name__ == "__main__":
    sys.exit(main())
