"""Partners whose clocks are hours off take part as any other, and nothing is lost.

Each skewed partner runs as its own ``meshpacs node run`` process under libfaketime
(Debian's ``faketime``): its wall clock (``time.time``, OpenSSL's certificate and CRL
checks, SQLite) is shifted; its monotonic clock is left alone, as an NTP-less server's
would be. One runs hours ahead, one hours behind. Leases are asked for as durations,
records live for days, and certificates and CRLs start a day before they are issued, so
both take and serve shares; a recovery afterwards gives back exactly what the owner
acknowledged, fetching from them.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from meshpacs.testbed.layout import FAST_MAINTENANCE
from meshpacs.testing.synth import SynthInstance
from tests.mesh.conftest import FederationFactory
from tests.mesh.helpers import held_fragments, phi_strings, push, study

from .helpers import NodeProcesses, lose_owner, placements, recover, wait_backed_up
from .oracle import Manifest, assert_no_phi_on_untrusted, assert_restored

LIBFAKETIME = next(
    (p for p in map(Path, ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                           "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"))
     if p.exists()),
    None,
)  # fmt: skip

pytestmark = pytest.mark.skipif(
    LIBFAKETIME is None or shutil.which("faketime") is None,
    reason="libfaketime (Debian package faketime) not installed",
)

SKEW_HOURS = 6


def skewed(hours: int) -> dict[str, str]:
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME": f"{hours:+d}h",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # asyncio's timers keep their pace
    }


async def test_partners_hours_ahead_and_behind_lose_nothing(
    federation: FederationFactory,
    node_processes: NodeProcesses,
    fault_rng: random.Random,
    tmp_path: Path,
) -> None:
    fed = await federation(6, k=2, n=4, maintenance=FAST_MAINTENANCE)
    owner = fed.site("site-a")
    ahead, behind = fault_rng.sample(["site-d", "site-e", "site-f"], 2)
    print(f"{ahead} runs {SKEW_HOURS} h ahead, {behind} {SKEW_HOURS} h behind")
    await node_processes.take_over(fed, ahead, env=skewed(+SKEW_HOURS))
    await node_processes.take_over(fed, behind, env=skewed(-SKEW_HOURS))

    manifest = Manifest()
    sent: list[SynthInstance] = []
    for number in range(4):
        instances = study(seed=900 + number, patient=number)
        await push(owner, instances, tmp_path / f"pacs-{number}")
        manifest.add_instances(instances)
        sent += instances
    await wait_backed_up(fed, owner, {i.study_instance_uid for i in sent}, records=4)

    holders = set().union(*placements(owner).values())
    print(f"holders: {sorted(holders)}")
    for site_id in (ahead, behind):  # 4 bundles x 4 shares on 5 partners: each holds one
        assert site_id in holders and held_fragments(fed.site(site_id)), site_id

    kept = await lose_owner(fed, owner, tmp_path)
    report, restored = await recover(kept, tmp_path)
    assert report.exit_code == 0, report.summary()
    assert_restored(manifest, restored)
    assert_no_phi_on_untrusted(fed, "site-a", phi_strings(sent))
