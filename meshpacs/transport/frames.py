"""The fragment transport's wire format: fixed-size heads, bounded names, streamed bodies.

One TLS connection carries requests one after another. Each request is a head, a name,
and for ``PUT_FRAGMENT``/``PUT_RECORD`` a body of exactly ``length`` bytes, which the
client sends only after the server said ``CONTINUE`` (so a quota or ownership refusal
costs a round trip, never a 100 MB upload); the small bodies of ``AUDIT_FRAGMENT`` and
``RENEW_LEASES`` follow the head at once. Every response is a head, a message and
``length`` body bytes. Everything a peer sends is bounded here, before anything is
allocated: names at 64 bytes, messages at 1 KiB, renewals at 1024 IDs, bodies by the
caller's own limits.

Request head, version 1 (big-endian)::

    offset  size  field
    0       1     version      = 1
    1       1     op           see :class:`Op`
    2       1     kind         record kind for *_RECORD ops (1 catalog, 2 escrow,
                               3 repair manifest, 4 delegation), else 0
    3       1     name_length  0..64
    4       8     offset       GET_FRAGMENT: first byte wanted
    12      8     length       PUT_*: body bytes that follow CONTINUE; GET_FRAGMENT: bytes
                               wanted (0 = to the end); AUDIT_FRAGMENT: the size of the
                               audit request that follows at once (exactly 45 bytes,
                               :mod:`meshpacs.audit.challenge`), no CONTINUE;
                               RENEW_LEASES: the size of the renewal that follows at
                               once (7 + 64 * count bytes), no CONTINUE; ACT_FOR: the
                               size of the delegation that follows at once (at most
                               MAX_DELEGATION_BYTES), no CONTINUE
    20      N     name         ASCII: a fragment ID or record ID (64 lower-case hex)

Response head, version 1::

    offset  size  field
    0       1     version      = 1
    1       1     status       see :class:`Status`
    2       2     message_length  0..1024
    4       8     length       body bytes that follow the message
    12      M     message      UTF-8, for logs; never carries PHI (peers hold none)

Renewal, the body of ``RENEW_LEASES`` (no name), version 1::

    offset  size  field
    0       1     version      = 1
    1       4     seconds      lease wanted from now, >= 1 (the holder cuts it to its own
                               maximum and never shortens a lease)
    5       2     count        0..1024
    7       64*c  fragment IDs each as a name is sent: 64 lower-case hex ASCII, no separator

Its answer is ``OK`` with a 4-byte body, a u32: how many of the IDs the holder renewed.
Only the requester's own fragments count; another site's ID is skipped as if not held.

Who may do what is not in the frames: the server reads the requester's site ID from its
TLS certificate, and the owner of a fragment or record is always that site, except on a
connection where the requester presented, with ``ACT_FOR``, the owner's delegation
(:mod:`meshpacs.federation.delegation`): its later fragment reads, checks and puts are
the owner's, and nothing else is allowed on that connection.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from meshpacs.errors import ProtocolViolation, UnknownVersion
from meshpacs.federation.delegation import MAX_DELEGATION_BYTES
from meshpacs.store.store import MAX_RENEW

__all__ = [
    "MAX_MESSAGE",
    "MAX_NAME",
    "MAX_RENEW",
    "RENEWED_SIZE",
    "REQUEST_HEAD_SIZE",
    "RESPONSE_HEAD_SIZE",
    "VERSION",
    "Op",
    "RecordKind",
    "Renewal",
    "Request",
    "RequestHead",
    "Response",
    "ResponseHead",
    "Status",
    "check_delegation_length",
    "check_renewal_length",
    "decode_renewal",
    "decode_renewed",
    "decode_request",
    "decode_request_head",
    "decode_response",
    "decode_response_head",
    "encode_renewal",
    "encode_renewed",
    "encode_request",
    "encode_response",
]

VERSION = 1
MAX_NAME = 64
MAX_MESSAGE = 1024
_REQUEST = struct.Struct(">BBBBQQ")
_RESPONSE = struct.Struct(">BBHQ")
REQUEST_HEAD_SIZE = _REQUEST.size  # 20
RESPONSE_HEAD_SIZE = _RESPONSE.size  # 12
_HEX_NAME = re.compile(rb"[0-9a-f]{64}")
_MAX_U64 = 2**64 - 1
_RENEWAL = struct.Struct(">BIH")  # version, seconds, count; the IDs follow
_RENEWED = struct.Struct(">I")
RENEWED_SIZE = _RENEWED.size  # 4
_MAX_U32 = 2**32 - 1


class Op(enum.IntEnum):
    PING = 1
    PUT_FRAGMENT = 2
    GET_FRAGMENT = 3
    HAS_FRAGMENT = 4
    DELETE_FRAGMENT = 5
    PUT_RECORD = 6
    GET_RECORD = 7
    LIST_RECORDS = 8
    AUDIT_FRAGMENT = 9
    RENEW_LEASES = 10
    DELETE_RECORD = 11
    REPORT_CORRUPT = 12  # holder to owner: your fragment (the name) failed my scrub
    ACT_FOR = 13  # a trusted peer presents the owner's delegation (the body)


class RecordKind(enum.IntEnum):
    NONE = 0
    CATALOG = 1
    ESCROW = 2
    REPAIR = 3  # a repair manifest, sealed to the peer that keeps it
    DELEGATION = 4  # the owner's signed delegation for the peer that keeps it


class Status(enum.IntEnum):
    OK = 0
    CONTINUE = 1
    NOT_FOUND = 2
    FORBIDDEN = 3
    QUOTA = 4
    CORRUPT = 5
    BAD_REQUEST = 6
    TOO_LARGE = 7
    UNAVAILABLE = 8
    LEAVING = 9  # the holder is leaving the federation: take your shares elsewhere


_NAMED_OPS = {
    Op.PUT_FRAGMENT,
    Op.GET_FRAGMENT,
    Op.HAS_FRAGMENT,
    Op.DELETE_FRAGMENT,
    Op.PUT_RECORD,
    Op.GET_RECORD,
    Op.DELETE_RECORD,
    Op.AUDIT_FRAGMENT,
    Op.REPORT_CORRUPT,
}
_RECORD_OPS = {Op.PUT_RECORD, Op.GET_RECORD, Op.LIST_RECORDS, Op.DELETE_RECORD}


@dataclass(frozen=True)
class RequestHead:
    version: int
    op: Op
    kind: RecordKind
    name_length: int
    offset: int
    length: int


@dataclass(frozen=True)
class Request:
    op: Op
    name: str = ""
    kind: RecordKind = RecordKind.NONE
    offset: int = 0
    length: int = 0

    def __post_init__(self) -> None:
        _check_request(self.op, self.kind, self.name.encode("ascii", "replace"))
        if not 0 <= self.offset <= _MAX_U64 or not 0 <= self.length <= _MAX_U64:
            raise ProtocolViolation("offset and length must fit in 64 bits")


@dataclass(frozen=True)
class Renewal:
    """A decoded renewal: lease ``fragment_ids`` for ``seconds`` from now."""

    seconds: int
    fragment_ids: tuple[str, ...]


@dataclass(frozen=True)
class ResponseHead:
    version: int
    status: Status
    message_length: int
    length: int


@dataclass(frozen=True)
class Response:
    status: Status
    message: str = ""
    length: int = 0


def _check_request(op: Op, kind: RecordKind, name: bytes) -> None:
    if op in _NAMED_OPS and not _HEX_NAME.fullmatch(name):
        raise ProtocolViolation(f"{op.name} needs a 64-hex-digit name")
    if op not in _NAMED_OPS and name:
        raise ProtocolViolation(f"{op.name} takes no name")
    if (op in _RECORD_OPS) != (kind != RecordKind.NONE):
        raise ProtocolViolation(f"{op.name} with record kind {kind.name}")


def encode_request(request: Request) -> bytes:
    name = request.name.encode("ascii")
    head = _REQUEST.pack(
        VERSION, request.op, request.kind, len(name), request.offset, request.length
    )
    return head + name


def decode_request_head(data: bytes) -> RequestHead:
    """The fixed part of a request; the caller then reads ``name_length`` more bytes."""
    if len(data) != REQUEST_HEAD_SIZE:
        raise ProtocolViolation(f"request head is {len(data)} bytes, not {REQUEST_HEAD_SIZE}")
    version, op, kind, name_length, offset, length = _REQUEST.unpack(data)
    if version != VERSION:
        raise UnknownVersion("transport request", version, [VERSION])
    try:
        parsed_op, parsed_kind = Op(op), RecordKind(kind)
    except ValueError:
        raise ProtocolViolation(f"unknown op {op} or record kind {kind}") from None
    if name_length > MAX_NAME:
        raise ProtocolViolation(f"name of {name_length} bytes is over {MAX_NAME}")
    return RequestHead(version, parsed_op, parsed_kind, name_length, offset, length)


def decode_request(head: RequestHead, name: bytes) -> Request:
    if len(name) != head.name_length:
        raise ProtocolViolation("name is cut short")
    _check_request(head.op, head.kind, name)
    return Request(head.op, name.decode("ascii"), head.kind, head.offset, head.length)


def encode_response(response: Response) -> bytes:
    message = response.message.encode("utf-8")[:MAX_MESSAGE]
    return _RESPONSE.pack(VERSION, response.status, len(message), response.length) + message


def decode_response_head(data: bytes) -> ResponseHead:
    if len(data) != RESPONSE_HEAD_SIZE:
        raise ProtocolViolation(f"response head is {len(data)} bytes, not {RESPONSE_HEAD_SIZE}")
    version, status, message_length, length = _RESPONSE.unpack(data)
    if version != VERSION:
        raise UnknownVersion("transport response", version, [VERSION])
    try:
        parsed = Status(status)
    except ValueError:
        raise ProtocolViolation(f"unknown status {status}") from None
    if message_length > MAX_MESSAGE:
        raise ProtocolViolation(f"message of {message_length} bytes is over {MAX_MESSAGE}")
    return ResponseHead(version, parsed, message_length, length)


def decode_response(head: ResponseHead, message: bytes) -> Response:
    if len(message) != head.message_length:
        raise ProtocolViolation("message is cut short")
    return Response(head.status, message.decode("utf-8", "replace"), head.length)


def encode_renewal(fragment_ids: Sequence[str], seconds: int) -> bytes:
    if len(fragment_ids) > MAX_RENEW:
        raise ProtocolViolation(f"a renewal names at most {MAX_RENEW} fragments")
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 1 <= seconds <= _MAX_U32:
        raise ProtocolViolation("a renewal's seconds must be a whole number from 1 to 2**32-1")
    names = [name.encode("ascii", "replace") for name in fragment_ids]
    for name in names:
        if not _HEX_NAME.fullmatch(name):
            raise ProtocolViolation("a renewal needs 64-hex-digit fragment IDs")
    return _RENEWAL.pack(VERSION, seconds, len(names)) + b"".join(names)


def check_renewal_length(length: int) -> None:
    """Refuse a renewal's announced size before reading it: it can only be so long."""
    ids = length - _RENEWAL.size
    if not 0 <= ids <= MAX_RENEW * MAX_NAME or ids % MAX_NAME:
        raise ProtocolViolation(f"a renewal of {length} bytes is not 7 + 64 * (0..{MAX_RENEW})")


