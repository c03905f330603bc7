"""From sealed catalog records back to what must be restored.

Each trusted peer returns the site's sealed records (one per protected study, one per
bundle of unparsed instances). They open only with the site's catalog key, which the
recovery phrase gives back; a record that does not open (another site's, altered) is
counted and skipped, never trusted. The same study usually comes back from several peers,
and a later record of a study holds more bundles (late instances): records are merged,
bundles by bundle ID (placements joined), instances by SOP Instance UID and SHA-256.

Pure functions over bytes and the model's frozen dataclasses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshpacs.erasure.ids import fragment_id
from meshpacs.erasure.layout import BundleRef, CodingParams
from meshpacs.errors import FormatError, MeshError
from meshpacs.keys import SiteKeys
from meshpacs.metadata.replica import StudyRecord, open_record
from meshpacs.recovery.model import PlannedBundle, PlannedInstance, PlannedStudy, ShareHolder

__all__ = ["OpenedRecords", "open_records", "plan_studies"]

UNPLACED_PREFIX = "unplaced-"


@dataclass
class OpenedRecords:
    """The records that opened, and how many did not (a count: they say nothing more)."""

    records: list[StudyRecord] = field(default_factory=list)
    refused: int = 0


def open_records(
    keys: SiteKeys, site_id: str, sealed: Iterable[tuple[str, bytes]]
) -> OpenedRecords:
    """Open every ``(record_id, sealed bytes)`` the peers returned."""
    opened = OpenedRecords()
    for record_id, data in sealed:
        try:
            opened.records.append(open_record(keys.catalog, site_id, record_id, data))
        except MeshError:
            opened.refused += 1
    return opened


def _instance(row: Mapping[str, Any], position: int) -> PlannedInstance:
    return PlannedInstance(
        position=position,
        sop_instance_uid=str(row["sop_instance_uid"]),
        sop_class_uid=str(row["sop_class_uid"]),
        transfer_syntax_uid=str(row["transfer_syntax_uid"]),
        size=int(row["size"]),
        sha256=bytes.fromhex(str(row["sha256"])),
    )


def _bundle(keys: SiteKeys, row: Mapping[str, Any], rows: Mapping[int, Any]) -> PlannedBundle:
    bundle_id = bytes.fromhex(str(row["bundle_id"]))
    if row.get("length") is None or row.get("set_hash") is None:
        raise FormatError("a record lists a bundle that was never encoded")
    params = CodingParams(int(row["k"]), int(row["n"]), int(row["segment_size"]))
    ref = BundleRef(bundle_id, params, int(row["length"]), bytes.fromhex(str(row["set_hash"])))
    members = sorted(row.get("members", []), key=lambda m: int(m["position"]))
    instances = tuple(_instance(rows[int(m["instance_ref"])], int(m["position"])) for m in members)
    holders = tuple(
        ShareHolder(int(p["share"]), str(p["holder_site"]), str(p["fragment_id"]))
        for p in row.get("placements", [])
    )
    ids = tuple(fragment_id(keys.fragment_id, bundle_id, s) for s in range(params.n))
    return PlannedBundle(ref, bytes.fromhex(str(row["wrapped_key"])), ids, holders, instances)


def _merge_bundles(bundles: Iterable[PlannedBundle]) -> tuple[PlannedBundle, ...]:
    merged: dict[bytes, PlannedBundle] = {}
    for bundle in bundles:
        held = merged.get(bundle.bundle_id)
        if held is None:
            merged[bundle.bundle_id] = bundle
            continue
        holders = tuple(dict.fromkeys(held.holders + bundle.holders))
        merged[bundle.bundle_id] = PlannedBundle(
            held.ref, held.wrapped_key, held.fragment_ids, holders, held.instances
        )
    return tuple(merged.values())


def _study(keys: SiteKeys, uid: str, documents: list[Mapping[str, Any]]) -> PlannedStudy:
    bundles: list[PlannedBundle] = []
    modalities: set[str] = set()
    for document in documents:
        rows = {int(i["id"]): i for i in document.get("instances", [])}
        bundles.extend(_bundle(keys, b, rows) for b in document.get("bundles", []))
        modalities.update(str(s.get("modality", "")) for s in document.get("series", []))
    first = documents[0]
    study = first.get("study") or {}
    patient = first.get("patient") or {}
    last = max(float((d.get("study") or {}).get("last_received", 0.0)) for d in documents)
    return PlannedStudy(
        study_uid="" if uid.startswith(UNPLACED_PREFIX) else uid,
        patient_id=str(patient.get("patient_id", "")),
        patient_name=str(patient.get("name", "")),
        study_date=str(study.get("date", "")),
        modalities=tuple(sorted(m for m in modalities if m)),
        last_received=last,
        bundles=_merge_bundles(bundles),
    )


def plan_studies(keys: SiteKeys, records: Iterable[StudyRecord]) -> list[PlannedStudy]:
    """One :class:`PlannedStudy` per study (and per bundle of unparsed instances)."""
    by_uid: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_uid.setdefault(record.study_uid, []).append(record.document)
    return [_study(keys, uid, documents) for uid, documents in by_uid.items()]
