"""A hung peer (SIGSTOP): its kernel still accepts TCP, nothing ever answers.

The peer (an untrusted partner, picked by the seed) runs as its own node process and first
takes shares of the owner's studies. Then it is frozen with SIGSTOP and stays frozen: its
listening sockets keep completing TCP handshakes, but no TLS handshake, DHT reply or byte
of data ever comes back. The owner goes on receiving studies: each must become protected
on the other sites within the transport's timeouts, never waiting on the frozen one; and
the owner, recovered from its phrase while the peer is still frozen, must get back exactly
what it acknowledged, including the bundles the frozen peer holds a share of.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

from meshpacs.testing.synth import SynthInstance
from tests.mesh.conftest import FederationFactory
from tests.mesh.helpers import held_fragments, phi_strings, push, study, wait_protected

from .helpers import NodeProcesses, lose_owner, placements, recover, wait_backed_up
from .oracle import Manifest, assert_no_phi_on_untrusted, assert_restored

AFTER = 3  # studies received while the peer is frozen
# Partner connections time out after 30 s and a stream that takes nothing for 10 s is
# moved to a spare site: a study must not wait on the frozen peer much longer than that.
PROTECT_WITHIN = 60.0
RECOVER_WITHIN = 60.0


async def test_a_hung_peer_stalls_neither_backup_nor_restore(
    federation: FederationFactory,
    node_processes: NodeProcesses,
    fault_rng: random.Random,
    tmp_path: Path,
) -> None:
    fed = await federation(5, k=2, n=3)
    owner = fed.site("site-a")
    frozen = await node_processes.take_over(fed, fault_rng.choice(["site-d", "site-e"]))
    print(f"frozen: {frozen.site_id}")
    frozen_site = fed.site(frozen.site_id)
    sent: list[SynthInstance] = []

    async def receive(number: int) -> str:
        instances = study(seed=1100 + number, patient=number)
        await push(owner, instances, tmp_path / f"pacs-{number}")
        sent.extend(instances)
        return instances[0].study_instance_uid

    number = 0
    while not held_fragments(frozen_site):  # until it holds a share (3 in 4 studies)
        assert number < 8, "the peer never took a share"
        await wait_protected(owner, {await receive(number)})
        number += 1
    before = set(placements(owner))

    node_processes.signal(frozen, signal.SIGSTOP)
    started = time.monotonic()
    later = {await receive(number + n) for n in range(AFTER)}
    await wait_protected(owner, later, timeout=PROTECT_WITHIN + 30)
    took = time.monotonic() - started
    print(f"{AFTER} studies protected {took:.1f} s after the freeze")
    assert took < PROTECT_WITHIN, f"backup waited {took:.0f} s on a hung peer"
    after = {b: h for b, h in placements(owner).items() if b not in before}
    assert after and all(frozen.site_id not in h for h in after.values()), after

    studies = {i.study_instance_uid for i in sent}
    await wait_backed_up(fed, owner, studies, records=len(studies))
    kept = await lose_owner(fed, owner, tmp_path)
    started = time.monotonic()
    report, restored = await recover(kept, tmp_path)
    took = time.monotonic() - started
    print(f"recovered in {took:.1f} s with the peer frozen")
    assert report.exit_code == 0, report.summary()
    assert_restored(Manifest.of_instances(sent), restored)
    assert took < RECOVER_WITHIN, f"recovery waited {took:.0f} s on a hung peer"
    assert_no_phi_on_untrusted(fed, "site-a", phi_strings(sent))
