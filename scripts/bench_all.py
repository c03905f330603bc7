#!/usr/bin/env python3
"""The benchmark suite: six stages, each against its anchor, at several sizes, and its report.

Runs each benchmark script of the earlier issues as a subprocess with ``--json``, one size
case after another, and keeps what each printed beside what this script measured of it:

* ``scripts/bench_codec.py``: the bundle codec against raw zfec + AES-256-GCM (issue 2);
* ``scripts/bench_ingest.py``: a node's C-STORE ingest against dcmtk storescp and Orthanc
  (issue 3);
* ``scripts/bench_retrieve.py``: a study served back by the node (dcmtk movescu's C-MOVE
  into storescp, getscu's C-GET) against Orthanc serving the same files (issue 3; no
  target was set for it, the ratio is shown as it is);
* ``scripts/bench_backup.py``: backup across a loopback federation against a plain mutual-TLS
  copy of the same bytes and the codec's encode (issue 4);
* ``scripts/bench_recover.py``: recovery through the mesh into an empty Orthanc against an
  Orthanc-to-Orthanc C-MOVE of the same studies (issue 5);
* ``scripts/bench_catalog.py``: a made-up catalog of a million instances, C-FIND against
  the 200 ms target (in the catalog and through findscu) and ingest into the full catalog
  against an empty one, the 0.8 target (issue 8).

Every anchor is measured by the same script in the same run, interleaved with what it is
compared to; this script only chooses the data size. The size cases (``--sizes``):

* ``small``: about 10 MB in 2 studies;
* ``medium``: about 200 MB in 8 studies;
* ``large``: about 1 GB in 16 studies;
* ``huge``: one study of about 1 GB.

The codec encodes the case's data as one bundle, and ingest and retrieve move it as one CT
series, so none of them sees the number of studies: their ``huge`` command is the
``large`` one, run once and shown at both. The catalog's size is its number of instances,
not study data: 100,000 at ``small`` (a check of the machinery, no verdict) and the
targets' 1,000,000 at every other case, so a full run fills it once and shows that run at
medium, large and huge. For every run it keeps the wall time, the peak resident memory
of the largest process of the run (the script or any process it started and reaped:
``wait4``'s ``ru_maxrss``) and the peak of the summed resident memory of the script and
all its descendants (``/proc``, sampled every 0.5 s).

It writes ``docs/bench/results.json`` (every run's command, exit code, measurements and the
script's JSON), one PNG per stage (throughput of the stage and its anchors by size; for
the catalog, C-FIND times against 200 ms and the two ingest rates) and one of time and
memory against data size, and rewrites the generated summary of ``docs/benchmarks.md``
between its markers, with a table of every figure that has a target, met or by how much
not; the hand-written sections around them are left as they are. Each table and figure
names the command that produced it.

``--quick`` runs the small case with one round (three repeats for the codec and the
catalog's C-FINDs) and writes into a fresh temporary directory (``summary.md`` there, not
docs/benchmarks.md) unless ``--out`` and ``--doc`` say otherwise: its figures are a check
of the machinery, not the reference figures. ``--from-results FILE`` redraws the figures
and the summary from a kept results.json without running anything.

How long a full run takes (an estimate, not measured: scaled from the quick run, whose
benchmarks took 126 s on this 2-CPU machine with other work on it, and from each script's
documented run at its default size in docs/benchmarks.md): about 40-50 minutes on a quiet
machine, longer on a loaded one. By case: small 3-4 min, medium about 9 (the catalog's
million-instance run is 3-4 of them: its fill at ~9,000 instances/s), large about 20,
huge about 7 (backup and recovery only; the rest reuse large). Ingest at large
dominates (about 7-9 min: three rounds of a 1 GB series into Orthanc at ~75 MB/s, on
one and on four associations, beside storescp and the node), then retrieve, backup and
recovery at large (3-4 min each). The codec at 1 GB holds ~5 GB of buffers; retrieve at
large keeps the series in three places at once (the files, Orthanc, the node), a few GB
of temporary disk. Stages run one at a time, so an interrupted run (Ctrl-C or SIGTERM)
keeps and draws what has finished.

    scripts/bench_all                          # every size (40-50 min; a quiet machine)
    scripts/bench_all --quick                  # small only, into a temp dir (a few minutes)
    scripts/bench_all --sizes small,medium --stages codec,ingest
    scripts/bench_all --from-results docs/bench/results.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
DOC = ROOT / "docs" / "benchmarks.md"
FIGURES = ROOT / "docs" / "bench"
BEGIN = "<!-- bench_all:summary:begin (generated by scripts/bench_all; edits here are lost) -->"
END = "<!-- bench_all:summary:end -->"
SAMPLE_SECONDS = 0.5
CT_SLICE_BYTES = 512 * 512 * 2  # bench_ingest's slices: 512x512, 16-bit (plus ~1.5 kB header)


@dataclass(frozen=True)
class Size:
    name: str
    bytes: int
    studies: int
    instances: int  # the catalog stage's size: instances in the catalog
    label: str


# The catalog's targets are stated for a million instances, so every case but the quick
# one asks for exactly that: one run, shown at each (run_plans runs a command once).
CATALOG_TARGET_INSTANCES = 1_000_000
SIZES = {
    s.name: s
    for s in (
        Size("small", 10_000_000, 2, 100_000, "about 10 MB in 2 studies"),
        Size("medium", 200_000_000, 8, CATALOG_TARGET_INSTANCES, "about 200 MB in 8 studies"),
        Size("large", 1_000_000_000, 16, CATALOG_TARGET_INSTANCES, "about 1 GB in 16 studies"),
        Size("huge", 1_000_000_000, 1, CATALOG_TARGET_INSTANCES, "one study of about 1 GB"),
    )
}
STAGES = ("codec", "ingest", "retrieve", "backup", "recover", "catalog")
DATA_STAGES = tuple(s for s in STAGES if s != "catalog")  # measured in MB/s of study data
SCRIPT_OF = {stage: f"bench_{stage}.py" for stage in STAGES}
SUBJECT = {
    "codec": "codec",
    "ingest": "meshpacs",
    "retrieve": "meshpacs",
    "backup": "backup",
    "recover": "mesh",
}
TITLES = {
    "codec": "Bundle codec vs raw zfec + AES-256-GCM (issue 2)",
    "ingest": "C-STORE ingest vs dcmtk storescp and Orthanc (issue 3)",
    "retrieve": "C-MOVE and C-GET from the node vs from Orthanc (issue 3)",
    "backup": "Backup across a loopback federation vs a plain TLS copy (issue 4)",
    "recover": "Recovery through the mesh vs an Orthanc-to-Orthanc C-MOVE (issue 5)",
    "catalog": "The catalog at scale: C-FIND and ingest on a full catalog (issue 8)",
}
# What a stage's table alone does not say: its anchor's set-up, or why it has no target.
NOTES = {
    "retrieve": "A rebuilt or second PACS pulling a study back: dcmtk `movescu` asks the"
    " source to C-MOVE the whole study (one CT series) to a fresh dcmtk `storescp +B`, and"
    " `getscu +B` C-GETs it on its own association; the sources are the meshpacs node and"
    " Orthanc 1.10 with its defaults, both loaded with the same files, asked in turns. The"
    " anchor is Orthanc as the C-MOVE/C-GET SCP (it sends to dcmtk, not to a second"
    " Orthanc: the Orthanc-to-Orthanc C-MOVE is the recovery stage's anchor). Issue 3 set no"
    " target for serving a study, so the ratios are shown without a verdict.",
}
FIND_TARGET_MS = 200.0  # issue 8: a study-level C-FIND with a patient-name wildcard
FULL_OVER_EMPTY_TARGET = 0.8  # issue 8: ingest falls by at most 20% on a full catalog


# -- what to run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    stage: str
    size: str
    args: tuple[str, ...]  # the script's arguments, --json included

    @property
    def script(self) -> str:
        return SCRIPT_OF[self.stage]

    def command(self) -> str:
        """The command as a reader types it in the repository."""
        return shlex.join([".venv/bin/python", f"scripts/{self.script}", *self.args])


def stage_args(stage: str, size: Size, rounds: int | None) -> list[str]:
    """The script's own options for this much data; rounds None keeps the script's default."""
    gb = f"{size.bytes / 1e9:g}"
    if stage == "codec":
        args = ["--size-mib", str(max(1, round(size.bytes / 2**20)))]
        if rounds is not None:
            args += ["--repeat", str(max(3, rounds))]  # best of fewer than 3 is noise
    elif stage in ("ingest", "retrieve"):  # one CT series, bench_ingest's slices
        args = ["--count", str(max(2, round(size.bytes / CT_SLICE_BYTES)))]
    elif stage == "catalog":
        args = ["--instances", str(size.instances)]
        if rounds is not None:  # ingest probes; every C-FIND a median of at least 3
            args += ["--rounds", str(rounds), "--repeat", str(max(3, rounds))]
    else:
        args = ["--gb", gb, "--studies", str(size.studies)]
    if rounds is not None and stage not in ("codec", "catalog"):
        args += ["--rounds", str(rounds)]
    return [*args, "--json"]


def plan_runs(sizes: Sequence[str], stages: Sequence[str], rounds: int | None) -> list[Plan]:
    return [
        Plan(stage, name, tuple(stage_args(stage, SIZES[name], rounds)))
        for name in sizes
        for stage in stages
    ]


# -- running one benchmark -------------------------------------------------------------------


@dataclass
class Measured:
    exit_code: int
    wall_seconds: float
    max_rss_bytes: int
    peak_tree_rss_bytes: int
    stdout: str


def descendants(root: int) -> list[int]:
    """root and every process below it, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0  # gone, or a kernel thread


