#!/usr/bin/env python3
"""C-MOVE and C-GET retrieve benchmark: dcmtk movescu/getscu against Orthanc and a meshpacs node.

The same generated CT series as ``bench_ingest.py`` (300 slices of 512x512, 16-bit,
Explicit VR Little Endian, about 157 MB, from ``meshpacs.testing``) is loaded once, by one
dcmtk ``storescu`` association each, into two sources started as child processes and
stopped by PID:

* Orthanc 1.10 with its defaults, the dcmtk tools registered in ``DicomModalities``;
* a meshpacs node (``meshpacs init`` + ``meshpacs node run``, default config plus one
  ``[dicom.destinations]`` entry for the receiving storescp).

Then, in interleaved rounds (round, then operation, then source, in an order rotated every
round), each source is asked for the whole study:

* C-MOVE: dcmtk ``movescu`` asks the source to send the study to a dcmtk ``storescp +B``
  (bit-preserving), started fresh on an empty directory for every run, on a port fixed for
  the whole benchmark so that both sources can name it in their configuration;
* C-GET: dcmtk ``getscu +B`` retrieves the study on its own association, into a fresh
  empty directory.

The timed span is the whole movescu or getscu run, association set-up included.
``TCP_NODELAY=1`` is in the environment of every dcmtk and Orthanc process. After each run
the received files are checked: from meshpacs every original dataset (the bytes after the
file meta group) must arrive byte for byte; from Orthanc every instance must arrive, and
byte for byte too if Orthanc kept the loaded files unchanged (checked in its storage area
after loading; reported as ``orthanc_stores_unchanged``).

Helpers (dcmtk lookup, start/stop by PID, C-ECHO wait, storescu push, the storescp
receiver, py-spy) come from ``bench_ingest.py``, which must sit next to this script.

    .venv/bin/python scripts/bench_retrieve.py                       # 300 x 512^2, 3 rounds
    .venv/bin/python scripts/bench_retrieve.py --count 60 --rows 128 --rounds 1   # quick look
    .venv/bin/python scripts/bench_retrieve.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import bench_ingest as ingest

from meshpacs.testing import (
    Modality,
    OrthancProcess,
    SeriesSpec,
    StudySpec,
    SynthInstance,
    free_port,
    generate_study,
    orthanc_available,
    write_study,
)
from meshpacs.testing.dcmtk import dcmtk_env

SOURCES = ("orthanc", "meshpacs")
OPERATIONS = ("move", "get")
DEST_AET = "STORESCP"  # bench_ingest.Storescp's AE title
MOVE_AET = "MOVESCU"
GET_AET = "GETSCU"

MOVESCU = ingest.require_dcmtk("movescu")
GETSCU = ingest.require_dcmtk("getscu")


# -- sources -------------------------------------------------------------------------------


class OrthancSource(ingest.Orthanc):
    """Orthanc with its defaults; the C-MOVE destination and both SCUs are known modalities."""

    def __init__(self, work: Path, dest_port: int) -> None:
        super().__init__(work)
        self._orthanc = OrthancProcess(
            work / "orthanc",
            aet="ORTHANC",
            modalities={
                "storescp": Modality(DEST_AET, dest_port),
                "movescu": Modality(MOVE_AET, dest_port),  # port unused: it only asks
                "getscu": Modality(GET_AET, dest_port),  # C-GET answers on its association
            },
        )
        self.port = self._orthanc.dicom_port

    def stores_unchanged(self, digests: set[bytes]) -> bool:
        """True if Orthanc's storage area holds every loaded dataset byte for byte."""
        got = set()
        for path in self._orthanc.storage_dir.rglob("*"):
            if path.is_file() and path.parent != self._orthanc.storage_dir:
                data = path.read_bytes()
                if data[128:132] == b"DICM":
                    got.add(ingest.dataset_digest(data))
        return got == digests


