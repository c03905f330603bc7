"""C-FIND answer identifiers encoded directly, byte for byte as pydicom's ``write_dataset``.

An answer is a few short strings (the catalog's keys, :data:`meshpacs.metadata.matching.KEYS`,
and the unknown keys a peer asked for, returned empty). Building a pydicom ``Dataset`` for
each and writing it costs about 1 ms of Python per answer; a query matching a thousand
studies spent most of its time there. :func:`encode_answer` writes the same bytes from
the answer's strings: each element's tag, its VR (Explicit VR), its length and its value
padded to an even length (UI with a NUL, the others with a space), in tag order.

It encodes only what it is sure of and answers None for anything else, and the caller
then takes pydicom's path: Big Endian, a VR other than the string VRs (or an ambiguous
one), a number string it would have to interpret, a non-ASCII value outside the text VRs
or under a character set other than ISO_IR 192, a character set pydicom does not know,
a value too long for its length field. ``tests/dicom/test_answer_codec.py`` compares the
output with pydicom's for thousands of answers.
"""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword

__all__ = ["UTF8", "encode_answer"]

UTF8 = "ISO_IR 192"
# Values pydicom encodes with the dataset's character set (pydicom.values.text_VRs, PN).
_TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC"})
# Values pydicom writes as ASCII whatever the character set.
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR", "IS", "DS"})
# Explicit VR Little Endian: these have a 2-byte reserved field and a 4-byte length.
_LONG_VRS = frozenset({"UC", "UR", "UT"})
_IS_VALUE = re.compile(r"[0-9]{1,12}")
_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<HH2sxxI")
_IMPLICIT = struct.Struct("<HHI")
_MAX_SHORT = 0xFFFE
_CHARSET_TAG = 0x00080005


@dataclass(frozen=True)
class _Element:
    tag: int
    vr: str


@functools.lru_cache(maxsize=4096)
def _element(keyword: str) -> _Element | None:
    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    if vr not in _TEXT_VRS and vr not in _ASCII_VRS:
        return None  # binary, sequence or ambiguous ("US or SS"): pydicom's business
    return _Element(tag, vr)


def _value(vr: str, value: str, utf8: bool) -> bytes | None:
    if not value.isascii():
        if not (utf8 and vr in _TEXT_VRS):
            return None
        raw = value.encode("utf-8")
    else:
        if value and vr == "DS":
            return None  # pydicom may reformat a decimal string
        if value and vr == "IS" and not all(_IS_VALUE.fullmatch(v) for v in value.split("\\")):
            return None
        raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\x00" if vr == "UI" else b" "
    return raw


def _header(element: _Element, length: int, implicit: bool) -> bytes | None:
    group, number = element.tag >> 16, element.tag & 0xFFFF
    if implicit:
        return _IMPLICIT.pack(group, number, length)
    if element.vr in _LONG_VRS:
        return _LONG.pack(group, number, element.vr.encode(), length)
    if length > _MAX_SHORT:
        return None
    return _SHORT.pack(group, number, element.vr.encode(), length)


def _known_charset(value: str) -> bool:
    return value.isascii() and all(term in python_encoding for term in value.split("\\"))


def encode_answer(
    answer: Mapping[str, str], specific_character_set: str | None, *, implicit: bool
) -> bytes | None:
    """The answer's identifier in (Implicit or Explicit VR) Little Endian, or None.

    ``specific_character_set`` is the Specific Character Set value the answer carries
    (its terms joined by backslashes), or None for none. Values outside ASCII are encoded
    only under ISO_IR 192, as UTF-8; None means "encode it with pydicom".
    """
    utf8 = specific_character_set == UTF8
    elements: list[tuple[int, _Element, str]] = []
    if specific_character_set is not None:
        if not _known_charset(specific_character_set):
            return None
        elements.append((_CHARSET_TAG, _Element(_CHARSET_TAG, "CS"), specific_character_set))
    for keyword, value in answer.items():
        element = _element(keyword)
        if element is None or element.tag == _CHARSET_TAG:
            return None
        elements.append((element.tag, element, value))
    elements.sort(key=lambda item: item[0])
    out: list[bytes] = []
    for _, element, value in elements:
        raw = _value(element.vr, value, utf8)
        if raw is None:
            return None
        header = _header(element, len(raw), implicit)
        if header is None:
            return None
        out.append(header)
        out.append(raw)
    return b"".join(out)
