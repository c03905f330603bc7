"""Shares go to partners while the bundle is being encoded: no work files in between.

::

    encoder thread                     event loop
    encode_bundle ─write()─► ShareChannel (bounded queue) ─chunks()─► put on partner i
                  ─write()─► ShareChannel ──────────────────────────► put on partner j
                  ─write()─► NullSink      (a share already placed: bytes dropped)

Writing the n fragments of a 1 GB bundle to work files and reading them back costs the
owner 1.75 GB of new page-cache pages and 3–5 CPU-seconds on the machines measured
(docs/benchmarks.md); streaming sends each block on as the codec makes it.

All shares advance in step with the codec, so the slowest partner would set the pace. A
channel whose partner has not taken a chunk for ``stall_seconds`` while the codec waits is
**detached**: its upload is cancelled (the partner discards a fragment that did not
arrive whole), the codec goes on for the others, and the share is placed afterwards from
a work file, on a spare site if need be (:mod:`meshpacs.backup.upload` hedges there). A
channel whose upload fails is released the same way at once, so it never holds the codec.

Memory is bounded: each channel holds at most ``capacity`` chunks of :data:`CHUNK` bytes
queued plus one being filled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator

from meshpacs.errors import PlacementError

__all__ = ["CHUNK", "ShareChannel"]

CHUNK = 1024 * 1024  # the transport's chunk: one queue item is one write on the wire
_END = object()


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class ShareChannel:
    """One share's bytes, from the encoder thread (``write``) to an upload (``chunks``).

    ``write``, ``close`` and ``fail`` are called from the encoder thread; ``chunks`` and
    ``release`` from the event loop ``loop``. Setting ``stop`` makes the next ``write``
    raise, so a cancelled pass does not leave the codec running to the end.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        capacity: int = 4,
        stall_seconds: float = 10.0,
        stop: threading.Event | None = None,
    ) -> None:
        self._loop = loop
        self._stop = stop or threading.Event()
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=capacity)
        self._stall = stall_seconds
        self._pending = bytearray()
        self._lock = threading.Lock()
        self._detached: str | None = None

    @property
    def detached(self) -> str | None:
        """Why this share no longer streams (stalled, upload failed), or None."""
        with self._lock:
            return self._detached

    # -- encoder thread ------------------------------------------------------------

    def write(self, data: bytes | memoryview, /) -> int:
        if self._stop.is_set():
            # The pass was cancelled (node stopping): end the codec's work early.
            raise PlacementError("bundle streaming stopped")
        if self.detached is None:
            self._pending += data  # copies: the codec reuses its block buffers
            while len(self._pending) >= CHUNK and self.detached is None:
                self._push(bytes(self._pending[:CHUNK]))
                del self._pending[:CHUNK]
        return len(data)

    def close(self) -> None:
        """The codec wrote the whole fragment."""
        if self._pending:
            self._push(bytes(self._pending))
            self._pending.clear()
        self._push(_END)

    def fail(self, error: BaseException) -> None:
        """The codec stopped: the upload must end without the partner keeping anything."""
        self._pending.clear()
        self._push(_Failed(error))

    def _push(self, item: object) -> None:
        if self.detached is not None:
            return
        future = asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop)
        try:
            future.result(timeout=self._stall)
        except concurrent.futures.TimeoutError:
            future.cancel()
            self._detach(f"partner took nothing for {self._stall:g} s")
        except concurrent.futures.CancelledError:
            self._detach("channel closed")

    def _detach(self, reason: str) -> None:
        with self._lock:
            if self._detached is None:
                self._detached = reason
        self._loop.call_soon_threadsafe(self._wake_consumer)

    # -- event loop ----------------------------------------------------------------

    async def chunks(self) -> AsyncIterator[bytes]:
        """The fragment's bytes in order; raises if the codec failed or the share detached."""
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            if isinstance(item, _Detached):
                raise PlacementError(f"share stream detached: {item.reason}")
            assert isinstance(item, bytes)
            yield item

    def release(self, reason: str) -> None:
        """The upload ended early: drop what is queued so the codec never waits on it."""
        with self._lock:
            if self._detached is None:
                self._detached = reason
        while not self._queue.empty():
            self._queue.get_nowait()

    def _wake_consumer(self) -> None:
        # The consumer may be waiting for a chunk that will never come: tell it why.
        reason = self.detached or "detached"
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_Detached(reason))


class _Detached:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason
