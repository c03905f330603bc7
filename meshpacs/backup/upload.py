"""Putting a bundle's shares on partner sites, so that one slow partner does not set the pace.

Each missing share goes to the next unused site in placement order. When a put fails, the
share moves on to the next spare site. When most shares are in and a put is still
running well past how long the others took, the same share is also started on a spare
site (a hedged request, the long-tail remedy of Dean and Barroso's "The Tail at Scale"):
whichever copy is acknowledged first counts, the other is cancelled, and a copy that was
acknowledged anyway is deleted again so that each share is held by exactly one site.

A share counts as placed only when the partner has acknowledged it durably; the caller
records each placement as it happens (``on_placed``), so a stop loses no acknowledged work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshpacs.errors import MeshError

__all__ = ["Put", "UploadOutcome", "UploadPolicy", "place_shares"]

_log = logging.getLogger("meshpacs.backup")

# put(site_id, share) -> None once the site acknowledged the share durably; raises on failure.
Put = Callable[[str, int], Coroutine[Any, Any, None]]
Delete = Callable[[str, int], Coroutine[Any, Any, None]]
OnPlaced = Callable[[int, str], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class UploadPolicy:
    """When to hedge: after ``hedge_fraction`` of the shares are in, a put running longer
    than ``hedge_factor`` times the slowest finished put (and at least ``hedge_min``
    seconds) gets a second copy on a spare site. A share streaming while the bundle is
    encoded is detached (and placed later, maybe elsewhere) when its partner takes
    nothing for ``stall_seconds``."""

    hedge_fraction: float = 0.5
    hedge_factor: float = 2.0
    hedge_min: float = 1.0
    tick: float = 0.05
    stall_seconds: float = 10.0


@dataclass
class UploadOutcome:
    """Which site holds each placed share, and why the others are not placed."""

    placed: dict[int, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # site -> reason
    hedged: int = 0


@dataclass
class _Attempt:
    share: int
    site: str
    task: asyncio.Task[None]
    started: float


class _Uploader:
    def __init__(
        self,
        shares: Sequence[int],
        sites: Sequence[str],
        put: Put,
        delete: Delete,
        on_placed: OnPlaced,
        policy: UploadPolicy,
        already: Mapping[int, str],
    ) -> None:
        self.missing = [s for s in shares if s not in already]
        self.spare = [s for s in sites if s not in already.values()]
        self.put, self.delete, self.on_placed = put, delete, on_placed
        self.policy = policy
        self.outcome = UploadOutcome(placed=dict(already))
        self.running: list[_Attempt] = []
        self.durations: list[float] = []
        self.already = len(already)

    def _start(self, share: int) -> bool:
        if not self.spare:
            return False
        site = self.spare.pop(0)
        task = asyncio.create_task(self.put(site, share))
        self.running.append(_Attempt(share, site, task, time.monotonic()))
        return True

    async def run(self) -> UploadOutcome:
        for share in self.missing:
            if not self._start(share):
                break
        try:
            while self.running:
                tasks = [a.task for a in self.running]
                await asyncio.wait(tasks, timeout=self.policy.tick, return_when="FIRST_COMPLETED")
                for attempt in [a for a in self.running if a.task.done()]:
                    self.running.remove(attempt)
                    await self._finished(attempt)
                self._hedge()
        finally:
            for attempt in self.running:
                attempt.task.cancel()
        return self.outcome

    async def _finished(self, attempt: _Attempt) -> None:
        share, site = attempt.share, attempt.site
        error = attempt.task.exception() if not attempt.task.cancelled() else None
        if attempt.task.cancelled() and share in self.outcome.placed:
            return  # the losing copy of a hedged share
        if attempt.task.cancelled() or error is not None:
            reason = "cancelled" if error is None else _reason(error)
            self.outcome.failed.setdefault(site, reason)
            _log.info("share %d not placed on site %s: %s", share, site, reason,
                      extra={"share": share, "site": site})  # fmt: skip
            if share not in self.outcome.placed and not self._in_flight(share):
                self._start(share)
            return
        if share in self.outcome.placed:
            # The other copy of a hedged share won: this one is surplus.
            with contextlib.suppress(MeshError, OSError):
                await self.delete(site, share)
            return
        self.durations.append(time.monotonic() - attempt.started)
        self.outcome.placed[share] = site
        await self.on_placed(share, site)
        for other in [a for a in self.running if a.share == share]:
            other.task.cancel()

    def _in_flight(self, share: int) -> bool:
        return any(a.share == share for a in self.running)

    def _hedge(self) -> None:
        done = len(self.outcome.placed) - self.already
        if not self.spare or done < self.policy.hedge_fraction * len(self.missing):
            return
        if not self.durations:
            return
        limit = max(self.policy.hedge_min, self.policy.hedge_factor * max(self.durations))
        now = time.monotonic()
        for attempt in list(self.running):
            lone = sum(1 for a in self.running if a.share == attempt.share) == 1
            if lone and now - attempt.started > limit and self._start(attempt.share):
                self.outcome.hedged += 1
                _log.info("share %d slow on site %s: hedged", attempt.share, attempt.site)


def _reason(error: BaseException) -> str:
    if isinstance(error, MeshError | OSError | TimeoutError):
        return str(error) or type(error).__name__
    raise error


async def place_shares(
    shares: Sequence[int],
    sites: Sequence[str],
    put: Put,
    delete: Delete,
    on_placed: OnPlaced,
    *,
    policy: UploadPolicy | None = None,
    already: Mapping[int, str] | None = None,
) -> UploadOutcome:
    """Put every share of ``shares`` not in ``already`` on its own site from ``sites``.

    ``sites`` is in placement order (closest first) and holds more sites than shares
    when spares exist. Returns when every share is placed or no site is left to try;
    ``outcome.placed`` includes ``already``. Errors other than MeshError/OSError/timeouts
    (bugs) propagate after the other puts are cancelled.
    """
    uploader = _Uploader(
        shares, sites, put, delete, on_placed, policy or UploadPolicy(), already or {}
    )
    return await uploader.run()
