"""The synthetic study generator: deterministic, realistic, valid, and safe to write out."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, RLELossless

from meshpacs.testing import (
    DEFAULT_STUDY,
    SeriesSpec,
    StudySpec,
    generate_archive,
    generate_study,
    study_of_size,
    write_study,
)

SMALL = StudySpec(series=(SeriesSpec("CT", 3), SeriesSpec("MR", 2)))
SMALL_RLE = StudySpec(series=SMALL.series, transfer_syntax="rle")


def test_same_seed_gives_byte_identical_files_and_another_seed_other_ones() -> None:
    first = [i.data for i in generate_study(4, SMALL)]
    again = [i.data for i in generate_study(4, SMALL)]
    other = list(generate_study(5, SMALL))
    assert first == again
    assert not set(first) & {i.data for i in other}
    assert {i.patient_id for i in generate_study(4, SMALL)} != {i.patient_id for i in other}


def test_default_study_is_512_by_512_ct_and_mr_with_a_consistent_hierarchy() -> None:
    instances = list(generate_study(1, DEFAULT_STUDY))
    assert len({i.study_instance_uid for i in instances}) == 1
    assert len({i.series_instance_uid for i in instances}) == len(DEFAULT_STUDY.series)
    assert len({i.sop_instance_uid for i in instances}) == len(instances)
    ct = next(i for i in instances if i.modality == "CT")
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(ct.data))
    assert ds.SOPClassUID == CTImageStorage == ct.sop_class_uid
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.PixelRepresentation) == (512, 512, 16, 1)
    assert len(ds.PixelData) == 512 * 512 * 2
    assert ds.SOPInstanceUID == ct.sop_instance_uid
    assert ds.StudyInstanceUID == ct.study_instance_uid and ds.PatientID == ct.patient_id
    assert str(ds.PatientName).startswith("SYNTH^")
    mr = next(i for i in instances if i.modality == "MR")
    assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(mr.data)).SOPClassUID == MRImageStorage


def test_a_patient_has_several_studies_on_distinct_dates() -> None:
    instances = list(generate_archive(2, patients=2, studies_per_patient=3, spec=SMALL))
    by_patient: dict[str, set[str]] = {}
    dates: dict[str, str] = {}
    for instance in instances:
        by_patient.setdefault(instance.patient_id, set()).add(instance.study_instance_uid)
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(instance.data), stop_before_pixels=True)
        dates[instance.study_instance_uid] = str(ds.StudyDate)
    assert len(by_patient) == 2 and all(len(s) == 3 for s in by_patient.values())
    for studies in by_patient.values():
        assert len({dates[s] for s in studies}) == 3


def test_rle_variant_is_encapsulated_and_decodes_to_the_same_pixels() -> None:
    plain = list(generate_study(6, SMALL))
    rle = list(generate_study(6, SMALL_RLE))
    assert all(i.transfer_syntax_uid == RLELossless for i in rle)
    for a, b in zip(plain, rle, strict=True):
        da = pydicom.dcmread(pydicom.filebase.DicomBytesIO(a.data))
        db = pydicom.dcmread(pydicom.filebase.DicomBytesIO(b.data))
        assert db.file_meta.TransferSyntaxUID == RLELossless
        assert len(db.PixelData) < len(da.PixelData)  # encapsulated, compressed
        assert np.array_equal(da.pixel_array, db.pixel_array)


def test_study_of_size_reaches_its_target() -> None:
    total = sum(len(i.data) for i in study_of_size(8, 5_000_000))
    assert 5_000_000 <= total < 5_000_000 + 600_000


def test_written_paths_hold_counters_never_dicom_values(tmp_path: Path) -> None:
    instances = list(generate_study(9, SMALL))
    paths = write_study(tmp_path, instances)
    assert [p.read_bytes() for p in paths] == [i.data for i in instances]
    values = {i.sop_instance_uid for i in instances} | {i.patient_id for i in instances}
    values |= {i.study_instance_uid for i in instances}
    for path in paths:
        rel = str(path.relative_to(tmp_path))
        assert not any(v in rel for v in values)
        assert all(c.isalnum() or c in "/._" for c in rel)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
@pytest.mark.parametrize("spec", [SMALL, SMALL_RLE], ids=["explicit", "rle"])
def test_dciodvfy_finds_no_errors(tmp_path: Path, spec: StudySpec) -> None:
    instances = list(generate_study(10, spec))
    ct = next(i for i in instances if i.modality == "CT")
    mr = next(i for i in instances if i.modality == "MR")
    for path in write_study(tmp_path, [ct, mr]):
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        report = out.stdout + out.stderr
        assert not [line for line in report.splitlines() if line.startswith("Error")], report
