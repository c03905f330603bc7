"""Forwarding the trail to a syslog collector without ever making anyone wait for it.

:class:`QueuedForwarder` is what a :class:`~meshpacs.trail.writer.TrailWriter` hands each
record to: :meth:`~QueuedForwarder.submit` only appends to a bounded queue, and one
background thread sends the queue, oldest first, through a
:class:`~meshpacs.trail.syslog.SyslogSender`. A C-STORE, a query or the node's start
therefore never waits for the network, and a collector that is down costs nothing but a
WARNING in the log.

While the collector cannot be reached the thread keeps the record it could not send at
the head of the queue and tries again after a pause that doubles up to ``max_backoff``;
records keep arriving behind it, so the collector gets them in order once it is back.
A queue that fills meanwhile drops its oldest record: the loss is counted
(:attr:`~QueuedForwarder.dropped`) and logged, and nothing is lost from the site's own
trail, which stays the record (``meshpacs audit verify`` checks it; the collector's copy
is the one out of this machine's reach). Log lines name the collector and counts only,
never a message's content.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from meshpacs.errors import LimitExceeded, MeshError, brief
from meshpacs.trail.syslog import SyslogSender

__all__ = ["DEFAULT_CAPACITY", "QueuedForwarder"]

LOG = logging.getLogger("meshpacs.trail")
DEFAULT_CAPACITY = 10_000  # about an hour of a busy site's events, a few MiB


class QueuedForwarder:
    """A bounded queue of syslog records drained to one collector by one daemon thread."""

    def __init__(
        self,
        sender: SyslogSender,
        *,
        capacity: int = DEFAULT_CAPACITY,
        min_backoff: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        if capacity < 1:
            raise ValueError("the forwarding queue holds at least one record")
        self.sender = sender
        self.capacity = capacity
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._queue: collections.deque[bytes] = collections.deque()
        self._ready = threading.Condition()
        self._stopping = threading.Event()
        self._sent = 0
        self._dropped = 0
        self._dropped_in_outage = 0
        self._down_since: float | None = None
        self._thread = threading.Thread(
            target=self._drain, name="meshpacs-trail-forward", daemon=True
        )
        self._thread.start()

    @property
    def where(self) -> str:
        return f"{self.sender.host}:{self.sender.port}"

    @property
    def dropped(self) -> int:
        """Records dropped, oldest first, because the queue was full."""
        with self._ready:
            return self._dropped

    @property
    def sent(self) -> int:
        with self._ready:
            return self._sent

    @property
    def pending(self) -> int:
        with self._ready:
            return len(self._queue)

    def submit(self, record: bytes) -> None:
        """Queue ``record`` for the collector; never blocks on the network."""
        with self._ready:
            if self._stopping.is_set():
                return
            if len(self._queue) >= self.capacity:
                self._queue.popleft()
                self._dropped += 1
                self._dropped_in_outage += 1
                if self._dropped_in_outage == 1 or self._dropped_in_outage % 1000 == 0:
                    LOG.warning("audit forwarding queue full (%d records): %d dropped, oldest"
                                " first, while collector %s is unreachable; the local trail"
                                " keeps them all", self.capacity, self._dropped_in_outage,
                                self.where)  # fmt: skip
            self._queue.append(record)
            self._ready.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Send what can be sent within ``timeout`` seconds, then stop the thread."""
        deadline = time.monotonic() + timeout
        with self._ready:
            while self._queue and self._down_since is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(min(left, 0.1))
            left_behind = len(self._queue)
            self._stopping.set()
            self._ready.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
        if not self._thread.is_alive():
            # Else it is still in a send (a hanging collector): that ends at the sender's
            # timeout, on a daemon thread, and closing here would wait for it.
            self.sender.close()
        if left_behind or self._dropped:
            LOG.warning("audit forwarding to %s stopped: %d records not forwarded, %d dropped"
                        " (all kept in the local trail)", self.where, left_behind,
                        self._dropped)  # fmt: skip

    # -- the thread ----------------------------------------------------------------------

    def _drain(self) -> None:
        backoff = self._min_backoff
        while True:
            record = self._head()
            if record is None:
                return
            try:
                self.sender.send(record)
            except LimitExceeded as exc:
                LOG.warning("audit record not forwardable, skipped: %s", brief(exc))
                self._sent_head(record)
                continue
            except MeshError as exc:
                self._went_down(exc)
                self._stopping.wait(backoff)  # close() cuts the pause short
                backoff = min(backoff * 2, self._max_backoff)
                continue
            except Exception:  # a bug must not stop forwarding for the node's lifetime
                LOG.exception("audit forwarding to %s failed; record skipped", self.where)
                self._sent_head(record)
                continue
            backoff = self._min_backoff
            self._sent_head(record)

    def _head(self) -> bytes | None:
        """The oldest record, left queued until sent; None once stopping."""
        with self._ready:
            while not self._queue and not self._stopping.is_set():
                self._ready.wait()
            if self._stopping.is_set():
                return None
            return self._queue[0]

    def _sent_head(self, record: bytes) -> None:
        with self._ready:
            # Identity, not equality: a full queue may have dropped it meanwhile.
            if self._queue and self._queue[0] is record:
                self._queue.popleft()
            self._sent += 1
            if self._down_since is not None:
                LOG.warning("audit collector %s reachable again after %.0f s; %d records"
                            " dropped meanwhile (kept in the local trail)", self.where,
                            time.monotonic() - self._down_since,
                            self._dropped_in_outage)  # fmt: skip
                self._down_since = None
                self._dropped_in_outage = 0
            self._ready.notify_all()

    def _went_down(self, exc: MeshError) -> None:
        with self._ready:
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
            waiting = len(self._queue)
            self._ready.notify_all()
        if first:
            LOG.warning("audit collector unreachable: %s; %d records wait, retrying with"
                        " backoff (the local trail keeps them all)", brief(exc),
                        waiting)  # fmt: skip
