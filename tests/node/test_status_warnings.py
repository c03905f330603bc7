"""``site_status``: space per peer, and each warning, from a site built in the state that
triggers it (and not from the one next to it)."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
from functools import partial
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
from meshpacs.recovery.progress import DASHBOARD_FILE as RECOVERY_FILE
from meshpacs.recovery.progress import ProgressFile
from meshpacs.recovery.report import RecoveryReport, UnrecoverableBundle
from meshpacs.web.server import DashboardServer
from tests.store.helpers import make_bundle
from tests.web.exposition import parse_exposition
from tests.web.test_server import TOKEN, get

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


# -- a recovery shown here (meshpacs recover --show-on-dashboard) ---------------------------


def recovered(delivered: int, *, unrecoverable: int = 0, failed: int = 0) -> RecoveryReport:
    """A recovery of site-a's 3 studies (10 instances each) that delivered ``delivered``."""
    lost = tuple(
        UnrecoverableBundle(bytes([i]) * 32, UID, 10, "too few good fragments")
        for i in range(unrecoverable)
    )
    return RecoveryReport(
        target="ORTHANC@127.0.0.1:4242", studies_planned=3, studies_delivered=delivered,
        instances_planned=30, instances_delivered=delivered * 10, instances_resumed=0,
        instances_this_run=delivered * 10, bytes_planned=300, bytes_delivered=delivered * 100,
        bytes_resumed=0, bytes_this_run=delivered * 100, seconds=60.0, unrecoverable=lost,
        failed=(), failed_count=failed, bundles_planned=3, bundles_delivered=delivered,
    )  # fmt: skip


def shown_here(config: NodeConfig, at: float) -> ProgressFile:
    """The progress document ``meshpacs recover`` keeps in this node's state/recovery.json,
    its clock stopped at ``at``."""
    config.state_dir.mkdir(exist_ok=True)
    return ProgressFile("site-a", [config.state_dir / RECOVERY_FILE], clock=lambda: at)


async def last_written_at(config: NodeConfig, at: float, report: RecoveryReport) -> None:
    """A run that was recovering and last wrote its progress at ``at``."""
    async with shown_here(config, at).running(lambda: report, interval=3600):
        while not (config.state_dir / RECOVERY_FILE).exists():
            await asyncio.sleep(0.01)  # its first write; the next would be in an hour


def warning(config: NodeConfig, code: str, now: float = NOW) -> str | None:
    found = [w["message"] for w in status(config, now)["warnings"] if w["code"] == code]
    assert len(found) <= 1
    return found[0] if found else None


async def test_a_recovery_silent_for_five_minutes_is_stalled(tmp_path: Path) -> None:
    config = make_site(tmp_path / "site", mesh=False)
    await last_written_at(config, NOW - 60, recovered(1))
    assert warning(config, "recovery_stalled") is None
    assert warning(config, "recovery_stalled", NOW + 230) is None  # 4 min 50 s
    message = warning(config, "recovery_stalled", NOW + 600)
    assert message is not None
    assert "site site-a" in message and "for 11 minutes (recovering)" in message
    assert "run the same meshpacs recover command again" in message
    assert warning(config, "recovery_incomplete", NOW + 600) is None
    # Planning also writes the document: a run that stops there stalls as well.
    shown_here(config, NOW - 400).write(None)
    assert "(planning)" in str(warning(config, "recovery_stalled"))


async def test_a_recovery_that_ended_short_is_incomplete_for_a_day(tmp_path: Path) -> None:
    config = make_site(tmp_path / "site", mesh=False)
    shown = shown_here(config, NOW - 60)
    shown.write(recovered(3), outcome="complete")
    assert warning(config, "recovery_incomplete") is None

    shown.write(recovered(2, unrecoverable=1, failed=4), outcome="incomplete")
    message = warning(config, "recovery_incomplete")
    assert message is not None and message.startswith("The recovery of site site-a finished")
    assert "2 of 3 studies delivered, 1 bundles unrecoverable and 4 instances failed" in message
    assert "partner sites holding its shares" in message and "--workdir" in message
    assert UID not in message
    assert warning(config, "recovery_stalled", NOW + 3600) is None  # finished: not stalled
    assert warning(config, "recovery_incomplete", NOW + 2 * 86400) is None  # old news

    shown.write(recovered(1), outcome="failed")
    message = warning(config, "recovery_incomplete")
    assert message is not None and "failed (1 of 3 studies delivered)" in message
    assert "read the command's output" in message
    shown.write(recovered(1), outcome="interrupted")
    assert "was interrupted (1 of 3 studies delivered)" in str(
        warning(config, "recovery_incomplete")
    )


async def test_recovery_warnings_show_in_status_and_on_metrics(tmp_path: Path) -> None:
    stalled = make_site(tmp_path / "stalled", mesh=False)
    await last_written_at(stalled, time.time() - 600, recovered(1))
    short = make_site(tmp_path / "short", mesh=False)
    shown_here(short, time.time() - 60).write(recovered(2, unrecoverable=1), outcome="incomplete")
    for config, code in ((stalled, "recovery_stalled"), (short, "recovery_incomplete")):
        result = CliRunner().invoke(
            app, ["status", "--config", str(config_file(config))], env={"COLUMNS": "300"}
        )
        assert result.exit_code == 0, result.output
        assert f"  ! [{code}] The recovery of site site-a" in result.output
        result = CliRunner().invoke(app, ["status", "--config", str(config_file(config)), "--json"])
        assert code in [w["code"] for w in json.loads(result.output)["warnings"]]

        server = DashboardServer(token=TOKEN, status=partial(site_status, config))
        await server.start()
        try:
            answer, _, body = await get(server.port, "/metrics", f"Authorization: Bearer {TOKEN}")
        finally:
            await server.close()
        assert answer == 200
        warnings = parse_exposition(body.decode())["meshpacs_warnings"]
        assert warnings.value(code=code) == 1
        other = {"recovery_stalled", "recovery_incomplete"} - {code}
        assert other.pop() not in {labels.get("code") for labels, _ in warnings.samples}
