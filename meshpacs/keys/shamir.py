"""Shamir t-of-n secret sharing over GF(256), to escrow the site secret with trusted peers.

A site that loses both its disks and its paper phrase can still be rebuilt if ``threshold``
of the peers holding escrow shares hand them back; fewer than ``threshold`` shares say
nothing about the secret. Each byte of the secret is the constant term of its own random
polynomial of degree ``threshold - 1`` over GF(256) (AES polynomial ``x^8+x^4+x^3+x+1``,
0x11B); share ``x`` holds the polynomials' values at ``x``.

Two additions to textbook Shamir make mistakes loud rather than silent:

* ``split_id``: 8 random bytes common to the shares of one split. Shares of two different
  splits (say, before and after a re-escrow) would interpolate to garbage; they are refused.
* ``check``: the first 4 bytes of ``SHA-256(b"meshpacs/shamir-check/v1" + split_id +
  secret)``, so ``combine`` can tell a corrupted share from a good result. 32 bits of a
  hash reveal nothing usable about a 256-bit random secret.

Arithmetic uses exp/log tables, which are not constant-time. That is acceptable here:
splitting and combining are rare, offline operator actions, not a service an attacker can
time.

Serialized share (``encode_share`` / ``decode_share``), big-endian:

======  ========  ===============================================
offset  size      field
======  ========  ===============================================
0       1         version (1)
1       8         split_id
9       1         threshold (1..255)
10      1         x (1..255)
11      2         len(y) = L, u16 (1..65535)
13      L         y
13+L    4         check
======  ========  ===============================================
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from meshpacs.errors import ShamirError, UnknownVersion

__all__ = [
    "CHECK_SIZE",
    "MAX_SECRET_SIZE",
    "MAX_SHARES",
    "SHARE_VERSION",
    "SPLIT_ID_SIZE",
    "ShamirShare",
    "combine",
    "decode_share",
    "encode_share",
    "interpolate",
    "split",
]

SHARE_VERSION = 1
SPLIT_ID_SIZE = 8
CHECK_SIZE = 4
MAX_SECRET_SIZE = 0xFFFF
MAX_SHARES = 255

_CHECK_LABEL = b"meshpacs/shamir-check/v1"
_HEADER = struct.Struct(f">B{SPLIT_ID_SIZE}sBBH")


def _build_tables() -> tuple[list[int], list[int]]:
    """exp/log tables of GF(256) under 0x11B with generator 3.

    3, not 2, because 2 is not a generator of the multiplicative group for the AES
    polynomial. ``exp`` is doubled in length so ``exp[log a + log b]`` needs no modulo.
    """
    exp = [0] * 510
    log = [0] * 256
    value = 1
    for power in range(255):
        exp[power] = exp[power + 255] = value
        log[value] = power
        # value * 3 = value * 2 xor value, reduced by the AES polynomial.
        doubled = value << 1
        if doubled & 0x100:
            doubled ^= 0x11B
        value = doubled ^ value
    return exp, log


_EXP, _LOG = _build_tables()


def _gf_mul(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def _gf_div(a: int, b: int) -> int:
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(256)")
    if a == 0:
        return 0
    return _EXP[_LOG[a] - _LOG[b] + 255]


def _scale(data: bytes, factor: int) -> bytes:
    """Multiply every byte of ``data`` by ``factor`` in one C-level pass (bytes.translate)."""
    return data.translate(bytes(_gf_mul(factor, byte) for byte in range(256)))


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _check_value(split_id: bytes, secret: bytes) -> bytes:
    return hashlib.sha256(_CHECK_LABEL + split_id + secret).digest()[:CHECK_SIZE]


@dataclass(frozen=True, repr=False)
class ShamirShare:
    """One escrow share: the value ``y`` of each byte's polynomial at ``x``."""

    split_id: bytes
    threshold: int
    x: int
    y: bytes
    check: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.split_id, bytes) or len(self.split_id) != SPLIT_ID_SIZE:
            raise ShamirError(f"a share's split id is {SPLIT_ID_SIZE} bytes")
        if not 1 <= self.threshold <= MAX_SHARES:
            raise ShamirError(f"a share's threshold is 1..{MAX_SHARES}, not {self.threshold}")
        if not 1 <= self.x <= MAX_SHARES:
            # x = 0 would be the secret itself.
            raise ShamirError(f"a share's x is 1..{MAX_SHARES}, not {self.x}")
        if not isinstance(self.y, bytes) or not 1 <= len(self.y) <= MAX_SECRET_SIZE:
            raise ShamirError(f"a share's y is 1..{MAX_SECRET_SIZE} bytes")
        if not isinstance(self.check, bytes) or len(self.check) != CHECK_SIZE:
            raise ShamirError(f"a share's check is {CHECK_SIZE} bytes")

    def __repr__(self) -> str:
        return (
            f"ShamirShare(split_id={self.split_id.hex()!r}, threshold={self.threshold}, "
            f"x={self.x}, y=<{len(self.y)} bytes redacted>)"
        )


def split(secret: bytes, threshold: int, shares: int) -> list[ShamirShare]:
    """Cut ``secret`` into ``shares`` shares, any ``threshold`` of which rebuild it.

    Requires ``1 <= threshold <= shares <= 255``; share ``i`` gets ``x = i`` (1-based).
    """
    if not 1 <= len(secret) <= MAX_SECRET_SIZE:
        raise ShamirError(f"a secret to split is 1..{MAX_SECRET_SIZE} bytes, not {len(secret)}")
    if not 1 <= threshold <= shares <= MAX_SHARES:
        raise ShamirError(
            f"need 1 <= threshold <= shares <= {MAX_SHARES}, "
            f"got threshold {threshold} and {shares} shares"
        )
    secret = bytes(secret)
    split_id = secrets.token_bytes(SPLIT_ID_SIZE)
    check = _check_value(split_id, secret)
    # coefficients[0] is the secret; the others are uniformly random bytes per position.
    coefficients = [secret] + [secrets.token_bytes(len(secret)) for _ in range(threshold - 1)]
    return [
        ShamirShare(split_id, threshold, x, _evaluate(coefficients, x), check)
        for x in range(1, shares + 1)
    ]


