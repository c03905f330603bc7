"""Recording audit events from the node and the commands: render, append, forward.

:class:`TrailWriter` is what the rest of meshpacs holds: ``record`` renders an event
(:mod:`meshpacs.trail.messages`) and appends it to the site's trail (:mod:`.log`),
returning once it is on stable storage; ``arecord`` does the same from the event loop, the
append (an fsync or two) run in a worker thread. The ``*_quietly`` forms never raise:
clinical work (a C-STORE, a query) must not fail because the trail cannot be written,
so they log the failure (PHI-free) and carry on; ``meshpacs audit verify`` then reports
the damage. With a :class:`~meshpacs.trail.forward.QueuedForwarder` every message
appended is also queued for the syslog collector, which a background thread sends it
to, best effort: the writer never waits for the network.

The trail lives in ``<data_dir>/trail/``, sealed with the key
:func:`meshpacs.keys.secret.audit_trail_key` derives from the site secret.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from meshpacs.errors import MeshError, brief
from meshpacs.keys.secret import SiteSecret, audit_trail_key
from meshpacs.trail.forward import QueuedForwarder
from meshpacs.trail.log import Entry, TrailLog
from meshpacs.trail.messages import (
    AUDIT_RECORDING_STARTED,
    AuditEvent,
    AuditSource,
    Participant,
    render,
    security_alert,
)
from meshpacs.trail.syslog import syslog_record
from meshpacs.trail.throttle import Throttle, suppressed_note

__all__ = ["TRAIL_DIR", "TrailWriter", "local_user", "trail_dir"]

LOG = logging.getLogger("meshpacs.trail")
TRAIL_DIR = "trail"


def trail_dir(data_dir: Path) -> Path:
    """Where a site's audit trail lives, inside its data directory."""
    return data_dir / TRAIL_DIR


def local_user() -> Participant:
    """The operating-system user running this process, as a participant."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "unknown"
    return Participant(user_id=name, alternative_id=f"uid {os.getuid()}", requestor=True)


class TrailWriter:
    """Appends rendered events to one trail; shared by every thread of a process."""

    def __init__(
        self,
        log: TrailLog,
        source: AuditSource,
        *,
        include_uids: bool = False,
        forward: QueuedForwarder | None = None,
    ) -> None:
        self.log = log
        self.source = source
        self.include_uids = include_uids
        self.forward = forward
        self._hostname = socket.gethostname()
        # One writer's records reach the collector in the trail's order, and a trail
        # begun by two threads at once starts with one Audit Recording Started.
        self._order = threading.Lock()
        self.throttle = Throttle()

    @classmethod
    def for_site(
        cls,
        data_dir: Path,
        secret: SiteSecret,
        source: AuditSource,
        *,
        include_uids: bool = False,
        forward: QueuedForwarder | None = None,
    ) -> TrailWriter:
        """The writer of the trail in ``data_dir``/trail, under the site's trail key."""
        log = TrailLog(trail_dir(data_dir), audit_trail_key(secret))
        return cls(log, source, include_uids=include_uids, forward=forward)

    @property
    def application(self) -> Participant:
        """This process as an active participant (the node, or a command)."""
        return Participant(
            user_id=self.source.source_id,
            alternative_id=f"pid {os.getpid()}",
            network_address=self._hostname,
        )

    def record(self, event: AuditEvent) -> Entry:
        """Append ``event``; returns once durable. Raises ``MeshError`` or ``OSError``.

        A trail begun here starts with a Security Alert (Audit Recording Started), so a
        trail deleted and begun again shows it, here and at the collector.
        """
        with self._order:
            if not self.log.exists:
                started = f"new audit trail in {self.log.directory}"
                self._append(
                    security_alert(self.application, AUDIT_RECORDING_STARTED, description=started)
                )
            return self._append(event)

    def _append(self, event: AuditEvent) -> Entry:
        message = render(event, self.source, include_uids=self.include_uids)
        entry = self.log.append(message)
        if self.forward is not None:
            self.forward.submit(
                syslog_record(message, hostname=self._hostname, procid=str(os.getpid()))
            )
        return entry

    def close(self, timeout: float = 5.0) -> None:
        """Forward what is queued within ``timeout`` seconds, then stop forwarding."""
        if self.forward is not None:
            self.forward.close(timeout)

    def record_quietly(self, event: AuditEvent) -> Entry | None:
        """:meth:`record`, a failure logged instead of raised."""
        try:
            return self.record(event)
        except (MeshError, OSError) as exc:
            LOG.error("could not write an audit event (%s) to the trail: %s; check it with"
                      " meshpacs audit verify", event.event.value.meaning, _why(exc))  # fmt: skip
            return None

    def record_refusal(self, source: str, event_for: Callable[[str], AuditEvent]) -> None:
        """A refusal a stranger can repeat at will, recorded at most once a minute per
        ``source`` (:mod:`.throttle`); ``event_for`` gets the note on those counted
        meanwhile, for its description. Never raises."""
        counted = self.throttle.admit(source)
        if counted is not None:
            self.record_quietly(event_for(suppressed_note(counted)))

    async def arecord_refusal(self, source: str, event_for: Callable[[str], AuditEvent]) -> None:
        """:meth:`record_refusal` from the event loop; only an admitted one costs a thread."""
        counted = self.throttle.admit(source)
        if counted is not None:
            await self.arecord_quietly(event_for(suppressed_note(counted)))

    async def arecord(self, event: AuditEvent) -> Entry:
        """:meth:`record` from the event loop, the append in a worker thread."""
        return await asyncio.to_thread(self.record, event)

    async def arecord_quietly(self, event: AuditEvent) -> Entry | None:
        return await asyncio.to_thread(self.record_quietly, event)


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return brief(exc)
