"""The site-ID field of the signed and sealed formats: a length byte, then the site ID.

Escrow releases (:mod:`meshpacs.keys.escrow`), recovery requests and authorisations
(:mod:`meshpacs.federation.authorisation`), delegation tokens
(:mod:`meshpacs.federation.delegation`) and repair manifests
(:mod:`meshpacs.metadata.manifest`) all name sites the same way::

    offset  size  field
    0       1     L = len(site), 1..SITE_FIELD_MAX
    1       L     site           ASCII, of the characters the format allows

The formats differ only in which characters they take (``charset``): releases, requests
and authorisations check the federation's site-ID rule themselves; tokens take any ASCII,
their fields checking the rule after; manifests take printable ASCII. Each keeps its own,
so every byte string one of them ever wrote still reads, and reads as before.

Pure functions over bytes. Errors are :class:`~meshpacs.errors.FormatError` naming the
field (``what``), never the bytes a peer sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshpacs.errors import FormatError

__all__ = [
    "ASCII",
    "PRINTABLE_ASCII",
    "SITE_FIELD_MAX",
    "SITE_ID",
    "SiteCharset",
    "site_field",
    "take_site_field",
]

# The federation's bound on a site ID (meshpacs.federation.names), repeated here because
# keys sit below federation; it is also what one length byte is allowed to say.
SITE_FIELD_MAX = 64


@dataclass(frozen=True)
class SiteCharset:
    """Which bytes a site field may hold: ``pattern`` must match the whole of them."""

    pattern: re.Pattern[bytes]
    name: str  # for errors: "<what> is not <name>"


# The federation's site-ID rule (meshpacs.federation.names), for the same reason as above.
SITE_ID = SiteCharset(re.compile(rb"[a-z0-9-]+"), "a valid site ID")
ASCII = SiteCharset(re.compile(rb"[\x00-\x7f]+"), "ASCII")
PRINTABLE_ASCII = SiteCharset(re.compile(rb"[\x20-\x7e]+"), "printable ASCII")


def _check(raw: bytes, what: str, charset: SiteCharset) -> None:
    if not 1 <= len(raw) <= SITE_FIELD_MAX:
        raise FormatError(f"{what} has a bad length, not 1..{SITE_FIELD_MAX}")
    if not charset.pattern.fullmatch(raw):
        raise FormatError(f"{what} is not {charset.name}")


def site_field(site: str, what: str, charset: SiteCharset) -> bytes:
    """``site`` as a field: its length byte and its ASCII bytes."""
    if not site.isascii():
        raise FormatError(f"{what} is not {charset.name}")
    raw = site.encode("ascii")
    _check(raw, what, charset)
    return bytes([len(raw)]) + raw


def take_site_field(data: bytes, offset: int, what: str, charset: SiteCharset) -> tuple[str, int]:
    """The site in the field at ``data[offset:]`` and the offset just past it."""
    if offset >= len(data):
        raise FormatError(f"{what} is cut short")
    size = data[offset]
    if not 1 <= size <= SITE_FIELD_MAX:
        raise FormatError(f"{what} has a bad length, not 1..{SITE_FIELD_MAX}")
    end = offset + 1 + size
    if end > len(data):
        raise FormatError(f"{what} is cut short")
    raw = data[offset + 1 : end]
    _check(raw, what, charset)
    return raw.decode("ascii"), end
