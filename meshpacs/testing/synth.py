"""Deterministic synthetic DICOM studies for tests, the demo and benchmarks.

Everything here is derived from a seed and a few counters, so the same arguments always give
byte-identical Part 10 files (with the same pydicom version), and another seed gives other
patients and other UIDs. UIDs live under pydicom's example root
``1.2.826.0.1.3680043.8.498.``, which is fine for synthetic data and never for real data.

The images are cheap phantoms, not noise: a CT "head" (water cylinder, bone ring, a spherical
lesion that grows and shrinks through the series, uniform per-pixel noise) stored as
signed 16-bit with ``RescaleIntercept -1024``, and a T1-like MR head (scalp, skull, brain,
ventricles, an enhancing lesion) stored as unsigned 16-bit with 12 bits used. The noise-free
base image of each geometry is computed once and cached; each slice only adds fresh noise from
its own seeded :class:`numpy.random.Generator` and paints the lesion inside a small box, so a
512x512 CT slice costs about a millisecond of numpy work.

Instances are generated one at a time: a 2000-slice (1 GB) study never holds more than one
file in memory, unless the caller keeps them.

Nothing in this module takes a DICOM value into a file name: :func:`write_study` names files by
counters only.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

__all__ = [
    "DEFAULT_STUDY",
    "MAX_SERIES_IMAGES",
    "TRANSFER_SYNTAXES",
    "UID_ROOT",
    "SeriesSpec",
    "StudySpec",
    "SynthInstance",
    "generate_archive",
    "generate_study",
    "spec_of_size",
    "study_of_size",
    "write_study",
]

UID_ROOT: Final = "1.2.826.0.1.3680043.8.498."
"""pydicom's registered example UID root. Good for synthetic data only."""

TRANSFER_SYNTAXES: Final[dict[str, UID]] = {
    "explicit": ExplicitVRLittleEndian,
    "rle": RLELossless,
}
"""The ``StudySpec.transfer_syntax`` names this generator knows, and their UIDs."""

MAX_SERIES_IMAGES: Final = 300
"""Largest CT series :func:`spec_of_size` plans; bigger studies are split into series."""

_SOP_CLASSES: Final[dict[str, UID]] = {"CT": CTImageStorage, "MR": MRImageStorage}
_DEFAULT_MATRIX: Final[dict[str, int]] = {"CT": 512, "MR": 256}
_MIN_MATRIX: Final = 8
_MAX_MATRIX: Final = 4096
_MAX_SEED: Final = 2**64 - 1
_MAX_STUDY: Final = 999  # 120 days apart: dates and PatientAge (AS, 3 digits) stay valid

# Mixed into every hash and every noise seed, so that these streams never coincide with
# anything else in the project that happens to hash the same integers.
_SALT: Final = "meshpacs.testing.synth/1"
_SALT_INT: Final = 0x6D657368  # "mesh"

_Array = npt.NDArray[Any]


# --------------------------------------------------------------------------------------------
# Specifications and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesSpec:
    """One series: its modality, its number of images, and optionally its matrix.

    ``rows``/``cols`` default to 512x512 for CT and 256x256 for MR.
    """

    modality: str
    images: int
    rows: int | None = None
    cols: int | None = None

    def __post_init__(self) -> None:
        if self.modality not in _SOP_CLASSES:
            raise ValueError(f"modality must be one of {sorted(_SOP_CLASSES)}")
        if isinstance(self.images, bool) or not isinstance(self.images, int) or self.images < 1:
            raise ValueError("images must be a positive integer")
        for name in ("rows", "cols"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not _MIN_MATRIX <= value <= _MAX_MATRIX
            ):
                raise ValueError(f"{name} must be an integer in [{_MIN_MATRIX}, {_MAX_MATRIX}]")

    @property
    def matrix(self) -> tuple[int, int]:
        """``(rows, cols)`` with the modality defaults filled in."""
        default = _DEFAULT_MATRIX[self.modality]
        return (
            self.rows if self.rows is not None else default,
            self.cols if self.cols is not None else default,
        )

    @property
    def pixel_bytes(self) -> int:
        """Bytes of uncompressed pixel data in one image of this series."""
        rows, cols = self.matrix
        return rows * cols * 2


