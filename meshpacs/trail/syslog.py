"""Forwarding audit messages to a syslog collector: RFC 5424 over TLS (RFC 5425).

IHE ATNA's Record Audit Event transaction sends each AuditMessage as one RFC 5424 syslog
record (facility 10, security/authorization; MSGID ``IHE+RFC-3881``; the XML as MSG) over
TLS, each record framed by its length in octets (RFC 5425 section 4.3)::

    frame  = MSG-LEN SP SYSLOG-MSG          MSG-LEN: decimal, no leading zero
    record = "<" PRI ">1" SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP "-" SP MSG

:func:`syslog_record`, :func:`frame` and :func:`split_frames` are pure; :class:`SyslogSender`
is the small blocking client (one TLS connection, opened when first needed and again
after a failure). The collector is a copy kept out of this machine's reach: the local
trail detects tampering, the collector's copy survives it.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import ssl
import threading
from datetime import UTC, datetime

from meshpacs.errors import LimitExceeded, PeerUnreachable, ProtocolViolation

__all__ = [
    "ATNA_MSGID",
    "AUTHPRIV",
    "MAX_FRAME_BYTES",
    "NOTICE",
    "SyslogSender",
    "frame",
    "split_frames",
    "syslog_record",
]

AUTHPRIV = 10  # security/authorization messages, as IHE ATNA asks
NOTICE = 5
WARNING = 4
ATNA_MSGID = "IHE+RFC-3881"
MAX_FRAME_BYTES = 4 * 1024 * 1024
_MAX_DIGITS = len(str(MAX_FRAME_BYTES))
_NOT_PRINTABLE = re.compile(r"[^\x21-\x7e]")


def _field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, at most ``limit``; "-" if empty."""
    cleaned = _NOT_PRINTABLE.sub("_", value)[:limit]
    return cleaned or "-"


def syslog_record(
    message: bytes,
    *,
    hostname: str,
    procid: str = "-",
    app_name: str = "meshpacs",
    msgid: str = ATNA_MSGID,
    at: datetime | None = None,
    facility: int = AUTHPRIV,
    severity: int = NOTICE,
) -> bytes:
    """One RFC 5424 record carrying ``message`` (the XML) as its MSG, no structured data."""
    if not 0 <= facility <= 23 or not 0 <= severity <= 7:
        raise ValueError("syslog facility is 0 .. 23 and severity 0 .. 7")
    when = (at or datetime.now(UTC)).astimezone(UTC)
    stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    header = (
        f"<{facility * 8 + severity}>1 {stamp} {_field(hostname, 255)}"
        f" {_field(app_name, 48)} {_field(procid, 128)} {_field(msgid, 32)} - "
    )
    return header.encode("ascii") + message


def frame(record: bytes) -> bytes:
    """``record`` framed by octet counting (RFC 5425 4.3)."""
    if not 1 <= len(record) <= MAX_FRAME_BYTES:
        raise LimitExceeded(f"a syslog record is 1 to {MAX_FRAME_BYTES} bytes, not {len(record)}")
    return str(len(record)).encode("ascii") + b" " + record


def split_frames(buffer: bytes, limit: int = MAX_FRAME_BYTES) -> tuple[list[bytes], bytes]:
    """The whole records at the start of ``buffer``, and the bytes left over.

    Raises ``ProtocolViolation`` for a length that is not one (not digits, a leading
    zero, over ``limit``): a receiver cannot find the next frame after such a one.
    """
    records: list[bytes] = []
    view = bytes(buffer)
    while view:
        space = view.find(b" ", 0, _MAX_DIGITS + 1)
        if space < 0:
            if len(view) > _MAX_DIGITS or not view.isdigit():
                raise ProtocolViolation("syslog frame does not start with its length")
            break
        digits = view[:space]
        if not digits.isdigit() or digits.startswith(b"0"):
            raise ProtocolViolation("syslog frame length is not a decimal number")
        length = int(digits)
        if length > limit:
            raise ProtocolViolation(f"syslog frame of {length} bytes, over {limit}")
        if len(view) < space + 1 + length:
            break
        records.append(view[space + 1 : space + 1 + length])
        view = view[space + 1 + length :]
    return records, view


class SyslogSender:
    """Sends records to one collector over TLS; thread-safe, reconnects after a failure."""

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        *,
        server_hostname: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self._context = context
        self._server_hostname = server_hostname or host
        self._timeout = timeout
        self._sock: ssl.SSLSocket | None = None
        self._lock = threading.Lock()

    def send(self, record: bytes) -> None:
        """Send one record (framed here); one retry on a fresh connection."""
        data = frame(record)
        with self._lock:
            for attempt in (1, 2):
                try:
                    self._connected().sendall(data)
                    return
                except (OSError, ssl.SSLError) as exc:
                    self._drop()
                    if attempt == 2:
                        raise PeerUnreachable(
                            f"syslog collector {self.host}:{self.port}: {exc}"
                        ) from None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _connected(self) -> ssl.SSLSocket:
        if self._sock is not None and _closed_by_peer(self._sock):
            # Else the first record after a collector's restart would go into a dead
            # connection and be lost without an error.
            self._drop()
        if self._sock is None:
            raw = socket.create_connection((self.host, self.port), timeout=self._timeout)
            try:
                self._sock = self._context.wrap_socket(raw, server_hostname=self._server_hostname)
            except BaseException:
                raw.close()
                raise
        return self._sock

    def _drop(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def _closed_by_peer(sock: ssl.SSLSocket) -> bool:
    """Whether the collector ended the connection (it never sends application data).

    Readable alone does not say so: a TLS 1.3 server sends its session tickets after the
    handshake. Taking those for a hang-up cost a new connection for every record."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    if not readable:
        return False
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        sock.recv(1)
    except ssl.SSLWantReadError:
        return False  # only TLS housekeeping was waiting, now read
    except OSError:
        return True
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)
    return True  # the end of the stream, or data a collector does not send
