"""The running figures of a recovery: one line, redrawn on a terminal, logged elsewhere."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from pathlib import Path

import pytest

from meshpacs.recovery.progress import ProgressDisplay, ProgressFile, progress_line
from meshpacs.recovery.report import RecoveryReport, UnrecoverableBundle

_UID = "1.2.826.0.1.3680043.8.498.77"


def snapshot(**changes: object) -> RecoveryReport:
    base = RecoveryReport(
        target="PACS@127.0.0.1:4242",
        studies_planned=10,
        studies_delivered=2,
        instances_planned=1000,
        instances_delivered=250,
        instances_resumed=50,
        instances_this_run=200,
        bytes_planned=4_000_000_000,
        bytes_delivered=1_000_000_000,
        bytes_resumed=200_000_000,
        bytes_this_run=800_000_000,
        seconds=10.0,
        unrecoverable=(),
        failed=(),
        failed_count=0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_the_line_gives_counts_rate_of_this_run_and_eta() -> None:
    line = progress_line(snapshot())
    assert "studies 2/10" in line
    assert "instances 250/1,000" in line
    assert "1.0 GB/4.0 GB" in line
    # 800 MB in 10 s is this run's rate; the 200 MB an earlier run delivered do not count.
    assert "80.0 MB/s" in line
    # 3 GB left at 80 MB/s: 37.5 s.
    assert "ETA 38s" in line
    assert "failed 0" in line and "unrecoverable 0" in line


def test_eta_is_shown_in_minutes_and_hours_and_left_out_before_data() -> None:
    # 3 GB left at 5 MB/s, then at 400 KB/s.
    assert "ETA 10m00s" in progress_line(snapshot(bytes_this_run=40_000_000, seconds=8.0))
    assert "ETA 2h05m" in progress_line(snapshot(bytes_this_run=4_000_000, seconds=10.0))
    assert "ETA --" in progress_line(snapshot(bytes_this_run=0, seconds=0.0))
    assert "ETA --" in progress_line(snapshot(seconds=1.0))  # too early to tell
    done = snapshot(bytes_delivered=4_000_000_000, instances_delivered=1000)
    assert "ETA 0s" in progress_line(done)


def test_failures_are_counted_but_no_uid_is_shown() -> None:
    lost = UnrecoverableBundle(b"\x01" * 16, _UID, 12, "only 1 of k=2 fragments reachable")
    line = progress_line(snapshot(failed_count=3, unrecoverable=(lost,)))
    assert "failed 3" in line and "unrecoverable 1" in line
    assert _UID not in line and "01010101" not in line


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_line_is_redrawn_in_place_then_ended() -> None:
    screen = _Terminal()
    figures = iter([snapshot(), snapshot(studies_delivered=10, instances_delivered=1000)])
    display = ProgressDisplay(lambda: next(figures), screen)
    display.show()
    display.show()
    display.finish()
    text = screen.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    first, second = text.split("\r")[1:]
    assert len(second.rstrip("\n")) >= len(first)  # padded over the longer line before
    assert "studies 10/10" in second


def test_elsewhere_each_line_is_a_plain_log_line() -> None:
    log = io.StringIO()  # not a terminal
    display = ProgressDisplay(snapshot, log)
    display.show()
    display.show()
    display.finish()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue()
    assert all(line.startswith("recovering: ") for line in lines)


async def test_running_shows_the_figures_while_the_work_goes_on_and_once_at_the_end() -> None:
    screen = _Terminal()
    calls = 0

    def figures() -> RecoveryReport:
        nonlocal calls
        calls += 1
        return snapshot(instances_delivered=calls)

    display = ProgressDisplay(figures, screen, interval=0.01)
    async with display.running():
        await asyncio.sleep(0.2)
    during = calls - 1
    assert during >= 3  # redrawn while the block ran, not only at its end
    assert screen.getvalue().endswith("\n")
    await asyncio.sleep(0.05)
    assert calls == during + 1  # and nothing more once it ended


def test_the_progress_file_is_written_whole_and_a_bad_copy_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = iter([100.0, 101.0, 102.0, 103.0]).__next__
    missing = tmp_path / "no-such-node" / "state" / "recovery.json"
    shown = ProgressFile("st-marys", [tmp_path / "progress.json", missing], clock=clock)
    shown.write(None)
    first = json.loads((tmp_path / "progress.json").read_text())
    assert first["phase"] == "planning" and first["bundles"] is None
    assert first["started_at"] == 100.0 and first["updated_at"] == 101.0
    assert "recovery.json" in caplog.text  # logged once, then skipped
    caplog.clear()
    report = RecoveryReport(
        "dir:/restored", 2, 1, 10, 4, 0, 4, 1000, 400, 0, 400, 1.0, (), (), 0,
        bundles_planned=3, bundles_delivered=1,
    )  # fmt: skip
    shown.write(report, outcome="incomplete")
    last = json.loads((tmp_path / "progress.json").read_text())
    assert last == shown.last
    assert last["finished"] and last["outcome"] == "incomplete" and last["phase"] == "finished"
    assert last["bundles"] == {"total": 3, "done": 1, "unrecoverable": 0}
    assert last["instances"] == {"total": 10, "delivered": 4, "failed": 0}
    assert last["bytes"] == {"total": 1000, "delivered": 400}
    assert not caplog.text and not missing.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
