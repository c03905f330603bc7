"""The site's ATNA audit trail: who did what to which study, kept so that it cannot be
quietly changed.

::

    messages.py   DICOM PS3.15 A.5 / IHE ATNA AuditMessage XML, sans I/O
    log.py        the append-only, hash-chained, sealed log file and its verification
    writer.py     what the node and the commands call: render, append (in a thread), forward
    forward.py    a bounded queue drained to the collector by one thread, never waited for
    syslog.py     RFC 5424 records over TLS with RFC 5425 framing, to a collector
    throttle.py   at most one refusal event a minute per source, the rest counted

Only ``errors``, ``durable`` and ``keys`` are used here, so every room above may record.
"""

from __future__ import annotations

from meshpacs.trail.log import TrailLog, TrailReport, verify
from meshpacs.trail.writer import TrailWriter, local_user, trail_dir

__all__ = ["TrailLog", "TrailReport", "TrailWriter", "local_user", "trail_dir", "verify"]
