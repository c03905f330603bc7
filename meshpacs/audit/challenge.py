"""Proof-of-storage challenges: what an owner keeps, asks and checks; what a holder answers.

An owner cannot check a keyed hash over bytes it no longer has. So, while a share streams
out at upload, it picks a few **challenges** for that fragment (a fresh secret nonce, a
random byte range) and computes their answers from the bytes as they pass
(:class:`ChallengeHasher`). It keeps only the challenges and their answers. Later it spends
one per audit: it sends the nonce and the range, and the holder answers with a hash keyed
by the nonce over that range of what it stores. The nonce is secret until it is asked, so a
holder that kept only hashes, or dropped, truncated or altered the range, cannot answer.
Each challenge is used once; the owner plans more than it needs between repairs.

Answer::

    answer = BLAKE3(key = nonce, "meshpacs/v1/audit" | offset (8) | length (4) | bytes)

Audit request, format version 1 (big-endian; the fragment is named by the transport
request that carries it)::

    offset  size  field
    0       1     version   = 1
    1       32    nonce
    33      8     offset    first byte of the range, within the fragment
    41      4     length    1 <= length <= MAX_RANGE

Audit response, format version 1::

    0       1     version   = 1
    1       32    answer

Challenge set, format version 1 (what the owner stores per fragment in its catalog)::

    0       1     version   = 1
    1       2     count     0 <= count <= MAX_CHALLENGES
    3       76*c  challenges: nonce (32) | offset (8) | length (4) | answer (32)

Pure functions over bytes and frozen dataclasses: no I/O. Random choices take injected
sources (``token``, ``randbelow``) so a test can replay them; by default both come from
:mod:`secrets`.
"""

from __future__ import annotations

import hmac
import secrets
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import blake3

from meshpacs.errors import FormatError, LimitExceeded, UnknownVersion

__all__ = [
    "AUDIT_REQUEST_SIZE",
    "AUDIT_RESPONSE_SIZE",
    "MAX_CHALLENGES",
    "MAX_RANGE",
    "NONCE_SIZE",
    "VERSION",
    "Challenge",
    "ChallengeHasher",
    "ExpectedAnswer",
    "answer",
    "check",
    "pack_challenge_set",
    "pack_request",
    "pack_response",
    "parse_challenge_set",
    "parse_request",
    "parse_response",
    "plan_challenges",
]

VERSION = 1
NONCE_SIZE = 32
ANSWER_SIZE = 32
# A holder reads at most this much per audit, so audit traffic and disk reads stay small
# next to backup traffic whatever an owner (or a forged request) asks.
MAX_RANGE = 64 * 1024
DEFAULT_RANGE = 4 * 1024
MAX_CHALLENGES = 1024
_LABEL = b"meshpacs/v1/audit"
_REQUEST = struct.Struct(">B32sQI")
_RESPONSE = struct.Struct(">B32s")
AUDIT_REQUEST_SIZE = _REQUEST.size  # 45
AUDIT_RESPONSE_SIZE = _RESPONSE.size  # 33
_SET_HEAD = struct.Struct(">BH")
_SET_ITEM = struct.Struct(">32sQI32s")


@dataclass(frozen=True)
class Challenge:
    """One question for a holder: a secret nonce and a byte range of the fragment."""

    nonce: bytes
    offset: int
    length: int

    def __post_init__(self) -> None:
        if len(self.nonce) != NONCE_SIZE:
            raise FormatError(f"an audit nonce is {NONCE_SIZE} bytes, not {len(self.nonce)}")
        if not 1 <= self.length <= MAX_RANGE:
            raise LimitExceeded(f"an audit range is 1 to {MAX_RANGE} bytes, not {self.length}")
        if self.offset < 0 or self.offset >= 1 << 63:
            raise FormatError(f"audit range offset {self.offset} is out of bounds")

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class ExpectedAnswer:
    """A challenge and the answer the intact fragment gives; kept by the owner only."""

    challenge: Challenge
    answer: bytes


def plan_challenges(
    fragment_size: int,
    count: int,
    *,
    range_size: int = DEFAULT_RANGE,
    token: Callable[[int], bytes] = secrets.token_bytes,
    randbelow: Callable[[int], int] = secrets.randbelow,
) -> tuple[Challenge, ...]:
    """``count`` challenges over a fragment of ``fragment_size`` bytes, sorted by offset.

    Ranges are ``range_size`` bytes (the whole fragment when it is smaller) at uniformly
    random offsets, so every byte is as likely to be asked about as any other.
    """
    if fragment_size < 1:
        raise FormatError("an empty fragment cannot be audited")
    if not 0 <= count <= MAX_CHALLENGES:
        raise LimitExceeded(f"at most {MAX_CHALLENGES} challenges per fragment, not {count}")
    length = min(range_size, fragment_size)
    if not 1 <= length <= MAX_RANGE:
        raise LimitExceeded(f"an audit range is 1 to {MAX_RANGE} bytes, not {length}")
    picked = [
        Challenge(token(NONCE_SIZE), randbelow(fragment_size - length + 1), length)
        for _ in range(count)
    ]
    return tuple(sorted(picked, key=lambda c: c.offset))


