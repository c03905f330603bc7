"""Fragment IDs: the only names partners and the DHT ever see for a site's data.

``fragment_id = HMAC-SHA256(fragment-ID key, label | bundle_id | share)``: without the site's
key nobody can tell which fragments belong to one bundle, let alone to which study.
"""

from __future__ import annotations

import hashlib
import hmac

from meshpacs.erasure.layout import BUNDLE_ID_SIZE, MAX_N

__all__ = ["FRAGMENT_ID_SIZE", "fragment_id"]

FRAGMENT_ID_SIZE = 32
_LABEL = b"meshpacs/v1/fragment-id"


def fragment_id(key: bytes, bundle_id: bytes, share: int) -> str:
    """The hex fragment ID of share ``share`` of ``bundle_id`` under a site's fragment-ID key."""
    if len(bundle_id) != BUNDLE_ID_SIZE or not 0 <= share < MAX_N:
        raise ValueError("fragment id needs a 16-byte bundle id and a share number below 256")
    message = _LABEL + bundle_id + share.to_bytes(2, "big")
    return hmac.new(key, message, hashlib.sha256).hexdigest()