class TreeSampler(threading.Thread):
    """Keeps the peak of the summed RSS of a process and its descendants."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak = pid, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, sum(rss_bytes(p) for p in descendants(self.pid)))
            self.done.wait(SAMPLE_SECONDS)


def run_measured(argv: Sequence[str], log: Path) -> Measured:
    """Run argv with stdout kept and stderr into log; SIGTERM it if this script is stopped."""
    with tempfile.TemporaryFile("w+") as out, log.open("w") as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=ROOT)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.send_signal(signal.SIGTERM)  # the scripts stop what they started on SIGTERM
            proc.wait(timeout=120)
            raise
        finally:
            sampler.done.set()
            sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        out.seek(0)
        return Measured(proc.returncode, wall, usage.ru_maxrss * 1024, sampler.peak, out.read())


def parse_json(stdout: str) -> dict[str, Any] | None:
    try:
        value = json.loads(stdout)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def execute(plan: Plan, logs: Path, say: Callable[[str], None]) -> dict[str, Any]:
    log = logs / f"{plan.stage}-{plan.size}.log"
    say(f"bench_all: {plan.stage} at {plan.size}: {plan.command()}")
    measured = run_measured([sys.executable, str(SCRIPTS / plan.script), *plan.args], log)
    result = parse_json(measured.stdout)
    say(
        f"bench_all:   exit {measured.exit_code}, {measured.wall_seconds:.0f} s, largest"
        f" process {measured.max_rss_bytes / 1e6:.0f} MB,"
        f" all {measured.peak_tree_rss_bytes / 1e6:.0f} MB"
    )
    return {
        "stage": plan.stage,
        "size": plan.size,
        "command": plan.command(),
        "exit_code": measured.exit_code,
        "wall_seconds": round(measured.wall_seconds, 2),
        "max_rss_bytes": measured.max_rss_bytes,
        "peak_tree_rss_bytes": measured.peak_tree_rss_bytes,
        "log": str(log),
        "error": None if result is not None else f"no JSON on stdout (exit {measured.exit_code})",
        "result": result,
        "same_as": None,
    }


def run_plans(
    plans: Sequence[Plan],
    runner: Callable[[Plan], dict[str, Any]],
    saved: Callable[[list[dict[str, Any]]], None],
) -> list[dict[str, Any]]:
    """Run every plan once per distinct command; a repeated command reuses the first run."""
    runs: list[dict[str, Any]] = []
    first: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
    for plan in plans:
        key = (plan.stage, plan.args)
        if key in first:
            runs.append({**first[key], "size": plan.size, "same_as": first[key]["size"]})
        else:
            first[key] = runner(plan)
            runs.append(first[key])
        saved(runs)
    return runs


# -- the figures each script reports ----------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """A figure a script reports, beside the target an earlier issue set for it (if any)."""

    name: str
    value: float | None
    target: float | None
    at_most: bool = False  # the target is a ceiling (a time), not a floor (a ratio)
    unit: str = ""

    def met(self) -> bool | None:
        if self.value is None or self.target is None:
            return None
        return self.value <= self.target if self.at_most else self.value >= self.target

    def gap(self) -> float | None:
        """How far the figure is from its target when it misses it, else None."""
        if self.met() is not False:
            return None
        assert self.value is not None and self.target is not None
        return abs(self.value - self.target)


def series(stage: str, result: dict[str, Any]) -> dict[str, float]:
    """MB/s (10^6 bytes/s, best of the rounds) of the stage and its anchors, stage first."""
    if stage == "codec":
        best = result["mb_per_s_best"]
        return {
            "codec encode": best["codec_encode"],
            "raw zfec+AES encode": best["raw_pipeline_encode"],
            "codec decode (worst case)": best["codec_decode_worst"],
            "raw zfec+AES decode": best["raw_pipeline_decode_worst"],
        }
    if stage == "ingest":
        names = {"meshpacs": "meshpacs", "orthanc": "Orthanc", "storescp": "storescp"}
        rows = sorted(result["results"], key=lambda r: (r["associations"], r["receiver"]))
        return {
            f"{names.get(r['receiver'], r['receiver'])}, {r['associations']} assoc.": r["best_mb_s"]
            for r in rows
        }
    if stage == "retrieve":
        names = {"meshpacs": "meshpacs", "orthanc": "Orthanc"}
        rows = sorted(result["results"], key=lambda r: (-len(r["operation"]), r["source"]))
        return {
            f"{names.get(r['source'], r['source'])} C-{r['operation'].upper()}": r["best_mb_s"]
            for r in rows  # move before get, meshpacs before Orthanc
        }
    if stage == "backup":
        best = result["mb_per_s_best"]
        return {
            "backup": best["backup"],
            "plain TLS copy": best["tls_copy"],
            "codec encode": best["codec"],
            "TLS copy + fsync": best["tls_copy_durable"],
        }
    if stage == "recover":
        return {
            "mesh recovery": result["mesh"]["mb_per_s_best"],
            "Orthanc C-MOVE": result["orthanc"]["mb_per_s_best"],
        }
    raise ValueError(f"unknown stage {stage!r}")


def checks(stage: str, result: dict[str, Any]) -> list[Check]:
    """The figures each script states against its anchor or its target, with the target."""
    if stage == "codec":
        return [
            Check("codec / raw, encode", result["ratio_encode"], result["target"]),
            Check("codec / raw, decode", result["ratio_decode"], result["target"]),
        ]
    if stage == "ingest":
        out = []
        for mode, entry in result["ratios"].items():
            one = mode.startswith("1 ")
            out.append(Check(f"meshpacs / Orthanc, {mode}", entry.get("meshpacs/orthanc best"),
                             1.3 if one else None))  # fmt: skip
            out.append(Check(f"meshpacs / storescp, {mode}",
                             entry.get("meshpacs/storescp best"), None))  # fmt: skip
        return out
    if stage == "retrieve":  # issue 3 set no target for serving a study: the ratio is the news
        return [
            Check(f"{name.replace('meshpacs/orthanc', 'meshpacs / Orthanc')}", entry["best"], None)
            for name, entry in result["ratios"].items()
        ]
    if stage == "backup":
        return [Check("backup / min(codec, TLS copy)", result["ratio"], result["target"])]
    if stage == "recover":
        return [Check("mesh / Orthanc C-MOVE", result["ratio"], result["ratio_target"])]
    if stage == "catalog":
        return catalog_checks(result)
    raise ValueError(f"unknown stage {stage!r}")


def data_bytes(stage: str, result: dict[str, Any]) -> int:
    if stage == "codec":
        return int(result["size_bytes"])
    if stage in ("ingest", "retrieve"):
        return int(result["setup"]["bytes"])
    if stage == "backup":
        return int(result["rounds"][0]["bytes"])
    return int(result["bytes"])


def studies_of(stage: str, result: dict[str, Any]) -> int:
    if stage == "backup":
        return int(result["studies_per_round"])
    if stage == "recover":
        return len(result["setup"]["studies"])
    return 1  # one bundle (codec), one series (ingest, retrieve)


def stage_seconds(stage: str, result: dict[str, Any]) -> float | None:
    """The time the stage itself took on the data (median of the rounds where there are some)."""
    if stage == "codec":
        return data_bytes(stage, result) / (float(result["mb_per_s_median"]["codec_encode"]) * 1e6)
    if stage == "ingest":
        ones = [r for r in result["results"] if r["receiver"] == "meshpacs"]
        ones.sort(key=lambda r: r["associations"])
        return float(ones[0]["median_s"]) if ones else None
    if stage == "retrieve":
        moves = [
            r for r in result["results"] if (r["source"], r["operation"]) == ("meshpacs", "move")
        ]
        return float(moves[0]["median_s"]) if moves else None
    if stage == "backup":
        return statistics.median(float(r["seconds"]["backup"]) for r in result["rounds"])
    times = [
        float(r["mesh"]["seconds"]) for r in result["rounds"] if r["mesh"]["seconds"] is not None
    ]
    return statistics.median(times) if times else None


STAGE_TIME_MEANS = {
    "codec": "codec encode of one bundle (median)",
    "ingest": "storescu into the node, one association (median)",
    "retrieve": "movescu of the study from the node into storescp, association included (median)",
    "backup": "bundles planned to stored (median of rounds)",
    "recover": "meshpacs recover until every instance is in Orthanc (median)",
}


def usable(runs: Iterable[dict[str, Any]], stage: str) -> list[dict[str, Any]]:
    return [r for r in runs if r["stage"] == stage and r["result"] is not None]


# -- the catalog's figures ---------------------------------------------------------------------


def find_targeted(query: str) -> bool:
    """The queries issue 8's C-FIND target is about: study level, a patient-name wildcard."""
    return query.startswith("study, PatientName=") and "*" in query


