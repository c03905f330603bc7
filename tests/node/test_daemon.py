"""The node as an administrator runs it: `meshpacs node run` in a subprocess, real dcmtk peers.

The crash test is the durability promise made concrete: storescu pushes 200 instances, the
node is killed with SIGKILL at a random acknowledged instance (the seed is printed), and
after a restart every instance storescu saw acknowledged is catalogued and byte-identical.
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path

import pydicom
import pytest

from meshpacs.dicom.part10 import dataset_offset
from meshpacs.metadata.catalog import Catalog
from meshpacs.node.site import create_site
from meshpacs.testing import SeriesSpec, StudySpec, generate_study, write_study
from meshpacs.testing.dcmtk import dcmtk_env, dcmtk_tool
from meshpacs.testing.loopback import free_port
from tests.node.logfmt import parse_line

TOOLS = {name: dcmtk_tool(name) or name for name in ("storescu", "storescp", "echoscu", "findscu")}
pytestmark = pytest.mark.skipif(dcmtk_tool("storescu") is None, reason="dcmtk not installed")

MESHPACS = shutil.which("meshpacs", path=str(Path(sys.executable).parent)) or "meshpacs"
AE_TITLE = "MESHNODE"
ENV = dcmtk_env()


def make_site(root: Path) -> tuple[Path, int]:
    port = free_port()
    created = create_site(root / "site", "test-site", AE_TITLE, port)
    config = created.config_path
    config.write_text(config.read_text().replace('bind = "0.0.0.0"', 'bind = "127.0.0.1"'))
    return config, port


def start_node(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [MESHPACS, "node", "run", "--config", str(config)],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, env=ENV,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        echo = subprocess.run(
            [TOOLS["echoscu"], "-aec", AE_TITLE, "127.0.0.1", str(port)],
            env=ENV,
            capture_output=True,
        )
        if echo.returncode == 0:
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"node exited early:\n{log.read_text()}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"node did not answer C-ECHO:\n{log.read_text()}")


@pytest.fixture
def study(tmp_path: Path) -> Iterator[list[Path]]:
    spec = StudySpec(series=(SeriesSpec("CT", 120, 64, 64), SeriesSpec("MR", 80, 32, 32)))
    yield write_study(tmp_path / "src", generate_study(31, spec))


def stored_datasets(site: Path) -> dict[bytes, Path]:
    found = {}
    for path in (site / "instances").rglob("*.dcm"):
        data = path.read_bytes()
        found[data[dataset_offset(data) :]] = path
    return found


def phi_of(paths: list[Path]) -> set[str]:
    """Patient names and IDs (and their name components) and every UID in the files."""
    found: set[str] = set()
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        name = str(ds.get("PatientName", ""))
        found.update([name, str(ds.get("PatientID", "")), *name.split("^")])
        for element in [*ds.file_meta.iterall(), *ds.iterall()]:
            if element.VR == "UI":
                found.add(str(element.value))
    return {value for value in found if len(value) >= 3}


@pytest.mark.parametrize("form", ["kv", "json"])
def test_node_run_stores_and_stops_cleanly_on_sigterm(
    tmp_path: Path, study: list[Path], form: str
) -> None:
    config, port = make_site(tmp_path)
    config.write_text(config.read_text().replace('format = "kv"', f'format = "{form}"'))
    log = tmp_path / "node.log"
    node = start_node(config, port, log)
    try:
        push = subprocess.run(
            [TOOLS["storescu"], "-aec", AE_TITLE, "127.0.0.1", str(port), *map(str, study[:20])],
            env=ENV, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert push.returncode == 0, push.stderr
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=30) == 0
    originals = {p.read_bytes()[dataset_offset(p.read_bytes()) :] for p in study[:20]}
    assert set(stored_datasets(config.parent)) == originals
    text = log.read_text()
    logged = [parse_line(line, form) for line in text.splitlines()]  # every line, one event
    assert "node stopped" in [fields["msg"] for fields in logged]
    stored = [fields for fields in logged if fields.get("event") == "instance_stored"]
    assert len(stored) == 20
    kept = {(sha256(p.read_bytes()).hexdigest()[:12], p.stat().st_size)
            for p in stored_datasets(config.parent).values()}  # fmt: skip
    assert {(fields["instance"], int(fields["bytes"])) for fields in stored} == kept
    assert "SYNTH" not in text and "1.2.826.0.1.3680043.8.498" not in text  # no PHI, no UIDs
    phi = phi_of(study[:20])
    assert len(phi) > 20 and not [value for value in phi if value in text]


def test_kill_9_loses_nothing_that_was_acknowledged(tmp_path: Path, study: list[Path]) -> None:
    seed = random.randrange(2**31)
    print(f"crash test seed {seed}")
    kill_after = random.Random(seed).randrange(10, 190)
    config, port = make_site(tmp_path)
    log = tmp_path / "node.log"
    node = start_node(config, port, log)
    push = subprocess.Popen(
        [TOOLS["storescu"], "-v", "-aec", AE_TITLE, "127.0.0.1", str(port), *map(str, study)],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    acknowledged: list[Path] = []
    sending: Path | None = None
    assert push.stdout is not None
    for line in push.stdout:
        if m := re.search(r"Sending file: (.+)$", line):
            sending = Path(m.group(1).strip())
        elif "Received Store Response (Success)" in line and sending is not None:
            acknowledged.append(sending)
            if len(acknowledged) == kill_after:
                node.send_signal(signal.SIGKILL)
                node.wait()
    push.wait(timeout=60)
    assert len(acknowledged) == kill_after, f"seed {seed}: storescu went on after the kill"

    node = start_node(config, port, log)  # restart: recovery of a crashed node
    node.send_signal(signal.SIGTERM)
    node.wait(timeout=30)

    stored = stored_datasets(config.parent)
    for path in acknowledged:
        data = path.read_bytes()
        assert data[dataset_offset(data) :] in stored, f"seed {seed}: acknowledged {path.name} lost"

    async def missing_from_catalog() -> list[str]:
        catalog = await Catalog.open(config.parent / "catalog.sqlite")
        try:
            uids = [
                pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in acknowledged
            ]
            return [u for u in uids if not await catalog.locate("IMAGE", {"SOPInstanceUID": u})]
        finally:
            await catalog.close()

    assert asyncio.run(missing_from_catalog()) == [], f"seed {seed}"
    assert not list((config.parent / "tmp").iterdir()), "partial files survived the restart"
