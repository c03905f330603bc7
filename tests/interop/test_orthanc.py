"""A real Orthanc 1.10 against a real meshpacs node, both as child processes on 127.0.0.1.

The node runs as an administrator runs it (``meshpacs init`` then ``meshpacs node run``),
with Orthanc's AE in its ``[dicom.destinations]``; Orthanc has the node as modality
``meshnode``. Every test uses its own generated study (its own seed), so they share one node
and one Orthanc without seeing each other's data.

Exactness reference: the generated files themselves. Orthanc 1.10 rewrites the dataset of
some real-world objects on ingest, but not of these synthetic ones: each test first checks
that Orthanc holds the original dataset bytes (``GET /instances/{id}/file``), so "the node
has the original bytes" and "the node has exactly what Orthanc sent" are the same claim
here, and a future Orthanc that starts rewriting them fails loudly at that check instead of
blaming the node.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshpacs.dicom.part10 import dataset_offset
from meshpacs.testing import SeriesSpec, StudySpec, SynthInstance, generate_study, write_study
from meshpacs.testing.dcmtk import dcmtk_env, dcmtk_tool
from meshpacs.testing.orthanc import (
    Modality,
    OrthancProcess,
    free_port,
    orthanc_available,
)

REPO = Path(__file__).resolve().parents[2]
LUA_SCRIPT = REPO / "docs" / "orthanc" / "autoforward.lua"
CONFIG_SNIPPET = REPO / "docs" / "orthanc" / "orthanc-meshpacs.json"
MESHPACS = shutil.which("meshpacs", path=str(Path(sys.executable).parent)) or "meshpacs"
NODE_AET = "MESHNODE"
ORTHANC_AET = "ORTHANC"
ENV = dcmtk_env()
WAIT_SECONDS = 30.0


STORESCU = dcmtk_tool("storescu")
ECHOSCU = dcmtk_tool("echoscu")

pytestmark = [
    pytest.mark.skipif(not orthanc_available(), reason="Orthanc (/usr/sbin/Orthanc) not installed"),
    pytest.mark.skipif(STORESCU is None or ECHOSCU is None, reason="dcmtk not installed"),
]


def dataset(data: bytes) -> bytes:
    """A Part 10 file's dataset bytes: everything after the file meta group."""
    return data[dataset_offset(data) :]


def small_study(seed: int, transfer_syntax: str = "explicit") -> list[SynthInstance]:
    """Three series, two modalities, small matrices: about 20 instances, 200 KB."""
    spec = StudySpec(
        series=(
            SeriesSpec("CT", 8, 64, 64),
            SeriesSpec("CT", 5, 48, 48),
            SeriesSpec("MR", 6, 32, 32),
        ),
        transfer_syntax=transfer_syntax,
    )
    return list(generate_study(seed, spec))


