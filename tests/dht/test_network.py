"""DhtNode on real UDP sockets on 127.0.0.1: publish, find, verify, survive, place."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kademlia.network import Server
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.storage import ForgetfulStorage

from meshpacs.dht import (
    DhtNode,
    Ed25519Signer,
    RecordStore,
    node_key,
    placement_key,
    provider_key,
    sign_record,
)
from meshpacs.dht.network import MeshProtocol
from meshpacs.dht.records import MAX_RECORD_SIZE
from meshpacs.errors import InvalidRecord
from meshpacs.federation import Federation
from meshpacs.keys import node_id_for

from .helpers import NOW, Clock, TestFederation, fragment_ids, node_record, provider_record

RPC_TIMEOUT = 0.25


@dataclass
class Site:
    site_id: str
    signer: Ed25519Signer
    store: RecordStore
    node: DhtNode

    @property
    def contact(self) -> Node:
        return Node(self.node.node_id, *self.node.address)

    async def close(self) -> None:
        await self.node.stop()
        self.store.close()


async def start_site(
    federation: TestFederation,
    tmp_path: Path,
    site_id: str,
    clock: Clock,
    *,
    signer: Ed25519Signer | None = None,
    port: int = 0,
    **options: Any,
) -> Site:
    signer = signer or federation.issue(site_id)
    store = RecordStore(tmp_path / f"{site_id}.sqlite", federation.verifier, clock=clock)
    node = DhtNode(store, federation.verifier, rpc_timeout=RPC_TIMEOUT, clock=clock, **options)
    await node.start("127.0.0.1", port, node_id_for(signer.public_key_bytes))
    return Site(site_id, signer, store, node)


@pytest.fixture
async def mesh(
    federation: TestFederation, tmp_path: Path, clock: Clock
) -> AsyncIterator[list[Site]]:
    """Five members; st-1..st-4 join through st-0."""
    sites = [await start_site(federation, tmp_path, f"st-{i}", clock) for i in range(5)]
    for site in sites[1:]:
        assert await site.node.bootstrap([sites[0].node.address]) == 1
    yield sites
    for site in sites:
        await site.close()


class EvilProtocol(KademliaProtocol):  # type: ignore[misc]
    """A peer that speaks the mesh's RPCs but serves whatever the test gives it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.served: list[bytes] = []
        self.own_record: bytes | None = None
        self.asked = 0

    def rpc_find_records(self, sender: Any, nodeid: bytes, key: bytes) -> list[bytes]:
        self.asked += 1
        return list(self.served)

    def rpc_node_record(self, sender: Any, nodeid: bytes) -> bytes | None:
        self.asked += 1
        return self.own_record

    def rpc_find_node(self, sender: Any, nodeid: bytes, key: bytes) -> list[Any]:
        # Real neighbours plus entries a reader must not choke on or contact.
        junk = [["junk"], [b"\x01" * 20, "localhost", 5], [b"\x02" * 20, "127.0.0.1", "x"], 7]
        return list(super().rpc_find_node(sender, nodeid, key)) + junk


@pytest.fixture
async def evil(mesh: list[Site]) -> AsyncIterator[Server]:
    """A non-member on the DHT (plain kademlia), joined through st-0."""
    server = Server(node_id=random.Random(7).randbytes(20), storage=ForgetfulStorage())
    server.protocol_class = EvilProtocol
    await server.listen(0, interface="127.0.0.1")
    await server.bootstrap([mesh[0].node.address])
    yield server
    server.stop()


def site_records(site: Site, seq: int = 1, **kwargs: Any) -> bytes:
    return sign_record(node_record(site.signer, site.site_id, seq=seq, **kwargs), site.signer)


# --- publish and find ------------------------------------------------------------------------


async def test_records_published_by_one_node_are_found_and_verified_from_another(
    mesh: list[Site],
) -> None:
    publisher, reader = mesh[1], mesh[4]
    own = node_record(publisher.signer, "st-1", seq=3)
    assert await publisher.node.publish(sign_record(own, publisher.signer)) == 4
    fragments = fragment_ids(3, seed=11)
    held = [provider_record(fid, "st-1") for fid in fragments]
    for record in held:
        assert await publisher.node.publish(sign_record(record, publisher.signer)) == 4

    assert await reader.node.find_node_record("st-1") == own
    for fid, record in zip(fragments, held, strict=True):
        assert await reader.node.find_providers(fid) == [record]
    assert await reader.node.find_node_record("st-9") is None
    assert await reader.node.find_providers(fragment_ids(1, seed=12)[0]) == []
    # A federation smaller than k: every member holds every record.
    assert all(len(site.store) == 4 for site in mesh)


