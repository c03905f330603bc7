"""C-FIND matching (PS3.4 C.2.2.2) turned into SQL, as pure functions with no I/O.

Every value from a query reaches SQLite as a bound parameter; the SQL text is assembled
only from the constant expressions in :data:`KEYS`, so no identifier can inject SQL.

Matching, per value representation:

* **Universal**: an empty value (or one made only of ``*``) constrains nothing, and the
  attribute is returned.
* **Single value**: equality, after removing leading and trailing spaces (and NUL
  padding) from the query value, which PS3.5 makes insignificant.
* **Wildcard** (``*`` any run, ``?`` one character) for the string VRs (PN, LO, SH, CS):
  translated to SQLite ``GLOB``, whose own ``[`` is escaped as ``[[]``; ``GLOB`` is
  case-sensitive, as PS3.4 asks for these VRs.
* **Person names (PN)** match case-insensitively: query and stored names are both
  Unicode case-folded (``str.casefold``) before comparison, the stored fold kept in its
  own indexed column. Names are compared as whole strings, component groups included.
  This is the choice to state in the conformance statement (Orthanc does the same).
* **List of UIDs** (UI): backslash-separated, any of them matches; at most
  :data:`MAX_UIDS` UIDs. Wildcards are not defined for UIDs and match literally.
* **Range** for DA (``A-B``, ``-B``, ``A-``; a single date is equality) and TM (the same
  forms; times compare at one-second precision, an upper bound covers the whole hour or
  minute it names, and a single time is the range it names). Entities with an empty date
  or time never match a range. Study Date and Study Time are matched independently (no
  combined date-time range).
* **ModalitiesInStudy** matches when any series of the study has one of the modalities
  given (backslash-separated list, wildcards allowed), and returns the study's distinct
  modalities.
* **IS** (SeriesNumber, InstanceNumber): equality of integers.
* The **Number of ... Related ...** keys are return keys only: a value given for them is
  ignored.

Which keys are supported where: every key of the query's level and of the levels above
it (:data:`KEYS`); in the Study Root, patient keys belong to the STUDY level. Keys of
higher levels constrain the answers (hierarchical). Unknown keys, and keys of levels
below the query's, are ignored for matching and returned with an empty value.

Bounds: a value over :data:`MAX_VALUE_LENGTH` characters, a UID list over
:data:`MAX_UIDS` UIDs or more than :data:`MAX_KEYS` keys raise
:class:`~meshpacs.errors.QueryTooLarge`; malformed dates, times, numbers, levels raise
:class:`~meshpacs.errors.InvalidQuery`. Messages name the keyword, never the value.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshpacs.errors import InvalidQuery, QueryTooLarge
from meshpacs.metadata.records import LEVELS, MAX_UID_LENGTH, FindQuery, Level, Root

__all__ = [
    "KEYS",
    "MAX_KEYS",
    "MAX_UIDS",
    "MAX_VALUE_LENGTH",
    "UNIQUE_KEYS",
    "FindStatement",
    "KeyKind",
    "KeySpec",
    "Sql",
    "answer",
    "find_statement",
    "fold_person_name",
    "glob_pattern",
    "locate_statement",
    "match_key",
    "returned_unique_keys",
    "supported_keys",
]

MAX_VALUE_LENGTH = 1024
MAX_UIDS = 1000
MAX_KEYS = 256
_MAX_KEYWORD_LENGTH = 64

SqlValue = str | int


@dataclass(frozen=True)
class Sql:
    """A fragment of SQL and the parameters bound to its ``?`` placeholders, in order."""

    text: str
    params: tuple[SqlValue, ...] = ()


class KeyKind(enum.Enum):
    """How a key is matched and returned."""

    ATTRIBUTE = "attribute"
    """A stored column: matched by its VR's rules, returned as stored."""
    MODALITIES = "modalities"
    """ModalitiesInStudy: matched against the study's series, returned as a list."""
    COUNT = "count"
    """A Number of ... Related ... count: returned only, never matched."""


@dataclass(frozen=True)
class KeySpec:
    """One supported key: its level, VR and the SQL expressions that read it.

    ``expr`` returns the value; ``match_expr`` (when set) is what matching compares, e.g.
    the case-folded copy of a person name.
    """

    keyword: str
    level: Level
    vr: str
    expr: str
    match_expr: str | None = None
    kind: KeyKind = KeyKind.ATTRIBUTE