def query_label(query: str) -> str:
    level, _, match = query.partition(", ")
    return match if level == "study" else f"{match} ({level} level)"


def catalog_checks(result: dict[str, Any]) -> list[Check]:
    """Ingest full/empty and every name-wildcard C-FIND (in the catalog, through findscu on
    each receive path) against issue 8's targets, which are stated for a million instances:
    a smaller catalog's figures are shown without a verdict."""
    full_size = int(result["instances"]) >= CATALOG_TARGET_INSTANCES

    def target(value: float) -> float | None:
        return value if full_size else None

    out = [Check("ingest full / empty", result["ingest_full_over_empty"],
                 target(FULL_OVER_EMPTY_TARGET))]  # fmt: skip
    for query, find in result["find"].items():
        if find_targeted(query):
            out.append(Check(find_check_name(query, IN_CATALOG), find["median_ms"],
                             target(FIND_TARGET_MS), at_most=True, unit=" ms"))  # fmt: skip
    for path, finds in result.get("find_through_dicom", {}).items():
        for query, find in finds.items():
            if find_targeted(query):
                out.append(Check(find_check_name(query, f"findscu, {path}"), find["median_ms"],
                                 target(FIND_TARGET_MS), at_most=True, unit=" ms"))  # fmt: skip
    return out


