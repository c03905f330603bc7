"""The delegate's checks over real mutual TLS: one acting-for connection per holder per pass."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshpacs.backup.delegation import DELEGATION_RECORD_ID
from meshpacs.backup.placement import Candidate
from meshpacs.errors import PeerUnreachable
from meshpacs.federation import FederationCA, MutualTls, create_federation_ca
from meshpacs.federation.delegation import Delegation, sign_delegation, verify_delegation
from meshpacs.metadata.manifest import RepairManifest, seal_manifest
from meshpacs.store import FragmentStore, QuotaPolicy
from meshpacs.store.records import HeldRecords
from meshpacs.transport.client import PartnerConnection
from meshpacs.transport.frames import RecordKind
from meshpacs.transport.server import FragmentServer, ServerLimits
from meshpacs.upkeep.delegate import DelegateRepairer, DelegateSettings

from ..federation.helpers import Site, make_site
from ..node.logfields import event_fields
from ..store.helpers import Fragment, make_bundle, put

OWNER, DELEGATE = "owner", "delegate"
HOLDERS = ("holder-0", "holder-1", "holder-2")
BUNDLES = 3  # each with share s at holder-s


@dataclass
class World:
    ca: FederationCA
    root: Path
    delegate: Site
    token: bytes
    records: HeldRecords
    ports: dict[str, int] = field(default_factory=dict)
    servers: list[FragmentServer] = field(default_factory=list)
    stores: list[FragmentStore] = field(default_factory=list)
    bundles: list[list[Fragment]] = field(default_factory=list)
    connections: list[PartnerConnection] = field(default_factory=list)  # acting-for, opened
    closed: set[int] = field(default_factory=set)  # id() of those closed

    @property
    def opened(self) -> list[str]:
        return sorted(conn.site_id for conn in self.connections)

    def all_closed(self) -> bool:
        return all(id(conn) in self.closed for conn in self.connections)

    async def connect_for(self, site: str, delegation: bytes) -> PartnerConnection:
        """As the node's pool does it, counted: connect, check the holder, ACT_FOR."""
        mtls = MutualTls(self.delegate.identity, self.delegate.files)
        conn = await PartnerConnection.open(
            site, "127.0.0.1", self.ports[site], mtls.client_context(), mtls.peer_member,
            timeout=5,
        )  # fmt: skip
        await conn.act_for(delegation)
        self.connections.append(conn)
        close = conn.close

        async def counted_close() -> None:
            self.closed.add(id(conn))
            await close()

        conn.close = counted_close  # type: ignore[method-assign]
        return conn


def cert_der(site: Site) -> bytes:
    cert = x509.load_pem_x509_certificate(site.files.node_certificate_pem())
    return cert.public_bytes(serialization.Encoding.DER)


async def start_holder(world: World, site_id: str, seed: int, idle_seconds: float) -> None:
    holder = make_site(world.ca, world.root / "sites", site_id, seed)
    federation = holder.files.federation()
    mtls = MutualTls(holder.identity, holder.files)

    def check(data: bytes, presenter: str) -> str:
        return verify_delegation(
            data, presenter=presenter, verify_certificate=federation.verify, now=time.time()
        ).owner_site

    store = FragmentStore(world.root / site_id / "fragments", QuotaPolicy(10**8))
    server = FragmentServer(
        store, HeldRecords(world.root / site_id / "records"), mtls.server_context(),
        mtls.peer_member, limits=ServerLimits(idle_seconds=idle_seconds, io_seconds=5),
        verify_delegation=check,
    )  # fmt: skip
    _, world.ports[site_id] = await server.start("127.0.0.1", 0)
    world.servers.append(server)
    world.stores.append(store)


@pytest.fixture
def holder_1_idle() -> float:
    """How long holder-1 keeps an idle connection open."""
    return 10.0


@pytest.fixture
async def world(tmp_path: Path, holder_1_idle: float) -> AsyncIterator[World]:
    """An owner that is down, its delegate's kept token and manifests, and three holders
    each with one share of every bundle."""
    ca = create_federation_ca(tmp_path / "ca", "Test Mesh")
    owner = make_site(ca, tmp_path / "sites", OWNER, 1)
    delegate = make_site(ca, tmp_path / "sites", DELEGATE, 2)
    now = int(time.time())
    token = sign_delegation(
        Delegation(OWNER, DELEGATE, now, now + 7 * 86400, cert_der(owner)), owner.identity
    )
    records = HeldRecords(tmp_path / DELEGATE / "records")
    records.put(RecordKind.DELEGATION, OWNER, DELEGATION_RECORD_ID, token)
    world = World(ca, tmp_path, delegate, token, records)
    for number, site_id in enumerate(HOLDERS):
        await start_holder(world, site_id, 10 + number, holder_1_idle if number == 1 else 10)
    for seed in range(BUNDLES):
        fragments = make_bundle(seed=40 + seed, k=2, n=len(HOLDERS))
        for fragment, store in zip(fragments, world.stores, strict=True):
            put(store, fragment, OWNER, expected_set_hash=fragment.bundle.ref.set_hash)
        manifest = RepairManifest(
            fragments[0].bundle.ref, 0, (DELEGATE,), tuple(f.fid for f in fragments),
            tuple((site,) for site in HOLDERS),
        )  # fmt: skip
        record_id, sealed = seal_manifest(
            manifest, delegate.identity.public_key_bytes, owner_site=OWNER, peer_site=DELEGATE
        )
        records.put(RecordKind.REPAIR, OWNER, record_id, sealed)
        world.bundles.append(fragments)
    yield world
    for server in world.servers:
        await server.close()
    for store in world.stores:
        store.close()


