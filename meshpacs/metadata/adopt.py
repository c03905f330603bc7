"""Catalog rows for instances whose bytes are held by the mesh, not by this node's disk.

Two moments bring such rows in, or back:

* **Restore.** A site rebuilt on a fresh machine from its recovery phrase reads its sealed
  study records back from its trusted peers (:mod:`meshpacs.metadata.replica`; only the
  site's own catalog key opens them). :func:`adopt_documents` imports each record's
  patient, study, series and instance rows and its bundle ledger (bundles, members,
  placements, wrapped data keys) into the local catalog, every instance marked pruned
  unless its file is on this disk. C-FIND then answers over them as over any others.
* **Recall.** A C-MOVE or C-GET names instances not on this disk (pruned under
  ``[backup] keep_local``, or never here since a restore). :func:`recall_bundles` says
  which bundle holds each, with what is needed to gather and check it;
  :func:`mark_recalled` clears ``pruned_at`` once the file is back in the store.

Import rules. Rows are matched on their natural keys (patient ID and issuer, Study,
Series and SOP Instance UID with SHA-256, bundle ID, placement), never on the record's
row ids, which were the lost catalog's: importing the same records twice, or the same
study from two trusted peers, adds nothing the second time, and a stale copy of a study
(fewer bundles) merges with a newer one. Existing local rows are never overwritten. Only
instances in a bundle that was stored (``stored`` or ``degraded``) are imported: the mesh
holds nothing else of them. A new study is PROTECTED (every instance imported is in a
stored bundle), so the backup pipeline leaves it alone. Each record is imported under a
savepoint: a malformed one is rolled back alone and counted.

Synchronous functions over a ``sqlite3.Connection``, run in the catalog's thread through
:meth:`~meshpacs.metadata.catalog.Catalog.write` and ``read``; the caller's transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from meshpacs.metadata.ledger import Placement, placements
from meshpacs.metadata.matching import fold_person_name
from meshpacs.metadata.records import MAX_UID_LENGTH, StudyState

__all__ = [
    "AdoptCounts",
    "RecallBundle",
    "RecallMember",
    "RecallPlan",
    "adopt_documents",
    "mark_recalled",
    "recall_bundles",
]

# Bundles whose shares were placed: the only ones a restore or a recall can gather.
_STORED_STATES = ("stored", "degraded")
_BUNDLE_STATES = ("planned", "encoded", "stored", "degraded")
_SAVEPOINT = "meshpacs_adopt"


@dataclass
class AdoptCounts:
    """What :func:`adopt_documents` added (rows new to this catalog) and left out."""

    documents: int = 0
    patients: int = 0
    studies: int = 0
    series: int = 0
    instances: int = 0
    bundles: int = 0
    placements: int = 0
    not_backed_up: int = 0  # instances of a record in no stored bundle: nothing to import
    malformed: int = 0  # records whose rows did not parse; rolled back, nothing imported

    def add(self, other: AdoptCounts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(frozen=True)
class RecallMember:
    """One instance of a bundle to recall, at its position in the bundle's index."""

    position: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int
    sha256: bytes


@dataclass(frozen=True)
class RecallBundle:
    """An encoded bundle holding instances to recall: what gathering and checking it needs."""

    bundle_id: bytes
    k: int
    n: int
    segment_size: int
    length: int
    set_hash: bytes
    wrapped_key: bytes
    members: tuple[RecallMember, ...]
    placements: tuple[Placement, ...]


@dataclass(frozen=True)
class RecallPlan:
    """The bundles holding the wanted instances, and the wanted instances none holds."""

    bundles: tuple[RecallBundle, ...]
    not_backed_up: tuple[tuple[str, bytes], ...]


class _Malformed(ValueError):
    """A record's rows do not have the columns and types the catalog needs."""


# --- restore ------------------------------------------------------------------------------


