"""Running a laid-out testbed: every site's node as its own process, started and stopped by PID.

``start_nodes`` launches ``python -m meshpacs node run --config ...`` for each site (its
own session, so a Ctrl-C in the terminal that ran ``testbed up`` does not reach it; logs
in ``logs/<site>.log``), records each PID in ``testbed.json`` and returns once every
node answers C-ECHO. ``stop_nodes`` stops exactly those processes: it signals a PID only
while that PID still runs a meshpacs node with that site's config (a PID reused by
another program after a crash is left alone), SIGTERM first, SIGKILL after a grace time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from meshpacs.dicom.scu import Target, echo
from meshpacs.errors import ConfigError
from meshpacs.testbed.layout import TestbedPlan, TestbedSite

__all__ = ["is_our_process", "start_nodes", "stop_nodes"]

_CALLING_AE = "MESH_TESTBED"


def _log_path(plan: TestbedPlan, site: TestbedSite) -> Path:
    return Path(plan.root) / "logs" / f"{site.site_id}.log"


def start_nodes(plan: TestbedPlan, *, timeout: float = 60.0) -> None:
    """Start every site's node and wait until all answer C-ECHO; PIDs go in the plan."""
    env = {**os.environ, "TCP_NODELAY": "1", "PYTHONUNBUFFERED": "1"}
    for site in plan.sites:
        with open(_log_path(plan, site), "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "meshpacs", "node", "run", "--config", site.config],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        site.pid = process.pid
    plan.save()
    deadline = time.monotonic() + timeout
    for site in plan.sites:
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


def is_our_process(site: TestbedSite) -> bool:
    """Whether ``site.pid`` still runs this site's meshpacs node (not a reused PID)."""
    if site.pid is None:
        return False
    try:
        cmdline = Path(f"/proc/{site.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    stat = Path(f"/proc/{site.pid}/stat").read_text(errors="replace")
    if ") Z" in stat:  # a zombie: it has exited already
        return False
    return b"meshpacs" in cmdline and site.config.encode() in cmdline


def stop_nodes(plan: TestbedPlan, *, grace: float = 20.0) -> list[str]:
    """Stop every node this testbed started; returns the site IDs that were running."""
    running = [site for site in plan.sites if is_our_process(site)]
    for site in running:
        assert site.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(site.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(is_our_process(site) for site in running) and time.monotonic() < deadline:
        time.sleep(0.1)
    for site in running:
        if is_our_process(site):
            assert site.pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(site.pid, signal.SIGKILL)
    for site in plan.sites:
        site.pid = None
    plan.save()
    return [site.site_id for site in running]


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