IN_CATALOG = "in the catalog"


def find_check_name(query: str, place: str) -> str:
    """The name catalog_checks gives the figure of query asked at place (a find_rows key)."""
    if place == IN_CATALOG:
        return f"C-FIND {query_label(query)}, {IN_CATALOG}"
    return f"findscu {query_label(query)}, {place.removeprefix('findscu, ')} path"


def find_rows(result: dict[str, Any]) -> list[tuple[str, int, dict[str, float]]]:
    """(query, matches, median ms by where it was asked: IN_CATALOG or 'findscu, <path>')."""
    rows = []
    for query, find in result["find"].items():
        times = {IN_CATALOG: float(find["median_ms"])}
        for path, finds in result.get("find_through_dicom", {}).items():
            if query in finds:
                times[f"findscu, {path}"] = float(finds[query]["median_ms"])
        rows.append((query, int(find["matches"]), times))
    return rows


# -- plots ------------------------------------------------------------------------------------


def _figure(
    title: str, command: str, rows: int = 1, widths: Sequence[float] | None = None
) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        1,
        rows,
        figsize=(7.5 if rows == 1 else 11, 4.4),
        squeeze=False,
        gridspec_kw=None if widths is None else {"width_ratios": list(widths)},
    )
    figure.suptitle(title, fontsize=11)
    figure.text(0.01, 0.01, command, fontsize=7, color="0.35")
    figure.subplots_adjust(bottom=0.24, wspace=0.3)
    return figure, axes[0]


def plot_stage(runs: Sequence[dict[str, Any]], stage: str, command: str) -> Any:
    """Grouped bars: MB/s of the stage and each anchor, one group per size case."""
    chosen = usable(runs, stage)
    figure, (axes,) = _figure(TITLES[stage], command)
    labels = list(dict.fromkeys(k for r in chosen for k in series(stage, r["result"])))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        values = [series(stage, r["result"]).get(label, math.nan) for r in chosen]
        xs = [g + (i - (len(labels) - 1) / 2) * width for g in range(len(chosen))]
        mine = label.startswith(SUBJECT[stage])
        axes.bar(xs, values, width, label=label, hatch="//" if mine else None)
    axes.set_xticks(
        range(len(chosen)),
        [f"{r['size']}\n{data_bytes(stage, r['result']) / 1e6:.0f} MB" for r in chosen],
    )
    axes.set_ylabel("MB/s of study data (best of rounds)")
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return figure


