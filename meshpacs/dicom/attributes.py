"""The catalog's view of a received instance, read without trusting the dataset.

Only the attributes Query/Retrieve needs are read, pixel data and large values are skipped
(``stop_before_pixels``, ``defer_size``), and a dataset that cannot be read still yields a
record: the exact bytes are kept and the record says why they could not be catalogued.
Error texts keep only the exception's type, since pydicom's messages may quote values.

The header is parsed from the start of the file that :meth:`InstanceStore.adopt` already
read while hashing; only when the parse needs more than that (a header longer than the
head, or a file without pixel data) is the file itself read, from the beginning, so the
result never depends on where the head ends.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from meshpacs.dicom.header import NotHere, find_elements
from meshpacs.dicom.identifiers import is_valid_uid
from meshpacs.dicom.part10 import dataset_offset
from meshpacs.errors import FormatError
from meshpacs.metadata.records import InstanceRecord, PatientInfo, SeriesInfo, StudyInfo

__all__ = ["READ_TAGS", "HeaderAttributes", "attributes_from_head", "read_instance_record"]

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


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - READ_TAGS holds dictionary keywords only
        raise ValueError(f"unknown DICOM keyword {keyword}")
    return tag


# Looked up by tag number: a keyword lookup per attribute and file costs more.
_TAGS = {keyword: _tag(keyword) for keyword in READ_TAGS}
_READ_TAG_NUMBERS: list[int] = list(_TAGS.values())


class _BeyondHead(Exception):
    """The parse wanted bytes past the in-memory head of a longer file."""


class _Head(io.BytesIO):
    """The start of a file, which notes any read that runs past it."""

    def __init__(self, head: bytes, complete: bool) -> None:
        super().__init__(head)
        self._end = len(head)
        self._complete = complete
        self.overrun = False

    def read(self, size: int | None = -1, /) -> bytes:
        if not self._complete and (size is None or size < 0 or self.tell() + size > self._end):
            self.overrun = True  # pydicom swallows some errors: the flag is what counts
            raise _BeyondHead
        return super().read(size)


def read_instance_record(
    path: Path,
    *,
    head: bytes = b"",
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    size: int,
    sha256: bytes,
    calling_ae: str,
    received_at: float,
    early: HeaderAttributes | None = None,
) -> InstanceRecord:
    """A catalog record for the stored file at ``path`` (UIDs from the C-STORE request).

    ``head`` is the start of that file as already read (``StoredFile.head``); it is
    parsed instead of the file whenever it holds the whole header. ``early`` is the
    header already parsed while the file was arriving (:func:`attributes_from_head`).
    """
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
    if early is None and head:
        early = _attributes(lambda: _parse_head(head, size, transfer_syntax_uid))
    if early is None:
        early = _attributes(lambda: _read_file(path))
    if early is None or early.parsed is None:
        return replace(unparsed, parse_error=early.error if early else "not read")
    patient, study, series, number = early.parsed
    return replace(
        unparsed,
        instance_number=number,
        patient=patient,
        study=study,
        series=series,
        parse_error=None,
    )


@dataclass(frozen=True)
class HeaderAttributes:
    """The catalog's attributes from a header, or why they could not be had."""

    parsed: _Parsed | None
    error: str | None


def attributes_from_head(head: bytes, transfer_syntax_uid: str) -> HeaderAttributes | None:
    """Parse the start of a file still arriving; None if the header runs past ``head``.

    The receiver calls it once the first :data:`HEAD_BYTES` are in, so the parse runs
    while the peer is still sending pixel data instead of after the last byte.
    """
    return _attributes(lambda: _parse_head(head, len(head) + 1, transfer_syntax_uid))


def _attributes(parse: Callable[[], _Parsed | None]) -> HeaderAttributes | None:
    try:
        parsed = parse()
    except _Unusable as exc:
        return HeaderAttributes(None, str(exc))
    except Exception as exc:  # pydicom raises many types on bad input; all mean "unparsed"
        return HeaderAttributes(None, f"dataset could not be read ({type(exc).__name__})")
    return None if parsed is None else HeaderAttributes(parsed, None)


def _read_file(path: Path) -> _Parsed:
    with path.open("rb") as f:
        return _hierarchy(_dcmread(f))


class _Unusable(Exception):
    """The dataset parsed, but lacks what the catalog needs to place it."""


_Parsed = tuple[PatientInfo, StudyInfo, SeriesInfo, int | None]


def _dcmread(f: io.BufferedIOBase) -> Dataset:
    return pydicom.dcmread(
        f, stop_before_pixels=True, defer_size=_DEFER, specific_tags=_READ_TAG_NUMBERS
    )


_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_WANTED = frozenset(_READ_TAG_NUMBERS)
_LAST_WANTED = max(_READ_TAG_NUMBERS)


def _walk_head(head: bytes, complete: bool, transfer_syntax_uid: str) -> _Parsed | None:
    """The hierarchy through :func:`find_elements`; None when pydicom must read it."""
    if transfer_syntax_uid == _EXPLICIT_BE or not transfer_syntax_uid:
        return None
    implicit = transfer_syntax_uid == _IMPLICIT_LE
    try:
        start = dataset_offset(head)
        found = find_elements(
            head, start, implicit=implicit, wanted=_WANTED, last=_LAST_WANTED, complete=complete
        )
    except (NotHere, FormatError):
        return None
    ds = Dataset(
        {
            Tag(tag): RawDataElement(Tag(tag), e.vr, len(e.value), e.value, 0, implicit, True, True)
            for tag, e in found.items()
        }
    )
    return _hierarchy(ds)


def _parse_head(head: bytes, size: int, transfer_syntax_uid: str = "") -> _Parsed | None:
    """The hierarchy from the head alone; None when reading the file is needed after all.

    Deferred values are read from the same buffer, so the whole of ``_hierarchy`` runs
    before the buffer is closed. Whatever the parse did, if any read ran past the head its
    result is dropped: the file gives the answer then, errors included.
    """
    walked = _walk_head(head, len(head) >= size, transfer_syntax_uid)
    if walked is not None:
        return walked
    with _Head(head, complete=len(head) >= size) as fp:
        try:
            parsed = _hierarchy(_dcmread(fp))
        except Exception:
            if fp.overrun:
                return None
            raise
        return None if fp.overrun else parsed


def _value(ds: Dataset, keyword: str) -> Any:
    element = ds.get(_TAGS[keyword])
    return None if element is None else element.value


def _text(ds: Dataset, keyword: str) -> str:
    value = _value(ds, keyword)
    if value is None:
        return ""
    return str(value).strip()


def _number(ds: Dataset, keyword: str) -> int | None:
    value = _value(ds, keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _hierarchy(ds: Dataset) -> _Parsed:
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
