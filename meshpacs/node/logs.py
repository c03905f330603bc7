"""The node's log lines: one event, one line, as ``key=value`` pairs or as a JSON object.

Every line has the same keys first, in this order, then the call's ``extra={...}`` fields
in the order the call gave them, then ``exc`` (the traceback of ``exc_info``) and
``stack`` when there is one::

    ts=2026-12-07T12:00:00.123Z level=INFO logger=meshpacs.backup msg="bundle 3f9a1c2e placed"
        bundle=3f9a1c2e bytes=10485760 k=4 n=6 sites=b,c,d,e,f,g
    {"ts":"2026-12-07T12:00:00.123Z","level":"INFO","logger":"meshpacs.backup","msg":"bundle
        3f9a1c2e placed","bundle":"3f9a1c2e","bytes":10485760,"k":4,"n":6,"sites":["b","c"]}

(each wrapped here; one line in the log). ``ts`` is UTC with milliseconds. In ``kv``
lines a value is quoted (``"..."``, with ``\\"``, ``\\\\``, ``\\n``, ``\\t``, ``\\xNN``
escapes) when it is empty or holds a space, a quote, a backslash, ``=`` or any control or
line-breaking character; ``msg`` and ``exc`` are always quoted. A list is written
comma-separated, a mapping as compact JSON. In ``json`` lines everything outside
printable ASCII is escaped. Either way no value can break a line, so one event is always
exactly one line.

PHI safety net: unless ``log_phi`` is on, anything shaped like a DICOM UID (digits and
dots, at least five components: ``1.2.840.113619.2.55.3``) in ``msg``, the extras and
``exc`` is replaced by ``<uid>``. IPv4 addresses (four components) and version numbers
stay. This is defence in depth: the code logs row numbers, digest prefixes, sizes and AE
titles, never UIDs. Dotted OIDs of five components or more (in a TLS error, say) are
masked too. The net cannot catch patient names, patient IDs or dates, which have no
shape to recognise: keeping those out rests on the log calls themselves (and on
``configure_pynetdicom``, which keeps pynetdicom from logging identifiers). The DICOM
libraries do quote the values they complain about, though ("Invalid value for VR DA:
'20200101-2020'", pydicom's, even at WARNING): in records from ``pydicom``,
``pynetdicom`` and ``py.warnings`` every single-quoted part of ``msg`` becomes
``'<value>'``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

__all__ = [
    "FORMATS",
    "UID_MARKER",
    "VALUE_MARKER",
    "JsonFormatter",
    "KeyValueFormatter",
    "StructuredFormatter",
    "configure_logging",
    "formatter_for",
    "log_thread_exceptions",
    "scrub_uids",
]

FORMATS = ("kv", "json")
UID_MARKER = "<uid>"
VALUE_MARKER = "'<value>'"

# Five or more dot-separated runs of digits; greedy, so a UID is masked whole.
_UID = re.compile(r"\d+(?:\.\d+){4,}")
# What makes a kv value need quotes; \s includes every line-breaking character.
_NEEDS_QUOTES = re.compile(r'[\s"=\\\x00-\x1f\x7f-\x9f]|^$')
_ESCAPED = re.compile(r'[\\"\x00-\x1f\x7f-\x9f\u2028\u2029]')
_SHORT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_KV_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")

# The attributes every LogRecord has: anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_FIXED = ("ts", "level", "logger", "msg", "exc", "stack")
# Loggers whose messages quote DICOM values; py.warnings carries pydicom's UserWarnings.
_QUOTING_LOGGERS = frozenset({"pydicom", "pynetdicom", "py"})
_QUOTED = re.compile(r"'[^']*'")


def scrub_uids(text: str) -> str:
    """``text`` with everything shaped like a DICOM UID replaced by ``<uid>``."""
    return _UID.sub(UID_MARKER, text)


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _extras(record: logging.LogRecord) -> list[tuple[str, Any]]:
    """The call's ``extra`` fields, in call order (a record's dict keeps insertion order)."""
    found = []
    for key, value in vars(record).items():
        if key in _STANDARD:
            continue
        # An extra named like a fixed key must not shadow it.
        found.append((f"{key}_" if key in _FIXED else key, value))
    return found


class StructuredFormatter(logging.Formatter):
    """The fields of a record, in their stable order, with the UID net applied."""

    def __init__(self, *, log_phi: bool = False) -> None:
        super().__init__()
        self.log_phi = log_phi

    def text(self, value: str) -> str:
        return value if self.log_phi else scrub_uids(value)

    def fields(self, record: logging.LogRecord) -> list[tuple[str, Any]]:
        fields: list[tuple[str, Any]] = [
            ("ts", _timestamp(record)),
            ("level", record.levelname),
            ("logger", record.name),
            ("msg", self.message(record)),
        ]
        fields.extend((key, self.value(value)) for key, value in _extras(record))
        if record.exc_info:
            fields.append(("exc", self.text(self.formatException(record.exc_info))))
        elif record.exc_text:
            fields.append(("exc", self.text(record.exc_text)))
        if record.stack_info:
            fields.append(("stack", self.text(self.formatStack(record.stack_info))))
        return fields

    def message(self, record: logging.LogRecord) -> str:
        text = self.text(record.getMessage())
        if self.log_phi or record.name.split(".", 1)[0] not in _QUOTING_LOGGERS:
            return text
        return _QUOTED.sub(VALUE_MARKER, text)

    def value(self, value: Any) -> Any:
        """An extra's value as JSON would hold it, strings scrubbed."""
        if value is None or isinstance(value, bool | int):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else str(value)
        if isinstance(value, bytes):
            return value.hex()
        if isinstance(value, Mapping):
            return {str(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(item) for item in value]
        return self.text(str(value))


class JsonFormatter(StructuredFormatter):
    """One JSON object per line; non-ASCII is escaped so nothing can split the line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(dict(self.fields(record)), separators=(",", ":"), default=str)


class KeyValueFormatter(StructuredFormatter):
    """``key=value`` pairs (logfmt), values quoted and escaped where they need it."""

    def format(self, record: logging.LogRecord) -> str:
        pairs = []
        for key, value in self.fields(record):
            text = _kv_text(value)
            quote = key in ("msg", "exc", "stack") or _NEEDS_QUOTES.search(text) is not None
            pairs.append(f"{_KV_KEY_UNSAFE.sub('_', key)}={_quoted(text) if quote else text}")
        return " ".join(pairs)


def _kv_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), default=str)
    if isinstance(value, list):
        return ",".join(_kv_text(item) for item in value)
    return str(value)


def _quoted(text: str) -> str:
    return '"' + _ESCAPED.sub(_escape, text) + '"'


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def formatter_for(form: str, *, log_phi: bool = False) -> StructuredFormatter:
    """The formatter of ``[logging] format`` (``"kv"`` or ``"json"``)."""
    if form == "json":
        return JsonFormatter(log_phi=log_phi)
    if form == "kv":
        return KeyValueFormatter(log_phi=log_phi)
    raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {form!r}")


def log_thread_exceptions(args: threading.ExceptHookArgs) -> None:
    """``threading.excepthook``: a thread's uncaught exception as one log event.

    Python's own hook prints the traceback over many lines, straight to standard error.
    """
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    logging.getLogger("meshpacs").critical(
        "uncaught exception in thread %s",
        name,
        exc_info=exc_info,  # type: ignore[arg-type]
    )


def configure_logging(level: str, format: str = "kv", log_phi: bool = False) -> None:
    """One structured line per event on standard error, in ``format`` (described above).

    Every library's records (pynetdicom's included) reach the root handler, so they come
    out in the same format, through the same UID net; so do warnings and the uncaught
    exceptions of threads, which Python would otherwise print over several lines.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(format, log_phi=log_phi))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    threading.excepthook = log_thread_exceptions
    # kademlia logs every crawl step at INFO: its own warnings are what an operator needs.
    for chatty in ("kademlia", "rpcudp"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