def answer(nonce: bytes, offset: int, data: bytes) -> bytes:
    """The holder's answer to a challenge, over ``data`` read at ``offset``."""
    if len(nonce) != NONCE_SIZE:
        raise FormatError(f"an audit nonce is {NONCE_SIZE} bytes, not {len(nonce)}")
    hasher = blake3.blake3(key=nonce)
    hasher.update(_LABEL + struct.pack(">QI", offset, len(data)))
    hasher.update(data)
    return hasher.digest()


def check(expected: ExpectedAnswer, given: bytes) -> bool:
    """Whether a holder's answer is the one the intact fragment gives (constant time)."""
    return hmac.compare_digest(expected.answer, given)


class ChallengeHasher:
    """Computes the answers of planned challenges from a fragment streamed past it.

    Feed the fragment's bytes in order, in chunks of any size; ranges that cross chunk
    boundaries are handled. Memory is at most the open ranges' bytes (each <= MAX_RANGE).
    """

    def __init__(self, challenges: Sequence[Challenge]) -> None:
        self._waiting = sorted(challenges, key=lambda c: c.offset)
        self._open: list[tuple[Challenge, bytearray]] = []
        self._done: list[ExpectedAnswer] = []
        self._position = 0

    def feed(self, data: bytes | memoryview) -> None:
        start, end = self._position, self._position + len(data)
        self._position = end
        while self._waiting and self._waiting[0].offset < end:
            self._open.append((self._waiting.pop(0), bytearray()))
        still_open = []
        for challenge, taken in self._open:
            lo = max(challenge.offset, start) - start
            hi = min(challenge.end, end) - start
            taken += data[lo:hi]
            if len(taken) == challenge.length:
                digest = answer(challenge.nonce, challenge.offset, bytes(taken))
                self._done.append(ExpectedAnswer(challenge, digest))
            else:
                still_open.append((challenge, taken))
        self._open = still_open

    def finish(self) -> tuple[ExpectedAnswer, ...]:
        """Every challenge's answer; refuses a stream that ended before a range did."""
        if self._open or self._waiting:
            raise FormatError(
                f"the fragment ended at byte {self._position}, before "
                f"{len(self._open) + len(self._waiting)} audit range(s) did"
            )
        return tuple(sorted(self._done, key=lambda e: e.challenge.offset))


def pack_request(challenge: Challenge) -> bytes:
    return _REQUEST.pack(VERSION, challenge.nonce, challenge.offset, challenge.length)


def parse_request(data: bytes) -> Challenge:
    """A holder's view of a request: bounded before it reads a byte of the fragment."""
    _check_version("an audit request", data)
    if len(data) != _REQUEST.size:
        raise FormatError(f"an audit request is {_REQUEST.size} bytes, not {len(data)}")
    _, nonce, offset, length = _REQUEST.unpack(data)
    return Challenge(nonce, offset, length)


def pack_response(digest: bytes) -> bytes:
    if len(digest) != ANSWER_SIZE:
        raise FormatError(f"an audit answer is {ANSWER_SIZE} bytes, not {len(digest)}")
    return _RESPONSE.pack(VERSION, digest)


def parse_response(data: bytes) -> bytes:
    _check_version("an audit response", data)
    if len(data) != _RESPONSE.size:
        raise FormatError(f"an audit response is {_RESPONSE.size} bytes, not {len(data)}")
    return bytes(_RESPONSE.unpack(data)[1])


def pack_challenge_set(expected: Iterable[ExpectedAnswer]) -> bytes:
    items = list(expected)
    if len(items) > MAX_CHALLENGES:
        raise LimitExceeded(f"at most {MAX_CHALLENGES} challenges per fragment, not {len(items)}")
    parts = [_SET_HEAD.pack(VERSION, len(items))]
    for item in items:
        c = item.challenge
        parts.append(_SET_ITEM.pack(c.nonce, c.offset, c.length, item.answer))
    return b"".join(parts)


def parse_challenge_set(data: bytes) -> tuple[ExpectedAnswer, ...]:
    _check_version("an audit challenge set", data)
    if len(data) < _SET_HEAD.size:
        raise FormatError("an audit challenge set is shorter than its header")
    _, count = _SET_HEAD.unpack_from(data)
    if count > MAX_CHALLENGES:
        raise LimitExceeded(f"at most {MAX_CHALLENGES} challenges per fragment, not {count}")
    if len(data) != _SET_HEAD.size + count * _SET_ITEM.size:
        raise FormatError(f"an audit challenge set of {count} is not {len(data)} bytes")
    found = []
    for i in range(count):
        nonce, offset, length, digest = _SET_ITEM.unpack_from(
            data, _SET_HEAD.size + i * _SET_ITEM.size
        )
        found.append(ExpectedAnswer(Challenge(nonce, offset, length), digest))
    return tuple(found)


def _check_version(what: str, data: bytes) -> None:
    if not data:
        raise FormatError(f"{what} is empty")
    if data[0] != VERSION:
        raise UnknownVersion(what, data[0], [VERSION])