@dataclass(frozen=True)
class StudySpec:
    """One study: its series, in order, and the transfer syntax of every file in it.

    ``transfer_syntax`` is ``"explicit"`` (Explicit VR Little Endian) or ``"rle"`` (RLE
    Lossless, encapsulated, encoded by pydicom's own encoder).
    """

    series: tuple[SeriesSpec, ...]
    transfer_syntax: str = "explicit"

    def __post_init__(self) -> None:
        if not isinstance(self.series, tuple) or not self.series:
            raise ValueError("series must be a non-empty tuple of SeriesSpec")
        if not all(isinstance(s, SeriesSpec) for s in self.series):
            raise ValueError("series must be a non-empty tuple of SeriesSpec")
        if self.transfer_syntax not in TRANSFER_SYNTAXES:
            raise ValueError(f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAXES)}")

    @property
    def images(self) -> int:
        """Number of instances in the study."""
        return sum(s.images for s in self.series)

    @property
    def pixel_bytes(self) -> int:
        """Uncompressed pixel bytes of the whole study: a lower bound of its explicit size."""
        return sum(s.images * s.pixel_bytes for s in self.series)


@dataclass(frozen=True)
class SynthInstance:
    """One generated instance: its identifiers and its complete Part 10 file bytes."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    modality: str
    transfer_syntax_uid: str
    data: bytes

    def __repr__(self) -> str:  # keep multi-megabyte reprs out of test failure output
        return (
            f"SynthInstance(sop_instance_uid={self.sop_instance_uid!r}, "
            f"modality={self.modality!r}, transfer_syntax_uid={self.transfer_syntax_uid!r}, "
            f"data=<{len(self.data)} bytes>)"
        )


DEFAULT_STUDY: Final = StudySpec(
    series=(SeriesSpec("CT", 20), SeriesSpec("MR", 10)),
)
"""A small realistic study: 20 CT slices of 512x512 and 10 MR slices of 256x256."""


# --------------------------------------------------------------------------------------------
# Deterministic helpers
# --------------------------------------------------------------------------------------------


def _check_index(name: str, value: int, upper: int = 10**9) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= upper:
        raise ValueError(f"{name} must be an integer in [0, {upper}]")


def _uid(seed: int, *parts: object) -> str:
    """A UID under :data:`UID_ROOT`, a pure function of the seed and the parts."""
    sources = [_SALT, str(seed), *(str(p) for p in parts)]
    return str(generate_uid(prefix=UID_ROOT, entropy_srcs=sources))


def _hash_int(*parts: object) -> int:
    """A stable 64-bit integer from the parts (``hash()`` is salted per process)."""
    text = "\x1f".join([_SALT, *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _patient_id(seed: int, patient: int) -> str:
    # The dash keeps (seed 1, patient 12) and (seed 11, patient 2) apart.
    return f"SYN{seed}-{patient}"


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters, stable across platforms."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


# --------------------------------------------------------------------------------------------
# Phantoms (computed once per geometry)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Phantom:
    base: _Array  # read-only, stored values, dtype int16 (CT) or uint16 (MR)
    noise_low: int  # per-pixel noise is drawn from [noise_low, noise_high)
    noise_high: int
    lesion_delta: int  # added to the stored value inside the lesion
    lesion_radius: int  # maximum lesion radius, pixels
    lesion_reach: float  # lesion centre lies within this fraction of the half-matrix


@lru_cache(maxsize=16)
def _phantom(modality: str, rows: int, cols: int) -> _Phantom:
    yy, xx = np.ogrid[0:rows, 0:cols]
    # Normalised coordinates: the inscribed circle of the matrix has radius 1.
    half = min(rows, cols) / 2.0
    y = (yy - (rows - 1) / 2.0).astype(np.float32) / np.float32(half)
    x = (xx - (cols - 1) / 2.0).astype(np.float32) / np.float32(half)
    r = np.sqrt((y / np.float32(1.08)) ** 2 + x**2)  # a slightly oval head
    lesion_radius = max(1, round(0.10 * half))
    if modality == "CT":
        hu = np.full((rows, cols), -1000, dtype=np.int16)  # air
        hu[r < 0.90] = 1000  # bone ring (skull)
        hu[r < 0.82] = 0  # water
        hu[np.hypot(y + np.float32(0.05), x) < 0.08] = 15  # a faint central structure
        stored = hu + np.int16(1024)  # RescaleIntercept -1024
        phantom = _Phantom(stored, -20, 21, 60, lesion_radius, 0.50)
    else:
        signal = np.zeros((rows, cols), dtype=np.uint16)  # background
        signal[r < 0.95] = 1400  # scalp fat (bright on T1)
        signal[r < 0.88] = 120  # skull (dark)
        signal[r < 0.82] = 700  # brain
        for side in (-1.0, 1.0):  # lateral ventricles (dark CSF on T1)
            ventricle = ((y + np.float32(0.05)) / np.float32(0.22)) ** 2 + (
                (x - np.float32(side * 0.12)) / np.float32(0.07)
            ) ** 2
            signal[ventricle < 1.0] = 250
        phantom = _Phantom(signal, 0, 41, 600, lesion_radius, 0.50)
    phantom.base.setflags(write=False)
    return phantom


@lru_cache(maxsize=16)
def _disk_distance(radius: int) -> _Array:
    """Distance from the centre of a (2r+1)x(2r+1) box, read-only."""
    yy, xx = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    dist: _Array = np.sqrt((yy * yy + xx * xx).astype(np.float32))
    dist.setflags(write=False)
    return dist


def _lesion_centre(seed: int, patient: int, rows: int, cols: int, reach: float) -> tuple[int, int]:
    """Where this patient's lesion sits: fixed per patient, inside the brain/water."""
    h = _hash_int(seed, "lesion", patient)
    angle = (h % 3600) / 3600.0 * 2.0 * math.pi
    dist = reach * (0.4 + 0.6 * ((h >> 16) % 1000) / 1000.0)
    half = min(rows, cols) / 2.0
    cy = round((rows - 1) / 2.0 + dist * half * math.sin(angle))
    cx = round((cols - 1) / 2.0 + dist * half * math.cos(angle))
    return cy, cx


