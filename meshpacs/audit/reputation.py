"""What an owner's audits say of a peer: decayed success and failure counts, and latency.

Each audit outcome adds one to a count; both counts decay with a half-life, so an old
failure weighs less than a new one and a peer that lost a disk a year ago and has passed
every audit since is trusted again::

    count(t) = count(t0) * 2 ** (-(t - t0) / half_life)
    score    = (successes + 1) / (successes + failures + 2)

The score is the mean of a Beta(1, 1) prior updated by the decayed counts: 0.5 for a peer
never audited, towards 1 with passed audits, towards 0 with failed ones. A peer whose
score is below the owner's floor receives no new fragments (it is still audited, so it
can earn its way back). An unreachable peer counts as a fraction of a failure: a partner
down for an evening's maintenance must not be shunned for weeks, but one that is never
there must be.

Latency is an exponentially weighted mean of audit round trips, for the operator.

Pure functions over a frozen dataclass; the catalog keeps the numbers
(:mod:`meshpacs.metadata.health`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

__all__ = [
    "DEFAULT_FLOOR",
    "DEFAULT_HALF_LIFE",
    "UNREACHABLE_WEIGHT",
    "Outcome",
    "Reputation",
]

DEFAULT_HALF_LIFE = 7 * 86400.0
# Two wrong answers in a row (a peer that lost or altered data) take a fresh peer below it.
DEFAULT_FLOOR = 0.3
UNREACHABLE_WEIGHT = 0.25
_LATENCY_WEIGHT = 0.2


class Outcome:
    """How one audit ended, as the catalog spells it."""

    PASSED = "ok"
    FAILED = "failed"  # the holder answered, wrongly: it altered or truncated the fragment
    MISSING = "missing"  # the holder says it does not hold the fragment
    UNREACHABLE = "unreachable"  # no answer at all: down, partitioned or too slow


@dataclass(frozen=True)
class Reputation:
    """A peer's decayed audit record as of ``updated_at``."""

    successes: float = 0.0
    failures: float = 0.0
    latency_seconds: float | None = None
    updated_at: float = 0.0

    def decayed(self, now: float, half_life: float = DEFAULT_HALF_LIFE) -> Reputation:
        """The same record seen at ``now`` (never rewinds: a clock step back decays nothing)."""
        if half_life <= 0 or not math.isfinite(half_life):
            raise ValueError(f"a half-life must be positive, not {half_life}")
        elapsed = max(0.0, now - self.updated_at)
        factor = 2.0 ** (-elapsed / half_life)
        return replace(
            self,
            successes=self.successes * factor,
            failures=self.failures * factor,
            updated_at=max(now, self.updated_at),
        )

    def recorded(
        self,
        outcome: str,
        now: float,
        *,
        latency: float | None = None,
        half_life: float = DEFAULT_HALF_LIFE,
    ) -> Reputation:
        """The record after one more audit ending in ``outcome``."""
        base = self.decayed(now, half_life)
        if outcome == Outcome.PASSED:
            base = replace(base, successes=base.successes + 1.0)
        elif outcome == Outcome.UNREACHABLE:
            base = replace(base, failures=base.failures + UNREACHABLE_WEIGHT)
        elif outcome in (Outcome.FAILED, Outcome.MISSING):
            base = replace(base, failures=base.failures + 1.0)
        else:
            raise ValueError(f"unknown audit outcome {outcome!r}")
        if latency is not None and outcome != Outcome.UNREACHABLE:
            base = replace(base, latency_seconds=_blend(base.latency_seconds, latency))
        return base

    def score(self, now: float, half_life: float = DEFAULT_HALF_LIFE) -> float:
        current = self.decayed(now, half_life)
        return (current.successes + 1.0) / (current.successes + current.failures + 2.0)


def _blend(mean: float | None, sample: float) -> float:
    if mean is None:
        return sample
    return (1.0 - _LATENCY_WEIGHT) * mean + _LATENCY_WEIGHT * sample
