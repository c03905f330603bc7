"""state/history.jsonl: PHI-free counts only, bounded, and a torn line costs only itself."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from meshpacs.web.history import Snapshot, append_snapshot, keep_history, read_history, snapshot

from .documents import NOW, full_status


def test_a_snapshot_holds_only_the_counts() -> None:
    status = full_status()
    status["studies"]["patient_name"] = "DOE^JANE"  # a field that must never be copied
    entry = snapshot(status, NOW)
    assert entry == Snapshot(NOW, total=7, protected=4, degraded=1, unprotected=2)


def test_the_file_stays_bounded_and_keeps_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "state" / "history.jsonl"
    for i in range(250):
        append_snapshot(path, Snapshot(float(i), i, i, 0, 0), max_lines=100)
    lines = path.read_text().splitlines()
    assert 100 <= len(lines) <= 110
    kept = read_history(path)
    assert kept[-1].at == 249.0 and kept == sorted(kept, key=lambda s: s.at)
    assert read_history(path, limit=5) == kept[-5:]
    assert path.stat().st_mode & 0o777 == 0o600
    assert all(set(json.loads(line)) == {"at", "total", "protected", "degraded", "unprotected"}
               for line in lines)  # fmt: skip


def test_a_line_cut_short_by_a_crash_is_skipped_and_the_next_one_kept(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    append_snapshot(path, Snapshot(1.0, 1, 1, 0, 0))
    with path.open("a") as out:
        out.write('{"at": 2.0, "total": 3, "prot')  # the crash
    append_snapshot(path, Snapshot(3.0, 2, 2, 0, 0))
    assert [s.at for s in read_history(path)] == [1.0, 3.0]
    assert read_history(tmp_path / "none.jsonl") == []


async def test_the_node_loop_records_now_and_then_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    stop = asyncio.Event()
    calls = 0

    def status() -> dict[str, object]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("catalog busy")  # logged; the loop goes on
        return full_status()

    task = asyncio.create_task(keep_history(status, path, 0.05, stop))
    while len(read_history(path)) < 3:
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert all(s.protected == 4 for s in read_history(path))
