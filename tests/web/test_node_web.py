"""The node and its dashboard without a mesh: a taken port, ``enabled = false``, the
testbed's URLs. Real nodes in this process, mesh off, so each takes about a second."""

from __future__ import annotations

import asyncio
import logging
import socket
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from meshpacs.node.config import Setting, load_config
from meshpacs.node.daemon import NodeStarted, run_node
from meshpacs.node.site import create_site
from meshpacs.testbed import create_testbed
from meshpacs.testing.loopback import free_port
from meshpacs.web.token import read_token


async def start_and_stop(directory: Path, web: dict[str, Setting]) -> NodeStarted:
    settings: dict[tuple[str, str], Setting] = {("dicom", "bind"): "127.0.0.1"}
    settings.update({("web", key): value for key, value in web.items()})
    created = create_site(directory, "st-marys", "MESH_STMARYS", free_port(), settings)
    config = load_config(created.config_path)
    stop = asyncio.Event()
    told: list[NodeStarted] = []

    def started(info: NodeStarted) -> None:
        told.append(info)
        stop.set()

    await asyncio.wait_for(run_node(config, stop=stop, started=started, handle_signals=False), 60)
    return told[0]


async def test_a_taken_port_is_an_error_in_the_log_and_the_node_runs_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.INFO, logger="meshpacs.node"):
            info = await start_and_stop(tmp_path / "site", {"port": port})
    assert info.dicom_port > 0 and info.web_port == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"dashboard not started on 127.0.0.1 port {port}" in e for e in errors)


async def test_the_log_gives_the_url_and_never_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        info = await start_and_stop(tmp_path / "site", {"port": 0})
    token = read_token(tmp_path / "site" / "state" / "dashboard.token")
    assert info.web_port > 0
    assert f"dashboard at http://127.0.0.1:{info.web_port}/" in caplog.text
    assert token not in caplog.text


async def test_enabled_false_serves_nothing(tmp_path: Path) -> None:
    info = await start_and_stop(tmp_path / "site", {"enabled": False, "port": 0})
    assert info.web_port == 0
    assert not (tmp_path / "site" / "state" / "dashboard.token").exists()


def test_the_testbed_gives_each_site_a_dashboard_url_with_its_token(tmp_path: Path) -> None:
    plan = create_testbed(tmp_path / "tb", 4)
    ports = set()
    for site in plan.sites:
        token_file = Path(site.data_dir) / "state" / "dashboard.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        url = urlsplit(site.dashboard_url)
        assert (url.scheme, url.hostname, url.port, url.path) == (
            "http",
            site.host,
            site.web_port,
            "/",
        )
        assert parse_qs(url.query) == {"token": [read_token(token_file)]}
        config = load_config(Path(site.config))
        assert (config.web.bind, config.web.port) == (site.host, site.web_port)
        ports.add(site.web_port)
    assert len(ports) == 4
