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
   side by side in turns (``--find-path`` picks one); the same through a plain-socket
   SCU in a process of its own that only frames PDUs and reads each status (the node's
   time at its DICOM port, without a client's own per-answer work); and findscu against
   a server replaying the direct path's recorded answers at once (findscu's own floor
   for the same bytes);
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
import contextlib
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import build_context, dsutils, pdu_primitives
from pynetdicom._globals import APPLICATION_CONTEXT_NAME
from pynetdicom.pdu import A_ASSOCIATE_RQ

from meshpacs.dicom import pdu
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


_STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
_PENDING = (0xFF00, 0xFF01)


@dataclass(frozen=True)
class _RawFind:
    """What a plain-socket SCU sends for one C-FIND: prepared before the clock starts."""

    associate: bytes
    find: bytes

    @classmethod
    def of(cls, level: str, match: dict[str, str]) -> _RawFind:
        primitive = pdu_primitives.A_ASSOCIATE()
        primitive.application_context_name = APPLICATION_CONTEXT_NAME
        primitive.calling_ae_title = "BENCH_PACS"
        primitive.called_ae_title = _AE_TITLE
        context = build_context(_STUDY_FIND, [_EXPLICIT_LE])
        context.context_id = 1
        primitive.presentation_context_definition_list = [context]
        max_length = pdu_primitives.MaximumLengthNotification()
        max_length.maximum_length_received = 16384
        class_uid = pdu_primitives.ImplementationClassUIDNotification()
        class_uid.implementation_class_uid = "1.2.826.0.1.3680043.9.7433.9"
        primitive.user_information = [max_length, class_uid]
        rq = A_ASSOCIATE_RQ()
        rq.from_primitive(primitive)
        identifier = Dataset()
        identifier.QueryRetrieveLevel = level
        for key in _RETURN_KEYS[level]:
            setattr(identifier, key, match.get(key, ""))
        data = dsutils.encode(identifier, False, True)
        assert data is not None
        command = pdu.encode_command({
            0x0002: pdu.uid_value(_STUDY_FIND), 0x0100: pdu.us_value(0x0020),
            0x0110: pdu.us_value(1), 0x0700: pdu.us_value(0), 0x0800: pdu.us_value(1),
        })  # fmt: skip
        find = pdu.p_data_pdu(1, command) + pdu.p_data_pdus(1, data, command=False, max_pdu=16384)
        return cls(bytes(rq.encode()), find)


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = _read_exactly(sock, pdu.HEADER_LENGTH)
    kind, length = pdu.parse_header(header)
    return kind, _read_exactly(sock, length)


