"""Closing a race in pynetdicom's association reactor before a C-STORE is sent.

``send_c_store`` clears the reactor checkpoint and waits for ``_is_paused``, but the
reactor sets that flag *before* it waits on the checkpoint, so the sender may see a stale
``True`` while the reactor is about to poll the DIMSE queue once more. With
``TCP_NODELAY`` the C-STORE-RSP is often back by then: the reactor takes it ("Received
unexpected C-STORE service message") and the sender waits for the whole DIMSE timeout,
then aborts. Seen here about once per 800 small instances.

The fix needs to know that the reactor entered ``wait()`` *after* the checkpoint was
cleared. Associations get a checkpoint that counts its ``wait()`` calls
(:func:`install_counting_checkpoint`, wrapping ``Association.__init__`` before any reactor
thread starts); :func:`pause_reactor` clears it, reads the count, and waits for one more
call, which necessarily blocks. Deterministic: no dependence on catching the reactor's
1 ms sleep between two GIL switches (an earlier version that watched ``_is_paused`` go
False then True stalled for its full 1 s limit on about 1 send in 140).

Every C-STORE sent from another thread than the association's own (the C-STORE SCU,
a C-MOVE sub-association) goes through :func:`reactor_held` in ``sender.py``, which
pauses the reactor this way once and keeps it paused between sends.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from pynetdicom.association import Association

__all__ = [
    "HOLD_IDLE_SECONDS",
    "CountingCheckpoint",
    "install_counting_checkpoint",
    "pause_reactor",
    "reactor_held",
]

_MARK = "_meshpacs_counting_checkpoint"


class CountingCheckpoint(threading.Event):
    """The reactor's checkpoint, counting how often the reactor has waited on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1  # only the reactor thread waits on its checkpoint
        return super().wait(timeout)


def install_counting_checkpoint() -> None:
    """Give every new association a :class:`CountingCheckpoint` (idempotent)."""
    if getattr(Association.__init__, _MARK, False):
        return
    original = Association.__init__

    def __init__(self: Association, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        checkpoint = CountingCheckpoint()
        if self._reactor_checkpoint.is_set():
            checkpoint.set()
        self._reactor_checkpoint = checkpoint

    setattr(__init__, _MARK, True)
    Association.__init__ = __init__  # type: ignore[method-assign]


def pause_reactor(assoc: Any, limit: float = 1.0) -> None:
    """Return once the association's reactor is blocked on its checkpoint (or is gone)."""
    if threading.current_thread() is assoc:
        return  # C-GET: sending from the association's own thread, its reactor is not running
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    if checkpoint is None or not hasattr(assoc, "_is_paused"):
        return  # a pynetdicom without this machinery: nothing to fix here
    checkpoint.clear()
    deadline = time.monotonic() + limit
    if isinstance(checkpoint, CountingCheckpoint):
        seen = checkpoint.waits
        while checkpoint.waits == seen and assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.0001)
        return
    # A checkpoint someone else installed: watch the flag go False then True instead.
    seen_running = False
    while assoc.is_established and time.monotonic() < deadline:
        if not assoc._is_paused:
            seen_running = True
        elif seen_running:
            return
        time.sleep(0.0001)


# A held reactor is resumed after this long without a send (an association nobody
# released); pynetdicom's release and abort resume it at once.
HOLD_IDLE_SECONDS = 5.0
_HELD = "_meshpacs_reactor_hold"
_HOLDS = threading.Lock()


class _Hold:
    """A reactor kept paused between sends; resumed when idle or when the association ends.

    pynetdicom's ``release`` and ``kill`` set the checkpoint themselves, which resumes the
    reactor; the watchdog covers an association nobody releases.
    """

    def __init__(self, assoc: Any, idle: float) -> None:
        self.assoc = assoc
        self.idle = idle
        self.busy = 0
        self.last = time.monotonic()
        self.lock = threading.Lock()
        threading.Thread(target=self._watch, name="meshpacs-reactor-hold", daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(min(0.5, self.idle))
            with self.lock:
                if getattr(self.assoc, _HELD, None) is not self:
                    return
                idle = not self.busy and time.monotonic() - self.last > self.idle
                if idle or not self.assoc.is_established:
                    delattr(self.assoc, _HELD)
                    self.assoc._reactor_checkpoint.set()
                    return


@contextlib.contextmanager
def reactor_held(assoc: Any, idle: float | None = None) -> Iterator[None]:
    """Send with the association's reactor paused, and leave it paused for the next send.

    For an association sent on from another thread (a C-MOVE sub-association): pausing
    and resuming the reactor around every instance cost about 1.3 ms each
    (docs/benchmarks.md). From the association's own thread (C-GET) there is nothing to
    pause.
    """
    if threading.current_thread() is assoc or getattr(assoc, "_reactor_checkpoint", None) is None:
        yield
        return
    hold = _take_hold(assoc, HOLD_IDLE_SECONDS if idle is None else idle)
    try:
        yield
    finally:
        with hold.lock:
            hold.busy -= 1
            hold.last = time.monotonic()


def _take_hold(assoc: Any, idle: float) -> _Hold:
    """The association's hold, made if needed, marked busy (the watchdog leaves it)."""
    checkpoint = assoc._reactor_checkpoint
    while True:
        hold: _Hold
        with _HOLDS:
            found = getattr(assoc, _HELD, None)
            resumed = bool(checkpoint.is_set())
            if isinstance(found, _Hold) and not resumed:
                hold = found
            else:  # not held, or someone resumed the reactor
                pause_reactor(assoc)
                hold = _Hold(assoc, idle)
                setattr(assoc, _HELD, hold)
        with hold.lock:
            current = id(getattr(assoc, _HELD, None))  # id(): `is` would make `hold` Any
            if current == id(hold) and not checkpoint.is_set():
                hold.busy += 1
                return hold
