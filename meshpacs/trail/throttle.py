"""At most one audit event per source per minute, so a scanner cannot flood the trail.

Refusals a stranger can cause at will (a wrong dashboard token, a calling AE title not
allowed, a TLS peer without a federation certificate) are security events, and each one
recorded costs an fsync and a line at the collector. :class:`Throttle` lets the first
refusal from a source (its address) through, then counts the others for ``interval``
seconds; the next one let through says how many were counted meanwhile, so the trail
shows both that it happened and how much. The table of sources is bounded: past
``max_sources`` addresses (a scan from many), the newcomers share one entry.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["OTHER_SOURCES", "Throttle", "suppressed_note"]

OTHER_SOURCES = "*"  # the shared entry of sources beyond the table's bound


class Throttle:
    """Decides, per source, whether this event is recorded; thread-safe."""

    def __init__(
        self,
        interval: float = 60.0,
        *,
        max_sources: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.max_sources = max_sources
        self._clock = clock
        self._lock = threading.Lock()
        self._sources: dict[str, tuple[float, int]] = {}  # source -> (last recorded, counted)

    def admit(self, source: str) -> int | None:
        """None: count this one and record nothing. Else record it, with the number of
        events from ``source`` counted (not recorded) since the last one recorded."""
        now = self._clock()
        with self._lock:
            key = self._key(source, now)
            last = self._sources.get(key)
            if last is not None and now - last[0] < self.interval:
                self._sources[key] = (last[0], last[1] + 1)
                return None
            self._sources[key] = (now, 0)
            return last[1] if last is not None else 0

    def _key(self, source: str, now: float) -> str:
        if source in self._sources or len(self._sources) < self.max_sources:
            return source
        expired = [s for s, (at, counted) in self._sources.items()
                   if now - at >= self.interval and counted == 0]  # fmt: skip
        for stale in expired:
            del self._sources[stale]
        return source if len(self._sources) < self.max_sources else OTHER_SOURCES


def suppressed_note(counted: int) -> str:
    """The text an admitted event adds about those counted before it ("" for none)."""
    if counted <= 0:
        return ""
    return f"; {counted} more like it from the same source since the last one recorded"