def _read_exactly(sock: socket.socket, length: int) -> bytes:
    data = bytearray()
    while len(data) < length:
        chunk = sock.recv(length - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return bytes(data)


def _raw_findscu(port: int, request: _RawFind) -> tuple[float, int]:
    """Association, one C-FIND and release over a plain socket, reading only the statuses:
    (ms, answers). What the node takes at its port, with next to no client in it."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request.associate)
        if _read_pdu(sock)[0] != pdu.A_ASSOCIATE_AC:
            raise RuntimeError("association not accepted")
        sock.sendall(request.find)
        answers, status = 0, None
        while status is None or status in _PENDING:
            kind, body = _read_pdu(sock)
            if kind != pdu.P_DATA_TF:
                raise RuntimeError(f"PDU type 0x{kind:02x} before the final status")
            for pdv in pdu.iter_pdvs(memoryview(body)):
                if pdv.is_command:  # one fragment each: the node's answers fit a 16 KiB PDU
                    status = pdu.decode_command(pdv.data).us(0x0900)
                    answers += status in _PENDING
        sock.sendall(pdu.release_rq_pdu())
        _read_pdu(sock)
    return (time.perf_counter() - started) * 1000, answers


class _RawScuProcess:
    """:func:`_raw_findscu` in a process of its own, kept for the whole run: in the node's
    process its reading would compete with the node's threads for the GIL."""

    def __init__(self) -> None:
        self._child = subprocess.Popen(
            [sys.executable, __file__, "--raw-scu-worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, port: int, name: str) -> tuple[float, int]:
        assert self._child.stdin is not None and self._child.stdout is not None
        self._child.stdin.write(json.dumps([port, name]) + "\n")
        self._child.stdin.flush()
        line = self._child.stdout.readline()
        if not line:
            raise RuntimeError("the plain-socket SCU process ended")
        ms, answers = json.loads(line)
        return float(ms), int(answers)

    def close(self) -> None:
        assert self._child.stdin is not None
        self._child.stdin.close()
        self._child.wait(10)


def _raw_scu_worker() -> None:
    """The child of :class:`_RawScuProcess`: one [port, query name] a line, one answer a line."""
    requests: dict[str, _RawFind] = {}
    for line in sys.stdin:
        port, name = json.loads(line)
        if name not in requests:
            requests[name] = _RawFind.of(*_QUERIES[name])
        print(json.dumps(_raw_findscu(port, requests[name])), flush=True)


def _recorded(port: int, level: str, match: dict[str, str]) -> list[bytes]:
    """Every PDU the node at ``port`` sends findscu asking ``match``, in order (a proxy)."""
    stream = bytearray()
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def forward() -> None:
            client, _ = listener.accept()
            with client, socket.create_connection(("127.0.0.1", port)) as node:
                down = threading.Thread(target=_pump, args=(node, client, stream))
                down.start()
                _pump(client, node, None)
                down.join()

        proxy = threading.Thread(target=forward)
        proxy.start()
        _findscu(listener.getsockname()[1], level, match)
        proxy.join()
    pdus, offset = [], 0
    while offset < len(stream):
        _, length = pdu.parse_header(stream[offset : offset + pdu.HEADER_LENGTH])
        pdus.append(bytes(stream[offset : offset + pdu.HEADER_LENGTH + length]))
        offset += pdu.HEADER_LENGTH + length
    return pdus


def _pump(source: socket.socket, sink: socket.socket, copy: bytearray | None) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            if copy is not None:
                copy += data
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _replaying(listener: socket.socket, pdus: list[bytes]) -> None:
    """Answer each association with the recorded PDUs: the accept, then every answer at once
    when the identifier's last fragment is in, then the release reply. No work per answer."""
    accept, answers, release = pdus[0], b"".join(pdus[1:-1]), pdus[-1]
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return  # the listener was closed: done
        with client, contextlib.suppress(OSError):
            while True:
                kind, body = _read_pdu(client)
                if kind == pdu.A_ASSOCIATE_RQ:
                    client.sendall(accept)
                elif kind == pdu.P_DATA_TF and body[5] & 0x03 == 0x02:  # last dataset fragment
                    client.sendall(answers)
                elif kind == pdu.A_RELEASE_RQ:
                    client.sendall(release)
                    break


_PATHS = {"direct": True, "pynetdicom": False}  # AeSettings.direct_find
_DICOM_QUERIES = ("study, PatientName=SMI*", "study, PatientName=SMITH*", "study, PatientID exact")


def _summary(runs: list[tuple[float, int]]) -> dict[str, float]:
    times = [ms for ms, _ in runs]
    return {
        "answers": runs[-1][1],
        "median_ms": round(statistics.median(times), 1),
        "worst_ms": round(max(times), 1),
    }


async def _find_through_dicom(
    catalog: Catalog, tmp: Path, repeat: int, paths: list[str]
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """The issue's query as a PACS asks it: dcmtk findscu against the node's own Q/R SCP
    (meshpacs.dicom.qr over this catalog), timed from start to the last answer.

    One AE per receive path (``direct``: meshpacs.dicom.find_receiver, the node's default;
    ``pynetdicom``: its C-FIND SCP), over the same catalog, asked in turns so that the
    machine's drift falls on both alike; in the same turns a plain-socket SCU asks each
    path (``at_the_port``), and findscu asks a server replaying what the direct path sent
    (``findscu_replayed``, when that path is measured)."""
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
    figures: dict[str, dict[str, dict[str, dict[str, float]]]] = {
        "findscu": {path: {} for path in paths},
        "at_the_port": {path: {} for path in paths},
        "findscu_replayed": {},
    }
    raw_scu = _RawScuProcess()
    try:
        ports = {path: await asyncio.to_thread(ae.start) for path, ae in aes.items()}
        for name in _DICOM_QUERIES:
            level, match = _QUERIES[name]
            with socket.create_server(("127.0.0.1", 0)) as replay:
                if "direct" in ports:
                    pdus = await asyncio.to_thread(_recorded, ports["direct"], level, match)
                    threading.Thread(target=_replaying, args=(replay, pdus), daemon=True).start()
                runs: dict[str, list[tuple[float, int]]] = {}
                for _ in range(repeat):
                    for path in paths:
                        ms = await asyncio.to_thread(_findscu, ports[path], level, match)
                        runs.setdefault(f"findscu {path}", []).append(ms)
                        ms = await asyncio.to_thread(raw_scu.ask, ports[path], name)
                        runs.setdefault(f"at_the_port {path}", []).append(ms)
                    if "direct" in ports:
                        replayed = await asyncio.to_thread(
                            _findscu, replay.getsockname()[1], level, match
                        )
                        runs.setdefault("findscu_replayed direct", []).append(replayed)
            for kind, kind_runs in runs.items():
                where, path = kind.split()
                figures[where].setdefault(path, {})[name] = _summary(kind_runs)
    finally:
        raw_scu.close()
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
            dicom = await _find_through_dicom(catalog, Path(tmp), args.repeat, paths)
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
        "find_through_dicom": dicom["findscu"],
        "find_at_the_port": dicom["at_the_port"],
        "findscu_replayed": dicom["findscu_replayed"],
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
    for key, client, what in (
        ("find_through_dicom", "findscu", "association and every answer included"),
        ("find_at_the_port", "plain-socket SCU", "the node at its port"),
        ("findscu_replayed", "findscu, answers replayed", "findscu's own floor"),
    ):
        for path, finds in figures[key].items():
            for name, find in finds.items():
                lines.append(
                    f"{client} ({path} path) {name}: {find['answers']} answers,"
                    f" median {find['median_ms']:.1f} ms, worst {find['worst_ms']:.1f} ms ({what})"
                )
    inside = figures["find"]["study, PatientName=SMI*"]["median_ms"]
    for path, finds in figures["find_through_dicom"].items():
        outside = finds["study, PatientName=SMI*"]["median_ms"]
        port = figures["find_at_the_port"][path]["study, PatientName=SMI*"]["median_ms"]
        lines.append(
            f"the issue's query: median {inside:.1f} ms in the catalog, {port:.1f} ms at the"
            f" node's DICOM port, {outside:.1f} ms through findscu ({path} path), against the"
            " 200 ms target"
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
    parser.add_argument("--raw-scu-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_scu_worker:
        _raw_scu_worker()
        return
    figures = asyncio.run(run(args, lambda m: print(m, file=sys.stderr, flush=True)))
    print(json.dumps(figures, indent=2) if args.json else _verdict(figures))


if __name__ == "__main__":
    main()
