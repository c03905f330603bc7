"""The owner killed with SIGKILL, mid-ingest and mid-backup: nothing it acknowledged is lost.

Site-a, the owner, runs as its own ``meshpacs node run`` process (the other four sites stay
in process), so it can die with SIGKILL: no handler runs, no transaction finishes.

* **Mid-ingest**: several studies stream to it on one association, the sender recording
  every C-STORE status; after a number of Success answers picked by the seed (and a few
  milliseconds more, so the kill lands inside a C-STORE or between two), it is killed.
  Restarted with the same config, its catalog must hold every instance it acknowledged;
  the PACS then sends again what got no Success (a PACS retries those).
* **Mid-backup**: studies are pushed and, while the owner's ledger shows a bundle being
  backed up (at the moment the seed picks: planned with no share placed yet, a share
  arriving at a holder, or some shares recorded but the bundle not settled), it is killed
  and restarted. The ledger must resume: every bundle stored at n sites, and what the
  holders keep for the owner is exactly the final ledger's placements, apart from shares
  the killed attempt may have left at a holder the resumed one did not choose (see
  :func:`assert_holders_match_ledger`).

Each ends with the standard oracle: the owner's disk is lost, ``meshpacs recover`` from
its phrase must restore exactly the acknowledged instances (SHA-256 manifest, as a set),
and no untrusted site's disk holds any of their PHI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from meshpacs.dicom.scu import Delivery, Outgoing, send_instances
from meshpacs.testbed.layout import TestbedSite
from meshpacs.testing.synth import SeriesSpec, StudySpec, SynthInstance
from tests.mesh.conftest import Federation, FederationFactory, RunningSite
from tests.mesh.helpers import eventually, phi_strings, push, study, study_states

from .helpers import (
    NodeProcesses,
    lose_owner,
    outgoing,
    recover,
    send,
    target,
    unrecorded,
    wait_backed_up,
)
from .oracle import Manifest, assert_no_phi_on_untrusted, assert_restored

K, N = 2, 3


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only look at a node's SQLite file (the node may be writing it), in autocommit
    mode: each statement sees every commit made before it."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


async def recover_exactly(
    fed: Federation,
    node_processes: NodeProcesses,
    process: TestbedSite,
    manifest: Manifest,
    sent: list[SynthInstance],
    tmp_path: Path,
) -> None:
    """The disaster (the owner's node dies, its disk goes), then the standard oracle."""
    owner = fed.site(process.site_id)
    node_processes.kill9(process)  # also proves it was still running: no crash loop
    kept = await lose_owner(fed, owner, tmp_path)
    report, restored = await recover(kept, tmp_path)
    assert report.exit_code == 0, report.summary()
    assert_restored(manifest, restored)
    assert_no_phi_on_untrusted(fed, owner, phi_strings(sent))


# -- 1. killed mid-ingest ---------------------------------------------------------------------

INGEST_STUDIES = 5  # 7 instances each: 35 C-STOREs on one association
KILL_DELAY = 0.02  # s, at most, after the chosen acknowledgement


async def stream_and_kill(
    processes: NodeProcesses,
    victim: TestbedSite,
    owner: RunningSite,
    items: list[Outgoing],
    kill_after: int,
    delay: float,
) -> list[Delivery]:
    """C-STORE ``items`` to the owner; SIGKILL it ``delay`` s after its ``kill_after``-th
    Success. Every outcome, in order (no retries: the PACS's retry comes later, by hand)."""
    acknowledged = 0
    reached = threading.Event()

    def progress(delivery: Delivery) -> None:  # send_instances serialises these calls
        nonlocal acknowledged
        if delivery.ok:
            acknowledged += 1
            if acknowledged == kill_after:
                reached.set()

    def kill() -> None:
        # From its own thread, so the sender goes on meanwhile and the kill can land in
        # the middle of the next C-STORE (receiving, writing, committing or answering).
        assert reached.wait(60), f"the owner never acknowledged {kill_after} instances"
        time.sleep(delay)
        processes.kill9(victim)

    deliveries, _ = await asyncio.gather(
        asyncio.to_thread(
            send_instances, items, target(owner), max_retries=0, retry_delay=0, progress=progress
        ),
        asyncio.to_thread(kill),
    )
    return deliveries


def catalog_instances(site: RunningSite) -> set[str]:
    with read_only(site.data_dir / "catalog.sqlite") as db:
        return {str(uid) for (uid,) in db.execute("SELECT sop_instance_uid FROM instances")}


async def test_the_owner_killed_mid_ingest_loses_nothing_it_acknowledged(
    federation: FederationFactory,
    node_processes: NodeProcesses,
    fault_rng: random.Random,
    tmp_path: Path,
) -> None:
    fed = await federation(5, k=K, n=N)
    owner = fed.site("site-a")
    process = await node_processes.take_over(fed, owner.site_id)
    sent = [i for n in range(INGEST_STUDIES) for i in study(seed=1300 + n, patient=n)]
    study_of = {i.sop_instance_uid: i.study_instance_uid for i in sent}
    items = outgoing(sent, tmp_path / "pacs")
    # Never past the middle: enough C-STOREs remain that the kill lands before the end.
    kill_after = fault_rng.randint(1, len(items) // 2)
    delay = fault_rng.uniform(0, KILL_DELAY)
    print(f"owner killed {delay * 1000:.1f} ms after Success #{kill_after} of {len(items)}")

    deliveries = await stream_and_kill(node_processes, process, owner, items, kill_after, delay)
    manifest = Manifest()
    acknowledged = manifest.add_acknowledged(deliveries, study_of)
    unanswered = [d.item for d in deliveries if not d.ok]
    print(f"{acknowledged} acknowledged before the kill, {len(unanswered)} not")
    assert acknowledged >= kill_after and unanswered, "the kill did not land part-way"

    await node_processes.restart(fed, process)
    # Success means "file and catalog row on stable storage": the restarted node has them.
    lost = {d.item.sop_instance_uid for d in deliveries if d.ok} - catalog_instances(owner)
    assert not lost, f"{len(lost)} acknowledged instance(s) gone after the restart: {lost}"

    # The PACS sends again what got no Success; the one in flight at the kill may already
    # be stored, and must then be answered Success without becoming a second copy.
    again = await send(owner, unanswered)
    assert all(d.ok for d in again), [d.detail for d in again if not d.ok]
    manifest.add_acknowledged(again, study_of)
    assert len(manifest) == len(sent)

    await wait_backed_up(fed, owner, set(study_of.values()), records=INGEST_STUDIES)
    # A study cut by the kill is protected once with what it had, then again with the
    # rest: its first record already counts above, so wait for the one naming them all.
    await eventually(
        lambda: not unrecorded(fed, owner, manifest.digests),
        30,
        "every acknowledged instance in a stored bundle of the trusted peers' records",
    )
    await recover_exactly(fed, node_processes, process, manifest, sent, tmp_path)


# -- 2. killed mid-backup ---------------------------------------------------------------------

# Fragments of a few hundred KiB: a bundle takes tens of milliseconds to back up on
# loopback, long enough to be caught at each moment below by a 1 ms poll.
STREAMED = StudySpec(series=(SeriesSpec("CT", 16, 128, 128), SeriesSpec("MR", 6, 64, 64)))
MAX_ATTEMPTS = 4  # studies watched for the moment before the scenario gives up

# The moments a bundle's backup can be caught at, from the owner's ledger and the holders'
# disks (unsettled: state 'planned' or 'encoded').
MOMENTS = {
    "planned": "a bundle unsettled with no share placed yet (encoding, uploads starting)",
    "arriving": "a bundle unsettled while a fragment is arriving at a holder",
    "placed": "a bundle unsettled with at least one share recorded as placed",
}


@dataclass
class BundleState:
    """One bundle of the owner's ledger, as its catalog holds it."""

    bundle_id: str  # hex
    state: str
    n: int
    set_hash: bytes | None
    placed: set[tuple[int, str, str]] = field(default_factory=set)  # (share, holder, fragment)


def ledger_of(db: sqlite3.Connection) -> dict[int, BundleState]:
    """Bundle row id -> its state and placements, in one read transaction."""
    db.execute("BEGIN")
    try:
        bundles = {
            int(ref): BundleState(bytes(bid).hex(), str(state), int(n), sh and bytes(sh))
            for ref, bid, state, n, sh in db.execute(
                "SELECT id, bundle_id, state, n, set_hash FROM bundles"
            )
        }
        for ref, share, holder, fragment in db.execute(
            "SELECT bundle_ref, share, holder_site, fragment_id FROM placements"
        ):
            bundles[int(ref)].placed.add((int(share), str(holder), str(fragment)))
    finally:
        db.execute("COMMIT")
    return bundles


def arriving(holders: list[RunningSite]) -> bool:
    """A fragment is arriving at some holder (its partial file in ``fragments/tmp/``)."""
    for site in holders:
        try:
            if any(e.name.endswith(".part") for e in os.scandir(site.data_dir / "fragments/tmp")):
                return True
        except FileNotFoundError:
            continue
    return False


def kill_at_moment(
    processes: NodeProcesses,
    victim: TestbedSite,
    fed: Federation,
    study_uid: str,
    moment: str,
    timeout: float = 30,
) -> bool:
    """SIGKILL the owner the first time its ledger shows ``moment``; False (and nothing
    killed) if the study became protected first."""
    owner = fed.site(victim.site_id)
    holders = [s for s in fed.sites if s is not owner]
    deadline = time.monotonic() + timeout
    with read_only(owner.data_dir / "catalog.sqlite") as db:
        while time.monotonic() < deadline:
            unsettled = db.execute(
                "SELECT (SELECT COUNT(*) FROM placements p WHERE p.bundle_ref = b.id)"
                " FROM bundles b WHERE b.state IN ('planned', 'encoded')"
            ).fetchall()
            placed = [int(count) for (count,) in unsettled]
            caught = {
                "planned": 0 in placed,
                "arriving": bool(placed) and arriving(holders),
                "placed": any(count > 0 for count in placed),
            }[moment]
            if caught:
                processes.kill9(victim)
                return True
            row = db.execute("SELECT state FROM studies WHERE study_uid = ?", (study_uid,))
            if (row.fetchone() or [""])[0] == "protected":
                return False
            time.sleep(0.001)
    raise AssertionError(f"study neither caught at {moment!r} nor protected in {timeout} s")


@dataclass(frozen=True)
class Held:
    """A fragment of the owner's on a holder's disk, as the holder's index has it."""

    holder: str
    fragment_id: str
    share: int
    set_hash: bytes
    state: str


def held_for(fed: Federation, owner: RunningSite) -> list[Held]:
    found = []
    for site in fed.sites:
        index = site.data_dir / "fragments" / "index.sqlite"
        if site is owner or not index.exists():
            continue
        with read_only(index) as db:
            rows = db.execute(
                "SELECT id, share, set_hash, state FROM fragments WHERE owner = ?",
                (owner.site_id,),
            ).fetchall()
        found += [Held(site.site_id, str(f), int(s), bytes(h), str(st)) for f, s, h, st in rows]
    return found


def assert_holders_match_ledger(
    final: dict[int, BundleState], at_kill: dict[int, BundleState], held: list[Held]
) -> list[Held]:
    """What the holders keep for the owner is the final ledger's placements, plus at most
    what the killed attempt may have left behind; returns those leftovers.

    A leftover is possible only for a bundle unsettled at the kill, for a share the ledger
    had not recorded then: the holder committed it, the owner died before recording it,
    and the resumed attempt placed that share at another site (same fragment ID, other
    holder). The owner never learns of it, so neither repair nor cleanup (which work from
    the ledger) remove it, and no lease renewal (ledger placements only) keeps it: the
    holder removes it once its lease (a put leases it ``lease_days``, 30 by default) and
    the grace after it have run out. A leftover is a complete, verified share of the same
    ciphertext, so it holds no more than the placed copy does.
    """
    by_set_hash = {b.set_hash: ref for ref, b in final.items()}
    placed = {(holder, fragment) for b in final.values() for _, holder, fragment in b.placed}
    problems = []
    for b in final.values():
        shares = {share for share, _, _ in b.placed}
        sites = {holder for _, holder, _ in b.placed}
        if b.state != "stored" or shares != set(range(b.n)) or len(sites) != b.n:
            problems.append(f"bundle {b.bundle_id}: {b.state}, placed {sorted(b.placed)}")
    on_disk = {(h.holder, h.fragment_id): h for h in held}
    for b in final.values():
        for share, holder, fragment in sorted(b.placed):
            h = on_disk.get((holder, fragment))
            if h is None or (h.share, h.set_hash, h.state) != (share, b.set_hash, "ok"):
                problems.append(f"bundle {b.bundle_id} share {share} at {holder}: {h}")
    leftovers = [h for h in held if (h.holder, h.fragment_id) not in placed]
    for h in leftovers:
        of = by_set_hash.get(h.set_hash)
        before = at_kill.get(of) if of is not None else None
        if before is None or before.state not in ("planned", "encoded"):
            problems.append(f"{h} is of no bundle the kill interrupted")
        elif any(share == h.share for share, _, _ in before.placed):
            problems.append(f"{h}: its share was already recorded placed before the kill")
    for ref, b in final.items():
        copies = sum(1 for h in held if h.set_hash == b.set_hash)
        unplaced_at_kill = b.n - len(at_kill[ref].placed) if ref in at_kill else 0
        if copies > b.n + unplaced_at_kill:
            problems.append(f"bundle {b.bundle_id}: {copies} fragments held, n is {b.n}")
    assert not problems, "holders and ledger disagree:\n  " + "\n  ".join(problems)
    return leftovers


async def test_the_owner_killed_mid_backup_resumes_and_loses_nothing(
    federation: FederationFactory,
    node_processes: NodeProcesses,
    fault_rng: random.Random,
    tmp_path: Path,
) -> None:
    fed = await federation(5, k=K, n=N)
    owner = fed.site("site-a")
    process = await node_processes.take_over(fed, owner.site_id)
    moment = fault_rng.choice(sorted(MOMENTS))
    protected_before = fault_rng.randint(0, 2)  # studies fully backed up before the watch
    print(f"owner killed at {moment!r}: {MOMENTS[moment]}, after {protected_before} studies")

    sent: list[SynthInstance] = []
    at_kill: dict[int, BundleState] = {}  # what the dead node had committed
    for number in range(protected_before + MAX_ATTEMPTS):
        instances = study(seed=1400 + number, patient=number, spec=STREAMED)
        await push(owner, instances, tmp_path / f"pacs-{number}")  # every one acknowledged
        sent += instances
        uid = instances[0].study_instance_uid
        if number < protected_before:
            await wait_backed_up(fed, owner, {uid}, records=number + 1)
            continue
        if not await asyncio.to_thread(kill_at_moment, node_processes, process, fed, uid, moment):
            continue
        with read_only(owner.data_dir / "catalog.sqlite") as db:
            at_kill = ledger_of(db)
        if any(b.state in ("planned", "encoded") for b in at_kill.values()):
            break
        # The bundle settled in the instant between the look and the signal: nothing was
        # interrupted (a kill between two bundles). Start again and watch the next study.
        print(f"study {number}: the kill landed just after its bundle settled")
        at_kill = {}
        await node_processes.restart(fed, process)
    assert at_kill, f"{MAX_ATTEMPTS} studies backed up without a kill at {moment!r}"
    shown = {b.bundle_id[:8]: (b.state, len(b.placed)) for b in at_kill.values()}
    print(f"ledger at the kill (bundle: state, shares placed): {shown}")

    await node_processes.restart(fed, process)
    studies = {i.study_instance_uid for i in sent}
    await wait_backed_up(fed, owner, studies, records=len(studies))
    assert set(study_states(owner).values()) == {"protected"}
    # A fragment cut off by the kill is discarded by its holder, never kept half-made.
    holders = [s for s in fed.sites if s is not owner]
    await eventually(lambda: not arriving(holders), 10, "no partial fragment left at holders")

    # The restarted node's repairer made its first pass (repair, then deletion of replaced
    # copies) at start, the next is minutes away: both work from the ledger, so the check
    # below sees all they could do, and the leftovers are what they cannot see.
    with read_only(owner.data_dir / "catalog.sqlite") as db:
        final = ledger_of(db)
    leftovers = assert_holders_match_ledger(final, at_kill, held_for(fed, owner))
    print(f"{len(leftovers)} share(s) of the killed attempt left to their lease: {leftovers}")

    await recover_exactly(fed, node_processes, process, Manifest.of_instances(sent), sent, tmp_path)