def _slice_pixels(
    phantom: _Phantom,
    centre: tuple[int, int],
    position: float,
    rng: np.random.Generator,
) -> _Array:
    """One slice: the cached base, fresh noise, and the lesion cross-section at ``position``.

    ``position`` runs through (0, 1) along the series; the lesion is an ellipsoid in the
    middle 70 % of it.
    """
    base = phantom.base
    noise = rng.integers(phantom.noise_low, phantom.noise_high, size=base.shape, dtype=base.dtype)
    img = base + noise
    t = (position - 0.5) / 0.35
    if abs(t) < 1.0:
        radius = phantom.lesion_radius * math.sqrt(1.0 - t * t)
        r = phantom.lesion_radius
        cy, cx = centre
        rows, cols = base.shape
        y0, y1 = max(cy - r, 0), min(cy + r + 1, rows)
        x0, x1 = max(cx - r, 0), min(cx + r + 1, cols)
        if y0 < y1 and x0 < x1:
            dist = _disk_distance(r)[y0 - (cy - r) : y1 - (cy - r), x0 - (cx - r) : x1 - (cx - r)]
            box = img[y0:y1, x0:x1]
            box[dist < radius] += img.dtype.type(phantom.lesion_delta)
    return img


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StudyContext:
    seed: int
    patient: int
    study: int
    layout: str  # the spec's series layout, mixed into every UID of the study
    patient_id: str
    study_uid: str
    study_date: _dt.date
    study_time: _dt.time


def _layout(spec: StudySpec) -> str:
    """The series layout of a spec, without its transfer syntax.

    It goes into the UIDs, so two different specs never produce the same UIDs for different
    images, while the explicit and RLE variants of one spec do share their UIDs: they are the
    same instances in two transfer syntaxes, as after a transcoding.
    """
    return ",".join(f"{s.modality}:{s.images}:{s.matrix[0]}x{s.matrix[1]}" for s in spec.series)


