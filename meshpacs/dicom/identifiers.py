"""What a DICOM identifier may look like before the node lets it anywhere near its state.

DICOM values never become paths here (files are named by their SHA-256), but a UID still
travels into the catalog, into file meta and back out to peers, so malformed ones are
refused with a failure status rather than stored and served later (pynetdicom CVE-2026-56445
and dcmtk CVE-2022-2119 were paths built from such values).
"""

from __future__ import annotations

import re

__all__ = ["MAX_UID_LENGTH", "is_valid_uid"]

# PS3.5 §9.1: components of digits without leading zeros, separated by dots, 64 chars at most.
MAX_UID_LENGTH = 64
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def is_valid_uid(value: object) -> bool:
    """True for a syntactically valid UID (PS3.5 §9.1); leading zeros are tolerated.

    Leading zeros inside a component break the rule but are common in real archives (old
    modalities wrote them); refusing those studies would lose real data, and they are
    harmless: digits and dots cannot escape anything.
    """
    if not isinstance(value, str) or not 0 < len(value) <= MAX_UID_LENGTH:
        return False
    return _UID.fullmatch(value) is not None
