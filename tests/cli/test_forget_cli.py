"""``meshpacs forget`` at a site whose mesh is off (the running federation's case is in
tests/mesh/test_forget.py): confirmation, the answer, and what goes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

from typer.testing import CliRunner

from meshpacs.cli import app
from meshpacs.dicom.storage import InstanceStore
from meshpacs.metadata import Catalog
from meshpacs.node.config import Setting, load_config
from meshpacs.node.site import create_site

from ..metadata.helpers import make_record

FORGET, KEEP = "1.2.3.1", "1.2.3.9"


def run(*args: str | Path, answer: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        app, [str(a) for a in args], input=answer, env={"COLUMNS": "200", "NO_COLOR": "1"}
    )
    return result.exit_code, result.stdout, result.stderr


def a_site_with_two_studies(
    tmp_path: Path, settings: Mapping[tuple[str, str], Setting] | None = None
) -> tuple[Path, dict[str, Path]]:
    created = create_site(tmp_path / "site", "st-marys", "MESH_STM", 11112, settings or {})
    config = load_config(created.config_path)
    store = InstanceStore(config.instances_dir, config.tmp_dir)
    files = {}

    async def fill() -> None:
        async with await Catalog.open(config.catalog_path) as catalog:
            for i, study in enumerate((FORGET, KEEP)):
                data = f"instance of study {i}".encode() * 50
                store.write(data)
                files[study] = store.path_for(hashlib.sha256(data).digest())
                record = make_record(
                    f"{study}.1", data=data, study_uid=study, series_uid=f"{study}.5"
                )
                await catalog.add_instances([record])

    asyncio.run(fill())
    return created.config_path, files


def studies_in(config_path: Path) -> int:
    code, out, _ = run("status", "--config", config_path, "--json")
    assert code == 0
    return int(json.loads(out)["studies"]["total"])


def test_help_says_what_goes_and_that_it_cannot_be_undone() -> None:
    code, out, _ = run("forget", "--help")
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())
    assert code == 0
    for words in ("--study", "--yes", "--wait", "--json", "irreversibly", "trusted peer",
                  "Logs never name the study", "who asked"):  # fmt: skip
        assert words in text, words


def test_a_study_is_forgotten_here_and_the_other_kept(tmp_path: Path) -> None:
    config, files = a_site_with_two_studies(tmp_path)
    assert studies_in(config) == 2
    code, out, err = run("forget", "--config", config, "--study", FORGET, "--yes", "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["state"] == "done" and answer["instances"] == 1, answer
    assert FORGET not in out  # the answer names the request, not the study
    assert studies_in(config) == 1
    assert not files[FORGET].exists() and files[KEEP].exists()
    _, status, _ = run("status", "--config", config)
    assert "forgotten studies: 1 done" in status


def test_without_confirmation_nothing_happens(tmp_path: Path) -> None:
    config, files = a_site_with_two_studies(tmp_path)
    code, _, _ = run("forget", "--config", config, "--study", FORGET, answer="n\n")
    assert code == 2
    assert studies_in(config) == 2 and files[FORGET].exists()


def test_an_unknown_study_is_a_message(tmp_path: Path) -> None:
    config, _ = a_site_with_two_studies(tmp_path)
    code, _, err = run("forget", "--config", config, "--study", "9.9.9", "--yes")
    assert code == 2 and "holds no study with that Study Instance UID" in err
    assert "9.9.9" not in err
