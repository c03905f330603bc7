"""The end-of-recovery report: what was planned, what the target holds, what could not be.

A :class:`ReportTally` is fed while recovery runs (every :class:`DeliveryOutcome`, every
bundle found unrecoverable; thread-safe, so a deliverer's ``progress`` callback can feed
it), and gives a frozen :class:`RecoveryReport` at the end, or at Ctrl-C.

Counting. ``*_delivered`` count what the target holds of the plan, whether this run
delivered it or an earlier, interrupted one did (the journal says so: ``instances_resumed``
and ``bytes_resumed``); ``*_this_run`` count this run's own deliveries, the ones to divide
by ``seconds`` for a throughput. An instance is counted once per SHA-256 however many times
the plan lists it. A study is delivered when every instance of it is. ``exit_code`` is 0
only when every planned instance is delivered (so nothing was unrecoverable), 1 otherwise.

What it names. The report is for the recovering site's operator, on their own machine:
to chase a study that did not come back (ask a modality to resend it, or another archive)
they need to know which one, and a study's position in this run's plan means nothing
outside it. So unrecoverable bundles and failed instances name their study by Study
Instance UID, and failed instances by SOP Instance UID; nothing else from the datasets
(no patient name, ID or date). Treat the JSON file as PHI: :meth:`RecoveryReport.write_json`
creates it readable by its owner only. Failed instances are listed up to
:data:`MAX_LISTED`; ``failed_count`` has them all.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshpacs.durable import write_atomic
from meshpacs.recovery.deliver import DeliveryOutcome, OutcomeKind
from meshpacs.recovery.model import PlannedBundle, PlannedStudy

__all__ = [
    "MAX_LISTED",
    "REPORT_VERSION",
    "FailedInstance",
    "RecoveryReport",
    "ReportTally",
    "UnrecoverableBundle",
    "format_size",
]

REPORT_VERSION = 1
MAX_LISTED = 10_000


@dataclass(frozen=True)
class UnrecoverableBundle:
    """A bundle whose instances could not be rebuilt (too few good fragments, say)."""

    bundle_id: bytes
    study_uid: str  # "" for unparsed instances
    instances: int  # of its instances, those the target does not hold
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle_id.hex(),
            "study": self.study_uid,
            "instances": self.instances,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class FailedInstance:
    """An instance rebuilt but not delivered: refused by a check here, or by the target."""

    study_uid: str
    sop_instance_uid: str
    kind: str  # OutcomeKind.REFUSED or OutcomeKind.FAILED
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "kind": self.kind,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class RecoveryReport:
    target: str
    studies_planned: int
    studies_delivered: int
    instances_planned: int
    instances_delivered: int
    instances_resumed: int
    instances_this_run: int
    bytes_planned: int
    bytes_delivered: int
    bytes_resumed: int
    bytes_this_run: int
    seconds: float
    unrecoverable: tuple[UnrecoverableBundle, ...]
    failed: tuple[FailedInstance, ...]
    failed_count: int
    failed_reasons: tuple[tuple[str, int], ...] = ()  # (reason, count), most frequent first
    bundles_planned: int = 0
    bundles_delivered: int = 0  # every instance of the bundle held by the target

    @property
    def complete(self) -> bool:
        return self.instances_delivered == self.instances_planned and not self.unrecoverable

    @property
    def exit_code(self) -> int:
        return 0 if self.complete else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "target": self.target,
            "complete": self.complete,
            "exit_code": self.exit_code,
            "studies_planned": self.studies_planned,
            "studies_delivered": self.studies_delivered,
            "instances_planned": self.instances_planned,
            "instances_delivered": self.instances_delivered,
            "instances_resumed": self.instances_resumed,
            "instances_this_run": self.instances_this_run,
            "bytes_planned": self.bytes_planned,
            "bytes_delivered": self.bytes_delivered,
            "bytes_resumed": self.bytes_resumed,
            "bytes_this_run": self.bytes_this_run,
            "bundles_planned": self.bundles_planned,
            "bundles_delivered": self.bundles_delivered,
            "seconds": round(self.seconds, 3),
            "unrecoverable": [u.to_json() for u in self.unrecoverable],
            "failed": [f.to_json() for f in self.failed],
            "failed_count": self.failed_count,
            "failed_reasons": [{"reason": r, "count": n} for r, n in self.failed_reasons],
        }

    def write_json(self, path: Path) -> None:
        """Write :meth:`to_json` to ``path`` atomically, readable by its owner only."""
        text = json.dumps(self.to_json(), indent=2) + "\n"
        write_atomic(Path(path), text.encode("utf-8"), 0o600)

    def summary(self) -> str:
        """A few lines for the operator's terminal (no UIDs: those are in the JSON)."""
        state = "complete" if self.complete else "INCOMPLETE"
        rate = self.bytes_this_run / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"Recovery into {self.target}: {state}",
            f"  studies    {self.studies_delivered} of {self.studies_planned} delivered",
            f"  instances  {self.instances_delivered} of {self.instances_planned} delivered"
            + (f" ({self.instances_resumed} by an earlier run)" if self.instances_resumed else ""),
            f"  bytes      {format_size(self.bytes_delivered)}"
            f" of {format_size(self.bytes_planned)}; "
            f"{format_size(self.bytes_this_run)} in this run, {self.seconds:.1f} s"
            + (f", {format_size(int(rate))}/s" if rate else ""),
        ]
        if self.unrecoverable:
            lost = sum(u.instances for u in self.unrecoverable)
            lines.append(
                f"  unrecoverable: {len(self.unrecoverable)} bundle(s), {lost} instance(s)"
            )
        if self.failed_count:
            lines.append(f"  not delivered: {self.failed_count} instance(s)")
            lines.extend(f"    {count} x {reason}" for reason, count in self.failed_reasons)
        if not self.complete:
            lines.append("  run again with the same journal to resume; details in the JSON report")
        return "\n".join(lines)


