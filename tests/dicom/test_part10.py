"""Splitting a stored Part 10 file into file meta and the dataset as received."""

from __future__ import annotations

import io

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from meshpacs.dicom.part10 import dataset_offset
from meshpacs.errors import FormatError


def part10(transfer_syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = "1.2.3.4.5"
    ds = Dataset()
    ds.file_meta = meta
    ds.PatientName = "DOE^JANE"
    ds.SOPInstanceUID = "1.2.3.4"
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_offset_is_where_the_dataset_starts(ts: str) -> None:
    data = part10(ts)
    offset = dataset_offset(data)
    assert data[offset : offset + 2] == b"\x08\x00"  # group 0008 follows group 0002
    assert b"DOE^JANE" in data[offset:]
    assert b"DOE^JANE" not in data[:offset]


def test_offset_found_without_the_group_length_element() -> None:
    data = part10(ExplicitVRLittleEndian)
    start = 132
    assert data[start : start + 4] == b"\x02\x00\x00\x00"  # (0002,0000) group length
    without = data[:start] + data[start + 12 :]
    assert dataset_offset(without) == dataset_offset(data) - 12


def test_not_part10_is_refused() -> None:
    with pytest.raises(FormatError):
        dataset_offset(b"\x00" * 200)
