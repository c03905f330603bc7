"""Recovery requests and the federation administrator's authorisation to release escrow.

A site that lost its archive *and* its recovery phrase is rebuilt from the escrow shares
its trusted peers hold (:mod:`meshpacs.keys.escrow`). No peer hands its share to whoever
asks: the recovering machine makes a one-off X25519 key pair and a **request** naming the
site; the federation administrator checks who is asking (by phone, with the request's
code) and signs an **authorisation** with the federation CA's key; each trusted peer
checks that authorisation against the CA certificate it already trusts and re-seals its
share to the request's key. The CA alone cannot rebuild a secret (it holds no share), and
t peers alone would have to bypass their own tooling to do it without the CA.

Request, format version 1 (made by the recovering machine, sent to the administrator)::

    offset  size  field
    0       1     version        = 1
    1       1     L = len(site_id), 1..64
    2       L     site_id        ASCII, the site to recover
    2+L     16    request_id     random
    18+L    32    requester_key  X25519 public key; its private half never leaves the
                                 recovering machine
    50+L    8     created_at     u64 POSIX seconds, big-endian

Authorisation, format version 1 (made by the administrator, shown to each trusted peer)::

    offset  size  field
    0       1     version        = 1
    1       1     L = len(site_id), 1..64
    2       L     site_id
    2+L     16    request_id
    18+L    32    requester_key
    50+L    8     issued_at      u64 POSIX seconds
    58+L    8     expires_at     u64 POSIX seconds; at most MAX_VALID_SECONDS after issued_at
    66+L    32    ca_fingerprint SHA-256 of the signing CA certificate's DER bytes
    98+L    64    signature      Ed25519 by the CA key over LABEL | bytes 0 .. 98+L

The signed bytes start with ``LABEL`` (ASCII ``m``, 0x6D), while everything else the CA
key signs (certificates, CRLs) is DER starting with 0x30: one key, no signature that can
be passed off as the other kind. ``ca_fingerprint`` lets a peer of another federation say
so instead of a bare "bad signature".

The request **code** (``recovery_code``), 20 hex digits in groups of four, is a hash of
site ID, request ID and requester key: the requester reads it to the administrator, who
types it back when authorising, so an emailed request is bound to the person on the phone.
Peers print the same code from the authorisation.

Pure functions over bytes and frozen dataclasses: the caller passes the time (``now``)
and the CA key; nothing here reads a clock or a file.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from meshpacs.errors import FederationError, FormatError, LimitExceeded, UnknownVersion
from meshpacs.federation.certs import CLOCK_SKEW, certificate_public_key, raw_public_key
from meshpacs.federation.names import SITE_ID_MAX_LENGTH, site_id_problem
from meshpacs.keys.fields import SITE_ID, site_field, take_site_field

__all__ = [
    "AUTHORISATION_VERSION",
    "MAX_AUTHORISATION_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_VALID_SECONDS",
    "REQUEST_ID_SIZE",
    "REQUEST_VERSION",
    "RecoveryAuthorisation",
    "RecoveryRequest",
    "decode_request",
    "encode_request",
    "load_ca_signing_key",
    "read_authorisation",
    "recovery_code",
    "recovery_code_matches",
    "sign_authorisation",
    "verify_authorisation",
]

REQUEST_VERSION = 1
AUTHORISATION_VERSION = 1
REQUEST_ID_SIZE = 16
_KEY_SIZE = 32
_FINGERPRINT_SIZE = 32
_SIGNATURE_SIZE = 64
# An authorisation opens a hospital's whole archive: a week is the longest a release
# window may stay open, whatever the administrator typed.
MAX_VALID_SECONDS = 7 * 86400
MAX_REQUEST_BYTES = 2 + SITE_ID_MAX_LENGTH + REQUEST_ID_SIZE + _KEY_SIZE + 8
MAX_AUTHORISATION_BYTES = (
    2 + SITE_ID_MAX_LENGTH + REQUEST_ID_SIZE + _KEY_SIZE + 16 + _FINGERPRINT_SIZE + _SIGNATURE_SIZE
)

_LABEL = b"meshpacs/v1/escrow-authorisation"
_CODE_LABEL = b"meshpacs/v1/escrow-request-code"
_CODE_BYTES = 10
_TIME = struct.Struct(">Q")
_TIMES = struct.Struct(">QQ")
_MAX_CA_KEY_BYTES = 4096


def recovery_code(site_id: str, request_id: bytes, requester_key: bytes) -> str:
    """The short code that binds a request to the person asking (``1a2b-3c4d-...``)."""
    digest = hashlib.sha256(
        _CODE_LABEL + site_id.encode("ascii") + b"\x00" + request_id + requester_key
    ).hexdigest()[: 2 * _CODE_BYTES]
    return "-".join(digest[i : i + 4] for i in range(0, len(digest), 4))


def recovery_code_matches(code: str, typed: str) -> bool:
    """Whether ``typed`` (any case, with or without dashes or spaces) is ``code``."""
    return hmac.compare_digest(_normal_code(typed)[:64], _normal_code(code))


def _normal_code(text: str) -> str:
    return "".join(c for c in text.lower() if c in "0123456789abcdef")


@dataclass(frozen=True)
class RecoveryRequest:
    """A recovering machine's request: which site, and the key to release shares to."""

    site_id: str
    request_id: bytes
    requester_key: bytes
    created_at: int

    def __post_init__(self) -> None:
        _check_fields(self.site_id, self.request_id, self.requester_key)
        if not 0 <= self.created_at < 2**64:
            raise FormatError("recovery request time is out of range")

    @property
    def code(self) -> str:
        return recovery_code(self.site_id, self.request_id, self.requester_key)


