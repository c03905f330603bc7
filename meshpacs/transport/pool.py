"""Reaching partner sites by site ID: addresses from their signed DHT node records.

The backup pipeline, the trusted-peer replication and recovery all name partners by site
ID. :class:`PartnerPool` finds each site's transport address in its node record (signed,
verified by the DHT), caches it for a while, and opens a checked mutual-TLS connection
per exchange. The certificate check at connect time, not the record, is what proves the
partner is who the record says: a stale or forged address leads at worst to a refused
connection.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from meshpacs.dht import DhtNode, NodeRecord
from meshpacs.errors import PeerUnreachable
from meshpacs.federation import MutualTls
from meshpacs.transport.client import FragmentInfo, PartnerConnection, Sink
from meshpacs.transport.frames import RecordKind

__all__ = ["PartnerPool"]


class PartnerPool:
    """Connections to partner sites, found through the DHT."""

    def __init__(
        self,
        dht: DhtNode,
        tls: MutualTls,
        *,
        timeout: float = 30.0,
        address_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dht = dht
        self._tls = tls
        self._timeout = timeout
        self._ttl = address_ttl
        self._clock = clock
        self._records: dict[str, tuple[float, NodeRecord]] = {}

    async def node_record(self, site_id: str, *, fresh: bool = False) -> NodeRecord:
        """The site's node record, from cache or the DHT; ``PeerUnreachable`` if none."""
        cached = self._records.get(site_id)
        if cached is not None and not fresh and self._clock() - cached[0] < self._ttl:
            return cached[1]
        record = await self._dht.find_node_record(site_id)
        if record is None:
            raise PeerUnreachable(f"site {site_id}: no node record in the DHT")
        self._records[site_id] = (self._clock(), record)
        return record

    def remember(self, record: NodeRecord) -> None:
        """Cache a node record found by another lookup (placement's closest sites)."""
        self._records[record.site_id] = (self._clock(), record)

    async def connect(self, site_id: str) -> PartnerConnection:
        record = await self.node_record(site_id)
        try:
            return await self._open(record)
        except PeerUnreachable:
            # The site may have moved: look it up again once before giving up.
            fresh = await self.node_record(site_id, fresh=True)
            if (fresh.transport_host, fresh.transport_port) == (
                record.transport_host,
                record.transport_port,
            ):
                raise
            return await self._open(fresh)

    async def _open(self, record: NodeRecord) -> PartnerConnection:
        return await PartnerConnection.open(
            record.site_id,
            record.transport_host,
            record.transport_port,
            self._tls.client_context(),
            self._tls.peer_member,
            timeout=self._timeout,
        )

    async def connect_for(self, site_id: str, delegation: bytes) -> PartnerConnection:
        """A connection to ``site_id`` acting for the owner that signed ``delegation``."""
        conn = await self.connect(site_id)
        try:
            await conn.act_for(delegation)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def has_fragment(self, site_id: str, fragment_id: str) -> FragmentInfo | None:
        async with await self.connect(site_id) as conn:
            return await conn.has_fragment(fragment_id)

    async def ping(self, site_id: str) -> None:
        async with await self.connect(site_id) as conn:
            await conn.ping()

    async def put_fragment(self, site_id: str, fragment_id: str, path: Path) -> None:
        async with await self.connect(site_id) as conn:
            await conn.put_fragment(fragment_id, path)

    async def put_fragment_stream(
        self, site_id: str, fragment_id: str, size: int, chunks: AsyncIterator[bytes]
    ) -> None:
        async with await self.connect(site_id) as conn:
            await conn.put_fragment_stream(fragment_id, size, chunks)

    async def get_fragment(
        self, site_id: str, fragment_id: str, sink: Sink, *, offset: int = 0, length: int = 0
    ) -> int:
        async with await self.connect(site_id) as conn:
            return await conn.get_fragment(fragment_id, sink, offset=offset, length=length)

    async def delete_fragment(self, site_id: str, fragment_id: str) -> bool:
        async with await self.connect(site_id) as conn:
            return await conn.delete_fragment(fragment_id)

    async def renew_leases(self, site_id: str, fragment_ids: Sequence[str], seconds: int) -> int:
        async with await self.connect(site_id) as conn:
            return await conn.renew_leases(fragment_ids, seconds)

    async def report_corrupt(self, site_id: str, fragment_id: str) -> bool:
        async with await self.connect(site_id) as conn:
            return await conn.report_corrupt(fragment_id)

    async def delete_record(self, site_id: str, kind: RecordKind, record_id: str) -> bool:
        async with await self.connect(site_id) as conn:
            return await conn.delete_record(kind, record_id)

    async def put_record(self, site_id: str, kind: RecordKind, record_id: str, data: bytes) -> None:
        async with await self.connect(site_id) as conn:
            await conn.put_record(kind, record_id, data)

    async def get_record(self, site_id: str, kind: RecordKind, record_id: str) -> bytes | None:
        async with await self.connect(site_id) as conn:
            return await conn.get_record(kind, record_id)

    async def list_records(self, site_id: str, kind: RecordKind) -> list[str]:
        async with await self.connect(site_id) as conn:
            return await conn.list_records(kind)
