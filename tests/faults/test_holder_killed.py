"""A holder killed with SIGKILL while fragments stream to it: nothing acknowledged is lost.

The victim (an untrusted partner, picked by the seed) runs as its own ``meshpacs node run``
process. The owner is pushed a stream of studies; a thread watches the victim's
``fragments/`` and sends SIGKILL the first time a fragment is arriving while it already
holds 0 or 1 (from the seed) complete ones, so the kill lands mid-upload. The victim
stays dead. Every study must still become protected on the remaining sites, and a
recovery of the owner from its phrase, with the victim still dead, must give back
exactly what the owner acknowledged.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from pathlib import Path

from meshpacs.testbed import layout
from meshpacs.testing.synth import SeriesSpec, StudySpec, SynthInstance
from tests.mesh.conftest import FederationFactory, RunningSite
from tests.mesh.helpers import held_fragments, phi_strings, push, study

from .helpers import NodeProcesses, lose_owner, recover, wait_backed_up
from .oracle import Manifest, assert_no_phi_on_untrusted, assert_restored

# Fragments of a few hundred KiB: long enough on loopback to be caught arriving.
STREAMED = StudySpec(series=(SeriesSpec("CT", 16, 128, 128), SeriesSpec("MR", 6, 64, 64)))
STUDIES = 6
# More while no kill has landed: on a loaded machine (two test workers on two cores) the
# watcher can miss a fragment's short time in arrival.
MAX_STUDIES = 14


async def push_studies(
    owner: RunningSite, count: int, seed: int, tmp_path: Path, gap: float = 0.0
) -> tuple[Manifest, list[SynthInstance]]:
    """``count`` streamed studies C-STOREd to the owner, every one acknowledged, ``gap``
    seconds apart (a PACS sends studies one after another)."""
    manifest = Manifest()
    sent: list[SynthInstance] = []
    for number in range(count):
        instances = study(seed=seed + number, patient=number, spec=STREAMED)
        await push(owner, instances, tmp_path / f"pacs-{number}")
        manifest.add_instances(instances)
        sent += instances
        await asyncio.sleep(gap)
    return manifest, sent


def kill_while_receiving(
    processes: NodeProcesses, site: RunningSite, held: int, stream_done: threading.Event
) -> bool:
    """SIGKILL the site's node process the first time it holds ``held`` fragments or more
    while another one is arriving (a temp file in its ``fragments/tmp/``); True if that
    happened, False if the stream ended (and a few seconds more) first: it is killed then."""
    victim = site.plan
    root = site.data_dir / "fragments"
    deadline = float("inf")
    while time.monotonic() < deadline:
        try:
            arriving = any(e.name.endswith(".part") for e in os.scandir(root / "tmp"))
        except FileNotFoundError:
            arriving = False
        if arriving and len(held_fragments(site)) >= held:
            processes.kill9(victim)
            return True
        if stream_done.is_set() and deadline == float("inf"):
            deadline = time.monotonic() + 5
        time.sleep(0.001)
    processes.kill9(victim)
    return False


async def test_a_holder_killed_mid_upload_loses_nothing_acknowledged(
    federation: FederationFactory,
    node_processes: NodeProcesses,
    fault_rng: random.Random,
    tmp_path: Path,
) -> None:
    fed = await federation(5, k=2, n=3)
    owner = fed.site("site-a")
    victim = await node_processes.take_over(fed, fault_rng.choice(["site-d", "site-e"]))
    held = fault_rng.randint(0, 1)
    print(f"victim {victim.site_id}, killed once it holds {held} fragment(s), mid-upload")

    stream_done = threading.Event()
    killing = asyncio.create_task(
        asyncio.to_thread(
            kill_while_receiving, node_processes, fed.site(victim.site_id), held, stream_done
        )
    )
    manifest, sent = await push_studies(owner, STUDIES, 700, tmp_path, gap=0.3)
    while not killing.done() and len({i.study_instance_uid for i in sent}) < MAX_STUDIES:
        number = len({i.study_instance_uid for i in sent})
        _, extra = await push_studies(owner, 1, 700 + number, tmp_path / f"more-{number}")
        manifest.add_instances(extra)
        sent += extra
    stream_done.set()
    assert await killing, "no fragment was ever seen arriving at the victim: no kill mid-upload"

    studies = {i.study_instance_uid for i in sent}
    await wait_backed_up(fed, owner, studies, records=len(studies), timeout=90)
    kept = await lose_owner(fed, owner, tmp_path)
    report, restored = await recover(kept, tmp_path)
    assert report.exit_code == 0, report.summary()
    assert_restored(manifest, restored)
    assert_no_phi_on_untrusted(fed, "site-a", phi_strings(sent))


def kill_once_fetching(
    processes: NodeProcesses, victim: layout.TestbedSite, workdir: Path, done: threading.Event
) -> bool:
    """SIGKILL the victim the moment the recovery has a fragment arriving (a ``.part`` in
    its work folder); True if that happened before the recovery ended."""
    while not done.is_set():
        if any(workdir.rglob("*.part")):
            processes.kill9(victim)
            return True
        time.sleep(0.002)
    return False


async def test_a_holder_killed_during_a_recovery_still_gives_back_everything(
    federation: FederationFactory,
    node_processes: NodeProcesses,
    fault_rng: random.Random,
    tmp_path: Path,
) -> None:
    fed = await federation(5, k=2, n=3)
    owner = fed.site("site-a")
    victim = await node_processes.take_over(fed, fault_rng.choice(["site-d", "site-e"]))
    print(f"victim {victim.site_id}, killed once the recovery is fetching")
    manifest, sent = await push_studies(owner, 3, 750, tmp_path)
    await wait_backed_up(fed, owner, {i.study_instance_uid for i in sent}, records=3)
    assert held_fragments(fed.site(victim.site_id)), "the victim holds none of the shares"

    kept = await lose_owner(fed, owner, tmp_path)
    done = threading.Event()
    killing = asyncio.create_task(
        asyncio.to_thread(kill_once_fetching, node_processes, victim, tmp_path / "recovery", done)
    )
    try:
        report, restored = await recover(kept, tmp_path)
    finally:
        done.set()
    assert await killing, "the recovery never fetched a fragment: no kill during recovery"
    assert report.exit_code == 0, report.summary()
    assert_restored(manifest, restored)
    assert_no_phi_on_untrusted(fed, "site-a", phi_strings(sent))
