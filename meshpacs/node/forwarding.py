"""Forwarding the node's audit trail to the syslog collector its ``[audit_trail]`` names.

Apart from the daemon so that the commands that write to the trail themselves
(``meshpacs recover``, ``meshpacs forget``) forward it too without loading the node.
"""

from __future__ import annotations

import logging
import ssl

from meshpacs.node.config import AuditTrailConfig
from meshpacs.trail.forward import QueuedForwarder
from meshpacs.trail.syslog import SyslogSender

__all__ = ["trail_forwarder"]

LOG = logging.getLogger("meshpacs.node")


def trail_forwarder(settings: AuditTrailConfig) -> QueuedForwarder | None:
    """A forwarder to ``[audit_trail] syslog_host``; None (logged) when off or unusable."""
    if not settings.syslog_host:
        return None
    ca = str(settings.syslog_ca) if settings.syslog_ca is not None else None
    try:
        context = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        # The local trail is the record: the node runs on and keeps it, and says so.
        LOG.error("audit trail forwarding off: cannot load syslog_ca %s: %s", ca,
                  exc.strerror or exc)  # fmt: skip
        return None
    sender = SyslogSender(
        settings.syslog_host,
        settings.syslog_port,
        context,
        server_hostname=settings.syslog_server_name or settings.syslog_host,
    )
    LOG.info("audit trail forwarded to %s:%d over TLS", settings.syslog_host, settings.syslog_port)
    return QueuedForwarder(sender)
