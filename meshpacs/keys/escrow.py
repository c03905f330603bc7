"""Escrow shares of the site secret, each sealed to one trusted peer's certificate key.

A site that loses both its archive and its recovery phrase can still be rebuilt: its
secret is split t-of-m with Shamir (:mod:`meshpacs.keys.shamir`) among its m trusted
peers, and each share is sealed so that only that peer can open it. The peer keeps the
sealed share for the site; the recovery procedure has t peers open theirs (with the
federation administrator's authorisation) and combine them.

Sealed share, format version 1::

    offset  size  field
    0       1     version          = 1
    1       32    ephemeral_public X25519, fresh per seal
    33      12    nonce            random
    45      ...   ciphertext       AES-256-GCM of ``encode_share(share)``, tag at the end

    shared  = X25519(ephemeral_private, recipient's X25519 key)
    key     = HKDF-SHA256(shared, salt = ephemeral_public | recipient_public,
                          info = LABEL | owner_site | 0x00 | recipient_site)
    AAD     = LABEL | owner_site | 0x00 | recipient_site

The recipient's X25519 key is the Montgomery form of the Ed25519 key in its federation
certificate (:func:`~meshpacs.keys.identity.x25519_public_for`), so the owner needs
nothing but the certificate it already verified over mutual TLS. Binding both site IDs
means a share cannot be passed off as another site's, nor opened as meant for another
peer. Pure functions over bytes: no files, no sockets.
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from meshpacs.errors import FormatError, KeyMaterialError, UnknownVersion, WrongKey
from meshpacs.keys.identity import NodeIdentity, x25519_public_for
from meshpacs.keys.shamir import ShamirShare, decode_share, encode_share

__all__ = ["ESCROW_VERSION", "open_share", "seal_share"]

ESCROW_VERSION = 1
_LABEL = b"meshpacs/v1/escrow-share"
_HEAD = 1 + 32 + 12
_MAX_SEALED = 4096  # a share of a 32-byte secret is well under 200 bytes


def _context(owner_site: str, recipient_site: str) -> bytes:
    return _LABEL + owner_site.encode("ascii") + b"\x00" + recipient_site.encode("ascii")


def _key(shared: bytes, ephemeral: bytes, recipient: bytes, context: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=context
    ).derive(shared)


def seal_share(
    share: ShamirShare, recipient_ed25519: bytes, *, owner_site: str, recipient_site: str
) -> bytes:
    """Seal ``share`` so that only the holder of ``recipient_ed25519``'s key can open it."""
    recipient = x25519_public_for(recipient_ed25519)
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    context = _context(owner_site, recipient_site)
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(_key(shared, ephemeral_public, recipient, context)).encrypt(
        nonce, encode_share(share), context
    )
    return bytes([ESCROW_VERSION]) + ephemeral_public + nonce + sealed


def open_share(
    identity: NodeIdentity, data: bytes, *, owner_site: str, recipient_site: str
) -> ShamirShare:
    """Open a share sealed to ``identity``; ``WrongKey`` if it was not, or was altered."""
    if len(data) > _MAX_SEALED:
        raise FormatError("sealed escrow share is over its size bound")
    if len(data) < _HEAD + 16:
        raise FormatError("sealed escrow share is too short")
    if data[0] != ESCROW_VERSION:
        raise UnknownVersion("escrow share", data[0], [ESCROW_VERSION])
    ephemeral_public, nonce, sealed = data[1:33], data[33:45], data[45:]
    try:
        shared = identity.x25519_private.exchange(
            X25519PublicKey.from_public_bytes(ephemeral_public)
        )
    except ValueError:
        raise KeyMaterialError("escrow share carries an unusable ephemeral key") from None
    context = _context(owner_site, recipient_site)
    key = _key(shared, ephemeral_public, identity.x25519_public_bytes, context)
    try:
        plain = AESGCM(key).decrypt(nonce, sealed, context)
    except InvalidTag:
        raise WrongKey("escrow share does not open with this node's key") from None
    return decode_share(plain)
