"""Pushing studies into a node, waiting for protection, and looking at what each site holds."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from meshpacs.dicom.scu import Outgoing, Target, send_instances
from meshpacs.store.records import owner_directory
from meshpacs.testing.synth import SeriesSpec, StudySpec, SynthInstance, generate_study, write_study
from meshpacs.transport.frames import RecordKind

from .conftest import RunningSite

SMALL_STUDY = StudySpec(series=(SeriesSpec("CT", 4, 64, 64), SeriesSpec("MR", 3, 32, 32)))
_HEX64 = re.compile(r"[0-9a-f]{64}")


def study(seed: int, patient: int = 0, spec: StudySpec = SMALL_STUDY) -> list[SynthInstance]:
    return list(generate_study(seed, spec, patient=patient))


async def push(site: RunningSite, instances: list[SynthInstance], workdir: Path) -> None:
    """C-STORE the instances to the site's node, as its PACS would; all must succeed."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = write_study(workdir, instances)
    items = [
        Outgoing(path, i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid)
        for path, i in zip(paths, instances, strict=True)
    ]
    assert site.started is not None
    target = Target(site.plan.ae_title, site.plan.host, site.started.dicom_port, "TESTPACS")
    deliveries = await asyncio.to_thread(send_instances, items, target)
    assert all(d.ok for d in deliveries), [d.detail for d in deliveries if not d.ok]


def study_states(site: RunningSite) -> dict[str, str]:
    with sqlite3.connect(f"file:{site.data_dir / 'catalog.sqlite'}?mode=ro", uri=True) as db:
        return {str(u): str(s) for u, s in db.execute("SELECT study_uid, state FROM studies")}


async def wait_protected(site: RunningSite, study_uids: Iterable[str], timeout: float = 60) -> None:
    wanted = set(study_uids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = study_states(site)
        if all(states.get(uid) == "protected" for uid in wanted):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not protected in {timeout} s: {study_states(site)}")


async def eventually(check: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
    """Wait until ``check()`` holds (the mesh works in passes, not in lockstep)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what}")
        await asyncio.sleep(0.2)


def held_fragments(site: RunningSite) -> list[Path]:
    """Fragment files this site holds for partners (``fragments/ab/<64 hex>``)."""
    root = site.data_dir / "fragments"
    return sorted(
        p for p in root.glob("[0-9a-f][0-9a-f]/*") if p.is_file() and _HEX64.fullmatch(p.name)
    )


def held_catalog_records(site: RunningSite, owner: str | None = None) -> list[Path]:
    """The sealed catalog records ``site`` keeps: every owner's, or only ``owner``'s."""
    records = site.data_dir / "records"
    if owner is None:
        root, pattern = records / "catalog", "*/*"
    else:
        root, pattern = owner_directory(records, RecordKind.CATALOG, owner), "*"
    return sorted(p for p in root.glob(pattern) if p.is_file() and _HEX64.fullmatch(p.name))


def phi_strings(instances: Iterable[SynthInstance]) -> set[bytes]:
    """Every identifying value of the test studies: names, IDs, UIDs, accession numbers."""
    import pydicom

    found: set[bytes] = set()
    for instance in instances:
        found.update(
            s.encode()
            for s in (
                instance.sop_instance_uid,
                instance.series_instance_uid,
                instance.study_instance_uid,
                instance.patient_id,
            )
        )
        from io import BytesIO

        ds = pydicom.dcmread(BytesIO(instance.data), stop_before_pixels=True)
        for keyword in ("PatientName", "AccessionNumber", "StudyDate"):
            value = str(ds.get(keyword, "") or "")
            if len(value) >= 4:
                found.add(value.encode())
    return found


def files_containing(root: Path, needles: set[bytes]) -> dict[str, list[str]]:
    """Files under ``root`` whose bytes contain any needle: {file: [needles found]}."""
    hits: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        found = [n.decode() for n in needles if n in data]
        if found:
            hits[str(path.relative_to(root))] = found
    return hits
