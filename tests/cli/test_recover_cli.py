"""``meshpacs recover --show-on-dashboard CONFIG``: a config it cannot use stops the command
before it asks for anything, and a running node's gets the recovery's progress."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from meshpacs.cli import app
from meshpacs.node.config import load_config
from meshpacs.node.site import create_site
from meshpacs.node.status import site_status

from ..mesh.conftest import FederationFactory, federation  # noqa: F401  (the fixture)
from ..mesh.helpers import eventually, held_catalog_records, push, study, wait_protected
from ..mesh.test_recovery import originals, restored
from ..recovery.test_escrow_recovery import MESHPACS, recover_args, run_process


def recover(tmp_path: Path, *more: str | Path) -> tuple[int, str]:
    """The command up to its checks: certificates any bytes, no phrase file (it would
    prompt, and the runner gives it no answer)."""
    (tmp_path / "some.pem").write_text("kept outside the site\n")
    pem = str(tmp_path / "some.pem")
    args = ["recover", "--site-id", "site-a", "--ca", pem, "--cert", pem, "--crl", pem,
            "--bootstrap", "127.0.0.1:4000", "--workdir", str(tmp_path / "work"),
            "--to-dir", str(tmp_path / "out"), *map(str, more)]  # fmt: skip
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    return result.exit_code, result.stderr


def test_a_config_it_cannot_use_stops_it_before_the_phrase(tmp_path: Path) -> None:
    code, err = recover(tmp_path, "--show-on-dashboard", tmp_path / "nowhere.toml")
    assert code == 2
    assert err.startswith("meshpacs recover: --show-on-dashboard: ")
    assert "nowhere.toml does not exist" in err and "Recovery phrase" not in err
    assert not (tmp_path / "work").exists()  # nothing begun

    (tmp_path / "broken.toml").write_text("[site\n")
    code, err = recover(tmp_path, "--show-on-dashboard", tmp_path / "broken.toml")
    assert code == 2 and "--show-on-dashboard: " in err and "broken.toml" in err

    never_run = create_site(tmp_path / "never-run", "site-b", "MESH_B", 11112, {})
    state = load_config(never_run.config_path).state_dir
    code, err = recover(tmp_path, "--show-on-dashboard", never_run.config_path)
    assert code == 2 and f"{state} does not exist; start that node once first" in err
    assert not (tmp_path / "work").exists()


async def test_the_named_nodes_state_gets_the_recoverys_progress(
    federation: FederationFactory,  # noqa: F811
    tmp_path: Path,
) -> None:
    fed = await federation(4, k=2, n=3)
    owner, shown_on = fed.site("site-a"), fed.site("site-b")
    sent = study(seed=31)
    await push(owner, sent, tmp_path / "pacs")
    await wait_protected(owner, {sent[0].study_instance_uid})
    trusted = [fed.site(s) for s in owner.plan.trusted]
    await eventually(lambda: all(held_catalog_records(p, "site-a") for p in trusted), 30)
    await owner.halt()
    shutil.rmtree(owner.data_dir)
    work = Path(str(owner.plan.recover_args["workdir"]))

    done = await run_process(
        MESHPACS, "recover", *recover_args(fed.plan, "site-a"),
        "--phrase-file", owner.plan.phrase_file, "--to-dir", str(tmp_path / "restored"),
        "--show-on-dashboard", shown_on.plan.config,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert restored(tmp_path / "restored") == originals(sent)
    shown = json.loads((shown_on.config.state_dir / "recovery.json").read_text())
    assert shown == json.loads((work / "progress.json").read_text())
    assert (shown["site_id"], shown["finished"], shown["outcome"]) == ("site-a", True, "complete")
    assert shown["instances"] == {"total": len(sent), "delivered": len(sent), "failed": 0}
    status = site_status(shown_on.config)
    assert status["recovery"] == {**shown, "stalled": False}
    assert not [w for w in status["warnings"] if w["code"].startswith("recovery_")]
