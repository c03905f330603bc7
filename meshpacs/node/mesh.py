"""The node's mesh side, wired: DHT, fragment server, backup pipeline, trusted replication.

Started by the daemon when ``[mesh] enabled`` is set and the site is enrolled::

    site secret ─► NodeIdentity ─► MutualTls (federation CA, CRL, node certificate)
                                     │
          ┌──────────────────────────┼─────────────────────────────┐
          ▼                          ▼                             ▼
    DhtNode (UDP)             FragmentServer (TLS)           PartnerPool
    node record, provider     partners' fragments and        (addresses from node
    records, closest sites    records, into FragmentStore    records, checked mTLS)
          │                   and HeldRecords                      │
          └───────────────► BackupService ◄────────────────────────┘
                             (+ TrustedReplicator for the catalog records)
                            Auditor (asks holders to prove they keep our shares)
                            Repairer (rebuilds shares lost with a site or to rot)
                            LeaseRenewer (asks holders to keep our shares longer)
                            Forgetter (deletes a forgotten study everywhere)
                            Delegator (delegations and repair manifests for the
                            trusted peers)
    DelegateRepairer (rebuilds the shares of a down site that named this one trusted)
    Scrubber (re-reads what partners store here, on a schedule)
    expiry (removes partners' shares whose lease ran out long ago)

The node publishes its own signed node record at start and every ``republish`` seconds
(a fresh sequence number each time, so a stale copy can never win), and a provider
record for every fragment a partner stores with it. It writes what it knows of its
peers to ``state/peers.json`` for ``meshpacs status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshpacs.audit.challenge import Challenge
from meshpacs.backup.delegation import Delegator
from meshpacs.backup.escrow import EscrowDepositor
from meshpacs.backup.placement import Candidate
from meshpacs.backup.replicate import TrustedReplicator
from meshpacs.backup.service import BackupService, BackupSettings
from meshpacs.backup.upload import UploadPolicy
from meshpacs.dht import (
    DhtNode,
    Ed25519Signer,
    NodeRecord,
    ProviderRecord,
    cert_fingerprint,
    sign_record,
)
from meshpacs.dht import RecordStore as DhtRecordStore
from meshpacs.dicom.storage import InstanceStore
from meshpacs.errors import ConfigError, MeshError
from meshpacs.federation import MutualTls, SiteFederationFiles
from meshpacs.federation.delegation import verify_delegation
from meshpacs.keys import NodeIdentity, SiteKeys, SiteSecret
from meshpacs.metadata import Catalog, health
from meshpacs.metadata.ledger import BundlePlan
from meshpacs.node.config import NodeConfig
from meshpacs.node.expiry import expire_on_schedule
from meshpacs.node.leave import leave_requested
from meshpacs.node.scrub import Scrubber, scrub_on_schedule
from meshpacs.node.trail_events import ExportingPublisher, peer_refused_recorder
from meshpacs.recovery.gather import FindHolders, pool_fetch
from meshpacs.store import FragmentStore, QuotaPolicy, StoredFragment
from meshpacs.store.records import HeldRecords
from meshpacs.trail import TrailWriter
from meshpacs.transport.frames import RecordKind
from meshpacs.transport.pool import PartnerPool
from meshpacs.transport.server import FragmentServer
from meshpacs.upkeep import (
    Auditor,
    AuditSettings,
    DelegateRepairer,
    DelegateSettings,
    Forgetter,
    LeaseRenewer,
    LeaseSettings,
    Repairer,
    RepairSettings,
)

__all__ = ["DELEGATE_FILE", "PEERS_FILE", "SCRUB_FILE", "MeshNode", "PeerState"]

LOG = logging.getLogger("meshpacs.mesh")
PEERS_FILE = "peers.json"
SCRUB_FILE = "scrub.json"
LEASES_FILE = "leases.json"  # the owner's last lease renewal (upkeep.leases)
EXPIRY_FILE = "expiry.json"  # what the holder removed out of lease (node.expiry)
DELEGATE_FILE = "delegate.json"  # what this node did as a down site's delegate
RECORD_LIFETIME = 2 * 86400  # node records; republished hourly
PROVIDER_LIFETIME = 3 * 86400  # provider records; every one re-announced daily
REPUBLISH_SECONDS = 3600.0
# Every sealed catalog record is sent to the trusted peers again this often (the
# "snapshot"): a peer that lost its copy, or joined the trusted set later, catches up.
SNAPSHOT_SECONDS = 86400.0


@dataclass(frozen=True)
class PeerState:
    site_id: str
    online: bool
    trusted: bool


class _MeshPartners:
    """The backup pipeline's view of the mesh (``backup.service.Partners``)."""

    def __init__(self, dht: DhtNode, pool: PartnerPool) -> None:
        self._dht = dht
        self._pool = pool

    async def candidates(self, key: bytes, count: int) -> list[Candidate]:
        found = await self._dht.closest_sites(key, count)
        out = []
        for node_id, record in found:
            self._pool.remember(record)
            out.append(Candidate(record.site_id, node_id, record.capacity_bytes))
        return out

    async def put(self, site_id: str, fragment_id: str, path: Path) -> None:
        await self._pool.put_fragment(site_id, fragment_id, path)

    async def put_stream(
        self, site_id: str, fragment_id: str, size: int, chunks: AsyncIterator[bytes]
    ) -> None:
        await self._pool.put_fragment_stream(site_id, fragment_id, size, chunks)

    async def delete(self, site_id: str, fragment_id: str) -> None:
        await self._pool.delete_fragment(site_id, fragment_id)


