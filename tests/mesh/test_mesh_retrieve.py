"""Retrieving, by C-MOVE and C-FIND, studies the node no longer holds: gathered from the mesh.

The node's own disk lost the files (pruned under ``[backup] keep_local``, or the whole
site rebuilt from its phrase with ``meshpacs node restore-catalog``); a C-MOVE still
delivers every instance byte-identical, gathered on the fly from any k fragments, and a
bundle that cannot be gathered fails exactly its own instances, nothing wrong sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from meshpacs.dicom.part10 import dataset_offset
from meshpacs.node.config import Destination, load_config
from meshpacs.testing.dcmtk import dcmtk_env, dcmtk_tool
from meshpacs.testing.loopback import free_port
from meshpacs.testing.orthanc import Modality, OrthancProcess, orthanc_available
from meshpacs.testing.synth import SynthInstance

from .conftest import Federation, FederationFactory, RunningSite
from .helpers import eventually, held_catalog_records, phi_strings, push, study, wait_protected

STORESCP = dcmtk_tool("storescp")
ECHOSCU = dcmtk_tool("echoscu")
RECEIVER = "STORESCP"
MESHPACS = [sys.executable, "-m", "meshpacs"]
SUCCESS, SOME_FAILED = 0x0000, 0xB000
ALL_FAILED = 0xA702  # Refused: Out of Resources - Unable to perform sub-operations

pytestmark = pytest.mark.skipif(STORESCP is None or ECHOSCU is None, reason="dcmtk not installed")


def dataset_part(data: bytes) -> bytes:
    return data[dataset_offset(data) :]


def originals(instances: list[SynthInstance]) -> dict[str, bytes]:
    return {i.sop_instance_uid: dataset_part(i.data) for i in instances}


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk storescp, bit-preserving, accepting every syntax: (port, directory)."""
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    assert STORESCP is not None and ECHOSCU is not None
    proc = subprocess.Popen(
        [STORESCP, "-aet", RECEIVER, "+xa", "+B", "-od", str(out), str(port)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    echo = [ECHOSCU, "-aec", RECEIVER, "127.0.0.1", str(port)]
    while subprocess.run(echo, env=dcmtk_env(), capture_output=True).returncode:
        assert time.monotonic() < deadline, "storescp did not start"
        time.sleep(0.05)
    try:
        yield port, out
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def received(directory: Path) -> dict[str, bytes]:
    found = {}
    for path in directory.iterdir():
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        found[uid] = dataset_part(path.read_bytes())
    return found


async def restart_with(
    site: RunningSite, *, keep_local: float | None, destinations: dict[str, Destination]
) -> None:
    """The administrator changes ``[backup] keep_local`` and the C-MOVE destinations."""
    await site.halt()
    config = site.config
    site.config = dataclasses.replace(
        config,
        backup=dataclasses.replace(config.backup, keep_local_seconds=keep_local),
        dicom=dataclasses.replace(config.dicom, destinations=destinations),
    )
    await site.start()


def instance_rows(site: RunningSite) -> list[tuple[str, bytes, float | None]]:
    """(SOP Instance UID, SHA-256, pruned_at) of every instance in the site's catalog."""
    with sqlite3.connect(f"file:{site.data_dir / 'catalog.sqlite'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT sop_instance_uid, sha256, pruned_at FROM instances").fetchall()
    return [(str(u), bytes(s), p) for u, s, p in rows]


def store_file(site: RunningSite, sha256: bytes) -> Path:
    name = sha256.hex()
    return site.data_dir / "instances" / name[:2] / f"{name}.dcm"


def all_pruned(site: RunningSite) -> bool:
    rows = instance_rows(site)
    return bool(rows) and all(
        pruned is not None and not store_file(site, sha).exists() for _, sha, pruned in rows
    )


def scu(site: RunningSite) -> tuple[AE, int]:
    ae = AE(ae_title="TESTSCU")
    ae.dimse_timeout = 180  # a C-MOVE says nothing while its first bundle is gathered
    assert site.started is not None
    return ae, site.started.dicom_port


def c_move(site: RunningSite, study_uids: list[str], destination: str = RECEIVER) -> Dataset:
    """A Study Root C-MOVE of the studies: the final response's status, with the failed
    SOP Instance UIDs (from its identifier) as ``FailedSOPInstanceUIDList``."""
    ae, port = scu(site)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port, ae_title=site.plan.ae_title)
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uids if len(study_uids) > 1 else study_uids[0]
    final = Dataset()
    try:
        for status, answer in assoc.send_c_move(
            identifier, destination, StudyRootQueryRetrieveInformationModelMove
        ):
            if status is not None and "Status" in status:
                final = status
                if answer is not None and "FailedSOPInstanceUIDList" in answer:
                    final.FailedSOPInstanceUIDList = answer.FailedSOPInstanceUIDList
    finally:
        assoc.release()
    return final


def c_find_studies(site: RunningSite) -> list[Dataset]:
    ae, port = scu(site)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title=site.plan.ae_title)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.PatientID = ""
    query.NumberOfStudyRelatedInstances = ""
    answers = []
    try:
        for status, answer in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if status is not None and status.Status == 0xFF00 and answer is not None:
                answers.append(answer)
    finally:
        assoc.release()
    return answers


