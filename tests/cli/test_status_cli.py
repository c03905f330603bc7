"""``meshpacs status``: studies by protection state and peers, for people and for scripts."""

from __future__ import annotations

import json
import time
from pathlib import Path

from typer.testing import CliRunner

from meshpacs.cli import app
from meshpacs.node.site import create_site

CONFIG_KEYS = {"site_id", "studies", "peers"}


def run(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "100"})
    return result.exit_code, result.output


def test_a_new_site_reports_no_studies_and_its_trusted_peers_offline(tmp_path: Path) -> None:
    created = create_site(
        tmp_path / "site",
        "st-marys",
        "MESH_STM",
        11112,
        {("mesh", "trusted_peers"): ["county", "general"]},
    )
    code, out = run("status", "--config", created.config_path, "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report.keys() >= CONFIG_KEYS
    assert report["site_id"] == "st-marys"
    assert report["studies"] == {"total": 0, "protected": 0, "degraded": 0, "unprotected": 0}
    assert report["peers"] == [
        {"site_id": "county", "online": False, "trusted": True},
        {"site_id": "general", "online": False, "trusted": True},
    ]
    code, text = run("status", "--config", created.config_path)
    assert code == 0 and "st-marys" in text and "peer county: OFFLINE, trusted" in text


def test_peers_come_from_what_the_running_node_last_saw_while_fresh(tmp_path: Path) -> None:
    created = create_site(
        tmp_path / "site", "st-marys", "MESH_STM", 11112, {("mesh", "trusted_peers"): ["county"]}
    )
    state = tmp_path / "site" / "state"
    state.mkdir()

    def seen(at: float) -> None:
        peers = [
            {"site_id": "county", "online": True, "trusted": True},
            {"site_id": "far-away", "online": True, "trusted": False},
        ]
        (state / "peers.json").write_text(json.dumps({"updated_at": at, "peers": peers}))

    seen(time.time())
    _, out = run("status", "--config", created.config_path, "--json")
    assert [(p["site_id"], p["online"], p["trusted"]) for p in json.loads(out)["peers"]] == [
        ("county", True, True),
        ("far-away", True, False),
    ]
    seen(time.time() - 3600)  # the node stopped an hour ago: nobody is known to be online
    _, out = run("status", "--config", created.config_path, "--json")
    assert not any(p["online"] for p in json.loads(out)["peers"])


def test_a_missing_config_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    code, out = run("status", "--config", tmp_path / "nope.toml")
    assert code == 2 and "does not exist" in out
