"""Closing a race in pynetdicom's association reactor before a C-STORE is sent.

Used by every path that sends C-STOREs from another thread than the association's own:
the C-STORE SCU (``scu.py``) and the C-MOVE sub-association (``qr.py``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["pause_reactor"]


def pause_reactor(assoc: Any, limit: float = 1.0) -> None:
    """Block pynetdicom's association reactor before a send, closing a race it leaves open.

    ``send_c_store`` clears the reactor checkpoint and waits for ``_is_paused``, but the
    reactor sets that flag *before* it waits on the checkpoint, so the sender may see a
    stale ``True`` while the reactor is in fact about to poll the DIMSE queue once more.
    With ``TCP_NODELAY`` the C-STORE-RSP is often back by then: the reactor takes it
    ("Received unexpected C-STORE service message") and the sender waits for the whole
    DIMSE timeout, then aborts. Seen here about once per 800 small instances. Clearing
    the checkpoint ourselves and waiting until the flag has been seen ``False`` and then
    ``True`` again proves the reactor went round its loop after the clear and is now
    blocked on the checkpoint (at least a 1 ms sleep lies between the two).
    ``send_c_store`` then finds it paused and sets the checkpoint again when it is done.
    """
    if threading.current_thread() is assoc:
        return  # C-GET: sending from the association's own thread, its reactor is not running
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    if checkpoint is None or not hasattr(assoc, "_is_paused"):
        return  # a pynetdicom without this machinery: nothing to fix here
    checkpoint.clear()
    deadline = time.monotonic() + limit
    seen_running = False
    while assoc.is_established and time.monotonic() < deadline:
        if not assoc._is_paused:
            seen_running = True
        elif seen_running:
            return
        time.sleep(0.0001)