async def test_a_fragment_held_by_two_sites_has_two_providers(mesh: list[Site]) -> None:
    fid = fragment_ids(1, seed=13)[0]
    for site in (mesh[2], mesh[3]):
        record = provider_record(fid, site.site_id, seq=5)
        await site.node.publish(sign_record(record, site.signer))
    found = await mesh[0].node.find_providers(fid)
    assert [record.holder_site_id for record in found] == ["st-2", "st-3"]


# --- forged, replayed ------------------------------------------------------------------------


def forgeries(
    mesh: list[Site], federation: TestFederation, outsiders: TestFederation
) -> dict[str, bytes]:
    """Records for st-1's node key, all with a higher seq than the genuine one (1)."""
    victim, other = mesh[1], mesh[3]
    intruder = outsiders.issue("st-1")
    genuine_later = bytearray(site_records(victim, seq=1))
    seq_at = len(genuine_later) - 64 - 16
    genuine_later[seq_at : seq_at + 8] = (99).to_bytes(8, "big")
    return {
        "author not a member": sign_record(node_record(intruder, "st-1", seq=99), intruder),
        "bad signature": bytes(genuine_later),
        "site ID is not the author's": sign_record(
            node_record(other.signer, "st-1", seq=99), other.signer
        ),
        "malformed": b"\x01\x01" + bytes(300),
    }


async def test_forged_records_stored_through_the_raw_store_rpc_are_refused(
    mesh: list[Site],
    evil: Server,
    federation: TestFederation,
    outsiders: TestFederation,
) -> None:
    genuine = site_records(mesh[1], seq=1)
    await mesh[1].node.publish(genuine)
    key = node_key("st-1")
    for forged in forgeries(mesh, federation, outsiders).values():
        for site in mesh:
            answered, kept = await evil.protocol.call_store(site.contact, key, forged)
            assert answered and kept is False
    for site in mesh:
        assert site.store.values_for(key) == [genuine]
    # The largest value a record may be still travels in one STORE datagram.
    answered, kept = await evil.protocol.call_store(mesh[0].contact, key, bytes(MAX_RECORD_SIZE))
    assert answered and kept is False
    found = await mesh[2].node.find_node_record("st-1")
    assert found is not None and found.seq == 1


async def test_readers_ignore_forged_values_a_peer_serves(
    mesh: list[Site],
    evil: Server,
    federation: TestFederation,
    outsiders: TestFederation,
    caplog: pytest.LogCaptureFixture,
) -> None:
    genuine = site_records(mesh[1], seq=1)
    await mesh[1].node.publish(genuine)
    fid, other_fid = fragment_ids(2, seed=14)
    holder = provider_record(fid, "st-1", seq=1)
    await mesh[1].node.publish(sign_record(holder, mesh[1].signer))
    evil.protocol.served = [
        *forgeries(mesh, federation, outsiders).values(),
        site_records(mesh[1], seq=50, expires_at=NOW - 1),  # signed, but expired
        sign_record(provider_record(fid, "st-2", seq=9), mesh[3].signer),  # claims st-2
        sign_record(provider_record(other_fid, "st-1", seq=9), mesh[1].signer),  # other key
        "not bytes",
    ]
    caplog.set_level(logging.INFO, logger="meshpacs.dht.network")

    found = await mesh[4].node.find_node_record("st-1")
    assert found is not None and found.seq == 1
    assert await mesh[4].node.find_providers(fid) == [holder]
    assert evil.protocol.asked >= 2  # the forged values did reach the reader
    ignored = {record.getMessage() for record in caplog.records}
    for reason in ("author not a member", "bad signature", "site ID is not the author's"):
        assert f"DHT record ignored: {reason}" in ignored
    assert "DHT record ignored: expired" in ignored


async def test_a_lower_seq_replay_does_not_replace_a_newer_record(
    mesh: list[Site], evil: Server
) -> None:
    older, newer = site_records(mesh[1], seq=1), site_records(mesh[1], seq=2)
    # The plain-kademlia peer keeps anything; members keep only what verifies.
    assert await mesh[1].node.publish(older) == 4 + 1
    assert await mesh[1].node.publish(newer) == 4 + 1
    assert await mesh[1].node.publish(older) == 1  # every member already holds seq 2
    for site in mesh:
        answered, kept = await evil.protocol.call_store(site.contact, node_key("st-1"), older)
        assert answered and kept is False
        assert site.store.values_for(node_key("st-1")) == [newer]
    evil.protocol.served = [older]  # a peer serving the old one does not win either
    found = await mesh[3].node.find_node_record("st-1")
    assert found is not None and found.seq == 2