def counts(status: Dataset) -> tuple[int, int, int]:
    """(status, completed, failed) of a final C-MOVE response."""
    return (
        int(status.Status),
        int(status.get("NumberOfCompletedSuboperations", 0)),
        int(status.get("NumberOfFailedSuboperations", 0)),
    )


async def pruned_site(
    federation: FederationFactory,
    tmp_path: Path,
    destination_port: int,
    studies: int,
    destination: str = RECEIVER,
) -> tuple[Federation, RunningSite, list[list[SynthInstance]]]:
    """Five sites, 2-of-3; site-a keeps nothing once protected and holds ``studies`` studies."""
    fed = await federation(5, k=2, n=3)
    owner = fed.site("site-a")
    destinations = {destination: Destination("127.0.0.1", destination_port)}
    await restart_with(owner, keep_local=0.0, destinations=destinations)
    sent = [study(seed=300 + number, patient=number) for number in range(studies)]
    for number, instances in enumerate(sent):
        await push(owner, instances, tmp_path / f"pacs-{number}")
    await wait_protected(owner, {s[0].study_instance_uid for s in sent})
    await eventually(lambda: all_pruned(owner), 30, "local copies pruned")
    return fed, owner, sent


async def test_a_move_of_a_pruned_study_gathers_it_from_the_mesh_byte_identical(
    federation: FederationFactory, tmp_path: Path, receiver: tuple[int, Path]
) -> None:
    port, out = receiver
    _, owner, [instances] = await pruned_site(federation, tmp_path, port, studies=1)
    uid = instances[0].study_instance_uid

    # Retention still "protected": the copies brought back are pruned again at the next
    # pass, possibly while being sent; the send holds its own link to each file.
    final = await asyncio.to_thread(c_move, owner, [uid])
    assert counts(final) == (SUCCESS, len(instances), 0)
    assert received(out) == originals(instances)
    await eventually(lambda: all_pruned(owner), 30, "recalled copies pruned again")

    # Retention off: the recalled files stay in the store and the catalog says so.
    await restart_with(
        owner, keep_local=None, destinations={RECEIVER: Destination("127.0.0.1", port)}
    )
    for path in out.iterdir():
        path.unlink()
    final = await asyncio.to_thread(c_move, owner, [uid])
    assert counts(final) == (SUCCESS, len(instances), 0)
    assert received(out) == originals(instances)
    rows = instance_rows(owner)
    assert len(rows) == len(instances)
    for _, sha256, pruned in rows:
        assert pruned is None
        kept = store_file(owner, sha256).read_bytes()
        assert dataset_part(kept) in originals(instances).values()
    assert not list((owner.data_dir / "tmp" / "recall").iterdir())  # no lease or work left


