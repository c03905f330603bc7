"""The owner's lease renewer: tells each holder to keep this site's fragments a while longer.

A holder keeps a partner's fragment only while its owner leases it (see
:mod:`meshpacs.store.store`): a put leases it for the holder's lease time, and fragments
out of lease for longer than the holder's grace are removed. So an owner that leaves the
federation, or forgets a study, frees its partners' disks without asking anyone; an
owner that stays renews.

One pass (:meth:`LeaseRenewer.renew_once`) asks every site the ledger places fragments
on to lease them ``lease_seconds`` from now, in batches of at most
:data:`~meshpacs.store.MAX_RENEW` IDs per request. Fragments a repair replaced are not
renewed: they run out. A holder that renews fewer than it was asked does not hold the
rest (audits will count those shares missing); a holder that cannot be reached is asked
again after ``retry_seconds`` instead of a whole interval.

Each pass is written to a small state file (``state/leases.json``) that ``status`` reads,
and from which the schedule continues after a restart. Logs name holders by site ID and
count fragments: nothing in them names a study.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from meshpacs.durable import write_atomic
from meshpacs.errors import MeshError, brief
from meshpacs.metadata import Catalog, health, ledger
from meshpacs.store import MAX_RENEW
from meshpacs.upkeep.pacing import Pause, wait_or_stop

__all__ = ["LeaseHolders", "LeaseRenewal", "LeaseRenewer", "LeaseSettings", "last_renewal"]

_log = logging.getLogger("meshpacs.leases")


class LeaseHolders(Protocol):
    """The holders as the renewer reaches them (``PartnerPool`` in a node)."""

    async def renew_leases(self, site_id: str, fragment_ids: Sequence[str], seconds: int) -> int:
        """How many of ``fragment_ids`` the site renewed; raises when it cannot be asked."""
        ...


@dataclass(frozen=True)
class LeaseSettings:
    """How long to lease for, and how often (the node's ``[maintenance]`` config)."""

    lease_seconds: float = 30 * 86400.0
    interval_seconds: float = 86400.0
    retry_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if not 1 <= self.lease_seconds < 2**32:
            raise ValueError(f"a lease of {self.lease_seconds:g} s cannot be asked for")
        if self.interval_seconds <= 0 or self.retry_seconds <= 0:
            raise ValueError("lease renewal interval and retry must be positive")
        if self.interval_seconds >= self.lease_seconds:
            # Leases would run out between two renewals of a site that is always up.
            raise ValueError("leases must be renewed more often than they last")


@dataclass
class LeaseRenewal:
    """One pass: what was asked of whom, and what came back."""

    renewed_at: float = 0.0
    sites: int = 0
    fragments: int = 0
    renewed: int = 0
    not_held: int = 0  # asked, but the holder has no such fragment of ours
    unreachable: list[str] = field(default_factory=list)
    lease_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def last_renewal(state_file: Path) -> dict[str, Any] | None:
    """The last pass as written to the state file; None if there is none (or it is unreadable)."""
    with contextlib.suppress(OSError, ValueError):
        document = json.loads(state_file.read_text(encoding="utf-8"))
        if isinstance(document, dict) and isinstance(document.get("renewed_at"), int | float):
            return document
    return None


class LeaseRenewer:
    """Renews the leases on every fragment this site's ledger places at a partner."""

    def __init__(
        self,
        catalog: Catalog,
        holders: LeaseHolders,
        settings: LeaseSettings | None = None,
        *,
        state_file: Path,
        clock: Callable[[], float] = time.time,
        pause: Pause = wait_or_stop,
    ) -> None:
        self._catalog = catalog
        self._holders = holders
        self.settings = settings or LeaseSettings()
        self._state_file = state_file
        self._clock = clock
        self._pause = pause

    async def run(self, stop: asyncio.Event) -> None:
        """A pass whenever one is due, until ``stop``; a failing pass is logged."""
        while not stop.is_set():
            await self._pause(self._wait(), stop)
            if stop.is_set():
                return
            try:
                await self.renew_once()
            except (MeshError, OSError) as error:
                _log.error("lease renewal pass failed: %s", brief(error))
                await self._pause(self.settings.retry_seconds, stop)

    def _wait(self) -> float:
        last = last_renewal(self._state_file)
        if last is None:
            return 0.0
        again = self.settings.retry_seconds if last.get("unreachable") else 0.0
        due = float(last["renewed_at"]) + (again or self.settings.interval_seconds)
        return max(0.0, due - self._clock())

    async def renew_once(self) -> LeaseRenewal:
        held = await self._catalog.read(ledger.leased_fragments)
        seconds = int(self.settings.lease_seconds)
        result = LeaseRenewal(sites=len(held), lease_seconds=seconds)
        for site_id, fragment_ids in held.items():
            result.fragments += len(fragment_ids)
            try:
                renewed = await self._renew_at(site_id, fragment_ids, seconds)
            except (MeshError, OSError, TimeoutError) as error:
                result.unreachable.append(site_id)
                _log.warning("leases: site %s not renewed: %s", site_id, brief(error))
                continue
            result.renewed += renewed
            await self._catalog.write(partial(health.record_seen, site=site_id, now=self._clock()))
            if renewed < len(fragment_ids):
                result.not_held += len(fragment_ids) - renewed
                _log.warning(
                    "leases: site %s renewed %d of %d fragments; it does not hold the rest",
                    site_id, renewed, len(fragment_ids),
                )  # fmt: skip
        result.renewed_at = self._clock()
        data = json.dumps(result.to_json(), indent=2).encode()
        self._state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        await asyncio.to_thread(write_atomic, self._state_file, data, 0o600)
        _log.info(
            "leases: %d of %d fragments renewed at %d site(s) for %.3g days; %d unreachable",
            result.renewed, result.fragments, result.sites - len(result.unreachable),
            seconds / 86400, len(result.unreachable),
        )  # fmt: skip
        return result

    async def _renew_at(self, site_id: str, fragment_ids: list[str], seconds: int) -> int:
        renewed = 0
        for start in range(0, len(fragment_ids), MAX_RENEW):
            batch = fragment_ids[start : start + MAX_RENEW]
            renewed += await self._holders.renew_leases(site_id, batch, seconds)
        return renewed
