"""The holder's scrubber: re-verifies every fragment it holds, slowly, and quarantines rot.

One pass walks the store in fragment-ID order and calls
:meth:`~meshpacs.store.FragmentStore.scrub` on each fragment in a worker thread. It is paced
to ``bytes_per_second`` (a full read of every fragment must not take the disk from ingest
and backup), so a pass over 1 TB at the default 20 MB/s takes about 14 hours: scrubbing is
a background duty measured in days, not a scan.

What a pass finds is logged by fragment ID, share and owner site (fragment IDs are keyed
HMACs: nothing in them names a patient or study) and returned. A quarantined fragment is
never served again, and after every pass its owner is told directly (the transport's
REPORT_CORRUPT; the node does it through ``report``), so it repairs without waiting for
an audit of that share; an owner that was down is told again after the next pass.

:func:`scrub_on_schedule` runs a pass every ``interval`` seconds, counted from the end of
the last pass as written in a small state file, so a node that restarts daily still
scrubs weekly instead of starting a 14-hour pass at every start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from meshpacs.errors import LimitExceeded, MeshError
from meshpacs.store import FragmentStore, ScrubFinding, StoredFragment

__all__ = ["DEFAULT_BYTES_PER_SECOND", "ScrubPass", "Scrubber", "last_pass_at", "scrub_on_schedule"]

LOG = logging.getLogger("meshpacs.scrub")

DEFAULT_BYTES_PER_SECOND = 20 * 1000 * 1000
_PAGE = 1000

Sleep = Callable[[float], Awaitable[None]]


@dataclass
class ScrubPass:
    """What one pass checked and found."""

    fragments: int = 0
    bytes: int = 0
    findings: list[ScrubFinding] = field(default_factory=list)
    seconds: float = 0.0


class Scrubber:
    """Paced re-verification of one store's fragments."""

    def __init__(
        self,
        store: FragmentStore,
        *,
        bytes_per_second: int = DEFAULT_BYTES_PER_SECOND,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if bytes_per_second < 1:
            raise LimitExceeded(f"a scrub rate of {bytes_per_second} B/s scrubs nothing")
        self._store = store
        self._rate = bytes_per_second
        self._sleep = sleep
        self._clock = clock

    @property
    def store(self) -> FragmentStore:
        return self._store

    async def pass_once(self) -> ScrubPass:
        """Check every fragment held now, once; returns the tally and what failed."""
        result = ScrubPass()
        started = self._clock()
        after: str | None = None
        while True:
            page = await asyncio.to_thread(self._store.held_ids, after=after, limit=_PAGE)
            for fragment_id in page:
                await self._check(fragment_id, result, started)
            if len(page) < _PAGE:
                break
            after = page[-1]
        result.seconds = self._clock() - started
        LOG.info(
            "scrub pass: %d fragments, %d bytes, %d quarantined, %.1f s",
            result.fragments,
            result.bytes,
            len(result.findings),
            result.seconds,
        )
        return result

    async def _check(self, fragment_id: str, result: ScrubPass, started: float) -> None:
        record = await asyncio.to_thread(self._store.has, fragment_id)
        if record is None:
            return  # deleted or replaced since the page was read
        finding = await asyncio.to_thread(self._store.scrub, fragment_id)
        result.fragments += 1
        result.bytes += record.size
        if finding is not None:
            result.findings.append(finding)
            LOG.warning(
                "scrub: fragment %s (share %d, owner site %s) quarantined: %s",
                finding.fragment_id,
                finding.share,
                finding.owner_site,
                finding.reason,
            )
        # Pace by what has been read so far, so short fragments do not sleep one by one
        # for nothing and a long one is followed by the pause it earned.
        ahead = result.bytes / self._rate - (self._clock() - started)
        if ahead > 0:
            await self._sleep(ahead)


def last_pass_at(state_file: Path) -> float | None:
    """When the last complete pass ended (wall clock), from the state file; None if never."""
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        value = json.loads(state_file.read_text(encoding="utf-8")).get("finished_at")
        if isinstance(value, int | float):
            return float(value)
    return None


def _write_pass(state_file: Path, finished_at: float, result: ScrubPass, held: int) -> None:
    document = {
        "finished_at": finished_at,
        "fragments": result.fragments,
        "bytes": result.bytes,
        "quarantined": len(result.findings),  # found by this pass
        "quarantined_held": held,  # kept as evidence, found by any pass, not yet replaced
        "seconds": result.seconds,
    }
    state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = state_file.with_suffix(".tmp")
    temp.write_text(json.dumps(document, indent=2), encoding="utf-8")
    os.replace(temp, state_file)


async def scrub_on_schedule(
    scrubber: Scrubber,
    stop: asyncio.Event,
    *,
    interval: float,
    state_file: Path,
    clock: Callable[[], float] = time.time,
    report: Callable[[list[StoredFragment]], Awaitable[int]] | None = None,
) -> None:
    """A pass every ``interval`` seconds until ``stop``; a failing pass is logged, not fatal.

    After each pass ``report`` is handed every fragment still quarantined (the node tells
    their owners)."""
    while not stop.is_set():
        last = last_pass_at(state_file)
        wait = 0.0 if last is None else max(0.0, last + interval - clock())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=wait)
            return
        try:
            result = await scrubber.pass_once()
        except (MeshError, OSError) as error:
            LOG.error("scrub pass failed: %s", error)
            result = ScrubPass()
        quarantined = await asyncio.to_thread(scrubber.store.quarantined)
        _write_pass(state_file, clock(), result, len(quarantined))
        if report is not None and quarantined:
            try:
                await report(quarantined)
            except (MeshError, OSError) as error:
                LOG.error("scrub: owners not told of quarantined shares: %s", error)