def _evaluate(coefficients: Sequence[bytes], x: int) -> bytes:
    """Horner's rule on every byte position at once: ``((c[t-1]·x + c[t-2])·x + ...)``."""
    result = coefficients[-1]
    for coefficient in reversed(coefficients[:-1]):
        result = _xor(_scale(result, x), coefficient)
    return result


def interpolate(points: Sequence[tuple[int, bytes]]) -> bytes:
    """Lagrange interpolation at x = 0 through ``points`` (x, y), byte position by byte position.

    Pure arithmetic with no notion of threshold or check: given fewer points than the
    threshold it returns a wrong secret without complaint. ``combine`` is the safe entry.
    """
    if not points:
        raise ShamirError("cannot interpolate through no points")
    xs = [x for x, _ in points]
    if any(not 1 <= x <= MAX_SHARES for x in xs):
        raise ShamirError(f"interpolation points need x in 1..{MAX_SHARES}")
    if len(set(xs)) != len(xs):
        raise ShamirError("interpolation points need distinct x")
    length = len(points[0][1])
    if any(len(y) != length for _, y in points):
        raise ShamirError("interpolation points have y values of different lengths")
    result = bytes(length)
    for x_i, y_i in points:
        result = _xor(result, _scale(y_i, _basis_at_zero(x_i, xs)))
    return result


def _basis_at_zero(x_i: int, xs: Sequence[int]) -> int:
    """Lagrange basis polynomial of ``x_i`` at 0: prod over j != i of x_j / (x_j - x_i).

    Subtraction in GF(2^8) is xor.
    """
    value = 1
    for x_j in xs:
        if x_j != x_i:
            value = _gf_mul(value, _gf_div(x_j, x_j ^ x_i))
    return value


def combine(shares: Sequence[ShamirShare]) -> bytes:
    """Rebuild the secret from at least ``threshold`` shares of one split.

    Uses the first ``threshold`` distinct shares; any subset of that size gives the same
    secret. Raises ``ShamirError`` when the shares are too few, come from different splits,
    contradict each other, or rebuild a secret that fails the split's check (a corrupted
    share among those used).
    """
    if not shares:
        raise ShamirError("no escrow shares given")
    first = shares[0]
    _require_same_split(shares, first)
    distinct = _distinct_by_x(shares)
    if len(distinct) < first.threshold:
        raise ShamirError(
            f"need {first.threshold} distinct escrow shares of this split, have {len(distinct)}"
        )
    used = distinct[: first.threshold]
    secret = interpolate([(share.x, share.y) for share in used])
    if not hmac.compare_digest(_check_value(first.split_id, secret), first.check):
        raise ShamirError(
            "the combined secret does not match the shares' check: "
            "shares " + ", ".join(str(share.x) for share in used) + " include a corrupted one"
        )
    return secret


def _require_same_split(shares: Sequence[ShamirShare], first: ShamirShare) -> None:
    for share in shares:
        if share.split_id != first.split_id:
            raise ShamirError("the escrow shares come from different splits; use one split only")
        if share.threshold != first.threshold:
            raise ShamirError("the escrow shares disagree on the threshold")
        if share.check != first.check:
            raise ShamirError("the escrow shares disagree on the check value")
        if len(share.y) != len(first.y):
            raise ShamirError("the escrow shares hold values of different lengths")


def _distinct_by_x(shares: Sequence[ShamirShare]) -> list[ShamirShare]:
    """Drop exact duplicates (the same share offered twice); refuse conflicting ones."""
    by_x: dict[int, ShamirShare] = {}
    for share in shares:
        seen = by_x.setdefault(share.x, share)
        if not hmac.compare_digest(seen.y, share.y):
            raise ShamirError(f"two different escrow shares claim x = {share.x}")
    return list(by_x.values())


def encode_share(share: ShamirShare) -> bytes:
    """Serialize a share with a version byte first (layout in the module docstring)."""
    header = _HEADER.pack(SHARE_VERSION, share.split_id, share.threshold, share.x, len(share.y))
    return header + share.y + share.check


def decode_share(data: bytes) -> ShamirShare:
    """Parse a serialized share, refusing unknown versions and malformed input.

    Lengths are checked against ``len(data)`` before slicing, so a hostile length field
    cannot make us allocate or read past the input.
    """
    if not data:
        raise ShamirError("an escrow share is empty")
    if data[0] != SHARE_VERSION:
        raise UnknownVersion("escrow share", data[0], (SHARE_VERSION,))
    if len(data) < _HEADER.size:
        raise ShamirError(
            f"an escrow share is truncated: {len(data)} bytes, header alone is {_HEADER.size}"
        )
    _, split_id, threshold, x, y_length = _HEADER.unpack_from(data)
    expected = _HEADER.size + y_length + CHECK_SIZE
    if len(data) != expected:
        raise ShamirError(f"an escrow share should be {expected} bytes, not {len(data)}")
    y = bytes(data[_HEADER.size : _HEADER.size + y_length])
    check = bytes(data[_HEADER.size + y_length :])
    return ShamirShare(split_id=split_id, threshold=threshold, x=x, y=y, check=check)
