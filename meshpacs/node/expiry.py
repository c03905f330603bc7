"""The holder's lease expiry: removes partners' fragments their owners stopped leasing.

A partner that left the federation, lost its site for good, or forgot a study stops
renewing (see :mod:`meshpacs.upkeep.leases`). Once a fragment has been out of lease for
longer than ``[maintenance] expired_grace_days``, :func:`expire_on_schedule` removes it
and frees its owner's quota here. The grace is the owner's time to come back: a site
rebuilding after a disaster restores from these very fragments, so the default lease
plus grace (30 + 30 days) is long.

Each pass adds its tally to ``state/expiry.json`` (for ``status``). Logs count
fragments only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshpacs.durable import write_atomic
from meshpacs.errors import MeshError, brief
from meshpacs.store import MAX_LIST, FragmentStore
from meshpacs.upkeep.pacing import wait_or_stop

__all__ = ["expire_on_schedule", "expire_once", "expiry_report"]

_log = logging.getLogger("meshpacs.expiry")


def expire_once(store: FragmentStore, grace_seconds: float) -> int:
    """Remove everything out of lease for over ``grace_seconds``; how many were removed."""
    removed = 0
    while True:
        expired = store.expire(grace_seconds, limit=MAX_LIST)
        removed += len(expired)
        if len(expired) < MAX_LIST:
            return removed


def expiry_report(state_file: Path) -> dict[str, Any] | None:
    """What expiry has removed here so far, from the state file; None before a first pass."""
    with contextlib.suppress(OSError, ValueError):
        document = json.loads(state_file.read_text(encoding="utf-8"))
        if isinstance(document, dict):
            return document
    return None


def _record(state_file: Path, now: float, removed: int) -> None:
    before = expiry_report(state_file) or {}
    total = int(before.get("removed_total", 0)) + removed
    document = {
        "last_pass_at": now,
        "removed_last_pass": removed,
        "removed_total": total,
        "last_removed_at": now if removed else before.get("last_removed_at"),
    }
    state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(state_file, json.dumps(document, indent=2).encode(), 0o600)


async def expire_on_schedule(
    store: FragmentStore,
    stop: asyncio.Event,
    *,
    grace_seconds: float,
    interval_seconds: float,
    state_file: Path,
    clock: Callable[[], float] = time.time,
) -> None:
    """A pass every ``interval_seconds`` until ``stop``; a failing pass is logged, not fatal."""
    while not stop.is_set():
        try:
            removed = await asyncio.to_thread(expire_once, store, grace_seconds)
            await asyncio.to_thread(_record, state_file, clock(), removed)
        except (MeshError, OSError) as error:
            _log.error("lease expiry pass failed: %s", brief(error))
        else:
            if removed:
                _log.info("expiry: %d partner fragment(s) out of lease removed", removed)
        await wait_or_stop(interval_seconds, stop)