def _study_context(seed: int, patient: int, study: int, spec: StudySpec) -> _StudyContext:
    # Each patient gets a first-visit date; study k falls in days [120k, 120k + 60) after it,
    # so the dates of one patient's studies are distinct and increase with the study number.
    first = _dt.date(2012, 1, 1) + _dt.timedelta(days=_hash_int(seed, "first", patient) % 3000)
    offset = 120 * study + _hash_int(seed, "gap", patient, study) % 60
    minutes = 7 * 60 + _hash_int(seed, "time", patient, study) % (10 * 60)
    return _StudyContext(
        seed=seed,
        patient=patient,
        study=study,
        layout=_layout(spec),
        patient_id=_patient_id(seed, patient),
        study_uid=_uid(seed, "study", patient, study, _layout(spec)),
        study_date=first + _dt.timedelta(days=offset),
        study_time=_dt.time(minutes // 60, minutes % 60, _hash_int(seed, "sec", patient) % 60),
    )


def _patient_and_study(ctx: _StudyContext, spec: StudySpec) -> Dataset:
    seed, patient, study = ctx.seed, ctx.patient, ctx.study
    h = _hash_int(seed, "patient", patient)
    birth = _dt.date(1935, 1, 1) + _dt.timedelta(days=h % (60 * 365))
    sex = ("F", "M", "F", "M", "O")[(h >> 20) % 5]
    age = ctx.study_date.year - birth.year
    if (ctx.study_date.month, ctx.study_date.day) < (birth.month, birth.day):
        age -= 1
    modalities = "+".join(dict.fromkeys(s.modality for s in spec.series))

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    # Patient
    ds.PatientName = f"SYNTH^PATIENT{patient}"
    ds.PatientID = ctx.patient_id
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = sex
    ds.PatientAge = f"{age:03d}Y"
    # General Study
    ds.StudyInstanceUID = ctx.study_uid
    ds.StudyDate = ctx.study_date.strftime("%Y%m%d")
    ds.StudyTime = ctx.study_time.strftime("%H%M%S")
    ds.AccessionNumber = f"A{_hash_int(seed, 'accession', patient, study) % 10**10:010d}"
    ds.StudyID = str(study + 1)
    ds.StudyDescription = f"SYNTH HEAD {modalities}"
    ds.ReferringPhysicianName = f"SYNTH^REFERRER{_hash_int(seed, 'ref', patient) % 10}"
    # General Equipment
    ds.Manufacturer = "MESHPACS SYNTH"
    ds.InstitutionName = "SYNTHETIC HOSPITAL"
    ds.ManufacturerModelName = "synth"
    ds.SoftwareVersions = "1"
    return ds


def _series_template(
    common: Dataset,
    ctx: _StudyContext,
    series: SeriesSpec,
    index: int,
) -> Dataset:
    """Every element shared by the images of one series (copied, never mutated, per slice)."""
    rows, cols = series.matrix
    ds = _copy(common)
    series_time = (
        _dt.datetime.combine(ctx.study_date, ctx.study_time) + _dt.timedelta(minutes=6 * index)
    ).time()
    time_text = series_time.strftime("%H%M%S")
    date_text = ctx.study_date.strftime("%Y%m%d")

    ds.SOPClassUID = _SOP_CLASSES[series.modality]
    # General Series
    ds.Modality = series.modality
    ds.SeriesInstanceUID = _uid(ctx.seed, "series", ctx.patient, ctx.study, ctx.layout, index)
    ds.SeriesNumber = index + 1
    ds.SeriesDate = date_text
    ds.SeriesTime = time_text
    ds.BodyPartExamined = "HEAD"
    ds.PatientPosition = "HFS"
    # Frame of Reference: one per modality per study (same couch position within a scanner)
    ds.FrameOfReferenceUID = _uid(
        ctx.seed, "frame", ctx.patient, ctx.study, ctx.layout, series.modality
    )
    ds.PositionReferenceIndicator = ""
    # General Image / Acquisition
    ds.AcquisitionNumber = 1
    ds.AcquisitionDate = date_text
    ds.AcquisitionTime = time_text
    ds.ContentDate = date_text
    ds.ContentTime = time_text
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    # Image Plane (axial)
    fov = 250.0 if series.modality == "CT" else 230.0
    ds.PixelSpacing = [_ds(fov / max(rows, cols)), _ds(fov / max(rows, cols))]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]

    if series.modality == "CT":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesDescription = f"SYNTH CT AXIAL {index + 1}"
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "80"
        ds.SliceThickness = "0.625"
        ds.KVP = "120"
        ds.DataCollectionDiameter = "500"
        ds.ReconstructionDiameter = _ds(fov)
        ds.GantryDetectorTilt = "0"
        ds.TableHeight = "150"
        ds.XRayTubeCurrent = 250
        ds.ExposureTime = 1000
        ds.ConvolutionKernel = "STANDARD"
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.SeriesDescription = f"SYNTH MR T1 AX {index + 1}"
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = "700"
        ds.WindowWidth = "1400"
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.SequenceName = "se2d1"
        ds.RepetitionTime = "500"
        ds.EchoTime = "15"
        ds.EchoTrainLength = 1
        ds.NumberOfAverages = "1"
        ds.ImagingFrequency = "63.87"
        ds.ImagedNucleus = "1H"
        ds.MagneticFieldStrength = "1.5"
        ds.SliceThickness = "5"
        ds.SpacingBetweenSlices = "6"
        ds.FlipAngle = "90"
    return ds


