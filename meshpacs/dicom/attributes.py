"""The catalog's view of a received instance, read without trusting the dataset.

Only the attributes Query/Retrieve needs are read, pixel data and large values are skipped
(``stop_before_pixels``, ``defer_size``), and a dataset that cannot be read still yields a
record: the exact bytes are kept and the record says why they could not be catalogued.
Error texts keep only the exception's type, since pydicom's messages may quote values.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from meshpacs.dicom.identifiers import is_valid_uid
from meshpacs.metadata.records import InstanceRecord, PatientInfo, SeriesInfo, StudyInfo

__all__ = ["READ_TAGS", "read_instance_record"]

READ_TAGS = [
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "InstanceNumber",
]
# Values longer than this are not read into memory; none of the tags above is ever this long.
_DEFER = 4096


def read_instance_record(
    path: Path,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    size: int,
    sha256: bytes,
    calling_ae: str,
    received_at: float,
) -> InstanceRecord:
    """A catalog record for the stored file at ``path`` (UIDs from the C-STORE request)."""
    unparsed = InstanceRecord(
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        instance_number=None,
        size=size,
        sha256=sha256,
        calling_ae=calling_ae,
        received_at=received_at,
        patient=None,
        study=None,
        series=None,
        parse_error="not read",
    )
    try:
        ds = pydicom.dcmread(
            path, stop_before_pixels=True, defer_size=_DEFER, specific_tags=READ_TAGS
        )
        patient, study, series, number = _hierarchy(ds)
    except _Unusable as exc:
        return replace(unparsed, parse_error=str(exc))
    except Exception as exc:  # pydicom raises many types on bad input; all mean "unparsed"
        return replace(unparsed, parse_error=f"dataset could not be read ({type(exc).__name__})")
    return replace(
        unparsed,
        instance_number=number,
        patient=patient,
        study=study,
        series=series,
        parse_error=None,
    )


class _Unusable(Exception):
    """The dataset parsed, but lacks what the catalog needs to place it."""


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    return str(value).strip()


def _number(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _hierarchy(ds: Dataset) -> tuple[PatientInfo, StudyInfo, SeriesInfo, int | None]:
    study_uid = _text(ds, "StudyInstanceUID")
    series_uid = _text(ds, "SeriesInstanceUID")
    if not is_valid_uid(study_uid):
        raise _Unusable("missing or invalid StudyInstanceUID")
    if not is_valid_uid(series_uid):
        raise _Unusable("missing or invalid SeriesInstanceUID")
    patient = PatientInfo(
        patient_id=_text(ds, "PatientID"),
        issuer=_text(ds, "IssuerOfPatientID"),
        name=_text(ds, "PatientName"),
        birth_date=_text(ds, "PatientBirthDate"),
        sex=_text(ds, "PatientSex"),
    )
    study = StudyInfo(
        study_uid=study_uid,
        date=_text(ds, "StudyDate"),
        time=_text(ds, "StudyTime"),
        accession=_text(ds, "AccessionNumber"),
        study_id=_text(ds, "StudyID"),
        description=_text(ds, "StudyDescription"),
        referring_physician=_text(ds, "ReferringPhysicianName"),
    )
    series = SeriesInfo(
        series_uid=series_uid,
        modality=_text(ds, "Modality"),
        number=_number(ds, "SeriesNumber"),
        description=_text(ds, "SeriesDescription"),
        body_part=_text(ds, "BodyPartExamined"),
    )
    return patient, study, series, _number(ds, "InstanceNumber")
