"""The fragment transport over real mutual TLS on 127.0.0.1, into a real fragment store."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshpacs.audit.challenge import Challenge, ChallengeHasher, check, plan_challenges
from meshpacs.errors import NotAMember, PeerRefused, PeerUnreachable
from meshpacs.federation import FederationCA, MutualTls, create_federation_ca
from meshpacs.store import FragmentStore, QuotaPolicy
from meshpacs.store.records import HeldRecords
from meshpacs.transport.client import PartnerConnection
from meshpacs.transport.frames import Op, RecordKind, Request, encode_request
from meshpacs.transport.server import FragmentServer, ServerLimits

from ..federation.helpers import make_site
from ..store.helpers import Fragment, make_bundle


@dataclass
class Member:
    site_id: str
    tls: MutualTls


@dataclass
class Holder:
    member: Member
    store: FragmentStore
    records: HeldRecords
    server: FragmentServer
    port: int
    stored: list[tuple[str, str]]


def member(ca: FederationCA, root: Path, site_id: str, seed: int) -> Member:
    site = make_site(ca, root, site_id, seed)
    return Member(site_id, MutualTls(site.identity, site.files))


@pytest.fixture
def ca(tmp_path: Path) -> FederationCA:
    return create_federation_ca(tmp_path / "ca", "Test Mesh")


@pytest.fixture
async def holder(ca: FederationCA, tmp_path: Path) -> AsyncIterator[Holder]:
    me = member(ca, tmp_path / "sites", "holder", 1)
    store = FragmentStore(tmp_path / "fragments", QuotaPolicy(10**8, {"tight": 1000}))
    records = HeldRecords(tmp_path / "records")
    stored: list[tuple[str, str]] = []

    async def on_stored(fragment_id: str, owner: str) -> None:
        stored.append((fragment_id, owner))

    server = FragmentServer(
        store,
        records,
        me.tls.server_context(),
        me.tls.peer_member,
        limits=ServerLimits(idle_seconds=5, io_seconds=5),
        on_stored=on_stored,
    )
    _, port = await server.start("127.0.0.1", 0)
    yield Holder(me, store, records, server, port, stored)
    await server.close()
    store.close()


@pytest.fixture
def partner(ca: FederationCA, tmp_path: Path) -> Callable[[str, int], Member]:
    return lambda site_id, seed: member(ca, tmp_path / "sites", site_id, seed)


async def connect(who: Member, holder: Holder, expect: str = "holder") -> PartnerConnection:
    return await PartnerConnection.open(
        expect,
        "127.0.0.1",
        holder.port,
        who.tls.client_context(),
        who.tls.peer_member,
        timeout=5,
    )


def write(tmp_path: Path, fragment: Fragment) -> Path:
    path = tmp_path / f"{fragment.fid}.frag"
    path.write_bytes(fragment.data)
    return path


async def fetch(conn: PartnerConnection, fid: str, offset: int = 0, length: int = 0) -> bytes:
    parts: list[bytes] = []
    await conn.get_fragment(fid, parts.append, offset=offset, length=length)
    return b"".join(parts)


async def test_put_has_get_and_delete_by_the_owner(
    holder: Holder, partner: Callable[[str, int], Member], tmp_path: Path
) -> None:
    owner = partner("owner", 2)
    fragments = make_bundle(seed=3, sizes=(40_000, 90_000))
    async with await connect(owner, holder) as conn:
        await conn.ping()
        for fragment in fragments:
            await conn.put_fragment(fragment.fid, write(tmp_path, fragment))
        for fragment in fragments:
            info = await conn.has_fragment(fragment.fid)
            assert info is not None and info.size == fragment.size
            assert info.set_hash == fragment.bundle.ref.set_hash
            assert await fetch(conn, fragment.fid) == fragment.data
        one = fragments[0]
        assert await fetch(conn, one.fid, offset=100, length=500) == one.data[100:600]
        assert await conn.delete_fragment(one.fid)
        assert await conn.has_fragment(one.fid) is None
        assert not await conn.delete_fragment(one.fid)
    assert holder.stored == [(f.fid, "owner") for f in fragments]
    assert holder.store.usage("owner") == sum(f.size for f in fragments[1:])


async def test_another_member_can_neither_see_nor_touch_anothers_fragment(
    holder: Holder, partner: Callable[[str, int], Member], tmp_path: Path
) -> None:
    owner, other = partner("owner", 2), partner("other", 3)
    [fragment, *_] = make_bundle(seed=4)
    async with await connect(owner, holder) as conn:
        await conn.put_fragment(fragment.fid, write(tmp_path, fragment))
    async with await connect(other, holder) as conn:
        assert await conn.has_fragment(fragment.fid) is None
        assert not await conn.delete_fragment(fragment.fid)
        with pytest.raises(PeerRefused) as refused:
            await fetch(conn, fragment.fid)
        assert refused.value.code == "NOT_FOUND"
        with pytest.raises(PeerRefused) as refused:
            await conn.put_fragment(fragment.fid, write(tmp_path, fragment))
        assert refused.value.code == "FORBIDDEN"
        await conn.ping()  # the connection is still in step
    assert holder.store.has(fragment.fid) is not None


async def test_a_corrupt_fragment_is_refused_and_nothing_kept(
    holder: Holder, partner: Callable[[str, int], Member], tmp_path: Path
) -> None:
    owner = partner("owner", 2)
    [fragment, *_] = make_bundle(seed=5, sizes=(30_000,))
    bad = bytearray(fragment.data)
    bad[len(bad) // 2] ^= 0x10
    path = tmp_path / "bad.frag"
    path.write_bytes(bytes(bad))
    async with await connect(owner, holder) as conn:
        with pytest.raises(PeerRefused) as refused:
            await conn.put_fragment(fragment.fid, path)
        assert refused.value.code == "CORRUPT"
        assert await conn.has_fragment(fragment.fid) is None
        await conn.put_fragment(fragment.fid, write(tmp_path, fragment))  # same connection
    assert holder.stored == [(fragment.fid, "owner")]


async def test_over_quota_is_refused_before_the_upload(
    holder: Holder, partner: Callable[[str, int], Member], tmp_path: Path
) -> None:
    tight = partner("tight", 6)
    [fragment, *_] = make_bundle(seed=6, sizes=(30_000,))
    async with await connect(tight, holder) as conn:
        with pytest.raises(PeerRefused) as refused:
            await conn.put_fragment(fragment.fid, write(tmp_path, fragment))
        assert refused.value.code == "QUOTA"
        await conn.ping()
    assert holder.store.usage("tight") == 0


async def test_strangers_and_revoked_members_cannot_connect(
    holder: Holder, ca: FederationCA, tmp_path: Path, partner: Callable[[str, int], Member]
) -> None:
    rogue_ca = create_federation_ca(tmp_path / "rogue-ca", "Rogue Mesh")
    rogue = member(rogue_ca, tmp_path / "rogue-sites", "owner", 2)
    with pytest.raises((PeerUnreachable, NotAMember)):
        async with await connect(rogue, holder) as conn:
            await conn.ping()

    revoked = partner("leaver", 7)
    async with await connect(revoked, holder) as conn:
        await conn.ping()
    ca.revoke(site_id="leaver")
    # Only the holder installs the new CRL: the revoked site would not.
    (tmp_path / "sites" / "holder" / "federation" / "crl.pem").write_bytes(ca.crl_pem())
    with pytest.raises((PeerUnreachable, NotAMember, PeerRefused)):
        async with await connect(revoked, holder) as conn:
            await conn.ping()


async def test_the_client_checks_it_reached_the_site_it_meant(
    holder: Holder, partner: Callable[[str, int], Member]
) -> None:
    owner = partner("owner", 2)
    with pytest.raises(PeerUnreachable, match="names site holder"):
        await connect(owner, holder, expect="someone-else")


async def test_records_are_kept_per_owner(
    holder: Holder, partner: Callable[[str, int], Member]
) -> None:
    owner, other = partner("owner", 2), partner("other", 3)
    rid = "c" * 64
    async with await connect(owner, holder) as conn:
        await conn.put_record(RecordKind.CATALOG, rid, b"sealed catalog record")
        await conn.put_record(RecordKind.ESCROW, rid, b"sealed escrow share")
        assert await conn.list_records(RecordKind.CATALOG) == [rid]
        assert await conn.get_record(RecordKind.CATALOG, rid) == b"sealed catalog record"
        assert await conn.get_record(RecordKind.ESCROW, rid) == b"sealed escrow share"
    async with await connect(other, holder) as conn:
        assert await conn.list_records(RecordKind.CATALOG) == []
        assert await conn.get_record(RecordKind.CATALOG, rid) is None
        assert not await conn.delete_record(RecordKind.CATALOG, rid)  # not its record
    async with await connect(owner, holder) as conn:
        assert await conn.delete_record(RecordKind.CATALOG, rid)
        assert not await conn.delete_record(RecordKind.CATALOG, rid)
        assert await conn.list_records(RecordKind.CATALOG) == []
        assert await conn.get_record(RecordKind.ESCROW, rid) == b"sealed escrow share"


async def test_garbage_frames_close_only_that_connection(
    holder: Holder, partner: Callable[[str, int], Member]
) -> None:
    owner = partner("owner", 2)
    context: ssl.SSLContext = owner.tls.client_context()
    reader, writer = await asyncio.open_connection("127.0.0.1", holder.port, ssl=context)
    writer.write(b"\x01\x63" + bytes(18))  # op 99
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    writer.close()
    async with await connect(owner, holder) as conn:
        await conn.ping()


async def test_a_partner_that_vanishes_mid_upload_leaves_nothing(
    holder: Holder, partner: Callable[[str, int], Member], tmp_path: Path
) -> None:
    owner = partner("owner", 2)
    [fragment, *_] = make_bundle(seed=8, sizes=(200_000,))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", holder.port, ssl=owner.tls.client_context()
    )
    writer.write(encode_request(Request(Op.PUT_FRAGMENT, fragment.fid, length=fragment.size)))
    await writer.drain()
    await reader.readexactly(12)  # CONTINUE
    writer.write(fragment.data[:50_000])
    await writer.drain()
    writer.close()
    for _ in range(50):
        if holder.store.available("owner") == 10**8:
            break
        await asyncio.sleep(0.05)
    assert holder.store.has(fragment.fid) is None
    assert holder.store.available("owner") == 10**8  # the reservation was released


async def test_audits_pass_for_the_intact_fragment_and_fail_when_it_changed(
    holder: Holder, partner: Callable[[str, int], Member], tmp_path: Path
) -> None:
    owner, other = partner("owner", 2), partner("other", 3)
    [fragment, *_] = make_bundle(seed=5, sizes=(40_000,))
    expected = ChallengeHasher(plan_challenges(fragment.size, 8, range_size=1000))
    expected.feed(fragment.data)
    planned = expected.finish()
    async with await connect(owner, holder) as conn:
        await conn.put_fragment(fragment.fid, write(tmp_path, fragment))
        for item in planned:
            given = await conn.audit_fragment(fragment.fid, item.challenge)
            assert given is not None and check(item, given)
        past_end = Challenge(b"\x07" * 32, fragment.size - 10, 100)
        with pytest.raises(PeerRefused):
            await conn.audit_fragment(fragment.fid, past_end)
        await conn.ping()  # still in step after a refusal
    async with await connect(other, holder) as conn:
        assert await conn.audit_fragment(fragment.fid, planned[0].challenge) is None
    # The holder's disk rots under it: a byte inside every planned range flips.
    path = next(
        p
        for p in (tmp_path / "fragments").rglob("*")
        if p.is_file() and p.read_bytes() == fragment.data
    )
    rotten = bytearray(fragment.data)
    for item in planned:
        rotten[item.challenge.offset] ^= 0xFF
    path.write_bytes(bytes(rotten))
    async with await connect(owner, holder) as conn:
        for item in planned:
            given = await conn.audit_fragment(fragment.fid, item.challenge)
            assert given is not None and not check(item, given)


async def test_a_leaving_holder_takes_no_fragment_answers_audits_leaving_and_still_serves(
    holder: Holder, partner: Callable[[str, int], Member], tmp_path: Path
) -> None:
    owner = partner("owner", 2)
    kept, refused = make_bundle(seed=6, sizes=(30_000, 30_000))[:2]
    async with await connect(owner, holder) as conn:
        await conn.put_fragment(kept.fid, write(tmp_path, kept))
    holder.server.leaving = True
    async with await connect(owner, holder) as conn:
        with pytest.raises(PeerRefused) as caught:
            await conn.put_fragment(refused.fid, write(tmp_path, refused))
        assert caught.value.code == "LEAVING"
        with pytest.raises(PeerRefused) as caught:
            await conn.audit_fragment(kept.fid, Challenge(b"\x01" * 32, 0, 100))
        assert caught.value.code == "LEAVING"
        assert await fetch(conn, kept.fid) == kept.data  # a repair may gather from it
        assert await conn.delete_fragment(kept.fid)
    assert holder.store.has(refused.fid) is None


async def test_a_holder_reports_rot_to_the_owner_which_says_whether_it_is_its_share(
    holder: Holder, partner: Callable[[str, int], Member]
) -> None:
    # Here the fixture's node plays the owner; "reporter" holds one of its fragments.
    reported: list[tuple[str, str]] = []
    ours = "d" * 64

    async def on_report(holder_site: str, fragment_id: str) -> bool:
        reported.append((holder_site, fragment_id))
        return fragment_id == ours

    holder.server._on_corrupt_report = on_report
    reporter = partner("reporter", 4)
    async with await connect(reporter, holder) as conn:
        assert await conn.report_corrupt(ours)
        assert not await conn.report_corrupt("e" * 64)
    assert reported == [("reporter", ours), ("reporter", "e" * 64)]  # site from its cert
