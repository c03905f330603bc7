"""ACT_FOR over real mutual TLS on 127.0.0.1: a delegate uses the owner's fragments, no more."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshpacs.errors import PeerRefused, PeerUnreachable, ProtocolViolation
from meshpacs.federation import FederationCA, MutualTls, create_federation_ca
from meshpacs.federation.delegation import (
    MAX_DELEGATION_BYTES,
    Delegation,
    sign_delegation,
    verify_delegation,
)
from meshpacs.store import FragmentStore, QuotaPolicy
from meshpacs.store.records import HeldRecords
from meshpacs.transport.client import PartnerConnection
from meshpacs.transport.frames import Op, RecordKind, Request, encode_request
from meshpacs.transport.server import FragmentServer, ServerLimits

from ..federation.helpers import Site, make_site
from ..store.helpers import Fragment, make_bundle


@dataclass
class World:
    ca: FederationCA
    holder: Site
    store: FragmentStore
    port: int
    stored: list[tuple[str, str]]
    root: Path

    def site(self, site_id: str, seed: int) -> Site:
        return make_site(self.ca, self.root / "sites", site_id, seed)


def tls(site: Site) -> MutualTls:
    return MutualTls(site.identity, site.files)


def token(owner: Site, delegate: str, days: int = 7) -> bytes:
    cert = x509.load_pem_x509_certificate(owner.files.node_certificate_pem())
    now = int(time.time())
    fields = Delegation(
        owner.site_id, delegate, now, now + days * 86400,
        cert.public_bytes(serialization.Encoding.DER),
    )  # fmt: skip
    return sign_delegation(fields, owner.identity)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    ca = create_federation_ca(tmp_path / "ca", "Test Mesh")
    holder = make_site(ca, tmp_path / "sites", "holder", 1)
    store = FragmentStore(tmp_path / "fragments", QuotaPolicy(10**8))
    federation = holder.files.federation()
    stored: list[tuple[str, str]] = []

    async def on_stored(fragment_id: str, owner: str) -> None:
        stored.append((fragment_id, owner))

    def check(data: bytes, presenter: str) -> str:
        return verify_delegation(
            data, presenter=presenter, verify_certificate=federation.verify, now=time.time()
        ).owner_site

    server = FragmentServer(
        store,
        HeldRecords(tmp_path / "records"),
        tls(holder).server_context(),
        tls(holder).peer_member,
        limits=ServerLimits(idle_seconds=5, io_seconds=5),
        on_stored=on_stored,
        verify_delegation=check,
    )
    _, port = await server.start("127.0.0.1", 0)
    yield World(ca, holder, store, port, stored, tmp_path)
    await server.close()
    store.close()


async def connect(who: Site, world: World) -> PartnerConnection:
    mtls = tls(who)
    return await PartnerConnection.open(
        "holder", "127.0.0.1", world.port, mtls.client_context(), mtls.peer_member, timeout=5
    )


def write(tmp_path: Path, fragment: Fragment) -> Path:
    path = tmp_path / f"{fragment.fid}.frag"
    path.write_bytes(fragment.data)
    return path


async def test_a_delegate_reads_checks_and_places_the_owners_fragments(
    world: World, tmp_path: Path
) -> None:
    owner, delegate = world.site("owner", 2), world.site("delegate", 3)
    first, second, *_ = make_bundle(seed=5)
    async with await connect(owner, world) as conn:
        await conn.put_fragment(first.fid, write(tmp_path, first))
    async with await connect(delegate, world) as conn:
        assert await conn.has_fragment(first.fid) is None  # not yet acting: not its data
        await conn.act_for(token(owner, "delegate"))
        info = await conn.has_fragment(first.fid)
        assert info is not None and info.set_hash == first.bundle.ref.set_hash
        assert (info.size, info.share) == (first.size, first.share)
        parts: list[bytes] = []
        await conn.get_fragment(first.fid, parts.append)
        assert b"".join(parts) == first.data
        await conn.put_fragment(second.fid, write(tmp_path, second))
    # The share the delegate placed is the owner's, and the owner sees it as its own.
    assert world.stored == [(first.fid, "owner"), (second.fid, "owner")]
    held = world.store.has(second.fid)
    assert held is not None and held.owner_site == "owner"
    async with await connect(owner, world) as conn:
        assert await conn.has_fragment(second.fid) is not None


async def test_a_delegate_may_not_delete_renew_audit_or_touch_records(
    world: World, tmp_path: Path
) -> None:
    owner, delegate = world.site("owner", 2), world.site("delegate", 3)
    [fragment, *_] = make_bundle(seed=6)
    async with await connect(owner, world) as conn:
        await conn.put_fragment(fragment.fid, write(tmp_path, fragment))
        await conn.put_record(RecordKind.CATALOG, "a" * 64, b"sealed")
    async with await connect(delegate, world) as conn:
        await conn.act_for(token(owner, "delegate"))
        for attempt in (
            conn.delete_fragment(fragment.fid),
            conn.renew_leases([fragment.fid], 3600),
            conn.get_record(RecordKind.CATALOG, "a" * 64),
            conn.put_record(RecordKind.CATALOG, "a" * 64, b"forged"),
            conn.list_records(RecordKind.CATALOG),
        ):
            with pytest.raises(PeerRefused) as refused:
                await attempt
            assert refused.value.code == "FORBIDDEN"
        # Each refusal kept the connection in step: it still serves reads.
        assert await conn.has_fragment(fragment.fid) is not None
    assert world.store.has(fragment.fid) is not None
    async with await connect(owner, world) as conn:
        assert await conn.get_record(RecordKind.CATALOG, "a" * 64) == b"sealed"


async def test_a_token_for_another_site_or_from_a_revoked_owner_is_refused(
    world: World, tmp_path: Path
) -> None:
    owner, delegate, other = (
        world.site(s, i) for i, s in enumerate(("owner", "delegate", "other"), 2)
    )
    [fragment, *_] = make_bundle(seed=7)
    async with await connect(owner, world) as conn:
        await conn.put_fragment(fragment.fid, write(tmp_path, fragment))
    async with await connect(other, world) as conn:
        with pytest.raises(PeerRefused) as refused:
            await conn.act_for(token(owner, "delegate"))  # stolen from the delegate's disk
        assert refused.value.code == "FORBIDDEN" and "not other" in str(refused.value)
        assert await conn.has_fragment(fragment.fid) is None  # still only itself
    world.ca.revoke(site_id="owner")
    (world.holder.files.crl).write_bytes(world.ca.crl_pem())
    async with await connect(delegate, world) as conn:
        with pytest.raises(PeerRefused) as refused:
            await conn.act_for(token(owner, "delegate"))
        assert refused.value.code == "FORBIDDEN" and "owner certificate" in str(refused.value)


async def test_an_oversized_delegation_closes_the_connection(world: World) -> None:
    delegate = world.site("delegate", 3)
    async with await connect(delegate, world) as conn:
        with pytest.raises(ProtocolViolation):  # the client refuses to send one
            await conn.act_for(bytes(MAX_DELEGATION_BYTES + 1))
        # Sent raw, the server closes on the announced size, before reading a byte of it.
        conn._writer.write(encode_request(Request(Op.ACT_FOR, length=MAX_DELEGATION_BYTES + 1)))
        with pytest.raises((PeerUnreachable, ProtocolViolation)):
            await conn.ping()