def adopt_documents(
    db: sqlite3.Connection,
    documents: Iterable[Mapping[str, Any]],
    now: float,
    present: Callable[[bytes], bool] = lambda _: False,
) -> AdoptCounts:
    """Import opened study records (``StudyRecord.document``) into the catalog.

    ``present(sha256)`` says whether the instance's file is on this node's disk (its row
    is then not marked pruned). Runs inside the caller's transaction, one savepoint per
    document.
    """
    total = AdoptCounts()
    for document in documents:
        db.execute(f"SAVEPOINT {_SAVEPOINT}")
        try:
            counts = _adopt_document(db, document, now, present)
        except (_Malformed, KeyError, TypeError, ValueError, sqlite3.IntegrityError):
            db.execute(f"ROLLBACK TO {_SAVEPOINT}")
            db.execute(f"RELEASE {_SAVEPOINT}")
            total.malformed += 1
            continue
        db.execute(f"RELEASE {_SAVEPOINT}")
        total.add(counts)
    return total


def _adopt_document(
    db: sqlite3.Connection,
    document: Mapping[str, Any],
    now: float,
    present: Callable[[bytes], bool],
) -> AdoptCounts:
    counts = AdoptCounts(documents=1)
    rows = {_int(i, "id"): i for i in _list(document, "instances")}
    bundles = [b for b in _list(document, "bundles") if _text(b, "state") in _STORED_STATES]
    bundled = {_int(m, "instance_ref") for b in bundles for m in _list(b, "members")}
    if bundled - rows.keys():
        raise _Malformed("a bundle member is not among the record's instances")
    counts.not_backed_up = len(rows.keys() - bundled)
    if not bundled:
        return counts
    study_ref = None
    series_refs: dict[int, int] = {}
    if document.get("study") is not None:
        patient_ref = _adopt_patient(db, _map(document, "patient"), counts)
        study_ref = _adopt_study(db, _map(document, "study"), patient_ref, counts)
        wanted = {rows[ref].get("series_ref") for ref in bundled}
        for series in _list(document, "series"):
            if series.get("id") in wanted:
                series_refs[_int(series, "id")] = _adopt_series(db, series, study_ref, counts)
    instance_refs: dict[int, int] = {}
    for ref in sorted(bundled):
        row = rows[ref]
        in_series = row.get("series_ref")
        local_series = None if in_series is None else series_refs.get(int(in_series))
        if in_series is not None and local_series is None:
            raise _Malformed("an instance names a series the record does not hold")
        instance_refs[ref] = _adopt_instance(db, row, local_series, now, present, counts)
    for bundle in bundles:
        _adopt_bundle(db, bundle, study_ref, instance_refs, counts)
    return counts


def _adopt_patient(db: sqlite3.Connection, row: Mapping[str, Any], counts: AdoptCounts) -> int:
    patient_id, issuer = _text(row, "patient_id"), _text(row, "issuer")
    found = db.execute(
        "SELECT id FROM patients WHERE patient_id = ? AND issuer = ?", (patient_id, issuer)
    ).fetchone()
    if found is not None:
        return int(found[0])
    name = _text(row, "name")
    cursor = db.execute(
        "INSERT INTO patients (patient_id, issuer, name, name_fold, birth_date, sex)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (patient_id, issuer, name, fold_person_name(name), _text(row, "birth_date"),
         _text(row, "sex")),
    )  # fmt: skip
    counts.patients += 1
    return _lastrowid(cursor)


def _adopt_study(
    db: sqlite3.Connection, row: Mapping[str, Any], patient_ref: int, counts: AdoptCounts
) -> int:
    uid = _uid(row, "study_uid")
    found = db.execute("SELECT id FROM studies WHERE study_uid = ?", (uid,)).fetchone()
    if found is not None:
        return int(found[0])
    referring = _text(row, "referring")
    first, last = _float(row, "first_received"), _float(row, "last_received")
    cursor = db.execute(
        "INSERT INTO studies (study_uid, patient_ref, date, time, accession, study_id,"
        " description, referring, referring_fold, state, first_received, last_received)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (uid, patient_ref, _text(row, "date"), _text(row, "time"), _text(row, "accession"),
         _text(row, "study_id"), _text(row, "description"), referring,
         fold_person_name(referring), StudyState.PROTECTED.value, first, last),
    )  # fmt: skip
    counts.studies += 1
    return _lastrowid(cursor)


