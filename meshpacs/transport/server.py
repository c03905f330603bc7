"""The holder's side of the fragment transport: partners put, get and delete their data.

One asyncio TLS server; each connection is one authenticated partner site (its site ID is
read from its certificate by ``identify``, never from anything it sends) issuing
requests one at a time (:mod:`meshpacs.transport.frames`). Fragments stream through in
chunks straight into the :class:`~meshpacs.store.FragmentStore`, which checks every one
in full before it is kept; file work runs in threads so one slow disk does not stall
other partners.

Who may do what: a site puts, reads, lists, renews and deletes only its own fragments
and records. Asking for another site's data gets ``NOT_FOUND``, the same answer as for
data that does not exist, so nobody can probe what this node holds for others; a renewal
naming another site's fragments counts them as it counts fragments not held, not at all.

A trusted peer of an owner that is down may present the owner's signed delegation
(``ACT_FOR``, checked by ``verify_delegation``): the rest of that connection is the
owner's for reading, checking and placing fragments (so the peer can rebuild shares a
dead holder lost), and for nothing else: no deletion, no renewal, no records.

A node leaving the federation (:attr:`FragmentServer.leaving`) takes no new fragment and
answers audits with ``LEAVING``, so each owner rebuilds its shares elsewhere, while it
still serves reads (a repair may gather from it) and deletions until it holds nothing.

Every failure a peer can cause ends its request with a status, or (for frames that break
the protocol, or a peer that stalls) closes its connection; none reaches the event loop.

The server runs each TLS handshake itself (on a TCP connection whose reading waits for
it) rather than leaving it to asyncio, which drops a failed handshake silently: a peer
refused at the handshake (no certificate, one our CA did not sign, a revoked or expired
one, not TLS at all) or after it (``identify`` refuses the certificate) is told to
``on_refused`` as a :class:`RefusedPeer`: its address, OpenSSL's or the federation's
reason, and of a certificate only its subject CN and SHA-256 fingerprint.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from meshpacs.audit.challenge import AUDIT_REQUEST_SIZE, answer, pack_response, parse_request
from meshpacs.errors import (
    CorruptFragment,
    Forbidden,
    FormatError,
    LimitExceeded,
    MeshError,
    ProtocolViolation,
    QuotaExceeded,
)
from meshpacs.federation import Member
from meshpacs.store import FragmentStore
from meshpacs.store.records import MAX_RECORD_BYTES, HeldRecords
from meshpacs.transport.frames import (
    REQUEST_HEAD_SIZE,
    Op,
    Request,
    Response,
    Status,
    check_delegation_length,
    check_renewal_length,
    decode_renewal,
    decode_request,
    decode_request_head,
    encode_renewed,
    encode_response,
)

__all__ = ["HAS_BODY", "FragmentServer", "RefusedPeer", "ServerLimits"]

_log = logging.getLogger("meshpacs.transport")

CHUNK = 1024 * 1024
# HAS_FRAGMENT's body: fragment size, the set hash it verified against and its share
# number (from its verified header: a holder cannot tell which ID belongs to which share,
# so whoever asks checks the share is the one the ID stands for).
HAS_BODY = struct.Struct(">Q32sH")

Identify = Callable[[ssl.SSLObject], Member]  # the peer, from its certificate
OnStored = Callable[[str, str], Awaitable[None]]  # (fragment_id, owner site)
# (holder site, fragment_id) -> whether it is a placement of ours: a holder reports rot.
OnCorruptReport = Callable[[str, str], Awaitable[bool]]
# (delegation bytes, presenting site) -> the owner it may act for; MeshError if none.
VerifyDelegation = Callable[[bytes, str], str]
HANDSHAKE_SECONDS = 15.0
CLOSE_SECONDS = 5.0  # for a partner to answer TLS close_notify; then we just drop it
_STREAM_LIMIT = 2**16  # asyncio.start_server's default


@dataclass(frozen=True)
class RefusedPeer:
    """A connection refused for its certificate (or its lack of one): what the trail may
    say of it. ``reason`` is OpenSSL's verification message or the federation's refusal;
    ``common_name`` and ``fingerprint`` (SHA-256, hex) only once a certificate got through
    the handshake."""

    address: str
    reason: str
    common_name: str = ""
    fingerprint: str = ""


OnRefused = Callable[[RefusedPeer], None]  # called on the event loop; must not block
# What a connection acting for an owner may do (see the module docstring).
_DELEGATED_OPS = frozenset({Op.PING, Op.PUT_FRAGMENT, Op.GET_FRAGMENT, Op.HAS_FRAGMENT, Op.ACT_FOR})


@dataclass(frozen=True)
class ServerLimits:
    idle_seconds: float = 120.0  # between requests
    io_seconds: float = 60.0  # for any one read or write while a request is under way
    max_connections: int = 64


class FragmentServer:
    """Serves partners' fragments and records over mutual TLS."""

    def __init__(
        self,
        fragments: FragmentStore,
        records: HeldRecords,
        ssl_context: ssl.SSLContext,
        identify: Identify,
        *,
        limits: ServerLimits | None = None,
        on_stored: OnStored | None = None,
        on_corrupt_report: OnCorruptReport | None = None,
        verify_delegation: VerifyDelegation | None = None,
        on_refused: OnRefused | None = None,
    ) -> None:
        self._fragments = fragments
        self._records = records
        self._ssl = ssl_context
        self._identify = identify
        self._limits = limits or ServerLimits()
        self._on_stored = on_stored
        self._on_corrupt_report = on_corrupt_report
        self._verify_delegation = verify_delegation
        self._on_refused = on_refused
        self._server: asyncio.Server | None = None
        self._slots = asyncio.Semaphore(self._limits.max_connections)
        self._connections: set[asyncio.Task[None]] = set()
        self.leaving = False

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (0: any free port); returns the address bound."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _HandshakeFirst(self._accept, loop), host, port
        )
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    @property
    def connections(self) -> int:
        """Connections being served or handshaking now."""
        return len(self._connections)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        secured = False
        try:
            secured = await self._handshake(writer)
            if not secured:
                return
            if self._slots.locked():
                _log.warning("transport: connection limit reached, refusing a connection")
                return
            async with self._slots:
                await self._serve(reader, writer)
        except asyncio.CancelledError:
            # The node is stopping. The task ends quietly rather than cancelled: CPython
            # 3.11's stream protocol calls exception() on it, which raises for a cancelled
            # task, and the loop logs that as an unhandled error.
            pass
        finally:
            self._connections.discard(task)
            await hang_up(writer, wait=secured)

    async def _handshake(self, writer: asyncio.StreamWriter) -> bool:
        address = _address(writer)
        try:
            await writer.start_tls(self._ssl, ssl_handshake_timeout=HANDSHAKE_SECONDS)
        except ssl.SSLError as error:
            reason = getattr(error, "verify_message", "") or error.reason or type(error).__name__
            _log.warning("transport: TLS handshake from %s refused: %s", address, reason)
            self._refused(RefusedPeer(address, f"TLS handshake refused: {reason}"))
            return False
        except (OSError, TimeoutError):
            return False  # gone, or too slow: nobody to refuse
        return True

    def _refused(self, peer: RefusedPeer) -> None:
        if self._on_refused is None:
            return
        try:
            self._on_refused(peer)
        except Exception:  # a recording problem must not stop the server
            _log.exception("transport: could not report a refused peer")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        try:
            site = self._identify(ssl_object).site_id
        except MeshError as error:
            _log.warning("transport: peer refused after handshake: %s", error)
            self._refused(_refused_after_handshake(_address(writer), ssl_object, error))
            return
        peer = _Peer(site, reader, writer, self._limits)
        try:
            while True:
                request = await peer.next_request()
                if request is None:
                    return
                await self._handle(peer, request)
        except (ProtocolViolation, FormatError) as error:
            _log.warning("transport: site %s broke the protocol: %s", site, error)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            _log.info("transport: connection from site %s ended mid-request", site)

    async def _handle(self, peer: _Peer, request: Request) -> None:
        if peer.acting_for is not None and request.op not in _DELEGATED_OPS:
            await self._refuse_delegated(peer, request)
            return
        handlers = {
            Op.PING: self._ping,
            Op.PUT_FRAGMENT: self._put_fragment,
            Op.GET_FRAGMENT: self._get_fragment,
            Op.HAS_FRAGMENT: self._has_fragment,
            Op.DELETE_FRAGMENT: self._delete_fragment,
            Op.PUT_RECORD: self._put_record,
            Op.GET_RECORD: self._get_record,
            Op.LIST_RECORDS: self._list_records,
            Op.DELETE_RECORD: self._delete_record,
            Op.AUDIT_FRAGMENT: self._audit_fragment,
            Op.RENEW_LEASES: self._renew_leases,
            Op.REPORT_CORRUPT: self._report_corrupt,
            Op.ACT_FOR: self._act_for,
        }
        await handlers[request.op](peer, request)

    async def _refuse_delegated(self, peer: _Peer, request: Request) -> None:
        # A body that follows the head at once is read first, to keep the connection in step.
        if request.op is Op.AUDIT_FRAGMENT:
            if request.length != AUDIT_REQUEST_SIZE:
                raise ProtocolViolation(f"an audit request is {AUDIT_REQUEST_SIZE} bytes")
            await peer.read(AUDIT_REQUEST_SIZE)
        elif request.op is Op.RENEW_LEASES:
            check_renewal_length(request.length)
            await peer.read(request.length)
        await peer.respond(
            Response(Status.FORBIDDEN, "a delegate may only read, check and place fragments")
        )

    async def _act_for(self, peer: _Peer, request: Request) -> None:
        check_delegation_length(request.length)
        token = await peer.read(request.length)
        if self._verify_delegation is None:
            await peer.respond(Response(Status.FORBIDDEN, "this node takes no delegations"))
            return
        try:
            owner = self._verify_delegation(token, peer.presenter)
        except MeshError as error:
            _log.warning("transport: site %s presented an unusable delegation: %s",
                         peer.presenter, error)  # fmt: skip
            await peer.respond(Response(Status.FORBIDDEN, str(error)))
            return
        _log.info("transport: site %s acts for site %s on this connection", peer.presenter, owner)
        peer.act_for(owner)
        await peer.respond(Response(Status.OK))

    async def _ping(self, peer: _Peer, request: Request) -> None:
        await peer.respond(Response(Status.OK))

    async def _put_fragment(self, peer: _Peer, request: Request) -> None:
        if self.leaving:
            await peer.respond(Response(Status.LEAVING, _LEAVING))
            return
        try:
            pending = await asyncio.to_thread(
                self._fragments.begin_put, request.name, peer.site, request.length
            )
        except MeshError as error:
            await peer.respond(_refusal(error))
            return
        remaining = request.length
        writing: asyncio.Future[None] | None = None
        try:
            await peer.respond(Response(Status.CONTINUE))
            # The next chunk is read from the socket while the last one is written to
            # disk: a stop-and-wait loop left the link idle during every write.
            while remaining:
                chunk = await peer.read(min(CHUNK, remaining))
                remaining -= len(chunk)
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(asyncio.to_thread(pending.write, chunk))
            if writing is not None:
                await writing
                writing = None
            stored = await asyncio.to_thread(pending.commit)
        except MeshError as error:
            if writing is not None:
                with contextlib.suppress(MeshError):
                    await writing
            pending.abort()
            # The rest of the body is still on the wire: drain it so the connection stays
            # in step, then answer.
            await peer.drain_body(remaining)
            await peer.respond(_refusal(error))
            return
        except BaseException:
            if writing is not None:  # let the disk write in flight end before aborting
                with contextlib.suppress(BaseException):
                    await asyncio.shield(writing)
            pending.abort()
            raise
        _log.info("transport: stored fragment share %d for site %s", stored.share, peer.site)
        await peer.respond(Response(Status.OK))
        if self._on_stored is not None:
            await self._on_stored(request.name, peer.site)

    async def _owned(self, peer: _Peer, fragment_id: str) -> bool:
        stored = await asyncio.to_thread(self._fragments.has, fragment_id)
        return stored is not None and stored.owner_site == peer.site

    async def _get_fragment(self, peer: _Peer, request: Request) -> None:
        if not await self._owned(peer, request.name):
            await peer.respond(Response(Status.NOT_FOUND, "no such fragment"))
            return
        source = await asyncio.to_thread(self._fragments.open_read, request.name)
        if source is None:
            await peer.respond(Response(Status.NOT_FOUND, "no such fragment"))
            return
        with source:
            size = source.seek(0, 2)
            if request.offset > size:
                await peer.respond(Response(Status.BAD_REQUEST, "offset past the end"))
                return
            length = size - request.offset if request.length == 0 else request.length
            if request.offset + length > size:
                await peer.respond(Response(Status.BAD_REQUEST, "range past the end"))
                return
            source.seek(request.offset)
            await peer.respond(Response(Status.OK, length=length))
            remaining = length
            while remaining:
                chunk = await asyncio.to_thread(source.read, min(CHUNK, remaining))
                if not chunk:
                    raise ConnectionError("fragment file shrank while being sent")
                await peer.write(chunk)
                remaining -= len(chunk)

    async def _has_fragment(self, peer: _Peer, request: Request) -> None:
        stored = await asyncio.to_thread(self._fragments.has, request.name)
        if stored is None or stored.owner_site != peer.site:
            await peer.respond(Response(Status.NOT_FOUND, "no such fragment"))
            return
        await peer.respond(Response(Status.OK, length=HAS_BODY.size))
        await peer.write(HAS_BODY.pack(stored.size, stored.set_hash, stored.share))

    async def _delete_fragment(self, peer: _Peer, request: Request) -> None:
        # Not ``_owned``: that hides quarantined fragments, and deleting one is how the
        # owner's repair gives this node its room back (the store lets the owner do it).
        try:
            deleted = await asyncio.to_thread(self._fragments.delete, request.name, peer.site)
        except Forbidden:
            deleted = False  # another site's: "no such fragment", as every other op says
        except MeshError as error:
            await peer.respond(_refusal(error))
            return
        if not deleted:
            await peer.respond(Response(Status.NOT_FOUND, "no such fragment"))
            return
        await peer.respond(Response(Status.OK))

    async def _report_corrupt(self, peer: _Peer, request: Request) -> None:
        # Here this node is the owner: the peer holds one of our fragments and found it bad.
        known = False
        if self._on_corrupt_report is not None:
            try:
                known = await self._on_corrupt_report(peer.site, request.name)
            except MeshError as error:
                await peer.respond(_refusal(error))
                return
        if not known:
            await peer.respond(Response(Status.NOT_FOUND, "no such placement here"))
            return
        await peer.respond(Response(Status.OK))

    async def _put_record(self, peer: _Peer, request: Request) -> None:
        if request.length > MAX_RECORD_BYTES:
            await peer.respond(Response(Status.TOO_LARGE, "record over the size limit"))
            return
        await peer.respond(Response(Status.CONTINUE))
        data = await peer.read(request.length)
        try:
            await asyncio.to_thread(self._records.put, request.kind, peer.site, request.name, data)
        except MeshError as error:
            await peer.respond(_refusal(error))
            return
        await peer.respond(Response(Status.OK))

    async def _get_record(self, peer: _Peer, request: Request) -> None:
        data = await asyncio.to_thread(self._records.get, request.kind, peer.site, request.name)
        if data is None:
            await peer.respond(Response(Status.NOT_FOUND, "no such record"))
            return
        await peer.respond(Response(Status.OK, length=len(data)))
        await peer.write(data)

    async def _delete_record(self, peer: _Peer, request: Request) -> None:
        # Only the requester's own record can be named (records are kept per owner).
        deleted = await asyncio.to_thread(
            self._records.delete, request.kind, peer.site, request.name
        )
        if not deleted:
            await peer.respond(Response(Status.NOT_FOUND, "no such record"))
            return
        await peer.respond(Response(Status.OK))

    async def _list_records(self, peer: _Peer, request: Request) -> None:
        names = await asyncio.to_thread(self._records.list, request.kind, peer.site)
        body = "".join(names).encode("ascii")
        await peer.respond(Response(Status.OK, length=len(body)))
        await peer.write(body)

    async def _audit_fragment(self, peer: _Peer, request: Request) -> None:
        # The request follows the head at once (no CONTINUE: it is 45 bytes), so it is
        # read before any answer, to keep the connection in step.
        if request.length != AUDIT_REQUEST_SIZE:
            raise ProtocolViolation(f"an audit request is {AUDIT_REQUEST_SIZE} bytes")
        body = await peer.read(AUDIT_REQUEST_SIZE)
        try:
            challenge = parse_request(body)
        except MeshError as error:
            await peer.respond(_refusal(error))
            return
        if self.leaving:
            await peer.respond(Response(Status.LEAVING, _LEAVING))
            return
        if not await self._owned(peer, request.name):
            await peer.respond(Response(Status.NOT_FOUND, "no such fragment"))
            return
        try:
            data = await asyncio.to_thread(
                self._fragments.read_range, request.name, challenge.offset, challenge.length
            )
        except MeshError as error:
            await peer.respond(_refusal(error))
            return
        if data is None:
            await peer.respond(Response(Status.NOT_FOUND, "no such fragment"))
            return
        reply = pack_response(answer(challenge.nonce, challenge.offset, data))
        await peer.respond(Response(Status.OK, length=len(reply)))
        await peer.write(reply)

    async def _renew_leases(self, peer: _Peer, request: Request) -> None:
        # Like an audit request, the renewal follows the head at once; its announced size
        # is checked before a byte of it is read, and a bad one closes the connection.
        check_renewal_length(request.length)
        renewal = decode_renewal(await peer.read(request.length))
        try:
            renewed = await asyncio.to_thread(
                self._fragments.renew, peer.site, renewal.fragment_ids, renewal.seconds
            )
        except MeshError as error:
            await peer.respond(_refusal(error))
            return
        reply = encode_renewed(renewed)
        await peer.respond(Response(Status.OK, length=len(reply)))
        await peer.write(reply)


