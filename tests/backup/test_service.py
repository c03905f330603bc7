"""The backup pipeline's order over a real catalog, real files and the real codec.

Partners here are directories on this machine (the transport has its own tests); what
is checked is the pipeline: what gets bundled, where shares go, what the ledger says,
and that any k of the fragments placed give back the exact instance bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meshpacs.backup.placement import Candidate
from meshpacs.backup.service import BackupService, BackupSettings
from meshpacs.backup.upload import UploadPolicy
from meshpacs.dicom.storage import InstanceStore
from meshpacs.erasure import decode_bundle_to_memory
from meshpacs.erasure.layout import BundleRef, CodingParams
from meshpacs.errors import PeerUnreachable
from meshpacs.keys import SiteKeys, SiteSecret, unwrap_data_key
from meshpacs.metadata import Catalog, StudyState, ledger
from meshpacs.metadata.ledger import BundlePlan

from ..metadata.helpers import FakeClock, make_record


@dataclass
class DirPartners:
    """Partner sites as directories; ``down`` sites refuse every put."""

    root: Path
    sites: list[str]
    seed: int
    down: set[str] = field(default_factory=set)
    stalled: set[str] = field(default_factory=set)  # take one chunk, then nothing more
    broken: set[str] = field(default_factory=set)  # fail after the first chunk
    # The first site asked to take a streamed share becomes broken or stalled: placement
    # depends on the bundle's random ID, so the faulty site is chosen where it will be used.
    fault_first: str = ""
    faulty: str = ""
    puts: int = 0
    streams: int = 0

    async def candidates(self, key: bytes, count: int) -> list[Candidate]:
        rng = random.Random(self.seed)
        return [Candidate(site, rng.randbytes(20), 10**12) for site in self.sites][:count]

    async def put(self, site_id: str, fragment_id: str, path: Path) -> None:
        self.puts += 1
        await asyncio.sleep(0)
        if site_id in self.down | self.broken | self.stalled:
            raise PeerUnreachable(f"site {site_id} is down")
        target = self.root / site_id / fragment_id
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)

    async def put_stream(
        self, site_id: str, fragment_id: str, size: int, chunks: AsyncIterator[bytes]
    ) -> None:
        self.streams += 1
        if self.fault_first and not self.faulty and site_id not in self.down:
            self.faulty = site_id
            getattr(self, self.fault_first).add(site_id)
        if site_id in self.down:
            raise PeerUnreachable(f"site {site_id} is down")
        target = self.root / site_id / fragment_id
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        try:
            with open(partial, "wb") as out:
                async for chunk in chunks:
                    out.write(chunk)
                    if site_id in self.broken:
                        raise PeerUnreachable(f"site {site_id}: connection lost")
                    if site_id in self.stalled:
                        await asyncio.sleep(3600)
            if partial.stat().st_size != size:
                raise PeerUnreachable(f"site {site_id}: short fragment")
            partial.rename(target)
        finally:
            partial.unlink(missing_ok=True)

    async def delete(self, site_id: str, fragment_id: str) -> None:
        (self.root / site_id / fragment_id).unlink(missing_ok=True)

    def held(self) -> dict[str, list[Path]]:
        return {
            p.name: sorted(p.iterdir())
            for p in sorted(self.root.iterdir())
            if p.is_dir() and any(p.iterdir())
        }


@dataclass
class Site:
    catalog: Catalog
    store: InstanceStore
    keys: SiteKeys
    clock: FakeClock
    partners: DirPartners
    work: Path

    def service(
        self, k: int = 2, n: int = 4, happy: int = 3, cap: int = 10**6, stall: float = 10.0
    ) -> BackupService:
        settings = BackupSettings(
            plan=BundlePlan(k=k, n=n, segment_size=4096, max_bundle_bytes=cap),
            happy=happy,
            stable_seconds=60,
            spare_sites=2,
            upload=UploadPolicy(hedge_min=5.0, tick=0.01, stall_seconds=stall),
        )
        return BackupService(
            site_id="owner",
            keys=self.keys,
            catalog=self.catalog,
            instance_path=self.store.path_for,
            partners=self.partners,
            settings=settings,
            work_dir=self.work,
            clock=self.clock,
        )

    async def receive(self, count: int, start: int = 1, size: int = 5000) -> dict[str, bytes]:
        rng = random.Random(start)
        sent = {}
        for i in range(start, start + count):
            data = rng.randbytes(size)
            self.store.write(data)
            await self.catalog.add_instances(
                [make_record(f"1.2.3.4.{i}", data=data, instance_number=i)]
            )
            sent[f"1.2.3.4.{i}"] = data
        self.clock.advance(61)
        return sent


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    clock = FakeClock()
    sites = [f"partner-{i}" for i in range(6)]
    async with await Catalog.open(tmp_path / "catalog.sqlite", clock=clock) as catalog:
        yield Site(
            catalog=catalog,
            store=InstanceStore(tmp_path / "instances", tmp_path / "tmp"),
            keys=SiteKeys.derive(SiteSecret.generate()),
            clock=clock,
            partners=DirPartners(tmp_path / "partners", ["owner", *sites], seed=5),
            work=tmp_path / "work",
        )


async def decode_all(site: Site, k: int) -> dict[str, bytes]:
    """Every bundle of the ledger decoded from k fragments taken from the partners' dirs."""
    out: dict[str, bytes] = {}
    rows = await site.catalog.read(
        lambda db: [ledger.bundle(db, r[0]) for r in db.execute("SELECT id FROM bundles")]
    )
    for row in rows:
        assert row.length is not None and row.set_hash is not None
        placed = await site.catalog.read(lambda db, r=row.ref: ledger.placements(db, r))
        files = [site.partners.root / p.holder_site / p.fragment_id for p in placed][:k]
        ref = BundleRef(
            row.bundle_id, CodingParams(row.k, row.n, row.segment_size), row.length, row.set_hash
        )
        key = unwrap_data_key(site.keys.key_wrap, row.bundle_id, row.wrapped_key)
        with contextlib.ExitStack() as stack:
            sources = [stack.enter_context(open(f, "rb")) for f in files]
            for entry, data in decode_bundle_to_memory(ref, key, sources):
                assert hashlib.sha256(data).digest() == entry.sha256
                out[entry.sop_instance_uid] = data
    return out