def wait_until(condition: Callable[[], bool], what: Callable[[], str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout:g} s: {what()}")
        time.sleep(0.2)


# -- the node -----------------------------------------------------------------------------


@dataclass
class Node:
    proc: subprocess.Popen[bytes]
    site: Path
    port: int
    log: Path

    @property
    def modality(self) -> Modality:
        return Modality(NODE_AET, self.port)

    def datasets(self) -> set[bytes]:
        """The dataset bytes of every instance file the node holds."""
        return {dataset(p.read_bytes()) for p in (self.site / "instances").rglob("*.dcm")}

    def missing(self, instances: list[SynthInstance]) -> list[SynthInstance]:
        held = self.datasets()
        return [i for i in instances if dataset(i.data) not in held]

    def assert_log_has_no_phi(self) -> None:
        text = self.log.read_text(errors="replace")
        assert "SYNTH" not in text, "a patient name reached the node's log"
        assert "1.2.826.0.1.3680043.8.498" not in text, "a UID reached the node's log"


def init_site(root: Path, port: int, destinations: dict[str, Modality]) -> Path:
    """``meshpacs init``, then the edits an administrator makes: bind, C-MOVE destinations."""
    done = subprocess.run(
        [MESHPACS, "init", "--site-id", "interop", "--ae-title", NODE_AET,
         "--dir", str(root / "site"), "--dicom-port", str(port), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = Path(json.loads(done.stdout)["config"])
    lines = "".join(f'{aet} = "{m.host}:{m.port}"\n' for aet, m in destinations.items())
    text = config.read_text()
    assert "[dicom.destinations]\n" in text and 'bind = "0.0.0.0"' in text
    text = text.replace('bind = "0.0.0.0"', 'bind = "127.0.0.1"')
    text = text.replace("[dicom.destinations]\n", "[dicom.destinations]\n" + lines)
    config.write_text(text)
    return config


def start_node(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    assert ECHOSCU is not None
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [MESHPACS, "node", "run", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ENV,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        echo = subprocess.run(
            [ECHOSCU, "-aec", NODE_AET, "127.0.0.1", str(port)], env=ENV, capture_output=True
        )
        if echo.returncode == 0:
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"node exited early:\n{log.read_text()}")
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise AssertionError(f"node did not answer C-ECHO within 30 s:\n{log.read_text()}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


# -- fixtures: one node and one plain Orthanc for the module -----------------------------


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, OrthancProcess]]:
    root = tmp_path_factory.mktemp("interop")
    node_port = free_port()
    orthanc = OrthancProcess(
        root / "orthanc",
        aet=ORTHANC_AET,
        modalities={"meshnode": Modality(NODE_AET, node_port)},
    )
    # Ports are fixed before either side starts, so each can name the other in its config.
    config = init_site(root, node_port, {ORTHANC_AET: orthanc.modality})
    log = root / "node.log"
    proc = start_node(config, node_port, log)
    node = Node(proc, config.parent, node_port, log)
    try:
        with orthanc:
            yield node, orthanc
    finally:
        status = stop_process(proc)
        assert status == 0, f"node exited with {status}:\n{log.read_text()[-4000:]}"


@pytest.fixture
def node(peers: tuple[Node, OrthancProcess]) -> Node:
    return peers[0]


@pytest.fixture
def orthanc(peers: tuple[Node, OrthancProcess]) -> OrthancProcess:
    return peers[1]


def upload(orthanc: OrthancProcess, instances: list[SynthInstance]) -> tuple[str, list[str]]:
    """Put the instances into Orthanc over REST; check it keeps their exact datasets.

    Returns the Orthanc study ID and the Orthanc instance IDs.
    """
    studies, ids = set(), []
    for instance in instances:
        answer = orthanc.upload(instance.data)
        assert answer["Status"] in ("Success", "AlreadyStored"), answer
        studies.add(answer["ParentStudy"])
        ids.append(answer["ID"])
    assert len(studies) == 1
    for instance, orthanc_id in zip(instances, ids, strict=True):
        held = orthanc.rest_raw("GET", f"/instances/{orthanc_id}/file")
        assert dataset(held) == dataset(instance.data), (
            "Orthanc changed a synthetic dataset on ingest: compare against what it sends"
        )
    return studies.pop(), ids


def lookup_study(orthanc: OrthancProcess, study_uid: str) -> str | None:
    found: list[dict[str, Any]] = orthanc.rest("POST", "/tools/lookup", study_uid)
    studies = [f["ID"] for f in found if f["Type"] == "Study"]
    return studies[0] if studies else None


# -- tests --------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "syntax"), [(101, "explicit"), (102, "rle")])
def test_orthanc_store_to_the_node_keeps_every_dataset_byte(
    node: Node, orthanc: OrthancProcess, seed: int, syntax: str
) -> None:
    instances = small_study(seed, syntax)
    study_id, _ = upload(orthanc, instances)
    answer = orthanc.rest(
        "POST", "/modalities/meshnode/store", {"Resources": [study_id], "Synchronous": True}
    )
    assert answer["InstancesCount"] == len(instances), answer
    assert answer["FailedInstancesCount"] == 0, answer
    # The node acknowledges only once durable, so the files are there as soon as the call ends.
    missing = node.missing(instances)
    assert not missing, f"{len(missing)} of {len(instances)} instances not byte-identical"
    node.assert_log_has_no_phi()


def test_lua_autoforward_sends_a_stable_study_to_the_node(node: Node, tmp_path: Path) -> None:
    """The shipped config snippet and Lua script, as an administrator would install them."""
    snippet = json.loads(CONFIG_SNIPPET.read_text())
    snippet["DicomModalities"]["meshnode"].update(AET=NODE_AET, Port=node.port)
    snippet["LuaScripts"] = [str(LUA_SCRIPT)]
    snippet["StableAge"] = 2  # Orthanc then fires OnStableStudy about 3 s after the last image
    instances = small_study(201)
    files = write_study(tmp_path / "src", instances)
    with OrthancProcess(tmp_path / "orthanc", aet="ORTHANC_LUA", config=snippet) as orthanc:
        assert STORESCU is not None
        push = subprocess.run(
            [STORESCU, "-aet", "MODALITY", "-aec", orthanc.aet,
             "127.0.0.1", str(orthanc.dicom_port), *map(str, files)],
            env=ENV, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert push.returncode == 0, push.stdout + push.stderr
        assert orthanc.instance_count() == len(instances)
        wait_until(
            lambda: not node.missing(instances),
            lambda: (
                f"{len(node.missing(instances))} of {len(instances)} instances never reached "
                f"the node; Orthanc jobs: {orthanc.rest('GET', '/jobs?expand')}\n"
                f"Orthanc log:\n{orthanc.log_tail()}"
            ),
            WAIT_SECONDS,
        )
        assert "meshpacs: forwarding stable study" in orthanc.log_tail(100_000)
    node.assert_log_has_no_phi()


def test_orthanc_queries_and_retrieves_a_deleted_study_back_from_the_node(
    node: Node, orthanc: OrthancProcess
) -> None:
    instances = small_study(301)
    study_uid = instances[0].study_instance_uid
    study_id, _ = upload(orthanc, instances)
    stored = orthanc.rest(
        "POST", "/modalities/meshnode/store", {"Resources": [study_id], "Synchronous": True}
    )
    assert stored["FailedInstancesCount"] == 0, stored
    assert not node.missing(instances)

    orthanc.rest("DELETE", f"/studies/{study_id}")
    assert lookup_study(orthanc, study_uid) is None

    query = orthanc.rest(
        "POST",
        "/modalities/meshnode/query",
        {
            "Level": "Study",
            "Query": {
                "StudyInstanceUID": study_uid,
                "PatientID": "",
                "ModalitiesInStudy": "",
                "NumberOfStudyRelatedInstances": "",
            },
        },
    )
    answers = orthanc.rest("GET", f"/queries/{query['ID']}/answers?expand&simplify")
    assert len(answers) == 1, answers
    assert answers[0]["StudyInstanceUID"] == study_uid
    assert answers[0]["PatientID"] == instances[0].patient_id
    assert int(answers[0]["NumberOfStudyRelatedInstances"]) == len(instances)
    assert set(answers[0]["ModalitiesInStudy"].split("\\")) == {"CT", "MR"}

    # C-MOVE from the node to Orthanc itself: the recovery path of a rebuilt PACS.
    orthanc.rest(
        "POST",
        f"/queries/{query['ID']}/retrieve",
        {"TargetAet": ORTHANC_AET, "Synchronous": True},
    )
    back_id = lookup_study(orthanc, study_uid)
    assert back_id is not None, "the study did not come back into Orthanc"
    back = orthanc.rest("GET", f"/studies/{back_id}/instances")
    by_uid = {i.sop_instance_uid: i for i in instances}
    got = {item["MainDicomTags"]["SOPInstanceUID"]: item["ID"] for item in back}
    assert set(got) == set(by_uid)
    for uid, orthanc_id in got.items():
        data = orthanc.rest_raw("GET", f"/instances/{orthanc_id}/file")
        assert dataset(data) == dataset(by_uid[uid].data), "a retrieved dataset differs"
    node.assert_log_has_no_phi()
