"""The node's catalog: patients, studies, series and instances it holds, and their state.

What it holds: for every instance the PACS sent, its SOP Instance UID, SOP class,
transfer syntax, size and SHA-256 of the exact bytes, and who sent it when; and the
patient / study / series attributes that Query/Retrieve matches on (names, IDs, dates,
descriptions). Instances that could not be parsed are kept too, unplaced and flagged;
two different objects under one SOP Instance UID are both kept and flagged as a
conflict. Each study carries its backup state (RECEIVING, STABLE, QUEUED, PROTECTED).

This is PHI. The catalog stays at the site, and travels only (encrypted with the site's
catalog key) to the trusted peers that may restore it; nothing here is ever sent to the
wider mesh, and its log messages name rows by row id, never by UID or patient data.

Durability: :meth:`Catalog.add_instances` returns only once its rows are committed to
the SQLite file in WAL mode with ``synchronous=FULL``, so the C-STORE handler may
acknowledge the PACS as soon as it returns. The schema is versioned
(:mod:`meshpacs.metadata.schema`); a catalog from a newer meshpacs is refused.

* :mod:`~meshpacs.metadata.records`: the records going in and out.
* :mod:`~meshpacs.metadata.schema`: the SQLite schema as migrations.
* :mod:`~meshpacs.metadata.matching`: C-FIND matching rules as SQL (pure).
* :mod:`~meshpacs.metadata.catalog`: :class:`Catalog`, the async API.
"""

from meshpacs.metadata.catalog import MAX_FIND_RESULTS, Catalog
from meshpacs.metadata.matching import MAX_KEYS, MAX_UIDS, MAX_VALUE_LENGTH, supported_keys
from meshpacs.metadata.records import (
    LEVELS,
    AddResult,
    FindQuery,
    InstanceLocation,
    InstanceRecord,
    Level,
    PatientInfo,
    Root,
    SeriesInfo,
    StudyInfo,
    StudyState,
)
from meshpacs.metadata.schema import SCHEMA_VERSION

__all__ = [
    "LEVELS",
    "MAX_FIND_RESULTS",
    "MAX_KEYS",
    "MAX_UIDS",
    "MAX_VALUE_LENGTH",
    "SCHEMA_VERSION",
    "AddResult",
    "Catalog",
    "FindQuery",
    "InstanceLocation",
    "InstanceRecord",
    "Level",
    "PatientInfo",
    "Root",
    "SeriesInfo",
    "StudyInfo",
    "StudyState",
    "supported_keys",
]
