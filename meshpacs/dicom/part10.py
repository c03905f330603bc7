"""Where the dataset starts in a stored Part 10 file (sans-I/O).

The node stores each instance as a Part 10 file: 128-byte preamble, ``DICM``, the file
meta group (0002,xxxx, always explicit VR little endian) that the node built from the
association, then the dataset exactly as it arrived. Retrieval and recovery send only the
dataset part, as received, so they need its offset without parsing the dataset itself.
"""

from __future__ import annotations

import struct

from meshpacs.errors import FormatError

__all__ = ["LONG_VRS", "META_SCAN_LIMIT", "dataset_offset", "file_meta"]

PREAMBLE = 128
# A file meta group is a few hundred bytes; 64 KiB is far beyond any legitimate one.
META_SCAN_LIMIT = 64 * 1024
# Explicit VR elements with these VRs have a 2-byte reserved field and a 4-byte length.
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_TAG = struct.Struct("<HH")


def dataset_offset(head: bytes) -> int:
    """Byte offset of the dataset in a Part 10 file, given at least its first bytes.

    Walks the group 0002 elements rather than trusting the group length, so a file whose
    group length is absent or wrong is still split at the right place.
    """
    if head[PREAMBLE : PREAMBLE + 4] != b"DICM":
        raise FormatError("not a Part 10 file: no DICM prefix")
    offset = PREAMBLE + 4
    while offset + 8 <= len(head):
        group, _element = _TAG.unpack_from(head, offset)
        if group != 0x0002:
            return offset
        vr = head[offset + 4 : offset + 6]
        if vr in LONG_VRS:
            if offset + 12 > len(head):
                break
            (length,) = struct.unpack_from("<I", head, offset + 8)
            offset += 12 + length
        else:
            (length,) = struct.unpack_from("<H", head, offset + 6)
            offset += 8 + length
    if offset >= len(head) and len(head) < META_SCAN_LIMIT:
        return offset  # a file that is only a file meta group: the dataset is empty
    raise FormatError("file meta group does not end within the scan limit")


_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<HH2s2xI")


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return _LONG.pack(0x0002, element, vr, len(value)) + value
    return _SHORT.pack(0x0002, element, vr, len(value)) + value


def _padded(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def file_meta(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes:
    """Preamble, ``DICM`` and a file meta group built from an association's context.

    Byte for byte what pydicom's ``write_file_meta_info`` writes for the same values, so
    an instance stored through either receive path has the same content address.
    """
    elements = b"".join(
        (
            _element(0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
            _element(0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
            _element(0x0010, b"UI", _padded(transfer_syntax_uid, b"\x00")),
            _element(0x0012, b"UI", _padded(implementation_class_uid, b"\x00")),
            _element(0x0013, b"SH", _padded(implementation_version_name, b" ")),
        )
    )
    group_length = _element(0x0000, b"UL", struct.pack("<I", len(elements)))
    return bytes(PREAMBLE) + b"DICM" + group_length + elements
