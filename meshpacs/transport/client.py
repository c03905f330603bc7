"""The owner's side of the fragment transport: one connection to one partner site.

:class:`PartnerConnection` opens a mutual-TLS connection to a partner's address and
checks, from the certificate, that it reached the site it meant to (``identify``, the
same check the server makes), before any fragment goes out. Requests then run one at a
time on that connection; a fragment file streams out in chunks, and a fragment read
streams into the caller's sink, so neither sits whole in memory.

Errors are typed: :class:`~meshpacs.errors.PeerUnreachable` for connecting, timeouts and
a connection lost; :class:`~meshpacs.errors.PeerRefused` (with the partner's status) for
an answer that is a refusal; :class:`~meshpacs.errors.ProtocolViolation` for answers
that break the protocol, after which the connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from meshpacs.audit.challenge import (
    AUDIT_REQUEST_SIZE,
    AUDIT_RESPONSE_SIZE,
    Challenge,
    pack_request,
    parse_response,
)
from meshpacs.errors import MeshError, PeerRefused, PeerUnreachable, ProtocolViolation
from meshpacs.federation import Member
from meshpacs.transport.frames import (
    RENEWED_SIZE,
    RESPONSE_HEAD_SIZE,
    Op,
    RecordKind,
    Request,
    Response,
    Status,
    check_delegation_length,
    decode_renewed,
    decode_response,
    decode_response_head,
    encode_renewal,
    encode_request,
)
from meshpacs.transport.server import CHUNK, HAS_BODY, hang_up

__all__ = ["FragmentInfo", "PartnerConnection"]

Identify = Callable[[ssl.SSLObject], Member]  # the peer, from its certificate
Sink = Callable[[bytes], Awaitable[None] | None]

_MAX_SMALL_BODY = 100 * 1024 * 1024  # records and lists are read into memory


class FragmentInfo:
    """What a partner says it holds for us under one fragment ID."""

    __slots__ = ("set_hash", "share", "size")

    def __init__(self, size: int, set_hash: bytes, share: int) -> None:
        self.size = size
        self.set_hash = set_hash
        self.share = share


class PartnerConnection:
    """A connection to one partner site; use ``async with await PartnerConnection.open(...)``."""

    def __init__(
        self,
        member: Member,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        timeout: float,
    ) -> None:
        self.member = member  # who answered, as its verified certificate says
        self.site_id = member.site_id
        self._reader = reader
        self._writer = writer
        self._timeout = timeout
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        site_id: str,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        identify: Identify,
        *,
        timeout: float = 30.0,
    ) -> PartnerConnection:
        """Connect and check the peer's certificate names ``site_id``."""
        where = f"site {site_id} at {host}:{port}"
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ssl_context, server_hostname=None),
                timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as error:
            raise PeerUnreachable(f"{where}: {error or type(error).__name__}") from None
        try:
            found = identify(writer.get_extra_info("ssl_object"))
        except MeshError:
            writer.close()
            raise
        if found.site_id != site_id:
            writer.close()
            raise PeerUnreachable(f"{where}: its certificate names site {found.site_id}")
        return cls(found, reader, writer, timeout)

    async def close(self) -> None:
        await hang_up(self._writer)

    async def __aenter__(self) -> PartnerConnection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def ping(self) -> None:
        async with self._exchange():
            await self._send(Request(Op.PING))
            self._accept(await self._response(), Status.OK)

    async def put_fragment(self, fragment_id: str, path: Path) -> None:
        """Stream the fragment file; returns once the partner kept it (verified, fsynced)."""
        with open(path, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            async with self._exchange():
                await self._send(Request(Op.PUT_FRAGMENT, fragment_id, length=size))
                self._accept(await self._response(), Status.CONTINUE)
                await self._stream(source, size)
                self._accept(await self._response(), Status.OK)

    async def put_fragment_stream(
        self, fragment_id: str, size: int, chunks: AsyncIterator[bytes]
    ) -> None:
        """Send a fragment as it is produced; ``chunks`` must add up to exactly ``size``.

        If ``chunks`` raises or ends early, the connection is closed mid-body, so the
        partner discards what it received: nothing partial is ever kept.
        """
        async with self._exchange():
            await self._send(Request(Op.PUT_FRAGMENT, fragment_id, length=size))
            self._accept(await self._response(), Status.CONTINUE)
            try:
                sent = 0
                async for chunk in chunks:
                    sent += len(chunk)
                    if sent > size:
                        raise ProtocolViolation("fragment stream is longer than announced")
                    await self._write(chunk)
                if sent != size:
                    raise ProtocolViolation(f"fragment stream ended at {sent} of {size} bytes")
            except BaseException:
                await self.close()
                raise
            self._accept(await self._response(), Status.OK)

    async def _stream(self, source: BinaryIO, size: int) -> None:
        """Send ``size`` bytes of ``source``, reading the next chunk while this one goes."""
        remaining = size
        reading = asyncio.ensure_future(asyncio.to_thread(source.read, min(CHUNK, remaining)))
        try:
            while remaining:
                chunk = await reading
                if not chunk:
                    raise ProtocolViolation("fragment file shrank while being sent")
                remaining -= len(chunk)
                if remaining:
                    reading = asyncio.ensure_future(
                        asyncio.to_thread(source.read, min(CHUNK, remaining))
                    )
                await self._write(chunk)
        finally:
            if not reading.done():
                reading.cancel()
                with contextlib.suppress(BaseException):
                    await reading

    async def get_fragment(
        self, fragment_id: str, sink: Sink, *, offset: int = 0, length: int = 0
    ) -> int:
        """Stream the fragment (or ``length`` bytes from ``offset``) into ``sink``."""
        async with self._exchange():
            await self._send(Request(Op.GET_FRAGMENT, fragment_id, offset=offset, length=length))
            response = self._accept(await self._response(), Status.OK)
            if length and response.length != length:
                raise ProtocolViolation(f"asked {length} bytes, partner sends {response.length}")
            remaining = response.length
            while remaining:
                chunk = await self._read(min(CHUNK, remaining))
                outcome = sink(chunk)
                if outcome is not None:
                    await outcome
                remaining -= len(chunk)
            return response.length

    async def has_fragment(self, fragment_id: str) -> FragmentInfo | None:
        async with self._exchange():
            await self._send(Request(Op.HAS_FRAGMENT, fragment_id))
            response = await self._response()
            if response.status == Status.NOT_FOUND:
                return None
            self._accept(response, Status.OK)
            if response.length != HAS_BODY.size:
                raise ProtocolViolation("HAS answer of the wrong size")
            size, set_hash, share = HAS_BODY.unpack(await self._read(HAS_BODY.size))
            return FragmentInfo(size, set_hash, share)

    async def audit_fragment(self, fragment_id: str, challenge: Challenge) -> bytes | None:
        """The holder's answer to one audit challenge; None if it says it holds nothing.

        A refusal (a range past what it stores, say) raises :class:`PeerRefused`; the
        auditor counts both as a failed audit.
        """
        async with self._exchange():
            await self._send(Request(Op.AUDIT_FRAGMENT, fragment_id, length=AUDIT_REQUEST_SIZE))
            await self._write(pack_request(challenge))
            response = await self._response()
            if response.status == Status.NOT_FOUND:
                return None
            self._accept(response, Status.OK)
            if response.length != AUDIT_RESPONSE_SIZE:
                raise ProtocolViolation("audit answer of the wrong size")
            return parse_response(await self._read(AUDIT_RESPONSE_SIZE))

    async def act_for(self, delegation: bytes) -> None:
        """Present the owner's delegation: this connection's later fragment reads, checks
        and puts are the owner's. A holder that refuses it raises :class:`PeerRefused`."""
        check_delegation_length(len(delegation))
        async with self._exchange():
            await self._send(Request(Op.ACT_FOR, length=len(delegation)))
            await self._write(delegation)
            self._accept(await self._response(), Status.OK)

    async def delete_fragment(self, fragment_id: str) -> bool:
        return await self._done_or_not_found(Request(Op.DELETE_FRAGMENT, fragment_id))

    async def renew_leases(self, fragment_ids: Sequence[str], seconds: int) -> int:
        """Ask the partner to keep these fragments ``seconds`` longer; how many it renewed.

        At most 1024 IDs per call. The partner cuts ``seconds`` to its own maximum and
        counts only fragments it holds for us, so a count short of ``len(fragment_ids)``
        means some are gone (or were never there): the caller's cue to check and repair.
        """
        # Encoded before the exchange: a bad argument must not cost the connection.
        body = encode_renewal(fragment_ids, seconds)
        async with self._exchange():
            await self._send(Request(Op.RENEW_LEASES, length=len(body)))
            await self._write(body)
            response = self._accept(await self._response(), Status.OK)
            if response.length != RENEWED_SIZE:
                raise ProtocolViolation("renewal answer of the wrong size")
            return decode_renewed(await self._read(RENEWED_SIZE))

    async def put_record(self, kind: RecordKind, record_id: str, data: bytes) -> None:
        async with self._exchange():
            await self._send(Request(Op.PUT_RECORD, record_id, kind, length=len(data)))
            self._accept(await self._response(), Status.CONTINUE)
            await self._write(data)
            self._accept(await self._response(), Status.OK)

    async def get_record(self, kind: RecordKind, record_id: str) -> bytes | None:
        async with self._exchange():
            await self._send(Request(Op.GET_RECORD, record_id, kind))
            response = await self._response()
            if response.status == Status.NOT_FOUND:
                return None
            return await self._small_body(self._accept(response, Status.OK))

    async def report_corrupt(self, fragment_id: str) -> bool:
        """Tell the owner that its fragment held here failed a scrub; whether it knew it."""
        return await self._done_or_not_found(Request(Op.REPORT_CORRUPT, fragment_id))

    async def delete_record(self, kind: RecordKind, record_id: str) -> bool:
        """Delete our record at the partner; False if it held none of that name."""
        return await self._done_or_not_found(Request(Op.DELETE_RECORD, record_id, kind))

    async def _done_or_not_found(self, request: Request) -> bool:
        """A request answered OK (True) or NOT_FOUND (False); any other answer raises."""
        async with self._exchange():
            await self._send(request)
            response = await self._response()
            if response.status == Status.NOT_FOUND:
                return False
            self._accept(response, Status.OK)
            return True

    async def list_records(self, kind: RecordKind) -> list[str]:
        async with self._exchange():
            await self._send(Request(Op.LIST_RECORDS, kind=kind))
            body = await self._small_body(self._accept(await self._response(), Status.OK))
            if len(body) % 64:
                raise ProtocolViolation("record list is not a whole number of IDs")
            names = [body[i : i + 64].decode("ascii") for i in range(0, len(body), 64)]
            for name in names:
                Request(Op.GET_RECORD, name, kind)  # checks each is 64 hex digits
            return names

    @contextlib.asynccontextmanager
    async def _exchange(self) -> AsyncIterator[None]:
        """One request at a time; a connection that failed mid-request is closed."""
        async with self._lock:
            try:
                yield
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as error:
                await self.close()
                raise PeerUnreachable(
                    f"site {self.site_id}: connection lost: {error or type(error).__name__}"
                ) from None
            except TimeoutError:
                await self.close()
                raise PeerUnreachable(f"site {self.site_id}: no answer in time") from None
            except ProtocolViolation:
                await self.close()
                raise

    async def _send(self, request: Request) -> None:
        await self._write(encode_request(request))

    async def _write(self, data: bytes) -> None:
        self._writer.write(data)
        await asyncio.wait_for(self._writer.drain(), self._timeout)

    async def _read(self, size: int) -> bytes:
        return await asyncio.wait_for(self._reader.readexactly(size), self._timeout)

    async def _response(self) -> Response:
        head = decode_response_head(await self._read(RESPONSE_HEAD_SIZE))
        message = await self._read(head.message_length) if head.message_length else b""
        return decode_response(head, message)

    def _accept(self, response: Response, expected: Status) -> Response:
        if response.status == expected:
            return response
        if response.length:
            # A refusal never carries a body; one that does has lost step with us.
            raise ProtocolViolation(f"refusal {response.status.name} with a body")
        raise PeerRefused(response.status.name, response.message)

    async def _small_body(self, response: Response) -> bytes:
        if response.length > _MAX_SMALL_BODY:
            raise ProtocolViolation(f"answer of {response.length} bytes is over the bound")
        return await self._read(response.length) if response.length else b""
