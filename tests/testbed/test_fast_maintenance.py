"""``meshpacs testbed up --fast-maintenance``: a trial sees the mesh heal a damaged fragment.

Real node processes started by the CLI, a study pushed with dcmtk's storescu, one of its
fragments damaged on a holder's disk behind the node's back; audits (or the holder's
scrub) notice, the owner's repairer rebuilds the share on a site that had none, and
``status`` says so.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshpacs.node.config import load_config
from meshpacs.node.status import site_status
from meshpacs.testbed import load_testbed
from meshpacs.testbed.layout import FAST_MAINTENANCE
from meshpacs.testbed.processes import stop_testbed
from meshpacs.testing.dcmtk import dcmtk_env, dcmtk_tool
from meshpacs.testing.synth import SeriesSpec, StudySpec, generate_study, write_study

from ..faults.helpers import SEED_VARIABLE
from .test_testbed_cli import run

pytestmark = pytest.mark.skipif(dcmtk_tool("storescu") is None, reason="dcmtk not installed")

STUDY = StudySpec(series=(SeriesSpec("CT", 3, 64, 64),))
PROTECT_WAIT = 60.0
HEAL_WAIT = 90.0


@pytest.fixture
def testbed(tmp_path: Path) -> Iterator[dict[str, Any]]:
    root = tmp_path / "testbed"
    code, out, err = run(
        "testbed", "up", "--root", str(root), "--sites", "5", "--k", "2", "--n", "3",
        "--stable-seconds", "1", "--fast-maintenance", "--json",
    )  # fmt: skip
    try:
        assert code == 0, err
        yield json.loads(out)
    finally:
        stop_testbed(load_testbed(root), grace=10.0)


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds:g} s: {what}")
        time.sleep(0.25)


def held(site: dict[str, Any]) -> list[Path]:
    root = Path(site["data_dir"]) / "fragments"
    return sorted(p for p in root.glob("[0-9a-f][0-9a-f]/*") if p.is_file() and len(p.name) == 64)


def test_a_damaged_fragment_is_noticed_and_rebuilt_and_status_tells(
    testbed: dict[str, Any], tmp_path: Path
) -> None:
    owner, *others = testbed["sites"]
    config = load_config(Path(owner["config"]))
    assert config.maintenance.audits_per_hour == FAST_MAINTENANCE["audits_per_hour"]
    assert config.maintenance.repair_interval_seconds < 2

    files = write_study(tmp_path / "study", generate_study(7, STUDY))
    subprocess.run(
        [str(dcmtk_tool("storescu")), "-aec", owner["ae_title"], owner["host"],
         str(owner["dicom_port"]), *map(str, files)],
        check=True, capture_output=True, timeout=60, env=dcmtk_env(),
    )  # fmt: skip

    def studies() -> dict[str, int]:
        return dict(site_status(config)["studies"])

    wait_for(lambda: studies()["protected"] == 1, PROTECT_WAIT, "the study protected")
    holders = [s for s in others if held(s)]
    assert len(holders) == 3, [s["site_id"] for s in holders]
    spare = [s for s in others if s not in holders]

    seed = int(os.environ.get(SEED_VARIABLE) or random.randrange(2**31))
    print(f"fault seed {seed} (rerun with {SEED_VARIABLE}={seed})")
    victim = random.Random(seed).choice(holders)
    fragment = held(victim)[0]
    data = bytearray(fragment.read_bytes())
    for at in range(0, len(data), 1024):  # inside any audited or scrubbed range
        data[at] ^= 0xFF
    fragment.write_bytes(bytes(data))
    print(f"damaged the fragment held by {victim['site_id']}")

    def healed() -> bool:
        repairs = site_status(config)["audits"]["repairs"] or {}
        return repairs.get("repaired", 0) >= 1 and repairs.get("bundles_below_n") == 0

    wait_for(healed, HEAL_WAIT, "a repair and no bundle below n")
    wait_for(lambda: studies()["protected"] == 1, PROTECT_WAIT, "the study protected again")
    assert any(held(s) for s in spare), "the rebuilt share went to the site that had none"
    repairs = site_status(config)["audits"]["repairs"]
    assert repairs["shares_placed"] >= 1, repairs
