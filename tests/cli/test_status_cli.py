"""``meshpacs status``: studies by protection state and peers, for people and for scripts."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from typer.testing import CliRunner

from meshpacs.audit.challenge import Challenge, ExpectedAnswer
from meshpacs.audit.reputation import Outcome
from meshpacs.cli import app
from meshpacs.metadata import Catalog, health
from meshpacs.metadata.health import AuditTarget
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
    nothing = {
        "held_for_them": {"fragments": 0, "bytes": 0},
        "held_by_them": {"shares": 0, "bytes": 0},
    }
    assert report["peers"] == [
        {"site_id": "county", "online": False, "trusted": True, "audits": None, "space": nothing},
        {"site_id": "general", "online": False, "trusted": True, "audits": None, "space": nothing},
    ]
    assert report["audits"]["last_audit_at"] is None and report["scrub"] is None
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


async def test_audit_results_and_the_last_scrub_are_reported_per_peer(tmp_path: Path) -> None:
    created = create_site(
        tmp_path / "site", "st-marys", "MESH_STM", 11112, {("mesh", "trusted_peers"): ["county"]}
    )
    now = time.time()
    target = AuditTarget(
        1, 0, "county", "0" * 64, ExpectedAnswer(Challenge(bytes(32), 0, 1), b""), 3
    )
    lost = AuditTarget(1, 1, "far-away", "1" * 64, target.expected, 3)

    def audited(db: sqlite3.Connection) -> None:
        health.record_audit(db, target, Outcome.PASSED, now - 60, latency=0.004)
        health.record_audit(db, lost, Outcome.MISSING, now - 30)
        health.record_audit(db, lost, Outcome.FAILED, now - 20)

    async with await Catalog.open(tmp_path / "site" / "catalog.sqlite") as catalog:
        await catalog.write(audited)
    state = tmp_path / "site" / "state"
    state.mkdir()
    (state / "scrub.json").write_text(
        json.dumps({"finished_at": now - 5, "fragments": 12, "quarantined": 1})
    )
    _, out = run("status", "--config", created.config_path, "--json")
    report = json.loads(out)
    peers = {p["site_id"]: p["audits"] for p in report["peers"]}
    assert peers["county"]["audits_passed"] == 1 and not peers["county"]["shunned"]
    assert peers["county"]["latency_ms"] == 4.0
    assert peers["far-away"]["audits_failed"] == 2 and peers["far-away"]["shunned"]
    assert report["audits"]["passed"] == 1 and report["audits"]["failed"] == 2
    assert report["audits"]["last_audit_at"] == now - 20
    assert report["scrub"]["quarantined"] == 1
    _, text = run("status", "--config", created.config_path)
    assert "peer county: OFFLINE, trusted, reputation 0.67 (1 audits passed, 0 failed" in text
    assert "far-away" in text and "SHUNNED" in text
    assert "12 checked, 1 quarantined" in text


def test_what_the_node_did_as_a_down_sites_delegate_is_reported(tmp_path: Path) -> None:
    created = create_site(tmp_path / "site", "county", "MESH_CTY", 11112, {})
    code, text = run("status", "--config", created.config_path)
    assert code == 0 and "delegate for" not in text  # no delegation kept: nothing to say
    state = tmp_path / "site" / "state"
    state.mkdir()
    document = {
        "updated_at": time.time(),
        "delegations": 2,
        "owners_down": 1,
        "acting_for": ["st-marys"],
        "last_pass": {"checked": 3, "repaired": 1, "failed": 0, "unrecoverable": 0,
                      "shares_placed": 2},
        "since_start": {"repaired": 1, "shares_placed": 2, "last_repair_at": time.time()},
    }  # fmt: skip
    (state / "delegate.json").write_text(json.dumps(document))
    _, out = run("status", "--config", created.config_path, "--json")
    assert json.loads(out)["delegate"] == document
    _, text = run("status", "--config", created.config_path)
    assert "delegate for 2 site(s) that trust this one: acting for st-marys (down);" in text
    assert "2 of their shares rebuilt" in text
