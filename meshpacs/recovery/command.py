"""``meshpacs recover`` as a library call: from a phrase to a rebuilt archive, or a dry run.

:func:`run_recovery` joins the federation as the recovering site, reads its sealed catalog
records from the peers (the trusted ones answer; the others hold nothing for it), plans,
and runs the recovery into the target, journaled in the working directory so that running
it again resumes. :func:`dry_run` stops after the plan and asks every recorded holder
whether it still holds its share: how recoverable each study is, without moving data.

While it runs, the recovery keeps a PHI-free progress document
(:class:`~meshpacs.recovery.progress.ProgressFile`) in ``WORKDIR/progress.json`` and, with
``show_on`` (a node's state directory), in that node's ``state/recovery.json``, which the
node's dashboard and ``/metrics`` show.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from meshpacs.dicom.scu import Target
from meshpacs.errors import MeshError
from meshpacs.keys import SiteSecret
from meshpacs.recovery.catalog import open_records, plan_studies
from meshpacs.recovery.deliver import (
    AeDeliverer,
    Deliverer,
    DirDeliverer,
    ae_identity,
    dir_identity,
)
from meshpacs.recovery.gather import pool_fetch
from meshpacs.recovery.journal import RecoveryJournal
from meshpacs.recovery.model import PlannedBundle, PlannedStudy
from meshpacs.recovery.plan import PlanFilter, select_studies
from meshpacs.recovery.progress import (
    DASHBOARD_FILE,
    PROGRESS_FILE,
    ProgressDisplay,
    ProgressFile,
)
from meshpacs.recovery.report import RecoveryReport
from meshpacs.recovery.service import RecoveryRun, RunSettings
from meshpacs.recovery.session import (
    MeshSession,
    RecoveryCredentials,
    collect_records,
    open_session,
)

__all__ = ["RecoverRequest", "dry_run", "run_recovery"]

_log = logging.getLogger("meshpacs.recovery")
JOURNAL_FILE = "journal.sqlite"


@dataclass(frozen=True)
class RecoverRequest:
    secret: SiteSecret
    credentials: RecoveryCredentials
    workdir: Path
    plan: PlanFilter = field(default_factory=PlanFilter)
    to_ae: Target | None = None
    to_dir: Path | None = None
    peers: tuple[str, ...] = ()  # empty: ask every member the DHT knows
    associations: int = 4
    settings: RunSettings = field(default_factory=RunSettings)
    show_on: Path | None = None  # a node's state directory: its dashboard shows the progress

    def __post_init__(self) -> None:
        if (self.to_ae is None) == (self.to_dir is None):
            raise ValueError("give exactly one target: an AE or a directory")


async def _plan(
    session: MeshSession, request: RecoverRequest, say: Callable[[str], None]
) -> list[PlannedStudy]:
    peers = list(request.peers) or await session.members()
    say(f"asking {len(peers)} member sites for this site's catalog records")
    sealed, failed = await collect_records(session, peers)
    for peer, why in failed.items():
        say(f"  site {peer} did not answer: {why}")
    opened = open_records(session.keys, session.site_id, sealed)
    if opened.refused:
        say(f"  {opened.refused} records did not open with this site's key and were ignored")
    if not opened.records:
        raise MeshError(
            "no catalog record of this site was found: check the site ID, the phrase, and"
            " that its trusted peers are up (--peer names them)"
        )
    studies = select_studies(plan_studies(session.keys, opened.records), request.plan)
    say(f"plan: {len(studies)} studies, {sum(s.instance_count for s in studies)} instances")
    return studies


async def _find_holders(session: MeshSession, fragment_id: str) -> list[str]:
    return [record.holder_site_id for record in await session.dht.find_providers(fragment_id)]


async def run_recovery(
    request: RecoverRequest,
    say: Callable[[str], None] = lambda _: None,
    progress: TextIO | None = None,
) -> RecoveryReport:
    """Recover the planned studies into the target; the report says what came back.

    ``progress`` (the operator's standard error) gets the running figures: a line redrawn
    in place on a terminal, a plain line every few seconds otherwise. The progress
    document (see the module) is written throughout, and once more at the end with the
    outcome: complete, incomplete, failed (an error ended the run) or interrupted.
    """
    request.workdir.mkdir(parents=True, exist_ok=True)
    paths = [request.workdir / PROGRESS_FILE]
    if request.show_on is not None:
        paths.append(request.show_on / DASHBOARD_FILE)
    shown = ProgressFile(request.credentials.site_id, paths)
    shown.write(None)
    runs: list[RecoveryRun] = []
    try:
        report = await _recover(request, say, progress, shown, runs)
    except BaseException as exc:
        stopped = isinstance(exc, asyncio.CancelledError | KeyboardInterrupt)
        last = runs[0].tally.report(0.0) if runs else None  # the document has no rate
        shown.write(last, outcome="interrupted" if stopped else "failed")
        raise
    shown.write(report, outcome="complete" if report.complete else "incomplete")
    return report


async def _recover(
    request: RecoverRequest,
    say: Callable[[str], None],
    progress: TextIO | None,
    shown: ProgressFile,
    runs: list[RecoveryRun],
) -> RecoveryReport:
    async with open_session(request.secret, request.credentials, request.workdir) as session:
        studies = await _plan(session, request, say)
        if request.to_ae is not None:
            identity = ae_identity(request.to_ae)
        else:
            assert request.to_dir is not None
            identity = dir_identity(request.to_dir)
        with RecoveryJournal.open(request.workdir / JOURNAL_FILE, identity) as journal:
            deliverer: Deliverer
            if request.to_ae is not None:
                deliverer = AeDeliverer(request.to_ae, journal, associations=request.associations)
            else:
                assert request.to_dir is not None
                deliverer = DirDeliverer(request.to_dir, journal)
            run = RecoveryRun(
                studies=studies,
                key_wrap_key=session.keys.key_wrap,
                fetch=pool_fetch(session.pool),
                find_holders=lambda fid: _find_holders(session, fid),
                deliverer=deliverer,
                journal=journal,
                workdir=request.workdir / "work",
                settings=request.settings,
                say=say,
            )
            runs.append(run)
            report = await _run_showing(run, progress, shown)
            if isinstance(deliverer, DirDeliverer):
                await deliverer.finish()
            return report


async def _run_showing(
    run: RecoveryRun, stream: TextIO | None, shown: ProgressFile
) -> RecoveryReport:
    started = time.monotonic()

    def snapshot() -> RecoveryReport:
        return run.tally.report(time.monotonic() - started)

    async with shown.running(snapshot):
        if stream is None:
            return await run.run()
        async with ProgressDisplay(snapshot, stream).running():
            return await run.run()


async def _reachable(session: MeshSession, bundle: PlannedBundle) -> int:
    async def held(site: str, fragment_id: str) -> bool:
        try:
            async with await session.pool.connect(site) as conn:
                return await conn.has_fragment(fragment_id) is not None
        except MeshError:
            return False

    checks = [held(h.site_id, h.fragment_id) for h in bundle.holders]
    answers = await asyncio.gather(*checks)
    return len({h.share for h, ok in zip(bundle.holders, answers, strict=True) if ok})


async def dry_run(
    request: RecoverRequest, say: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """The plan, with how many good fragments of each bundle are reachable now."""
    async with open_session(request.secret, request.credentials, request.workdir) as session:
        studies = await _plan(session, request, say)
        planned = []
        for study in studies:
            bundles: list[dict[str, Any]] = []
            for bundle in study.bundles:
                reachable = await _reachable(session, bundle)
                bundles.append(
                    {
                        "bundle": bundle.bundle_id.hex(),
                        "k": bundle.k,
                        "n": bundle.n,
                        "reachable": reachable,
                    }
                )
            planned.append(
                {
                    "study": study.study_uid,
                    "instances": study.instance_count,
                    "bytes": study.size,
                    "bundles": bundles,
                    "recoverable": all(int(b["reachable"]) >= int(b["k"]) for b in bundles),
                }
            )
        return {
            "studies_planned": len(studies),
            "recoverable": sum(1 for p in planned if p["recoverable"]),
            "studies": planned,
        }
