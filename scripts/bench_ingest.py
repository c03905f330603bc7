#!/usr/bin/env python3
"""C-STORE ingest benchmark: dcmtk storescu into storescp, Orthanc and a meshpacs node.

The same generated CT series (300 slices of 512x512, 16-bit, Explicit VR Little Endian,
about 157 MB, from ``meshpacs.testing``) is pushed by dcmtk ``storescu`` into three
receivers, each started fresh on an empty storage directory for every run and stopped by
PID afterwards:

* dcmtk ``storescp +B`` (bit-preserving, writes each file to disk, no fsync): the ceiling;
* Orthanc 1.10 with its defaults (fsync of every file, MD5, SQLite index);
* a meshpacs node (``meshpacs init`` + ``meshpacs node run``, default config): durable,
  i.e. every instance hashed, fsynced, renamed into place, its directory fsynced and its
  catalog row committed before the C-STORE response.

Two ways of sending: one association (one storescu), and the files split over N parallel
storescu processes (``--associations N``, each its own association; storescp runs with
``--fork`` there). Rounds are interleaved (round, then sending mode, then receiver, in an
order rotated every round) so that machine noise hits all receivers alike. ``TCP_NODELAY=1``
is in the environment of every dcmtk and Orthanc process: without it the figures measure
delayed ACKs. The timed span is storescu's whole run, association set-up included. After
each run the receiver's content is checked: storescp and meshpacs must hold every
original dataset byte for byte, Orthanc must count every instance.

    .venv/bin/python scripts/bench_ingest.py                       # 300 x 512^2, 3 rounds
    .venv/bin/python scripts/bench_ingest.py --count 60 --rows 128 --rounds 1   # quick look
    .venv/bin/python scripts/bench_ingest.py --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from meshpacs.dicom.part10 import dataset_offset
from meshpacs.testing import SeriesSpec, StudySpec, generate_study, write_study
from meshpacs.testing.dcmtk import dcmtk_env, dcmtk_tool
from meshpacs.testing.orthanc import OrthancProcess, free_port, orthanc_available

RECEIVERS = ("storescp", "orthanc", "meshpacs")
NODE_AET = "MESHBENCH"
SCU_AET = "BENCHSCU"
START_TIMEOUT = 30.0


def require_dcmtk(name: str) -> str:
    found = dcmtk_tool(name)
    if found is None:
        sys.exit(f"bench_ingest: dcmtk's {name} not found (apt-get install dcmtk)")
    return found


STORESCU = require_dcmtk("storescu")
STORESCP = require_dcmtk("storescp")
ECHOSCU = require_dcmtk("echoscu")
MESHPACS = shutil.which("meshpacs", path=str(Path(sys.executable).parent)) or "meshpacs"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def dataset_digest(data: bytes) -> bytes:
    return hashlib.sha256(data[dataset_offset(data) :]).digest()


def wait_echo(aet: str, port: int, proc: subprocess.Popen[bytes] | None, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        echo = subprocess.run(
            [ECHOSCU, "-aet", "PROBE", "-aec", aet, "127.0.0.1", str(port)],
            env=dcmtk_env(),
            capture_output=True,
        )
        if echo.returncode == 0:
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{aet} exited while starting; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{aet} did not answer C-ECHO within {START_TIMEOUT:g} s")
        time.sleep(0.05)


def stop_child(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


# -- receivers -----------------------------------------------------------------------------


class Receiver(Protocol):
    aet: str
    port: int
    pid: int

    def start(self) -> None: ...
    def verify(self, digests: set[bytes]) -> str | None: ...
    def stop(self) -> None: ...


class Storescp:
    """dcmtk storescp, bit-preserving; ``--fork`` when several associations come at once."""

    def __init__(self, work: Path, fork: bool) -> None:
        self.aet = "STORESCP"
        self.port = free_port()
        self.out = work / "received"
        self.log = work / "storescp.log"
        self.fork = fork
        self.pid = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.out.mkdir(parents=True)
        args = [STORESCP, "-aet", self.aet, "+B", "-od", str(self.out)]
        if self.fork:
            args.append("--fork")
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [*args, str(self.port)], env=dcmtk_env(), stdout=log, stderr=log
            )
        self.pid = self._proc.pid
        wait_echo(self.aet, self.port, self._proc, self.log)

    def verify(self, digests: set[bytes]) -> str | None:
        # A forked child may still be closing its last file when storescu has exited.
        deadline = time.monotonic() + 10
        while len(list(self.out.iterdir())) < len(digests) and time.monotonic() < deadline:
            time.sleep(0.05)
        got = {dataset_digest(p.read_bytes()) for p in self.out.iterdir()}
        return None if got == digests else f"storescp holds {len(got & digests)}/{len(digests)}"

    def stop(self) -> None:
        if self._proc is not None:
            stop_child(self._proc)


class Orthanc:
    """Orthanc with its defaults (SyncStorageArea: fsync per file, MD5 of attachments)."""

    def __init__(self, work: Path) -> None:
        self._orthanc = OrthancProcess(work / "orthanc", aet="ORTHANC")
        self.aet = self._orthanc.aet
        self.port = self._orthanc.dicom_port
        self.pid = 0

    def start(self) -> None:
        self._orthanc.start()
        self.pid = self._orthanc.pid
        wait_echo(self.aet, self.port, None, self._orthanc.log_path)

    def verify(self, digests: set[bytes]) -> str | None:
        count = self._orthanc.instance_count()
        return None if count == len(digests) else f"Orthanc counts {count}/{len(digests)}"

    def stop(self) -> None:
        self._orthanc.stop()


class Meshpacs:
    """A meshpacs node as an administrator runs it: ``meshpacs init``, ``meshpacs node run``."""

    def __init__(self, work: Path) -> None:
        self.aet = NODE_AET
        self.port = free_port()
        self.site = work / "site"
        self.log = work / "node.log"
        self.pid = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        done = subprocess.run(
            [MESHPACS, "init", "--site-id", "bench", "--ae-title", self.aet,
             "--dir", str(self.site), "--dicom-port", str(self.port), "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"meshpacs init failed: {done.stderr}")
        config = self.site / "config.toml"
        config.write_text(config.read_text().replace('bind = "0.0.0.0"', 'bind = "127.0.0.1"', 1))
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [MESHPACS, "node", "run", "--config", str(config)],
                env=dcmtk_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.pid = self._proc.pid
        wait_echo(self.aet, self.port, self._proc, self.log)

    def verify(self, digests: set[bytes]) -> str | None:
        got = {dataset_digest(p.read_bytes()) for p in (self.site / "instances").rglob("*.dcm")}
        return None if got == digests else f"meshpacs holds {len(got & digests)}/{len(digests)}"

    def stop(self) -> None:
        if self._proc is not None:
            stop_child(self._proc, timeout=30.0)


def make_receiver(kind: str, work: Path, associations: int) -> Receiver:
    if kind == "storescp":
        return Storescp(work, fork=associations > 1)
    if kind == "orthanc":
        return Orthanc(work)
    return Meshpacs(work)


# -- runs ----------------------------------------------------------------------------------


@dataclass
class Run:
    receiver: str
    associations: int
    round: int
    seconds: float
    server_cpu_s: float
    ok: bool
    problem: str


def push(
    receiver: Receiver, files: Sequence[Path], associations: int, work: Path
) -> tuple[float, str]:
    """Run storescu (one per association, in parallel); seconds and any failure text."""
    chunks = [list(files[i::associations]) for i in range(associations)]
    base = [STORESCU, "-aet", SCU_AET, "-aec", receiver.aet, "127.0.0.1", str(receiver.port)]
    logs = [work / f"storescu-{i}.log" for i in range(len(chunks))]
    started = time.perf_counter()
    procs = []
    for chunk, log in zip(chunks, logs, strict=True):
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen([*base, *map(str, chunk)], env=dcmtk_env(), stdout=out, stderr=out)
            )
    for proc in procs:
        proc.wait()
    seconds = time.perf_counter() - started
    errors = [
        log.read_text(errors="replace")[-300:]
        for proc, log in zip(procs, logs, strict=True)
        if proc.returncode != 0
    ]
    return seconds, "\n".join(errors)


def one_run(
    kind: str,
    associations: int,
    round_no: int,
    files: Sequence[Path],
    digests: set[bytes],
    scratch: Path,
    profile: Callable[[int, str], subprocess.Popen[bytes] | None],
) -> Run:
    work = scratch / f"{kind}-{associations}-{round_no}"
    work.mkdir()
    receiver = make_receiver(kind, work, associations)
    profiler = None
    try:
        receiver.start()
        if kind == "meshpacs":
            profiler = profile(receiver.pid, f"a{associations}-r{round_no}")
        cpu0 = cpu_seconds(receiver.pid)
        seconds, failure = push(receiver, files, associations, work)
        cpu1 = cpu_seconds(receiver.pid)
        problem = failure or receiver.verify(digests) or ""
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=60)
        receiver.stop()
    shutil.rmtree(work, ignore_errors=True)
    return Run(kind, associations, round_no, seconds, cpu1 - cpu0, not problem, problem)


# -- summary -------------------------------------------------------------------------------


def throughput(seconds: list[float], cpu: list[float], images: int, nbytes: int) -> dict[str, Any]:
    """Best and median rates of repeated runs of one receiver or source."""
    best, median = min(seconds), statistics.median(seconds)
    return {
        "best_s": round(best, 3),
        "median_s": round(median, 3),
        "best_img_s": round(images / best, 1),
        "median_img_s": round(images / median, 1),
        "best_mb_s": round(nbytes / best / 1e6, 1),
        "median_mb_s": round(nbytes / median / 1e6, 1),
        "median_server_cpu_s": round(statistics.median(cpu), 2),
        "seconds": [round(s, 3) for s in seconds],
    }


def summarise(runs: list[Run], images: int, nbytes: int) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for run in runs:
        key = f"{run.receiver}/{run.associations}"
        table.setdefault(key, {"receiver": run.receiver, "associations": run.associations,
                               "seconds": [], "cpu": [], "ok": True})  # fmt: skip
        table[key]["seconds"].append(run.seconds)
        table[key]["cpu"].append(run.server_cpu_s)
        table[key]["ok"] &= run.ok
    for row in table.values():
        row.update(throughput(row["seconds"], row["cpu"], images, nbytes))
        del row["cpu"]
    ratios: dict[str, dict[str, float]] = {}
    for n in sorted({r.associations for r in runs}):
        mesh, orth, scp = (table.get(f"{k}/{n}") for k in RECEIVERS[::-1])
        if mesh is None:
            continue
        entry: dict[str, float] = {}
        for name, other in (("meshpacs/orthanc", orth), ("meshpacs/storescp", scp)):
            if other is not None:
                entry[f"{name} best"] = round(other["best_s"] / mesh["best_s"], 2)
                entry[f"{name} median"] = round(other["median_s"] / mesh["median_s"], 2)
        ratios[f"{n} association{'s' if n > 1 else ''}"] = entry
    return {"results": list(table.values()), "ratios": ratios}


def tool_version(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "?"
    return out.strip().splitlines()[0] if out.strip() else "?"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300, help="CT slices (default 300)")
    parser.add_argument("--rows", type=int, default=512, help="matrix rows = cols (default 512)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per receiver and mode")
    parser.add_argument(
        "--associations", type=int, default=4,
        help="parallel storescu processes for the multi-association mode; 1 runs only one",
    )  # fmt: skip
    parser.add_argument(
        "--receivers", default=",".join(RECEIVERS), help="comma-separated subset of receivers"
    )
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temp dir)")
    parser.add_argument(
        "--py-spy", type=Path, metavar="DIR",
        help="record a py-spy profile of every meshpacs run into DIR (py-spy must be installed)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    receivers = [r.strip() for r in args.receivers.split(",") if r.strip()]
    unknown = set(receivers) - set(RECEIVERS)
    if unknown or not receivers:
        parser.error(f"--receivers: choose from {', '.join(RECEIVERS)}")
    if "orthanc" in receivers and not orthanc_available():
        print("bench_ingest: Orthanc not installed; leaving it out", file=sys.stderr)
        receivers.remove("orthanc")
    modes = [1] if args.associations <= 1 else [1, args.associations]

    root = Path(tempfile.mkdtemp(prefix="meshpacs-bench-", dir=args.workdir))
    say: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    profile = make_profiler(args.py_spy, say)
    try:
        spec = StudySpec(series=(SeriesSpec("CT", args.count, args.rows, args.rows),))
        files = write_study(root / "src", generate_study(2026, spec))
        nbytes = sum(p.stat().st_size for p in files)
        digests = {dataset_digest(p.read_bytes()) for p in files}  # also warms the page cache
        say(f"# {len(files)} files, {nbytes} bytes ({nbytes / 1e6:.1f} MB); modes {modes}; "
            f"{args.rounds} rounds; receivers {receivers}")  # fmt: skip
        scratch = root / "runs"
        scratch.mkdir()
        runs: list[Run] = []
        for round_no in range(1, args.rounds + 1):
            shift = (round_no - 1) % len(receivers)
            order = receivers[shift:] + receivers[:shift]
            for associations in modes:
                for kind in order:
                    run = one_run(kind, associations, round_no, files, digests, scratch, profile)
                    runs.append(run)
                    say(json.dumps(asdict(run)))
        summary = summarise(runs, len(files), nbytes)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary["setup"] = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "files": len(files),
        "bytes": nbytes,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "storescu": tool_version([STORESCU, "--version"]),
        "orthanc": tool_version(["/usr/sbin/Orthanc", "--version"]),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0 if all(r.ok for r in runs) else 1


def make_profiler(
    directory: Path | None, say: Callable[[str], None]
) -> Callable[[int, str], subprocess.Popen[bytes] | None]:
    if directory is None:
        return lambda pid, name: None
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        sys.exit("bench_ingest: --py-spy given but py-spy is not installed (pip install py-spy)")
    directory.mkdir(parents=True, exist_ok=True)

    def start(pid: int, name: str) -> subprocess.Popen[bytes]:
        out = directory / f"meshpacs-{name}.txt"
        say(f"# py-spy recording node {pid} into {out}")
        proc = subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--threads", "--idle", "-r", "250",
             "-f", "raw", "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)  # let py-spy attach before the push starts
        return proc

    return start


def print_table(summary: dict[str, Any]) -> None:
    setup = summary["setup"]
    print(f"{setup['files']} files, {setup['bytes'] / 1e6:.1f} MB, {setup['rounds']} rounds, "
          f"{setup['cpus']} CPUs")  # fmt: skip
    print()
    print("| receiver | associations | best img/s | median img/s | best MB/s | median MB/s "
          "| median s | server CPU s | all ok |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in summary["results"]:
        print(f"| {r['receiver']} | {r['associations']} | {r['best_img_s']:.0f} "
              f"| {r['median_img_s']:.0f} | {r['best_mb_s']:.0f} | {r['median_mb_s']:.0f} "
              f"| {r['median_s']:.2f} | {r['median_server_cpu_s']:.1f} | {r['ok']} |")  # fmt: skip
    print()
    for mode, ratios in summary["ratios"].items():
        shown = ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
        print(f"{mode}: {shown}")


if __name__ == "__main__":
    sys.exit(main())
