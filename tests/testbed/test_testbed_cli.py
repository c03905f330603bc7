"""``meshpacs testbed up/down``: what their help promises, and failures as messages."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from meshpacs.cli import app


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def plain(text: str) -> str:
    """Help text without rich's box drawing and line breaks."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_up_help_offers_orthanc_and_tells_where_the_details_are() -> None:
    code, out, _ = run("testbed", "up", "--help")
    assert code == 0
    text = plain(out)
    for option in ("--root", "--sites", "--k", "--n", "--trust", "--stable-seconds"):
        assert option in text
    assert "--with-orthanc" in text
    assert "--fast-maintenance" in text and "For trials only" in text
    assert "forwards every stable study to its node" in text
    assert "testbed.json" in text
    assert "answers C-ECHO" in text


def test_down_help_promises_to_stop_only_its_own_processes() -> None:
    code, out, _ = run("testbed", "down", "--help")
    assert code == 0
    text = plain(out)
    assert "nodes and Orthancs" in text
    assert "by PID" in text
    assert "reused by another program is left alone" in text


def test_up_refuses_too_few_sites_with_a_message(tmp_path: object) -> None:
    code, _, err = run("testbed", "up", "--root", str(tmp_path), "--sites", "3", "--n", "3")
    assert code == 2
    assert "need at least 4" in err


def test_down_without_a_testbed_is_a_message(tmp_path: object) -> None:
    code, _, err = run("testbed", "down", "--root", str(tmp_path))
    assert code == 2
    assert "holds no testbed" in err