class MeshpacsSource(ingest.Meshpacs):
    """A meshpacs node, default config, with the benchmark's storescp as a C-MOVE destination."""

    def __init__(self, work: Path, dest_port: int) -> None:
        super().__init__(work)
        self.dest_port = dest_port

    def start(self) -> None:
        done = subprocess.run(
            [ingest.MESHPACS, "init", "--site-id", "bench", "--ae-title", self.aet,
             "--dir", str(self.site), "--dicom-port", str(self.port), "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"meshpacs init failed: {done.stderr}")
        config = self.site / "config.toml"
        text = config.read_text().replace('bind = "0.0.0.0"', 'bind = "127.0.0.1"', 1)
        text = text.replace(
            "[dicom.destinations]\n",
            f'[dicom.destinations]\n{DEST_AET} = "127.0.0.1:{self.dest_port}"\n',
            1,
        )
        config.write_text(text)
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [ingest.MESHPACS, "node", "run", "--config", str(config)],
                env=dcmtk_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.pid = self._proc.pid
        ingest.wait_echo(self.aet, self.port, self._proc, self.log)


Source = OrthancSource | MeshpacsSource


# -- runs ----------------------------------------------------------------------------------


@dataclass
class Run:
    source: str
    operation: str
    round: int
    seconds: float
    server_cpu_s: float
    received: int
    identical: int
    ok: bool
    problem: str


def wait_files(directory: Path, count: int, settle: float = 10.0) -> None:
    """Wait until ``directory`` holds ``count`` files (storescp may still be closing one)."""
    deadline = time.monotonic() + settle
    while len(list(directory.iterdir())) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def check_received(directory: Path, digests: set[bytes], exact: bool) -> tuple[int, int, str]:
    """Files received, how many hold an original dataset byte for byte, and any problem."""
    got = [ingest.dataset_digest(p.read_bytes()) for p in directory.iterdir() if p.is_file()]
    identical = len(set(got) & digests)
    if len(got) != len(digests):
        return len(got), identical, f"{len(got)}/{len(digests)} instances arrived"
    if exact and identical != len(digests):
        return len(got), identical, f"{identical}/{len(digests)} datasets byte-identical"
    return len(got), identical, ""


def retrieve(
    operation: str, source: Source, study_uid: str, dest_port: int, count: int, work: Path
) -> tuple[float, str]:
    """One timed movescu or getscu run into ``work/received``; seconds and any failure text."""
    out = work / "received"
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]
    address = ["127.0.0.1", str(source.port)]
    storescp = None
    if operation == "move":
        storescp = ingest.Storescp(work, fork=False)  # writes into work/received
        storescp.port = dest_port
        storescp.start()  # answers C-ECHO before the clock starts
        args = [MOVESCU, "-S", "-aet", MOVE_AET, "-aec", source.aet, "-aem", DEST_AET,
                *address, *keys]  # fmt: skip
    else:
        out.mkdir()
        args = [GETSCU, "-S", "-aet", GET_AET, "-aec", source.aet, "+B", "-od", str(out),
                *address, *keys]  # fmt: skip
    log = work / f"{operation}scu.log"
    try:
        with log.open("wb") as sink:
            started = time.perf_counter()
            done = subprocess.run(args, env=dcmtk_env(), stdout=sink, stderr=sink)
            seconds = time.perf_counter() - started
    finally:
        if storescp is not None:
            wait_files(out, count)
            storescp.stop()
    failure = "" if done.returncode == 0 else log.read_text(errors="replace")[-300:]
    return seconds, failure


def one_run(
    kind: str,
    operation: str,
    round_no: int,
    source: Source,
    study_uid: str,
    dest_port: int,
    digests: set[bytes],
    exact: bool,
    scratch: Path,
    profile: Callable[[int, str], subprocess.Popen[bytes] | None],
) -> Run:
    work = scratch / f"{kind}-{operation}-{round_no}"
    work.mkdir()
    profiler = profile(source.pid, f"{operation}-r{round_no}") if kind == "meshpacs" else None
    try:
        cpu0 = ingest.cpu_seconds(source.pid)
        seconds, failure = retrieve(operation, source, study_uid, dest_port, len(digests), work)
        cpu1 = ingest.cpu_seconds(source.pid)
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=60)
    received, identical, problem = check_received(work / "received", digests, exact)
    shutil.rmtree(work, ignore_errors=True)
    problem = failure or problem
    return Run(kind, operation, round_no, seconds, cpu1 - cpu0, received, identical,
               not problem, problem)  # fmt: skip


# -- set-up --------------------------------------------------------------------------------


def make_source(kind: str, work: Path, dest_port: int) -> Source:
    if kind == "orthanc":
        return OrthancSource(work / "orthanc-src", dest_port)
    return MeshpacsSource(work / "meshpacs-src", dest_port)


def load(source: Source, files: Sequence[Path], digests: set[bytes], work: Path) -> float:
    """Start ``source`` and push the study into it with one storescu; seconds taken."""
    work.mkdir(parents=True)
    source.start()
    seconds, failure = ingest.push(source, files, 1, work)
    problem = failure or source.verify(digests)
    if problem:
        raise RuntimeError(f"loading {type(source).__name__} failed: {problem}")
    return seconds


def generated(instances: Iterator[SynthInstance], study_uids: set[str]) -> Iterator[SynthInstance]:
    for instance in instances:
        study_uids.add(instance.study_instance_uid)
        yield instance


# -- summary -------------------------------------------------------------------------------


