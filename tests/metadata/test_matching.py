"""The matching rules as SQL, without a catalog: values only ever travel as parameters."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshpacs.errors import InvalidQuery
from meshpacs.metadata import LEVELS, FindQuery
from meshpacs.metadata.matching import (
    KEYS,
    find_statement,
    glob_pattern,
    locate_statement,
    match_key,
    returned_unique_keys,
    supported_keys,
)
from meshpacs.metadata.schema import MIGRATIONS, split_statements


@pytest.fixture(scope="module")
def schema_db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    for statement in split_statements(MIGRATIONS[0][1]):
        conn.execute(statement)
    return conn


def test_keys_per_level() -> None:
    assert supported_keys("PATIENT") == (
        "PatientID",
        "IssuerOfPatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    )
    assert {"StudyInstanceUID", "ModalitiesInStudy", "PatientName"} <= set(supported_keys("STUDY"))
    assert "Modality" not in supported_keys("STUDY")
    assert {"Modality", "SeriesNumber", "BodyPartExamined"} <= set(supported_keys("SERIES"))
    assert set(supported_keys("IMAGE")) == set(KEYS)
    assert returned_unique_keys("PATIENT", "IMAGE") == (
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
    )
    assert returned_unique_keys("STUDY", "STUDY") == ("StudyInstanceUID",)


def test_values_are_bound_never_interpolated() -> None:
    value = "x' OR 1=1 --"
    condition = match_key(KEYS["PatientID"], value)
    assert condition is not None
    assert condition.text == "p.patient_id = ?" and condition.params == (value,)
    statement = find_statement(
        FindQuery("STUDY", "STUDY", {"PatientName": value + "*", "StudyInstanceUID": value}),
        limit=10,
    )
    assert "OR 1=1" not in statement.sql.text
    assert statement.sql.text.count("?") == len(statement.sql.params)


@pytest.mark.parametrize(
    ("keyword", "value", "text", "params"),
    [
        ("PatientName", "", None, None),
        ("PatientName", "**", None, None),
        ("PatientName", "  Doe^J* ", "p.name_fold GLOB ?", ("doe^j*",)),
        ("PatientID", "A[1]?", "p.patient_id GLOB ?", ("A[[]1]?",)),
        ("PatientID", "100%_", "p.patient_id = ?", ("100%_",)),
        ("StudyInstanceUID", "1.2\\1.3", "s.study_uid IN (?, ?)", ("1.2", "1.3")),
        ("StudyInstanceUID", "1.2\0", "s.study_uid = ?", ("1.2",)),
        ("StudyDate", "20200101", "s.date = ?", ("20200101",)),
        ("StudyDate", "-20201231", "(s.date <> '' AND s.date <= ?)", ("20201231",)),
        ("SeriesNumber", " 7 ", "se.number = ?", (7,)),
        ("NumberOfStudyRelatedSeries", "3", None, None),
    ],
)
def test_match_key(
    keyword: str, value: str, text: str | None, params: tuple[object, ...] | None
) -> None:
    condition = match_key(KEYS[keyword], value)
    if text is None:
        assert condition is None
    else:
        assert condition is not None
        assert (condition.text, condition.params) == (text, params)


@pytest.mark.parametrize(
    ("value", "params"),
    [
        ("10", ("100000", "105959")),
        ("1030", ("103000", "103059")),
        ("103015.123", ("103015", "103015")),
        ("10-11", ("100000", "115959")),
        ("-11", ("115959",)),
        ("09-", ("090000",)),
    ],
)
def test_time_ranges_cover_what_they_name(value: str, params: tuple[str, ...]) -> None:
    condition = match_key(KEYS["StudyTime"], value)
    assert condition is not None and condition.params == params


def test_glob_pattern_escapes_only_its_own_class_bracket() -> None:
    assert glob_pattern("a*b?c[d]e%f_g") == "a*b?c[[]d]e%f_g"


def test_locate_statement_needs_the_level_key() -> None:
    sql = locate_statement("SERIES", {"SeriesInstanceUID": "1.2\\1.3", "PatientID": "P"})
    assert sql.params == ("P", "1.2", "1.3")
    with pytest.raises(InvalidQuery):
        locate_statement("SERIES", {"StudyInstanceUID": "1.2"})


_values = st.text(
    alphabet=st.sampled_from("abAB01-*?[]%_'\"\\;. ^\0é"), max_size=40
) | st.sampled_from(["20200101", "20200101-", "-20201231", "1015", "7", "1.2.3\\1.2.4"])


@settings(max_examples=150, deadline=None)
@given(
    level=st.sampled_from(LEVELS[1:]),
    root=st.sampled_from(["PATIENT", "STUDY"]),
    keys=st.dictionaries(st.sampled_from([*KEYS, "Unknown"]), _values, max_size=6),
)
def test_any_query_is_valid_sql_or_a_typed_refusal(
    schema_db: sqlite3.Connection, level: str, root: str, keys: dict[str, str]
) -> None:
    try:
        statement = find_statement(FindQuery(root, level, keys), limit=5)  # type: ignore[arg-type]
    except InvalidQuery:
        return
    assert statement.sql.text.count("?") == len(statement.sql.params)
    schema_db.execute(statement.sql.text, statement.sql.params).fetchall()