async def test_a_stable_study_ends_protected_on_n_distinct_partners(site: Site) -> None:
    sent = await site.receive(5)
    report = await site.service().run_once()
    assert (report.queued, report.planned, report.encoded, report.stored) == (1, 1, 1, 1)
    assert report.protected == 1
    assert await site.catalog.study_state("1.2.3.1") is StudyState.PROTECTED
    held = site.partners.held()
    assert "owner" not in held
    assert len(held) == 4 and all(len(files) == 1 for files in held.values())
    assert await decode_all(site, k=2) == sent
    # The shares streamed as they were encoded: no file upload, no work file ever.
    assert (site.partners.streams, site.partners.puts) == (4, 0)
    assert not site.work.exists()


async def test_nothing_is_bundled_before_the_study_is_quiet(site: Site) -> None:
    await site.receive(2)
    site.clock.advance(-30)  # only 31 s quiet
    report = await site.service().run_once()
    assert (report.queued, report.planned) == (0, 0)
    assert site.partners.puts == 0


async def test_a_down_partner_is_replaced_by_a_spare(site: Site) -> None:
    site.partners.down = {"partner-0", "partner-3"}
    await site.receive(3)
    report = await site.service().run_once()
    assert report.stored == 1
    assert set(site.partners.held()).isdisjoint({"partner-0", "partner-3", "owner"})


async def test_a_partner_failing_mid_stream_keeps_nothing_and_a_spare_gets_the_share(
    site: Site,
) -> None:
    site.partners.fault_first = "broken"
    sent = await site.receive(4, size=1_000_000)  # two 1 MiB chunks per share
    report = await site.service(cap=10**7).run_once()
    assert (report.stored, report.protected) == (1, 1)
    held = site.partners.held()
    assert site.partners.faulty not in held and "owner" not in held and len(held) == 4
    assert not list(site.partners.root.rglob("*.part"))
    assert site.partners.puts == 2  # refused again by the broken site, then on a spare
    assert await decode_all(site, k=2) == sent
    assert not (site.work.exists() and any(site.work.iterdir()))


