"""Delegation tokens: an owner site lets one trusted peer look after its shares while it is down.

A site's shares sit at partner holders, which serve them only to their owner (the site
its certificate names). If the owner is down when a holder dies, nobody could rebuild the
lost shares until it came back. The owner therefore signs, for each trusted peer, a
**delegation**: "site D may read, check and place my fragments until T". The delegate
presents it on a transport connection (op ``ACT_FOR``); the holder checks it and from then
on treats that connection as the owner's, for fragment reads, checks and puts only: a
delegate cannot delete, renew, or touch the owner's records.

Token, format version 1 (made by the owner, held by the delegate, shown to holders)::

    offset      size  field
    0           1     version        = 1
    1           1     A = len(owner_site), 1..64
    2           A     owner_site     ASCII: the site whose fragments the delegate may use
    2+A         1     B = len(delegate_site), 1..64
    3+A         B     delegate_site  ASCII: the only site that may present this token
    3+A+B       8     issued_at      u64 POSIX seconds
    11+A+B      8     expires_at     u64 POSIX seconds; at most MAX_VALID_SECONDS after issued_at
    19+A+B      2     C = len(owner_certificate), 1..MAX_CERT_BYTES
    21+A+B      C     owner_certificate  DER: the owner's federation certificate
    21+A+B+C    64    signature      Ed25519 by the certificate's key over
                                     LABEL | bytes 0 .. 21+A+B+C

The owner's certificate travels in the token, so a holder needs nothing but the
federation CA and CRL it already has: it verifies the certificate (a revoked owner's
tokens die with it), that it names ``owner_site``, and the signature under its key.
The label keeps a token from ever being read as any other signed thing of the site's key
(DHT records, which are signed under their own labels).

Pure functions over bytes and frozen dataclasses: the caller passes ``now`` and the
federation; nothing here reads a clock or a file.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from meshpacs.errors import FederationError, Forbidden, FormatError, LimitExceeded, UnknownVersion
from meshpacs.federation.certs import CLOCK_SKEW, Member
from meshpacs.federation.names import SITE_ID_MAX_LENGTH, site_id_problem
from meshpacs.keys import NodeIdentity, verify_signature
from meshpacs.keys.fields import ASCII, site_field, take_site_field

__all__ = [
    "DELEGATION_VERSION",
    "MAX_DELEGATION_BYTES",
    "MAX_VALID_SECONDS",
    "Delegation",
    "VerifyCertificate",
    "read_delegation",
    "sign_delegation",
    "verify_delegation",
]

DELEGATION_VERSION = 1
# Renewed by the owner every day it runs: a month covers a long outage, and a token
# stolen from a delegate's disk stops working within that time.
MAX_VALID_SECONDS = 30 * 86400
_MAX_CERT = 4096
_SIGNATURE = 64
MAX_DELEGATION_BYTES = 3 + 2 * SITE_ID_MAX_LENGTH + 16 + 2 + _MAX_CERT + _SIGNATURE
_LABEL = b"meshpacs/v1/delegation"
_TIMES = struct.Struct(">QQ")
_CERT_LENGTH = struct.Struct(">H")

# The federation's certificate check: DER in, the member it certifies out (or an error).
VerifyCertificate = Callable[[bytes, float], Member]


@dataclass(frozen=True)
class Delegation:
    """What a token says; ``owner_certificate`` is DER."""

    owner_site: str
    delegate_site: str
    issued_at: int
    expires_at: int
    owner_certificate: bytes

    def __post_init__(self) -> None:
        for what, site in (("owner", self.owner_site), ("delegate", self.delegate_site)):
            problem = site_id_problem(site)
            if problem:
                raise FormatError(f"delegation {what} site: {problem}")
        if self.owner_site == self.delegate_site:
            raise FormatError("a site cannot delegate to itself")
        if not 0 <= self.issued_at < self.expires_at <= self.issued_at + MAX_VALID_SECONDS:
            raise FormatError(
                f"a delegation must expire after it is issued, within {MAX_VALID_SECONDS} s"
            )
        if not 1 <= len(self.owner_certificate) <= _MAX_CERT:
            raise LimitExceeded(f"a delegation's certificate is 1..{_MAX_CERT} bytes")


def _body(token: Delegation) -> bytes:
    return (
        bytes([DELEGATION_VERSION])
        + site_field(token.owner_site, "delegation owner site", ASCII)
        + site_field(token.delegate_site, "delegation delegate site", ASCII)
        + _TIMES.pack(token.issued_at, token.expires_at)
        + _CERT_LENGTH.pack(len(token.owner_certificate))
        + token.owner_certificate
    )


def sign_delegation(token: Delegation, identity: NodeIdentity) -> bytes:
    """The signed token; ``identity`` must be the key the owner's certificate holds."""
    body = _body(token)
    return body + identity.sign(_LABEL + body)


def read_delegation(data: bytes) -> tuple[Delegation, bytes, bytes]:
    """The token's fields, its signed bytes and its signature; nothing is verified yet."""
    if len(data) > MAX_DELEGATION_BYTES:
        raise LimitExceeded(f"a delegation is at most {MAX_DELEGATION_BYTES} bytes")
    if not data:
        raise FormatError("empty delegation")
    if data[0] != DELEGATION_VERSION:
        raise UnknownVersion("delegation", data[0], [DELEGATION_VERSION])
    # Any ASCII here: the fields' own check (Delegation) says what is wrong with a site ID.
    owner, offset = take_site_field(data, 1, "delegation owner site", ASCII)
    delegate, offset = take_site_field(data, offset, "delegation delegate site", ASCII)
    end = offset + _TIMES.size + _CERT_LENGTH.size
    if len(data) < end:
        raise FormatError("delegation is cut short before its times")
    issued, expires = _TIMES.unpack_from(data, offset)
    (cert_length,) = _CERT_LENGTH.unpack_from(data, offset + _TIMES.size)
    if len(data) != end + cert_length + _SIGNATURE:
        raise FormatError("delegation length does not match its certificate length")
    cert = data[end : end + cert_length]
    token = Delegation(owner, delegate, issued, expires, cert)
    return token, data[: end + cert_length], data[end + cert_length :]


def verify_delegation(
    data: bytes,
    *,
    presenter: str,
    verify_certificate: VerifyCertificate,
    now: float,
) -> Delegation:
    """The token, if ``presenter`` may act with it now; else ``Forbidden`` saying why.

    ``verify_certificate`` is the federation's check (CA signature, validity, CRL).
    """
    token, body, signature = read_delegation(data)
    if token.delegate_site != presenter:
        raise Forbidden(f"the delegation is for site {token.delegate_site}, not {presenter}")
    # The same allowance for skewed clocks as certificates get: a partner whose clock is
    # hours off still takes part, but nobody gets days more than the owner granted.
    skew = CLOCK_SKEW.total_seconds()
    if now + skew < token.issued_at or now >= token.expires_at:
        raise Forbidden(f"the delegation of site {token.owner_site} is not valid now")
    try:
        member = verify_certificate(token.owner_certificate, now)
    except FederationError as error:
        raise Forbidden(f"the delegation's owner certificate: {error}") from None
    if member.site_id != token.owner_site:
        raise Forbidden(f"the delegation's certificate names site {member.site_id}")
    if not verify_signature(member.public_key, _LABEL + body, signature):
        raise Forbidden(f"the delegation is not signed by site {token.owner_site}")
    return token