def check_delegation_length(length: int) -> None:
    """Refuse an ``ACT_FOR`` body's announced size before reading it."""
    if not 1 <= length <= MAX_DELEGATION_BYTES:
        raise ProtocolViolation(f"a delegation of {length} bytes is not 1..{MAX_DELEGATION_BYTES}")


def decode_renewal(data: bytes) -> Renewal:
    check_renewal_length(len(data))
    version, seconds, count = _RENEWAL.unpack_from(data)
    if version != VERSION:
        raise UnknownVersion("lease renewal", version, [VERSION])
    if len(data) != _RENEWAL.size + count * MAX_NAME:
        raise ProtocolViolation(f"a renewal of {len(data)} bytes does not hold {count} IDs")
    if seconds == 0:
        raise ProtocolViolation("a renewal for 0 seconds")
    names = [data[i : i + MAX_NAME] for i in range(_RENEWAL.size, len(data), MAX_NAME)]
    if not all(_HEX_NAME.fullmatch(name) for name in names):
        raise ProtocolViolation("a renewal needs 64-hex-digit fragment IDs")
    return Renewal(seconds, tuple(name.decode("ascii") for name in names))


def encode_renewed(count: int) -> bytes:
    return _RENEWED.pack(count)


def decode_renewed(data: bytes) -> int:
    if len(data) != RENEWED_SIZE:
        raise ProtocolViolation(f"a renewal's answer is {RENEWED_SIZE} bytes, not {len(data)}")
    return int(_RENEWED.unpack(data)[0])
