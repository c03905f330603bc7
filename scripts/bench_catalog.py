#!/usr/bin/env python3
"""The catalog at scale: C-FIND on a million instances, and ingest on a full catalog.

Issue 8 asks two things of the SQLite catalog (``meshpacs.metadata.catalog``):

* with 1,000,000 instances, a study-level C-FIND with a patient-name wildcard answers in
  under 200 ms;
* the ingest rate does not fall by more than 20% between an empty catalog and a full one.

What is measured, all through the catalog's real code (``Catalog.add_instances_on``, the
path the ingest writer takes, committed with ``synchronous=FULL`` like every C-STORE, and
``Catalog.find``, the path the C-FIND SCP takes, with the same ``FindQuery``):

1. the fill: ``--instances`` instances in transactions of 2,000, as fast as SQLite takes
   them (reported, not a target);
2. C-FIND at study level, each query ``--repeat`` times, median and worst: patient name
   by prefix wildcard (``SMI*``, a tenth of the patients, and ``SMITH*``, a hundredth: the
   issue's case; the name index serves it), by infix
   wildcard (``*SON*``, which no index serves: a scan), by exact Patient ID, by a
   one-month Study Date range, and a patient-level name query;
   then three of them through DICOM (dcmtk findscu, association included), against the
   node's own C-FIND path (``direct``, meshpacs.dicom.find_receiver) and pynetdicom's,
   side by side in turns (``--find-path`` picks one);
3. ingest: probes of ``--probe`` new instances in transactions of ``--batch`` (1 = one
   C-STORE per commit, as one storescu association does), ``--rounds`` into the full
   catalog and as many into an empty one, in turns (the order swapped each round), so
   the drift of this shared, noisy machine falls on both alike; the medians compared.

The made-up archive: patients of 1 to 4 studies, each of 1 to 4 series of 5 to 60
instances (about 120 instances a patient), names from 400 surnames and 100 given names,
study dates over ten years. Nothing here is real patient data.

The verdict prints ratios measured side by side in this run (full / empty ingest rate)
and the C-FIND times against the 200 ms target. Benchmarks are not tests: this script
asserts nothing about speed; it prints, and ``--json`` writes the figures for
docs/benchmarks.md.

    .venv/bin/python scripts/bench_catalog.py                         # 1,000,000 instances
    .venv/bin/python scripts/bench_catalog.py --instances 100000      # a quick look
    .venv/bin/python scripts/bench_catalog.py --json > catalog.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshpacs.dicom.ingest import CatalogWriter, IngestService
from meshpacs.dicom.qr import QueryRetrieveService
from meshpacs.dicom.scp import AeSettings, DicomAE, configure_pynetdicom
from meshpacs.dicom.storage import InstanceStore
from meshpacs.metadata.catalog import Catalog
from meshpacs.metadata.records import (
    FindQuery,
    InstanceRecord,
    PatientInfo,
    SeriesInfo,
    StudyInfo,
)
from meshpacs.testing.dcmtk import dcmtk_env, dcmtk_tool

_SYLLABLES = ("SMI", "JOHN", "WIL", "BROW", "JON", "MIL", "DAV", "GAR", "ROD", "MAR")
_ENDINGS = ("TH", "SON", "LIAMS", "N", "ES", "LER", "IS", "CIA", "RIGUEZ", "TINEZ")
_MODALITIES = ("CT", "MR", "CR", "US", "DX", "PT")
_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_FILL_BATCH = 2000


def _surnames() -> list[str]:
    """400 surnames: 10 x 10 stems and endings, four variants each (a few hundred per letter)."""
    names = [s + e for s in _SYLLABLES for e in _ENDINGS]
    return names + [n + "E" for n in names] + [n + "O" for n in names] + [n + "Y" for n in names]


@dataclass
class Archive:
    """A seeded generator of catalog records: patient by patient, in order."""

    seed: int
    start_patient: int = 0

    def records(self, count: int, received_at: float) -> Iterator[InstanceRecord]:
        rng = random.Random(self.seed)
        surnames = _surnames()
        given = [f"G{n:02d}" for n in range(100)]
        made = 0
        patient = self.start_patient
        while True:
            info = PatientInfo(
                patient_id=f"P{patient:08d}",
                issuer="",
                name=f"{rng.choice(surnames)}^{rng.choice(given)}",
                birth_date=f"19{rng.randrange(30, 99)}0{rng.randrange(1, 9)}1{rng.randrange(9)}",
                sex=rng.choice("MF"),
            )
            for study in range(rng.randint(1, 4)):
                year, month, day = 2015 + rng.randrange(10), rng.randint(1, 12), rng.randint(1, 28)
                study_info = StudyInfo(
                    study_uid=f"2.25.{patient}.{study}.{self.seed}",
                    date=f"{year}{month:02d}{day:02d}",
                    time="101500",
                    accession=f"A{patient:07d}{study}",
                    study_id=str(study + 1),
                    description="made-up study",
                    referring_physician="REF^DOCTOR",
                )
                for series in range(rng.randint(1, 4)):
                    series_info = SeriesInfo(
                        series_uid=f"2.25.{patient}.{study}.{series}.{self.seed}",
                        modality=rng.choice(_MODALITIES),
                        number=series + 1,
                        description="",
                        body_part="",
                    )
                    for number in range(rng.randint(5, 60)):
                        yield InstanceRecord(
                            sop_instance_uid=f"2.25.{patient}.{study}.{series}.{number}.{self.seed}",
                            sop_class_uid=_CT_IMAGE,
                            transfer_syntax_uid=_EXPLICIT_LE,
                            instance_number=number + 1,
                            size=rng.randrange(100_000, 600_000),
                            sha256=rng.randbytes(32),
                            calling_ae="BENCH_PACS",
                            received_at=received_at,
                            patient=info,
                            study=study_info,
                            series=series_info,
                        )
                        made += 1
                        if made == count:
                            return
            patient += 1


def _batches(records: Iterator[InstanceRecord], size: int) -> Iterator[list[InstanceRecord]]:
    batch: list[InstanceRecord] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _ingest(catalog: Catalog, records: Iterator[InstanceRecord], batch: int) -> tuple[int, float]:
    """Add the records as the ingest writer does; (instances, seconds)."""
    db = catalog.connect_writer()
    added = 0
    try:
        started = time.perf_counter()
        for chunk in _batches(records, batch):
            catalog.add_instances_on(db, chunk)
            added += len(chunk)
        return added, time.perf_counter() - started
    finally:
        db.close()


# Probes use patient numbers far above the fill's, so they add new patients and studies
# (as a PACS's new work does) instead of landing in existing ones.
_PROBE_PATIENTS = 50_000_000


async def _ingest_rate(catalog: Catalog, probe: int, batch: int, seed: int) -> dict[str, float]:
    archive = Archive(seed, start_patient=_PROBE_PATIENTS + seed * 100_000)
    added, seconds = await asyncio.to_thread(
        _ingest, catalog, archive.records(probe, time.time()), batch
    )
    return {"instances": added, "seconds": round(seconds, 3), "per_second": added / seconds}


_QUERIES: dict[str, tuple[str, dict[str, str]]] = {
    "study, PatientName=SMI*": ("STUDY", {"PatientName": "SMI*"}),
    "study, PatientName=SMITH*": ("STUDY", {"PatientName": "SMITH*"}),
    "study, PatientName=*SON*": ("STUDY", {"PatientName": "*SON*"}),
    "study, PatientID exact": ("STUDY", {"PatientID": "P00000100"}),
    "study, StudyDate one month": ("STUDY", {"StudyDate": "20200301-20200331"}),
    "patient, PatientName=SMI*": ("PATIENT", {"PatientName": "SMI*"}),
}
# What a PACS's study list asks for besides the key it matches on.
_RETURN_KEYS = {
    "STUDY": (
        "PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyDescription",
        "AccessionNumber", "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
    ),
    "PATIENT": ("PatientName", "PatientID", "PatientBirthDate", "NumberOfPatientRelatedStudies"),
}  # fmt: skip


async def _find_times(catalog: Catalog, repeat: int) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    for name, (level, match) in _QUERIES.items():
        keys = {key: "" for key in _RETURN_KEYS[level]} | match
        root = "STUDY" if level != "PATIENT" else "PATIENT"
        query = FindQuery(root, level, keys)  # type: ignore[arg-type]
        times: list[float] = []
        matches = 0
        for _ in range(repeat):
            started = time.perf_counter()
            answers = await catalog.find(query)
            times.append((time.perf_counter() - started) * 1000)
            matches = len(answers)
        figures[name] = {
            "matches": matches,
            "median_ms": round(statistics.median(times), 2),
            "worst_ms": round(max(times), 2),
        }
    return figures


_AE_TITLE = "MESH_BENCH"


def _findscu(port: int, level: str, match: dict[str, str]) -> tuple[float, int]:
    """One whole dcmtk findscu run (association included): (ms, answers)."""
    tool = dcmtk_tool("findscu")
    assert tool is not None
    argv = [
        tool,
        "-S",
        "-aet",
        "BENCH_PACS",
        "-aec",
        _AE_TITLE,
        "-k",
        f"QueryRetrieveLevel={level}",
    ]
    for key in _RETURN_KEYS[level]:
        argv += ["-k", f"{key}={match.get(key, '')}"]
    argv += ["127.0.0.1", str(port)]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=dcmtk_env(), check=False)
    ms = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"findscu failed: {done.stderr.strip().splitlines()[-1:]}")
    return ms, (done.stdout + done.stderr).count("Find Response:")


_PATHS = {"direct": True, "pynetdicom": False}  # AeSettings.direct_find


async def _find_through_dicom(
    catalog: Catalog, tmp: Path, repeat: int, paths: list[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """The issue's query as a PACS asks it: dcmtk findscu against the node's own Q/R SCP
    (meshpacs.dicom.qr over this catalog), timed from start to the last answer.

    One AE per receive path (``direct``: meshpacs.dicom.find_receiver, the node's default;
    ``pynetdicom``: its C-FIND SCP), over the same catalog, asked in turns so that the
    machine's drift falls on both alike."""
    configure_pynetdicom()
    store = InstanceStore(tmp / "instances", tmp / "tmp")
    writer = CatalogWriter(catalog)
    writer.start()
    qr = QueryRetrieveService(catalog, store, asyncio.get_running_loop(), {})
    ingest = IngestService(store, writer, max_instance_bytes=1 << 20)
    aes = {
        path: DicomAE(
            AeSettings(ae_title=_AE_TITLE, bind="127.0.0.1", port=0, direct_find=_PATHS[path]),
            ingest,
            qr,
            None,
        )
        for path in paths
    }
    figures: dict[str, dict[str, dict[str, float]]] = {path: {} for path in paths}
    try:
        ports = {path: await asyncio.to_thread(ae.start) for path, ae in aes.items()}
        for name in (
            "study, PatientName=SMI*",
            "study, PatientName=SMITH*",
            "study, PatientID exact",
        ):
            level, match = _QUERIES[name]
            runs: dict[str, list[tuple[float, int]]] = {path: [] for path in paths}
            for _ in range(repeat):
                for path in paths:
                    runs[path].append(await asyncio.to_thread(_findscu, ports[path], level, match))
            for path in paths:
                times = [ms for ms, _ in runs[path]]
                figures[path][name] = {
                    "answers": runs[path][-1][1],
                    "median_ms": round(statistics.median(times), 1),
                    "worst_ms": round(max(times), 1),
                }
    finally:
        for ae in aes.values():
            await asyncio.to_thread(ae.stop, 2.0)
        await writer.stop()
    return figures


