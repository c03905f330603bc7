"""A holder that cannot store: a real full disk (ENOSPC, a tmpfs mounted over its
``fragments/``) and an exhausted partner quota. The owner keeps protecting every study on
the other sites, the full holder's refusal is clear (no hang), the full holder keeps
serving, and nothing acknowledged is lost."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshpacs.node.config import load_config
from meshpacs.node.status import site_status
from meshpacs.testbed.layout import FAST_MAINTENANCE
from meshpacs.testing.synth import SynthInstance
from tests.mesh.conftest import Federation, FederationFactory, RunningSite
from tests.mesh.helpers import eventually, held_fragments, phi_strings, push, study, wait_protected

from .helpers import lose_owner, placements, recover, wait_backed_up
from .oracle import Manifest, assert_no_phi_on_untrusted, assert_restored

K, N = 2, 3
SITES = 5  # owner + 4: with one holder full, exactly n sites remain for every bundle
# Studies pushed before checking that the full holder was asked; pushing goes on (up to
# MAX_STUDIES) until one of its refusals is seen: whether a bundle's placement reaches it
# depends on the XOR closeness of random bundle IDs.
FIRST_STUDIES = 2
MAX_STUDIES = 8
GIB = 1024**3


class Owner:
    """The owner's studies: what it acknowledged, to check the recovery against."""

    def __init__(self, fed: Federation, site: RunningSite, tmp_path: Path) -> None:
        self.fed, self.site, self.tmp_path = fed, site, tmp_path
        self.sent: list[SynthInstance] = []

    async def push_one(self, rng: random.Random) -> None:
        number = len({i.study_instance_uid for i in self.sent})
        instances = study(seed=rng.randrange(10**6), patient=number)
        await push(self.site, instances, self.tmp_path / f"pacs-{number}")
        self.sent += instances
        # Protected on the sites that can store, in the usual time: a full holder neither
        # blocks nor slows the backup beyond a failed attempt.
        await wait_backed_up(self.fed, self.site, self.study_uids, records=number + 1, timeout=60)

    @property
    def study_uids(self) -> set[str]:
        return {i.study_instance_uid for i in self.sent}

    async def push_until_refused(
        self, rng: random.Random, refusals: Refusals, holder: str, *, more: int = 0
    ) -> None:
        """Push studies until ``holder`` has refused one share (then ``more`` studies)."""
        while len(self.study_uids) < FIRST_STUDIES or not refusals.of(holder):
            assert len(self.study_uids) < MAX_STUDIES, f"{holder} was never asked for a share"
            await self.push_one(rng)
        for _ in range(more):
            await self.push_one(rng)

    async def lose_and_recover(self) -> None:
        kept = await lose_owner(self.fed, self.site, self.tmp_path)
        report, restored = await recover(kept, self.tmp_path, peers=tuple(self.site.plan.trusted))
        assert report.exit_code == 0 and not report.unrecoverable, report.summary()
        assert_restored(Manifest.of_instances(self.sent), restored)
        assert_no_phi_on_untrusted(self.fed, self.site, phi_strings(self.sent))


