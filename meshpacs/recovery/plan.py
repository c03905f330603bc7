"""Which studies to restore, and in what order.

Everything by default, newest first: after a disaster the studies of the last days are
the ones clinicians ask for first. ``--since``, ``--patient``, ``--study`` and
``--modality`` narrow the plan; ``--order oldest`` reverses it. Bundles of unparsed
instances (no study) come last: they are kept for completeness, not for a ward round.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from meshpacs.recovery.model import PlannedStudy

__all__ = ["ORDERS", "PlanFilter", "select_studies"]

ORDERS = ("newest", "oldest")
_DATE = re.compile(r"[0-9]{8}")


@dataclass(frozen=True)
class PlanFilter:
    since: str | None = None  # YYYYMMDD, inclusive
    patient_id: str | None = None
    study_uid: str | None = None
    modality: str | None = None
    order: str = "newest"

    def __post_init__(self) -> None:
        if self.since is not None and not _DATE.fullmatch(self.since):
            raise ValueError("since must be a date written YYYYMMDD")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}")

    def keeps(self, study: PlannedStudy) -> bool:
        if self.since is not None and not (study.study_date and study.study_date >= self.since):
            return False
        if self.patient_id is not None and study.patient_id != self.patient_id:
            return False
        if self.study_uid is not None and study.study_uid != self.study_uid:
            return False
        return self.modality is None or self.modality.upper() in study.modalities

    @property
    def narrowed(self) -> bool:
        return any(
            v is not None for v in (self.since, self.patient_id, self.study_uid, self.modality)
        )


def select_studies(studies: Iterable[PlannedStudy], plan: PlanFilter) -> list[PlannedStudy]:
    """The studies ``plan`` keeps, in its order (unparsed instances last, unless narrowed)."""
    studies = list(studies)
    kept = [s for s in studies if s.study_uid and plan.keeps(s)]
    kept.sort(key=lambda s: (s.study_date, s.last_received, s.study_uid))
    if plan.order == "newest":
        kept.reverse()
    if not plan.narrowed:
        kept.extend(s for s in studies if not s.study_uid)
    return kept
