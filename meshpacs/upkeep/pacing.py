"""How upkeep loops wait between passes: a pause that a stop request cuts short.

Tests inject their own ``Pause`` so a loop's rhythm is under their control.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

__all__ = ["Pause", "wait_or_stop"]

# Waits ``seconds`` or until the event is set, whichever comes first.
Pause = Callable[[float, asyncio.Event], Awaitable[None]]


async def wait_or_stop(seconds: float, stop: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
