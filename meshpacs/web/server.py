"""The node's small read-only web server: the dashboard, ``/metrics`` and ``/status.json``.

HTTP/1.1 on asyncio streams and nothing else, because it needs very little: ``GET``
only, one request per connection (every answer says ``Connection: close``), no body
read, no keep-alive, no chunking. What a client may send is bounded before anything is
kept (the request line, each header line, all headers together, their number) and timed
(the whole request head, then the answer's writing), and every malformed request gets a
4xx answer and a closed connection: a port scanner or a confused client never reaches
the node's other work.

Every request must carry the site's dashboard token (:mod:`meshpacs.web.token`), as
``?token=...`` or ``Authorization: Bearer ...``; a wrong or missing one gets a bare 401.
The token is compared with :func:`hmac.compare_digest` and never logged (the log names
the path only, never the query). With a ``trail``, a refused request is an ATNA User
Authentication event (failed), naming the client's address and whether the token was
missing or wrong, never what was presented; at most one a minute per address
(:meth:`~meshpacs.trail.TrailWriter.arecord_refusal`), the next one counting the others.

The pages are drawn from callables the node passes in (``status`` is ``site_status``
bound to the config), called in a worker thread because they read SQLite: this module
imports nothing of the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from meshpacs.trail import TrailWriter
from meshpacs.trail.messages import AuditEvent, Outcome, Participant, user_authentication
from meshpacs.web.dashboard import render_dashboard
from meshpacs.web.history import Snapshot
from meshpacs.web.metrics import CONTENT_TYPE as METRICS_TYPE
from meshpacs.web.metrics import render_metrics

__all__ = ["DashboardServer", "Limits", "Request", "parse_request_line"]

LOG = logging.getLogger("meshpacs.web")

_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_NAME = _METHOD  # an RFC 9110 token either way
_VERSION = re.compile(r"HTTP/1\.[01]")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_HTML = "text/html; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"
# No script, no outside resource: the page is HTML and inline CSS and SVG only.
_SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),  # the token may be in the URL
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
)


@dataclass(frozen=True)
class Limits:
    """What one request may cost the node."""

    request_line_bytes: int = 8192
    header_line_bytes: int = 8192
    header_bytes: int = 16384
    header_count: int = 64
    read_timeout: float = 10.0
    write_timeout: float = 10.0
    max_connections: int = 32


@dataclass(frozen=True)
class Request:
    """A parsed request head."""

    method: str
    target: str
    version: str
    headers: Mapping[str, str]


class _Refused(Exception):
    """A request answered with an error status and closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _offered_token(request: Request) -> str | None:
    """The token a request presents (header or query), or None if it presents none."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, credentials = header.partition(" ")
        return credentials.strip() if scheme.lower() == "bearer" else None
    try:
        query = parse_qsl(urlsplit(request.target).query, max_num_fields=16)
    except ValueError:
        return None
    tokens = [value for key, value in query if key == "token"]
    return tokens[0] if len(tokens) == 1 else None


def parse_request_line(line: str) -> tuple[str, str, str]:
    """``(method, target, version)``; ``_Refused`` (400) for anything else."""
    parts = line.split(" ")
    if len(parts) != 3:
        raise _Refused(400, "a request line is METHOD SP TARGET SP VERSION")
    method, target, version = parts
    if not _METHOD.fullmatch(method) or not _VERSION.fullmatch(version):
        raise _Refused(400, "unknown method or version syntax")
    if not target.startswith("/") or any(c <= " " or c == "\x7f" for c in target):
        raise _Refused(400, "the target must be a path")
    return method, target, version


class DashboardServer:
    """Serves ``/``, ``/metrics`` and ``/status.json`` to holders of the token."""

    def __init__(
        self,
        *,
        token: str,
        status: Callable[[], Mapping[str, Any]],
        figures: Callable[[], Mapping[str, Any]] | None = None,
        history: Callable[[], Sequence[Snapshot]] | None = None,
        bind: str = "127.0.0.1",
        port: int = 0,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.time,
        trail: TrailWriter | None = None,
    ) -> None:
        if not token:
            raise ValueError("the dashboard needs a token")
        self._token = token.encode("ascii")
        self._status = status
        self._figures = figures
        self._history = history
        self._bind = bind
        self._port = port
        self.limits = limits or Limits()
        self._clock = clock
        self._trail = trail
        self._server: asyncio.Server | None = None
        self._active = 0
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port bound (known once started; ``port=0`` asks the system for a free one)."""
        return self._port

    @property
    def url(self) -> str:
        """Where the dashboard is, without the token."""
        host = f"[{self._bind}]" if ":" in self._bind else self._bind
        return f"http://{host}:{self.port}/"

    async def start(self) -> int:
        """Bind and listen; returns the port. ``OSError`` if the address cannot be bound."""
        self._server = await asyncio.start_server(
            self._serve,
            self._bind,
            self._port,
            # The stream's buffer bound: a line longer than this is refused, not kept.
            limit=max(self.limits.request_line_bytes, self.limits.header_line_bytes) + 2,
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self._port

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._server.wait_closed()
        self._server = None

    # --- one connection ----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._active += 1
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away or stalled: nothing to tell it
        except asyncio.CancelledError:
            pass  # the node is stopping; a handler ending cancelled is logged by CPython 3.11
        except Exception:
            LOG.exception("dashboard: request failed")
        finally:
            self._active -= 1
            if task is not None:
                self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active > self.limits.max_connections:
            await self._send(writer, 503, _TEXT, b"busy\n")
            return
        try:
            async with asyncio.timeout(self.limits.read_timeout):
                request = await self._read_head(reader)
        except TimeoutError:
            await self._send(writer, 408, _TEXT, b"request timeout\n")
            return
        except _Refused as refused:
            LOG.debug("dashboard: refused a request (%d): %s", refused.status, refused)
            extra = (("Allow", "GET"),) if refused.status == 405 else ()
            body = f"{_REASONS[refused.status].lower()}\n".encode()
            await self._send(writer, refused.status, _TEXT, body, extra)
            return
        offered = _offered_token(request)
        if offered is None or not self._authorised(offered):
            await self._record_refused(writer, "missing" if offered is None else "wrong")
            # No detail: which part was wrong helps only someone guessing.
            challenge = (("WWW-Authenticate", "Bearer"),)
            await self._send(writer, 401, _TEXT, b"unauthorized\n", challenge)
            return
        path = urlsplit(request.target).path
        LOG.debug("dashboard: GET %s", path)  # the path only: the query holds the token
        try:
            status, kind, body = await asyncio.to_thread(self._page, path)
        except Exception:
            LOG.exception("dashboard: could not draw %s", path)
            status, kind, body = 500, _TEXT, b"internal error; see the node's log\n"
        await self._send(writer, status, kind, body)

    async def _read_head(self, reader: asyncio.StreamReader) -> Request:
        line = await self._read_line(reader, 414)
        method, target, version = parse_request_line(line)
        headers: dict[str, str] = {}
        total = 0
        while True:
            raw = await self._read_line(reader, 431)
            if not raw:
                break
            total += len(raw) + 2
            if total > self.limits.header_bytes or len(headers) >= self.limits.header_count:
                raise _Refused(431, "too many header bytes or lines")
            name, sep, value = raw.partition(":")
            if not sep or not _HEADER_NAME.fullmatch(name):
                raise _Refused(400, "malformed header line")
            key = name.lower()
            value = value.strip(" \t")
            if key in headers and key in ("authorization", "host"):
                raise _Refused(400, f"{key} given twice")
            headers[key] = value if key not in headers else f"{headers[key]}, {value}"
        if method != "GET":
            raise _Refused(405, "only GET")
        return Request(method, target, version, headers)

    async def _read_line(self, reader: asyncio.StreamReader, too_long: int) -> str:
        limit = self.limits.request_line_bytes if too_long == 414 else self.limits.header_line_bytes
        try:
            data = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise _Refused(too_long, "line too long") from None
        except ValueError:  # the buffer limit itself was hit
            raise _Refused(too_long, "line too long") from None
        if len(data) > limit + 2:
            raise _Refused(too_long, "line too long")
        data = data[:-2] if data.endswith(b"\r\n") else data[:-1]
        if b"\r" in data or b"\0" in data:
            raise _Refused(400, "control characters in the request head")
        try:
            return data.decode("ascii")
        except UnicodeDecodeError:
            raise _Refused(400, "the request head must be ASCII") from None

    def _authorised(self, offered: str) -> bool:
        return hmac.compare_digest(offered.encode("utf-8", "replace"), self._token)

    async def _record_refused(self, writer: asyncio.StreamWriter, token: str) -> None:
        if self._trail is None:
            return
        trail = self._trail
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        client = Participant(user_id="dashboard client", network_address=address, requestor=True)

        def refused(note: str) -> AuditEvent:
            return user_authentication(
                client,
                trail.application,
                outcome=Outcome.MINOR_FAILURE,
                description=f"dashboard request refused: {token} token{note}",
            )

        await trail.arecord_refusal(f"web {address}", refused)

    def _page(self, path: str) -> tuple[int, str, bytes]:
        if path == "/":
            figures = self._figures() if self._figures else {}
            history = list(self._history()) if self._history else []
            html = render_dashboard(self._status(), figures, history, now=self._clock())
            return 200, _HTML, html.encode("utf-8")
        if path == "/metrics":
            figures = self._figures() if self._figures else {}
            return 200, METRICS_TYPE, render_metrics(self._status(), figures).encode("utf-8")
        if path == "/status.json":
            return 200, _JSON, (json.dumps(self._status(), indent=2) + "\n").encode("utf-8")
        return 404, _TEXT, b"not found\n"

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        kind: str,
        body: bytes,
        extra: Sequence[tuple[str, str]] = (),
    ) -> None:
        head = [f"HTTP/1.1 {status} {_REASONS[status]}"]
        headers = [
            ("Content-Type", kind),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *_SECURITY_HEADERS,
            *extra,
        ]
        head += [f"{name}: {value}" for name, value in headers]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body)
        async with asyncio.timeout(self.limits.write_timeout):
            await writer.drain()
