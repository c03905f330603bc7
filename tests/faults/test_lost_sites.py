"""k-of-n placement against lost sites: n-k gone still restores exactly; one more is an
explicit Unrecoverable report naming exactly the bundles short of k (and, once those sites
are back, the same recovery resumes and completes); and repair brings every bundle back to n."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from meshpacs.node.status import site_status
from meshpacs.testbed.layout import FAST_MAINTENANCE
from meshpacs.testing.synth import SynthInstance
from tests.mesh.conftest import Federation, FederationFactory, RunningSite
from tests.mesh.helpers import eventually, held_fragments, phi_strings, push, study

from .helpers import lose_owner, placements, recover, wait_backed_up
from .oracle import Manifest, assert_no_phi_on_untrusted, assert_restored

K, N = 2, 3
STUDIES = 4


@dataclass
class Protected:
    fed: Federation
    owner: RunningSite
    sent: list[SynthInstance]
    manifest: Manifest
    placed: dict[str, set[str]]  # bundle ID hex -> holders, from the owner's ledger


async def protected(
    federation: FederationFactory, tmp_path: Path, studies: int = STUDIES, **options: object
) -> Protected:
    """Five sites, site-a's studies protected 2-of-3 and its records on b and c."""
    fed = await federation(5, k=K, n=N, **options)
    owner = fed.site("site-a")
    sent: list[SynthInstance] = []
    for number in range(studies):
        instances = study(seed=800 + number, patient=number)
        await push(owner, instances, tmp_path / f"pacs-{number}")
        sent += instances
    await wait_backed_up(fed, owner, {i.study_instance_uid for i in sent}, records=studies)
    placed = placements(owner)
    assert len(placed) == studies and all(len(h) == N for h in placed.values()), placed
    return Protected(fed, owner, sent, Manifest.of_instances(sent), placed)


async def destroy(site: RunningSite) -> None:
    """A site lost for good: its node stops and its disk is gone."""
    await site.halt()
    shutil.rmtree(site.data_dir)


async def test_losing_n_minus_k_sites_restores_exactly(
    federation: FederationFactory, fault_rng: random.Random, tmp_path: Path
) -> None:
    p = await protected(federation, tmp_path)
    holders = sorted(set().union(*p.placed.values()))
    lost = fault_rng.sample(holders, N - K)
    print(f"lost for good: {lost}")
    for site_id in lost:
        await destroy(p.fed.site(site_id))
    assert any(set(lost) & h for h in p.placed.values())  # it did hold shares
    kept = await lose_owner(p.fed, p.owner, tmp_path)
    peers = tuple(s for s in p.owner.plan.trusted if s not in lost)
    report, restored = await recover(kept, tmp_path, peers=peers)
    assert report.exit_code == 0 and not report.unrecoverable, report.summary()
    assert_restored(p.manifest, restored)
    assert_no_phi_on_untrusted(p.fed, p.owner, phi_strings(p.sent))


async def test_losing_one_site_more_is_an_explicit_unrecoverable_report_then_resumes(
    federation: FederationFactory, fault_rng: random.Random, tmp_path: Path
) -> None:
    p = await protected(federation, tmp_path)
    trusted = set(p.owner.plan.trusted)
    # n-k+1 holders of one bundle go down, never both trusted peers (the catalog records
    # must stay readable).
    bundle = fault_rng.choice(sorted(p.placed))
    pairs = [
        [a, b]
        for a in sorted(p.placed[bundle])
        for b in sorted(p.placed[bundle])
        if a < b and not trusted <= {a, b}
    ]
    gone = fault_rng.choice(pairs)
    print(f"bundle {bundle}: holders {sorted(p.placed[bundle])}, stopped {gone}")
    for site_id in gone:
        await p.fed.site(site_id).halt()
    short = {b for b, holders in p.placed.items() if len(holders - set(gone)) < K}
    assert bundle in short

    kept = await lose_owner(p.fed, p.owner, tmp_path)
    peers = tuple(s for s in p.owner.plan.trusted if s not in gone)
    report, restored = await recover(kept, tmp_path, peers=peers)
    assert report.exit_code != 0 and not report.complete
    assert {u.bundle_id.hex() for u in report.unrecoverable} == short, report.summary()
    assert all(u.reason and u.instances > 0 for u in report.unrecoverable), report.unrecoverable
    lost_studies = {u.study_uid for u in report.unrecoverable}
    # Everything else came back exactly, and nothing of the lost studies was delivered.
    assert_restored(p.manifest.without_studies(lost_studies), restored)
    assert report.failed_count == 0

    for site_id in gone:
        await p.fed.site(site_id).start()
    again, restored = await recover(kept, tmp_path, peers=tuple(p.owner.plan.trusted))
    assert again.exit_code == 0, again.summary()
    assert_restored(p.manifest, restored)
    assert_no_phi_on_untrusted(p.fed, p.owner, phi_strings(p.sent))


class NotRepaired(AssertionError):
    """A bundle is still on fewer than n live sites."""


REPAIR_WAIT = 60.0  # s; audits find the lost site, 3.6 s of grace, then a repair pass


async def test_after_losing_n_minus_k_sites_repair_brings_every_bundle_back_to_n(
    federation: FederationFactory, fault_rng: random.Random, tmp_path: Path
) -> None:
    p = await protected(federation, tmp_path, studies=2, maintenance=FAST_MAINTENANCE)
    lost = fault_rng.choice(sorted(set().union(*p.placed.values())))
    print(f"lost for good: {lost}")
    await destroy(p.fed.site(lost))
    live = [s for s in p.fed.sites if s.site_id not in {lost, p.owner.site_id}]

    def repaired() -> bool:
        ledger = placements(p.owner)
        on_live = all(len(h - {lost}) >= N for h in ledger.values())
        return on_live and sum(len(held_fragments(s)) for s in live) >= N * len(ledger)

    try:
        await eventually(repaired, REPAIR_WAIT, "every bundle back on n live sites")
    except AssertionError as error:
        raise NotRepaired(f"{error}: {placements(p.owner)}") from None
    await eventually(
        lambda: (
            (site_status(p.owner.config)["audits"]["repairs"] or {}).get("bundles_below_n") == 0
        ),
        REPAIR_WAIT,
        "status: no bundle below n",
    )
    repairs = site_status(p.owner.config)["audits"]["repairs"]
    assert repairs["repaired"] >= 1 and repairs["shares_placed"] >= 1, repairs
