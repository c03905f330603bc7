"""``meshpacs forget`` and ``meshpacs recover`` write their own trail events; with a node
config naming a collector they forward them as the node does, and have sent them by the
time the command's process is gone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from typer.testing import CliRunner

from meshpacs.cli import app
from meshpacs.keys import SiteSecret
from meshpacs.keys.secret import audit_trail_key
from meshpacs.node.config import Setting, load_config
from meshpacs.node.site import create_site, load_site_secret
from meshpacs.testing.loopback import free_port
from meshpacs.trail import trail_dir, verify
from meshpacs.trail.log import read_entries
from tests.cli.test_forget_cli import FORGET, a_site_with_two_studies
from tests.trail.conftest import Collector

MESHPACS = shutil.which("meshpacs", path=str(Path(sys.executable).parent)) or "meshpacs"


def to_collector(collector: Collector, **more: Setting) -> dict[tuple[str, str], Setting]:
    settings: dict[str, Setting] = {
        "syslog_host": "127.0.0.1",
        "syslog_port": collector.port,
        "syslog_ca": str(collector.ca_file),
        **more,
    }
    return {("audit_trail", key): value for key, value in settings.items()}


def command(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The command as its own process: what it has not sent when it exits is never sent."""
    return subprocess.run(
        [MESHPACS, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"COLUMNS": "200"},
        check=False,
    )


def trail_messages(directory: Path, secret: SiteSecret) -> list[bytes]:
    key = audit_trail_key(secret)
    assert verify(directory, key).ok
    return [entry.message for entry in read_entries(directory, key)]


def event_id(message: bytes) -> str:
    found = ET.fromstring(message).find("EventIdentification/EventID")
    assert found is not None
    return str(found.get("csd-code"))


def test_forget_has_forwarded_its_event_when_it_exits(tmp_path: Path, collector: Collector) -> None:
    config_path, _ = a_site_with_two_studies(tmp_path, to_collector(collector, include_uids=True))
    done = command("forget", "--config", config_path, "--study", FORGET, "--yes", "--json")
    assert done.returncode == 0, done.stderr
    # A study it does not hold: the command exits as soon as the request is recorded.
    unknown = command("forget", "--config", config_path, "--study", "9.9.9", "--yes")
    assert unknown.returncode == 2, unknown.stderr
    config = load_config(config_path)
    kept = trail_messages(trail_dir(config.data_dir), load_site_secret(config.key_file))
    assert [event_id(m) for m in kept] == ["110113", "110105", "110105"]
    # The process is gone: only what it sent before exiting can still arrive.
    assert collector.wait_for(len(kept), timeout=5), collector.records
    assert collector.messages() == kept
    assert FORGET.encode() in kept[1]  # [audit_trail] include_uids reached the rendering


def test_forget_with_its_collector_down_still_records_the_request_here(tmp_path: Path) -> None:
    closed = free_port()
    settings = {("audit_trail", "syslog_host"): "127.0.0.1", ("audit_trail", "syslog_port"): closed}
    config_path, _ = a_site_with_two_studies(tmp_path, settings)
    result = CliRunner().invoke(
        app, ["forget", "--config", str(config_path), "--study", FORGET, "--yes", "--json"]
    )
    assert result.exit_code == 0, result.output
    config = load_config(config_path)
    kept = trail_messages(trail_dir(config.data_dir), load_site_secret(config.key_file))
    assert [event_id(m) for m in kept] == ["110113", "110105"]
    assert FORGET.encode() not in kept[1]  # include_uids is off by default


def test_recover_forwards_its_import_event_with_the_dashboard_nodes_settings(
    tmp_path: Path, collector: Collector
) -> None:
    shown_on = create_site(
        tmp_path / "peer", "st-johns", "MESH_STJ", 11112, to_collector(collector)
    )
    load_config(shown_on.config_path).state_dir.mkdir()  # as a node that has run once
    secret = SiteSecret.generate()
    (tmp_path / "phrase").write_text(secret.to_phrase())
    (tmp_path / "not-a-pem").write_text("no certificate here\n")
    work = tmp_path / "work"
    done = command(
        "recover", "--site-id", "st-marys", "--ca", tmp_path / "not-a-pem",
        "--cert", tmp_path / "not-a-pem", "--crl", tmp_path / "not-a-pem",
        "--bootstrap", f"127.0.0.1:{free_port()}", "--workdir", work,
        "--phrase-file", tmp_path / "phrase", "--to-dir", tmp_path / "out",
        "--show-on-dashboard", shown_on.config_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    kept = trail_messages(trail_dir(work), secret)
    assert [event_id(m) for m in kept] == ["110113", "110107"]  # the trail's start, the Import
    ident = ET.fromstring(kept[1]).find("EventIdentification")
    assert ident is not None and ident.get("EventOutcomeIndicator") == "8"  # it failed
    assert collector.wait_for(len(kept), timeout=5), collector.records
    assert collector.messages() == kept