async def test_a_stalled_partner_is_detached_and_does_not_hold_the_others(site: Site) -> None:
    # A share is a quarter of the study (k=2 of 40 KB instances): several 1 MiB chunks
    # per share, so the stalled partner's queue fills and the codec would wait on it.
    site.partners.fault_first = "stalled"
    sent = await site.receive(30, size=400_000)
    report = await site.service(stall=0.5, cap=10**8).run_once()
    assert (report.stored, report.protected) == (1, 1)
    held = site.partners.held()
    assert site.partners.faulty not in held and len(held) == 4
    assert site.partners.puts == 2  # refused by the stalled site, then on a spare
    assert await decode_all(site, k=2) == sent


async def test_a_restart_mid_stream_sends_only_the_shares_not_acknowledged(site: Site) -> None:
    sent = await site.receive(4)
    site.partners.down = {"partner-0", "partner-1", "partner-2", "partner-3", "partner-4"}
    service = site.service()
    await service.run_once()  # one share streamed (partner-5); the rest wait for partners
    [row] = await site.catalog.read(
        lambda db: [ledger.bundle(db, r[0]) for r in db.execute("SELECT id FROM bundles")]
    )
    # As if the node stopped after the ack and before recording the bundle encoded.
    await site.catalog.write(
        lambda db: db.execute(
            "UPDATE bundles SET state = 'planned', length = NULL, set_hash = NULL WHERE id = ?",
            (row.ref,),
        )
    )
    shutil.rmtree(site.work, ignore_errors=True)
    site.partners.down = set()
    before = site.partners.streams
    report = await site.service().run_once()
    assert (report.stored, report.protected) == (1, 1)
    assert site.partners.streams - before == 3  # share on partner-5 was not sent again
    assert len(site.partners.held()) == 4
    assert await decode_all(site, k=2) == sent


async def test_below_happy_waits_then_completes_when_partners_return(site: Site) -> None:
    site.partners.down = {f"partner-{i}" for i in range(4)}  # 2 of 6 up, happy is 3
    sent = await site.receive(3)
    service = site.service()
    report = await service.run_once()
    assert (report.encoded, report.waiting, report.protected) == (1, 1, 0)
    assert await site.catalog.study_state("1.2.3.1") is StudyState.QUEUED
    placed_before = len(site.partners.held())
    assert placed_before == 2
    site.partners.down = set()
    report = await service.run_once()
    assert (report.stored, report.protected) == (1, 1)
    assert len(site.partners.held()) == 4  # the two placed earlier were not sent again
    assert await decode_all(site, k=2) == sent


async def test_degraded_when_only_happy_sites_take_shares(site: Site) -> None:
    site.partners.down = {f"partner-{i}" for i in range(3)}  # 3 of 6 up; n 4, happy 3
    await site.receive(2)
    report = await site.service().run_once()
    assert (report.degraded, report.protected) == (1, 1)
    counts = await site.catalog.read(ledger.protection_counts)
    assert (counts.degraded, counts.protected, counts.unprotected) == (1, 0, 0)


async def test_a_restart_after_encoding_uploads_the_same_fragments(site: Site) -> None:
    sent = await site.receive(4)
    site.partners.down = set(site.partners.sites)  # everything down: encoded, nothing placed
    await site.service().run_once()
    [row] = await site.catalog.read(ledger.encoded_bundles)
    shutil.rmtree(site.work)  # the work files are lost too: encoded again, same set hash
    site.partners.down = set()
    report = await site.service().run_once()  # a new service object: a restarted node
    assert (report.stored, report.protected) == (1, 1)
    [again] = await site.catalog.read(
        lambda db: [ledger.bundle(db, r[0]) for r in db.execute("SELECT id FROM bundles")]
    )
    assert again.set_hash == row.set_hash
    assert await decode_all(site, k=2) == sent


