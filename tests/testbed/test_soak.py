"""The soak's short form: a minute of seeded faults on real node processes, nothing lost.

``scripts/soak.py`` runs the long form (``docs/reliability.md``). Here the faults follow a
fixed schedule of process faults and fragment damage, so that a minute covers several
kinds; the victims, fragments, downtimes and byte positions come from the printed seed
(``MESHPACS_FAULT_SEED=<seed>`` repeats them).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from meshpacs.testbed.soak import FAULT_KINDS, run_soak

from ..faults.helpers import SEED_VARIABLE

MINUTES = 0.75
SCHEDULE = ("kill", "corrupt", "pause", "truncate")


@pytest.mark.slow
def test_a_minute_of_seeded_faults_heals_every_round_and_loses_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get(SEED_VARIABLE) or random.randrange(2**31))
    print(f"soak seed {seed} (rerun with {SEED_VARIABLE}={seed})")
    lines: list[str] = []
    report = run_soak(
        tmp_path / "soak", MINUTES, seed, kinds=SCHEDULE, recover_every=2, progress=lines.append
    )
    print("\n".join(lines))
    print(report.summary())
    assert report.ok, report.summary()
    assert report.losses == 0 and report.extra == 0
    assert report.rounds >= 2 and report.rounds_healed == report.rounds
    assert report.faults_injected >= 2 and len(report.faults) >= 2
    assert set(report.faults) <= set(FAULT_KINDS)
    assert report.recoveries >= 1 and report.instances_checked >= report.instances_acknowledged > 0
    assert not any("SYNTH^" in line or "1.2.826.0.1.3680043.8.498." in line for line in lines)