class _Peer:
    """One connected partner: reads and writes with the server's timeouts."""

    def __init__(
        self,
        site: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limits: ServerLimits,
    ) -> None:
        self.site = site  # whose data this connection may use
        self.presenter = site  # who is connected, as its certificate says
        self.acting_for: str | None = None
        self._reader = reader
        self._writer = writer
        self._limits = limits

    def act_for(self, owner: str) -> None:
        self.site = owner
        self.acting_for = owner

    async def next_request(self) -> Request | None:
        try:
            head_bytes = await asyncio.wait_for(
                self._reader.readexactly(REQUEST_HEAD_SIZE), self._limits.idle_seconds
            )
        except asyncio.IncompleteReadError as error:
            if not error.partial:
                return None  # the partner closed between requests
            raise
        head = decode_request_head(head_bytes)
        name = await self.read(head.name_length) if head.name_length else b""
        return decode_request(head, name)

    async def read(self, size: int) -> bytes:
        return await asyncio.wait_for(self._reader.readexactly(size), self._limits.io_seconds)

    async def drain_body(self, remaining: int) -> None:
        while remaining:
            remaining -= len(await self.read(min(CHUNK, remaining)))

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await asyncio.wait_for(self._writer.drain(), self._limits.io_seconds)

    async def respond(self, response: Response) -> None:
        await self.write(encode_response(response))