def bundle_holders(site: RunningSite) -> dict[str, set[str]]:
    """Study Instance UID -> the sites holding a share of its (one) bundle."""
    with sqlite3.connect(f"file:{site.data_dir / 'catalog.sqlite'}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT s.study_uid, p.holder_site FROM placements p JOIN bundles b"
            " ON b.id = p.bundle_ref JOIN studies s ON s.id = b.study_ref"
        ).fetchall()
        bundles = db.execute("SELECT study_ref, COUNT(*) FROM bundles GROUP BY study_ref")
        assert all(int(n) == 1 for _, n in bundles)
    holders: dict[str, set[str]] = {}
    for uid, site_id in rows:
        holders.setdefault(str(uid), set()).add(str(site_id))
    return holders


async def test_a_bundle_with_too_few_holders_fails_its_own_instances_and_nothing_wrong_is_sent(
    federation: FederationFactory,
    tmp_path: Path,
    receiver: tuple[int, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # INFO, the node's default level (aiosqlite's DEBUG lines quote SQL parameters).
    caplog.set_level(logging.INFO)
    port, out = receiver
    fed, owner, sent = await pruned_site(federation, tmp_path, port, studies=4)
    holders = bundle_holders(owner)
    # n-k+1 = 2 holders of the first study's bundle go down: the pair that loses the
    # fewest other bundles, so that some studies still come back.
    first = sorted(holders[sent[0][0].study_instance_uid])
    pairs = [(a, b) for a in first for b in first if a < b]

    def lost_with(pair: tuple[str, str]) -> set[str]:
        return {uid for uid, sites in holders.items() if len(sites & set(pair)) >= 2}

    gone = min(pairs, key=lambda pair: len(lost_with(pair)))
    lost = lost_with(gone)
    for site_id in gone:
        await fed.site(site_id).halt()

    final = await asyncio.to_thread(c_move, owner, [s[0].study_instance_uid for s in sent])
    lost_instances = [i for s in sent for i in s if i.study_instance_uid in lost]
    kept_instances = [i for s in sent for i in s if i.study_instance_uid not in lost]
    # Placement follows the random bundle IDs: the pair may hold every bundle twice, and
    # when no sub-operation succeeds the SCP answers 0xA702 instead of 0xB000 (PS3.4 C.4.2).
    status = SOME_FAILED if kept_instances else ALL_FAILED
    assert counts(final) == (status, len(kept_instances), len(lost_instances))
    assert received(out) == originals(kept_instances)
    failed = final.get("FailedSOPInstanceUIDList", [])
    failed = [failed] if isinstance(failed, str) else list(failed)
    assert sorted(failed) == sorted(i.sop_instance_uid for i in lost_instances)
    # The failed instances stay pruned in the catalog; the others are back.
    back = {uid for uid, _, pruned in instance_rows(owner) if pruned is None}
    assert back.isdisjoint(i.sop_instance_uid for i in lost_instances)
    # The failures were logged, naming bundles, shares and sites, never a patient value.
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "could not be gathered" in logged
    assert [n.decode() for n in phi_strings(lost_instances) if n.decode() in logged] == []


def meshpacs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MESHPACS, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


async def rebuild_from_phrase(fed: Federation, site: RunningSite) -> RunningSite:
    """The machine is lost; a new one is set up from the phrase and the kept public files."""
    plan = fed.plan
    config_text = Path(site.plan.config).read_text()  # the administrator's reviewed config
    await site.halt()
    shutil.rmtree(site.data_dir)
    done = await asyncio.to_thread(
        meshpacs, "init", "--site-id", site.site_id, "--ae-title", site.plan.ae_title,
        "--dir", str(site.data_dir), "--phrase-file", site.plan.phrase_file, "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "recovery_phrase" not in json.loads(done.stdout)
    Path(site.plan.config).write_text(config_text)
    done = await asyncio.to_thread(
        meshpacs, "federation", "install", "--config", site.plan.config,
        "--ca", str(Path(plan.ca_dir) / "ca.pem"),
        "--cert", str(Path(plan.root) / "certs" / f"{site.site_id}.pem"),
        "--crl", str(Path(plan.ca_dir) / "crl.pem"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return RunningSite(site.plan, load_config(Path(site.plan.config)))


async def test_a_site_rebuilt_from_its_phrase_restores_its_catalog_and_retrieves_through_it(
    federation: FederationFactory, tmp_path: Path, receiver: tuple[int, Path]
) -> None:
    port, out = receiver
    fed = await federation(5, k=2, n=3)
    owner = fed.site("site-a")
    sent = [study(seed=400 + number, patient=number) for number in range(2)]
    for number, instances in enumerate(sent):
        await push(owner, instances, tmp_path / f"pacs-{number}")
    await wait_protected(owner, {s[0].study_instance_uid for s in sent})
    trusted = [fed.site("site-b"), fed.site("site-c")]
    await eventually(lambda: all(len(held_catalog_records(p)) == 2 for p in trusted), 30)

    rebuilt = await rebuild_from_phrase(fed, owner)
    done = await asyncio.to_thread(
        meshpacs, "node", "restore-catalog", "--config", owner.plan.config, "--json"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    total = sum(len(s) for s in sent)
    assert report["imported"]["studies"] == 2 and report["imported"]["instances"] == total
    assert report["records_received"] == 4  # each study from each of the two trusted peers
    again = await asyncio.to_thread(
        meshpacs, "node", "restore-catalog", "--config", owner.plan.config, "--json"
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["imported"]["instances"] == 0
    assert len(instance_rows(rebuilt)) == total
    assert all(pruned is not None for _, _, pruned in instance_rows(rebuilt))

    fed.sites[fed.sites.index(owner)] = rebuilt
    await restart_with(
        rebuilt, keep_local=0.0, destinations={RECEIVER: Destination("127.0.0.1", port)}
    )
    answers = await asyncio.to_thread(c_find_studies, rebuilt)
    assert {str(a.StudyInstanceUID) for a in answers} == {s[0].study_instance_uid for s in sent}
    assert {int(a.NumberOfStudyRelatedInstances) for a in answers} == {len(s) for s in sent}

    wanted = sent[1]
    final = await asyncio.to_thread(c_move, rebuilt, [wanted[0].study_instance_uid])
    assert counts(final) == (SUCCESS, len(wanted), 0)
    assert received(out) == originals(wanted)


@pytest.mark.skipif(not orthanc_available(), reason="Orthanc (/usr/sbin/Orthanc) not installed")
async def test_an_empty_orthanc_queries_the_node_and_retrieves_its_pruned_studies(
    federation: FederationFactory, tmp_path: Path
) -> None:
    """The story of docs/recovery-through-dicom.md: a rebuilt Orthanc simply asks the node."""
    orthanc_port = free_port()
    _, owner, sent = await pruned_site(
        federation, tmp_path, orthanc_port, studies=2, destination="ORTHANC"
    )
    assert owner.started is not None
    # The settings docs/recovery-through-dicom.md gives: a long wait for the node's answers.
    node = Modality(owner.plan.ae_title, owner.started.dicom_port).as_config()
    orthanc = OrthancProcess(
        tmp_path / "orthanc",
        aet="ORTHANC",
        config={"DicomModalities": {"meshnode": {**node, "Timeout": 600}}, "DicomScpTimeout": 300},
        dicom_port=orthanc_port,
    )
    with orthanc:
        query = await asyncio.to_thread(
            orthanc.rest,
            "POST",
            "/modalities/meshnode/query",
            {"Level": "Study", "Query": {"StudyInstanceUID": "", "PatientID": ""}},
        )
        answers = await asyncio.to_thread(orthanc.rest, "GET", f"/queries/{query['ID']}/answers")
        assert len(answers) == len(sent)
        await asyncio.to_thread(
            orthanc.rest,
            "POST",
            f"/queries/{query['ID']}/retrieve",
            {"TargetAet": "ORTHANC", "Synchronous": True},
            timeout=300,
        )
        got = {}
        for instance_id in await asyncio.to_thread(orthanc.rest, "GET", "/instances"):
            data = await asyncio.to_thread(
                orthanc.rest_raw, "GET", f"/instances/{instance_id}/file"
            )
            uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
            got[uid] = dataset_part(data)
    assert got == originals([i for s in sent for i in s])
