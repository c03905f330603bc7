"""Protection over time: a small snapshot of the study counts, one JSON line every few minutes.

The dashboard draws how many of the site's studies were protected, degraded and not yet
protected over the last days. The status document only knows now, so the running node
appends ``{"at": <unix time>, "total": .., "protected": .., "degraded": .., "unprotected":
..}`` to ``state/history.jsonl`` every ``[web] history_interval_seconds``. Only those
integers are written (built here field by field, never copied from a document), so the
file cannot carry PHI.

The file stays bounded: once it holds more than ``max_lines`` plus a tenth, it is
rewritten atomically with its last ``max_lines`` lines (a rewrite every few hundred
appends, not at each). A line cut short by a crash is skipped when read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from meshpacs.durable import write_all, write_atomic

__all__ = [
    "HISTORY_FILE",
    "MAX_LINES",
    "Snapshot",
    "append_snapshot",
    "keep_history",
    "read_history",
    "snapshot",
]

LOG = logging.getLogger("meshpacs.web")

HISTORY_FILE = "history.jsonl"
MAX_LINES = 2000  # a week at one line every five minutes
_MAX_READ_BYTES = 4 * 1024 * 1024  # far above 2200 lines of ~90 bytes
_STATES = ("total", "protected", "degraded", "unprotected")


@dataclass(frozen=True)
class Snapshot:
    """The site's study counts at one moment."""

    at: float
    total: int
    protected: int
    degraded: int
    unprotected: int


def snapshot(status: Mapping[str, Any], now: float) -> Snapshot:
    """The counts of a status document (``site_status``) at ``now``."""
    studies = status.get("studies")
    studies = studies if isinstance(studies, Mapping) else {}
    counts = [studies.get(state, 0) for state in _STATES]
    return Snapshot(now, *(int(c) if isinstance(c, int) else 0 for c in counts))


def _parse(line: str) -> Snapshot | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("at"), int | float):
        return None
    counts: list[int] = []
    for state in _STATES:
        count = entry.get(state)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            return None
        counts.append(count)
    return Snapshot(float(entry["at"]), *counts)


def read_history(path: Path, limit: int = MAX_LINES) -> list[Snapshot]:
    """The last ``limit`` well-formed snapshots, oldest first; [] if there is no file."""
    try:
        with path.open("rb") as stream:
            size = stream.seek(0, os.SEEK_END)
            stream.seek(max(0, size - _MAX_READ_BYTES))
            data = stream.read(_MAX_READ_BYTES)
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    if len(data) == _MAX_READ_BYTES and size > _MAX_READ_BYTES:
        lines = lines[1:]  # the first line read is probably cut
    found = [s for s in (_parse(line) for line in lines) if s is not None]
    return found[-limit:] if limit > 0 else []


def append_snapshot(path: Path, entry: Snapshot, max_lines: int = MAX_LINES) -> None:
    """Append ``entry``; keep the file to about ``max_lines`` lines."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = json.dumps(asdict(entry), separators=(",", ":")) + "\n"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        # A line cut short by a crash gets its end, so only it is lost, not the next one.
        end = os.lseek(fd, 0, os.SEEK_END)
        if end and os.pread(fd, 1, end - 1) != b"\n":
            line = "\n" + line
        write_all(fd, line.encode("ascii"))
    finally:
        os.close(fd)
    with path.open("rb") as stream:
        count = sum(1 for _ in stream)
    if count > max_lines + max_lines // 10:
        kept = read_history(path, max_lines)
        text = "".join(json.dumps(asdict(s), separators=(",", ":")) + "\n" for s in kept)
        write_atomic(path, text.encode("ascii"), 0o600)


async def keep_history(
    status: Callable[[], Mapping[str, Any]],
    path: Path,
    interval: float,
    stop: asyncio.Event,
    *,
    clock: Callable[[], float] = time.time,
    max_lines: int = MAX_LINES,
) -> None:
    """Append a snapshot now and every ``interval`` seconds until ``stop`` is set.

    ``status`` reads SQLite, so it runs in a worker thread; a failed read is logged and
    tried again at the next tick (the dashboard must never stop the node).
    """
    while not stop.is_set():
        try:
            document = await asyncio.to_thread(status)
            entry = snapshot(document, clock())
            await asyncio.to_thread(append_snapshot, path, entry, max_lines)
        except Exception as exc:  # the node keeps running; the chart shows a gap
            LOG.error("dashboard history: could not record a snapshot: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