def dht_holders(dht: DhtNode) -> FindHolders:
    """Sites whose signed provider records say they hold a fragment."""

    async def find(fragment: str) -> list[str]:
        return [record.holder_site_id for record in await dht.find_providers(fragment)]

    return find


class _MeshHolders:
    """The auditor's view of the holders (``upkeep.Holders``)."""

    def __init__(self, pool: PartnerPool) -> None:
        self._pool = pool

    async def audit(self, site_id: str, fragment_id: str, challenge: Challenge) -> bytes | None:
        async with await self._pool.connect(site_id) as conn:
            return await conn.audit_fragment(fragment_id, challenge)


class MeshNode:
    """Everything the node does with partners; ``start`` it, ``run`` it, ``close`` it."""

    def __init__(
        self,
        config: NodeConfig,
        secret: SiteSecret,
        catalog: Catalog,
        instances: InstanceStore,
        *,
        dicom_port: int,
        clock: Callable[[], float] = time.time,
        trail: TrailWriter | None = None,
    ) -> None:
        self.config = config
        keys = SiteKeys.derive(secret)
        self._keys = keys
        self._catalog = catalog
        self._instances = instances
        self._dicom_port = dicom_port
        self._clock = clock
        self.identity = NodeIdentity.from_keys(keys)
        files = SiteFederationFiles.for_site(config.data_dir)
        if not files.installed():
            raise ConfigError(
                f"site {config.site.id} is not enrolled in a federation ({files.directory} has"
                " no certificate): run `meshpacs federation enroll` or `install` first,"
                " or set [mesh] enabled = false"
            )
        self.tls = MutualTls(self.identity, files)
        cert = x509.load_pem_x509_certificate(files.node_certificate_pem())
        self._cert_der = cert.public_bytes(serialization.Encoding.DER)
        self._signer = Ed25519Signer.from_identity(self.identity, self._cert_der)
        self._dht_store = DhtRecordStore(config.dht_path, self.tls.federation, clock=clock)
        self.dht = DhtNode(
            self._dht_store,
            self.tls.federation,
            rpc_timeout=config.mesh.dht_timeout_seconds,
            clock=clock,
        )
        mesh, lease = config.mesh, config.maintenance.lease_seconds
        quota = QuotaPolicy(
            mesh.partner_quota_bytes, lease_seconds=lease, max_lease_seconds=3 * lease
        )
        self.fragments = FragmentStore(config.fragments_dir, quota, clock=clock)
        self.records = HeldRecords(config.records_dir)
        self.server = FragmentServer(
            self.fragments,
            self.records,
            self.tls.server_context(),
            self.tls.peer_member,
            on_stored=self._provide,
            on_corrupt_report=self._corrupt_reported,
            verify_delegation=self._check_delegation,
            # A refused TLS peer is a Security Alert in the site's trail.
            on_refused=peer_refused_recorder(trail) if trail is not None else None,
        )
        self.pool = PartnerPool(self.dht, self.tls)
        self._partners = _MeshPartners(self.dht, self.pool)
        b, m = config.backup, config.maintenance
        self.delegator = Delegator(
            site_id=config.site.id,
            identity=self.identity,
            certificate_der=self._cert_der,
            fragment_id_key=keys.fragment_id,
            catalog=catalog,
            trusted=mesh.trusted_peers,
            connect=self.pool.connect,
            threshold=m.repair_threshold,
            clock=clock,
        )
        self.replicator = TrustedReplicator(
            site_id=config.site.id,
            catalog_key=keys.catalog,
            catalog=catalog,
            trusted=mesh.trusted_peers,
            put_record=self._put_catalog_record,
            after_record=self.delegator.send_manifests,
        )
        partners = self._partners
        settings = BackupSettings(
            plan=BundlePlan(b.k, b.n, b.segment_bytes, b.max_bundle_bytes),
            happy=b.happy,
            stable_seconds=config.catalog.stable_after_seconds,
            upload=UploadPolicy(),
            keep_local_seconds=b.keep_local_seconds,
            challenges_per_share=m.audit_challenges,
            reputation_floor=m.reputation_floor,
            reputation_half_life=m.reputation_half_life_seconds,
        )
        self.backup = BackupService(
            site_id=config.site.id,
            keys=keys,
            catalog=catalog,
            instance_path=instances.path_for,
            partners=partners,
            settings=settings,
            work_dir=config.backup_work_dir,
            # Each study protected is also an Export in the site's trail.
            publisher=(
                self.replicator
                if trail is None
                else ExportingPublisher(self.replicator, trail, catalog, keys.catalog)
            ),
            clock=clock,
        )
        self.auditor = Auditor(
            catalog,
            _MeshHolders(self.pool),
            AuditSettings(
                audits_per_hour=m.audits_per_hour,
                timeout_seconds=m.audit_timeout_seconds,
                # Asked again several times within the grace, so that a site back from a
                # short outage is seen before it counts as lost.
                retry_seconds=min(600.0, m.lost_after_seconds / 4),
                half_life=m.reputation_half_life_seconds,
                min_gap_seconds=m.audit_spread_seconds / max(1, m.audit_challenges),
            ),
            clock=clock,
        )
        self.scrubber = Scrubber(self.fragments, bytes_per_second=m.scrub_bytes_per_second)
        self.forgetter = Forgetter(
            catalog=catalog,
            partners=self.pool,
            catalog_key=keys.catalog,
            trusted=tuple(mesh.trusted_peers),
            instance_path=instances.path_for,
            withheld=self.replicator.withheld,
            interval_seconds=b.pass_interval_seconds,
            clock=clock,
        )
        self.leases = LeaseRenewer(
            catalog,
            self.pool,
            LeaseSettings(
                lease_seconds=m.lease_seconds,
                interval_seconds=m.lease_renew_seconds,
                retry_seconds=min(3600.0, m.lease_renew_seconds),
            ),
            state_file=config.state_dir / LEASES_FILE,
            clock=clock,
        )
        self.repairer = Repairer(
            site_id=config.site.id,
            fragment_id_key=keys.fragment_id,
            catalog=catalog,
            partners=partners,
            fetch=pool_fetch(self.pool),
            find_holders=dht_holders(self.dht),
            work_dir=config.tmp_dir / "repair",
            settings=RepairSettings(
                threshold=m.repair_threshold,
                lost_after_seconds=m.lost_after_seconds,
                interval_seconds=m.repair_interval_seconds,
                reputation_floor=m.reputation_floor,
                half_life=m.reputation_half_life_seconds,
            ),
            publisher=self.replicator,
            has_fragment=self.pool.has_fragment,
            clock=clock,
        )
        self.delegate = DelegateRepairer(
            site_id=config.site.id,
            identity=self.identity,
            records=self.records,
            ping=self.pool.ping,
            connect_for=self.pool.connect_for,
            candidates=self._delegate_candidates,
            find_holders=dht_holders(self.dht),
            work_dir=config.tmp_dir / "delegate",
            settings=DelegateSettings(
                lost_after_seconds=m.lost_after_seconds,
                interval_seconds=m.repair_interval_seconds,
            ),
            state_file=config.state_dir / DELEGATE_FILE,
            clock=clock,
        )
        self.escrow = EscrowDepositor(
            site_id=config.site.id,
            secret=secret,
            trusted=mesh.trusted_peers,
            connect=self.pool.connect,
            state_path=config.state_dir / "escrow.json",
        )
        # Peers, escrow and replication are checked three backup passes apart (30 s by
        # default): often enough for status, rarely enough to cost nothing.
        self._upkeep_seconds = max(1.0, 3 * config.backup.pass_interval_seconds)
        self.transport_port = 0
        self.dht_port = 0
        self._seq = 0

    async def start(self) -> None:
        mesh = self.config.mesh
        _, self.dht_port = await self.dht.start(mesh.bind, mesh.dht_port, self.identity.node_id)
        _, self.transport_port = await self.server.start(mesh.bind, mesh.transport_port)
        peers = [(d.host, d.port) for d in mesh.bootstrap]
        answered = await self.dht.bootstrap(peers) if peers else 0
        LOG.info(
            "mesh: DHT on UDP %d (%d of %d bootstrap peers answered), fragments on TCP %d",
            self.dht_port,
            answered,
            len(peers),
            self.transport_port,
        )
        await self.publish_node_record()
        await self.replicator.resend_all()

    async def run(self, stop: asyncio.Event) -> None:
        """Backup passes, audits, scrubs and mesh upkeep until ``stop`` is set."""
        interval = self.config.backup.pass_interval_seconds
        duties = [
            asyncio.create_task(self._upkeep(stop)),
            asyncio.create_task(self.auditor.run(stop)),
            asyncio.create_task(self.repairer.run(stop)),
            asyncio.create_task(self.delegate.run(stop)),
            asyncio.create_task(self.leases.run(stop)),
            asyncio.create_task(self.forgetter.run(stop)),
            asyncio.create_task(
                expire_on_schedule(
                    self.fragments,
                    stop,
                    grace_seconds=self.config.maintenance.expired_grace_seconds,
                    interval_seconds=min(3600.0, self.config.maintenance.lease_renew_seconds),
                    state_file=self.config.state_dir / EXPIRY_FILE,
                    clock=self._clock,
                )
            ),
            asyncio.create_task(
                scrub_on_schedule(
                    self.scrubber,
                    stop,
                    interval=self.config.maintenance.scrub_interval_seconds,
                    state_file=self.config.state_dir / SCRUB_FILE,
                    clock=self._clock,
                    report=self.report_quarantined,
                )
            ),
        ]
        try:
            await self.backup.run(stop, interval=interval)
        finally:
            for duty in duties:
                duty.cancel()
            for duty in duties:
                with contextlib.suppress(asyncio.CancelledError):
                    await duty

    async def close(self) -> None:
        await self.server.close()
        await self.dht.stop()
        self.fragments.close()
        self._dht_store.close()

    def _next_seq(self) -> int:
        # Milliseconds since the epoch, and never twice the same: survives restarts.
        self._seq = max(self._seq + 1, int(self._clock() * 1000))
        return self._seq

    async def _capacity(self) -> int:
        """What this node offers partners now: its node record's ``capacity_bytes``."""
        mesh = self.config.mesh
        held = await asyncio.to_thread(self.fragments.total_usage)
        offered = max(0, mesh.offer_bytes - held)
        return 0 if self.server.leaving else min(offered, mesh.partner_quota_bytes)

    async def _delegate_candidates(self, key: bytes, count: int) -> list[Candidate]:
        """Sites for a delegate's repair: this node too (it is not the owner), which the
        DHT's closest sites never list; with few sites up it may be the only one left."""
        found = await self._partners.candidates(key, count)
        me = self.config.site.id
        if all(candidate.site_id != me for candidate in found):
            found.append(Candidate(me, self.identity.node_id, await self._capacity()))
        return found

    async def publish_node_record(self) -> int:
        mesh, dicom = self.config.mesh, self.config.dicom
        record = NodeRecord(
            site_id=self.config.site.id,
            cert_fingerprint=cert_fingerprint(self._cert_der),
            transport_host=mesh.advertise_host,
            transport_port=self.transport_port,
            dicom_host=mesh.advertise_host,
            dicom_port=self._dicom_port,
            dicom_ae_title=dicom.ae_title,
            capacity_bytes=await self._capacity(),
            seq=self._next_seq(),
            expires_at=int(self._clock()) + RECORD_LIFETIME,
        )
        return await self.dht.publish(sign_record(record, self._signer))

    def _check_delegation(self, token: bytes, presenter: str) -> str:
        """The owner a trusted peer may act for with ``token`` (the server's check)."""
        found = verify_delegation(
            token,
            presenter=presenter,
            verify_certificate=self.tls.federation.verify,
            now=self._clock(),
        )
        return found.owner_site

    async def _corrupt_reported(self, holder_site: str, fragment_id: str) -> bool:
        """A holder's scrub found our fragment bad: fail the placement now, for repair."""
        now = self._clock()
        known = await self._catalog.write(
            partial(health.record_corrupt_report, holder_site=holder_site,
                    fragment_id=fragment_id, now=now)
        )  # fmt: skip
        if known:
            LOG.warning(
                "mesh: site %s reports a share of ours failed its scrub; it will be rebuilt",
                holder_site,
            )
        return known

    async def report_quarantined(self, quarantined: list[StoredFragment]) -> int:
        """Tell each owner of a quarantined fragment held here; how many owners knew it.

        Sent after every scrub pass for every fragment still quarantined, so an owner
        that was down hears it later; the owner's repair then deletes the bad copy.
        """
        told = 0
        unreachable: set[str] = set()
        for record in quarantined:
            if record.owner_site in unreachable:
                continue
            try:
                told += await self.pool.report_corrupt(record.owner_site, record.fragment_id)
            except (MeshError, OSError, TimeoutError) as error:
                unreachable.add(record.owner_site)
                LOG.info("scrub: site %s not told of its quarantined share: %s",
                         record.owner_site, error)  # fmt: skip
        return told

    async def _provide(self, fragment_id: str, owner_site: str = "") -> None:
        record = ProviderRecord(
            fragment_id=fragment_id,
            holder_site_id=self.config.site.id,
            seq=self._next_seq(),
            expires_at=int(self._clock()) + PROVIDER_LIFETIME,
        )
        try:
            await self.dht.publish(sign_record(record, self._signer))
        except MeshError as error:
            LOG.warning("provider record not published: %s", error)

    async def reannounce_held(self) -> int:
        """Publish a fresh provider record for every fragment held here; how many.

        DHT records expire (so a holder that vanished stops being advertised); a holder
        still holding a fragment says so again well before its record runs out.
        """
        count = 0
        after: str | None = None
        while True:
            page = await asyncio.to_thread(self.fragments.held_ids, after=after, limit=1000)
            for fragment_id in page:
                await self._provide(fragment_id)
            count += len(page)
            if len(page) < 1000:
                return count
            after = page[-1]

    async def _put_catalog_record(self, peer: str, record_id: str, sealed: bytes) -> None:
        await self.pool.put_record(peer, RecordKind.CATALOG, record_id, sealed)

    async def _upkeep(self, stop: asyncio.Event) -> None:
        published = snapshot = self._clock()
        while not stop.is_set():
            try:
                await self._rejoin()
                await self._follow_leave_request()
                if self._clock() - published > REPUBLISH_SECONDS:
                    await self.publish_node_record()
                    published = self._clock()
                if self._clock() - snapshot > SNAPSHOT_SECONDS:
                    await self.replicator.resend_all()  # every record again, once a day
                    await self.reannounce_held()
                    snapshot = self._clock()
                await self.replicator.flush()
                await self.delegator.ensure_tokens()
                await self.escrow.ensure_deposited()
                self.write_peer_state(await self.peer_states())
            except MeshError as error:
                LOG.warning("mesh upkeep: %s", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._upkeep_seconds)

    async def _follow_leave_request(self) -> None:
        """``meshpacs node leave`` filed its request: stop taking shares, and say so."""
        if self.server.leaving or leave_requested(self.config) is None:
            return
        self.server.leaving = True
        LOG.warning(
            "mesh: this site is leaving the federation: it takes no new shares, and owners"
            " are told at their next audit to rebuild theirs elsewhere"
        )
        await self.publish_node_record()

    async def _rejoin(self) -> None:
        """Bootstrap again while the routing table knows fewer nodes than were configured.

        A node whose bootstrap peers were down when it started (or that lost its contacts
        while partners restarted) would otherwise stay alone until the DHT's own
        maintenance, minutes later; nobody contacts a node that contacts nobody.
        """
        peers = [(d.host, d.port) for d in self.config.mesh.bootstrap]
        if peers and len(self.dht.contacts()) < len(peers):
            await self.dht.bootstrap(peers)
            await self.publish_node_record()

    async def peer_states(self) -> list[PeerState]:
        """Member sites seen in the DHT (online) and the trusted peers (pinged)."""
        seen = await self.dht.closest_sites(self.identity.node_id, 20)
        online = {record.site_id for _, record in seen}
        trusted = set(self.config.mesh.trusted_peers)
        for peer in trusted - online:
            with contextlib.suppress(MeshError):
                await self.pool.ping(peer)
                online.add(peer)
        sites = sorted(online | trusted)
        return [PeerState(s, s in online, s in trusted) for s in sites if s != self.config.site.id]

    def write_peer_state(self, peers: list[PeerState]) -> None:
        state_dir = self.config.state_dir
        state_dir.mkdir(mode=0o700, exist_ok=True)
        document = {
            "updated_at": self._clock(),
            "peers": [
                {"site_id": p.site_id, "online": p.online, "trusted": p.trusted} for p in peers
            ],
            "replication_waiting": self.replicator.waiting,
        }
        temp = state_dir / (PEERS_FILE + ".tmp")
        temp.write_text(json.dumps(document, indent=2), encoding="utf-8")
        os.replace(temp, state_dir / PEERS_FILE)
