"""A backup site over a real catalog, real files and the real codec; partners as directories.

Shared by the backup pipeline's tests and the auditor's: partners here are directories on
this machine (the transport has its own tests).
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

from meshpacs.backup.placement import Candidate
from meshpacs.backup.service import BackupService, BackupSettings
from meshpacs.backup.upload import UploadPolicy
from meshpacs.dicom.storage import InstanceStore
from meshpacs.erasure import decode_bundle_to_memory
from meshpacs.erasure.layout import BundleRef, CodingParams
from meshpacs.errors import PeerUnreachable
from meshpacs.keys import SiteKeys, SiteSecret, unwrap_data_key
from meshpacs.metadata import Catalog, ledger
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
        if site_id in self.down:
            raise PeerUnreachable(f"site {site_id} is down")
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


@contextlib.asynccontextmanager
async def open_site(tmp_path: Path) -> AsyncIterator[Site]:
    """A site with six partner directories and a fake clock."""
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