_ONE_SERIES_PER_INSTANCE_UID = (
    "NOT EXISTS (SELECT 1 FROM instances i2 WHERE i2.sop_instance_uid = i.sop_instance_uid"
    " AND i2.series_ref = i.series_ref AND i2.id < i.id)"
)
_STUDY_INSTANCES = (
    "(SELECT COUNT(DISTINCT ci.sop_instance_uid) FROM instances ci"
    " JOIN series cse ON ci.series_ref = cse.id WHERE cse.study_ref = s.id)"
)
_PATIENT_INSTANCES = (
    "(SELECT COUNT(DISTINCT ci.sop_instance_uid) FROM instances ci"
    " JOIN series cse ON ci.series_ref = cse.id JOIN studies cs ON cse.study_ref = cs.id"
    " WHERE cs.patient_ref = p.id)"
)
_PATIENT_SERIES = (
    "(SELECT COUNT(*) FROM series cse JOIN studies cs ON cse.study_ref = cs.id"
    " WHERE cs.patient_ref = p.id)"
)
# group_concat(DISTINCT ...) only takes the default ',' separator; CS values cannot hold
# a comma, and answer() re-joins the sorted values with the DICOM backslash.
_MODALITIES = (
    "(SELECT group_concat(DISTINCT ms.modality) FROM series ms"
    " WHERE ms.study_ref = s.id AND ms.modality <> '')"
)

_SPECS = (
    KeySpec("PatientID", "PATIENT", "LO", "p.patient_id"),
    KeySpec("IssuerOfPatientID", "PATIENT", "LO", "p.issuer"),
    KeySpec("PatientName", "PATIENT", "PN", "p.name", "p.name_fold"),
    KeySpec("PatientBirthDate", "PATIENT", "DA", "p.birth_date"),
    KeySpec("PatientSex", "PATIENT", "CS", "p.sex"),
    KeySpec(
        "NumberOfPatientRelatedStudies",
        "PATIENT",
        "IS",
        "(SELECT COUNT(*) FROM studies cs WHERE cs.patient_ref = p.id)",
        kind=KeyKind.COUNT,
    ),
    KeySpec("NumberOfPatientRelatedSeries", "PATIENT", "IS", _PATIENT_SERIES, kind=KeyKind.COUNT),
    KeySpec(
        "NumberOfPatientRelatedInstances", "PATIENT", "IS", _PATIENT_INSTANCES, kind=KeyKind.COUNT
    ),
    KeySpec("StudyInstanceUID", "STUDY", "UI", "s.study_uid"),
    KeySpec("StudyDate", "STUDY", "DA", "s.date"),
    KeySpec("StudyTime", "STUDY", "TM", "s.time"),
    KeySpec("AccessionNumber", "STUDY", "SH", "s.accession"),
    KeySpec("StudyID", "STUDY", "SH", "s.study_id"),
    KeySpec("ReferringPhysicianName", "STUDY", "PN", "s.referring", "s.referring_fold"),
    KeySpec("StudyDescription", "STUDY", "LO", "s.description"),
    KeySpec("ModalitiesInStudy", "STUDY", "CS", _MODALITIES, kind=KeyKind.MODALITIES),
    KeySpec(
        "NumberOfStudyRelatedSeries",
        "STUDY",
        "IS",
        "(SELECT COUNT(*) FROM series cse WHERE cse.study_ref = s.id)",
        kind=KeyKind.COUNT,
    ),
    KeySpec("NumberOfStudyRelatedInstances", "STUDY", "IS", _STUDY_INSTANCES, kind=KeyKind.COUNT),
    KeySpec("SeriesInstanceUID", "SERIES", "UI", "se.series_uid"),
    KeySpec("Modality", "SERIES", "CS", "se.modality"),
    KeySpec("SeriesNumber", "SERIES", "IS", "se.number"),
    KeySpec("SeriesDescription", "SERIES", "LO", "se.description"),
    KeySpec("BodyPartExamined", "SERIES", "CS", "se.body_part"),
    KeySpec(
        "NumberOfSeriesRelatedInstances",
        "SERIES",
        "IS",
        "(SELECT COUNT(DISTINCT ci.sop_instance_uid) FROM instances ci"
        " WHERE ci.series_ref = se.id)",
        kind=KeyKind.COUNT,
    ),
    KeySpec("SOPInstanceUID", "IMAGE", "UI", "i.sop_instance_uid"),
    KeySpec("InstanceNumber", "IMAGE", "IS", "i.instance_number"),
    KeySpec("SOPClassUID", "IMAGE", "UI", "i.sop_class_uid"),
)

