"""``stop_testbed`` signals a PID only while it still runs what the testbed started there.

Real processes stand in for nodes and Orthancs: what identifies them is their command line
in ``/proc``, so a ``sleep``, or a Python posing as a node or as ``/usr/sbin/Orthanc`` with
another config, plays a PID the kernel reused for something else; the same pose with the
site's own config plays the testbed's process, which must be stopped.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# through the module: pytest would try to collect the Test* classes imported by name
from meshpacs.testbed import layout, load_testbed
from meshpacs.testbed.processes import StoppedProcesses, stop_testbed

SLEEP = "import time; time.sleep(60)"


class Processes:
    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def sleep(self) -> subprocess.Popen[bytes]:
        return self._keep(subprocess.Popen(["sleep", "60"]))

    def node(self, config: Path) -> subprocess.Popen[bytes]:
        """Looks like ``python -m meshpacs node run --config CONFIG`` to /proc."""
        argv = [sys.executable, "-c", SLEEP, "meshpacs", "node", "run", "--config", str(config)]
        return self._keep(subprocess.Popen(argv))

    def orthanc(self, config: Path) -> subprocess.Popen[bytes]:
        """Looks like ``/usr/sbin/Orthanc CONFIG`` to /proc (argv[0] is what /proc shows)."""
        argv = ["/usr/sbin/Orthanc", "-c", SLEEP, str(config)]
        return self._keep(subprocess.Popen(argv, executable=sys.executable))

    def _keep(self, process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.started.append(process)
        return process


@pytest.fixture
def processes() -> Iterator[Processes]:
    made = Processes()
    yield made
    for process in made.started:
        if process.poll() is None:
            process.kill()
        process.wait()


def site(root: Path, site_id: str, node_pid: int, orthanc_pid: int) -> layout.TestbedSite:
    directory = root / "orthanc" / site_id
    return layout.TestbedSite(
        site_id=site_id,
        ae_title=f"MESH_{site_id.upper()}",
        host="127.0.0.1",
        dicom_port=1,
        dht_port=2,
        transport_port=3,
        config=str(root / "sites" / site_id / "config.toml"),
        data_dir=str(root / "sites" / site_id),
        phrase_file=str(root / "phrases" / f"{site_id}.phrase"),
        trusted=[],
        pid=node_pid,
        orthanc={"pid": orthanc_pid, "config": str(directory / "orthanc.json")},
    )


def test_down_stops_its_own_processes_and_leaves_reused_pids_alone(
    tmp_path: Path, processes: Processes
) -> None:
    other = tmp_path / "another-testbed"
    ours_node = processes.node(tmp_path / "sites" / "site_c" / "config.toml")
    ours_orthanc = processes.orthanc(tmp_path / "orthanc" / "site_c" / "orthanc.json")
    reused = [
        processes.sleep(),  # site_a's node PID now runs sleep
        processes.orthanc(other / "orthanc.json"),  # site_a's Orthanc PID: another Orthanc
        processes.node(other / "config.toml"),  # site_b's node PID: another testbed's node
        processes.sleep(),  # site_b's Orthanc PID now runs sleep
    ]
    plan = layout.TestbedPlan(str(tmp_path), 2, 3, 3, str(tmp_path / "ca"))
    plan.sites = [
        site(tmp_path, "site_a", reused[0].pid, reused[1].pid),
        site(tmp_path, "site_b", reused[2].pid, reused[3].pid),
        site(tmp_path, "site_c", ours_node.pid, ours_orthanc.pid),
    ]
    plan.save()

    stopped = stop_testbed(load_testbed(tmp_path), grace=10.0)

    assert stopped == StoppedProcesses(nodes=["site_c"], orthancs=["site_c"])
    assert ours_node.wait(timeout=10) == -signal.SIGTERM
    assert ours_orthanc.wait(timeout=10) == -signal.SIGTERM
    assert [p.poll() for p in reused] == [None] * len(reused)
    saved = json.loads((tmp_path / "testbed.json").read_text())
    assert [(s["pid"], s["orthanc"]["pid"]) for s in saved["sites"]] == [(None, None)] * 3


def test_down_twice_finds_nothing_to_stop(tmp_path: Path, processes: Processes) -> None:
    node = processes.node(tmp_path / "sites" / "site_a" / "config.toml")
    plan = layout.TestbedPlan(str(tmp_path), 2, 3, 3, str(tmp_path / "ca"))
    plan.sites = [site(tmp_path, "site_a", node.pid, node.pid)]  # not an Orthanc at that PID
    plan.save()
    assert stop_testbed(plan, grace=10.0) == StoppedProcesses(["site_a"], [])
    assert node.wait(timeout=10) == -signal.SIGTERM
    assert stop_testbed(load_testbed(tmp_path)) == StoppedProcesses([], [])
