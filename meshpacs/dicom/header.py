"""Find a few top-level elements at the start of a dataset, without a DICOM parser (sans-I/O).

The catalog needs about twenty attributes, all at or before (0020,0013) Instance Number.
A full pydicom read of the header costs about 1 ms per instance, more than anything else the
receiver does per instance; this walk costs a few microseconds per element. It is an
accelerator with a strict rule: it returns exactly the raw elements pydicom would read, or
raises :class:`NotHere` and pydicom reads the header as before. Anything unusual falls
back: big endian, an element out of order or repeated, a VR that is not two capital
letters, item tags at the top level, an undefined length outside a sequence, a value
cut off by the end of the data.

Element encodings (PS3.5 section 7.1), little endian::

    explicit VR, short:  group(2) element(2) VR(2) length(2)           value
    explicit VR, long:   group(2) element(2) VR(2) 0000  length(4)     value
                         (VR in OB OD OF OL OV OW SQ SV UC UN UR UT UV)
    implicit VR:         group(2) element(2) length(4)                 value
    item, delimiters:    FFFE     E000/E00D/E0DD  length(4)            (no VR, ever)

Sequences of undefined length are skipped item by item to their delimiter (FFFE,E0DD);
explicit "UN" of undefined length holds implicit VR content (PS3.5 6.2.2).
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from dataclasses import dataclass

from meshpacs.dicom.part10 import LONG_VRS

__all__ = ["NotHere", "RawElement", "find_elements"]

_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_TAG_LENGTH = struct.Struct("<HHI")
_TAG_VR_LENGTH = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<I")
# Deeper nesting than this is not a header anyone writes; pydicom can have it.
_MAX_DEPTH = 16


class NotHere(Exception):
    """The walk cannot answer for this data: read it with pydicom instead."""


@dataclass(frozen=True)
class RawElement:
    tag: int
    vr: str | None  # None in implicit VR
    value: bytes


@dataclass(frozen=True)
class _Header:
    tag: int
    vr: bytes | None
    length: int
    value_offset: int


def find_elements(
    data: bytes | memoryview,
    start: int,
    *,
    implicit: bool,
    wanted: Collection[int],
    last: int,
    complete: bool,
) -> dict[int, RawElement]:
    """The ``wanted`` top-level elements of the dataset at ``data[start:]``, up to ``last``.

    ``complete`` says ``data`` holds the whole dataset, so its end is the dataset's end;
    otherwise reaching the end before passing ``last`` raises :class:`NotHere`.
    """
    view = memoryview(data)
    found: dict[int, RawElement] = {}
    offset = start
    previous = -1
    while offset < len(view):
        header = _read_header(view, offset, implicit)
        if header.tag <= previous or header.tag >> 16 == 0xFFFE:
            raise NotHere("element out of order, repeated, or a stray item tag")
        previous = header.tag
        if header.tag > last:
            return found
        if header.length == _UNDEFINED:
            offset = _skip_undefined(view, header, implicit, depth=0)
            continue
        end = header.value_offset + header.length
        if end > len(view):
            raise NotHere("a value runs past the data")
        if header.tag in wanted:
            vr = None if header.vr is None else header.vr.decode("ascii")
            found[header.tag] = RawElement(header.tag, vr, bytes(view[header.value_offset : end]))
        offset = end
    if not complete:
        raise NotHere("the data ended before the last wanted element")
    return found


def _read_header(view: memoryview, offset: int, implicit: bool) -> _Header:
    if offset + 8 > len(view):
        raise NotHere("an element header runs past the data")
    group, element, length = _TAG_LENGTH.unpack_from(view, offset)
    tag = group << 16 | element
    if implicit or group == 0xFFFE:
        return _Header(tag, None, length, offset + 8)
    _, _, vr, short_length = _TAG_VR_LENGTH.unpack_from(view, offset)
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise NotHere("not an explicit VR")
    if vr in LONG_VRS:
        if offset + 12 > len(view):
            raise NotHere("an element header runs past the data")
        (long_length,) = _LONG_LENGTH.unpack_from(view, offset + 8)
        return _Header(tag, vr, long_length, offset + 12)
    return _Header(tag, vr, short_length, offset + 8)


def _skip_undefined(view: memoryview, header: _Header, implicit: bool, depth: int) -> int:
    """Offset just past a sequence of undefined length (its delimiter included)."""
    if header.vr not in (b"SQ", b"UN", None) or depth > _MAX_DEPTH:
        raise NotHere("undefined length outside a sequence")
    inner_implicit = implicit or header.vr == b"UN"
    offset = header.value_offset
    while True:
        item = _read_header(view, offset, implicit=True)
        if item.tag == _SEQUENCE_END:
            return item.value_offset
        if item.tag != _ITEM:
            raise NotHere("a sequence holds something other than items")
        if item.length != _UNDEFINED:
            offset = item.value_offset + item.length
            continue
        offset = _skip_item(view, item.value_offset, inner_implicit, depth)


def _skip_item(view: memoryview, offset: int, implicit: bool, depth: int) -> int:
    """Offset just past an item of undefined length (its delimiter included)."""
    while True:
        header = _read_header(view, offset, implicit)
        if header.tag == _ITEM_END:
            return header.value_offset
        if header.length == _UNDEFINED:
            offset = _skip_undefined(view, header, implicit, depth + 1)
        else:
            offset = header.value_offset + header.length
            if offset > len(view):
                raise NotHere("a value runs past the data")
