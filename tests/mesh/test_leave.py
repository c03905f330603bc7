"""``meshpacs node leave`` in a running federation: the leaving site hands back every share
it holds; each owner rebuilds them on other sites and the study stays protected."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from meshpacs.cli import app
from meshpacs.node.status import site_status
from meshpacs.testbed.layout import FAST_MAINTENANCE

from .conftest import FederationFactory
from .helpers import eventually, held_fragments, push, study, wait_protected
from .test_audits import fragment_ids

N = 3


def leave_cli(config: str, timeout: float) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        app,
        ["node", "leave", "--config", config, "--yes", "--timeout", str(timeout), "--json"],
        env={"COLUMNS": "200"},
    )
    return result.exit_code, result.stdout, result.stderr


async def test_a_leaving_site_hands_its_shares_to_others_and_owners_stay_protected(
    federation: FederationFactory, tmp_path: Path
) -> None:
    fed = await federation(6, k=2, n=N, maintenance=FAST_MAINTENANCE)
    owner = fed.site("site-a")
    instances = study(seed=61)
    await push(owner, instances, tmp_path / "pacs")
    await wait_protected(owner, {instances[0].study_instance_uid})
    before = fragment_ids(owner)
    leaving = fed.site(sorted(before)[0])
    assert held_fragments(leaving)

    code, out, err = await asyncio.to_thread(leave_cli, leaving.plan.config, 90.0)

    assert code == 0, (out, err)
    assert json.loads(out)["fragments_held"] == 0
    assert held_fragments(leaving) == []
    after = fragment_ids(owner)
    assert leaving.site_id not in after and len(after) == N
    assert not set(after) & {owner.site_id}
    peers = {p["site_id"]: p for p in site_status(owner.config)["peers"]}
    assert peers[leaving.site_id]["audits"]["leaving"] is True
    await eventually(
        lambda: site_status(owner.config)["studies"]["protected"] == 1,
        30,
        "the study protected on n other sites",
    )
    assert site_status(leaving.config)["leaving"]["fragments_held"] == 0