class ReportTally:
    """Counts for :class:`RecoveryReport`, fed as recovery goes; thread-safe.

    ``already_delivered`` are the digests the journal says the target held before this
    run started (``journal.delivered_among`` of the plan's).
    """

    def __init__(
        self,
        target: str,
        studies: Sequence[PlannedStudy],
        already_delivered: Collection[bytes] = (),
    ) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._studies = list(studies)
        self._size: dict[bytes, int] = {}
        self._study_of: dict[bytes, int] = {}
        self._bundle_study: dict[bytes, int] = {}
        self._bundle_members: dict[bytes, frozenset[bytes]] = {}
        for number, study in enumerate(self._studies):
            for bundle in study.bundles:
                self._bundle_study.setdefault(bundle.bundle_id, number)
                self._bundle_members[bundle.bundle_id] = frozenset(
                    i.sha256 for i in bundle.instances
                )
                for instance in bundle.instances:
                    self._size.setdefault(instance.sha256, instance.size)
                    self._study_of.setdefault(instance.sha256, number)
        self._resumed = {d for d in already_delivered if d in self._size}
        self._this_run: set[bytes] = set()
        self._failed: dict[bytes, FailedInstance] = {}
        self._unrecoverable: dict[bytes, tuple[PlannedBundle, str]] = {}

    def record(self, outcome: DeliveryOutcome) -> None:
        """Count one outcome (a deliverer's ``progress`` callback may be this method)."""
        digest = outcome.item.instance.sha256
        with self._lock:
            if digest not in self._size:
                return  # not in the plan: nothing to count it against
            if outcome.kind is OutcomeKind.ALREADY_DELIVERED:
                if digest not in self._this_run:
                    self._resumed.add(digest)
            elif outcome.kind is OutcomeKind.DELIVERED:
                if digest not in self._resumed:
                    self._this_run.add(digest)
            else:
                self._failed[digest] = FailedInstance(
                    outcome.item.study_uid,
                    outcome.item.instance.sop_instance_uid,
                    str(outcome.kind),
                    outcome.detail,
                )

    def record_unrecoverable(self, bundle: PlannedBundle, reason: str) -> None:
        with self._lock:
            self._unrecoverable[bundle.bundle_id] = (bundle, reason)

    def report(self, seconds: float) -> RecoveryReport:
        with self._lock:
            held = self._resumed | self._this_run
            failed = [f for d, f in self._failed.items() if d not in held]
            return RecoveryReport(
                target=self.target,
                studies_planned=len(self._studies),
                studies_delivered=sum(1 for s in self._studies if _whole(s, held)),
                instances_planned=len(self._size),
                instances_delivered=len(held),
                instances_resumed=len(self._resumed),
                instances_this_run=len(self._this_run),
                bytes_planned=sum(self._size.values()),
                bytes_delivered=sum(self._size[d] for d in held),
                bytes_resumed=sum(self._size[d] for d in self._resumed),
                bytes_this_run=sum(self._size[d] for d in self._this_run),
                seconds=seconds,
                unrecoverable=self._lost(held),
                failed=tuple(failed[:MAX_LISTED]),
                failed_count=len(failed),
                failed_reasons=_by_reason(failed),
                bundles_planned=len(self._bundle_members),
                bundles_delivered=sum(1 for m in self._bundle_members.values() if m <= held),
            )

    def _lost(self, held: set[bytes]) -> tuple[UnrecoverableBundle, ...]:
        """Unrecoverable bundles still missing instances (an earlier run may have them)."""
        lost = []
        for bundle, reason in self._unrecoverable.values():
            missing = len({i.sha256 for i in bundle.instances} - held)
            if missing or not bundle.instances:
                number = self._bundle_study.get(bundle.bundle_id)
                uid = self._studies[number].study_uid if number is not None else ""
                lost.append(UnrecoverableBundle(bundle.bundle_id, uid, missing, reason))
        return tuple(lost)


def _by_reason(failed: list[FailedInstance]) -> tuple[tuple[str, int], ...]:
    counts = Counter(f.reason for f in failed)
    return tuple(sorted(counts.items(), key=lambda rc: (-rc[1], rc[0])))


def _whole(study: PlannedStudy, held: set[bytes]) -> bool:
    return all(i.sha256 in held for b in study.bundles for i in b.instances)


def format_size(count: int) -> str:
    """Bytes for an operator: 1000-based units, as disks and networks are sold."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"