KEYS: Mapping[str, KeySpec] = {spec.keyword: spec for spec in _SPECS}
UNIQUE_KEYS: Mapping[Level, str] = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}

_FROM: Mapping[Level, str] = {
    "PATIENT": "patients p",
    "STUDY": "studies s JOIN patients p ON s.patient_ref = p.id",
    "SERIES": (
        "series se JOIN studies s ON se.study_ref = s.id JOIN patients p ON s.patient_ref = p.id"
    ),
    "IMAGE": (
        "instances i JOIN series se ON i.series_ref = se.id"
        " JOIN studies s ON se.study_ref = s.id JOIN patients p ON s.patient_ref = p.id"
    ),
}
_ORDER: Mapping[Level, str] = {
    "PATIENT": "p.id",
    "STUDY": "s.id",
    "SERIES": "s.id, se.number NULLS LAST, se.id",
    "IMAGE": "s.id, se.number NULLS LAST, se.id, i.instance_number NULLS LAST, i.id",
}

_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?")
_INTEGER = re.compile(r"[+-]?\d{1,12}")
# Stored times reduced to HHMMSS: ACR-NEMA colons dropped, missing parts read as zero.
_TIME_KEY = "substr(replace({expr}, ':', '') || '000000', 1, 6)"


def _rank(level: str) -> int:
    if level not in LEVELS:
        raise InvalidQuery("Query/Retrieve Level must be PATIENT, STUDY, SERIES or IMAGE")
    return LEVELS.index(level)


def fold_person_name(name: str) -> str:
    """The form a person name is compared in: Unicode case-folded, whole string."""
    return name.casefold()


def glob_pattern(value: str) -> str:
    """A DICOM wildcard value as a SQLite GLOB pattern (``*`` and ``?`` kept, ``[`` escaped)."""
    return value.replace("[", "[[]")


def supported_keys(level: Level) -> tuple[str, ...]:
    """The keywords matched and returned at ``level``: its own keys and those above it."""
    rank = _rank(level)
    return tuple(spec.keyword for spec in _SPECS if LEVELS.index(spec.level) <= rank)


def returned_unique_keys(root: Root, level: Level) -> tuple[str, ...]:
    """The unique keys every answer carries: the level's and those of the levels above it
    within the root (the Study Root has no patient level, so no Patient ID here)."""
    top = 0 if root == "PATIENT" else 1
    return tuple(UNIQUE_KEYS[lv] for lv in LEVELS[top : _rank(level) + 1])


def _check_length(keyword: str, value: str, bound: int) -> None:
    if len(value) > bound:
        raise QueryTooLarge(f"{keyword}: query value over {bound} characters")


def _clean(value: str) -> str:
    return value.strip(" \0")


def _universal(value: str) -> bool:
    return value == "" or set(value) == {"*"}


def _string_match(expr: str, value: str) -> Sql:
    if "*" in value or "?" in value:
        return Sql(f"{expr} GLOB ?", (glob_pattern(value),))
    return Sql(f"{expr} = ?", (value,))


def _uid_match(keyword: str, expr: str, value: str) -> Sql | None:
    _check_length(keyword, value, MAX_UIDS * (MAX_UID_LENGTH + 1))
    uids = [uid for uid in (_clean(part) for part in value.split("\\")) if uid]
    if not uids or (len(uids) == 1 and _universal(uids[0])):
        return None
    if len(uids) > MAX_UIDS:
        raise QueryTooLarge(f"{keyword}: {len(uids)} UIDs in a list, over {MAX_UIDS}")
    if any(len(uid) > MAX_UID_LENGTH for uid in uids):
        raise InvalidQuery(f"{keyword}: a UID longer than {MAX_UID_LENGTH} characters")
    if len(uids) == 1:
        return Sql(f"{expr} = ?", (uids[0],))
    return Sql(f"{expr} IN ({', '.join('?' * len(uids))})", tuple(uids))