async def _interleaved_probes(
    full: Catalog, empty: Catalog, args: argparse.Namespace, say: Any
) -> dict[str, list[dict[str, float]]]:
    """Ingest probes into both catalogs in turns, the order swapped every round, so drift
    of a shared, noisy machine falls on both alike."""
    rates: dict[str, list[dict[str, float]]] = {"full": [], "empty": []}
    seed = 1
    for round_ in range(args.rounds):
        order = [("full", full), ("empty", empty)]
        for name, catalog in order if round_ % 2 == 0 else order[::-1]:
            rates[name].append(await _ingest_rate(catalog, args.probe, args.batch, seed))
            seed += 1
        say(
            f"   round {round_ + 1}: full {rates['full'][-1]['per_second']:.0f}/s,"
            f" empty {rates['empty'][-1]['per_second']:.0f}/s"
        )
    return rates


def _median_rate(probes: list[dict[str, float]]) -> float:
    return statistics.median(p["per_second"] for p in probes)


async def run(args: argparse.Namespace, say: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meshpacs-bench-catalog-") as tmp:
        path = Path(tmp) / "catalog.sqlite"
        async with await Catalog.open(path) as catalog:
            say(f"1. filling to {args.instances:,} instances")
            _, fill_seconds = await asyncio.to_thread(
                _ingest,
                catalog,
                Archive(args.seed).records(args.instances, time.time()),
                _FILL_BATCH,
            )
            counts = await catalog.counts()
            say(f"2. C-FIND, {args.repeat} times each")
            finds = await _find_times(catalog, args.repeat)
            paths = list(_PATHS) if args.find_path == "both" else [args.find_path]
            say(f"   and through DICOM: dcmtk findscu, {args.repeat} times each, {paths}")
            dicom_finds = await _find_through_dicom(catalog, Path(tmp), args.repeat, paths)
            say(
                f"3. ingest probes of {args.probe} instances, {args.batch} a commit, into the"
                " full catalog and an empty one in turns"
            )
            async with await Catalog.open(Path(tmp) / "empty.sqlite") as empty:
                rates = await _interleaved_probes(catalog, empty, args, say)
        size = path.stat().st_size
    full_rate, empty_rate = _median_rate(rates["full"]), _median_rate(rates["empty"])
    return {
        "command": "scripts/bench_catalog.py " + " ".join(sys.argv[1:]),
        "instances": args.instances,
        "catalog_counts": counts,
        "catalog_bytes": size,
        "fill_seconds": round(fill_seconds, 1),
        "fill_per_second": round(args.instances / fill_seconds),
        "ingest_probes": rates,
        "ingest_full_per_second": round(full_rate),
        "ingest_empty_per_second": round(empty_rate),
        "ingest_full_over_empty": round(full_rate / empty_rate, 3),
        "find": finds,
        "find_through_dicom": dicom_finds,
    }


def _verdict(figures: dict[str, Any]) -> str:
    lines = [
        f"catalog of {figures['instances']:,} instances ({figures['catalog_bytes'] / 1e6:.0f} MB;"
        f" filled at {figures['fill_per_second']:,}/s)",
        f"ingest (median of {len(figures['ingest_probes']['full'])} probes each, in turns):"
        f" {figures['ingest_empty_per_second']}/s into an empty catalog,"
        f" {figures['ingest_full_per_second']}/s into the full one:"
        f" full/empty {figures['ingest_full_over_empty']:.2f} (target >= 0.80)",
    ]
    for name, find in figures["find"].items():
        lines.append(
            f"C-FIND {name}: {find['matches']} matches, median {find['median_ms']:.1f} ms,"
            f" worst {find['worst_ms']:.1f} ms"
        )
    for path, finds in figures["find_through_dicom"].items():
        for name, find in finds.items():
            lines.append(
                f"findscu ({path} path) {name}: {find['answers']} answers,"
                f" median {find['median_ms']:.1f} ms, worst {find['worst_ms']:.1f} ms"
                " (association and every answer included)"
            )
    inside = figures["find"]["study, PatientName=SMI*"]["median_ms"]
    for path, finds in figures["find_through_dicom"].items():
        outside = finds["study, PatientName=SMI*"]["median_ms"]
        lines.append(
            f"the issue's query: median {inside:.1f} ms in the catalog, {outside:.1f} ms through"
            f" DICOM ({path} path), against the 200 ms target"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--probe", type=int, default=3000, help="instances per ingest probe")
    parser.add_argument("--batch", type=int, default=1, help="instances per commit in a probe")
    parser.add_argument("--rounds", type=int, default=5, help="ingest probes into each catalog")
    parser.add_argument("--repeat", type=int, default=15, help="runs of each C-FIND")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument(
        "--find-path",
        choices=["both", *_PATHS],
        default="both",
        help="which C-FIND receive path findscu asks (both: side by side, in turns)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    figures = asyncio.run(run(args, lambda m: print(m, file=sys.stderr, flush=True)))
    print(json.dumps(figures, indent=2) if args.json else _verdict(figures))


if __name__ == "__main__":
    main()
