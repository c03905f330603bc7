"""The fields of captured log records, as the node's formatters write them and a collector
reads them back (tests/node/logfmt.py), in both forms."""

from __future__ import annotations

import logging
from typing import Any

from meshpacs.node.logs import formatter_for
from tests.node.logfmt import parse_line


def event_fields(records: list[logging.LogRecord], event: str) -> list[dict[str, Any]]:
    """The JSON fields of each record of ``event``; each also read back from its kv line,
    with the same keys in the same order."""
    as_json, as_kv = formatter_for("json"), formatter_for("kv")
    found = []
    for record in records:
        fields = parse_line(as_json.format(record), "json")
        if fields.get("event") != event:
            continue
        pairs = parse_line(as_kv.format(record), "kv")
        assert list(pairs) == list(fields), (pairs, fields)
        found.append(fields)
    return found
