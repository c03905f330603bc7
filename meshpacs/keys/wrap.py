"""Wrapping of per-bundle data keys under the site's key-wrap key.

Each bundle is encrypted under its own random data key, so a leaked data key exposes one
bundle and nothing else. The data key travels with the bundle, wrapped (encrypted) under
``SiteKeys.key_wrap`` with AES-256-GCM. The bundle ID is authenticated as associated data,
so a wrapped key moved onto another bundle fails to unwrap instead of silently decrypting
the wrong thing.

Wrapped data key, big-endian:

======  ====  ======================================================
offset  size  field
======  ====  ======================================================
0       1     version (1)
1       12    nonce, random per wrap
13      32    data key, encrypted
45      16    GCM tag
======  ====  ======================================================

AAD is ``b"meshpacs/data-key/v1" + bundle_id``. A random 96-bit nonce is safe here: each
site wraps one key per bundle, far below the 2^32 wraps after which GCM nonce collisions
under one key become a concern.
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshpacs.errors import KeyMaterialError, UnknownVersion, WrongKey

__all__ = [
    "DATA_KEY_SIZE",
    "KEY_WRAP_KEY_SIZE",
    "WRAPPED_KEY_SIZE",
    "WRAP_VERSION",
    "unwrap_data_key",
    "wrap_data_key",
]

WRAP_VERSION = 1
KEY_WRAP_KEY_SIZE = 32
DATA_KEY_SIZE = 32
_NONCE_SIZE = 12
_TAG_SIZE = 16
WRAPPED_KEY_SIZE = 1 + _NONCE_SIZE + DATA_KEY_SIZE + _TAG_SIZE

_AAD_LABEL = b"meshpacs/data-key/v1"


def wrap_data_key(key_wrap_key: bytes, bundle_id: bytes, data_key: bytes) -> bytes:
    """Encrypt a bundle's data key under the site's key-wrap key, bound to ``bundle_id``."""
    _require_length(key_wrap_key, KEY_WRAP_KEY_SIZE, "key-wrap key")
    _require_length(data_key, DATA_KEY_SIZE, "data key")
    _require_bundle_id(bundle_id)
    nonce = secrets.token_bytes(_NONCE_SIZE)
    sealed = AESGCM(key_wrap_key).encrypt(nonce, data_key, _aad(bundle_id))
    return bytes([WRAP_VERSION]) + nonce + sealed


def unwrap_data_key(key_wrap_key: bytes, bundle_id: bytes, wrapped: bytes) -> bytes:
    """Recover a bundle's data key; ``WrongKey`` if the key or the bundle does not match."""
    _require_length(key_wrap_key, KEY_WRAP_KEY_SIZE, "key-wrap key")
    _require_bundle_id(bundle_id)
    if not wrapped:
        raise KeyMaterialError("wrapped data key is empty")
    # Version before length: a future version may well have another length.
    if wrapped[0] != WRAP_VERSION:
        raise UnknownVersion("wrapped data key", wrapped[0], (WRAP_VERSION,))
    _require_length(wrapped, WRAPPED_KEY_SIZE, "wrapped data key")
    nonce = bytes(wrapped[1 : 1 + _NONCE_SIZE])
    sealed = bytes(wrapped[1 + _NONCE_SIZE :])
    try:
        return AESGCM(key_wrap_key).decrypt(nonce, sealed, _aad(bundle_id))
    except InvalidTag:
        # from None: the InvalidTag carries nothing useful and the chain only adds noise.
        raise WrongKey(
            "data key does not unwrap: wrong site key or a wrapped key of another bundle"
        ) from None


def _aad(bundle_id: bytes) -> bytes:
    # The label is fixed-length, so label + bundle_id cannot be confused with another id.
    return _AAD_LABEL + bundle_id


def _require_length(value: bytes, size: int, what: str) -> None:
    if len(value) != size:
        raise KeyMaterialError(f"{what} must be {size} bytes, not {len(value)}")


def _require_bundle_id(bundle_id: bytes) -> None:
    if not bundle_id:
        # An empty id would bind the wrapped key to no bundle at all.
        raise KeyMaterialError("bundle id is empty: a wrapped data key must name its bundle")