async def test_a_changed_instance_file_is_never_placed(site: Site) -> None:
    await site.receive(2)
    victim = next(site.store.instances_dir.rglob("*.dcm"))
    victim.chmod(0o600)
    victim.write_bytes(b"tampered")
    report = await site.service().run_once()
    assert (report.encoded, report.failed, report.protected) == (0, 1, 0)
    assert site.partners.puts == 0
    assert site.partners.held() == {}  # streams were started, but no partner kept a byte
    assert not list(site.partners.root.rglob("*.part"))


async def test_a_late_instance_is_backed_up_in_a_second_bundle(site: Site) -> None:
    first = await site.receive(2)
    service = site.service()
    await service.run_once()
    late = await site.receive(1, start=50)
    report = await service.run_once()
    assert (report.planned, report.stored, report.protected) == (1, 1, 1)
    assert await decode_all(site, k=2) == first | late


async def test_a_large_study_is_cut_into_several_bundles(site: Site) -> None:
    sent = await site.receive(6, size=3000)
    report = await site.service(cap=7000).run_once()
    assert report.planned == 3 and report.protected == 1
    assert await decode_all(site, k=2) == sent


async def test_retention_removes_local_copies_only_once_stored_at_n(site: Site) -> None:
    sent = await site.receive(3)
    service = BackupService(
        site_id="owner",
        keys=site.keys,
        catalog=site.catalog,
        instance_path=site.store.path_for,
        partners=site.partners,
        settings=BackupSettings(
            plan=BundlePlan(k=2, n=4, segment_size=4096, max_bundle_bytes=10**6),
            happy=3,
            stable_seconds=60,
            keep_local_seconds=3600,
        ),
        work_dir=site.work,
        clock=site.clock,
    )
    site.partners.down = {"partner-0", "partner-1", "partner-2"}  # degraded: 3 of 4
    report = await service.run_once()
    assert (report.degraded, report.pruned) == (1, 0)
    site.clock.advance(7200)
    assert (await service.run_once()).pruned == 0  # degraded: the local copy still counts
    assert len(list(site.store.instances_dir.rglob("*.dcm"))) == 3

    site.partners.down = set()
    rows = await site.catalog.read(lambda db: [r[0] for r in db.execute("SELECT id FROM bundles")])
    await site.catalog.write(
        lambda db: db.execute("UPDATE bundles SET state = 'encoded' WHERE id = ?", (rows[0],))
    )
    await service.run_once()  # tops up to n: stored
    assert (await service.run_once()).pruned == 0  # stored just now: kept for an hour
    site.clock.advance(3601)
    assert (await service.run_once()).pruned == 3
    assert list(site.store.instances_dir.rglob("*.dcm")) == []
    assert await decode_all(site, k=2) == sent  # the mesh still has every byte
    # The rows stay, marked, and are not mistaken for files lost in a crash.
    assert await site.catalog.latest_instances(10) == []
    assert (await site.catalog.counts())["instances"] == 3


async def test_unparsed_instances_are_backed_up_in_bundles_of_their_own(site: Site) -> None:
    data = b"not DICOM at all, kept byte for byte" * 50
    site.store.write(data)
    await site.catalog.add_instances(
        [make_record("1.2.3.9.1", data=data, placed=False, parse_error="no header")]
    )
    site.clock.advance(61)
    published: list[int] = []

    class Publisher:
        async def study_protected(self, study_ref: int) -> None:
            raise AssertionError("no study here")

        async def unplaced_protected(self, bundle_ref: int) -> None:
            published.append(bundle_ref)

    service = site.service()
    service._publisher = Publisher()
    report = await service.run_once()
    assert (report.planned, report.stored, report.protected) == (1, 1, 0)
    assert len(published) == 1
    assert await decode_all(site, k=2) == {"1.2.3.9.1": data}
    assert (await service.run_once()).planned == 0  # bundled once only