@dataclass(frozen=True)
class RecoveryAuthorisation:
    """What a verified authorisation allows: release ``site_id``'s shares to one key."""

    site_id: str
    request_id: bytes
    requester_key: bytes
    issued_at: int
    expires_at: int
    ca_fingerprint: bytes

    @property
    def code(self) -> str:
        return recovery_code(self.site_id, self.request_id, self.requester_key)


def _check_fields(site_id: str, request_id: bytes, requester_key: bytes) -> None:
    problem = site_id_problem(site_id)
    if problem is not None:
        raise FormatError(f"recovery request site ID {problem}")
    if len(request_id) != REQUEST_ID_SIZE:
        raise FormatError(f"a recovery request ID is {REQUEST_ID_SIZE} bytes")
    if len(requester_key) != _KEY_SIZE:
        raise FormatError(f"a recovery request key is {_KEY_SIZE} bytes")


def _subject(site_id: str, request_id: bytes, requester_key: bytes) -> bytes:
    site = site_field(site_id, "recovery request site ID", SITE_ID)
    return site + request_id + requester_key


def _read_subject(data: bytes, what: str) -> tuple[str, bytes, bytes, int]:
    """site ID, request ID, key, and the offset after them; lengths checked before slicing."""
    site_id, offset = take_site_field(data, 1, f"{what} site ID", SITE_ID)
    end = offset + REQUEST_ID_SIZE + _KEY_SIZE
    if len(data) < end:
        raise FormatError(f"{what} is truncated")
    request_id, key = data[offset : offset + REQUEST_ID_SIZE], data[offset + REQUEST_ID_SIZE : end]
    _check_fields(site_id, request_id, key)
    return site_id, request_id, key, end


def _check_head(data: bytes, what: str, version: int, limit: int) -> None:
    if len(data) > limit:
        raise LimitExceeded(f"a {what} is at most {limit} bytes, not {len(data)}")
    if not data:
        raise FormatError(f"{what} is empty")
    if data[0] != version:
        raise UnknownVersion(what, data[0], [version])


# --- the request -------------------------------------------------------------------------


def encode_request(request: RecoveryRequest) -> bytes:
    subject = _subject(request.site_id, request.request_id, request.requester_key)
    return bytes([REQUEST_VERSION]) + subject + _TIME.pack(request.created_at)


def decode_request(data: bytes) -> RecoveryRequest:
    """Parse a request file's bytes, refusing anything malformed or over its bound."""
    _check_head(data, "recovery request", REQUEST_VERSION, MAX_REQUEST_BYTES)
    site_id, request_id, key, offset = _read_subject(data, "recovery request")
    if len(data) != offset + _TIME.size:
        raise FormatError("recovery request has the wrong length")
    (created_at,) = _TIME.unpack_from(data, offset)
    return RecoveryRequest(site_id, request_id, key, created_at)


# --- the authorisation -------------------------------------------------------------------