def plot_catalog(runs: Sequence[dict[str, Any]], command: str) -> Any:
    """C-FIND median times against the 200 ms target (log scale: 0.2 ms to seconds), and the
    ingest rate into the full and the empty catalog, one group per catalog size."""
    from matplotlib.ticker import FuncFormatter

    chosen = sorted(usable(runs, "catalog"), key=lambda r: r["result"]["instances"])
    chosen = list({r["result"]["instances"]: r for r in chosen}.values())  # one run a size
    figure, (finds, ingest) = _figure(TITLES["catalog"], command, rows=2, widths=(1.7, 1))
    groups = [
        (f"{short_query(q)}\n{_count(r['result']['instances'])}", times)
        for r in chosen
        for q, _, times in find_rows(r["result"])
        if len(times) > 1  # the queries also asked through DICOM: the catalog is a part of it
    ]
    places = list(dict.fromkeys(p for _, times in groups for p in times))
    width = 0.8 / max(1, len(places))
    for i, place in enumerate(places):
        xs = [g + (i - (len(places) - 1) / 2) * width for g in range(len(groups))]
        values = [times.get(place, math.nan) for _, times in groups]
        finds.bar(xs, values, width, label=place, hatch="//" if "direct" in place else None)
    finds.axhline(FIND_TARGET_MS, color="0.2", linestyle="--", linewidth=1, label="target 200 ms")
    finds.set_xticks(range(len(groups)), [label for label, _ in groups], fontsize=7)
    finds.set_yscale("log")
    tallest = max((v for _, times in groups for v in times.values()), default=FIND_TARGET_MS)
    finds.set_ylim(top=max(tallest, FIND_TARGET_MS) * 30)  # room for the legend above the bars
    finds.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    finds.set_ylabel("C-FIND, ms (median; catalog instances below)")
    finds.legend(fontsize=7, ncols=2, loc="upper left")
    finds.grid(axis="y", alpha=0.3, which="both")
    xs = list(range(len(chosen)))
    for offset, key, label in ((-0.2, "ingest_empty_per_second", "empty catalog"),
                               (0.2, "ingest_full_per_second", "full catalog")):  # fmt: skip
        ingest.bar([x + offset for x in xs], [r["result"][key] for r in chosen], 0.4, label=label,
                   hatch="//" if key.startswith("ingest_full") else None)  # fmt: skip
    for x, run in zip(xs, chosen, strict=True):
        ratio = run["result"]["ingest_full_over_empty"]
        top = max(run["result"]["ingest_full_per_second"], run["result"]["ingest_empty_per_second"])
        ingest.annotate(f"full/empty {ratio:.2f}\n(target ≥ {FULL_OVER_EMPTY_TARGET:g})",
                        (x, top), ha="center", fontsize=7, textcoords="offset points",
                        xytext=(0, 3))  # fmt: skip
    ingest.set_xticks(xs, [f"{_count(r['result']['instances'])} instances" for r in chosen])
    ingest.set_ylabel("instances/s, one a commit (median of probes)")
    ingest.margins(y=0.2)
    ingest.legend(fontsize=7, loc="lower right")
    ingest.grid(axis="y", alpha=0.3)
    return figure


def short_query(query: str) -> str:
    label = query_label(query).replace("PatientName=", "name ")
    return label.replace("PatientID", "ID").replace(" (patient level)", ", patients")


def _count(instances: int) -> str:
    return f"{instances / 1e6:g}M" if instances >= 1_000_000 else f"{instances / 1e3:g}k"


def plot_scaling(runs: Sequence[dict[str, Any]], command: str) -> Any:
    """Stage time and peak memory against data size, a line per stage, studies marked."""
    from matplotlib.ticker import FuncFormatter

    figure, (times, memory) = _figure("Time and memory against the data size", command, rows=2)
    for stage in DATA_STAGES:
        chosen = sorted(
            (r for r in usable(runs, stage) if r["same_as"] is None),
            key=lambda r: (data_bytes(stage, r["result"]), -studies_of(stage, r["result"])),
        )
        if not chosen:
            continue
        xs = [data_bytes(stage, r["result"]) / 1e6 for r in chosen]
        seconds = [stage_seconds(stage, r["result"]) for r in chosen]
        (line,) = times.plot(xs, [math.nan if s is None else s for s in seconds], "o-", label=stage)
        memory.plot(xs, [r["max_rss_bytes"] / 1e6 for r in chosen], "o-", color=line.get_color(),
                    label=f"{stage}: largest process")  # fmt: skip
        memory.plot(xs, [r["peak_tree_rss_bytes"] / 1e6 for r in chosen], "s:",
                    color=line.get_color(), label=f"{stage}: all its processes")  # fmt: skip
        for x, s, r in zip(xs, seconds, chosen, strict=True):
            if s is not None:
                times.annotate(f"{studies_of(stage, r['result'])} st.", (x, s), fontsize=7,
                               textcoords="offset points", xytext=(3, 3))  # fmt: skip
    for axes, label in ((times, "seconds of the stage"), (memory, "peak RSS, MB")):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("study data, MB (st. = studies)")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3, which="both")
        # Plain numbers: a narrow log range otherwise gets labels like 1.05 x 10^1.
        axes.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axes.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if times.get_legend_handles_labels()[0]:
        times.legend(fontsize=8)
        memory.legend(fontsize=6)
    return figure


