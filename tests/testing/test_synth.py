"""Tests of the synthetic DICOM study generator (meshpacs.testing.synth)."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, RLELossless

from meshpacs.testing import (
    DEFAULT_STUDY,
    MAX_SERIES_IMAGES,
    UID_ROOT,
    SeriesSpec,
    StudySpec,
    SynthInstance,
    generate_archive,
    generate_study,
    spec_of_size,
    study_of_size,
    write_study,
)

SMALL = StudySpec(
    series=(SeriesSpec("CT", 4, rows=32, cols=32), SeriesSpec("MR", 3, rows=24, cols=16))
)
SMALL_RLE = StudySpec(series=SMALL.series, transfer_syntax="rle")


def _read(instance: SynthInstance) -> FileDataset:
    return pydicom.dcmread(io.BytesIO(instance.data))


def _digest(instances: list[SynthInstance]) -> str:
    h = hashlib.sha256()
    for instance in instances:
        h.update(len(instance.data).to_bytes(8, "big"))
        h.update(instance.data)
    return h.hexdigest()


# ---- determinism ---------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files() -> None:
    first = list(generate_archive(5, 2, 2, SMALL))
    again = list(generate_archive(5, 2, 2, SMALL))
    assert [i.data for i in first] == [i.data for i in again]
    assert first == again


def test_rle_is_deterministic_too() -> None:
    assert _digest(list(generate_study(5, SMALL_RLE))) == _digest(
        list(generate_study(5, SMALL_RLE))
    )


def test_another_seed_gives_other_patients_uids_and_bytes() -> None:
    a = list(generate_study(1, SMALL))
    b = list(generate_study(2, SMALL))
    assert {i.patient_id for i in a}.isdisjoint({i.patient_id for i in b})
    assert {i.study_instance_uid for i in a}.isdisjoint({i.study_instance_uid for i in b})
    assert {i.sop_instance_uid for i in a}.isdisjoint({i.sop_instance_uid for i in b})
    assert all(x.data != y.data for x, y in zip(a, b, strict=True))
    # the noise differs too, not only the identifiers
    pa = _read(a[0]).pixel_array
    pb = _read(b[0]).pixel_array
    assert not np.array_equal(pa, pb)


def test_study_in_archive_equals_study_alone() -> None:
    archive = list(generate_archive(9, 2, 3, SMALL))
    alone = list(generate_study(9, SMALL, patient=1, study=2))
    uid = alone[0].study_instance_uid
    assert [i for i in archive if i.study_instance_uid == uid] == alone


def test_different_layouts_never_share_uids() -> None:
    other = StudySpec(series=(SeriesSpec("CT", 4, rows=16, cols=16),))
    a = {i.sop_instance_uid for i in generate_study(3, SMALL)}
    b = {i.sop_instance_uid for i in generate_study(3, other)}
    assert a.isdisjoint(b)


# ---- hierarchy -----------------------------------------------------------------------------


def test_archive_hierarchy() -> None:
    instances = list(generate_archive(11, 3, 2, SMALL))
    assert len(instances) == 3 * 2 * SMALL.images
    assert len({i.sop_instance_uid for i in instances}) == len(instances)
    assert len({i.patient_id for i in instances}) == 3
    assert len({i.study_instance_uid for i in instances}) == 6
    assert len({i.series_instance_uid for i in instances}) == 6 * len(SMALL.series)

    studies_of_patient: dict[str, set[str]] = {}
    dates_of_patient: dict[str, set[str]] = {}
    for instance in instances:
        ds = _read(instance)
        # the summary fields match the file
        assert ds.SOPInstanceUID == instance.sop_instance_uid
        assert ds.SOPClassUID == instance.sop_class_uid
        assert ds.SeriesInstanceUID == instance.series_instance_uid
        assert ds.StudyInstanceUID == instance.study_instance_uid
        assert ds.PatientID == instance.patient_id
        assert ds.Modality == instance.modality
        assert ds.file_meta.TransferSyntaxUID == instance.transfer_syntax_uid
        assert ds.file_meta.MediaStorageSOPInstanceUID == instance.sop_instance_uid
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID):
            assert uid.startswith(UID_ROOT)
            assert uid.is_valid
        assert str(ds.PatientName).startswith("SYNTH^PATIENT")
        assert instance.patient_id.startswith("SYN11")
        assert len(ds.PatientBirthDate) == 8
        assert ds.PatientSex in {"F", "M", "O"}
        for keyword in ("StudyTime", "AccessionNumber", "StudyID", "StudyDescription"):
            assert ds.get(keyword), keyword
        assert "ReferringPhysicianName" in ds
        studies_of_patient.setdefault(ds.PatientID, set()).add(ds.StudyInstanceUID)
        dates_of_patient.setdefault(ds.PatientID, set()).add(ds.StudyDate)
    # several studies per patient, on distinct dates
    assert all(len(s) == 2 for s in studies_of_patient.values())
    assert all(len(d) == 2 for d in dates_of_patient.values())


def test_study_dates_increase_with_the_study_number() -> None:
    tiny = StudySpec(series=(SeriesSpec("MR", 1, rows=8, cols=8),))
    dates = [
        _read(next(generate_study(13, tiny, patient=2, study=s))).StudyDate
        for s in (0, 1, 2, 5, 999)
    ]
    assert dates == sorted(dates)
    assert len(set(dates)) == len(dates)


def test_series_attributes_and_instance_numbers() -> None:
    instances = list(generate_study(4, SMALL))
    by_series: dict[str, list[FileDataset]] = {}
    for instance in instances:
        by_series.setdefault(instance.series_instance_uid, []).append(_read(instance))
    numbers = []
    for datasets in by_series.values():
        assert len({d.SeriesNumber for d in datasets}) == 1
        assert len({d.FrameOfReferenceUID for d in datasets}) == 1
        assert [d.InstanceNumber for d in datasets] == list(range(1, len(datasets) + 1))
        # slices march along z
        z = [float(d.ImagePositionPatient[2]) for d in datasets]
        assert z == sorted(z, reverse=True)
        assert len(set(z)) == len(z)
        assert datasets[0].SeriesDescription
        assert datasets[0].BodyPartExamined == "HEAD"
        numbers.append(datasets[0].SeriesNumber)
    assert numbers == [1, 2]


# ---- file contents -------------------------------------------------------------------------


def test_default_study_ct_is_512_signed_16_bit() -> None:
    assert DEFAULT_STUDY.series[0] == SeriesSpec("CT", 20)
    first = next(iter(generate_study(1)))
    assert first.data[128:132] == b"DICM"
    assert first.data[:128] == bytes(128)
    ds = _read(first)
    assert ds.SOPClassUID == CTImageStorage
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (ds.Rows, ds.Columns) == (512, 512)
    assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 16, 1)
    assert float(ds.RescaleIntercept) == -1024
    assert len(ds.PixelData) == 512 * 512 * 2
    pixels = ds.pixel_array
    assert pixels.dtype == np.int16
    assert pixels.shape == (512, 512)
    hu = pixels.astype(np.int32) - 1024
    assert hu[0, 0] < -900  # air in the corner
    assert abs(int(hu[256, 256])) < 60  # water in the middle
    assert hu.max() > 900  # bone ring


def test_mr_is_unsigned_16_bit() -> None:
    mr = next(i for i in generate_study(1, SMALL) if i.modality == "MR")
    ds = _read(mr)
    assert ds.SOPClassUID == MRImageStorage
    assert (ds.Rows, ds.Columns) == (24, 16)
    assert (ds.BitsAllocated, ds.PixelRepresentation) == (16, 0)
    assert len(ds.PixelData) == 24 * 16 * 2
    pixels = ds.pixel_array
    assert pixels.dtype == np.uint16
    assert int(pixels.max()) < 2**ds.BitsStored


def test_rle_is_encapsulated_and_decodes_to_the_explicit_pixels() -> None:
    explicit = list(generate_study(6, SMALL))
    rle = list(generate_study(6, SMALL_RLE))
    assert len(explicit) == len(rle)
    for e, r in zip(explicit, rle, strict=True):
        assert r.sop_instance_uid == e.sop_instance_uid  # same instance, other syntax
        assert r.transfer_syntax_uid == RLELossless
        ds = _read(r)
        assert ds.file_meta.TransferSyntaxUID == RLELossless
        assert ds["PixelData"].is_undefined_length
        assert ds["PixelData"].VR == "OB"
        np.testing.assert_array_equal(ds.pixel_array, _read(e).pixel_array)


# ---- study_of_size -------------------------------------------------------------------------


def test_study_of_size_reaches_the_target() -> None:
    target = 3 * 2**20
    instances = list(study_of_size(2, target))
    total = sum(len(i.data) for i in instances)
    assert total >= target
    slice_bytes = 512 * 512 * 2
    assert total < target + slice_bytes + 64 * 1024  # at most one slice and headers over
    assert {i.modality for i in instances} == {"CT"}
    assert len({i.study_instance_uid for i in instances}) == 1


@pytest.mark.parametrize("target", [1, 10**6, 16 * 2**20, 10**9, 5 * 10**9 + 7])
def test_spec_of_size_plan(target: int) -> None:
    spec = spec_of_size(target)
    assert spec.pixel_bytes >= target
    ct = [s for s in spec.series if s.modality == "CT"]
    assert ct
    assert all(s.matrix == (512, 512) for s in ct)
    assert all(1 <= s.images <= MAX_SERIES_IMAGES for s in ct)
    assert max(s.images for s in ct) - min(s.images for s in ct) <= 1
    assert sum(s.modality == "MR" for s in spec.series) <= 1
    # no more than one slice beyond the target
    assert spec.pixel_bytes - target < 512 * 512 * 2


def test_one_gigabyte_plan_is_about_two_thousand_slices() -> None:
    spec = spec_of_size(10**9)
    assert 1800 <= spec.images <= 2000
    assert len(spec.series) >= 7


# ---- write_study ---------------------------------------------------------------------------


def test_write_study_uses_counters_not_dicom_values(tmp_path: Path) -> None:
    instances = list(generate_archive(8, 2, 1, SMALL))
    paths = write_study(tmp_path, instances)
    assert len(paths) == len(instances)
    assert len(set(paths)) == len(paths)
    identifiers = set()
    for i in instances:
        identifiers |= {i.sop_instance_uid, i.series_instance_uid, i.study_instance_uid}
        identifiers.add(i.patient_id)
    for path, instance in zip(paths, instances, strict=True):
        assert path.read_bytes() == instance.data
        relative = path.relative_to(tmp_path).as_posix()
        assert all(value not in relative for value in identifiers)
        assert UID_ROOT not in relative
        assert "SYN" not in relative
        st, se, name = relative.split("/")
        assert st.startswith("st") and st[2:].isdigit()
        assert se.startswith("se") and se[2:].isdigit()
        assert name.endswith(".dcm") and name[:-4].isdigit()
    assert len({p.parent.parent for p in paths}) == 2
    assert len({p.parent for p in paths}) == 4


# ---- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: SeriesSpec("US", 1),
        lambda: SeriesSpec("CT", 0),
        lambda: SeriesSpec("CT", 1, rows=4),
        lambda: StudySpec(series=()),
        lambda: StudySpec(series=(SeriesSpec("CT", 1),), transfer_syntax="jpeg"),
    ],
)
def test_bad_specs_are_refused(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        generate_study(-1)
    with pytest.raises(ValueError):
        generate_study(1, patient=-1)
    with pytest.raises(ValueError):
        generate_study(1, study=1000)
    with pytest.raises(ValueError):
        spec_of_size(0)


# ---- independent validation ----------------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("dciodvfy") is None,
    reason="dciodvfy not on PATH (apt-get install dicom3tools); CI installs it",
)
def test_dciodvfy_reports_no_errors(tmp_path: Path) -> None:
    ct, mr = (
        next(i for i in generate_study(12) if i.modality == m)  # 512x512 CT, 256x256 MR
        for m in ("CT", "MR")
    )
    rle = list(generate_study(12, SMALL_RLE))
    rle_ct = next(i for i in rle if i.modality == "CT")
    rle_mr = next(i for i in rle if i.modality == "MR")
    paths = write_study(tmp_path, [ct, mr, rle_ct, rle_mr])
    for path, expected in zip(paths, ["CTImage", "MRImage", "CTImage", "MRImage"], strict=True):
        result = subprocess.run(
            ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        output = result.stdout + result.stderr
        assert expected in output, output
        errors = [line for line in output.splitlines() if line.startswith("Error")]
        assert not errors, output
