"""What a running recovery shows while it works: one line of figures, redrawn or logged.

A recovery of a whole archive takes hours; the administrator watching it needs to know it
moves, how fast, when it will end and whether anything is failing::

    recovering: studies 12/480  instances 3,410/96,000  2.1 GB/38.0 GB  61.3 MB/s
                ETA 10m12s  failed 0  unrecoverable 0           (one line on the screen)

:func:`progress_line` makes that line from a :class:`~meshpacs.recovery.report.RecoveryReport`
snapshot (a pure function: no clock, no terminal). :class:`ProgressDisplay` calls it every
``interval`` seconds from the event loop while the run goes on: on a terminal it redraws the
line in place (carriage return, no new line until the end); otherwise (a log file, a pipe,
systemd) it writes one plain line per ``log_interval`` so logs stay short. Like the summary,
the line holds counts and sizes, never a UID.

The rate is that of this run (instances an earlier, interrupted run delivered do not make it
look faster); the ETA divides what is left (planned, less delivered) by that rate, and is
left out until a few seconds of data exist.

**The progress document.** For a dashboard, :class:`ProgressFile` keeps the same figures
as JSON (:func:`progress_document`): the phase (``planning``, ``recovering``,
``finished``), bundles total, done and unrecoverable, studies, instances and bytes planned
and delivered, when the run started and the document was last written, and once finished
its outcome (``complete``, ``incomplete`` or ``failed``). Counts, sizes and times only,
never a UID or a patient field, so the node's dashboard may show it. It is replaced
atomically (temporary file, fsync, rename, fsync of the directory) every few seconds, at
each phase and at the end: in the recovery's working directory (``progress.json``) and,
when the operator names a node to show it on, in that node's ``state/recovery.json``.
A copy that cannot be written is logged once and the recovery goes on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from meshpacs.durable import write_atomic
from meshpacs.recovery.report import RecoveryReport, format_size

__all__ = [
    "DASHBOARD_FILE",
    "PROGRESS_FILE",
    "PROGRESS_VERSION",
    "ProgressDisplay",
    "ProgressFile",
    "progress_document",
    "progress_line",
]

PROGRESS_FILE = "progress.json"  # in the recovery's working directory
DASHBOARD_FILE = "recovery.json"  # in the state directory of the node that shows it
PROGRESS_VERSION = 1

_log = logging.getLogger("meshpacs.recovery")

_MIN_SECONDS_FOR_ETA = 3.0


def progress_line(report: RecoveryReport) -> str:
    """The figures of a recovery in progress, on one line."""
    left = max(0, report.bytes_planned - report.bytes_delivered)
    rate = report.bytes_this_run / report.seconds if report.seconds > 0 else 0.0
    parts = [
        f"studies {report.studies_delivered}/{report.studies_planned}",
        f"instances {report.instances_delivered:,}/{report.instances_planned:,}",
        f"{format_size(report.bytes_delivered)}/{format_size(report.bytes_planned)}",
        f"{format_size(int(rate))}/s",
    ]
    if left == 0:
        parts.append("ETA 0s")
    elif rate > 0 and report.seconds >= _MIN_SECONDS_FOR_ETA:
        parts.append(f"ETA {_duration(left / rate)}")
    else:
        parts.append("ETA --")
    parts.append(f"failed {report.failed_count}")
    parts.append(f"unrecoverable {len(report.unrecoverable)}")
    return "recovering: " + "  ".join(parts)


class ProgressDisplay:
    """Shows :func:`progress_line` of ``snapshot()`` while :meth:`running` is entered.

    ``stream`` is the operator's standard error; ``tty`` says whether to redraw in place
    (default: ``stream.isatty()``).
    """

    def __init__(
        self,
        snapshot: Callable[[], RecoveryReport],
        stream: TextIO,
        *,
        tty: bool | None = None,
        interval: float = 0.5,
        log_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._snapshot = snapshot
        self._stream = stream
        self._tty = stream.isatty() if tty is None else tty
        self._interval = interval if self._tty else log_interval
        self._clock = clock
        self._width = 0

    def show(self) -> None:
        """Draw (or log) the line once, now."""
        line = progress_line(self._snapshot())
        if self._tty:
            # Pad over a longer line drawn before; no new line, so the next draw replaces it.
            self._stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def finish(self) -> None:
        """End the redrawn line, so what follows starts on a line of its own."""
        if self._tty and self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ProgressDisplay]:
        """Show the line every interval until the block ends; then once more, final."""
        task = asyncio.create_task(self._loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.show()
            self.finish()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.show()


def _duration(seconds: float) -> str:
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def progress_document(
    site_id: str,
    phase: str,
    report: RecoveryReport | None,
    *,
    started_at: float,
    updated_at: float,
    outcome: str | None = None,
) -> dict[str, Any]:
    """The PHI-free figures of a recovery (see the module); ``report`` None while planning."""
    figures: dict[str, Any] = {
        "version": PROGRESS_VERSION,
        "site_id": site_id,
        "phase": phase,
        "finished": outcome is not None,
        "outcome": outcome,
        "started_at": started_at,
        "updated_at": updated_at,
        "target": None,
        "bundles": None,
        "studies": None,
        "instances": None,
        "bytes": None,
    }
    if report is not None:
        figures["target"] = report.target
        figures["bundles"] = {
            "total": report.bundles_planned,
            "done": report.bundles_delivered,
            "unrecoverable": len(report.unrecoverable),
        }
        figures["studies"] = {"total": report.studies_planned, "done": report.studies_delivered}
        figures["instances"] = {
            "total": report.instances_planned,
            "delivered": report.instances_delivered,
            "failed": report.failed_count,
        }
        figures["bytes"] = {"total": report.bytes_planned, "delivered": report.bytes_delivered}
    return figures


class ProgressFile:
    """Writes :func:`progress_document` to each of ``paths``, atomically.

    The document only shows the run: a path that cannot be written is logged once and
    skipped from then on, and the recovery goes on (the journal, not this, resumes it).
    """

    def __init__(
        self,
        site_id: str,
        paths: Sequence[Path],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._site_id = site_id
        self._paths = list(paths)
        self._clock = clock
        self.started_at = clock()
        self.phase = "planning"
        self.last: dict[str, Any] | None = None

    def write(self, report: RecoveryReport | None, outcome: str | None = None) -> None:
        document = progress_document(
            self._site_id,
            "finished" if outcome is not None else self.phase,
            report,
            started_at=self.started_at,
            updated_at=self._clock(),
            outcome=outcome,
        )
        data = (json.dumps(document, indent=2) + "\n").encode("utf-8")
        for path in list(self._paths):
            try:
                write_atomic(path, data, 0o644)
            except OSError as exc:
                _log.warning("recovery progress not kept in %s from now on: %s", path,
                             exc.strerror or exc)  # fmt: skip
                self._paths.remove(path)
        self.last = document

    @contextlib.asynccontextmanager
    async def running(
        self, snapshot: Callable[[], RecoveryReport], interval: float = 2.0
    ) -> AsyncIterator[ProgressFile]:
        """Write ``snapshot()`` every ``interval`` while the block runs (phase recovering)."""
        self.phase = "recovering"

        async def loop() -> None:
            while True:
                self.write(snapshot())
                await asyncio.sleep(interval)

        task = asyncio.create_task(loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