def _date_match(keyword: str, expr: str, value: str) -> Sql:
    low, dash, high = value.partition("-")
    if not dash:
        low = high = value
    for bound in (low, high):
        if bound and not _DATE.fullmatch(bound):
            raise InvalidQuery(f"{keyword}: not a DA value or range (YYYYMMDD[-YYYYMMDD])")
    if not low and not high:
        raise InvalidQuery(f"{keyword}: a range needs at least one end")
    if low == high:
        return Sql(f"{expr} = ?", (low,))
    parts = [f"{expr} <> ''"]
    params: list[SqlValue] = []
    if low:
        parts.append(f"{expr} >= ?")
        params.append(low)
    if high:
        parts.append(f"{expr} <= ?")
        params.append(high)
    return Sql("(" + " AND ".join(parts) + ")", tuple(params))


def _time_bound(keyword: str, value: str, *, upper: bool) -> str:
    if not _TIME.fullmatch(value):
        raise InvalidQuery(f"{keyword}: not a TM value or range (HH[MM[SS[.F]]][-...])")
    digits = value.partition(".")[0]
    fill = "5959" if upper else "0000"
    return digits + fill[: 6 - len(digits)]


def _time_match(keyword: str, expr: str, value: str) -> Sql:
    low, dash, high = value.partition("-")
    if not dash:
        low = high = value
    if not low and not high:
        raise InvalidQuery(f"{keyword}: a range needs at least one end")
    key = _TIME_KEY.format(expr=expr)
    parts = [f"{expr} <> ''"]
    params: list[SqlValue] = []
    if low:
        parts.append(f"{key} >= ?")
        params.append(_time_bound(keyword, low, upper=False))
    if high:
        parts.append(f"{key} <= ?")
        params.append(_time_bound(keyword, high, upper=True))
    return Sql("(" + " AND ".join(parts) + ")", tuple(params))


def _integer_match(keyword: str, expr: str, value: str) -> Sql:
    if not _INTEGER.fullmatch(value):
        raise InvalidQuery(f"{keyword}: not an IS value")
    return Sql(f"{expr} = ?", (int(value),))


def _modalities_match(keyword: str, value: str) -> Sql | None:
    wanted = [m for m in (_clean(part) for part in value.split("\\")) if m]
    if not wanted or any(_universal(m) for m in wanted):
        return None
    alternatives = [_string_match("ms.modality", m) for m in wanted]
    text = " OR ".join(a.text for a in alternatives)
    params = tuple(p for a in alternatives for p in a.params)
    return Sql(f"EXISTS (SELECT 1 FROM series ms WHERE ms.study_ref = s.id AND ({text}))", params)


def match_key(spec: KeySpec, value: str) -> Sql | None:
    """The condition ``value`` puts on ``spec``'s attribute, or None if it puts none."""
    if spec.kind is KeyKind.COUNT:
        return None
    if spec.vr == "UI":
        return _uid_match(spec.keyword, spec.expr, value)
    _check_length(spec.keyword, value, MAX_VALUE_LENGTH)
    value = _clean(value)
    if _universal(value):
        return None
    if spec.kind is KeyKind.MODALITIES:
        return _modalities_match(spec.keyword, value)
    expr = spec.match_expr or spec.expr
    if spec.vr == "DA":
        return _date_match(spec.keyword, expr, value)
    if spec.vr == "TM":
        return _time_match(spec.keyword, expr, value)
    if spec.vr == "IS":
        return _integer_match(spec.keyword, expr, value)
    if spec.vr == "PN":
        value = fold_person_name(value)
    return _string_match(expr, value)


@dataclass(frozen=True)
class FindStatement:
    """A C-FIND as one SELECT, and how to read its rows back into answers.

    ``columns`` are the keys the SELECT returns, in column order; ``returned`` every key
    an answer carries (unknown ones as ``""``), in answer order.
    """

    sql: Sql
    level: Level
    columns: tuple[KeySpec, ...]
    returned: tuple[str, ...]


def _check_query(query: FindQuery) -> None:
    if query.root not in ("PATIENT", "STUDY"):
        raise InvalidQuery("information model root must be PATIENT or STUDY")
    _rank(query.level)
    if query.root == "STUDY" and query.level == "PATIENT":
        raise InvalidQuery("the Study Root information model has no PATIENT level")
    if len(query.keys) > MAX_KEYS:
        raise QueryTooLarge(f"{len(query.keys)} keys in one query, over {MAX_KEYS}")
    if any(len(keyword) > _MAX_KEYWORD_LENGTH for keyword in query.keys):
        raise InvalidQuery(f"a key name longer than {_MAX_KEYWORD_LENGTH} characters")


