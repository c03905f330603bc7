"""Owners audit their holders over the real transport; holders scrub; status shows both."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from meshpacs.node.config import load_config
from meshpacs.node.status import site_status
from meshpacs.store.names import fragment_path
from meshpacs.testbed.layout import FAST_MAINTENANCE

from .conftest import FederationFactory, RunningSite
from .helpers import eventually, push, study, wait_protected


def verdicts(owner: RunningSite) -> dict[str, str]:
    """holder site -> verdict of its placement, for the owner's only bundle."""
    path = owner.data_dir / "catalog.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT holder_site, verdict FROM placements").fetchall()
    return {str(site): str(verdict) for site, verdict in rows}


def fragment_ids(owner: RunningSite) -> dict[str, str]:
    path = owner.data_dir / "catalog.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT holder_site, fragment_id FROM placements").fetchall()
    return {str(site): str(fid) for site, fid in rows}


def scrub_state(site: RunningSite) -> dict[str, object]:
    try:
        return dict(json.loads((site.data_dir / "state" / "scrub.json").read_text()))
    except (OSError, ValueError):
        return {}


async def test_audits_catch_altered_and_missing_fragments_and_scrub_quarantines_rot(
    federation: FederationFactory, tmp_path: Path
) -> None:
    maintenance = {**FAST_MAINTENANCE, "audits_per_hour": 7200.0, "scrub_interval_hours": 0.002}
    fed = await federation(5, k=2, n=3, maintenance=maintenance)
    owner = fed.site("site-a")
    instances = study(seed=31)
    await push(owner, instances, tmp_path / "pacs")
    await wait_protected(owner, {instances[0].study_instance_uid})
    await eventually(
        lambda: set(verdicts(owner).values()) == {"ok"}, what="every placement audited ok"
    )

    ids = fragment_ids(owner)
    altered, removed, rotten = sorted(ids)
    files = {s: fragment_path(fed.site(s).data_dir / "fragments", ids[s]) for s in ids}
    data = bytearray(files[altered].read_bytes())
    for i in range(len(data) // 4, len(data)):
        data[i] ^= 0xFF
    files[altered].write_bytes(bytes(data))
    files[removed].unlink()
    # One flipped byte: the holder's scrub finds it (its set hash no longer matches) and
    # quarantines the fragment, after which the owner's audit hears "not held".
    passes_before = scrub_state(fed.site(rotten)).get("finished_at", 0)
    data = bytearray(files[rotten].read_bytes())
    data[len(data) // 2] ^= 0x01
    files[rotten].write_bytes(bytes(data))

    # Found by the owner's audits, or first by the holder's scrub, which reports it: the
    # removed one is then "failed" too.
    await eventually(
        lambda: (
            verdicts(owner)[altered] == "failed"
            and verdicts(owner)[removed] in ("missing", "failed")
        ),
        timeout=60,
        what="altered and removed fragments found",
    )

    def scrubbed() -> bool:
        state = scrub_state(fed.site(rotten))
        return state.get("finished_at", 0) != passes_before and state.get("quarantined") == 1

    await eventually(scrubbed, timeout=60, what="the rotten fragment quarantined by scrub")
    await eventually(
        lambda: verdicts(owner)[rotten] in ("failed", "missing"),
        timeout=60,
        what="the quarantined fragment's audit failed",
    )

    report = site_status(load_config(Path(owner.plan.config)))
    placements = report["audits"]["placements"]
    assert placements["failed"] >= 1 and placements["failed"] + placements["missing"] >= 3
    peers = {p["site_id"]: p["audits"] for p in report["peers"]}
    # Once failed (by its audit, or by the holder's report first), never asked again.
    assert peers[altered]["audits_failed"] <= 1 and peers[altered]["audits_passed"] >= 1
    holder = site_status(load_config(Path(fed.site(rotten).plan.config)))
    assert holder["scrub"]["quarantined_held"] == 1
