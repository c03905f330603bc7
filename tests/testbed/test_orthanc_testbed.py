"""A testbed with a real Orthanc per site: a study pushed into a site's Orthanc is backed up
across the other sites with no further step, and ``down`` leaves no process running.

Everything a script would use comes from ``testbed.json`` as plain JSON: ports, the REST
user and password file, PIDs. The federation is started through the library, as
``meshpacs testbed up --with-orthanc`` does, to keep the test fast.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshpacs.node.config import load_config
from meshpacs.node.status import site_status
from meshpacs.testbed import create_testbed, load_testbed
from meshpacs.testbed.orthanc import start_orthancs
from meshpacs.testbed.processes import StoppedProcesses, start_nodes, stop_testbed
from meshpacs.testing.orthanc import orthanc_available
from meshpacs.testing.synth import SeriesSpec, StudySpec, generate_study

pytestmark = pytest.mark.skipif(
    not orthanc_available(), reason="Orthanc (/usr/sbin/Orthanc) not installed"
)

ORTHANC_KEYS = {"ae_title", "dicom_port", "http_port", "storage_dir", "pid"}
SITE_KEYS = {"site_id", "ae_title", "host", "dicom_port", "config", "data_dir", "phrase_file"}
STUDY = StudySpec(series=(SeriesSpec("CT", 4, 64, 64), SeriesSpec("MR", 2, 32, 32)))
PROTECT_TIMEOUT = 40.0


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has exited; its parent just has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 1 :].split()[0] != "Z"


def rest(orthanc: dict[str, Any], method: str, path: str, body: bytes | None = None) -> Any:
    """One REST call to a testbed Orthanc, with only what testbed.json tells a script."""
    password = Path(orthanc["password_file"]).read_text().strip()
    auth = base64.b64encode(f"{orthanc['user']}:{password}".encode()).decode()
    request = urllib.request.Request(orthanc["url"] + path, data=body, method=method)
    request.add_header("Authorization", f"Basic {auth}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def testbed(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "testbed"
    plan = create_testbed(root, 4, k=2, n=3, stable_seconds=1.0, pass_interval=0.5)
    try:
        start_nodes(plan)
        start_orthancs(plan, stable_age=1)
        yield root
    finally:
        stop_testbed(load_testbed(root), grace=10.0)


def test_a_study_pushed_into_orthanc_is_protected_and_down_stops_everything(
    testbed: Path,
) -> None:
    document = json.loads((testbed / "testbed.json").read_text())
    assert (document["k"], document["n"]) == (2, 3)
    sites = document["sites"]
    assert len(sites) == 4
    for site in sites:
        assert site.keys() >= SITE_KEYS and isinstance(site["pid"], int)
        orthanc = site["orthanc"]
        assert orthanc.keys() >= ORTHANC_KEYS
        assert Path(orthanc["storage_dir"]).is_relative_to(testbed / "orthanc" / site["site_id"])
        assert os.getsid(orthanc["pid"]) == orthanc["pid"]  # detached: outlives `testbed up`
        assert os.stat(orthanc["password_file"]).st_mode & 0o077 == 0
        assert rest(orthanc, "GET", "/system")["DicomAet"] == orthanc["ae_title"]
    assert len({s["orthanc"]["dicom_port"] for s in sites} | {s["dicom_port"] for s in sites}) == 8

    owner = sites[0]
    with pytest.raises(urllib.error.HTTPError) as refused:  # the REST password is required
        urllib.request.urlopen(owner["orthanc"]["url"] + "/system", timeout=10)
    assert refused.value.code == 401

    instances = list(generate_study(11, STUDY))
    for instance in instances:
        answer = rest(owner["orthanc"], "POST", "/instances", instance.data)
        assert answer["Status"] == "Success", answer

    config = load_config(Path(owner["config"]))
    deadline = time.monotonic() + PROTECT_TIMEOUT
    while (counts := site_status(config)["studies"])["protected"] < 1:
        assert time.monotonic() < deadline, (
            f"not protected in {PROTECT_TIMEOUT:.0f} s: {counts}; Orthanc jobs: "
            f"{rest(owner['orthanc'], 'GET', '/jobs?expand')}"
        )
        time.sleep(0.5)
    assert counts["total"] == 1
    log = Path(owner["orthanc"]["log"]).read_text(errors="replace")
    assert "meshpacs: forwarding stable study" in log  # the shipped autoforward.lua did it

    pids = [s["pid"] for s in sites] + [s["orthanc"]["pid"] for s in sites]
    assert all(alive(pid) for pid in pids)
    stopped = stop_testbed(load_testbed(testbed), grace=15.0)
    ids = [s["site_id"] for s in sites]
    assert stopped == StoppedProcesses(nodes=ids, orthancs=ids)
    assert [pid for pid in pids if alive(pid)] == []
