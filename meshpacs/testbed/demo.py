"""The local-federation drill the README's main command runs.

Lays out a federation of sites on loopback, starts every node as its own process, pushes
generated studies into one site by C-STORE (as that hospital's PACS would), waits until
the site reports them protected, and then checks what each site holds: the owner no
fragment of its own, n distinct partners one fragment per bundle, the catalog records
only at the owner's trusted peers, and no patient name, ID or UID anywhere outside the
owner. Later issues extend it with losing a site and recovering it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from meshpacs.dicom.scu import Outgoing, Target, send_instances
from meshpacs.errors import MeshError
from meshpacs.node.config import load_config
from meshpacs.node.status import site_status
from meshpacs.testbed.layout import TestbedPlan, TestbedSite, create_testbed
from meshpacs.testbed.processes import start_nodes, stop_nodes
from meshpacs.testing.synth import SeriesSpec, StudySpec, generate_study, write_study

__all__ = ["DemoReport", "run_demo"]

_HEX64 = re.compile(r"[0-9a-f]{64}")
DEMO_STUDY = StudySpec(series=(SeriesSpec("CT", 12, 256, 256), SeriesSpec("MR", 6)))


@dataclass
class DemoReport:
    """What the drill found; ``ok`` only when every check held."""

    sites: int
    k: int
    n: int
    studies: int
    instances: int
    seconds_to_protect: float = 0.0
    fragments_per_site: dict[str, int] = field(default_factory=dict)
    records_per_site: dict[str, int] = field(default_factory=dict)
    phi_hits: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _count(root: Path, pattern: str) -> int:
    return sum(1 for p in root.glob(pattern) if p.is_file() and _HEX64.fullmatch(p.name))


def _push(site: TestbedSite, workdir: Path, studies: int, seed: int) -> tuple[int, set[bytes]]:
    items: list[Outgoing] = []
    phi: set[bytes] = set()
    for number in range(studies):
        instances = list(generate_study(seed, DEMO_STUDY, patient=number))
        paths = write_study(workdir / f"study-{number}", instances)
        for path, instance in zip(paths, instances, strict=True):
            items.append(
                Outgoing(
                    path,
                    instance.sop_class_uid,
                    instance.sop_instance_uid,
                    instance.transfer_syntax_uid,
                )
            )
            phi.update(
                uid.encode()
                for uid in (
                    instance.sop_instance_uid,
                    instance.series_instance_uid,
                    instance.study_instance_uid,
                    instance.patient_id,
                )
            )
        phi.add(f"SYNTH^PATIENT{number}".encode())
    target = Target(site.ae_title, site.host, site.dicom_port, "DEMO_PACS")
    deliveries = send_instances(items, target)
    failed = [d.detail for d in deliveries if not d.ok]
    if failed:
        raise MeshError(f"{len(failed)} instances were refused by the node: {failed[0]}")
    return len(items), phi


def _wait_protected(site: TestbedSite, studies: int, timeout: float) -> float:
    config = load_config(Path(site.config))
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        counts = site_status(config)["studies"]
        if counts["total"] >= studies and counts["protected"] + counts["degraded"] >= studies:
            return time.monotonic() - started
        time.sleep(0.5)
    raise MeshError(f"studies not protected within {timeout:.0f} s: {counts}")


def _phi_hits(root: Path, needles: set[bytes]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if any(needle in data for needle in needles):
                hits.append(str(path.relative_to(root)))
    return hits


def _check(plan: TestbedPlan, report: DemoReport, owner: TestbedSite, phi: set[bytes]) -> None:
    for site in plan.sites:
        root = Path(site.data_dir)
        report.fragments_per_site[site.site_id] = _count(root / "fragments", "[0-9a-f][0-9a-f]/*")
        report.records_per_site[site.site_id] = _count(root / "records" / "catalog", "*/*")
        if site is not owner:
            hits = _phi_hits(root, phi) + _phi_hits(Path(plan.root) / "logs", phi)
            if hits:
                report.phi_hits[site.site_id] = hits
    if report.fragments_per_site[owner.site_id]:
        report.problems.append("the owner holds fragments of its own studies")
    holders = [s for s, count in report.fragments_per_site.items() if count]
    if len(holders) < plan.happy:
        report.problems.append(f"fragments on {len(holders)} sites, fewer than happy={plan.happy}")
    with_records = {s for s, count in report.records_per_site.items() if count}
    if with_records != set(owner.trusted):
        report.problems.append(f"catalog records at {sorted(with_records)}, not {owner.trusted}")
    if report.phi_hits:
        report.problems.append(f"patient data found outside the owner: {report.phi_hits}")


def run_demo(
    root: Path,
    *,
    sites: int = 5,
    k: int = 2,
    n: int = 3,
    studies: int = 2,
    seed: int = 1,
    timeout: float = 180.0,
    say: Callable[[str], None] = print,
) -> DemoReport:
    """Run the drill under ``root`` (new or empty); the nodes are stopped at the end."""
    plan = create_testbed(root, sites, k=k, n=n, stable_seconds=2.0, pass_interval=0.5)
    say(f"federation of {sites} sites laid out under {root} (k={k}, n={n})")
    try:
        start_nodes(plan)
        say("every node answers C-ECHO")
        owner = plan.sites[0]
        count, phi = _push(owner, Path(root) / "pacs", studies, seed)
        say(f"{studies} studies ({count} instances) sent to {owner.site_id} by C-STORE")
        report = DemoReport(sites, k, n, studies, count)
        report.seconds_to_protect = _wait_protected(owner, studies, timeout)
        say(f"all studies protected after {report.seconds_to_protect:.1f} s")
    finally:
        stop_nodes(plan)
    _check(plan, report, owner, phi)
    return report
