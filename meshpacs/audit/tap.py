"""Challenges planned for a bundle's shares while the codec writes them.

The encoder writes each fragment (header, then share blocks) to its output in order, so an
output wrapped in a :class:`ShareTap` sees exactly the bytes a holder stores, and the
owner learns the answers of its challenges without a second read of anything.
:func:`tap_shares` wraps all n outputs of one bundle; :func:`challenge_sets` packs what
they saw, one challenge set per share, shuffled (see :mod:`meshpacs.metadata.health`).

No I/O of its own: the taps pass writes through to whatever the caller gave them.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Protocol

from meshpacs.audit.challenge import (
    ChallengeHasher,
    ExpectedAnswer,
    pack_challenge_set,
    plan_challenges,
)

__all__ = ["DEFAULT_CHALLENGES", "ShareTap", "challenge_sets", "shuffled", "tap_shares"]

# Sixteen audits per fragment between repairs: at the default budget a site with a
# thousand bundles audits each fragment about once a month, so a set lasts over a year.
DEFAULT_CHALLENGES = 16


class _Writable(Protocol):
    def write(self, data: bytes | memoryview, /) -> int: ...


class ShareTap:
    """An output that feeds every byte written through it to a challenge hasher."""

    def __init__(self, inner: _Writable, hasher: ChallengeHasher) -> None:
        self._inner = inner
        self.hasher = hasher

    def write(self, data: bytes | memoryview, /) -> int:
        self.hasher.feed(data)
        return self._inner.write(data)


def tap_shares(
    outputs: Sequence[_Writable], fragment_size: int, count: int = DEFAULT_CHALLENGES
) -> list[ShareTap]:
    """Each output wrapped, with ``count`` fresh challenges over a ``fragment_size`` fragment."""
    return [
        ShareTap(output, ChallengeHasher(plan_challenges(fragment_size, count)))
        for output in outputs
    ]


def shuffled(expected: Sequence[ExpectedAnswer]) -> list[ExpectedAnswer]:
    """The challenges in a secret random order (planning sorts them by offset)."""
    items = list(expected)
    for i in range(len(items) - 1, 0, -1):
        j = secrets.randbelow(i + 1)
        items[i], items[j] = items[j], items[i]
    return items


def challenge_sets(taps: Sequence[ShareTap]) -> dict[int, bytes]:
    """share -> packed challenge set, once the codec has written every fragment in full."""
    return {
        share: pack_challenge_set(shuffled(tap.hasher.finish())) for share, tap in enumerate(taps)
    }
