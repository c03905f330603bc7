"""``meshpacs forget`` against a running federation: the study goes from the owner, its
fragments from every holder, its catalog record from every trusted peer, and a recovery
afterwards brings back every other study and nothing of the forgotten one."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshpacs.cli import app
from meshpacs.node.status import site_status
from meshpacs.store.names import fragment_path

from ..faults.helpers import held_records, lose_owner, recover, wait_backed_up
from .conftest import FederationFactory, RunningSite
from .helpers import push, study


def fragments_by_study(owner: RunningSite) -> dict[str, set[tuple[str, str]]]:
    path = owner.data_dir / "catalog.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT s.study_uid, p.holder_site, p.fragment_id FROM placements p"
            " JOIN bundles b ON b.id = p.bundle_ref JOIN studies s ON s.id = b.study_ref"
        ).fetchall()
    found: dict[str, set[tuple[str, str]]] = {}
    for uid, site, fragment in rows:
        found.setdefault(str(uid), set()).add((str(site), str(fragment)))
    return found


def forget_cli(config: Path, study_uid: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        app,
        ["forget", "--config", str(config), "--study", study_uid, "--yes", "--wait", "60",
         "--json"],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    return result.exit_code, result.stdout, result.stderr


async def test_a_forgotten_study_is_gone_everywhere_and_recovery_skips_it(
    federation: FederationFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fed = await federation(5, k=2, n=3)
    owner = fed.site("site-a")
    doomed, kept = study(seed=51), study(seed=52, patient=1)
    await push(owner, doomed + kept, tmp_path / "pacs")
    uids = {doomed[0].study_instance_uid, kept[0].study_instance_uid}
    await wait_backed_up(fed, owner, uids, records=2)
    placed = fragments_by_study(owner)
    gone, stays = placed[doomed[0].study_instance_uid], placed[kept[0].study_instance_uid]

    def held(pairs: set[tuple[str, str]]) -> list[bool]:
        return [fragment_path(fed.site(s).data_dir / "fragments", f).exists() for s, f in pairs]

    assert all(held(gone)) and all(held(stays))

    code, out, err = await asyncio.to_thread(
        forget_cli, Path(owner.plan.config), doomed[0].study_instance_uid
    )
    assert code == 0, (out, err)
    answer = json.loads(out)
    assert answer["state"] == "done" and answer["deletions_waiting"] == 0, answer
    assert (answer["instances"], answer["fragments"]) == (len(doomed), len(gone))
    assert answer["records"] == len(owner.plan.trusted)

    assert not any(held(gone)) and all(held(stays))
    assert len(held_records(fed, owner)) == len(owner.plan.trusted)  # one record each: kept
    assert set(fragments_by_study(owner)) == {kept[0].study_instance_uid}
    assert site_status(owner.config)["forgets"]["done"] == 1
    for uid in {i.sop_instance_uid for i in doomed} | {doomed[0].study_instance_uid}:
        assert uid not in caplog.text  # logs name requests by row, never the study

    report, restored = await recover(
        await lose_owner(fed, owner, tmp_path), tmp_path, peers=tuple(owner.plan.trusted)
    )
    assert report.exit_code == 0, report.summary()
    files = [p for p in restored.rglob("*") if p.is_file() and p.name != "manifest.json"]
    assert len(files) == len(kept)
    everything = b"".join(p.read_bytes() for p in files)
    assert doomed[0].study_instance_uid.encode() not in everything