def find_statement(query: FindQuery, *, limit: int) -> FindStatement:
    """The SELECT answering ``query``, returning at most ``limit`` rows."""
    _check_query(query)
    level = query.level
    supported = set(supported_keys(level))
    requested = [k for k in query.keys if k != "QueryRetrieveLevel"]
    returned = list(dict.fromkeys([*returned_unique_keys(query.root, level), *requested]))
    columns = tuple(KEYS[k] for k in returned if k in supported)

    conditions: list[Sql] = []
    for keyword in requested:
        if keyword in supported:
            condition = match_key(KEYS[keyword], query.keys[keyword])
            if condition is not None:
                conditions.append(condition)
    if level == "IMAGE":
        conditions.append(Sql(_ONE_SERIES_PER_INSTANCE_UID))
    where = " AND ".join(c.text for c in conditions) or "1"
    params = tuple(p for c in conditions for p in c.params)
    text = (
        f"SELECT {', '.join(spec.expr for spec in columns)} FROM {_FROM[level]}"
        f" WHERE {where} ORDER BY {_ORDER[level]} LIMIT ?"
    )
    return FindStatement(Sql(text, (*params, limit)), level, columns, tuple(returned))


def _as_dicom_string(spec: KeySpec, value: Any) -> str:
    if value is None:
        return ""
    if spec.kind is KeyKind.MODALITIES:
        return "\\".join(sorted(set(str(value).split(","))))
    return str(value)


def answer(statement: FindStatement, row: Sequence[Any]) -> dict[str, str]:
    """One C-FIND answer from one row: every returned key, QueryRetrieveLevel first."""
    found = {
        spec.keyword: _as_dicom_string(spec, value)
        for spec, value in zip(statement.columns, row, strict=True)
    }
    result: dict[str, str] = {"QueryRetrieveLevel": statement.level}
    for keyword in statement.returned:
        result[keyword] = found.get(keyword, "")
    return result


_LOCATE_FROM = (
    "instances i LEFT JOIN series se ON i.series_ref = se.id"
    " LEFT JOIN studies s ON se.study_ref = s.id LEFT JOIN patients p ON s.patient_ref = p.id"
)
_LOCATE_ORDER = "s.id NULLS LAST, se.number NULLS LAST, se.id, i.instance_number NULLS LAST, i.id"


def locate_statement(level: str, uids: Mapping[str, str]) -> Sql:
    """The SELECT of every stored instance version under ``uids`` at ``level`` (C-MOVE/C-GET).

    The level's unique key is required; unique keys of higher levels, when given and not
    empty, constrain too (SCUs such as Orthanc send them), as does IssuerOfPatientID.
    Other keys are tolerated and ignored. Patient ID matches by exact value; the UIDs by
    UID list. An instance that could not be parsed is found by its SOP Instance UID alone.
    """
    rank = _rank(level)
    conditions: list[Sql] = []
    for lv in LEVELS[: rank + 1]:
        keyword = UNIQUE_KEYS[lv]
        value = uids.get(keyword, "")
        spec = KEYS[keyword]
        condition: Sql | None
        if spec.vr == "UI":
            condition = _uid_match(keyword, spec.expr, value)
        else:
            _check_length(keyword, value, MAX_VALUE_LENGTH)
            value = _clean(value)
            condition = Sql(f"{spec.expr} = ?", (value,)) if value else None
        if condition is not None:
            conditions.append(condition)
        elif lv == LEVELS[rank]:
            raise InvalidQuery(f"{keyword}: required to retrieve at the {lv} level")
    issuer = _clean(uids.get("IssuerOfPatientID", ""))
    if issuer:
        _check_length("IssuerOfPatientID", issuer, MAX_VALUE_LENGTH)
        conditions.append(Sql("p.issuer = ?", (issuer,)))
    text = (
        "SELECT i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.sha256, i.size"
        f" FROM {_LOCATE_FROM} WHERE {' AND '.join(c.text for c in conditions)}"
        f" ORDER BY {_LOCATE_ORDER}"
    )
    return Sql(text, tuple(p for c in conditions for p in c.params))