def _copy(template: Dataset) -> Dataset:
    """A new dataset holding the template's elements (``Dataset(ds)`` would share its dict)."""
    ds = Dataset()
    ds.update(template)
    return ds


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Public generators
# --------------------------------------------------------------------------------------------


def generate_study(
    seed: int,
    spec: StudySpec = DEFAULT_STUDY,
    *,
    patient: int = 0,
    study: int = 0,
) -> Iterator[SynthInstance]:
    """Yield the instances of one study, series by series, one file at a time.

    The output is a pure function of the arguments: the same ``(seed, spec, patient, study)``
    gives byte-identical files, and the study is the same whether it is generated alone or
    inside :func:`generate_archive`. ``patient`` and ``study`` are 0-based counters: patient
    ``n`` is ``SYNTH^PATIENT<n>`` with PatientID ``SYN<seed>-<n>``, and a patient's studies
    get distinct, increasing StudyDates.
    """
    _check_index("seed", seed, _MAX_SEED)
    _check_index("patient", patient)
    _check_index("study", study, _MAX_STUDY)
    if not isinstance(spec, StudySpec):
        raise ValueError("spec must be a StudySpec")
    return _generate_study(seed, spec, patient, study)


def _generate_study(
    seed: int, spec: StudySpec, patient: int, study: int
) -> Iterator[SynthInstance]:
    ctx = _study_context(seed, patient, study, spec)
    common = _patient_and_study(ctx, spec)
    transfer_syntax = TRANSFER_SYNTAXES[spec.transfer_syntax]
    compressed = transfer_syntax.is_compressed

    for index, series in enumerate(spec.series):
        rows, cols = series.matrix
        phantom = _phantom(series.modality, rows, cols)
        centre = _lesion_centre(seed, patient, rows, cols, phantom.lesion_reach)
        template = _series_template(common, ctx, series, index)
        sop_class = _SOP_CLASSES[series.modality]
        series_uid = str(template.SeriesInstanceUID)
        spacing = float(template.get("SpacingBetweenSlices", template.SliceThickness))
        pixel_spacing = float(template.PixelSpacing[0])
        x0 = -(cols - 1) / 2.0 * pixel_spacing
        y0 = -(rows - 1) / 2.0 * pixel_spacing

        for number in range(series.images):
            sop_uid = _uid(seed, "sop", patient, study, ctx.layout, index, number)
            rng = np.random.default_rng([_SALT_INT, seed, patient, study, index, number])
            pixels = _slice_pixels(phantom, centre, (number + 0.5) / series.images, rng)
            z = 40.0 - number * spacing

            ds = _copy(template)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = UID(sop_uid)
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta = meta
            ds.SOPInstanceUID = sop_uid
            ds.InstanceNumber = number + 1
            ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z)]
            ds.SliceLocation = _ds(z)
            if compressed:
                ds.compress(
                    transfer_syntax,
                    pixels,
                    encoding_plugin="pydicom",
                    generate_instance_uid=False,
                )
            else:
                ds.PixelData = pixels.tobytes()
            yield SynthInstance(
                sop_instance_uid=sop_uid,
                sop_class_uid=str(sop_class),
                series_instance_uid=series_uid,
                study_instance_uid=ctx.study_uid,
                patient_id=ctx.patient_id,
                modality=series.modality,
                transfer_syntax_uid=str(transfer_syntax),
                data=_encode(ds),
            )


