"""The AE's audit events: a C-STORE association's instances, each C-FIND, each C-MOVE
and C-GET, and each caller refused for its AE title.

Both receive paths (the node's storage receiver and pynetdicom's) record one DICOM
Instances Transferred event per association, when it ends, counting the instances stored
(ATNA allows one message per association; studies are not named, the AE does not hold
the catalog key that names them). Each C-FIND is one Query event, naming the information
model, the level and the keywords matched on, never their values. A C-MOVE or C-GET is
a Begin Transferring event when its instances are found and an Instances Transferred
event (this node the source, the receiving AE the destination, the requestor beside
them) when its sub-operations are done, with how many went and how many failed. An
association rejected because its calling AE title is not in ``allowed_calling_aets`` is
a Security Alert (Node Authentication, failed), at most one a minute per address
(:meth:`~meshpacs.trail.TrailWriter.record_refusal`). Recording never fails the DICOM
operation (:meth:`~meshpacs.trail.TrailWriter.record_quietly`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshpacs.trail import TrailWriter
from meshpacs.trail.messages import (
    NODE_AUTHENTICATION,
    ActionCode,
    AuditEvent,
    Outcome,
    Participant,
    QueryObject,
    StudyCount,
    begin_transferring,
    instances_transferred,
    query,
    security_alert,
)

__all__ = [
    "Retrieve",
    "record_find",
    "record_received",
    "record_rejected_caller",
    "record_retrieve_begun",
    "record_retrieve_done",
]


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


def record_rejected_caller(
    trail: TrailWriter | None, *, calling_ae: str, address: str, called_ae: str
) -> None:
    """An association refused because its calling AE title is not allowed."""
    if trail is None:
        return
    caller = _peer(calling_ae, address)
    us = _us(trail, called_ae)

    def alert(note: str) -> AuditEvent:
        return security_alert(
            us,
            NODE_AUTHENTICATION,
            others=(caller,),
            outcome=Outcome.MINOR_FAILURE,
            description=f"association rejected: calling AE title not allowed{note}",
        )

    trail.record_refusal(f"dicom {address}", alert)


@dataclass(frozen=True)
class Retrieve:
    """One C-MOVE or C-GET: who asked, who receives, how many instances it names."""

    what: str  # "C-MOVE" or "C-GET"
    calling_ae: str
    address: str
    called_ae: str
    destination_ae: str  # the move destination; the caller itself for a C-GET
    destination_address: str
    instances: int

    def participants(
        self, trail: TrailWriter
    ) -> tuple[Participant, Participant, tuple[Participant, ...]]:
        """(source: this node, destination, others: the requestor of a C-MOVE)."""
        source = _us(trail, self.called_ae)
        if self.what == "C-GET":
            return source, _peer(self.calling_ae, self.address), ()
        destination = Participant(
            user_id=self.destination_ae or "-", network_address=self.destination_address
        )
        return source, destination, (_peer(self.calling_ae, self.address),)


def record_retrieve_begun(
    trail: TrailWriter | None,
    retrieve: Retrieve,
    *,
    outcome: Outcome = Outcome.SUCCESS,
    description: str = "",
) -> None:
    """Begin Transferring: the instances are found (or, failed, why none will go)."""
    if trail is None:
        return
    source, destination, others = retrieve.participants(trail)
    trail.record_quietly(
        begin_transferring(
            source,
            destination,
            [StudyCount(instances=retrieve.instances)],
            others=others,
            outcome=outcome,
            description=description or f"{retrieve.what} of {retrieve.instances} instances",
        )
    )


def record_retrieve_done(
    trail: TrailWriter | None,
    retrieve: Retrieve,
    *,
    sent: int,
    failed: int,
    cancelled: bool = False,
) -> None:
    """Instances Transferred (this node the source): ``sent`` went, ``failed`` did not."""
    if trail is None:
        return
    if failed == 0 and not cancelled:
        outcome, description = Outcome.SUCCESS, f"{retrieve.what}: {sent} instances sent"
    else:
        outcome = Outcome.SERIOUS_FAILURE if sent == 0 else Outcome.MINOR_FAILURE
        ended = "cancelled" if cancelled else "done"
        description = f"{retrieve.what} {ended}: {sent} of {retrieve.instances} instances sent"
        if failed:
            description += f", {failed} failed"
    source, destination, others = retrieve.participants(trail)
    trail.record_quietly(
        instances_transferred(
            source,
            destination,
            [StudyCount(instances=sent)],
            action=ActionCode.READ,
            others=others,
            outcome=outcome,
            description=description,
        )
    )
