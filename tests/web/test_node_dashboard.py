"""A real in-process federation: site A's dashboard, metrics and status over HTTP, and the
page as headless Chromium (Debian's ``chromium``) draws it.

The Chromium test skips only when chromium is not installed and ``CI`` is not set; under
CI a missing browser is a failure (``scripts/bootstrap`` installs it).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from meshpacs.web.token import read_token
from tests.mesh.conftest import Federation, FederationFactory, RunningSite
from tests.mesh.helpers import phi_strings, push, study, wait_protected

from .exposition import parse_exposition

CHROMIUM = shutil.which("chromium")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


async def protected_federation(
    federation: FederationFactory, workdir: Path
) -> tuple[Federation, RunningSite, set[bytes]]:
    """Four sites (k=2, n=3) with one study pushed to site A and protected."""
    fed = await federation(4, k=2, n=3)
    site = fed.site("site-a")
    instances = study(7)
    await push(site, instances, workdir)
    await wait_protected(site, {instances[0].study_instance_uid})
    return fed, site, phi_strings(instances)


def fetch(url: str, token: str | None = None) -> tuple[str, bytes]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.headers["Content-Type"], answer.read()


def protected_card(page: str) -> str:
    found = re.search(r'id="studies-protected"><div class="figure">([^<]*)</div>', page)
    assert found, page[:2000]
    return found.group(1)


async def test_the_dashboard_shows_the_pushed_study_protected(
    federation: FederationFactory, tmp_path: Path
) -> None:
    fed, site, phi = await protected_federation(federation, tmp_path / "push")
    assert site.started is not None
    url = site.plan.dashboard_url
    assert site.started.web_port == site.plan.web_port == urlsplit(url).port
    token = read_token(site.data_dir / "state" / "dashboard.token")
    assert url.endswith(f"?token={token}")

    kind, body = await asyncio.to_thread(fetch, url)
    page = body.decode()
    assert kind == "text/html; charset=utf-8"
    assert '<span id="site-id">site-a</span>' in page
    assert protected_card(page) == "1"

    base = url.split("?")[0]
    kind, body = await asyncio.to_thread(fetch, base + "metrics", token)
    metrics = parse_exposition(body.decode())
    assert metrics["meshpacs_studies"].value(state="protected") == 1
    assert metrics["meshpacs_info"].value(site="site-a") == 1
    assert metrics["meshpacs_ingest_instances_total"].value() == len(study(7))
    _, body = await asyncio.to_thread(fetch, base + "status.json", token)
    assert json.loads(body)["studies"]["protected"] == 1

    # A holder's dashboard counts the fragments it keeps for site A.
    holders = 0
    for other in fed.sites[1:]:
        _, body = await asyncio.to_thread(fetch, other.plan.dashboard_url)
        assert f'<span id="site-id">{other.site_id}</span>' in body.decode()
        _, body = await asyncio.to_thread(
            fetch,
            other.plan.dashboard_url.split("?")[0] + "metrics",
            read_token(other.data_dir / "state" / "dashboard.token"),
        )
        held = parse_exposition(body.decode()).get("meshpacs_fragments_held")
        holders += held is not None and held.value() > 0
    assert holders >= 3  # n = 3 distinct partners hold site A's bundle

    # No patient data on any of it (nor in the history file the node keeps).
    history = (site.data_dir / "state" / "history.jsonl").read_bytes()
    for served in (page.encode(), body, history):
        assert not [n for n in phi if n in served]


async def test_headless_chromium_draws_the_dashboard_of_a_running_node(
    federation: FederationFactory, tmp_path: Path
) -> None:
    if CHROMIUM is None:
        if IN_CI:
            pytest.fail("chromium is not installed; scripts/bootstrap installs it (Debian)")
        pytest.skip("chromium is not installed (Debian package chromium; scripts/bootstrap)")
    _, site, _ = await protected_federation(federation, tmp_path / "push")
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        # Chromium's own calls home (updates, sync, QUIC probes) would only be refused here,
        # many at a time; they have nothing to do with drawing a localhost page.
        "--disable-quic",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--dump-dom",
        site.plan.dashboard_url,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # so a browser that hangs is stopped with all its helpers
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 90)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    dom = out.decode()
    assert '<span id="site-id">site-a</span>' in dom
    assert protected_card(dom) == "1"
    assert "No recovery running." in dom
    assert "<svg" in dom  # the protection chart (the node recorded a snapshot at start)