_LEAVING = "this site is leaving the federation: place and repair your shares elsewhere"


def _refusal(error: MeshError) -> Response:
    """The status a store error becomes; the message is the error's (never PHI here)."""
    if isinstance(error, QuotaExceeded):
        status = Status.QUOTA
    elif isinstance(error, LimitExceeded):
        status = Status.TOO_LARGE
    elif isinstance(error, Forbidden):
        status = Status.FORBIDDEN
    elif isinstance(error, CorruptFragment):
        status = Status.CORRUPT
    elif isinstance(error, FormatError):
        status = Status.BAD_REQUEST
    else:
        status = Status.UNAVAILABLE
    return Response(status, str(error))


class _HandshakeFirst(asyncio.StreamReaderProtocol):
    """A TCP connection handed to the server before TLS: nothing is read until
    ``start_tls`` runs, so the peer's ClientHello stays in the socket for the TLS layer."""

    def __init__(
        self,
        connected: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(asyncio.StreamReader(limit=_STREAM_LIMIT, loop=loop), connected, loop=loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.ReadTransport):
            transport.pause_reading()
        super().connection_made(transport)


async def hang_up(writer: asyncio.StreamWriter, *, wait: bool = True) -> None:
    """Close the connection; ``wait`` (at most CLOSE_SECONDS) only once TLS was set up.

    After a ``start_tls`` that failed or was cancelled, CPython 3.11 never tells the stream
    the socket closed (the TLS layer keeps ``connection_lost`` from a protocol it never
    connected), so ``wait_closed`` would wait forever: a node stopping while a peer was
    mid-handshake hung in :meth:`FragmentServer.close`."""
    writer.close()
    if wait:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), CLOSE_SECONDS)


def _address(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


def _refused_after_handshake(
    address: str, ssl_object: ssl.SSLObject | None, error: MeshError
) -> RefusedPeer:
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return RefusedPeer(address, str(error))
    common_name = ""
    with contextlib.suppress(ValueError):
        names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
            NameOID.COMMON_NAME
        )
        common_name = str(names[0].value)[:64] if names else ""
    return RefusedPeer(address, str(error), common_name, hashlib.sha256(der).hexdigest())