def generate_archive(
    seed: int,
    patients: int,
    studies_per_patient: int,
    spec: StudySpec = DEFAULT_STUDY,
) -> Iterator[SynthInstance]:
    """Yield ``patients`` x ``studies_per_patient`` studies of ``spec``, patient by patient.

    Study ``s`` of patient ``p`` is exactly ``generate_study(seed, spec, patient=p, study=s)``.
    """
    _check_index("seed", seed, _MAX_SEED)
    _check_index("patients", patients)
    _check_index("studies_per_patient", studies_per_patient, _MAX_STUDY + 1)
    if not isinstance(spec, StudySpec):
        raise ValueError("spec must be a StudySpec")
    return (
        instance
        for p in range(patients)
        for s in range(studies_per_patient)
        for instance in _generate_study(seed, spec, p, s)
    )


_MR_SERIES_FOR_SIZE: Final = SeriesSpec("MR", 20)
_MR_THRESHOLD: Final = 16 * 2**20


def spec_of_size(target_bytes: int) -> StudySpec:
    """The plan :func:`study_of_size` uses: 512x512 CT series of at most 300 slices.

    From 16 MiB on, the study also gets one MR series of 20 slices (256x256). The plan counts
    pixel bytes only, which are a strict lower bound of the file sizes, so the files always
    reach ``target_bytes`` (overshooting by the headers, about 0.3 %, and at most one slice).
    """
    if isinstance(target_bytes, bool) or not isinstance(target_bytes, int) or target_bytes < 1:
        raise ValueError("target_bytes must be a positive integer")
    series: list[SeriesSpec] = []
    remaining = target_bytes
    if target_bytes >= _MR_THRESHOLD:
        remaining -= _MR_SERIES_FOR_SIZE.images * _MR_SERIES_FOR_SIZE.pixel_bytes
    ct_slice = SeriesSpec("CT", 1).pixel_bytes
    slices = max(1, -(-remaining // ct_slice))
    count = -(-slices // MAX_SERIES_IMAGES)
    # Spread the slices evenly: 301 slices become 151 + 150, not 300 + 1.
    for k in range(count):
        series.append(SeriesSpec("CT", slices // count + (1 if k < slices % count else 0)))
    if target_bytes >= _MR_THRESHOLD:
        series.append(_MR_SERIES_FOR_SIZE)
    return StudySpec(series=tuple(series))


def study_of_size(
    seed: int,
    target_bytes: int,
    *,
    patient: int = 0,
    study: int = 0,
) -> Iterator[SynthInstance]:
    """Yield a study of 512x512 CT series whose file bytes add up to at least ``target_bytes``.

    See :func:`spec_of_size` for the layout. About 2 000 slices make 1 GB; they are generated
    one at a time, so memory stays bounded if the caller does not keep them.
    """
    return generate_study(seed, spec_of_size(target_bytes), patient=patient, study=study)


def write_study(directory: Path, instances: Iterable[SynthInstance]) -> list[Path]:
    """Write instances under ``directory`` and return their paths, in input order.

    Paths are made of counters only, never of DICOM values:
    ``st0001/se0001/000001.dcm``, numbered by first appearance of each study and of each
    series, and by a running file counter. Existing files of the same name are overwritten.
    """
    directory = Path(directory)
    studies: dict[str, int] = {}
    series: dict[str, int] = {}
    paths: list[Path] = []
    for number, instance in enumerate(instances, start=1):
        study_no = studies.setdefault(instance.study_instance_uid, len(studies) + 1)
        series_no = series.setdefault(instance.series_instance_uid, len(series) + 1)
        folder = directory / f"st{study_no:04d}" / f"se{series_no:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{number:06d}.dcm"
        path.write_bytes(instance.data)
        paths.append(path)
    return paths
