"""The C-FIND answer encoder writes exactly what pydicom's ``write_dataset`` writes.

Every answer is encoded twice: by :func:`encode_answer_identifier` (the node's encoder
when it takes the answer) and by pynetdicom's ``dsutils.encode`` of the dataset the
pynetdicom path builds (``_answer_dataset``), in both Little Endian syntaxes. The answers
are made from every key the catalog can return, with ASCII, non-ASCII and empty values,
multi-valued ones, and unknown keys a peer may ask for (returned empty).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pynetdicom import dsutils

from meshpacs.dicom.answer_codec import encode_answer
from meshpacs.dicom.qr import _answer_charset, _answer_dataset, encode_answer_identifier
from meshpacs.metadata.matching import KEYS, KeyKind

NAMES = [
    "SMITH^JOHN", "SMITH^JO", "", "O'NEIL^MARY^^DR", "MÜLLER^JÜRGEN", "Ødegård^Åse",
    "山田^太郎=やまだ^たろう", "Wang^Xiao Ming", "ΔΗΜΗΤΡΙΟΥ^ΝΙΚΟΣ", "A", "AB", "Ñ",
    "Иванов^Иван", "=YAMADA^TARO", "NAME^WITH\\BACKSLASH",
]  # fmt: skip
UNKNOWN_KEYS = ["PatientAge", "PatientWeight", "PatientComments", "OtherPatientIDs",
                "InstitutionName", "RetrieveURL", "StudyComments", "NumberOfFrames",
                "AcquisitionDateTime", "RetrieveAETitle"]  # fmt: skip
CHARSETS = [None, "", "ISO_IR 100", "ISO_IR 192", "ISO_IR 6", "ISO_IR 13",
            ["", "ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 100"], "GB18030"]  # fmt: skip


def _value(rng: random.Random, keyword: str) -> str:
    spec = KEYS[keyword]
    if rng.random() < 0.2:
        return ""
    if spec.kind is KeyKind.COUNT or spec.vr == "IS":
        return str(rng.randrange(0, 100_000))
    if spec.kind is KeyKind.MODALITIES:
        return "\\".join(sorted(rng.sample(["CT", "MR", "US", "SR", "PT"], rng.randint(1, 3))))
    if spec.vr == "UI":
        return "2.25." + str(rng.randrange(10 ** rng.randint(1, 38)))
    if spec.vr == "DA":
        return f"20{rng.randrange(100):02d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    if spec.vr == "TM":
        return rng.choice(["101500", "1015", "10", "101500.123", "235959.5"])
    if spec.vr == "PN":
        return rng.choice(NAMES)
    if spec.vr == "CS":
        return rng.choice(["M", "F", "O", "CT", "HEAD"])
    return rng.choice(["A", "made-up study", "Étude", "P00000100", "描述", "x" * 63, "x" * 64])


def answers(seed: int, count: int) -> Iterator[dict[str, str]]:
    rng = random.Random(seed)
    for _ in range(count):
        level = rng.choice(["PATIENT", "STUDY", "SERIES", "IMAGE"])
        keywords = rng.sample(sorted(KEYS), rng.randint(1, len(KEYS)))
        answer = {"QueryRetrieveLevel": level}
        answer |= {k: _value(rng, k) for k in keywords}
        answer |= {k: "" for k in rng.sample(UNKNOWN_KEYS, rng.randint(0, 3))}
        yield answer


def identifier(charset: str | list[str] | None) -> Dataset:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    return ds


def pydicom_bytes(answer: dict[str, str], asked: Dataset, implicit: bool) -> bytes:
    encoded = dsutils.encode(_answer_dataset(answer, asked), implicit, True)
    assert encoded is not None
    return encoded


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("charset", CHARSETS, ids=repr)
def test_many_answers_are_byte_identical_to_pydicom(
    charset: str | list[str] | None, implicit: bool
) -> None:
    asked = identifier(charset)
    fast = 0
    for answer in answers(seed=hash(repr(charset)) & 0xFFFF, count=300):
        ours = encode_answer(answer, _answer_charset(answer, asked), implicit=implicit)
        if ours is not None:
            fast += 1
            assert ours == pydicom_bytes(answer, asked, implicit), answer
        assert encode_answer_identifier(answer, asked, implicit=implicit) == pydicom_bytes(
            answer, asked, implicit
        )
    # The point is speed: every one of these answers must take the fast path.
    assert fast == 300


def test_every_catalog_key_empty_and_set() -> None:
    everything = {"QueryRetrieveLevel": "IMAGE"} | {k: "" for k in KEYS}
    set_values = {k: _value(random.Random(k), k) or "1" for k in KEYS}
    for answer in (everything, {"QueryRetrieveLevel": "IMAGE"} | set_values):
        for implicit in (True, False):
            ours = encode_answer(answer, _answer_charset(answer, Dataset()), implicit=implicit)
            assert ours == pydicom_bytes(answer, Dataset(), implicit)


@pytest.mark.parametrize(
    ("answer", "charset"),
    [
        ({"Rows": ""}, None),  # US: binary VR
        ({"PatientWeight": "72.5"}, None),  # DS pydicom may reformat
        ({"InstanceNumber": "+5"}, None),  # an IS pydicom would interpret
        ({"PatientName": "MÜLLER"}, "ISO_IR 100"),  # non-ASCII outside ISO_IR 192
        ({"Modality": "Ü"}, "ISO_IR 192"),  # non-ASCII in a CS
        ({"PatientName": "A"}, "ISO_IR 999"),  # a character set pydicom does not know
        ({"NoSuchKeyword": ""}, None),
        ({"ReferencedSeriesSequence": ""}, None),
        ({"StudyDescription": "x" * 70_000}, None),  # over the 2-byte explicit length
    ],
)
def test_what_it_does_not_handle_is_left_to_pydicom(
    answer: dict[str, str], charset: str | None
) -> None:
    assert encode_answer(answer, charset, implicit=False) is None


def test_the_fallback_still_gives_pydicom_bytes() -> None:
    answer = {"QueryRetrieveLevel": "STUDY", "PatientWeight": "72.5", "Rows": ""}
    for implicit in (True, False):
        assert encode_answer_identifier(answer, Dataset(), implicit=implicit) == pydicom_bytes(
            answer, Dataset(), implicit
        )
    # Big Endian is always pydicom's.
    answer = {"QueryRetrieveLevel": "STUDY", "PatientName": "SMITH"}
    big = encode_answer_identifier(answer, Dataset(), implicit=False, little_endian=False)
    assert big == dsutils.encode(_answer_dataset(answer, Dataset()), False, False)


def test_pynetdicom_encodes_our_answers_through_the_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook sits where pynetdicom's C-FIND SCP calls ``encode`` and takes our answers."""
    from pynetdicom import service_class

    from meshpacs.dicom import qr
    from meshpacs.dicom.scp import configure_pynetdicom

    configure_pynetdicom()
    taken: list[dict[str, str]] = []

    def counting(answer: dict[str, str], charset: str | None, *, implicit: bool) -> bytes | None:
        taken.append(answer)
        return encode_answer(answer, charset, implicit=implicit)

    monkeypatch.setattr(qr, "encode_answer", counting)
    answer = {"QueryRetrieveLevel": "STUDY", "PatientName": "MÜLLER^JÜRGEN", "StudyDate": ""}
    encode = getattr(service_class, "encode")  # noqa: B009
    assert encode(_answer_dataset(answer, Dataset()), False, True, False) == pydicom_bytes(
        answer, Dataset(), False
    )
    assert taken == [answer]
    plain = Dataset()
    plain.PatientName = "SMITH"
    assert encode(plain, True, True, False) == dsutils.encode(plain, True, True)
    assert taken == [answer]  # a dataset that is not an answer goes to pydicom
