"""Shared test data: a fake clock, hand-made records, and pydicom's dicomdirtests tree."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import pydicom

from meshpacs.metadata import InstanceRecord, PatientInfo, SeriesInfo, StudyInfo

# Globbed directly: pydicom.data.get_testdata_files() tries the network and hangs offline.
DICOMDIR_TESTS = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_record(
    sop_uid: str = "1.2.3.4.1",
    *,
    data: bytes = b"instance bytes",
    study_uid: str = "1.2.3.1",
    series_uid: str = "1.2.3.2",
    patient_id: str = "PID1",
    issuer: str = "",
    patient_name: str = "Test^Patient",
    birth_date: str = "19700101",
    sex: str = "F",
    study_date: str = "20240102",
    study_time: str = "101500",
    accession: str = "ACC1",
    study_id: str = "S1",
    study_description: str = "Chest",
    referring: str = "Ref^Doctor",
    modality: str = "CT",
    series_number: int | None = 1,
    series_description: str = "Axial",
    body_part: str = "CHEST",
    instance_number: int | None = 1,
    sop_class_uid: str = CT_STORAGE,
    placed: bool = True,
    parse_error: str | None = None,
) -> InstanceRecord:
    """One instance record with sensible defaults; ``placed=False`` makes it unparsed."""
    return InstanceRecord(
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid=EXPLICIT_LE,
        instance_number=instance_number,
        size=len(data),
        sha256=hashlib.sha256(data).digest(),
        calling_ae="PACS",
        received_at=1_700_000_000.0,
        patient=(
            PatientInfo(patient_id, issuer, patient_name, birth_date, sex) if placed else None
        ),
        study=(
            StudyInfo(
                study_uid, study_date, study_time, accession, study_id, study_description, referring
            )
            if placed
            else None
        ),
        series=(
            SeriesInfo(series_uid, modality, series_number, series_description, body_part)
            if placed
            else None
        ),
        parse_error=parse_error if placed else (parse_error or "dataset could not be read"),
    )


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _number(ds: pydicom.Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    return None if value in (None, "") else int(value)


def dicomdir_files() -> list[Path]:
    return [
        p
        for p in sorted(DICOMDIR_TESTS.rglob("*"))
        if p.is_file() and not p.name.startswith(("DICOMDIR", "README"))
    ]


@functools.cache
def dicomdir_records() -> tuple[InstanceRecord, ...]:
    """An InstanceRecord for every instance of pydicom's dicomdirtests file-sets."""
    records = []
    for path in dicomdir_files():
        data = path.read_bytes()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        records.append(
            InstanceRecord(
                sop_instance_uid=ds.SOPInstanceUID,
                sop_class_uid=ds.SOPClassUID,
                transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                instance_number=_number(ds, "InstanceNumber"),
                size=len(data),
                sha256=hashlib.sha256(data).digest(),
                calling_ae="ORTHANC",
                received_at=1_700_000_000.0,
                patient=PatientInfo(
                    _text(ds, "PatientID"),
                    _text(ds, "IssuerOfPatientID"),
                    _text(ds, "PatientName"),
                    _text(ds, "PatientBirthDate"),
                    _text(ds, "PatientSex"),
                ),
                study=StudyInfo(
                    _text(ds, "StudyInstanceUID"),
                    _text(ds, "StudyDate"),
                    _text(ds, "StudyTime"),
                    _text(ds, "AccessionNumber"),
                    _text(ds, "StudyID"),
                    _text(ds, "StudyDescription"),
                    _text(ds, "ReferringPhysicianName"),
                ),
                series=SeriesInfo(
                    _text(ds, "SeriesInstanceUID"),
                    _text(ds, "Modality"),
                    _number(ds, "SeriesNumber"),
                    _text(ds, "SeriesDescription"),
                    _text(ds, "BodyPartExamined"),
                ),
            )
        )
    return tuple(records)