def _adopt_series(
    db: sqlite3.Connection, row: Mapping[str, Any], study_ref: int, counts: AdoptCounts
) -> int:
    uid = _uid(row, "series_uid")
    found = db.execute("SELECT id FROM series WHERE series_uid = ?", (uid,)).fetchone()
    if found is not None:
        return int(found[0])
    cursor = db.execute(
        "INSERT INTO series (series_uid, study_ref, modality, number, description, body_part)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (uid, study_ref, _text(row, "modality"), _optional_int(row, "number"),
         _text(row, "description"), _text(row, "body_part")),
    )  # fmt: skip
    counts.series += 1
    return _lastrowid(cursor)


def _adopt_instance(
    db: sqlite3.Connection,
    row: Mapping[str, Any],
    series_ref: int | None,
    now: float,
    present: Callable[[bytes], bool],
    counts: AdoptCounts,
) -> int:
    uid, sha256 = _uid(row, "sop_instance_uid"), _hex(row, "sha256", 32)
    found = db.execute(
        "SELECT id FROM instances WHERE sop_instance_uid = ? AND sha256 = ?", (uid, sha256)
    ).fetchone()
    if found is not None:
        return int(found[0])
    size = _int(row, "size")
    if size < 0:
        raise _Malformed("an instance has a negative size")
    parse_error = row.get("parse_error")
    if series_ref is None and not parse_error:
        raise _Malformed("an unplaced instance carries no parse error")
    cursor = db.execute(
        "INSERT INTO instances (sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
        " instance_number, size, sha256, calling_ae, received_at, series_ref, parse_error,"
        " pruned_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (uid, _text(row, "sop_class_uid"), _text(row, "transfer_syntax_uid"),
         _optional_int(row, "instance_number"), size, sha256, _text(row, "calling_ae"),
         _float(row, "received_at"), series_ref,
         None if parse_error is None else str(parse_error),
         None if present(sha256) else now),
    )  # fmt: skip
    db.execute(
        "UPDATE instances SET conflict = 1 WHERE sop_instance_uid = ?1"
        " AND (SELECT COUNT(*) FROM instances WHERE sop_instance_uid = ?1) > 1",
        (uid,),
    )
    counts.instances += 1
    return _lastrowid(cursor)


def _adopt_bundle(
    db: sqlite3.Connection,
    row: Mapping[str, Any],
    study_ref: int | None,
    instance_refs: Mapping[int, int],
    counts: AdoptCounts,
) -> None:
    bundle_id = _hex(row, "bundle_id", 16)
    found = db.execute("SELECT id FROM bundles WHERE bundle_id = ?", (bundle_id,)).fetchone()
    if found is not None:
        ref = int(found[0])
    else:
        state = _text(row, "state")
        if state not in _BUNDLE_STATES:
            raise _Malformed("a bundle has an unknown state")
        cursor = db.execute(
            "INSERT INTO bundles (bundle_id, study_ref, k, n, segment_size, length, set_hash,"
            " wrapped_key, state, created_at, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (bundle_id, study_ref, _int(row, "k"), _int(row, "n"), _int(row, "segment_size"),
             _int(row, "length"), _hex(row, "set_hash", 32), _hex(row, "wrapped_key"),
             state, _float(row, "created_at"), _optional_float(row, "stored_at")),
        )  # fmt: skip
        ref = _lastrowid(cursor)
        counts.bundles += 1
    for member in _list(row, "members"):
        db.execute(
            "INSERT INTO bundle_members (bundle_ref, position, instance_ref) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (ref, _int(member, "position"), instance_refs[_int(member, "instance_ref")]),
        )
    for placement in _list(row, "placements"):
        cursor = db.execute(
            "INSERT INTO placements (bundle_ref, share, holder_site, fragment_id, stored_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (ref, _int(placement, "share"), _text(placement, "holder_site"),
             _text(placement, "fragment_id"), _float(placement, "stored_at")),
        )  # fmt: skip
        counts.placements += cursor.rowcount


# --- recall -------------------------------------------------------------------------------


