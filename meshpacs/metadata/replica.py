"""Catalog records for the trusted peers: one sealed record per protected study.

What a recovering site needs to find and check its studies again (patient, study,
series and instance rows; its bundles with their wrapped data keys, members and
placements) leaves the site only as a sealed record, stored by the trusted peers the
site names. The record is encrypted under the site's catalog key, so a trusted peer holds
ciphertext too: it keeps the record for the site, it cannot read it.

Sealed record, format version 1::

    offset  size  field
    0       1     version       = 1
    1       1     kind          1 = study record
    2       12    nonce         random per seal
    14      ...   ciphertext    AES-256-GCM of the record's JSON (UTF-8), tag at the end

    associated data = b"meshpacs/v1/catalog-record" | kind | site_id | 0x00 | record_id

The record ID is ``HMAC-SHA256(catalog key, "study" | Study Instance UID)`` in hex: a
stable name for the study's latest record (a newer seal replaces the older one at the
peer) that says nothing about the study. Binding site and record ID in the associated
data means a record cannot be passed off as another study's or another site's.

Pure functions over bytes and frozen dataclasses; :func:`export_study` reads the rows.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshpacs.errors import FormatError, LimitExceeded, UnknownVersion, WrongKey

__all__ = [
    "MAX_RECORD_BYTES",
    "RECORD_VERSION",
    "StudyRecord",
    "export_study",
    "export_unplaced",
    "open_record",
    "seal_record",
    "study_record_id",
]

RECORD_VERSION = 1
KIND_STUDY = 1
MAX_RECORD_BYTES = 64 * 1024 * 1024  # ~300,000 instances; refused before decrypting
_NONCE_SIZE = 12
_AAD_LABEL = b"meshpacs/v1/catalog-record"
_ID_LABEL = b"study"


@dataclass(frozen=True)
class StudyRecord:
    """A study's catalog rows as plain JSON-able data (``document``) under its UID."""

    study_uid: str
    document: dict[str, Any]


def study_record_id(catalog_key: bytes, study_uid: str) -> str:
    return hmac.new(catalog_key, _ID_LABEL + study_uid.encode("ascii"), hashlib.sha256).hexdigest()


def _aad(kind: int, site_id: str, record_id: str) -> bytes:
    return _AAD_LABEL + bytes([kind]) + site_id.encode("ascii") + b"\x00" + record_id.encode()


def seal_record(catalog_key: bytes, site_id: str, record: StudyRecord) -> tuple[str, bytes]:
    """The record ID and the sealed bytes to hand to the trusted peers."""
    record_id = study_record_id(catalog_key, record.study_uid)
    plain = json.dumps(
        {"study_uid": record.study_uid, "document": record.document},
        separators=(",", ":"),
        sort_keys=True,
    ).encode("utf-8")
    if len(plain) > MAX_RECORD_BYTES:
        raise LimitExceeded(f"study record of {len(plain)} bytes is over {MAX_RECORD_BYTES}")
    nonce = secrets.token_bytes(_NONCE_SIZE)
    sealed = AESGCM(catalog_key).encrypt(nonce, plain, _aad(KIND_STUDY, site_id, record_id))
    return record_id, bytes([RECORD_VERSION, KIND_STUDY]) + nonce + sealed


def open_record(catalog_key: bytes, site_id: str, record_id: str, data: bytes) -> StudyRecord:
    """The study record inside ``data``; ``WrongKey`` when it does not authenticate."""
    if len(data) > MAX_RECORD_BYTES + 2 + _NONCE_SIZE + 16:
        raise LimitExceeded(f"sealed record of {len(data)} bytes is over the bound")
    if len(data) < 2 + _NONCE_SIZE + 16:
        raise FormatError("sealed record is too short")
    if data[0] != RECORD_VERSION:
        raise UnknownVersion("catalog record", data[0], [RECORD_VERSION])
    if data[1] != KIND_STUDY:
        raise FormatError(f"catalog record kind {data[1]} is unknown")
    nonce, sealed = data[2 : 2 + _NONCE_SIZE], data[2 + _NONCE_SIZE :]
    try:
        plain = AESGCM(catalog_key).decrypt(nonce, sealed, _aad(data[1], site_id, record_id))
    except InvalidTag:
        raise WrongKey("catalog record does not authenticate under this site's key") from None
    try:
        body = json.loads(plain)
        return StudyRecord(str(body["study_uid"]), dict(body["document"]))
    except (ValueError, KeyError, TypeError) as error:
        raise FormatError(f"catalog record content is malformed: {error}") from None


def _rows(db: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> list[dict[str, Any]]:
    cursor = db.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [
        {
            name: (value.hex() if isinstance(value, bytes) else value)
            for name, value in zip(names, row, strict=True)
        }
        for row in cursor.fetchall()
    ]


def _bundle_documents(
    db: sqlite3.Connection, where: str, params: tuple[object, ...]
) -> list[dict[str, Any]]:
    bundles = _rows(db, f"SELECT * FROM bundles WHERE {where} ORDER BY id", params)
    for bundle in bundles:
        bundle["members"] = _rows(
            db,
            "SELECT position, instance_ref FROM bundle_members WHERE bundle_ref = ?"
            " ORDER BY position",
            (bundle["id"],),
        )
        bundle["placements"] = _rows(
            db,
            "SELECT share, holder_site, fragment_id, stored_at FROM placements"
            " WHERE bundle_ref = ? ORDER BY share, holder_site",
            (bundle["id"],),
        )
    return bundles


def export_unplaced(db: sqlite3.Connection, bundle_ref: int) -> StudyRecord:
    """The record of a bundle of unparsed instances (no study): its instances and itself.

    Named ``unplaced-<bundle id hex>`` in place of a Study Instance UID.
    """
    bundles = _bundle_documents(db, "id = ?", (bundle_ref,))
    instances = _rows(
        db,
        "SELECT i.* FROM instances i JOIN bundle_members m ON m.instance_ref = i.id"
        " WHERE m.bundle_ref = ? ORDER BY m.position",
        (bundle_ref,),
    )
    name = f"unplaced-{bundles[0]['bundle_id']}"
    return StudyRecord(name, {"instances": instances, "bundles": bundles})


def export_study(db: sqlite3.Connection, study_ref: int) -> StudyRecord:
    """Everything the catalog holds about one study, for its sealed record.

    Binary columns (digests, bundle IDs, wrapped keys) are hex strings.
    """
    [study] = _rows(db, "SELECT * FROM studies WHERE id = ?", (study_ref,))
    [patient] = _rows(db, "SELECT * FROM patients WHERE id = ?", (study["patient_ref"],))
    series = _rows(db, "SELECT * FROM series WHERE study_ref = ? ORDER BY id", (study_ref,))
    instances = _rows(
        db,
        "SELECT i.* FROM instances i JOIN series s ON i.series_ref = s.id"
        " WHERE s.study_ref = ? ORDER BY i.id",
        (study_ref,),
    )
    bundles = _bundle_documents(db, "study_ref = ?", (study_ref,))
    document = {
        "patient": patient,
        "study": study,
        "series": series,
        "instances": instances,
        "bundles": bundles,
    }
    return StudyRecord(str(study["study_uid"]), document)
