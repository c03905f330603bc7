"""Sending protected studies' sealed catalog records to the site's trusted peers, and no one else.

When a study becomes protected, its catalog record (patient, study, series, instances,
bundles with wrapped keys, placements) is sealed under the site's catalog key and put on
every peer the site named as trusted in its config. Other partners never receive any
part of it: the only sites this module talks to are the ones in ``trusted``.

A trusted peer that cannot be reached keeps its record waiting, and every later pass
tries again; records waiting when the node stops are sent again by :meth:`resend_all`
(the node runs it at start), so a record lost in flight is a delay, not a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from meshpacs.errors import MeshError
from meshpacs.metadata import Catalog
from meshpacs.metadata.replica import StudyRecord, export_study, export_unplaced, seal_record

__all__ = ["PutRecord", "TrustedReplicator"]

_log = logging.getLogger("meshpacs.backup")

# put_record(site_id, record_id, sealed bytes): returns once the peer kept it.
PutRecord = Callable[[str, str, bytes], Awaitable[None]]
# after_record(site_id, bundle rows of the record): what else the peer gets with it (the
# bundles' repair manifests, backup.delegation); an error keeps the record waiting.
AfterRecord = Callable[[str, list[int]], Awaitable[object]]


class TrustedReplicator:
    """Puts sealed study records on the trusted peers (a :class:`StudyPublisher`)."""

    def __init__(
        self,
        *,
        site_id: str,
        catalog_key: bytes,
        catalog: Catalog,
        trusted: Sequence[str],
        put_record: PutRecord,
        after_record: AfterRecord | None = None,
    ) -> None:
        self._site_id = site_id
        self._key = catalog_key
        self._catalog = catalog
        self._trusted = tuple(trusted)
        self._put = put_record
        self._after = after_record
        # (kind, row id): ("study", study row) or ("unplaced", bundle row)
        self._waiting: dict[str, set[tuple[str, int]]] = {peer: set() for peer in self._trusted}
        self._sending = asyncio.Lock()

    @property
    def waiting(self) -> dict[str, int]:
        """How many records each trusted peer still has to receive."""
        return {peer: len(refs) for peer, refs in self._waiting.items()}

    async def study_protected(self, study_ref: int) -> None:
        for refs in self._waiting.values():
            refs.add(("study", study_ref))
        await self.flush()

    async def unplaced_protected(self, bundle_ref: int) -> None:
        for refs in self._waiting.values():
            refs.add(("unplaced", bundle_ref))
        await self.flush()

    async def flush(self) -> None:
        """Try every waiting record on every trusted peer once."""
        async with self._sending:
            for peer, refs in self._waiting.items():
                for item in sorted(refs):
                    try:
                        await self._send(peer, item)
                    except MeshError as error:
                        _log.warning("catalog record for trusted peer %s waits: %s", peer, error)
                        break  # the peer is likely down: the rest waits for the next pass
                    refs.discard(item)

    @contextlib.asynccontextmanager
    async def withheld(self) -> AsyncIterator[None]:
        """No record goes out meanwhile, and what waits is checked again after.

        Forgetting a study removes its rows and then its record at the peers: a send
        that had read the rows before must not put the record back after.
        """
        async with self._sending:
            yield

    async def resend_all(self) -> None:
        """Queue every protected study (and stored bundle of unparsed instances) for every
        trusted peer: at start, after a stop, and as the periodic snapshot."""

        def protected(db: sqlite3.Connection) -> list[tuple[str, int]]:
            studies = db.execute("SELECT id FROM studies WHERE state = 'protected'")
            unplaced = db.execute(
                "SELECT id FROM bundles WHERE study_ref IS NULL AND state IN ('stored', 'degraded')"
            )
            return [("study", int(r[0])) for r in studies] + [
                ("unplaced", int(r[0])) for r in unplaced
            ]

        items = await self._catalog.read(protected)
        for waiting in self._waiting.values():
            waiting.update(items)

    async def _send(self, peer: str, item: tuple[str, int]) -> None:
        kind, ref = item
        exporter = export_study if kind == "study" else export_unplaced
        table = "studies" if kind == "study" else "bundles"

        def export(db: sqlite3.Connection) -> tuple[StudyRecord, list[int]] | None:
            if db.execute(f"SELECT 1 FROM {table} WHERE id = ?", (ref,)).fetchone() is None:
                return None  # forgotten since it was queued: nothing to send
            rows = db.execute("SELECT id FROM bundles WHERE study_ref = ?", (ref,))
            bundles = [int(r[0]) for r in rows] if kind == "study" else [ref]
            return exporter(db, ref), bundles

        found = await self._catalog.read(export)
        if found is None:
            return
        record, bundles = found
        record_id, sealed = seal_record(self._key, self._site_id, record)
        await self._put(peer, record_id, sealed)
        if self._after is not None:
            await self._after(peer, bundles)
