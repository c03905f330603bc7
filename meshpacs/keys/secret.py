"""The site secret and the subkeys derived from it.

One 32-byte secret per site is the only thing a person has to keep (on paper, as a
recovery phrase, or escrowed with Shamir shares). Every working key is derived from it with
HKDF-SHA256 under its own label, so that:

* losing a derived key never exposes the secret or the other keys (HKDF is one-way);
* no key is ever used for two purposes, so a weakness in one use cannot be turned against
  another;
* a rebuilt site derives exactly the same keys from the typed phrase, with nothing else
  to back up.

``repr`` of every type here is redacted: these objects travel through logging, tracebacks
and debuggers, none of which may see key bytes.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from meshpacs.errors import KeyMaterialError
from meshpacs.keys.phrase import decode_phrase, encode_phrase

__all__ = [
    "FINGERPRINT_SIZE",
    "SITE_SECRET_SIZE",
    "SUBKEY_SIZE",
    "SiteKeys",
    "SiteSecret",
    "audit_trail_key",
]

SITE_SECRET_SIZE = 32
SUBKEY_SIZE = 32
FINGERPRINT_SIZE = 8

_SALT = b"meshpacs/site-keys/v1"
_INFO_FRAGMENT_ID = b"meshpacs/v1/fragment-id"
_INFO_KEY_WRAP = b"meshpacs/v1/key-wrap"
_INFO_CATALOG = b"meshpacs/v1/catalog"
_INFO_NODE_IDENTITY = b"meshpacs/v1/node-identity"
_INFO_FINGERPRINT = b"meshpacs/v1/fingerprint"
_INFO_AUDIT_TRAIL = b"meshpacs/v1/audit-trail"


def _require_key(value: object, size: int, what: str) -> bytes:
    """Return ``value`` as immutable bytes of exactly ``size``, or refuse it.

    Takes ``object`` because the callers are dataclass fields that anyone can fill with a
    bytearray (mutable, could be changed under us) or an int (``bytes(32)`` would silently
    make an all-zero key).
    """
    if not isinstance(value, bytes | bytearray | memoryview):
        raise KeyMaterialError(f"{what} must be bytes, not {type(value).__name__}")
    data = bytes(value)
    if len(data) != size:
        raise KeyMaterialError(f"{what} must be {size} bytes, not {len(data)}")
    return data


def _hkdf(secret: bytes, info: bytes, length: int) -> bytes:
    # A fresh HKDF per call: cryptography's HKDF objects are single-use.
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_SALT, info=info).derive(secret)


def _fingerprint(secret: bytes) -> str:
    return _hkdf(secret, _INFO_FINGERPRINT, FINGERPRINT_SIZE).hex()


@dataclass(frozen=True, repr=False, eq=False)
class SiteSecret:
    """The 32-byte root secret of a site, from which every site key is derived."""

    value: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _require_key(self.value, SITE_SECRET_SIZE, "site secret"))

    @classmethod
    def generate(cls) -> SiteSecret:
        """A new secret from the OS CSPRNG, for a site being set up."""
        return cls(secrets.token_bytes(SITE_SECRET_SIZE))

    def to_phrase(self) -> str:
        """The recovery phrase to write on paper (13 checked groups of 5 characters)."""
        return encode_phrase(self.value)

    @classmethod
    def from_phrase(cls, text: str) -> SiteSecret:
        """Read a typed recovery phrase back; ``PhraseError`` names the groups to re-read."""
        return cls(decode_phrase(text))

    @property
    def fingerprint(self) -> str:
        """16 hex digits identifying this secret without revealing it.

        Lets an operator confirm that a typed phrase belongs to this site (compare with
        the fingerprint printed at setup) before anything is decrypted with it.
        """
        return _fingerprint(self.value)

    def __bytes__(self) -> bytes:
        return self.value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SiteSecret):
            return NotImplemented
        # Constant time, so comparing against a candidate does not leak a prefix match.
        return hmac.compare_digest(self.value, other.value)

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return "SiteSecret(<redacted>)"


@dataclass(frozen=True, repr=False, eq=False)
class SiteKeys:
    """The working keys of a site, each derived from the site secret for one purpose only.

    ``fragment_id``
        HMAC key that turns bundle contents into fragment IDs, so peers storing fragments
        cannot link them to studies.
    ``key_wrap``
        AES-256-GCM key that wraps each bundle's random data key.
    ``catalog``
        Key that encrypts the site's catalog for the trusted peers that hold it.
    ``node_identity_seed``
        Seed of the node's signing key pair, so a rebuilt node gets its old identity back.
    ``fingerprint``
        Non-secret identifier of the site secret these keys came from (see
        ``SiteSecret.fingerprint``).
    """

    fragment_id: bytes
    key_wrap: bytes
    catalog: bytes
    node_identity_seed: bytes
    fingerprint: str

    def __post_init__(self) -> None:
        for name in ("fragment_id", "key_wrap", "catalog", "node_identity_seed"):
            key = _require_key(getattr(self, name), SUBKEY_SIZE, name.replace("_", " "))
            object.__setattr__(self, name, key)
        if not _is_fingerprint(self.fingerprint):
            raise KeyMaterialError(
                f"a site fingerprint is {2 * FINGERPRINT_SIZE} lower-case hex digits"
            )

    @classmethod
    def derive(cls, secret: SiteSecret) -> SiteKeys:
        """Derive every site key from the site secret (deterministic: same secret, same keys)."""
        root = secret.value
        return cls(
            fragment_id=_hkdf(root, _INFO_FRAGMENT_ID, SUBKEY_SIZE),
            key_wrap=_hkdf(root, _INFO_KEY_WRAP, SUBKEY_SIZE),
            catalog=_hkdf(root, _INFO_CATALOG, SUBKEY_SIZE),
            node_identity_seed=_hkdf(root, _INFO_NODE_IDENTITY, SUBKEY_SIZE),
            fingerprint=_fingerprint(root),
        )

    def _keys(self) -> tuple[bytes, ...]:
        return (self.fragment_id, self.key_wrap, self.catalog, self.node_identity_seed)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SiteKeys):
            return NotImplemented
        return hmac.compare_digest(b"".join(self._keys()), b"".join(other._keys()))

    def __hash__(self) -> int:
        return hash(self._keys())

    def __repr__(self) -> str:
        return f"SiteKeys(fingerprint={self.fingerprint!r}, <redacted>)"


def audit_trail_key(secret: SiteSecret) -> bytes:
    """The HMAC key that seals the site's ATNA audit trail (``meshpacs.trail.log``).

    A purpose of its own, outside :class:`SiteKeys`: only the trail's writers and
    ``meshpacs audit verify`` need it, and a rebuilt site derives the same key again, so a
    trail kept from before a disaster still verifies.
    """
    return _hkdf(secret.value, _INFO_AUDIT_TRAIL, SUBKEY_SIZE)


def _is_fingerprint(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 2 * FINGERPRINT_SIZE
        and all(char in "0123456789abcdef" for char in value)
    )