def figure_names(runs: Sequence[dict[str, Any]]) -> dict[str, str | None]:
    """File name of each figure ('scaling' and every stage that has a result), else None."""
    names: dict[str, str | None] = {s: f"{s}.png" if usable(runs, s) else None for s in STAGES}
    names["scaling"] = "scaling.png" if any(names[s] for s in DATA_STAGES) else None
    return names


def plot(runs: Sequence[dict[str, Any]], key: str, command: str) -> Any:
    if key == "scaling":
        return plot_scaling(runs, command)
    if key == "catalog":
        return plot_catalog(runs, command)
    return plot_stage(runs, key, command)


def write_plots(runs: Sequence[dict[str, Any]], command: str, out: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key, name in figure_names(runs).items():
        if name is None:
            continue
        figure = plot(runs, key, command)
        figure.savefig(out / name, dpi=110)
        plt.close(figure)
        written.append(out / name)
    return written


# -- the summary in docs/benchmarks.md --------------------------------------------------------


def _mbps(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.0f}"


def _amount(value: float, unit: str) -> str:
    if unit == " ms":
        return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"
    return f"{value:.2f}{unit}"


def _verdict(check: Check) -> str:
    met, gap = check.met(), check.gap()
    if met is None:
        return ""
    if met:
        return "met"
    assert gap is not None
    return f"**not met**: {_amount(gap, check.unit)} {'over' if check.at_most else 'short'}"


def _check(check: Check) -> str:
    """The figure, its target and the verdict: '0.63, target ≥ 0.7 (**not met**: 0.07 short)'."""
    if check.value is None:
        return "-"
    if check.target is None:
        return _amount(check.value, check.unit)
    bound = "≤" if check.at_most else "≥"
    target = f"{bound} {_amount(check.target, check.unit).replace('.00', '')}"
    return f"{_amount(check.value, check.unit)}, target {target} ({_verdict(check)})"


def _case(run: dict[str, Any]) -> str:
    same = f" (the {run['same_as']} run)" if run["same_as"] else ""
    return f"{run['size']}{same}"


def _outcome(run: dict[str, Any]) -> str:
    if run["result"] is None:
        return f"failed: {run['error']}"
    return "ok" if run["exit_code"] == 0 else f"exit {run['exit_code']} (problems: see its JSON)"


def stage_section(stage: str, runs: Sequence[dict[str, Any]], image: str | None,
                  command: str) -> list[str]:  # fmt: skip
    mine = [r for r in runs if r["stage"] == stage]
    lines = [f"### {TITLES[stage]}", ""]
    if stage in NOTES:
        lines += [NOTES[stage], ""]
    done = usable(mine, stage)
    labels = list(dict.fromkeys(k for r in done for k in series(stage, r["result"])))
    names = list(dict.fromkeys(q.name for r in done for q in checks(stage, r["result"])))
    headers = ["case", "data", *(f"{x} MB/s" for x in labels), *names, "outcome"]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|---|---:|" + "---:|" * len(labels) + "---|" * len(names) + "---|")
    for run in mine:
        if run["result"] is None:
            cells = ["-"] * (1 + len(labels) + len(names))
        else:
            res = run["result"]
            speeds = series(stage, res)
            stated = {q.name: q for q in checks(stage, res)}
            cells = [f"{data_bytes(stage, res) / 1e6:,.1f} MB"]
            cells += [_mbps(speeds.get(x)) for x in labels]
            cells += [_check(stated[n]) if n in stated else "-" for n in names]
        lines.append(f"| {_case(run)} | " + " | ".join(cells) + f" | {_outcome(run)} |")
    lines += ["", "Commands (each a run of its own, anchors interleaved inside it):", ""]
    lines += [f"- {_case(r)}: `{r['command']}`" for r in mine if not r["same_as"]]
    if image is not None:
        lines += ["", f"![{stage}]({image})", "", f"Figure: `{command}`, from the runs above."]
    return [*lines, ""]


def _cases(run: dict[str, Any], runs: Sequence[dict[str, Any]]) -> str:
    """The run's size and every other size that reused it: 'medium, large, huge'."""
    same = [r["size"] for r in runs if r["stage"] == run["stage"] and r["same_as"] == run["size"]]
    return ", ".join([run["size"], *same])


def _catalog_find_cell(check: Check | None, ms: float | None) -> str:
    """The time, and the verdict where the 200 ms target applies (the header states it)."""
    if ms is None:
        return "-"
    verdict = "" if check is None or check.met() is None else f" ({_verdict(check)})"
    return _amount(ms, " ms") + verdict


def catalog_section(runs: Sequence[dict[str, Any]], image: str | None,
                    command: str) -> list[str]:  # fmt: skip
    mine = [r for r in runs if r["stage"] == "catalog" and not r["same_as"]]
    lines = [
        f"### {TITLES['catalog']}",
        "",
        f"Issue 8's targets, stated for a catalog of {CATALOG_TARGET_INSTANCES:,} instances: a"
        f" study-level C-FIND with a patient-name wildcard answered in under {FIND_TARGET_MS:g}"
        f" ms, and ingest into the full catalog at no less than {FULL_OVER_EMPTY_TARGET:g} of"
        " the rate into an empty one. This stage's size is the number of instances in the"
        " made-up catalog, not study data: `small` fills"
        f" {SIZES['small'].instances:,} (a check of the machinery, shown without verdicts),"
        f" every other case is the one run at {CATALOG_TARGET_INSTANCES:,}. C-FIND times are"
        " medians: `Catalog.find` itself, and a whole dcmtk `findscu` run against the node's"
        " Q/R SCP (association and every answer included) on each receive path (`direct`: the"
        " node's own, its default for query-only associations; `pynetdicom`: what an"
        " association that also proposes C-MOVE or C-GET gets).",
        "",
    ]
    done = [r for r in mine if r["result"] is not None]
    places = list(dict.fromkeys(p for r in done for _, _, t in find_rows(r["result"]) for p in t))
    lines += [
        f"C-FIND, median ms (the verdict: against the {FIND_TARGET_MS:g} ms target, on the"
        " study-level name wildcards of a full-size catalog):",
        "",
        "| case | instances | query | matches | " + " | ".join(places) + " |",
    ]
    lines.append("|---|---:|---|---:|" + "---:|" * len(places))
    for run in done:
        res = run["result"]
        stated = {q.name: q for q in checks("catalog", res)}
        for query, matches, times in find_rows(res):
            cells = []
            for place in places:
                check = stated.get(find_check_name(query, place))
                cells.append(_catalog_find_cell(check, times.get(place)))
            lines.append(f"| {_cases(run, runs)} | {res['instances']:,} | {query_label(query)}"
                         f" | {matches:,} | " + " | ".join(cells) + " |")  # fmt: skip
    lines += [
        "",
        "Ingest: probes of new instances, one a commit (as one storescu association sends"
        " them, `synchronous=FULL`), into the full catalog and an empty one in turns; medians"
        " of the probes. Wall and memory are of the whole run, the fill included.",
        "",
        "| case | instances | catalog file | fill | into empty | into full | full / empty"
        " | wall | largest process | all processes | outcome |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for run in mine:
        res = run["result"]
        if res is None:
            wall = f"{run['wall_seconds']:.0f} s"
            lines.append(f"| {_cases(run, runs)} |{' - |' * 6} {wall} | - | - | {_outcome(run)} |")
            continue
        (ratio,) = [q for q in checks("catalog", res) if q.name == "ingest full / empty"]
        lines.append(
            f"| {_cases(run, runs)} | {res['instances']:,} | {res['catalog_bytes'] / 1e6:,.0f} MB"
            f" | {res['fill_per_second']:,}/s | {res['ingest_empty_per_second']:,}/s"
            f" | {res['ingest_full_per_second']:,}/s | {_check(ratio)}"
            f" | {run['wall_seconds']:.0f} s | {run['max_rss_bytes'] / 1e6:,.0f} MB"
            f" | {run['peak_tree_rss_bytes'] / 1e6:,.0f} MB | {_outcome(run)} |"
        )
    lines += ["", "Commands:", ""]
    lines += [f"- {_cases(r, runs)}: `{r['command']}`" for r in mine]
    if image is not None:
        lines += ["", f"![catalog]({image})", "", f"Figure: `{command}`, from the runs above."]
    return [*lines, ""]


def targets_section(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Every figure an earlier issue set a target for, in one table, met or by how much not."""
    rows = []
    for run in runs:
        if run["result"] is None or run["same_as"]:
            continue
        for check in checks(run["stage"], run["result"]):
            if check.met() is not None:
                rows.append(
                    f"| {run['stage']} | {_cases(run, runs)} | {check.name}"
                    f" | {_amount(check.value or 0.0, check.unit)}"
                    f" | {'≤' if check.at_most else '≥'} {_amount(check.target or 0.0, check.unit)}"
                    f" | {_verdict(check)} |"
                )
    if not rows:
        return []
    return [
        "### Against the targets of the earlier issues",
        "",
        "| stage | case | figure | measured | target | verdict |",
        "|---|---|---|---:|---:|---|",
        *rows,
        "",
    ]


def scaling_section(runs: Sequence[dict[str, Any]], image: str | None, command: str) -> list[str]:
    lines = [
        "### Time and memory against the number and size of studies",
        "",
        "Stage time is what the script measured of the stage itself: "
        + "; ".join(f"{s}: {m}" for s, m in STAGE_TIME_MEANS.items())
        + ". Wall is the whole benchmark run, set-up and anchors included. Memory is of the"
        " benchmark run, not of a node alone: the largest single process (the script or"
        " anything it started, `wait4`'s `ru_maxrss`) and the peak of all its processes"
        " together (RSS sampled from /proc every 0.5 s; the anchors' processes count too).",
        "",
        "| stage | case | data | studies | stage time | wall | largest process | all processes"
        " | command |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        if run["result"] is None or run["same_as"] or run["stage"] not in DATA_STAGES:
            continue
        stage, res = run["stage"], run["result"]
        seconds = stage_seconds(stage, res)
        lines.append(
            f"| {stage} | {run['size']} | {data_bytes(stage, res) / 1e6:,.1f} MB"
            f" | {studies_of(stage, res)} | {'-' if seconds is None else f'{seconds:.2f} s'}"
            f" | {run['wall_seconds']:.0f} s | {run['max_rss_bytes'] / 1e6:,.0f} MB"
            f" | {run['peak_tree_rss_bytes'] / 1e6:,.0f} MB | `{run['command']}` |"
        )
    if image is not None:
        lines += [
            "",
            f"![time and memory]({image})",
            "",
            f"Figure: `{command}`, from the runs above.",
        ]
    return [*lines, ""]


def render_section(results: dict[str, Any], image_dir: str) -> str:
    """The generated summary, markers included; image_dir is relative to the document."""
    runs, command = results["runs"], results["command"]
    names = figure_names(runs)

    def image(key: str) -> str | None:
        name = names[key]
        return None if name is None else f"{image_dir.rstrip('/')}/{name}"

    quick = results.get("quick", False)
    heading = "## Summary (generated" + (
        "; quick run, not the reference figures)" if quick else ")"
    )
    machine = results["machine"]
    lines = [
        BEGIN,
        heading,
        "",
        f"Generated by `{command}`, started {results['started']},"
        f" {results['elapsed_seconds'] / 60:.0f} min, on {machine['cpus']} CPUs"
        f" ({machine['platform']}, Python {machine['python']}),"
        " with every size case run one after another. Each stage's anchor was measured by the"
        " same script in the same run, interleaved with the stage. MB/s is 10^6 bytes/s of"
        " study data, best of the script's rounds. Every run's JSON is in"
        f" `{image_dir.rstrip('/')}/results.json`; the sections below this one are written by"
        " hand and keep the history and the analysis.",
        "",
        "| case | study data | catalog |",
        "|---|---|---:|",
        *(
            f"| {SIZES[s].name} | {SIZES[s].label} | {SIZES[s].instances:,} instances |"
            for s in results["sizes"]
        ),
        "",
        *targets_section(runs),
    ]
    for stage in STAGES:
        if stage == "catalog":
            if any(r["stage"] == stage for r in runs):
                lines += catalog_section(runs, image(stage), command)
        elif any(r["stage"] == stage for r in runs):
            lines += stage_section(stage, runs, image(stage), command)
    if any(r["stage"] in DATA_STAGES for r in runs):
        lines += scaling_section(runs, image("scaling"), command)
    return "\n".join([*lines, END]) + "\n"


def replace_section(text: str, section: str) -> str:
    """text with its generated section replaced by section; placed before the first
    second-level heading when there is none yet. Nothing outside the markers changes."""
    begin, end = text.find(BEGIN), text.find(END)
    if begin >= 0 and end > begin:
        after = end + len(END)
        if text[after : after + 1] == "\n":
            after += 1
        return text[:begin] + section + text[after:]
    if begin >= 0 or end >= 0:
        raise ValueError("docs/benchmarks.md has only one of the bench_all markers")
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("## "):
            return "".join(lines[:i]) + section + "\n" + "".join(lines[i:])
    return text + ("\n" if text and not text.endswith("\n") else "") + section


def write_doc(doc: Path, results: dict[str, Any], figures: Path) -> None:
    image_dir = os.path.relpath(figures, doc.parent)
    text = doc.read_text() if doc.exists() else ""
    doc.write_text(replace_section(text, render_section(results, image_dir)))


# -- main -------------------------------------------------------------------------------------


def command_line(argv: Sequence[str]) -> str:
    return shlex.join(["scripts/bench_all", *argv])


def choose(value: str, allowed: Sequence[str], what: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen:
        raise SystemExit(f"bench_all: {what}: choose from {', '.join(allowed)} (got {value!r})")
    return sorted(set(chosen), key=list(allowed).index)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default=",".join(SIZES), help="comma-separated: " + ", ".join(SIZES))
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset")
    ap.add_argument("--quick", action="store_true", help="small only, one round, into a temp dir")
    ap.add_argument("--rounds", type=int, help="rounds for every script (default: its own)")
    ap.add_argument("--out", type=Path, help=f"results and figures (default {FIGURES})")
    ap.add_argument("--doc", type=Path, help=f"document to update (default {DOC})")
    ap.add_argument("--from-results", type=Path, metavar="JSON",
                    help="redraw from a results.json; run nothing")  # fmt: skip
    return ap.parse_args(argv)


def _stop_on_term(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # stop the running script by SIGTERM, keep what has run


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_term)
    say: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    if args.from_results is not None:
        results = json.loads(args.from_results.read_text())
        out = args.out or args.from_results.parent
    else:
        sizes = ["small"] if args.quick else choose(args.sizes, list(SIZES), "--sizes")
        stages = choose(args.stages, STAGES, "--stages")
        rounds = args.rounds if args.rounds is not None else (1 if args.quick else None)
        out = args.out or (
            Path(tempfile.mkdtemp(prefix="bench-all-quick-")) if args.quick else FIGURES
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / "logs").mkdir(exist_ok=True)
        results = {
            "command": command_line(argv),
            "quick": args.quick,
            "sizes": sizes,
            "stages": stages,
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "elapsed_seconds": 0.0,
            "machine": machine(),
            "runs": [],
        }
        started = time.monotonic()

        def saved(runs: list[dict[str, Any]]) -> None:  # after every run: a stop keeps the rest
            results["runs"] = runs
            results["elapsed_seconds"] = round(time.monotonic() - started, 1)
            (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

        try:
            run_plans(
                plan_runs(sizes, stages, rounds), lambda p: execute(p, out / "logs", say), saved
            )
        except KeyboardInterrupt:
            say("bench_all: interrupted; drawing what has run")
    doc = args.doc or (out / "summary.md" if results.get("quick") else DOC)
    figures = write_plots(results["runs"], results["command"], out)
    write_doc(doc, results, out)
    say(f"bench_all: wrote {out / 'results.json'}, {len(figures)} figures in {out}, and {doc}")
    failed = [r for r in results["runs"] if r["result"] is None or r["exit_code"] != 0]
    for run in failed:
        say(f"bench_all: {run['stage']} at {run['size']}: {_outcome(run)}; log {run['log']}")
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