async def owner_is_down(site: str) -> None:
    if site == OWNER:
        raise PeerUnreachable(f"site {site} is down")


async def no_candidates(key: bytes, wanted: int) -> list[Candidate]:
    return []


def repairer(world: World, find_holders: Callable[[str], Awaitable[list[str]]]) -> DelegateRepairer:
    return DelegateRepairer(
        site_id=DELEGATE,
        identity=world.delegate.identity,
        records=world.records,
        ping=owner_is_down,
        connect_for=world.connect_for,
        candidates=no_candidates,
        find_holders=find_holders,
        work_dir=world.root / "work",
        settings=DelegateSettings(lost_after_seconds=0),  # down once is down for long
    )


async def nobody(fragment_id: str) -> list[str]:
    return []


async def test_each_pass_checks_every_share_on_one_connection_per_holder(world: World) -> None:
    delegate = repairer(world, nobody)
    for passes in (1, 2):
        report = await delegate.repair_once()
        assert report.acting_for == (OWNER,)
        assert (report.checked, report.repaired, report.failed, report.unrecoverable) == (
            BUNDLES, 0, 0, 0,
        )  # fmt: skip
        # Nine HAS requests, three connections; none left open when the pass ends.
        assert world.opened == sorted(HOLDERS * passes)
        assert world.all_closed()


@pytest.mark.parametrize("holder_1_idle", [0.5])
async def test_a_connection_the_holder_dropped_is_opened_again_once(world: World) -> None:
    at_holder_1 = {fragments[1].fid for fragments in world.bundles}
    asked: list[str] = []

    async def slow_lookup(fragment_id: str) -> list[str]:
        """Just before holder-1 is asked a second time, a pause it drops the connection in."""
        if fragment_id in at_holder_1:
            asked.append(fragment_id)
            if len(asked) == 2:
                await asyncio.sleep(1.5)  # idle for 0.5 s is enough
        return []

    report = await repairer(world, slow_lookup).repair_once()
    # Still good: without a second try holder-1 would count as lost, and the bundle as
    # one to repair (with no site to take a share, a failed one).
    assert (report.checked, report.repaired, report.failed, report.unrecoverable) == (
        BUNDLES, 0, 0, 0,
    )  # fmt: skip
    assert world.opened == sorted([*HOLDERS, "holder-1"])
    assert world.all_closed()


async def test_a_pass_and_each_bundle_it_could_not_rebuild_log_fields(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    await world.servers[2].close()  # holder-2 is gone; no site is free to take its shares
    caplog.set_level(logging.INFO, logger="meshpacs.delegate")
    report = await repairer(world, nobody).repair_once()
    assert (report.checked, report.failed) == (BUNDLES, BUNDLES)
    (line,) = event_fields(caplog.records, "delegate_pass")
    assert line["level"] == "INFO" and line["logger"] == "meshpacs.delegate"
    assert (line["owners"], line["owners_down"], line["acting_for"]) == (1, 1, [OWNER])
    assert (line["bundles_checked"], line["repaired"], line["failed"]) == (BUNDLES, 0, BUNDLES)
    assert (line["unrecoverable"], line["shares_placed"]) == (0, 0)
    failed = event_fields(caplog.records, "delegate_failed")
    assert len(failed) == BUNDLES and {f["owner"] for f in failed} == {OWNER}
    assert all(re.fullmatch(r"[0-9a-f]{12}", f["bundle"]) and f["missing"] == 1 for f in failed)
    assert len({f["bundle"] for f in failed}) == BUNDLES


async def test_a_bundle_short_of_k_is_logged_with_its_counts(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    for server in world.servers[1:]:
        await server.close()  # one share of each bundle left; k is 2
    caplog.set_level(logging.INFO, logger="meshpacs.delegate")
    await repairer(world, nobody).repair_once()
    short = event_fields(caplog.records, "delegate_unrecoverable")
    assert [(f["owner"], f["good"], f["k"], f["n"]) for f in short] == [(OWNER, 1, 2, 3)] * BUNDLES
    (line,) = event_fields(caplog.records, "delegate_pass")
    assert (line["unrecoverable"], line["failed"]) == (BUNDLES, 0)
