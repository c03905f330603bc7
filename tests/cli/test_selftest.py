"""The README's main-job command, run as an administrator would: the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MESHPACS = shutil.which("meshpacs", path=str(Path(sys.executable).parent)) or "meshpacs"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MESHPACS, *args], capture_output=True, text=True, timeout=300)


def test_selftest_passes_and_reports_every_check_as_json(tmp_path: Path) -> None:
    done = run(
        "selftest",
        "--seed",
        "11",
        "--k",
        "3",
        "--n",
        "6",
        "--json",
        "--segment-size",
        "65536",
        "--workdir",
        str(tmp_path / "drill"),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["failures"] == []
    assert report["instances"] > 0
    assert report["instances_identical"] == report["instances"]
    assert len(report["dropped"]) == 6 - 3 - 1
    assert report["phi_found_in_fragments"] is False
    assert report["unrecoverable_report"].startswith("unrecoverable bundle: need 3")
    fragments = list((tmp_path / "drill" / "fragments").iterdir())
    assert len(fragments) == 6
    assert all(len(f.name) == 64 and int(f.name, 16) >= 0 for f in fragments)


def test_selftest_with_the_same_seed_drops_and_corrupts_the_same_fragments() -> None:
    first = json.loads(run("selftest", "--seed", "3", "--json").stdout)
    second = json.loads(run("selftest", "--seed", "3", "--json").stdout)
    assert (first["dropped"], first["corrupted"]) == (second["dropped"], second["corrupted"])


@pytest.mark.parametrize(("k", "n"), [("4", "4"), ("5", "3")])
def test_selftest_refuses_parameters_that_leave_nothing_to_lose(k: str, n: str) -> None:
    done = run("selftest", "--k", k, "--n", n)
    assert done.returncode == 2
    assert "1 <= k < n" in done.stderr


def test_every_command_explains_itself() -> None:
    done = run("selftest", "--help")
    assert done.returncode == 0
    words = " ".join(done.stdout.split())  # the help is rewrapped to the terminal's width
    assert "byte for byte" in words and "--json" in words
