"""The holder's scrubber: re-verifies every fragment it holds, slowly, and quarantines rot.

One pass walks the store in fragment-ID order and calls
:meth:`~meshpacs.store.FragmentStore.scrub` on each fragment in a worker thread. It is paced
to ``bytes_per_second`` (a full read of every fragment must not take the disk from ingest
and backup), so a pass over 1 TB at the default 20 MB/s takes about 14 hours: scrubbing is
a background duty measured in days, not a scan.

What a pass finds is logged by fragment ID, share and owner site (fragment IDs are keyed
HMACs: nothing in them names a patient or study) and returned, so the node can tell each
owner (issue 6: signed record or direct message; not wired yet).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from meshpacs.errors import LimitExceeded
from meshpacs.store import FragmentStore, ScrubFinding

__all__ = ["DEFAULT_BYTES_PER_SECOND", "ScrubPass", "Scrubber"]

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
