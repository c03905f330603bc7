"""The node's identity: its key pairs, derived from the site secret.

::

    SiteKeys.node_identity_seed (32 bytes, HKDF of the site secret)
    ├── HKDF "meshpacs/v1/node-identity/ed25519" → Ed25519 signing key
    │       signs the node certificate request and DHT records; its public key is in the
    │       node certificate, and names the node in the DHT:
    │       node_id = SHA-256("meshpacs/v1/dht-node-id" ‖ Ed25519 public key)[:20]
    └── HKDF "meshpacs/v1/node-identity/x25519"  → X25519 key-agreement key
            other sites encrypt escrow shares to its public half

Both keys are pure functions of the seed, so a site rebuilt from its recovery phrase has
the same public keys, the same node ID, and so the same place in the federation (its
certificate still matches). Each key has its own HKDF label so that neither use can be
turned against the other.

The DHT node ID is 20 bytes because Kademlia's XOR metric works on 160-bit IDs. It hashes
the public key under its own label rather than using the key directly, so IDs are spread
uniformly and cannot be confused with any other hash of the key.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from meshpacs.errors import KeyMaterialError
from meshpacs.keys.secret import SUBKEY_SIZE, SiteKeys, SiteSecret

__all__ = [
    "NODE_ID_SIZE",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "NodeIdentity",
    "node_id_for",
    "verify_signature",
    "x25519_public_for",
]

NODE_ID_SIZE = 20
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64

_SALT = b"meshpacs/node-identity/v1"
_INFO_ED25519 = b"meshpacs/v1/node-identity/ed25519"
_NODE_ID_LABEL = b"meshpacs/v1/dht-node-id"

_RAW = serialization.Encoding.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw


def _hkdf(seed: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=info).derive(seed)


def node_id_for(public_key: bytes) -> bytes:
    """The 20-byte Kademlia node ID of the node whose Ed25519 public key is ``public_key``."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise KeyMaterialError(
            f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes, not {len(public_key)}"
        )
    return hashlib.sha256(_NODE_ID_LABEL + bytes(public_key)).digest()[:NODE_ID_SIZE]


# Curve25519's field prime; Ed25519 and X25519 are the same curve in two coordinate forms.
_P = 2**255 - 19


def _x25519_scalar(ed25519_seed: bytes) -> bytes:
    """The X25519 private key that belongs to an Ed25519 key (RFC 8032's scalar, unclamped:
    X25519 clamps it itself), as libsodium's ``crypto_sign_ed25519_sk_to_curve25519``."""
    return hashlib.sha512(ed25519_seed).digest()[:32]


def x25519_public_for(ed25519_public: bytes) -> bytes:
    """The X25519 public key of the node whose certificate holds ``ed25519_public``.

    Why: other sites encrypt escrow shares "to the peer's certificate key", and a
    certificate holds an Ed25519 (signing) key. The birational map u = (1 + y) / (1 - y)
    turns its point into the same key's Montgomery form, whose private half only that
    node has (:attr:`NodeIdentity.x25519_private`), so no second key needs publishing.
    """
    if len(ed25519_public) != PUBLIC_KEY_SIZE:
        raise KeyMaterialError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes")
    y = int.from_bytes(ed25519_public, "little") & ((1 << 255) - 1)
    if y >= _P or y == 1:
        raise KeyMaterialError("not an Ed25519 public key usable for key agreement")
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def verify_signature(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """True if ``signature`` is ``public_key``'s Ed25519 signature of ``data``.

    Never raises on malformed input (a key or signature of the wrong length is simply not
    a valid signature), so a caller checking what a peer sent needs no try/except.
    """
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(bytes(signature), data)
    except (InvalidSignature, ValueError):
        return False
    return True


class NodeIdentity:
    """The node's Ed25519 signing key and X25519 key-agreement key, from one seed.

    Build it with ``from_keys`` (or ``from_secret``); the same seed always gives the same
    identity. ``repr`` shows the node ID only.
    """

    __slots__ = ("_public", "_signing", "_x25519")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes | bytearray | memoryview) or len(seed) != SUBKEY_SIZE:
            raise KeyMaterialError(f"a node identity seed is {SUBKEY_SIZE} bytes")
        seed = bytes(seed)
        self._signing = Ed25519PrivateKey.from_private_bytes(_hkdf(seed, _INFO_ED25519))
        self._x25519 = X25519PrivateKey.from_private_bytes(
            _x25519_scalar(_hkdf(seed, _INFO_ED25519))
        )
        self._public = self._signing.public_key().public_bytes(_RAW, _RAW_PUBLIC)

    @classmethod
    def from_keys(cls, keys: SiteKeys) -> NodeIdentity:
        return cls(keys.node_identity_seed)

    @classmethod
    def from_secret(cls, secret: SiteSecret) -> NodeIdentity:
        return cls.from_keys(SiteKeys.derive(secret))

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        return self._signing

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._signing.public_key()

    @property
    def public_key_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 public key (as in the node certificate)."""
        return self._public

    @property
    def node_id(self) -> bytes:
        return node_id_for(self._public)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._signing.sign(data)

    @property
    def x25519_private(self) -> X25519PrivateKey:
        return self._x25519

    @property
    def x25519_public_bytes(self) -> bytes:
        return self._x25519.public_key().public_bytes(_RAW, _RAW_PUBLIC)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NodeIdentity):
            return NotImplemented
        # Both keys come from one seed; comparing public halves compares the seeds' output.
        return hmac.compare_digest(
            self._public + self.x25519_public_bytes, other._public + other.x25519_public_bytes
        )

    def __hash__(self) -> int:
        return hash(self._public)

    def __repr__(self) -> str:
        return f"NodeIdentity(node_id={self.node_id.hex()}, <redacted>)"
