"""Gathering over the real transport: FragmentServers, mutual TLS, a PartnerPool, real stores."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshpacs.dht import DhtNode, NodeRecord, RecordStore
from meshpacs.federation import FederationCA, MutualTls, create_federation_ca
from meshpacs.keys import node_id_for
from meshpacs.recovery.decode import decode_to_files
from meshpacs.recovery.gather import connect_fetch, gather_bundle, pool_fetch
from meshpacs.store import FragmentStore, QuotaPolicy
from meshpacs.store.records import HeldRecords
from meshpacs.transport.client import PartnerConnection
from meshpacs.transport.pool import PartnerPool
from meshpacs.transport.server import FragmentServer, ServerLimits

from ..federation.helpers import make_site
from ..store.helpers import files_under, put
from .holders import KEY_WRAP_KEY, Made, files_in, make

OWNER = "owner"


@dataclass
class Holder:
    site_id: str
    store: FragmentStore
    server: FragmentServer
    root: Path
    port: int


@dataclass
class Federation:
    pool: PartnerPool
    holders: list[Holder]


async def start_holder(ca: FederationCA, root: Path, site_id: str, seed: int) -> Holder:
    site = make_site(ca, root / "sites", site_id, seed)
    tls = MutualTls(site.identity, site.files)
    store = FragmentStore(root / site_id / "fragments", QuotaPolicy(10**8))
    records = HeldRecords(root / site_id / "records")
    server = FragmentServer(
        store,
        records,
        tls.server_context(),
        tls.peer_member,
        limits=ServerLimits(idle_seconds=5, io_seconds=5),
    )
    _, port = await server.start("127.0.0.1", 0)
    return Holder(site_id, store, server, root / site_id, port)


def node_record(site_id: str, port: int) -> NodeRecord:
    return NodeRecord(
        site_id=site_id,
        cert_fingerprint=bytes(32),
        transport_host="127.0.0.1",
        transport_port=port,
        dicom_host="127.0.0.1",
        dicom_port=104,
        dicom_ae_title="MESHPACS",
        capacity_bytes=10**9,
        seq=1,
        expires_at=2**40,
    )


@pytest.fixture
async def federation(tmp_path: Path) -> AsyncIterator[Federation]:
    """Four holder sites on real sockets, and the owner's pool (addresses known, DHT alone)."""
    ca = create_federation_ca(tmp_path / "ca", "Test Mesh")
    owner = make_site(ca, tmp_path / "sites", OWNER, 1)
    holders = [await start_holder(ca, tmp_path, f"holder-{i}", 10 + i) for i in range(4)]
    verifier = owner.federation()
    dht_store = RecordStore(tmp_path / "dht.sqlite", verifier)
    dht = DhtNode(dht_store, verifier, rpc_timeout=0.25)
    await dht.start("127.0.0.1", 0, node_id_for(owner.identity.public_key_bytes))
    pool = PartnerPool(dht, MutualTls(owner.identity, owner.files), timeout=5)
    for holder in holders:
        pool.remember(node_record(holder.site_id, holder.port))
    yield Federation(pool, holders)
    for holder in holders:
        await holder.server.close()
        holder.store.close()
    await dht.stop()
    dht_store.close()


def place(made: Made, federation: Federation) -> None:
    """Share s on holder-s, owned by the owner site, as a backup would have left it."""
    for fragment, holder in zip(made.fragments, federation.holders, strict=True):
        put(holder.store, fragment, OWNER, expected_set_hash=made.bundle.ref.set_hash)


def decoded(made: Made, paths: dict[int, Path], outdir: Path) -> list[bytes]:
    return [p.read_bytes() for _, p in decode_to_files(made.bundle, KEY_WRAP_KEY, paths, outdir)]


def holders_of(n: int) -> dict[int, list[str]]:
    return {share: [f"holder-{share}"] for share in range(n)}


async def find_nothing(fragment_id: str) -> list[str]:
    return []


async def test_fragments_stream_over_mutual_tls_and_decode_exactly(
    federation: Federation, tmp_path: Path
) -> None:
    made = make(seed=30, sizes=(5000, 70_000), k=2, n=4, holders=holders_of(4))
    place(made, federation)
    gathered = await gather_bundle(
        made.bundle, pool_fetch(federation.pool), find_nothing, tmp_path / "work"
    )
    assert len(gathered.paths) == 2 and set(gathered.paths) <= {0, 1, 2}  # k of k + 1 asked
    assert gathered.rejected == {}
    assert decoded(made, gathered.paths, tmp_path / "out") == list(made.instances)


async def test_a_corrupt_store_and_a_down_holder_are_passed_over(
    federation: Federation, tmp_path: Path
) -> None:
    made = make(seed=31, sizes=(5000, 70_000), k=2, n=4, holders=holders_of(4))
    place(made, federation)
    [stored] = [p for p in files_under(federation.holders[0].root) if p.name == made.fid(0)]
    data = bytearray(stored.read_bytes())
    data[made.bundle.ref.header.block_offset(3) + 11] ^= 0x04  # bit rot on holder-0's disk
    stored.write_bytes(bytes(data))
    await federation.holders[1].server.close()
    gathered = await gather_bundle(
        made.bundle, pool_fetch(federation.pool), find_nothing, tmp_path / "work", timeout=5
    )
    assert sorted(gathered.paths) == [2, 3]
    assert "segment 3 block does not match its hash" in gathered.rejected[(0, "holder-0")]
    assert "holder-1" in gathered.rejected[(1, "holder-1")]  # unreachable, named by site
    assert files_in(tmp_path / "work") == sorted(p.name for p in gathered.paths.values())
    assert decoded(made, gathered.paths, tmp_path / "out") == list(made.instances)


async def test_any_connect_function_serves_one_connection_per_fetch_and_closes_it(
    federation: Federation, tmp_path: Path
) -> None:
    made = make(seed=32, sizes=(5000, 70_000), k=2, n=4, holders=holders_of(4))
    place(made, federation)
    opened: list[PartnerConnection] = []
    closed: list[str] = []

    async def connect(site_id: str) -> PartnerConnection:
        conn = await federation.pool.connect(site_id)
        opened.append(conn)
        close = conn.close

        async def counted_close() -> None:
            closed.append(site_id)
            await close()

        conn.close = counted_close  # type: ignore[method-assign]
        return conn

    gathered = await gather_bundle(made.bundle, connect_fetch(connect), find_nothing,
                                   tmp_path / "work")  # fmt: skip
    assert decoded(made, gathered.paths, tmp_path / "out") == list(made.instances)
    attempts = [a.site_id for a in gathered.tried]
    assert sorted(c.site_id for c in opened) == sorted(attempts)  # one connection per fetch
    assert sorted(closed) == sorted(attempts)  # each closed, even the fetch cancelled
