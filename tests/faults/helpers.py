"""What the fault scenarios share: sending, node processes to signal, the disaster, recovery.

Sites start in process (``tests/mesh/conftest.py``); a site a scenario means to kill with
SIGKILL or freeze with SIGSTOP is taken over by a ``meshpacs node run`` process started
with the testbed's own machinery (:func:`meshpacs.testbed.processes.start_nodes`), and
signalled by its PID only while that PID still runs that site's node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from meshpacs.dicom.scu import Delivery, Outgoing, Target, send_instances
from meshpacs.keys import SiteKeys, SiteSecret
from meshpacs.metadata.replica import open_record
from meshpacs.recovery.command import RecoverRequest, run_recovery
from meshpacs.recovery.report import RecoveryReport
from meshpacs.recovery.session import RecoveryCredentials
from meshpacs.testbed.layout import TestbedSite
from meshpacs.testbed.processes import is_our_process, start_nodes
from meshpacs.testing.synth import SynthInstance, write_study
from tests.mesh.conftest import Federation, RunningSite
from tests.mesh.helpers import eventually, held_catalog_records, wait_protected
from tests.mesh.test_recovery import lose_site

SEED_VARIABLE = "MESHPACS_FAULT_SEED"


def target(site: RunningSite) -> Target:
    port = site.started.dicom_port if site.started is not None else site.plan.dicom_port
    return Target(site.plan.ae_title, site.plan.host, port, "TESTPACS")


def outgoing(instances: list[SynthInstance], workdir: Path) -> list[Outgoing]:
    paths = write_study(workdir, instances)
    return [
        Outgoing(path, i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid)
        for path, i in zip(paths, instances, strict=True)
    ]


async def send(site: RunningSite, items: list[Outgoing]) -> list[Delivery]:
    """C-STORE ``items`` to the site's node on one association; every outcome, in order."""
    return await asyncio.to_thread(send_instances, items, target(site))


# -- node processes -------------------------------------------------------------------------


