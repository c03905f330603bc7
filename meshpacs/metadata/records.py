"""What the catalog takes in and gives out: plain frozen records, no I/O.

The C-STORE handler builds an :class:`InstanceRecord` per received object from the
attributes it parsed (or ``None`` where it could not parse them); the Q/R SCP builds a
:class:`FindQuery` from a C-FIND identifier. Strings are DICOM values as decoded by
pydicom, trailing padding removed; an absent type-2 attribute is ``""``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

__all__ = [
    "LEVELS",
    "MAX_UID_LENGTH",
    "AddResult",
    "FindQuery",
    "InstanceLocation",
    "InstanceRecord",
    "Level",
    "PatientInfo",
    "Root",
    "SeriesInfo",
    "StudyInfo",
    "StudyState",
]

# DICOM PS3.5 §9.1 caps a UID at 64 characters; the bundle index relies on the same bound.
MAX_UID_LENGTH = 64

Root = Literal["PATIENT", "STUDY"]
Level = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
# Top to bottom; a level's position is its depth in the information model.
LEVELS: tuple[Level, ...] = ("PATIENT", "STUDY", "SERIES", "IMAGE")


def _check_uid(what: str, uid: str) -> None:
    if not 1 <= len(uid) <= MAX_UID_LENGTH or not uid.isascii() or not uid.isprintable():
        raise ValueError(f"{what} must be 1..{MAX_UID_LENGTH} printable ASCII characters")


@dataclass(frozen=True)
class PatientInfo:
    """Patient-level attributes; ``(patient_id, issuer)`` identifies the patient."""

    patient_id: str
    issuer: str
    name: str
    birth_date: str
    sex: str


@dataclass(frozen=True)
class StudyInfo:
    """Study-level attributes; ``study_uid`` identifies the study."""

    study_uid: str
    date: str
    time: str
    accession: str
    study_id: str
    description: str
    referring_physician: str

    def __post_init__(self) -> None:
        _check_uid("Study Instance UID", self.study_uid)


@dataclass(frozen=True)
class SeriesInfo:
    """Series-level attributes; ``series_uid`` identifies the series."""

    series_uid: str
    modality: str
    number: int | None
    description: str
    body_part: str

    def __post_init__(self) -> None:
        _check_uid("Series Instance UID", self.series_uid)


@dataclass(frozen=True)
class InstanceRecord:
    """One received object: its identity, its exact bytes' digest, and where it belongs.

    ``patient``, ``study`` and ``series`` are all set or all ``None``. ``None`` means the
    dataset could not be parsed far enough to place it; its exact bytes are still kept and
    the instance is flagged with ``parse_error`` (required then), so nothing a PACS sent is
    ever dropped. ``parse_error`` may also accompany a placed instance (a partial parse).
    """

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    instance_number: int | None
    size: int
    sha256: bytes
    calling_ae: str
    received_at: float
    patient: PatientInfo | None
    study: StudyInfo | None
    series: SeriesInfo | None
    parse_error: str | None = None

    def __post_init__(self) -> None:
        _check_uid("SOP Instance UID", self.sop_instance_uid)
        if self.size < 0 or len(self.sha256) != 32:
            raise ValueError("an instance needs a size >= 0 and a 32-byte SHA-256")
        placed = [self.patient is not None, self.study is not None, self.series is not None]
        if any(placed) and not all(placed):
            raise ValueError("patient, study and series are all given or all None")
        if not any(placed) and not self.parse_error:
            raise ValueError("an instance without patient/study/series must carry parse_error")

    @property
    def placed(self) -> bool:
        """True when the instance has a place in the patient/study/series hierarchy."""
        return self.series is not None


class AddResult(enum.Enum):
    """What :meth:`Catalog.add_instances` did with one record."""

    STORED = "stored"
    """New SOP Instance UID (or a new instance under a known one): added."""
    DUPLICATE = "duplicate"
    """Same SOP Instance UID and same SHA-256 as a stored version: nothing added."""
    CONFLICT = "conflict"
    """Same SOP Instance UID, different bytes: the new version is kept too, all flagged."""


@dataclass(frozen=True)
class InstanceLocation:
    """Enough to fetch and send one stored instance version (C-MOVE / C-GET)."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    sha256: bytes
    size: int


class StudyState(enum.Enum):
    """Where a study is on its way to being backed up.

    RECEIVING: instances arrived recently; STABLE: quiet for long enough; QUEUED: waiting
    in the backup queue; PROTECTED: backed up to the mesh. A new instance sends a study
    back to RECEIVING from any state.
    """

    RECEIVING = "receiving"
    STABLE = "stable"
    QUEUED = "queued"
    PROTECTED = "protected"


@dataclass(frozen=True)
class FindQuery:
    """A C-FIND identifier: information model root, level, and keys.

    ``keys`` maps DICOM keywords to the requested value as a DICOM string; ``""`` asks
    for the attribute without constraining on it (universal matching). The mapping is
    copied, so the query cannot change after it is built.
    """

    root: Root
    level: Level
    keys: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))
