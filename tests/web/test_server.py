"""The dashboard server over a real socket on 127.0.0.1: the token, the limits, the routes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshpacs.errors import ConfigError
from meshpacs.web.server import DashboardServer, Limits
from meshpacs.web.token import ensure_token, read_token

from .documents import full_figures, full_status
from .exposition import parse_exposition

TOKEN = "t" * 43


async def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data``, read until the server closes; (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    version, code, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    return int(code), headers, body


async def get(port: int, target: str, *headers: str) -> tuple[int, dict[str, str], bytes]:
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return await exchange(port, "\r\n".join(lines).encode())


@pytest.fixture
async def server() -> AsyncIterator[DashboardServer]:
    served = DashboardServer(
        token=TOKEN,
        status=full_status,
        figures=full_figures,
        limits=Limits(read_timeout=1.0),
    )
    await served.start()
    yield served
    await served.close()


async def test_without_or_with_a_wrong_token_the_answer_is_a_bare_401(
    server: DashboardServer,
) -> None:
    for target, headers in [
        ("/", ()),
        ("/metrics", ()),
        ("/status.json?token=", ()),
        ("/?token=" + "t" * 42, ()),
        ("/?token=" + "t" * 44, ()),
        (f"/?token={TOKEN}&token={TOKEN}", ()),
        ("/", ("Authorization: Bearer " + "x" * 43,)),
        ("/", (f"Authorization: Basic {TOKEN}",)),
        (f"/?token={TOKEN}", ("Authorization: Bearer wrong",)),  # the header is what counts
    ]:
        code, head, body = await get(server.port, target, *headers)
        assert code == 401, (target, headers)
        assert body == b"unauthorized\n" and head["www-authenticate"] == "Bearer"


async def test_with_the_token_every_route_answers(server: DashboardServer) -> None:
    code, head, body = await get(server.port, f"/?token={TOKEN}")
    assert code == 200 and head["content-type"] == "text/html; charset=utf-8"
    assert b'<span id="site-id">site-a</span>' in body
    assert "default-src 'none'" in head["content-security-policy"]
    assert head["cache-control"] == "no-store" and head["referrer-policy"] == "no-referrer"

    code, head, body = await get(server.port, "/metrics", f"Authorization: Bearer {TOKEN}")
    assert code == 200 and head["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert parse_exposition(body.decode())["meshpacs_studies"].value(state="protected") == 4

    code, head, body = await get(server.port, f"/status.json?token={TOKEN}")
    assert code == 200 and head["content-type"] == "application/json"
    assert json.loads(body) == full_status()

    code, _, _ = await get(server.port, f"/nothing?token={TOKEN}")
    assert code == 404


@pytest.mark.parametrize(
    "request_head",
    [
        b"garbage\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET http://example.org/ HTTP/1.1\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
        b"\xff\xfe / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\n folded: header\r\n\r\n",
        b"GET / HTTP/1.1\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n",
        b"\r\n\r\n",
    ],
)
async def test_malformed_requests_get_400(server: DashboardServer, request_head: bytes) -> None:
    code, _, _ = await exchange(server.port, request_head)
    assert code == 400


async def test_only_get_is_served(server: DashboardServer) -> None:
    for method in ("POST", "PUT", "DELETE", "HEAD"):
        request = f"{method} /?token={TOKEN} HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
        code, head, _ = await exchange(server.port, request.encode())
        assert code == 405 and head["allow"] == "GET"


async def test_oversized_request_lines_and_headers_are_refused(server: DashboardServer) -> None:
    code, _, _ = await get(server.port, "/?token=" + "a" * 20_000)
    assert code == 414
    code, _, _ = await get(server.port, f"/?token={TOKEN}", "X-Big: " + "b" * 20_000)
    assert code == 431
    many = [f"X-{i}: {'c' * 300}" for i in range(60)]  # each line fine, together too much
    code, _, _ = await get(server.port, f"/?token={TOKEN}", *many)
    assert code == 431
    code, _, _ = await get(server.port, f"/?token={TOKEN}", *(f"X-{i}: 1" for i in range(100)))
    assert code == 431


async def test_a_stalled_or_vanishing_client_costs_a_timeout_and_nothing_else(
    server: DashboardServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\n")  # and then nothing
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 408 ")
    writer.close()
    for _ in range(5):  # gone half-way through the request line
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /?tok")
        writer.close()
    code, _, _ = await get(server.port, f"/?token={TOKEN}")
    assert code == 200


async def test_closing_with_a_client_mid_request_is_prompt_and_quiet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    served = DashboardServer(token=TOKEN, status=full_status, limits=Limits(read_timeout=30.0))
    port = await served.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\n")  # and then nothing: the handler waits for the rest
    await writer.drain()
    await asyncio.sleep(0.2)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        await asyncio.wait_for(served.close(), 5)
        await asyncio.sleep(0.1)  # the loop runs the handler task's done callbacks
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    # CPython 3.11 logs "Exception in callback" for a connection handler that ends cancelled.
    assert not [r.getMessage() for r in caplog.records if r.name == "asyncio"]


async def test_a_failing_status_read_is_a_500_and_the_server_goes_on() -> None:
    def broken() -> dict[str, object]:
        raise OSError("disk gone")

    served = DashboardServer(token=TOKEN, status=broken)
    port = await served.start()
    try:
        code, _, body = await get(port, f"/?token={TOKEN}")
        assert code == 500 and b"disk gone" not in body
        code, _, _ = await get(port, f"/status.json?token={TOKEN}")
        assert code == 500
    finally:
        await served.close()
    assert served.url == f"http://127.0.0.1:{port}/"


def test_the_token_is_made_once_private_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "dashboard.token"
    token = ensure_token(path)
    assert len(token) >= 43 and ensure_token(path) == token == read_token(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ensure_token(tmp_path / "other.token") != token


def test_a_token_file_others_may_read_or_not_holding_a_token_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.token"
    ensure_token(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="open to other users"):
        read_token(path)
    os.chmod(path, 0o600)
    path.write_text("short\n")
    with pytest.raises(ConfigError, match="does not hold a token"):
        ensure_token(path)