def summarise(runs: list[Run], images: int, nbytes: int) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for run in runs:
        key = f"{run.source}/{run.operation}"
        table.setdefault(key, {"source": run.source, "operation": run.operation,
                               "seconds": [], "cpu": [], "identical": [], "ok": True})  # fmt: skip
        table[key]["seconds"].append(run.seconds)
        table[key]["cpu"].append(run.server_cpu_s)
        table[key]["identical"].append(run.identical)
        table[key]["ok"] &= run.ok
    for row in table.values():
        row.update(ingest.throughput(row["seconds"], row["cpu"], images, nbytes))
        row["all_identical"] = all(n == images for n in row["identical"])
        del row["cpu"], row["identical"]
    ratios: dict[str, dict[str, float]] = {}
    for operation in OPERATIONS:
        mesh, orth = table.get(f"meshpacs/{operation}"), table.get(f"orthanc/{operation}")
        if mesh is not None and orth is not None:
            ratios[f"C-{operation.upper()} meshpacs/orthanc"] = {
                "best": round(orth["best_s"] / mesh["best_s"], 2),
                "median": round(orth["median_s"] / mesh["median_s"], 2),
            }
    return {"results": list(table.values()), "ratios": ratios}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300, help="CT slices (default 300)")
    parser.add_argument("--rows", type=int, default=512, help="matrix rows = cols (default 512)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per source and operation")
    parser.add_argument(
        "--sources", default=",".join(SOURCES), help="comma-separated subset of sources"
    )
    parser.add_argument(
        "--operations", default=",".join(OPERATIONS), help="comma-separated: move, get"
    )
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temp dir)")
    parser.add_argument(
        "--py-spy", type=Path, metavar="DIR",
        help="record a py-spy profile of the node during every meshpacs run into DIR",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    operations = [o.strip() for o in args.operations.split(",") if o.strip()]
    if set(sources) - set(SOURCES) or not sources:
        parser.error(f"--sources: choose from {', '.join(SOURCES)}")
    if set(operations) - set(OPERATIONS) or not operations:
        parser.error(f"--operations: choose from {', '.join(OPERATIONS)}")
    if "orthanc" in sources and not orthanc_available():
        print("bench_retrieve: Orthanc not installed; leaving it out", file=sys.stderr)
        sources.remove("orthanc")
        if not sources:
            return 1

    root = Path(tempfile.mkdtemp(prefix="meshpacs-bench-", dir=args.workdir))
    say: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    profile = ingest.make_profiler(args.py_spy, say)
    dest_port = free_port()
    running: dict[str, Source] = {}
    runs: list[Run] = []
    unchanged: bool | None = None
    try:
        spec = StudySpec(series=(SeriesSpec("CT", args.count, args.rows, args.rows),))
        study_uids: set[str] = set()
        files = write_study(root / "src", generated(generate_study(2026, spec), study_uids))
        (study_uid,) = study_uids
        nbytes = sum(p.stat().st_size for p in files)
        digests = {ingest.dataset_digest(p.read_bytes()) for p in files}  # warms the cache
        load_s: dict[str, float] = {}
        for kind in sources:
            source = running[kind] = make_source(kind, root, dest_port)
            load_s[kind] = round(load(source, files, digests, root / f"load-{kind}"), 3)
            say(f"# loaded {kind} in {load_s[kind]:.2f} s")
        if isinstance(orthanc := running.get("orthanc"), OrthancSource):
            unchanged = orthanc.stores_unchanged(digests)
            say(f"# Orthanc stores the loaded files unchanged: {unchanged}")
        say(f"# {len(files)} files, {nbytes} bytes ({nbytes / 1e6:.1f} MB); {args.rounds} "
            f"rounds; sources {sources}; operations {operations}")  # fmt: skip
        scratch = root / "runs"
        scratch.mkdir()
        for round_no in range(1, args.rounds + 1):
            shift = (round_no - 1) % len(sources)
            order = sources[shift:] + sources[:shift]
            for operation in operations:
                for kind in order:
                    exact = kind == "meshpacs" or bool(unchanged)
                    run = one_run(kind, operation, round_no, running[kind], study_uid,
                                  dest_port, digests, exact, scratch, profile)  # fmt: skip
                    runs.append(run)
                    say(json.dumps(asdict(run)))
        summary = summarise(runs, len(files), nbytes)
    finally:
        for source in running.values():
            source.stop()
        shutil.rmtree(root, ignore_errors=True)
    summary["setup"] = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "files": len(files),
        "bytes": nbytes,
        "rounds": args.rounds,
        "load_s": load_s,
        "orthanc_stores_unchanged": unchanged,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "movescu": ingest.tool_version([MOVESCU, "--version"]),
        "orthanc": ingest.tool_version(["/usr/sbin/Orthanc", "--version"]),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0 if runs and all(r.ok for r in runs) else 1


def print_table(summary: dict[str, Any]) -> None:
    setup = summary["setup"]
    print(f"{setup['files']} files, {setup['bytes'] / 1e6:.1f} MB, {setup['rounds']} rounds, "
          f"{setup['cpus']} CPUs; Orthanc stores files unchanged: "
          f"{setup['orthanc_stores_unchanged']}")  # fmt: skip
    print()
    print("| source | operation | best img/s | median img/s | best MB/s | median MB/s "
          "| median s | server CPU s | all ok | byte-identical |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in summary["results"]:
        print(f"| {r['source']} | C-{r['operation'].upper()} | {r['best_img_s']:.0f} "
              f"| {r['median_img_s']:.0f} | {r['best_mb_s']:.0f} | {r['median_mb_s']:.0f} "
              f"| {r['median_s']:.2f} | {r['median_server_cpu_s']:.2f} | {r['ok']} "
              f"| {r['all_identical']} |")  # fmt: skip
    print()
    for name, ratio in summary["ratios"].items():
        print(f"{name}: best {ratio['best']:.2f}, median {ratio['median']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
