"""``meshpacs init`` as an administrator runs it: the installed console script."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from meshpacs.keys.secret import SiteSecret
from meshpacs.node.config import load_config
from meshpacs.node.site import load_site_secret

MESHPACS = shutil.which("meshpacs", path=str(Path(sys.executable).parent)) or "meshpacs"
PHRASE = re.compile(r"[0-9A-Z]{5}(?:-[0-9A-Z]{5}){12}")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"COLUMNS": "100", "NO_COLOR": "1"}
    return subprocess.run([MESHPACS, *args], capture_output=True, text=True, timeout=60, env=env)


def flat(text: str) -> str:
    """Text with line wrapping and help-panel borders removed."""
    return " ".join(text.replace("│", " ").split())


def test_init_creates_the_site_and_prints_the_phrase_once(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = run("init", "--site-id", "st-marys", "--ae-title", "MESH_STM", "--dir", str(site))
    assert done.returncode == 0, done.stderr
    phrases = PHRASE.findall(done.stdout)
    assert len(phrases) == 1
    phrase = phrases[0]
    assert done.stdout.count(phrase) == 1
    assert phrase not in done.stderr
    secret = load_site_secret(site / "site.key")
    assert SiteSecret.from_phrase(phrase) == secret
    out = flat(done.stdout)
    assert "Write this recovery phrase down on paper and keep it in a safe." in out
    assert "protect its disk as you protect the paper" in out
    assert secret.fingerprint in out
    assert str(site / "config.toml") in out
    config = load_config(site / "config.toml")
    assert (config.site.id, config.dicom.ae_title, config.dicom.port) == (
        "st-marys",
        "MESH_STM",
        11112,
    )
    assert stat.S_IMODE((site / "site.key").stat().st_mode) == 0o600
    assert not any(phrase in p.read_text() for p in site.rglob("*") if p.is_file())


def test_init_json_gives_config_fingerprint_and_phrase(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = run(
        "init",
        "--site-id",
        "general-7",
        "--ae-title",
        "MESH_GEN7",
        "--dir",
        str(site),
        "--dicom-port",
        "4104",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == {"config", "fingerprint", "recovery_phrase"}
    assert report["config"] == str(site / "config.toml")
    secret = SiteSecret.from_phrase(report["recovery_phrase"])
    assert secret == load_site_secret(site / "site.key")
    assert report["fingerprint"] == secret.fingerprint
    assert load_config(site / "config.toml").dicom.port == 4104


def test_init_into_a_non_empty_directory_exits_2_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("something already here")
    done = run("init", "--site-id", "st-marys", "--ae-title", "MESH", "--dir", str(tmp_path))
    assert done.returncode == 2
    assert str(tmp_path) in done.stderr and "is not empty" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_init_with_a_bad_ae_title_exits_2_without_a_traceback(tmp_path: Path) -> None:
    done = run(
        "init", "--site-id", "st-marys", "--ae-title", "A" * 17, "--dir", str(tmp_path / "s")
    )
    assert done.returncode == 2
    assert "AE title" in done.stderr and "at most 16" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "s").exists()


def test_init_help_is_written_for_the_administrator() -> None:
    done = run("init", "--help")
    assert done.returncode == 0
    text = flat(done.stdout)
    assert "recovery phrase" in text
    for option in ("--site-id", "--ae-title", "--dir", "--dicom-port", "--json"):
        assert option in text
    assert "paper" in text and "safe" in text
