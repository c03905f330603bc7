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

import logging
from collections.abc import Awaitable, Callable, Sequence

from meshpacs.errors import MeshError
from meshpacs.metadata import Catalog
from meshpacs.metadata.replica import export_study, seal_record

__all__ = ["PutRecord", "TrustedReplicator"]

_log = logging.getLogger("meshpacs.backup")

# put_record(site_id, record_id, sealed bytes): returns once the peer kept it.
PutRecord = Callable[[str, str, bytes], Awaitable[None]]


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
    ) -> None:
        self._site_id = site_id
        self._key = catalog_key
        self._catalog = catalog
        self._trusted = tuple(trusted)
        self._put = put_record
        self._waiting: dict[str, set[int]] = {peer: set() for peer in self._trusted}

    @property
    def waiting(self) -> dict[str, int]:
        """How many study records each trusted peer still has to receive."""
        return {peer: len(refs) for peer, refs in self._waiting.items()}

    async def study_protected(self, study_ref: int) -> None:
        for refs in self._waiting.values():
            refs.add(study_ref)
        await self.flush()

    async def flush(self) -> None:
        """Try every waiting record on every trusted peer once."""
        for peer, refs in self._waiting.items():
            for study_ref in sorted(refs):
                try:
                    await self._send(peer, study_ref)
                except MeshError as error:
                    _log.warning("catalog record for trusted peer %s waits: %s", peer, error)
                    break  # the peer is likely down: the rest waits for the next pass
                refs.discard(study_ref)

    async def resend_all(self) -> None:
        """Queue every protected study for every trusted peer (at start, after a stop)."""
        refs = await self._catalog.read(
            lambda db: [
                int(r[0]) for r in db.execute("SELECT id FROM studies WHERE state = 'protected'")
            ]
        )
        for waiting in self._waiting.values():
            waiting.update(refs)

    async def _send(self, peer: str, study_ref: int) -> None:
        record = await self._catalog.read(lambda db: export_study(db, study_ref))
        record_id, sealed = seal_record(self._key, self._site_id, record)
        await self._put(peer, record_id, sealed)
