"""Escrow shares of the site secret, each sealed to one trusted peer's certificate key.

A site that loses both its archive and its recovery phrase can still be rebuilt: its
secret is split t-of-m with Shamir (:mod:`meshpacs.keys.shamir`) among its m trusted
peers, and each share is sealed so that only that peer can open it. The peer keeps the
sealed share for the site; the recovery procedure has t peers open theirs (with the
federation administrator's authorisation) and *release* them: each re-seals its share
to the one-off X25519 key of the recovery request, so the share crosses from peer to
recovering machine as a file that only that machine can open.

Sealed share (deposit), format version 1::

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
peer.

Escrow release (peer to recovering machine), format version 1::

    offset      size  field
    0           1     version          = 1
    1           1     A = len(owner_site), 1..64
    2           A     owner_site       ASCII: the site being recovered
    2+A         1     B = len(releasing_site), 1..64
    3+A         B     releasing_site   ASCII: the trusted peer that released its share
    3+A+B       16    request_id       the recovery request this release answers
    19+A+B      32    ephemeral_public X25519, fresh per release
    51+A+B      12    nonce            random
    63+A+B      ...   ciphertext       AES-256-GCM of ``encode_share(share)``, tag at the end

    header  = bytes 0 .. 19+A+B (version up to request_id)
    shared  = X25519(ephemeral_private, requester's X25519 key)
    key     = HKDF-SHA256(shared, salt = ephemeral_public | requester_public,
                          info = RELEASE_LABEL | header)
    AAD     = RELEASE_LABEL | header

The header is in clear so the recovering side can say which file is for which site,
peer and request before trying to open it, and it is authenticated, so none of it can
be changed. Releases have their own label: a deposit can never be read as a release.

Pure functions over bytes: no files, no sockets. Ephemeral keys come from ``secrets``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from meshpacs.errors import FormatError, KeyMaterialError, LimitExceeded, UnknownVersion, WrongKey
from meshpacs.keys.fields import SITE_ID, site_field, take_site_field
from meshpacs.keys.identity import NodeIdentity, x25519_public_for
from meshpacs.keys.shamir import ShamirShare, decode_share, encode_share

__all__ = [
    "ESCROW_VERSION",
    "MAX_RELEASE_BYTES",
    "MAX_SEALED_SHARE_BYTES",
    "RELEASE_VERSION",
    "REQUEST_ID_SIZE",
    "SEAL_OVERHEAD",
    "EscrowRelease",
    "open_for_identity",
    "open_release",
    "open_share",
    "read_release",
    "seal_release",
    "seal_share",
    "seal_to_identity",
    "x25519_private_from_bytes",
    "x25519_public_bytes",
]

ESCROW_VERSION = 1
RELEASE_VERSION = 1
REQUEST_ID_SIZE = 16
# A share of a 32-byte secret is under 60 bytes sealed; a release adds two site IDs.
MAX_SEALED_SHARE_BYTES = 4096
MAX_RELEASE_BYTES = 4096

_LABEL = b"meshpacs/v1/escrow-share"
_RELEASE_LABEL = b"meshpacs/v1/escrow-release"
_KEY_SIZE = 32
_NONCE_SIZE = 12
_TAG_SIZE = 16
_SEAL_HEAD = _KEY_SIZE + _NONCE_SIZE
SEAL_OVERHEAD = _SEAL_HEAD + _TAG_SIZE  # what sealing adds to the plaintext

_RAW = serialization.Encoding.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw


def x25519_private_from_bytes(raw: bytes) -> X25519PrivateKey:
    """An X25519 private key from its 32 raw bytes (as kept in a key file)."""
    if len(raw) != _KEY_SIZE:
        raise KeyMaterialError(f"an X25519 private key is {_KEY_SIZE} bytes")
    return X25519PrivateKey.from_private_bytes(bytes(raw))


def x25519_public_bytes(private: X25519PrivateKey) -> bytes:
    """The raw 32-byte public half of ``private``."""
    return private.public_key().public_bytes(_RAW, _RAW_PUBLIC)


def _key(shared: bytes, ephemeral: bytes, recipient: bytes, context: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=context
    ).derive(shared)


def _seal(plain: bytes, recipient_x25519: bytes, context: bytes) -> bytes:
    """``ephemeral_public | nonce | AES-GCM(plain)`` that only ``recipient_x25519`` opens."""
    ephemeral = x25519_private_from_bytes(secrets.token_bytes(_KEY_SIZE))
    ephemeral_public = x25519_public_bytes(ephemeral)
    try:
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_x25519))
    except ValueError:
        raise KeyMaterialError("the recipient's X25519 key is unusable") from None
    nonce = secrets.token_bytes(_NONCE_SIZE)
    key = _key(shared, ephemeral_public, recipient_x25519, context)
    return ephemeral_public + nonce + AESGCM(key).encrypt(nonce, plain, context)


def _open(private: X25519PrivateKey, body: bytes, context: bytes, what: str) -> bytes:
    """The plaintext of a ``_seal`` body; ``WrongKey`` if another key or any byte changed."""
    ephemeral_public, nonce, sealed = (
        body[:_KEY_SIZE],
        body[_KEY_SIZE:_SEAL_HEAD],
        body[_SEAL_HEAD:],
    )
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
    except ValueError:
        raise KeyMaterialError(f"{what} carries an unusable ephemeral key") from None
    key = _key(shared, ephemeral_public, x25519_public_bytes(private), context)
    try:
        return AESGCM(key).decrypt(nonce, sealed, context)
    except InvalidTag:
        raise WrongKey(f"{what} does not open with this key") from None


def seal_to_identity(plain: bytes, recipient_ed25519: bytes, context: bytes) -> bytes:
    """``plain`` sealed (as a deposit is) for the site whose certificate holds
    ``recipient_ed25519``; ``context`` names what it is and binds it (labels, site IDs)."""
    return _seal(plain, x25519_public_for(recipient_ed25519), context)


def open_for_identity(identity: NodeIdentity, body: bytes, context: bytes, what: str) -> bytes:
    """The plaintext of :func:`seal_to_identity`'s ``body``; ``WrongKey`` if it was meant
    for another key, another context, or any byte changed."""
    if len(body) < SEAL_OVERHEAD:
        raise FormatError(f"{what} is too short")
    return _open(identity.x25519_private, body, context, what)


# --- deposit: owner to trusted peer ---------------------------------------------------------


def _context(owner_site: str, recipient_site: str) -> bytes:
    return _LABEL + owner_site.encode("ascii") + b"\x00" + recipient_site.encode("ascii")


def seal_share(
    share: ShamirShare, recipient_ed25519: bytes, *, owner_site: str, recipient_site: str
) -> bytes:
    """Seal ``share`` so that only the holder of ``recipient_ed25519``'s key can open it."""
    recipient = x25519_public_for(recipient_ed25519)
    body = _seal(encode_share(share), recipient, _context(owner_site, recipient_site))
    return bytes([ESCROW_VERSION]) + body