def recall_bundles(db: sqlite3.Connection, wanted: Sequence[tuple[str, bytes]]) -> RecallPlan:
    """The encoded bundles holding ``wanted`` instances (SOP Instance UID, SHA-256).

    Every member of such a bundle is listed (the bundle's index is checked whole when it
    is decoded), whether wanted or not. Instances in no encoded bundle come back in
    ``not_backed_up``: the mesh holds no copy of them.
    """
    refs: dict[int, None] = {}
    missing: list[tuple[str, bytes]] = []
    for uid, sha256 in wanted:
        row = db.execute(
            "SELECT m.bundle_ref FROM instances i JOIN bundle_members m ON m.instance_ref = i.id"
            " JOIN bundles b ON b.id = m.bundle_ref WHERE i.sop_instance_uid = ?"
            " AND i.sha256 = ? AND b.length IS NOT NULL AND b.set_hash IS NOT NULL",
            (uid, sha256),
        ).fetchone()
        if row is None:
            missing.append((uid, sha256))
        else:
            refs[int(row[0])] = None
    return RecallPlan(tuple(_recall_bundle(db, ref) for ref in refs), tuple(missing))


def _recall_bundle(db: sqlite3.Connection, ref: int) -> RecallBundle:
    row = db.execute(
        "SELECT bundle_id, k, n, segment_size, length, set_hash, wrapped_key FROM bundles"
        " WHERE id = ?",
        (ref,),
    ).fetchone()
    members = db.execute(
        "SELECT m.position, i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid,"
        " i.size, i.sha256 FROM bundle_members m JOIN instances i ON m.instance_ref = i.id"
        " WHERE m.bundle_ref = ? ORDER BY m.position",
        (ref,),
    ).fetchall()
    return RecallBundle(
        bundle_id=bytes(row[0]),
        k=int(row[1]),
        n=int(row[2]),
        segment_size=int(row[3]),
        length=int(row[4]),
        set_hash=bytes(row[5]),
        wrapped_key=bytes(row[6]),
        members=tuple(
            RecallMember(int(m[0]), str(m[1]), str(m[2]), str(m[3]), int(m[4]), bytes(m[5]))
            for m in members
        ),
        placements=tuple(placements(db, ref)),
    )


def mark_recalled(db: sqlite3.Connection, instances: Sequence[tuple[str, bytes]]) -> int:
    """These instances' files are back on this disk (fsynced): clear ``pruned_at``.

    Only after the file is durable: a row with ``pruned_at`` NULL and no file is taken
    for a crashed ingest and removed at the next start. Returns the rows changed.
    """
    changed = 0
    for uid, sha256 in instances:
        cursor = db.execute(
            "UPDATE instances SET pruned_at = NULL WHERE sop_instance_uid = ? AND sha256 = ?"
            " AND pruned_at IS NOT NULL",
            (uid, sha256),
        )
        changed += cursor.rowcount
    return changed


# --- reading a record's rows --------------------------------------------------------------


def _lastrowid(cursor: sqlite3.Cursor) -> int:
    row_id = cursor.lastrowid
    if row_id is None:  # pragma: no cover - SQLite always sets it after an INSERT
        raise sqlite3.IntegrityError("insert returned no row id")
    return row_id


def _list(row: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = row.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise _Malformed(f"{key} is not a list of rows")
    return value


def _map(row: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = row.get(key)
    if not isinstance(value, Mapping):
        raise _Malformed(f"{key} is not a row")
    return value


def _text(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Malformed(f"{key} is not text")
    return value


def _uid(row: Mapping[str, Any], key: str) -> str:
    value = _text(row, key)
    if not 1 <= len(value) <= MAX_UID_LENGTH or not value.isascii() or not value.isprintable():
        raise _Malformed(f"{key} is not a UID")
    return value


def _int(row: Mapping[str, Any], key: str) -> int:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Malformed(f"{key} is not an integer")
    return value


def _optional_int(row: Mapping[str, Any], key: str) -> int | None:
    return None if row.get(key) is None else _int(row, key)


def _float(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Malformed(f"{key} is not a number")
    return float(value)


def _optional_float(row: Mapping[str, Any], key: str) -> float | None:
    return None if row.get(key) is None else _float(row, key)


def _hex(row: Mapping[str, Any], key: str, size: int | None = None) -> bytes:
    try:
        value = bytes.fromhex(_text(row, key))
    except ValueError:
        raise _Malformed(f"{key} is not hex") from None
    if size is not None and len(value) != size:
        raise _Malformed(f"{key} is not {size} bytes")
    return value
