"""``[web]`` in config.toml: defaults, port 0, and mistakes named by their dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshpacs.errors import ConfigError
from meshpacs.node.config import WebConfig, parse_config

BASE = '[site]\nid = "st-marys"\ndata_dir = "."\n[dicom]\nae_title = "MESH"\nport = 11112\n'


def web(text: str) -> WebConfig:
    return parse_config(BASE + "[web]\n" + text, Path("/srv/meshpacs"), "config.toml").web


def test_defaults_serve_this_machine_only() -> None:
    assert parse_config(BASE, Path("/srv"), "c").web == WebConfig()
    assert WebConfig() == WebConfig(True, "127.0.0.1", 8480, 300.0)


def test_settings_are_read() -> None:
    assert web('enabled = false\nbind = "::1"\nport = 0\nhistory_interval_seconds = 5\n') == (
        WebConfig(False, "::1", 0, 5.0)
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("port = 11112", r"web\.port: 11112 is also dicom\.port"),
        ("port = 11121", r"web\.port: 11121 is also mesh\.transport_port"),
        ("port = 70000", r"web\.port: must be from 0 to 65535"),
        ("port = true", r"web\.port: must be a whole number"),
        ('bind = "not a host!"', r"web\.bind: .* is neither an IP address nor a host name"),
        ("history_interval_seconds = 0", r"web\.history_interval_seconds: must be more than 0"),
        ("enable = true", r"unknown setting web\.enable \(did you mean web\.enabled\?\)"),
    ],
)
def test_mistakes_are_named(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        web(text + "\n")