def load_ca_signing_key(key_pem: bytes, ca_cert: x509.Certificate) -> Ed25519PrivateKey:
    """The CA's Ed25519 key from its PEM bytes, refused unless it is ``ca_cert``'s."""
    if len(key_pem) > _MAX_CA_KEY_BYTES:
        raise FederationError("the CA key file is too large to be one")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise FederationError("the CA key file is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise FederationError("the CA key is not an Ed25519 key")
    if raw_public_key(key.public_key()) != certificate_public_key(ca_cert):
        raise FederationError("the CA key does not belong to the CA certificate")
    return key


def _ca_fingerprint(ca_cert: x509.Certificate) -> bytes:
    return hashlib.sha256(ca_cert.public_bytes(serialization.Encoding.DER)).digest()


def sign_authorisation(
    request: RecoveryRequest,
    ca_key: Ed25519PrivateKey,
    ca_cert: x509.Certificate,
    *,
    now: int,
    valid_seconds: int,
) -> bytes:
    """The CA's authorisation to release ``request.site_id``'s escrow to the request's key."""
    if not 60 <= valid_seconds <= MAX_VALID_SECONDS:
        raise FederationError(
            f"an authorisation is valid for 1 minute to {MAX_VALID_SECONDS // 3600} hours,"
            f" not {valid_seconds} seconds"
        )
    body = (
        bytes([AUTHORISATION_VERSION])
        + _subject(request.site_id, request.request_id, request.requester_key)
        + _TIMES.pack(now, now + valid_seconds)
        + _ca_fingerprint(ca_cert)
    )
    return body + ca_key.sign(_LABEL + body)


def read_authorisation(data: bytes) -> tuple[RecoveryAuthorisation, bytes, bytes]:
    """The fields of an authorisation, its signed body and its signature; NOT verified."""
    _check_head(data, "recovery authorisation", AUTHORISATION_VERSION, MAX_AUTHORISATION_BYTES)
    site_id, request_id, key, offset = _read_subject(data, "recovery authorisation")
    end = offset + _TIMES.size + _FINGERPRINT_SIZE
    if len(data) != end + _SIGNATURE_SIZE:
        raise FormatError("recovery authorisation has the wrong length")
    issued_at, expires_at = _TIMES.unpack_from(data, offset)
    fingerprint = data[offset + _TIMES.size : end]
    fields = RecoveryAuthorisation(site_id, request_id, key, issued_at, expires_at, fingerprint)
    return fields, data[:end], data[end:]


def _when(seconds: int) -> str:
    return f"{datetime.fromtimestamp(min(seconds, 2**37), UTC):%Y-%m-%d %H:%M}Z"


def verify_authorisation(
    data: bytes,
    ca_cert: x509.Certificate,
    *,
    now: float,
    site_id: str | None = None,
) -> RecoveryAuthorisation:
    """The authorisation in ``data`` once checked against ``ca_cert``, at time ``now``.

    ``FederationError`` when it is from another CA, its signature fails (altered), it is
    not yet or no longer valid, it claims an over-long window, or it names another site
    than ``site_id`` (when given). Malformed bytes are ``FormatError``.
    """
    fields, body, signature = read_authorisation(data)
    if not hmac.compare_digest(fields.ca_fingerprint, _ca_fingerprint(ca_cert)):
        raise FederationError(
            "the recovery authorisation was signed by another CA than this federation's"
        )
    ca_key = ca_cert.public_key()
    if not isinstance(ca_key, Ed25519PublicKey):
        raise FederationError("the federation CA certificate does not hold an Ed25519 key")
    try:
        ca_key.verify(signature, _LABEL + body)
    except InvalidSignature:
        raise FederationError(
            "the recovery authorisation's signature does not verify: it was altered"
        ) from None
    _check_times(fields, ca_cert, now)
    if site_id is not None and fields.site_id != site_id:
        raise FederationError(
            f"the recovery authorisation is for site {fields.site_id!r}, not {site_id!r}"
        )
    return fields


def _check_times(fields: RecoveryAuthorisation, ca_cert: x509.Certificate, now: float) -> None:
    if fields.expires_at - fields.issued_at > MAX_VALID_SECONDS:
        raise FederationError("the recovery authorisation claims a window longer than allowed")
    if (
        not ca_cert.not_valid_before_utc.timestamp()
        <= now
        <= ca_cert.not_valid_after_utc.timestamp()
    ):
        raise FederationError("the federation CA certificate is not valid now")
    if now + CLOCK_SKEW.total_seconds() < fields.issued_at:
        raise FederationError(
            f"the recovery authorisation is issued in the future ({_when(fields.issued_at)});"
            " check this machine's clock"
        )
    if now > fields.expires_at:
        raise FederationError(
            f"the recovery authorisation expired at {_when(fields.expires_at)};"
            " ask the federation administrator for a new one"
        )
