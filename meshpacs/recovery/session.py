"""A recovering site back in its federation: identity from the phrase, DHT, partner channels.

The site's node and its data directory are gone. What recovery has: the recovery phrase
(which derives every key and the node's identity again), the federation CA certificate,
the site's own node certificate (public; any copy will do, or a new one signed for the
same identity) and the CRL, and one or more bootstrap addresses of the federation's DHT.
None of these may live in the destroyed directory; recovery keeps its own working files
(DHT store, certificate copies, fragments in flight, journal) in a directory of its own.

From there: a DHT node with the site's own node ID (it reads records, it does not serve
the site's data), a :class:`~meshpacs.transport.pool.PartnerPool` over mutual TLS, and the
two things recovery asks the mesh for: the sealed catalog records the trusted peers keep
for this site, and the fragments of its bundles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshpacs.dht import DhtNode, RecordStore
from meshpacs.errors import MeshError
from meshpacs.federation import MutualTls, SiteFederationFiles, install_federation_files
from meshpacs.keys import NodeIdentity, SiteKeys, SiteSecret
from meshpacs.transport.frames import RecordKind
from meshpacs.transport.pool import PartnerPool

__all__ = ["MeshSession", "RecoveryCredentials", "collect_records", "open_session"]

_log = logging.getLogger("meshpacs.recovery")


@dataclass(frozen=True)
class RecoveryCredentials:
    """What a recovering site brings besides its phrase (all public, none in the lost dir)."""

    site_id: str
    ca_pem: bytes
    cert_pem: bytes
    crl_pem: bytes
    bootstrap: tuple[tuple[str, int], ...]
    bind: str = "127.0.0.1"


@dataclass
class MeshSession:
    site_id: str
    keys: SiteKeys
    identity: NodeIdentity
    dht: DhtNode
    pool: PartnerPool

    async def members(self, rounds: int = 6) -> list[str]:
        """Member sites the DHT knows of (lookups around random keyspace points)."""
        found: set[str] = set()
        for _ in range(rounds):
            for _node_id, record in await self.dht.closest_sites(secrets.token_bytes(20), 20):
                found.add(record.site_id)
        found.discard(self.site_id)
        return sorted(found)


@contextlib.asynccontextmanager
async def open_session(
    secret: SiteSecret, credentials: RecoveryCredentials, workdir: Path
) -> AsyncIterator[MeshSession]:
    """Join the federation as the recovering site, for the length of the ``with``."""
    keys = SiteKeys.derive(secret)
    identity = NodeIdentity.from_keys(keys)
    files = SiteFederationFiles.for_site(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # Checks the certificate is this identity's, issued by this CA, not revoked.
    install_federation_files(
        files,
        identity,
        credentials.site_id,
        ca_pem=credentials.ca_pem,
        cert_pem=credentials.cert_pem,
        crl_pem=credentials.crl_pem,
    )
    tls = MutualTls(identity, files)
    store = RecordStore(workdir / "dht.sqlite", tls.federation)
    dht = DhtNode(store, tls.federation, rpc_timeout=2.0)
    await dht.start(credentials.bind, 0, identity.node_id)
    try:
        answered = await dht.bootstrap(list(credentials.bootstrap))
        if not answered:
            raise MeshError("no bootstrap peer answered: check --bootstrap and the network")
        _log.info("recovery: joined the federation's DHT (%d bootstrap peers)", answered)
        yield MeshSession(credentials.site_id, keys, identity, dht, PartnerPool(dht, tls))
    finally:
        await dht.stop()
        store.close()


async def collect_records(
    session: MeshSession, peers: Sequence[str], kind: RecordKind = RecordKind.CATALOG
) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """Every record of ``kind`` the peers keep for this site; and the peers that failed."""
    found: list[tuple[str, bytes]] = []
    failed: dict[str, str] = {}

    async def from_peer(peer: str) -> None:
        try:
            async with await session.pool.connect(peer) as conn:
                for record_id in await conn.list_records(kind):
                    data = await conn.get_record(kind, record_id)
                    if data is not None:
                        found.append((record_id, data))
        except MeshError as error:
            failed[peer] = str(error)

    await asyncio.gather(*(from_peer(peer) for peer in peers))
    return found, failed