def open_share(
    identity: NodeIdentity, data: bytes, *, owner_site: str, recipient_site: str
) -> ShamirShare:
    """Open a share sealed to ``identity``; ``WrongKey`` if it was not, or was altered."""
    if len(data) > MAX_SEALED_SHARE_BYTES:
        raise FormatError("sealed escrow share is over its size bound")
    if len(data) < 1 + _SEAL_HEAD + _TAG_SIZE:
        raise FormatError("sealed escrow share is too short")
    if data[0] != ESCROW_VERSION:
        raise UnknownVersion("escrow share", data[0], [ESCROW_VERSION])
    context = _context(owner_site, recipient_site)
    plain = _open(identity.x25519_private, data[1:], context, "escrow share")
    return decode_share(plain)


# --- release: trusted peer to the recovering machine ------------------------------------------


@dataclass(frozen=True)
class EscrowRelease:
    """A release as read from its file: the clear, authenticated header and the sealed rest."""

    owner_site: str
    releasing_site: str
    request_id: bytes
    header: bytes  # version .. request_id, as authenticated
    body: bytes  # ephemeral_public | nonce | ciphertext

    def __repr__(self) -> str:
        return (
            f"EscrowRelease(owner_site={self.owner_site!r}, releasing_site="
            f"{self.releasing_site!r}, request_id={self.request_id.hex()!r})"
        )


def _release_header(owner_site: str, releasing_site: str, request_id: bytes) -> bytes:
    if len(request_id) != REQUEST_ID_SIZE:
        raise FormatError(f"a recovery request ID is {REQUEST_ID_SIZE} bytes")
    # The federation's site-ID rule (not just ASCII) keeps the clear header printable.
    return (
        bytes([RELEASE_VERSION])
        + site_field(owner_site, "owner site", SITE_ID)
        + site_field(releasing_site, "releasing site", SITE_ID)
        + request_id
    )


def seal_release(
    share: ShamirShare,
    requester_x25519: bytes,
    *,
    owner_site: str,
    releasing_site: str,
    request_id: bytes,
) -> bytes:
    """A release of ``share`` that only the holder of ``requester_x25519``'s key can open."""
    if len(requester_x25519) != _KEY_SIZE:
        raise KeyMaterialError(f"an X25519 public key is {_KEY_SIZE} bytes")
    header = _release_header(owner_site, releasing_site, request_id)
    return header + _seal(encode_share(share), requester_x25519, _RELEASE_LABEL + header)


def read_release(data: bytes) -> EscrowRelease:
    """Parse a release's header (nothing is opened yet); refuses malformed input."""
    if len(data) > MAX_RELEASE_BYTES:
        raise LimitExceeded(f"an escrow release is at most {MAX_RELEASE_BYTES} bytes")
    if not data:
        raise FormatError("escrow release is empty")
    if data[0] != RELEASE_VERSION:
        raise UnknownVersion("escrow release", data[0], [RELEASE_VERSION])
    owner_site, offset = take_site_field(data, 1, "escrow release: owner site", SITE_ID)
    releasing_site, offset = take_site_field(
        data, offset, "escrow release: releasing site", SITE_ID
    )
    request_id = data[offset : offset + REQUEST_ID_SIZE]
    offset += REQUEST_ID_SIZE
    if len(data) < offset + _SEAL_HEAD + _TAG_SIZE:
        raise FormatError("escrow release is too short")
    return EscrowRelease(owner_site, releasing_site, request_id, data[:offset], data[offset:])


def open_release(release: EscrowRelease, requester: X25519PrivateKey) -> ShamirShare:
    """The share in ``release``; ``WrongKey`` if it was sealed to another key or altered."""
    plain = _open(requester, release.body, _RELEASE_LABEL + release.header, "escrow release")
    return decode_share(plain)
