"""The AE's audit events: a C-STORE association's instances, and each C-FIND.

Both receive paths (the node's storage receiver and pynetdicom's) record one DICOM
Instances Transferred event per association, when it ends, counting the instances stored
(ATNA allows one message per association; studies are not named, the AE does not hold
the catalog key that names them). Each C-FIND is one Query event, naming the information
model, the level and the keywords matched on, never their values. Recording never fails
the DICOM operation (:meth:`~meshpacs.trail.TrailWriter.record_quietly`).
"""

from __future__ import annotations

from collections.abc import Iterable

from meshpacs.trail import TrailWriter
from meshpacs.trail.messages import (
    Outcome,
    Participant,
    QueryObject,
    StudyCount,
    instances_transferred,
    query,
)

__all__ = ["record_find", "record_received"]


def _peer(calling_ae: str, address: str) -> Participant:
    return Participant(user_id=calling_ae or "-", network_address=address, requestor=True)


def _us(trail: TrailWriter, called_ae: str) -> Participant:
    me = trail.application
    return Participant(
        user_id=called_ae or me.user_id,
        alternative_id=me.alternative_id,
        network_address=me.network_address,
    )


def record_received(
    trail: TrailWriter | None,
    *,
    calling_ae: str,
    address: str,
    called_ae: str,
    stored: int,
    failed: int = 0,
) -> None:
    """One association's C-STOREs: ``stored`` acknowledged, ``failed`` refused."""
    if trail is None or (stored == 0 and failed == 0):
        return
    outcome = Outcome.SUCCESS if failed == 0 else Outcome.MINOR_FAILURE
    description = f"{failed} instances refused" if failed else ""
    trail.record_quietly(
        instances_transferred(
            _peer(calling_ae, address),
            _us(trail, called_ae),
            [StudyCount(instances=stored)],
            outcome=outcome,
            description=description,
        )
    )


def record_find(
    trail: TrailWriter | None,
    *,
    calling_ae: str,
    address: str,
    called_ae: str,
    sop_class_uid: str,
    level: str,
    keywords: Iterable[str],
    outcome: Outcome = Outcome.SUCCESS,
    description: str = "",
) -> None:
    """One C-FIND, as it was answered."""
    if trail is None:
        return
    asked = QueryObject(sop_class_uid, level, tuple(sorted(set(keywords))))
    trail.record_quietly(
        query(
            _peer(calling_ae, address),
            _us(trail, called_ae),
            asked,
            outcome=outcome,
            description=description,
        )
    )
