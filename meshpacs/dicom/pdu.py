"""DICOM Upper Layer framing for the storage receiver (sans-I/O, PS3.8 section 9.3).

Pure functions over bytes: no sockets, no files. The receiver (:mod:`receiver`) reads
bytes and feeds them here; association request and accept PDUs are left to pynetdicom's
PDU classes, which are sans-I/O too.

Every PDU starts with the same 6-byte header::

    0      1      2                6
    +------+------+----------------+---------------------------+
    | type | 0x00 | length (BE u32)| `length` bytes of body    |
    +------+------+----------------+---------------------------+

A P-DATA-TF body (type 0x04) is a run of presentation data values::

    0                4       5         6
    +----------------+-------+---------+-------------------------+
    | item len (BE)  | cx id | control | item len - 2 bytes      |
    +----------------+-------+---------+-------------------------+
    control bit 0: 1 = command, 0 = dataset; bit 1: 1 = last fragment of the message

A command set is an implicit VR little endian dataset of group 0x0000 elements::

    +-------------+-------------+-----------------+--------------+
    | group (LE)  | elem (LE)   | value len (LE32)| value        |
    +-------------+-------------+-----------------+--------------+
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from meshpacs.errors import FormatError

__all__ = [
    "A_ABORT",
    "A_ASSOCIATE_AC",
    "A_ASSOCIATE_RJ",
    "A_ASSOCIATE_RQ",
    "A_RELEASE_RP",
    "A_RELEASE_RQ",
    "HEADER_LENGTH",
    "P_DATA_TF",
    "Command",
    "Pdv",
    "abort_pdu",
    "decode_command",
    "encode_command",
    "iter_pdvs",
    "p_data_pdu",
    "p_data_pdus",
    "parse_header",
    "release_rp_pdu",
    "release_rq_pdu",
    "uid_value",
    "us_value",
]

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

HEADER_LENGTH = 6
_HEADER = struct.Struct(">BxI")
_PDV_HEADER = struct.Struct(">IBB")
_ELEMENT = struct.Struct("<HHI")


def parse_header(header: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(PDU type, body length) from the first 6 bytes."""
    if len(header) < HEADER_LENGTH:
        raise FormatError("PDU header shorter than 6 bytes")
    kind, length = _HEADER.unpack_from(header)
    return int(kind), int(length)


@dataclass(frozen=True)
class Pdv:
    """One presentation data value: a fragment of a command or a dataset."""

    context_id: int
    is_command: bool
    is_last: bool
    data: memoryview


def iter_pdvs(body: memoryview) -> Iterator[Pdv]:
    """The PDVs of a P-DATA-TF body, as views into it (no copy)."""
    offset = 0
    end = len(body)
    if end == 0:
        raise FormatError("P-DATA-TF without any presentation data value")
    while offset < end:
        if end - offset < _PDV_HEADER.size:
            raise FormatError("truncated presentation data value header")
        length, context_id, control = _PDV_HEADER.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > end:
            raise FormatError("presentation data value length out of bounds")
        start = offset + _PDV_HEADER.size
        offset += 4 + length
        yield Pdv(context_id, bool(control & 1), bool(control & 2), body[start:offset])


def p_data_pdu(context_id: int, command: bytes) -> bytes:
    """A P-DATA-TF carrying a whole command set in one last fragment."""
    pdv = _PDV_HEADER.pack(len(command) + 2, context_id, 0x03) + command
    return _HEADER.pack(P_DATA_TF, len(pdv)) + pdv


def p_data_pdus(context_id: int, data: bytes, *, command: bool, max_pdu: int) -> bytes:
    """A whole command set or dataset as P-DATA-TF PDUs of one fragment each.

    No PDU is longer than ``max_pdu`` (the peer's Maximum Length Received; 0 means no
    limit), fragments cut as pynetdicom cuts them: ``max_pdu - 6`` bytes of value each.
    """
    step = (len(data) or 1) if max_pdu == 0 else max(max_pdu - _PDV_HEADER.size, 1)
    kind = 0x01 if command else 0x00
    out = bytearray()
    offset = 0
    while True:
        chunk = data[offset : offset + step]
        offset += step
        last = offset >= len(data)
        out += _HEADER.pack(P_DATA_TF, len(chunk) + _PDV_HEADER.size)
        out += _PDV_HEADER.pack(len(chunk) + 2, context_id, kind | (0x02 if last else 0))
        out += chunk
        if last:
            return bytes(out)


def release_rq_pdu() -> bytes:
    return _HEADER.pack(A_RELEASE_RQ, 4) + bytes(4)


def release_rp_pdu() -> bytes:
    return _HEADER.pack(A_RELEASE_RP, 4) + bytes(4)


def abort_pdu(source: int, reason: int) -> bytes:
    """A-ABORT; source 0 = service user, 2 = service provider (PS3.8 9.3.8)."""
    return _HEADER.pack(A_ABORT, 4) + bytes([0, 0, source, reason])


@dataclass(frozen=True)
class Command:
    """The command-set elements the receiver reads; raw values, trailing padding removed."""

    elements: Mapping[int, bytes]

    def us(self, element: int) -> int | None:
        value = self.elements.get(element)
        if value is None or len(value) != 2:
            return None
        return int.from_bytes(value, "little")

    def text(self, element: int) -> str:
        value = self.elements.get(element, b"")
        return value.rstrip(b"\x00 ").decode("ascii", "replace")

    @property
    def field(self) -> int | None:
        return self.us(0x0100)

    @property
    def message_id(self) -> int | None:
        return self.us(0x0110)

    @property
    def has_dataset(self) -> bool:
        return self.us(0x0800) != 0x0101


def decode_command(data: bytes | bytearray | memoryview) -> Command:
    """Parse an implicit VR little endian command set (group 0x0000 only)."""
    view = memoryview(data)
    elements: dict[int, bytes] = {}
    offset = 0
    while offset < len(view):
        if len(view) - offset < _ELEMENT.size:
            raise FormatError("truncated command element")
        group, element, length = _ELEMENT.unpack_from(view, offset)
        offset += _ELEMENT.size
        if group != 0x0000:
            raise FormatError("command set element outside group 0000")
        if length > len(view) - offset:
            raise FormatError("command element value runs past the command set")
        elements[element] = bytes(view[offset : offset + length])
        offset += length
    return Command(elements)


def us_value(value: int) -> bytes:
    return value.to_bytes(2, "little")


def uid_value(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def encode_command(elements: Mapping[int, bytes]) -> bytes:
    """Encode group 0x0000 elements in tag order, with the group length first."""
    body = b"".join(
        _ELEMENT.pack(0x0000, element, len(value)) + value
        for element, value in sorted(elements.items())
        if element != 0x0000
    )
    return _ELEMENT.pack(0x0000, 0x0000, 4) + len(body).to_bytes(4, "little") + body