class Refusals:
    """The owner's log of shares a site did not take: ``site -> [reason, ...]``."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="meshpacs.backup")
        self._caplog = caplog

    def unhandled(self) -> list[str]:
        """Errors nothing in the node handled (asyncio logs a connection task that raised)."""
        return [
            r.getMessage()
            for r in self._caplog.records
            if r.name == "asyncio" and r.levelno >= logging.ERROR
        ]

    def of(self, site: str) -> list[str]:
        # "share %d [of bundle row %d] not streamed to / not placed on site %s: %s"
        return [
            str(r.args[-1])
            for r in self._caplog.records
            if r.name == "meshpacs.backup"
            and re.search(r"not (streamed to|placed on) site", r.msg)
            and isinstance(r.args, tuple)
            and r.args[-2] == site
        ]


def alive(site: RunningSite) -> None:
    """The node task still runs: nothing in it died of the full disk."""
    assert site.task is not None and not site.task.done(), f"{site.site_id}'s node stopped"


async def still_serves(site: RunningSite, rng: random.Random, workdir: Path) -> None:
    """The full holder still takes a study from its own PACS (its catalog and instances are
    on another disk) and backs it up to its partners."""
    alive(site)
    instances = study(seed=rng.randrange(10**6), patient=90)
    await push(site, instances, workdir)
    await wait_protected(site, {instances[0].study_instance_uid})
    alive(site)


# -- a real full disk ---------------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(directory: Path, size: str = "2m") -> Iterator[None]:
    """A tmpfs of ``size`` mounted over ``directory`` (hiding what it held) until the block
    ends; skips the test where mounting is not allowed."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real ENOSPC needs root to mount a small tmpfs")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "meshpacs-full", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        # Lazily if something still has a file open there: the mount must not outlive us.
        if subprocess.run(["umount", str(directory)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=True)


def fill(directory: Path) -> Path:
    """Write a ballast file until not one more byte fits; the ballast."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        chunk = 64 * 1024
        while chunk:
            try:
                os.write(fd, bytes(chunk))
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
                chunk //= 2
    finally:
        os.close(fd)
    assert os.statvfs(directory).f_bavail == 0
    return ballast


async def test_a_holder_with_a_full_disk_refuses_shares_and_nothing_is_lost(
    federation: FederationFactory,
    fault_rng: random.Random,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fed = await federation(SITES, k=K, n=N, maintenance=FAST_MAINTENANCE)
    owner = Owner(fed, fed.site("site-a"), tmp_path)
    full = fed.site(fault_rng.choice([s.site_id for s in fed.sites if s.site_id != "site-a"]))
    print(f"full disk: {full.site_id}")
    fragments = full.data_dir / "fragments"
    refusals = Refusals(caplog)
    # Mounted while its node is stopped, so the node opens its store on the small disk.
    await full.halt()
    with small_filesystem(fragments):
        try:
            await full.start()
            ballast = fill(fragments)

            await owner.push_until_refused(fault_rng, refusals, full.site_id, more=1)
            print(f"{full.site_id} refused: {refusals.of(full.site_id)}")
            assert all("space" in r.lower() for r in refusals.of(full.site_id)), (
                f"refusal does not say the disk is full: {refusals.of(full.site_id)}"
            )
            assert not any(full.site_id in h for h in placements(owner.site).values())
            assert held_fragments(full) == []
            assert not refusals.unhandled(), refusals.unhandled()
            assert list((fragments / "tmp").iterdir()) == []  # no half-written share left
            await still_serves(full, fault_rng, tmp_path / "full-pacs")

            # Room again: the same node takes shares once more, without a restart.
            ballast.unlink()
            while not any(full.site_id in h for h in placements(owner.site).values()):
                assert len(owner.study_uids) < 2 * MAX_STUDIES, "the freed holder takes nothing"
                await owner.push_one(fault_rng)
            alive(full)
            await owner.lose_and_recover()
        finally:
            await full.halt()  # its files on the tmpfs must be closed before the unmount


# -- an exhausted partner quota -----------------------------------------------------------------


def set_partner_quota(site: RunningSite, quota_bytes: int) -> None:
    """Rewrite ``[mesh] partner_quota_gb`` in the site's config and reload it."""
    path = Path(site.plan.config)
    text, count = re.subn(
        r"^partner_quota_gb = .*$",
        f"partner_quota_gb = {quota_bytes / GIB!r}",
        path.read_text(),
        flags=re.MULTILINE,
    )
    assert count == 1, "no partner_quota_gb line in the config"
    path.write_text(text)
    site.config = load_config(path)
    assert abs(site.config.mesh.partner_quota_bytes - quota_bytes) <= 1


async def test_a_holder_whose_partner_quota_is_used_up_refuses_and_nothing_is_lost(
    federation: FederationFactory,
    fault_rng: random.Random,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Restarting the holder with its new quota must not make it lost (3.6 s in the fast
    # testbed): a CI run's audit caught it down, repair moved its share, and nothing was
    # left there to audit. 36 s is more than any restart takes.
    maintenance = {**FAST_MAINTENANCE, "lost_after_hours": 0.01}
    fed = await federation(SITES, k=K, n=N, maintenance=maintenance)
    owner = Owner(fed, fed.site("site-a"), tmp_path)
    refusals = Refusals(caplog)
    await owner.push_one(fault_rng)
    (first,) = placements(owner.site).values()
    full = fed.site(fault_rng.choice(sorted(first)))
    (held,) = held_fragments(full)
    size = held.stat().st_size
    # Room for the share it has and half of another: every later share is over quota.
    await full.halt()
    set_partner_quota(full, size + size // 2)
    await full.start()
    print(f"quota used up: {full.site_id}, holding {size} bytes of site-a's")

    await owner.push_until_refused(fault_rng, refusals, full.site_id, more=1)
    print(f"{full.site_id} refused: {refusals.of(full.site_id)}")
    assert all("quota" in r.lower() for r in refusals.of(full.site_id)), refusals.of(full.site_id)
    holding = [b for b, h in placements(owner.site).items() if full.site_id in h]
    assert len(holding) == 1, f"{full.site_id} took more than its quota: {holding}"
    assert held_fragments(full) == [held]
    assert not refusals.unhandled(), refusals.unhandled()

    # What it already held is still served: the owner's audits of it keep passing.
    def audited_ok() -> bool:
        peers = {p["site_id"]: p["audits"] for p in site_status(owner.site.config)["peers"]}
        audits = peers.get(full.site_id) or {}
        return bool(audits.get("audits_passed", 0) >= 1 and audits.get("audits_failed", 0) == 0)

    await eventually(audited_ok, 30, f"audits of {full.site_id}'s share pass")
    await still_serves(full, fault_rng, tmp_path / "full-pacs")
    await owner.lose_and_recover()
