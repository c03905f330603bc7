"""``site_status``: space per peer, and each warning, from a site built in the state that
triggers it (and not from the one next to it)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any, NamedTuple

from typer.testing import CliRunner

from meshpacs.audit.challenge import Challenge, ExpectedAnswer
from meshpacs.audit.reputation import Outcome
from meshpacs.cli import app
from meshpacs.metadata import Catalog, health, repair
from meshpacs.metadata.health import AuditTarget
from meshpacs.node.config import NodeConfig
from meshpacs.node.leave import request_leave
from meshpacs.node.status import site_status
from tests.store.helpers import make_bundle

from .status_sites import add_study, hold_for, make_site, peers_seen

NOW = time.time()
UID = "1.2.826.0.1.3680043.8.498.77"
PEERS = ("county", "general", "city")


class Usage(NamedTuple):
    total: int
    used: int
    free: int


def roomy(_: Path) -> Usage:
    return Usage(100 * 10**9, 10 * 10**9, 90 * 10**9)


def status(config: NodeConfig, now: float = NOW, disk: Any = roomy) -> dict[str, Any]:
    return site_status(config, now, disk_usage=disk)


def codes(config: NodeConfig, now: float = NOW, disk: Any = roomy) -> list[str]:
    return [w["code"] for w in status(config, now, disk)["warnings"]]


async def healthy(tmp_path: Path, **settings: Any) -> NodeConfig:
    """Mesh on, three trusted peers online, one study protected at all three."""
    config = make_site(tmp_path / "site", **settings)
    peers_seen(config, NOW - 5, PEERS)
    await add_study(config, UID, NOW - 600, PEERS)
    return config


async def audit(config: NodeConfig, holder: str, share: int, outcome: str, at: float) -> None:
    target = AuditTarget(
        1, share, holder, "0" * 64, ExpectedAnswer(Challenge(bytes(32), 0, 1), b""), 3
    )
    async with await Catalog.open(config.catalog_path) as catalog:
        await catalog.write(lambda db: health.record_audit(db, target, outcome, at))


async def test_a_healthy_site_has_no_warning_and_its_studies_are_protected(
    tmp_path: Path,
) -> None:
    config = await healthy(tmp_path)
    report = status(config)
    assert report["warnings"] == []
    assert report["studies"]["protected"] == 1
    assert report["backlog"] == {
        "studies": 0,
        "oldest_received_at": None,
        "oldest_age_seconds": None,
    }


async def test_space_per_peer_is_what_each_holds_of_the_other(tmp_path: Path) -> None:
    config = make_site(tmp_path / "site")
    stored = await add_study(config, UID, NOW - 600, PEERS)
    assert stored is not None
    held_for_county = hold_for(config, "county", seed=7, shares=[0, 2])
    held_for_stranger = hold_for(config, "far-away", seed=8, shares=[1])
    report = status(config)
    space = {p["site_id"]: p["space"] for p in report["peers"]}
    for share, holder in enumerate(PEERS):
        # the size the codec really wrote, worked out from the bundle's coding
        assert space[holder]["held_by_them"] == {
            "shares": 1,
            "bytes": len(stored.fragments[share].data),
        }
    assert space["county"]["held_for_them"] == {"fragments": 2, "bytes": held_for_county}
    assert space["general"]["held_for_them"] == {"fragments": 0, "bytes": 0}
    # a site known only because this node keeps its fragments is listed too
    assert space["far-away"]["held_for_them"] == {"fragments": 1, "bytes": held_for_stranger}
    assert report["storage"]["held_for_partners_bytes"] == held_for_county + held_for_stranger
    result = CliRunner().invoke(app, ["status", "--config", str(config_file(config))])
    assert result.exit_code == 0, result.output
    assert f"2 of its shares held here ({_kb(held_for_county)})" in result.output


def config_file(config: NodeConfig) -> Path:
    return config.data_dir / "config.toml"


def _kb(count: int) -> str:
    return f"{count / 1000:.1f} KB"


async def test_a_node_that_does_not_report_its_peers(tmp_path: Path) -> None:
    config = make_site(tmp_path / "site")
    assert "node_not_reporting" in codes(config)  # never wrote state/peers.json
    peers_seen(config, NOW - 3600, PEERS)
    assert "node_not_reporting" in codes(config)  # stopped an hour ago
    peers_seen(config, NOW - 5, PEERS)
    assert "node_not_reporting" not in codes(config)


async def test_fewer_live_partners_than_n(tmp_path: Path) -> None:
    config = await healthy(tmp_path)
    peers_seen(config, NOW - 5, ["county", "general"])
    (warning,) = status(config)["warnings"]
    assert warning["code"] == "too_few_partners"
    assert "Only 2 partner site(s) online, fewer than n = 3" in warning["message"]


async def test_no_trusted_peer_and_only_one(tmp_path: Path) -> None:
    none = make_site(tmp_path / "none", trusted=())
    peers_seen(none, NOW - 5, PEERS)
    assert codes(none) == ["no_trusted_peer"]
    one = make_site(tmp_path / "one", trusted=("county",))
    peers_seen(one, NOW - 5, PEERS)
    (warning,) = status(one)["warnings"]
    assert warning["code"] == "one_trusted_peer" and "1-of-1" in warning["message"]
    two = make_site(tmp_path / "two", trusted=("county", "general"))
    peers_seen(two, NOW - 5, PEERS)
    assert codes(two) == []


async def test_a_backlog_older_than_an_hour(tmp_path: Path) -> None:
    config = await healthy(tmp_path)
    await add_study(config, UID + ".5", NOW - 1800)
    report = status(config)
    assert report["backlog"]["studies"] == 1 and report["warnings"] == []
    assert report["backlog"]["oldest_age_seconds"] == 1800
    (warning,) = status(config, NOW + 1900)["warnings"][-1:]
    assert warning["code"] == "backlog_old"
    assert warning["message"].startswith("1 studies wait to be protected, the oldest for 62 min")


async def test_degraded_studies(tmp_path: Path) -> None:
    config = await healthy(tmp_path)
    await add_study(config, UID + ".6", NOW - 600, ["county", "general"], seed=2)
    report = status(config)
    assert report["studies"]["degraded"] == 1
    assert [w["code"] for w in report["warnings"]] == ["studies_degraded"]
    assert report["warnings"][0]["message"].startswith(
        "1 bundles have fewer than n = 3 good shares at partner sites (1 studies degraded)"
    )


async def test_shares_that_failed_their_audit_and_a_peer_below_the_floor(
    tmp_path: Path,
) -> None:
    config = await healthy(tmp_path)
    await audit(config, "county", 0, Outcome.PASSED, NOW - 60)
    assert codes(config) == []
    await audit(config, "county", 0, Outcome.FAILED, NOW - 30)
    # the failed share no longer counts: its bundle is below n; one failure is no shunning
    assert codes(config) == ["studies_degraded", "shares_failed_audit"]
    for seconds in (20, 10, 5):
        await audit(config, "county", 0, Outcome.FAILED, NOW - seconds)
    report = status(config)
    assert [w["code"] for w in report["warnings"]] == [
        "studies_degraded",
        "shares_failed_audit",
        "peer_failing_audits",
    ]
    assert "below 0.3" in report["warnings"][2]["message"]
    assert report["warnings"][2]["message"].endswith(": county. Ask their administrators.")


async def test_a_lost_site_and_a_failed_repair(tmp_path: Path) -> None:
    config = make_site(tmp_path / "site")
    peers_seen(config, NOW - 5, PEERS)
    stored = await add_study(config, UID, NOW - 10 * 86400, ["county", "general"])
    assert stored is not None
    await audit(config, "city", 2, Outcome.UNREACHABLE, NOW - 5 * 86400)
    report = status(config)
    assert report["audits"]["repairs"]["lost_sites"] == ["city"]
    assert "sites_lost" in [w["code"] for w in report["warnings"]]
    assert "repair_failed" not in [w["code"] for w in report["warnings"]]

    def failed_repair(db: sqlite3.Connection) -> None:
        repair.record_repair(db, stored.bundle_ref, regenerated=0, placed=0, lost=set(), now=NOW)

    async with await Catalog.open(config.catalog_path) as catalog:
        await catalog.write(failed_repair)
    assert "repair_failed" in codes(config)


async def test_a_nearly_full_disk_and_a_nearly_full_offer(tmp_path: Path) -> None:
    three = sum(len(f.data) for f in make_bundle(3, k=2, n=3))
    config = await healthy(tmp_path, mesh__offer_gb=three / 0.95 / 2**30)
    assert codes(config, disk=lambda _: Usage(100 * 10**9, 95 * 10**9, 5 * 10**9)) == [
        "disk_nearly_full"
    ]
    hold_for(config, "county", seed=3, shares=[0, 1])
    assert codes(config) == []  # two thirds of the offer
    hold_for(config, "county", seed=3, shares=[2])
    assert codes(config) == ["offer_nearly_full"]


async def test_an_audit_trail_that_cannot_be_opened(tmp_path: Path) -> None:
    config = await healthy(tmp_path)
    trail = config.data_dir / "trail"
    trail.write_text("not a directory")
    (warning,) = status(config)["warnings"]
    assert warning["code"] == "audit_trail_unavailable"
    assert "is not a directory" in warning["message"]
    trail.unlink()
    assert codes(config) == []
    shutil.move(config.key_file, tmp_path / "elsewhere.key")
    (warning,) = status(config)["warnings"]
    assert warning["code"] == "audit_trail_unavailable" and "site key" in warning["message"]


async def test_mesh_off_with_studies_and_a_node_leaving(tmp_path: Path) -> None:
    config = make_site(tmp_path / "site", mesh=False)
    assert codes(config) == []  # no study is at risk yet
    await add_study(config, UID, NOW - 7200)
    assert codes(config) == ["mesh_disabled"]  # no backlog warning: nothing is backed up
    on = await healthy(tmp_path / "on")
    request_leave(on, NOW)
    assert codes(on) == ["leaving"]


async def test_warnings_come_first_in_the_text_and_carry_no_dicom_value(
    tmp_path: Path,
) -> None:
    config = make_site(tmp_path / "site", trusted=("county",))
    await add_study(config, UID, NOW - 7200, ["county", "general"])
    result = CliRunner().invoke(
        app, ["status", "--config", str(config_file(config))], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].startswith("  WARNINGS (")
    assert "  ! [one_trusted_peer] Only one trusted peer (county)" in result.output
    assert lines.index(next(line for line in lines if "studies:" in line)) > 2
    result = CliRunner().invoke(app, ["status", "--config", str(config_file(config)), "--json"])
    warnings = json.loads(result.output)["warnings"]
    assert {"node_not_reporting", "one_trusted_peer", "studies_degraded"} <= {
        w["code"] for w in warnings
    }
    assert UID not in json.dumps(warnings) and "Test^Patient" not in json.dumps(warnings)


def test_a_recovery_is_shown_while_it_runs_and_for_a_day_after(tmp_path: Path) -> None:
    config = make_site(tmp_path / "site", mesh=False)
    assert status(config)["recovery"] is None
    config.state_dir.mkdir(exist_ok=True)
    path = config.state_dir / "recovery.json"
    running = {"phase": "recovering", "finished": False, "updated_at": NOW - 10}
    path.write_text(json.dumps(running))
    assert status(config)["recovery"] == {**running, "stalled": False}
    assert status(config, NOW + 600)["recovery"]["stalled"]  # silent for ten minutes
    done = {"phase": "finished", "finished": True, "outcome": "complete", "updated_at": NOW}
    path.write_text(json.dumps(done))
    assert status(config, NOW + 3600)["recovery"]["outcome"] == "complete"
    assert status(config, NOW + 2 * 86400)["recovery"] is None  # old news