async def test_publish_refuses_a_record_that_does_not_verify(
    mesh: list[Site], outsiders: TestFederation
) -> None:
    intruder = outsiders.issue("st-1")
    with pytest.raises(InvalidRecord):
        await mesh[1].node.publish(sign_record(node_record(intruder, "st-1"), intruder))


async def test_readers_ignore_a_revoked_member_s_records(
    mesh: list[Site], federation: TestFederation, caplog: pytest.LogCaptureFixture
) -> None:
    revoked = mesh[1]
    fid = fragment_ids(1, seed=19)[0]
    await revoked.node.publish(site_records(revoked))
    await revoked.node.publish(sign_record(provider_record(fid, "st-1"), revoked.signer))
    assert await mesh[4].node.find_node_record("st-1") is not None
    assert len(await mesh[4].node.find_providers(fid)) == 1

    federation.revoke(revoked.signer)  # every member's Federation re-reads the CRL file
    caplog.set_level(logging.INFO, logger="meshpacs.dht.network")
    assert await mesh[4].node.find_node_record("st-1") is None
    assert await mesh[4].node.find_providers(fid) == []
    assert "DHT record ignored: author not a member" in {r.getMessage() for r in caplog.records}
    with pytest.raises(InvalidRecord):
        await revoked.node.publish(site_records(revoked, seq=2))


# --- restart ---------------------------------------------------------------------------------


async def test_values_survive_a_restart_on_the_same_sqlite_file(
    mesh: list[Site], federation: TestFederation, tmp_path: Path, clock: Clock
) -> None:
    fid = fragment_ids(1, seed=15)[0]
    holder = provider_record(fid, "st-1")
    await mesh[1].node.publish(sign_record(holder, mesh[1].signer))
    await mesh[1].node.publish(site_records(mesh[1]))
    restarted = mesh[2]
    await restarted.close()
    for site in mesh:  # nobody left to ask: what the restarted node finds, it kept
        await site.close()

    again = await start_site(federation, tmp_path, "st-2", clock, signer=restarted.signer)
    try:
        assert len(again.store) == 2
        assert again.store.get(provider_key(fid)) is not None
        assert await again.node.find_providers(fid) == [holder]
        found = await again.node.find_node_record("st-1")
        assert found is not None and found.site_id == "st-1"
    finally:
        await again.close()


# --- placement -------------------------------------------------------------------------------


async def test_closest_sites_are_distinct_certified_members_by_xor_distance(
    mesh: list[Site], evil: Server, federation: TestFederation
) -> None:
    for site in mesh:
        await site.node.publish(site_records(site))
    absent = federation.issue("st-9")  # a member whose node is not running
    evil.protocol.own_record = sign_record(node_record(absent, "st-9"), absent)
    node_ids = {site.site_id: node_id_for(site.signer.public_key_bytes) for site in mesh}
    rng = random.Random(16)
    for _ in range(5):
        key = placement_key(rng.randbytes(16))
        found = await mesh[0].node.closest_sites(key, 10)
        partners = sorted(
            (site for site in node_ids if site != "st-0"),
            key=lambda site: int.from_bytes(node_ids[site], "big") ^ int.from_bytes(key, "big"),
        )
        assert [record.site_id for _, record in found] == partners  # no st-9, no self
        assert all(node_id == node_ids[record.site_id] for node_id, record in found)
        two = await mesh[0].node.closest_sites(key, 2)
        assert [record.site_id for _, record in two] == partners[:2]
    assert evil.protocol.asked >= 5  # the squatter was asked, and ignored
    with pytest.raises(ValueError):
        await mesh[0].node.closest_sites(b"short", 3)


# --- joining and eviction --------------------------------------------------------------------


