"""RENEW_LEASES: the renewal's frame, and renewals over real mutual TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshpacs.dht import DhtNode, NodeRecord, RecordStore
from meshpacs.errors import ProtocolViolation, UnknownVersion
from meshpacs.federation import FederationCA, MutualTls, create_federation_ca
from meshpacs.keys import node_id_for
from meshpacs.store import FragmentStore, QuotaPolicy
from meshpacs.store.records import HeldRecords
from meshpacs.transport.client import PartnerConnection
from meshpacs.transport.frames import (
    MAX_RENEW,
    Op,
    Renewal,
    Request,
    check_renewal_length,
    decode_renewal,
    decode_renewed,
    encode_renewal,
    encode_renewed,
    encode_request,
)
from meshpacs.transport.pool import PartnerPool
from meshpacs.transport.server import FragmentServer, ServerLimits

from ..federation.helpers import make_site
from ..store.helpers import FakeClock, Fragment, make_bundle, put
from .test_transport import Member, member

DAY = 86400
LEASE = 30 * DAY  # the policy's defaults
MAX_LEASE = 90 * DAY
ID = "ab" * 32


@dataclass
class Holder:
    member: Member
    store: FragmentStore
    server: FragmentServer
    port: int
    clock: FakeClock


@pytest.fixture
def ca(tmp_path: Path) -> FederationCA:
    return create_federation_ca(tmp_path / "ca", "Test Mesh")


@pytest.fixture
async def holder(ca: FederationCA, tmp_path: Path) -> AsyncIterator[Holder]:
    me = member(ca, tmp_path / "sites", "holder", 1)
    clock = FakeClock()
    store = FragmentStore(tmp_path / "fragments", QuotaPolicy(10**8), clock=clock)
    server = FragmentServer(
        store,
        HeldRecords(tmp_path / "records"),
        me.tls.server_context(),
        me.tls.peer_member,
        limits=ServerLimits(idle_seconds=5, io_seconds=5),
    )
    _, port = await server.start("127.0.0.1", 0)
    yield Holder(me, store, server, port, clock)
    await server.close()
    store.close()


@pytest.fixture
def partner(ca: FederationCA, tmp_path: Path) -> Callable[[str, int], Member]:
    return lambda site_id, seed: member(ca, tmp_path / "sites", site_id, seed)


async def connect(who: Member, holder: Holder) -> PartnerConnection:
    return await PartnerConnection.open(
        "holder",
        "127.0.0.1",
        holder.port,
        who.tls.client_context(),
        who.tls.peer_member,
        timeout=5,
    )


def lease_of(holder: Holder, fragment: Fragment) -> float | None:
    stored = holder.store.has(fragment.fid)
    assert stored is not None
    return stored.lease_expires


# --- the frame -----------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 3, MAX_RENEW])
def test_renewals_round_trip(count: int) -> None:
    ids = [f"{i:064x}" for i in range(count)]
    wire = encode_renewal(ids, 60 * DAY)
    assert len(wire) == 7 + 64 * count
    check_renewal_length(len(wire))
    assert decode_renewal(wire) == Renewal(60 * DAY, tuple(ids))
    assert wire[:7] == struct.pack(">BIH", 1, 60 * DAY, count)  # the layout drawn
    assert decode_renewed(encode_renewed(count)) == count


@pytest.mark.parametrize(
    ("ids", "seconds"),
    [([ID] * (MAX_RENEW + 1), DAY), ([ID], 0), ([ID], -1), ([ID], 2**32), ([ID], True),
     ([ID], 1.5), (["AB" * 32], DAY), ([ID[:-1]], DAY), ([ID + "0"], DAY), (["é" * 64], DAY)],
    ids=repr,
)  # fmt: skip
def test_a_renewal_that_cannot_be_sent_is_refused_before_encoding(
    ids: list[str], seconds: int
) -> None:
    with pytest.raises(ProtocolViolation):
        encode_renewal(ids, seconds)


def body(seconds: int, count: int, ids: bytes, version: int = 1) -> bytes:
    return struct.pack(">BIH", version, seconds, count) + ids


BAD_BODIES = {
    "shorter than its head": b"\x01\x00\x00",
    "count over its IDs": body(DAY, 2, ID.encode()),
    "count under its IDs": body(DAY, 0, ID.encode()),
    "half an ID": body(DAY, 1, ID.encode()[:32]),
    "over 1024 IDs": body(DAY, MAX_RENEW + 1, ID.encode() * (MAX_RENEW + 1)),
    "zero seconds": body(0, 1, ID.encode()),
    "upper-case ID": body(DAY, 1, ID.upper().encode()),
    "a path for an ID": body(DAY, 1, b"../" + b"a" * 61),
}


@pytest.mark.parametrize("bad", list(BAD_BODIES))
def test_malformed_renewals_are_protocol_violations(bad: str) -> None:
    with pytest.raises(ProtocolViolation):
        decode_renewal(BAD_BODIES[bad])


def test_an_unknown_renewal_version_is_refused() -> None:
    with pytest.raises(UnknownVersion):
        decode_renewal(body(DAY, 1, ID.encode(), version=2))


@pytest.mark.parametrize("length", [0, 6, 8, 7 + 63, 7 + 64 * (MAX_RENEW + 1), 2**64 - 1])
def test_an_announced_renewal_size_is_bounded_before_reading(length: int) -> None:
    with pytest.raises(ProtocolViolation):
        check_renewal_length(length)


def test_an_answer_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ProtocolViolation):
        decode_renewed(b"\x00\x00\x01")


# --- over the wire -------------------------------------------------------------------------


async def test_a_renewal_counts_and_extends_only_the_callers_fragments(
    holder: Holder, partner: Callable[[str, int], Member]
) -> None:
    owner, other = partner("owner", 2), partner("other", 3)
    mine_a, mine_b, theirs = make_bundle(seed=80)
    put(holder.store, mine_a, "owner")
    put(holder.store, mine_b, "owner")
    put(holder.store, theirs, "other")
    their_lease = lease_of(holder, theirs)
    unknown = make_bundle(seed=81)[0].fid
    holder.clock.advance(DAY)
    async with await connect(owner, holder) as conn:
        asked = [mine_a.fid, mine_b.fid, theirs.fid, unknown, mine_a.fid]
        assert await conn.renew_leases(asked, 60 * DAY) == 2
        assert await conn.renew_leases([], 60 * DAY) == 0
        await conn.ping()  # still in step
    assert lease_of(holder, mine_a) == lease_of(holder, mine_b) == holder.clock.now + 60 * DAY
    assert lease_of(holder, theirs) == their_lease
    async with await connect(other, holder) as conn:
        assert await conn.renew_leases([mine_a.fid, mine_b.fid], 60 * DAY) == 0
        assert await conn.renew_leases([theirs.fid], DAY) == 1
    assert lease_of(holder, theirs) == their_lease  # a shorter renewal keeps the longer lease


async def test_a_renewal_over_the_holders_maximum_is_cut_to_it(
    holder: Holder, partner: Callable[[str, int], Member]
) -> None:
    owner = partner("owner", 2)
    fragment = make_bundle(seed=82)[0]
    put(holder.store, fragment, "owner")
    async with await connect(owner, holder) as conn:
        assert await conn.renew_leases([fragment.fid], 2**32 - 1) == 1
    assert lease_of(holder, fragment) == holder.clock.now + MAX_LEASE


async def test_a_bad_argument_is_refused_without_costing_the_connection(
    holder: Holder, partner: Callable[[str, int], Member]
) -> None:
    owner = partner("owner", 2)
    async with await connect(owner, holder) as conn:
        with pytest.raises(ProtocolViolation):
            await conn.renew_leases([ID] * (MAX_RENEW + 1), DAY)
        with pytest.raises(ProtocolViolation):
            await conn.renew_leases([ID], 0)
        await conn.ping()


async def raw(holder: Holder, who: Member) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", holder.port, ssl=who.tls.client_context(), server_hostname=None
    )


MALFORMED = {
    **{name: (len(data), data) for name, data in BAD_BODIES.items()},
    "another version": (71, body(DAY, 1, ID.encode(), version=2)),
    # Announced sizes the server must refuse before reading (it would wait otherwise).
    "announced over 1024 IDs": (7 + 64 * (MAX_RENEW + 1), b""),
    "announced 2**64-1 bytes": (2**64 - 1, b""),
    "announced between IDs": (7 + 100, b""),
}


@pytest.mark.parametrize("bad", list(MALFORMED))
async def test_a_malformed_renewal_closes_only_that_connection(
    holder: Holder, partner: Callable[[str, int], Member], bad: str
) -> None:
    owner = partner("owner", 2)
    fragment = make_bundle(seed=83)[0]
    put(holder.store, fragment, "owner")
    async with await connect(owner, holder) as bystander:
        reader, writer = await raw(holder, owner)
        length, data = MALFORMED[bad]
        writer.write(encode_request(Request(Op.RENEW_LEASES, length=length)) + data)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
        writer.close()
        # Connections already open, and new ones, are served as before.
        holder.clock.advance(DAY)
        assert await bystander.renew_leases([fragment.fid], 60 * DAY) == 1
    async with await connect(owner, holder) as conn:
        await conn.ping()
    assert lease_of(holder, fragment) == holder.clock.now + 60 * DAY


# --- through the pool ----------------------------------------------------------------------


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


async def test_the_pool_renews_at_a_site_by_its_id(
    holder: Holder, ca: FederationCA, tmp_path: Path
) -> None:
    owner = make_site(ca, tmp_path / "sites", "owner", 2)
    fragment = make_bundle(seed=84)[0]
    put(holder.store, fragment, "owner")
    verifier = owner.federation()
    dht_store = RecordStore(tmp_path / "dht.sqlite", verifier)
    dht = DhtNode(dht_store, verifier, rpc_timeout=0.25)
    await dht.start("127.0.0.1", 0, node_id_for(owner.identity.public_key_bytes))
    try:
        pool = PartnerPool(dht, MutualTls(owner.identity, owner.files), timeout=5)
        pool.remember(node_record("holder", holder.port))
        holder.clock.advance(DAY)
        assert await pool.renew_leases("holder", [fragment.fid], 45 * DAY) == 1
    finally:
        await dht.stop()
        dht_store.close()
    assert lease_of(holder, fragment) == holder.clock.now + 45 * DAY
