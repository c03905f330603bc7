"""Where the dataset starts in a stored Part 10 file (sans-I/O).

The node stores each instance as a Part 10 file: 128-byte preamble, ``DICM``, the file
meta group (0002,xxxx, always explicit VR little endian) that the node built from the
association, then the dataset exactly as it arrived. Retrieval and recovery send only the
dataset part, as received, so they need its offset without parsing the dataset itself.
"""

from __future__ import annotations

import struct

from meshpacs.errors import FormatError

__all__ = ["META_SCAN_LIMIT", "dataset_offset"]

PREAMBLE = 128
# A file meta group is a few hundred bytes; 64 KiB is far beyond any legitimate one.
META_SCAN_LIMIT = 64 * 1024
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
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
        if vr in _LONG_VRS:
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