async def test_one_missed_reply_does_not_evict_and_maintenance_takes_peers_back(
    federation: TestFederation, tmp_path: Path, clock: Clock
) -> None:
    hub = await start_site(federation, tmp_path, "st-hub", clock)
    joiner = await start_site(federation, tmp_path, "st-joiner", clock, max_missed_replies=3)
    try:
        await joiner.node.bootstrap([hub.node.address])
        hub_id, hub_address = hub.node.node_id, hub.node.address
        assert [c[0] for c in joiner.node.contacts()] == [hub_id]
        await hub.close()  # the hub goes quiet: every lookup misses one reply

        probe = fragment_ids(1, seed=17)[0]
        for _ in range(2):
            assert await joiner.node.find_providers(probe) == []
            assert [c[0] for c in joiner.node.contacts()] == [hub_id]
        await joiner.node.find_providers(probe)
        assert joiner.node.contacts() == []  # the third miss in a row evicts

        hub = await start_site(
            federation, tmp_path, "st-hub", clock, signer=hub.signer, port=hub_address[1]
        )
        await joiner.node.maintain_once()
        assert [c[0] for c in joiner.node.contacts()] == [hub_id]
    finally:
        await joiner.close()
        await hub.close()


async def test_a_node_joining_later_is_handed_every_record(
    federation: TestFederation, tmp_path: Path, clock: Clock
) -> None:
    first = await start_site(federation, tmp_path, "st-0", clock)
    second = await start_site(federation, tmp_path, "st-1", clock)
    late: Site | None = None
    try:
        await second.node.bootstrap([first.node.address])
        records = [
            sign_record(provider_record(fid, "st-1"), second.signer)
            for fid in fragment_ids(12, seed=18)
        ]
        for raw in records:
            await second.node.publish(raw)
        late = await start_site(federation, tmp_path, "st-2", clock)
        await late.node.bootstrap([first.node.address])
        # Hand-off is fire-and-forget: give the STOREs a moment to land.
        for _ in range(100):
            if len(late.store) == len(records):
                break
            await asyncio.sleep(0.01)
        assert sorted(value for _key, value in late.store) == sorted(records)
    finally:
        for site in (first, second, late):
            if site is not None:
                await site.close()


async def test_bootstrap_needs_ip_addresses(mesh: list[Site]) -> None:
    with pytest.raises(ValueError):
        await mesh[1].node.bootstrap([("localhost", 1)])


async def test_start_checks_the_node_id(verifier: Federation, tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "x.sqlite", verifier)
    try:
        with pytest.raises(ValueError):
            await DhtNode(store, verifier).start("127.0.0.1", 0, b"short")
    finally:
        store.close()


def test_hand_off_aims_at_the_key_itself(tmp_path: Path, verifier: Federation) -> None:
    """The package hashed stored keys again before measuring distance; keys are digests."""

    def node(first_byte: int, last_byte: int = 0) -> Node:
        return Node(bytes([first_byte]) + bytes(18) + bytes([last_byte]), "127.0.0.1", 1)

    store = RecordStore(tmp_path / "x.sqlite", verifier)
    try:
        protocol = MeshProtocol(
            node(0x00, 0x01), store, 2, rpc_timeout=RPC_TIMEOUT, max_missed_replies=3
        )
        for known in (node(0x40), node(0x80)):
            protocol.router.add_contact(known)
        near_zero, near_ff = bytes(20), b"\xff" * 20
        newcomer = node(0x20)
        # Key 00..00: we are the closest, the newcomer beats the farther of the k=2 known.
        assert protocol.should_hand_off(newcomer, near_zero)
        # Key ff..ff: 0x80.. is closer than we are, so it is the one to hand off.
        assert not protocol.should_hand_off(node(0xF0), near_ff)
        # Newcomer farther than both known nodes while k are known: not among the k closest.
        assert not protocol.should_hand_off(node(0xF0), near_zero)
    finally:
        store.close()


async def test_a_request_answered_after_the_node_stopped_raises_nothing(
    tmp_path: Path, verifier: Federation
) -> None:
    """A node stopping while it answers a request: the reply is dropped, not a task error."""
    store = RecordStore(tmp_path / "x.sqlite", verifier)
    loop = asyncio.get_running_loop()
    try:
        me = Node(bytes(19) + b"\x01", "127.0.0.1", 1)
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: MeshProtocol(me, store, 2, rpc_timeout=RPC_TIMEOUT, max_missed_replies=3),
            local_addr=("127.0.0.1", 0),
        )
        transport.close()
        await asyncio.sleep(0)  # the transport lets go of its socket and its loop
        await asyncio.sleep(0)
        ping = ["ping", [bytes(19) + b"\x02"]]
        # What the package alone does then (seen in a CI run, in a task nobody awaited):
        with pytest.raises(AttributeError):
            await KademliaProtocol._accept_request(protocol, b"m" * 20, ping, ("127.0.0.1", 9))
        await protocol._accept_request(b"m" * 20, ping, ("127.0.0.1", 9))  # dropped quietly
    finally:
        store.close()
