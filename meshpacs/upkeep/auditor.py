"""The owner's auditor: spends its audit budget asking holders to prove they keep its shares.

Each audit takes the placement audited longest ago (:func:`~meshpacs.metadata.health.next_audit`,
which spends one challenge first), asks its holder for the keyed hash of the challenge's
range, and records the verdict and the peer's reputation::

    answer matches             ok
    answer differs             failed     (the bytes changed)
    refused (corrupt, range)   failed     (truncated, or rotten and caught by its own checks)
    "not held"                 missing    (dropped, or quarantined by the holder's scrub)
    no answer in time          unreachable (the placement keeps its verdict; the peer is
                                            skipped for ``retry_seconds``)

The budget is ``audits_per_hour`` for the whole site, spread over the hour with jitter
(each wait is uniform in [0.5, 1.5] times the mean gap), so audits neither come in bursts
nor in a rhythm a holder could learn. Nothing here names a patient or study: logs give the
bundle's row number, the share and the holder site.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from meshpacs.audit.challenge import Challenge, check
from meshpacs.audit.reputation import DEFAULT_HALF_LIFE, Outcome, Reputation
from meshpacs.errors import MeshError, PeerRefused, PeerUnreachable
from meshpacs.metadata import Catalog, health
from meshpacs.upkeep.pacing import Pause, wait_or_stop

__all__ = ["AuditResult", "AuditSettings", "Auditor", "Holders"]

_log = logging.getLogger("meshpacs.audit")

# Refusals that say nothing about the fragment: the holder is there but cannot answer now.
_BUSY = {"UNAVAILABLE"}
# The holder is leaving the federation (``meshpacs node leave``): not a verdict on it.
LEAVING = "LEAVING"


class Holders(Protocol):
    """The holders as the auditor reaches them."""

    async def audit(self, site_id: str, fragment_id: str, challenge: Challenge) -> bytes | None:
        """The holder's answer; None if it says it holds no such fragment of ours."""
        ...


@dataclass(frozen=True)
class AuditSettings:
    """How much to audit and how to judge (the node's ``[audit]`` config)."""

    audits_per_hour: float = 120.0
    timeout_seconds: float = 30.0
    retry_seconds: float = 600.0  # an unreachable peer is left alone this long
    half_life: float = DEFAULT_HALF_LIFE
    min_gap_seconds: float = 0.0  # between two audits of one placement (challenges last)

    def __post_init__(self) -> None:
        if not 0 < self.audits_per_hour <= 360_000:
            raise ValueError(f"audits_per_hour must be in (0, 360000], not {self.audits_per_hour}")
        if self.min_gap_seconds < 0:
            raise ValueError("the gap between audits of a placement must not be negative")
        if self.timeout_seconds <= 0 or self.retry_seconds < 0 or self.half_life <= 0:
            raise ValueError("audit timeout and half-life must be positive, retry not negative")

    @property
    def mean_gap(self) -> float:
        return 3600.0 / self.audits_per_hour


@dataclass(frozen=True)
class AuditResult:
    """One audit: where, the verdict, and the holder's reputation after it."""

    bundle_ref: int
    share: int
    holder_site: str
    outcome: str
    latency: float | None
    reputation: Reputation
    remaining: int


class Auditor:
    """Audits one site's placements, one challenge at a time, within its budget."""

    def __init__(
        self,
        catalog: Catalog,
        holders: Holders,
        settings: AuditSettings | None = None,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        pause: Pause = wait_or_stop,
    ) -> None:
        self._catalog = catalog
        self._holders = holders
        self.settings = settings or AuditSettings()
        self._random = random.Random(seed)  # timing jitter only; challenges come from secrets
        self._clock = clock
        self._monotonic = monotonic
        self._pause = pause

    async def audit_once(self) -> AuditResult | None:
        """Audit the placement whose turn it is; None when nothing can be audited now."""
        now = self._clock()
        since = now - self.settings.retry_seconds
        gap = self.settings.min_gap_seconds
        target = await self._catalog.write(
            partial(
                health.next_audit,
                unreachable_since=since,
                audited_before=now - gap if gap else None,
            )
        )
        if target is None:
            return None
        outcome, latency = await self._ask(target)
        half_life = self.settings.half_life
        now = self._clock()
        if outcome == LEAVING:
            reputation = await self._catalog.write(
                partial(health.record_leaving, site=target.holder_site, now=now)
            )
            _log.warning(
                "audit: site %s says it is leaving the federation; its shares will be rebuilt"
                " elsewhere", target.holder_site,
                extra={"event": "audit", "bundle_row": target.bundle_ref, "share": target.share,
                       "site": target.holder_site, "outcome": "leaving"},
            )  # fmt: skip
            return AuditResult(
                target.bundle_ref, target.share, target.holder_site, LEAVING, None, reputation,
                target.remaining,
            )  # fmt: skip
        reputation = await self._catalog.write(
            lambda db: health.record_audit(
                db, target, outcome, now, latency=latency, half_life=half_life
            )
        )
        result = AuditResult(
            target.bundle_ref,
            target.share,
            target.holder_site,
            outcome,
            latency,
            reputation,
            target.remaining,
        )
        _report(result, now, half_life)
        return result

    async def run(self, stop: asyncio.Event) -> None:
        """Audit until ``stop``, one audit per jittered gap; a failing audit is logged."""
        while not stop.is_set():
            try:
                await self.audit_once()
            except MeshError as error:
                _log.error("audit failed: %s", error, extra={"event": "audit_error"})
            await self._pause(self.settings.mean_gap * self._random.uniform(0.5, 1.5), stop)

    async def _ask(self, target: health.AuditTarget) -> tuple[str, float | None]:
        started = self._monotonic()
        try:
            given = await asyncio.wait_for(
                self._holders.audit(
                    target.holder_site, target.fragment_id, target.expected.challenge
                ),
                timeout=self.settings.timeout_seconds,
            )
        except PeerRefused as refusal:
            if refusal.code in _BUSY:
                return Outcome.UNREACHABLE, None
            if refusal.code == LEAVING:
                return LEAVING, None
            return Outcome.FAILED, self._monotonic() - started
        except (PeerUnreachable, OSError, TimeoutError):
            return Outcome.UNREACHABLE, None
        except MeshError:
            # A garbled answer (protocol violation, bad version) is no proof of anything.
            return Outcome.FAILED, self._monotonic() - started
        latency = self._monotonic() - started
        if given is None:
            return Outcome.MISSING, latency
        return (Outcome.PASSED if check(target.expected, given) else Outcome.FAILED), latency


def _report(result: AuditResult, now: float, half_life: float) -> None:
    score = result.reputation.score(now, half_life)
    level = logging.INFO if result.outcome == Outcome.PASSED else logging.WARNING
    _log.log(
        level,
        "audit of share %d of bundle row %d at site %s: %s (reputation %.2f, %d challenges left)",
        result.share,
        result.bundle_ref,
        result.holder_site,
        result.outcome,
        score,
        result.remaining,
        extra={
            "event": "audit",
            "bundle_row": result.bundle_ref,
            "share": result.share,
            "site": result.holder_site,
            "outcome": str(result.outcome),
            "latency_ms": None if result.latency is None else round(result.latency * 1000, 1),
            "reputation": round(score, 3),
            "challenges_left": result.remaining,
        },
    )
