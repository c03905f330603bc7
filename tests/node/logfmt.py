"""A strict reader of the node's log lines, as a log collector would read them."""

from __future__ import annotations

import json
import re
from typing import Any

FIXED_KEYS = ["ts", "level", "logger", "msg"]
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

_PAIR = re.compile(r'([A-Za-z0-9_.\-]+)=("(?:[^"\\]|\\.)*"|[^\s"=\\]+)(?: |$)')
_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|.)")
_SHORT = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if code in _SHORT:
        return _SHORT[code]
    if code[0] in "xu" and len(code) > 1:
        return chr(int(code[1:], 16))
    raise ValueError(f"unknown escape \\{code}")


def parse_kv(line: str) -> list[tuple[str, str]]:
    """The pairs of one ``kv`` line, in order; ValueError for anything else."""
    pairs, at = [], 0
    while at < len(line):
        match = _PAIR.match(line, at)
        if match is None:
            raise ValueError(f"not a key=value line at column {at}: {line!r}")
        key, raw = match.groups()
        value = _ESCAPE.sub(_unescape, raw[1:-1]) if raw.startswith('"') else raw
        pairs.append((key, value))
        at = match.end()
    return pairs


def parse_line(line: str, form: str) -> dict[str, Any]:
    """One log line as its fields, checked for the fixed keys first, in order."""
    if form == "json":
        fields = json.loads(line)
        assert isinstance(fields, dict), line
    else:
        pairs = parse_kv(line)
        fields = dict(pairs)
        assert len(fields) == len(pairs), f"a key twice: {line}"
    assert list(fields)[:4] == FIXED_KEYS, line
    assert TIMESTAMP.fullmatch(fields["ts"]), line
    return fields
