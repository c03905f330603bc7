"""``meshpacs node leave``: a site hands back what it holds for partners before it goes.

The request is a file, ``state/leaving.json``, which the running node picks up within
one upkeep pass. From then on the node (see :class:`~meshpacs.node.mesh.MeshNode`):

- offers no room in its node record, so no partner picks it for new shares;
- refuses new fragments and answers audits with ``LEAVING``, so each owner marks it as
  leaving and its repairer rebuilds every share held here on other sites at once (from
  k good fragments, this node's among them: it keeps serving reads);
- deletes each fragment when its owner, having placed the new share, asks it to.

It is done when it holds nothing; then it can be stopped for good. What the site's own
backups hold at partners is not touched: they go when the leases run out, or at once
with ``meshpacs forget``. Leaving cannot be taken back by this command (remove the file
and restart the node; owners that saw it leaving keep placing their shares elsewhere).
"""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshpacs.durable import write_atomic
from meshpacs.node.config import NodeConfig
from meshpacs.store.index import held_counts
from meshpacs.store.store import INDEX_NAME

__all__ = [
    "LEAVING_FILE",
    "HeldNow",
    "held_now",
    "leave_requested",
    "request_leave",
    "wait_until_empty",
]

LEAVING_FILE = "leaving.json"


@dataclass(frozen=True)
class HeldNow:
    """What the site still holds for partners."""

    fragments: int
    owners: int


def request_leave(config: NodeConfig, now: float | None = None) -> dict[str, Any]:
    """File the request (again is harmless: the first time is kept)."""
    path = config.state_dir / LEAVING_FILE
    existing = leave_requested(config)
    if existing is not None:
        return existing
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    document = {"requested_at": time.time() if now is None else now, "requested_by": who}
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, json.dumps(document, indent=2).encode(), 0o600)
    return document


def leave_requested(config: NodeConfig) -> dict[str, Any] | None:
    """The request, if one was filed (an unreadable file counts as one: leave is safe)."""
    path = config.state_dir / LEAVING_FILE
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"requested_at": None}
    return document if isinstance(document, dict) else {"requested_at": None}


def held_now(config: NodeConfig) -> HeldNow:
    fragments, owners = held_counts(config.fragments_dir / INDEX_NAME)
    return HeldNow(fragments, owners)


def wait_until_empty(
    config: NodeConfig,
    timeout: float,
    progress: Callable[[HeldNow], None] | None = None,
    *,
    every: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> HeldNow:
    """Poll until nothing is held or ``timeout`` passes; what is held at the end."""
    deadline = time.monotonic() + timeout
    last_told = 0.0
    while True:
        held = held_now(config)
        if held.fragments == 0 or time.monotonic() >= deadline:
            return held
        if progress is not None and time.monotonic() - last_told >= every:
            progress(held)
            last_told = time.monotonic()
        sleep(min(1.0, every))
