"""Running a laid-out testbed: every site's node as its own process, started and stopped by PID.

``start_nodes`` launches ``python -m meshpacs node run --config ...`` for each site (its
own session, so a Ctrl-C in the terminal that ran ``testbed up`` does not reach it; logs
in ``logs/<site>.log``), records each PID in ``testbed.json`` and returns once every
node answers C-ECHO. (The sites' Orthancs are started by :mod:`meshpacs.testbed.orthanc`.)

Stopping is by PID, and only while that PID still runs what the testbed started there:
a meshpacs node with that site's config, or ``Orthanc`` with that site's Orthanc config
(``/proc/<pid>/cmdline``; a zombie counts as stopped). A PID that the kernel handed to
another program after a crash or a reboot is left alone. ``stop_testbed`` sends SIGTERM
to all of them at once (Orthancs and nodes take seconds each to wind down), waits, and
sends SIGKILL to whatever is still ours after the grace time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshpacs.dicom.scu import Target, echo
from meshpacs.errors import ConfigError
from meshpacs.testbed.layout import TestbedPlan, TestbedSite

__all__ = [
    "StoppedProcesses",
    "is_our_orthanc",
    "is_our_process",
    "orthanc_pid",
    "start_nodes",
    "stop_nodes",
    "stop_testbed",
]

_CALLING_AE = "MESH_TESTBED"
_ORTHANC_PROGRAM = b"Orthanc"
_EXEC_RETRIES = 50  # x 10 ms


@dataclass(frozen=True)
class StoppedProcesses:
    """The site IDs whose node, and whose Orthanc, were still running and were stopped."""

    nodes: list[str]
    orthancs: list[str]


def _log_path(plan: TestbedPlan, site: TestbedSite) -> Path:
    return Path(plan.root) / "logs" / f"{site.site_id}.log"


def start_nodes(
    plan: TestbedPlan,
    *,
    sites: Sequence[TestbedSite] | None = None,
    timeout: float = 60.0,
    extra_env: Mapping[str, str] | None = None,
    command_prefix: Sequence[str] = (),
) -> None:
    """Start the nodes of ``sites`` (default: every site) and wait until all answer
    C-ECHO; their PIDs go in the plan. ``extra_env`` is added to their environment (a
    fault test runs a node under libfaketime, say); ``command_prefix`` goes before the
    command (``ip netns exec NAME``, which execs it in the same process)."""
    chosen = list(plan.sites if sites is None else sites)
    env = {**os.environ, "TCP_NODELAY": "1", "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    for site in chosen:
        with open(_log_path(plan, site), "ab") as log:
            process = subprocess.Popen(
                [
                    *command_prefix,
                    *(sys.executable, "-m", "meshpacs", "node", "run", "--config", site.config),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        site.pid = process.pid
    plan.save()
    deadline = time.monotonic() + timeout
    for site in chosen:
        target = Target(site.ae_title, site.host, site.dicom_port, _CALLING_AE)
        while not echo(target, timeout=2.0):
            if site.pid is None or not is_our_process(site):
                raise ConfigError(
                    f"the node of {site.site_id} stopped while starting; see "
                    f"{_log_path(plan, site)}:\n{_tail(_log_path(plan, site))}"
                )
            if time.monotonic() > deadline:
                raise ConfigError(f"the node of {site.site_id} did not answer C-ECHO in time")
            time.sleep(0.2)


def _live_argv(pid: int | None) -> list[bytes] | None:
    """The command line ``pid`` runs, or None when it has exited (zombies included).

    A process in the middle of ``execve`` shows an empty command line for a moment (and
    ``Popen`` may already have returned), so an empty one is read again for a short while
    before it counts as "not ours" (kernel threads keep it empty).
    """
    if pid is None:
        return None
    for _ in range(_EXEC_RETRIES):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
        except OSError:
            return None
        # "pid (comm) S ...": comm may hold any character, so the state follows the LAST ")"
        if stat[stat.rfind(")") + 1 :].split()[:1] == ["Z"]:
            return None
        if cmdline:
            return cmdline.rstrip(b"\0").split(b"\0")
        time.sleep(0.01)
    return None


def is_our_process(site: TestbedSite) -> bool:
    """Whether ``site.pid`` still runs this site's meshpacs node (not a reused PID)."""
    argv = _live_argv(site.pid)
    return argv is not None and b"meshpacs" in argv and site.config.encode() in argv


def orthanc_pid(site: TestbedSite) -> int | None:
    """The PID ``testbed.json`` records for the site's Orthanc, if any."""
    pid = (site.orthanc or {}).get("pid")
    return pid if isinstance(pid, int) and not isinstance(pid, bool) else None


def is_our_orthanc(site: TestbedSite) -> bool:
    """Whether the site's recorded Orthanc PID still runs Orthanc with the site's config."""
    config = (site.orthanc or {}).get("config")
    argv = _live_argv(orthanc_pid(site))
    return (
        argv is not None
        and isinstance(config, str)
        and os.path.basename(argv[0]) == _ORTHANC_PROGRAM
        and config.encode() in argv[1:]
    )


def _terminate(processes: list[tuple[int, Callable[[], bool]]], grace: float) -> None:
    """SIGTERM each (pid, still ours?) at once, then SIGKILL those still ours after ``grace``."""
    for pid, ours in processes:
        if ours():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(ours() for _, ours in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid, ours in processes:
        if ours():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _node_process(site: TestbedSite) -> tuple[int, Callable[[], bool]]:
    assert site.pid is not None
    return site.pid, lambda: is_our_process(site)


def _orthanc_process(site: TestbedSite) -> tuple[int, Callable[[], bool]]:
    pid = orthanc_pid(site)
    assert pid is not None
    return pid, lambda: is_our_orthanc(site)


def stop_nodes(plan: TestbedPlan, *, grace: float = 20.0) -> list[str]:
    """Stop every node this testbed started; returns the site IDs that were running."""
    running = [site for site in plan.sites if is_our_process(site)]
    _terminate([_node_process(site) for site in running], grace)
    for site in plan.sites:
        site.pid = None
    plan.save()
    return [site.site_id for site in running]


def stop_testbed(plan: TestbedPlan, *, grace: float = 20.0) -> StoppedProcesses:
    """Stop every node and every Orthanc this testbed started, and nothing else."""
    nodes = [site for site in plan.sites if is_our_process(site)]
    orthancs = [site for site in plan.sites if is_our_orthanc(site)]
    _terminate(
        [_orthanc_process(site) for site in orthancs] + [_node_process(site) for site in nodes],
        grace,
    )
    for site in plan.sites:
        site.pid = None
        if site.orthanc is not None:
            site.orthanc["pid"] = None
    plan.save()
    return StoppedProcesses([site.site_id for site in nodes], [site.site_id for site in orthancs])


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
