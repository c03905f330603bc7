"""The owner's forgetter: carries out ``meshpacs forget`` requests across the federation.

One pass (:meth:`Forgetter.forget_once`)::

    forget     each pending request whose study is not being backed up right now:
                 its rows leave the catalog, while no catalog record goes out to the
                 trusted peers (``withheld``), so none can put the record back after
               its local files are unlinked (unless another row has the same bytes)
    delete     each deletion waiting: the fragment at its holder (DELETE_FRAGMENT), the
               catalog record at each trusted peer (DELETE_RECORD); a site that fails is
               left for the next pass
    finish     requests with nothing left to delete are done

See :mod:`meshpacs.metadata.forget` for the ledger. Logs name requests by row id, sites
by site ID and count the rest: never a UID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

from meshpacs.errors import MeshError, brief
from meshpacs.metadata import Catalog
from meshpacs.metadata import forget as ledger
from meshpacs.metadata.replica import study_record_id
from meshpacs.transport.frames import RecordKind
from meshpacs.upkeep.pacing import Pause, wait_or_stop

__all__ = ["ForgetPartners", "ForgetPass", "Forgetter"]

_log = logging.getLogger("meshpacs.forget")


class ForgetPartners(Protocol):
    """Partners as the forgetter reaches them (``PartnerPool`` in a node)."""

    async def delete_fragment(self, site_id: str, fragment_id: str) -> bool: ...

    async def delete_record(self, site_id: str, kind: RecordKind, record_id: str) -> bool: ...


@dataclass
class ForgetPass:
    """What one pass did."""

    forgotten: int = 0  # studies whose rows left the catalog
    waiting: int = 0  # requests whose study is being backed up: next pass
    deleted: int = 0  # deletions confirmed (or the partner no longer had it)
    failed: int = 0
    given_up: int = 0  # fragments left to their lease
    done: int = 0  # requests finished


def _nothing_withheld() -> AbstractAsyncContextManager[None]:
    return contextlib.nullcontext()


class Forgetter:
    """Forgets the studies an administrator asked to forget, here and at every partner."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        partners: ForgetPartners,
        catalog_key: bytes | None,
        trusted: tuple[str, ...],
        instance_path: Callable[[bytes], Path],
        withheld: Callable[[], AbstractAsyncContextManager[None]] = _nothing_withheld,
        interval_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
        pause: Pause = wait_or_stop,
    ) -> None:
        self._catalog = catalog
        self._partners = partners
        self._key = catalog_key
        if trusted and catalog_key is None:
            raise ValueError("trusted peers hold records named with the catalog key: give it")
        self._trusted = trusted
        self._instance_path = instance_path
        self._withheld = withheld
        self._interval = interval_seconds
        self._clock = clock
        self._pause = pause

    async def run(self, stop: asyncio.Event) -> None:
        """A pass every interval until ``stop``; a failing pass is logged."""
        while not stop.is_set():
            try:
                await self.forget_once()
            except (MeshError, OSError) as error:
                _log.error("forget pass failed: %s", brief(error))
            await self._pause(self._interval, stop)

    async def forget_once(self) -> ForgetPass:
        report = ForgetPass()
        for pending in await self._catalog.read(ledger.pending_requests):
            await self._forget(pending, report)
        await self._delete_waiting(report)
        done = await self._catalog.write(partial(ledger.finish_requests, now=self._clock()))
        report.done = len(done)
        for ref in done:
            _log.info("forget: request %d done: deleted at every partner that answered", ref)
        return report

    async def _forget(self, pending: ledger.ForgetRequest, report: ForgetPass) -> None:
        if await self._catalog.read(lambda db: ledger.study_busy(db, pending.study_ref)):
            report.waiting += 1
            return
        # The trusted peers name the study's record by this keyed HMAC; no peers, no record.
        record_id = study_record_id(self._key, pending.study_uid) if self._key else ""
        now = self._clock()
        async with self._withheld():
            gone = await self._catalog.write(
                lambda db: ledger.forget_study(db, pending, record_id, self._trusted, now)
            )
        for sha256 in gone.unlink:
            await asyncio.to_thread(self._instance_path(sha256).unlink, missing_ok=True)
        report.forgotten += 1
        _log.warning(
            "forget: request %d: study removed here (%d instances, %d bundles, %d local"
            " files); %d fragment(s) and %d catalog record(s) to delete at partners",
            pending.request_ref, gone.instances, gone.bundles, len(gone.unlink),
            gone.fragments, gone.records,
        )  # fmt: skip

    async def _delete_waiting(self, report: ForgetPass) -> None:
        down: set[str] = set()
        for deletion in await self._catalog.read(ledger.deletions_due):
            if deletion.site in down:
                continue
            try:
                await self._delete(deletion)
            except (MeshError, OSError, TimeoutError) as error:
                down.add(deletion.site)
                report.failed += 1
                gave_up = await self._catalog.write(
                    partial(ledger.deletion_attempted, deletion=deletion)
                )
                report.given_up += gave_up
                _log.warning(
                    "forget: %s at site %s not deleted%s: %s",
                    deletion.kind, deletion.site,
                    " (given up: its lease runs out there)" if gave_up else "", brief(error),
                )  # fmt: skip
                continue
            await self._catalog.write(partial(ledger.deletion_done, deletion=deletion))
            report.deleted += 1

    async def _delete(self, deletion: ledger.Deletion) -> None:
        if deletion.kind == "fragment":
            await self._partners.delete_fragment(deletion.site, deletion.name)
        else:
            kind = RecordKind.REPAIR if deletion.kind == "manifest" else RecordKind.CATALOG
            await self._partners.delete_record(deletion.site, kind, deletion.name)
