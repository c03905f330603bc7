"""The names the fragment store accepts: fragment IDs and owner site IDs, checked strictly.

A fragment ID arrives from a peer and becomes a file name, so it is checked character by
character before it touches a path: exactly 64 lower-case hex characters, the hex form of
an HMAC-SHA256 (:mod:`meshpacs.erasure.ids`). Nothing else (no ``..``, no ``/``, no NUL,
no upper case, which would give one fragment two names) gets through. A site ID comes from
a peer's verified certificate and is only ever stored in the index, never in a path; it
follows the federation's one rule (:func:`meshpacs.federation.names.site_id_problem`:
``[a-z0-9-]``, 1 to 64 characters), but a bad one is refused here with the store's
:class:`FormatError`, since it came from a peer, not from the node's own configuration.

Messages give the length of a refused name, never the name: it may be garbage of any size.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TypeGuard

from meshpacs.erasure.ids import FRAGMENT_ID_SIZE
from meshpacs.errors import FormatError
from meshpacs.federation.names import SITE_ID_MAX_LENGTH, site_id_problem

__all__ = [
    "FANOUT",
    "FRAGMENT_ID_LENGTH",
    "SITE_ID_MAX_LENGTH",
    "fanout_name",
    "fragment_path",
    "is_fragment_id",
    "validate_fragment_id",
    "validate_site_id",
]

FRAGMENT_ID_LENGTH = 2 * FRAGMENT_ID_SIZE  # 64 hex characters

# The 256 fan-out directories: the first byte of the ID, in hex.
FANOUT = tuple(f"{i:02x}" for i in range(256))

_FRAGMENT_ID = re.compile(f"[0-9a-f]{{{FRAGMENT_ID_LENGTH}}}")


def is_fragment_id(value: object) -> TypeGuard[str]:
    # fullmatch, not match with "$", which would let a trailing newline through.
    return isinstance(value, str) and _FRAGMENT_ID.fullmatch(value) is not None


def validate_fragment_id(value: object) -> str:
    """``value`` if it is a well-formed fragment ID; :class:`FormatError` otherwise."""
    if is_fragment_id(value):
        return value
    got = f"{len(value)} characters" if isinstance(value, str) else type(value).__name__
    raise FormatError(
        f"fragment ID must be {FRAGMENT_ID_LENGTH} lower-case hex characters, got {got}"
    )


def validate_site_id(value: object) -> str:
    """``value`` if it is a well-formed site ID; :class:`FormatError` otherwise."""
    if not isinstance(value, str):
        raise FormatError(f"site ID must be text, got {type(value).__name__}")
    problem = site_id_problem(value)
    if problem is not None:
        raise FormatError(f"site ID {problem}")  # the rule's words never quote the value
    return value


def fanout_name(fragment_id: str) -> str:
    """The fan-out directory of a (validated) fragment ID: its first two hex characters."""
    return fragment_id[:2]


def fragment_path(root: Path, fragment_id: str) -> Path:
    """Where a (validated) fragment lives under the store's directory: ``ab/abcdef...``."""
    return root / fanout_name(fragment_id) / fragment_id
