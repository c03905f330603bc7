"""The header walk answers exactly as pydicom does, or declines.

Every file of pydicom's test corpus (and of pydicom-data when installed) is re-framed as
the node stores it (its dataset behind a file meta built for its transfer syntax), and its
head is cut at several points: wherever the walk answers, the answer must be what pydicom
reads from the whole file.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_file_meta_info

from meshpacs.dicom import attributes
from meshpacs.dicom.header import NotHere, RawElement, find_elements
from meshpacs.dicom.part10 import dataset_offset, file_meta
from meshpacs.dicom.storage import HEAD_BYTES

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _pydicom_data() -> list[Path]:
    try:
        import data_store  # type: ignore[import-not-found]
    except ImportError:
        return []
    return sorted((Path(data_store.__file__).parent / "data").glob("*.dcm"))


def _stored_syntax(path: Path) -> str | None:
    """The transfer syntax of a file a C-STORE could have produced, None without file meta.

    Reads the file meta only: this runs for every file at collection.
    """
    try:
        syntax = str(read_file_meta_info(path).TransferSyntaxUID)
        with path.open("rb") as f:
            dataset_offset(f.read(65536))
    except Exception:
        return None
    return syntax


SYNTAXES = {
    path: syntax
    for path in sorted(TEST_FILES.rglob("*.dcm")) + _pydicom_data()
    if (syntax := _stored_syntax(path)) is not None
}
CORPUS = list(SYNTAXES)


def _as_stored(path: Path) -> bytes:
    """The file as the node would store it: a fresh meta, then the dataset as it was."""
    data = path.read_bytes()
    head = file_meta(
        sop_class_uid="1.2.3",
        sop_instance_uid="1.2.3.4",
        transfer_syntax_uid=SYNTAXES[path],
        implementation_class_uid="1.2.3.5",
        implementation_version_name="TEST",
    )
    return head + data[dataset_offset(data[:65536]) :]


def _outcome(parse: object) -> object:
    try:
        return ("parsed", parse())  # type: ignore[operator]
    except attributes._Unusable as exc:
        return ("unusable", str(exc))


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_the_walk_answers_as_pydicom_or_declines(path: Path, tmp_path: Path) -> None:
    data, syntax = _as_stored(path), SYNTAXES[path]
    copy = tmp_path / "x.dcm"
    copy.write_bytes(data)
    try:
        expected = _outcome(lambda: attributes._read_file(copy))
    except Exception:
        expected = ("error", None)
    for cut in (300, 4096, HEAD_BYTES, len(data)):
        head = data[:cut]
        outcome = _outcome(lambda h=head: attributes._walk_head(h, len(h) >= len(data), syntax))
        if outcome == ("parsed", None):
            continue  # declined: pydicom reads it
        assert outcome == expected, (path.name, cut)


def test_most_of_the_corpus_is_walked_not_declined() -> None:
    """The walk is only worth having if it answers for ordinary files."""
    walked = 0
    tried = 0
    for path, syntax in SYNTAXES.items():
        if syntax == "1.2.840.10008.1.2.2":
            continue
        data = _as_stored(path)
        tried += 1
        head = data[:HEAD_BYTES]
        try:
            if attributes._walk_head(head, len(head) >= len(data), syntax) is not None:
                walked += 1
        except attributes._Unusable:
            walked += 1
    assert tried > 50 and walked / tried > 0.8, (walked, tried)


def _explicit(tag: int, vr: bytes, value: bytes) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if vr in (b"SQ", b"UN", b"OB", b"UT"):
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _undefined_sequence(tag: int, items: list[bytes], vr: bytes = b"SQ") -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    body = b"".join(
        struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + item
        + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        for item in items
    )
    return (
        struct.pack("<HH2s2xI", group, element, vr, 0xFFFFFFFF)
        + body
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )


def test_nested_undefined_sequences_are_skipped() -> None:
    inner = _undefined_sequence(0x00081150, [_explicit(0x00081155, b"UI", b"1.2\x00\x00")])
    data = (
        _explicit(0x00080060, b"CS", b"CT")
        + _undefined_sequence(0x00081110, [inner, b""])
        + _explicit(0x00100010, b"PN", b"DOE^J ")
        + _explicit(0x00300001, b"CS", b"XX")
    )
    found = find_elements(data, 0, implicit=False, wanted={0x00080060, 0x00100010},
                          last=0x00200013, complete=False)  # fmt: skip
    assert found == {
        0x00080060: RawElement(0x00080060, "CS", b"CT"),
        0x00100010: RawElement(0x00100010, "PN", b"DOE^J "),
    }


@pytest.mark.parametrize(
    "data",
    [
        _explicit(0x00100010, b"PN", b"B ") + _explicit(0x00080060, b"CS", b"CT"),  # out of order
        _explicit(0x00080060, b"CS", b"CT") + _explicit(0x00080060, b"CS", b"MR"),  # repeated
        b"\x08\x00\x60\x00ct\x02\x00CT",  # not a VR
        struct.pack("<HHI", 0xFFFE, 0xE000, 4) + b"abcd",  # a stray item
        _explicit(0x00080060, b"CS", b"CT")[:-1],  # cut inside the value
        struct.pack("<HH2sH", 0x0008, 0x0060, b"CS", 0xFFFF),  # past the end
        _explicit(0x00080060, b"CS", b"CT"),  # ends before the last wanted tag
    ],
)
def test_anything_unusual_is_declined(data: bytes) -> None:
    with pytest.raises(NotHere):
        find_elements(data, 0, implicit=False, wanted={0x00080060}, last=0x00200013,
                      complete=False)  # fmt: skip
