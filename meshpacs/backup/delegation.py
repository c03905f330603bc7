"""What the owner gives its trusted peers so they can repair its shares while it is down.

Two records per trusted peer (:mod:`meshpacs.upkeep.delegate` is the peer's side):

- a **delegation** (:mod:`meshpacs.federation.delegation`), signed with the site's key,
  valid :data:`TOKEN_DAYS` days and sent again every day the site runs, so it stays valid
  for most of a month after the site went down;
- a **repair manifest** per settled bundle (:mod:`meshpacs.metadata.manifest`), sealed to
  that peer's certificate key, sent with the study's catalog record (the replicator calls
  :meth:`Delegator.send_manifests` after each record, so manifests wait and retry with it).

The manifest names the peers in the order they act (sorted site IDs): the first of them
that is up repairs, the others stand by, so two delegates do not place the same share
twice.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence

from meshpacs.errors import FormatError, LimitExceeded, MeshError
from meshpacs.federation.delegation import Delegation, sign_delegation
from meshpacs.keys import NodeIdentity
from meshpacs.metadata import Catalog
from meshpacs.metadata.manifest import RepairManifest, export_manifest, seal_manifest
from meshpacs.transport.client import PartnerConnection
from meshpacs.transport.frames import RecordKind

__all__ = ["DELEGATION_RECORD_ID", "TOKEN_DAYS", "Delegator"]

_log = logging.getLogger("meshpacs.backup")
TOKEN_DAYS = 30
TOKEN_RESEND_SECONDS = 86400.0
# Every owner's delegation is kept under one name: a peer finds all of them by it.
DELEGATION_RECORD_ID = hashlib.sha256(b"meshpacs/v1/delegation-record").hexdigest()


class Delegator:
    """Keeps a current delegation and every bundle's manifest at each trusted peer."""

    def __init__(
        self,
        *,
        site_id: str,
        identity: NodeIdentity,
        certificate_der: bytes,
        fragment_id_key: bytes,
        catalog: Catalog,
        trusted: Sequence[str],
        connect: Callable[[str], Awaitable[PartnerConnection]],
        threshold: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._site_id = site_id
        self._identity = identity
        self._cert = certificate_der
        self._fid_key = fragment_id_key
        self._catalog = catalog
        self._delegates = tuple(sorted(trusted))
        self._connect = connect
        self._threshold = threshold
        self._clock = clock
        self._token_sent: dict[str, float] = {}

    @property
    def delegates(self) -> tuple[str, ...]:
        return self._delegates

    def token_for(self, peer: str) -> bytes:
        now = int(self._clock())
        token = Delegation(self._site_id, peer, now, now + TOKEN_DAYS * 86400, self._cert)
        return sign_delegation(token, self._identity)

    async def ensure_tokens(self) -> None:
        """Send each trusted peer a fresh delegation when its last one is a day old."""
        for peer in self._delegates:
            if self._clock() - self._token_sent.get(peer, float("-inf")) < TOKEN_RESEND_SECONDS:
                continue
            try:
                async with await self._connect(peer) as conn:
                    token = self.token_for(peer)
                    await conn.put_record(RecordKind.DELEGATION, DELEGATION_RECORD_ID, token)
            except MeshError as error:
                _log.info("delegation for trusted peer %s waits: %s", peer, error)
                continue
            self._token_sent[peer] = self._clock()

    async def send_manifests(self, peer: str, bundle_refs: Sequence[int]) -> int:
        """Seal and put these bundles' manifests at ``peer``; how many went."""
        if peer not in self._delegates or not bundle_refs:
            return 0
        manifests = await self._catalog.read(lambda db: self._export(db, bundle_refs))
        if not manifests:
            return 0
        async with await self._connect(peer) as conn:
            key = conn.member.public_key  # the certificate the TLS handshake verified
            for manifest in manifests:
                record_id, sealed = seal_manifest(
                    manifest, key, owner_site=self._site_id, peer_site=peer
                )
                await conn.put_record(RecordKind.REPAIR, record_id, sealed)
        return len(manifests)

    def _export(self, db: sqlite3.Connection, refs: Sequence[int]) -> list[RepairManifest]:
        found = []
        for ref in refs:
            try:
                manifest = export_manifest(
                    db, ref, fragment_id_key=self._fid_key, delegates=self._delegates,
                    threshold=self._threshold,
                )  # fmt: skip
            except (FormatError, LimitExceeded) as error:
                # A manifest that cannot be made must not hold up the catalog record.
                _log.error("repair manifest of bundle row %d not made: %s", ref, error)
                continue
            if manifest is not None:
                found.append(manifest)
        return found