class NodeProcesses:
    """Sites taken over by node processes; each stopped by SIGKILL at the end of the test."""

    def __init__(self) -> None:
        self.sites: list[TestbedSite] = []
        self._prefix: dict[str, tuple[str, ...]] = {}

    async def take_over(
        self,
        fed: Federation,
        site_id: str,
        env: Mapping[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> TestbedSite:
        """Stop the site's in-process node and run it as ``meshpacs node run`` instead (same
        config, ports and data, ``env`` added to its environment, the command after
        ``prefix``, e.g. ``ip netns exec NAME``); returns once it answers C-ECHO."""
        site = fed.site(site_id)
        await site.halt()
        self.sites.append(site.plan)
        self._prefix[site_id] = tuple(prefix)
        await asyncio.to_thread(
            start_nodes, fed.plan, sites=[site.plan], extra_env=env, command_prefix=prefix
        )
        return site.plan

    @staticmethod
    def signal(site: TestbedSite, sig: signal.Signals) -> None:
        if site.pid is not None and is_our_process(site):
            os.kill(site.pid, sig)

    def kill9(self, site: TestbedSite, timeout: float = 10) -> None:
        """SIGKILL: no handler runs, nothing is flushed; returns once it is gone."""
        assert site.pid is not None and is_our_process(site), f"{site.site_id} is not running"
        os.kill(site.pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while is_our_process(site):
            assert time.monotonic() < deadline, f"{site.site_id} survives SIGKILL"
            time.sleep(0.01)

    async def restart(self, fed: Federation, site: TestbedSite) -> None:
        """Start a killed site's node process again (same config, ports and data), as an
        operator or systemd would; returns once it answers C-ECHO."""
        assert site in self.sites, f"{site.site_id} was never taken over"
        assert not is_our_process(site), f"{site.site_id} is still running"
        prefix = self._prefix[site.site_id]
        await asyncio.to_thread(start_nodes, fed.plan, sites=[site], command_prefix=prefix)

    def stop_all(self) -> None:
        for site in self.sites:
            with contextlib.suppress(ProcessLookupError):
                self.signal(site, signal.SIGCONT)  # a frozen node must be able to die
                self.signal(site, signal.SIGKILL)


# -- the owner's backup, as the catalog and its trusted peers see it -------------------------


def trusted_sites(fed: Federation, owner: RunningSite) -> list[RunningSite]:
    return [fed.site(s) for s in owner.plan.trusted]


def held_records(fed: Federation, owner: RunningSite) -> dict[Path, bytes]:
    """The owner's sealed catalog records on its trusted peers: path -> bytes."""
    found = {}
    for peer in trusted_sites(fed, owner):
        for path in held_catalog_records(peer, owner.site_id):
            with contextlib.suppress(FileNotFoundError):  # replaced while we look
                found[path] = path.read_bytes()
    return found


def unrecorded(fed: Federation, owner: RunningSite, sop_instance_uids: Iterable[str]) -> set[str]:
    """The instances some trusted peer holds no catalog record of in a stored (or degraded)
    bundle: what a recovery reading that peer's records would miss. Opened with the
    owner's catalog key, as a recovery does; a study that got instances after it was
    protected is only covered once its new record has reached the peers."""
    secret = SiteSecret.from_phrase(Path(owner.plan.phrase_file).read_text().strip())
    key = SiteKeys.derive(secret).catalog
    wanted = set(sop_instance_uids)
    missing: set[str] = set()
    for peer in trusted_sites(fed, owner):
        covered: set[str] = set()
        for path in held_catalog_records(peer, owner.site_id):
            try:
                record = open_record(key, owner.site_id, path.name, path.read_bytes())
            except FileNotFoundError:  # replaced while we look
                continue
            uids = {row["id"]: row["sop_instance_uid"] for row in record.document["instances"]}
            for bundle in record.document["bundles"]:
                if bundle["state"] in ("stored", "degraded"):
                    covered.update(uids[member["instance_ref"]] for member in bundle["members"])
        missing |= wanted - covered
    return missing


async def wait_backed_up(
    fed: Federation,
    owner: RunningSite,
    study_uids: set[str],
    records: int,
    *,
    changed_since: dict[Path, bytes] | None = None,
    timeout: float = 60,
) -> None:
    """Every study protected, and each trusted peer holding ``records`` catalog records of
    the owner (each different from ``changed_since``'s, when given: a study protected again
    sends its record again, under the same name)."""
    await wait_protected(owner, study_uids, timeout)
    before = changed_since or {}

    def counts() -> dict[str, tuple[int, int]]:
        """Per trusted peer: (records held, of which changed since ``changed_since``)."""
        held = held_records(fed, owner)
        return {
            peer.site_id: (
                len(mine := [p for p in held if p.is_relative_to(peer.data_dir)]),
                sum(before.get(p) != held[p] for p in mine),
            )
            for peer in trusted_sites(fed, owner)
        }

    def replicated() -> bool:
        return all(held == fresh == records for held, fresh in counts().values())

    try:
        await eventually(replicated, timeout, f"{records} fresh catalog records on trusted peers")
    except AssertionError as error:
        raise AssertionError(f"{error}; (held, fresh) per peer: {counts()}") from None


def placements(site: RunningSite) -> dict[str, set[str]]:
    """The site's own ledger: bundle ID (hex) -> sites holding one of its shares."""
    path = site.data_dir / "catalog.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT b.bundle_id, p.holder_site FROM placements p"
            " JOIN bundles b ON b.id = p.bundle_ref"
        ).fetchall()
    found: dict[str, set[str]] = {}
    for bundle_id, holder in rows:
        found.setdefault(bytes(bundle_id).hex(), set()).add(str(holder))
    return found


# -- the disaster and the recovery ------------------------------------------------------------


async def lose_owner(
    fed: Federation, owner: RunningSite, tmp_path: Path
) -> tuple[SiteSecret, RecoveryCredentials]:
    """The owner's node stops and its directory goes; its phrase and certificates remain."""
    await owner.halt()
    return lose_site(fed, owner.site_id, tmp_path / "kept")


async def recover(
    kept: tuple[SiteSecret, RecoveryCredentials],
    tmp_path: Path,
    *,
    peers: tuple[str, ...] = (),
    name: str = "recovery",
) -> tuple[RecoveryReport, Path]:
    """``meshpacs recover`` into a folder; the report and the folder (run again with the
    same ``name``, it resumes from the same journal into the same folder)."""
    secret, credentials = kept
    restored = tmp_path / f"{name}-restored"
    request = RecoverRequest(
        secret=secret,
        credentials=credentials,
        workdir=tmp_path / name,
        to_dir=restored,
        peers=peers,
    )
    return await run_recovery(request), restored
