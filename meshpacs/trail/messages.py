"""ATNA audit messages (DICOM PS3.15 Annex A.5, IHE ITI-20), built sans I/O.

Frozen dataclasses in, bytes out: :func:`render` turns an :class:`AuditEvent` and the
site's :class:`AuditSource` into one ``AuditMessage`` document, UTF-8 XML following the
DICOM audit message schema (A.5.1)::

    AuditMessage
    ├── EventIdentification      EventActionCode, EventDateTime, EventOutcomeIndicator
    │   ├── EventID              a DCM code: 110100 Application Activity, 110104 ...
    │   ├── EventTypeCode*       e.g. 110120 Application Start
    │   └── EventOutcomeDescription?
    ├── ActiveParticipant+       UserID, UserIsRequestor, NetworkAccessPointID ...
    │   └── RoleIDCode*          110150 Application, 110152 Destination, 110153 Source ...
    ├── AuditSourceIdentification   AuditSourceID (the node), AuditEnterpriseSiteID (the site)
    │   └── AuditSourceTypeCode  4: application server process
    └── ParticipantObjectIdentification*   the studies, the query, the node's own trail

The builders (:func:`application_activity`, :func:`instances_transferred`, :func:`query`,
:func:`security_alert`, :func:`user_authentication`, :func:`begin_transferring`,
:func:`export`, :func:`import_`, :func:`study_deleted`) pick the codes, so a caller only
says who, what and how it went. The XML is built with :mod:`xml.etree.ElementTree`, which
escapes ``<``, ``&`` and quotes; characters XML 1.0 cannot carry at all (C0 controls, lone
surrogates) become U+FFFD, so a hostile AE title never makes a message unreadable.

Why studies are named by their keyed catalog record ID by default. meshpacs keeps its
logs free of PHI; the audit trail is different in kind (it stays in the site's own data
directory, beside the instances, and ATNA expects it to say which study was touched),
but it is also the file most likely to be copied off the machine: to a syslog collector,
into a ticket, to an auditor. A Study Instance UID is an identifier of a patient's
examination and links across hospitals; the keyed record ID (an HMAC of the UID under the
site's catalog key, the name the study's sealed record has at the trusted peers) names
the study just as precisely at this site, and means nothing elsewhere. Where even that is
not known (a C-STORE association's instances) a message carries counts. ``include_uids``
in :func:`render` adds the Study Instance UIDs for a site whose privacy officer wants them
in the trail; it is off unless asked for.

Queries are recorded by their SOP class, level and the attribute keywords matched on,
never the values (a patient's name is exactly what a C-FIND carries).
"""

from __future__ import annotations

import base64
import ipaddress
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum, IntEnum, StrEnum
from typing import NamedTuple

__all__ = [
    "APPLICATION_START",
    "APPLICATION_STOP",
    "AUDIT_RECORDING_STARTED",
    "LOCAL_SCHEME",
    "LOGIN",
    "LOGOUT",
    "NODE_AUTHENTICATION",
    "SECURITY_CONFIGURATION",
    "SOFTWARE_CONFIGURATION",
    "USE_OF_RESTRICTED_FUNCTION",
    "ActionCode",
    "AuditEvent",
    "AuditObject",
    "AuditSource",
    "Code",
    "EventCode",
    "Outcome",
    "Participant",
    "QueryObject",
    "Role",
    "StudyCount",
    "StudyRef",
    "application_activity",
    "begin_transferring",
    "export",
    "import_",
    "instances_transferred",
    "query",
    "render",
    "security_alert",
    "study_deleted",
    "user_authentication",
]

# Local codes (coding scheme designators starting "99" are private, PS3.16 8.2).
LOCAL_SCHEME = "99MESHPACS"
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class Code:
    """A coded value: ``csd-code``, ``codeSystemName`` and ``originalText``."""

    code: str
    scheme: str
    meaning: str


class EventCode(Enum):
    """EventID codes of PS3.15 A.5.3 (DCM, PS3.16 CID 400)."""

    APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")
    BEGIN_TRANSFERRING = Code("110102", "DCM", "Begin Transferring DICOM Instances")
    INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
    STUDY_DELETED = Code("110105", "DCM", "DICOM Study Deleted")
    EXPORT = Code("110106", "DCM", "Export")
    IMPORT = Code("110107", "DCM", "Import")
    QUERY = Code("110112", "DCM", "Query")
    SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
    USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")


class Role(Enum):
    """Active participant role IDs (DCM, PS3.16 CID 402)."""

    APPLICATION = Code("110150", "DCM", "Application")
    APPLICATION_LAUNCHER = Code("110151", "DCM", "Application Launcher")
    DESTINATION = Code("110152", "DCM", "Destination Role ID")
    SOURCE = Code("110153", "DCM", "Source Role ID")
    DESTINATION_MEDIA = Code("110154", "DCM", "Destination Media")
    SOURCE_MEDIA = Code("110155", "DCM", "Source Media")


class ActionCode(StrEnum):
    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class Outcome(IntEnum):
    """EventOutcomeIndicator."""

    SUCCESS = 0
    MINOR_FAILURE = 4  # the action completed, with a problem
    SERIOUS_FAILURE = 8  # the action did not complete
    MAJOR_FAILURE = 12  # the action failed in a way that needs attention at once


APPLICATION_START = Code("110120", "DCM", "Application Start")
APPLICATION_STOP = Code("110121", "DCM", "Application Stop")
LOGIN = Code("110122", "DCM", "Login")
LOGOUT = Code("110123", "DCM", "Logout")
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
SECURITY_CONFIGURATION = Code("110129", "DCM", "Security Configuration")
SOFTWARE_CONFIGURATION = Code("110131", "DCM", "Software Configuration")
USE_OF_RESTRICTED_FUNCTION = Code("110132", "DCM", "Use of Restricted Function")
AUDIT_RECORDING_STARTED = Code("110134", "DCM", "Audit Recording Started")
_STUDY_UID = Code("110180", "DCM", "Study Instance UID")
_STUDY_RECORD_ID = Code("study-record-id", LOCAL_SCHEME, "Keyed catalog record ID of a study")
_STUDY_COUNT = Code("study-count", LOCAL_SCHEME, "Studies counted, not named")
_AUDIT_SOURCE_APPLICATION = Code("4", "DCM", "Application Server Process")


@dataclass(frozen=True)
class AuditSource:
    """Who writes the message: ``source_id`` the node (its AE title), ``site_id`` the site."""

    source_id: str
    site_id: str


@dataclass(frozen=True)
class Participant:
    """An active participant: a user, a process or a DICOM AE.

    ``network_address`` is an IP address or host name (``NetworkAccessPointTypeCode`` 2
    for an IP address, 1 for a name, set from its form).
    """

    user_id: str
    role: Role | None = None
    requestor: bool = False
    alternative_id: str = ""
    user_name: str = ""
    network_address: str = ""


@dataclass(frozen=True)
class StudyRef:
    """One study: its keyed catalog record ID, and its UID only for ``include_uids``."""

    record_id: str
    uid: str = field(default="", repr=False)
    instances: int | None = None


@dataclass(frozen=True)
class StudyCount:
    """Studies (or just instances) counted, where the message does not name them."""

    studies: int | None = None
    instances: int | None = None


@dataclass(frozen=True)
class QueryObject:
    """A C-FIND: its SOP class, level, and the keywords it matched on (never values)."""

    sop_class_uid: str
    level: str = ""
    keywords: tuple[str, ...] = ()


AuditObject = StudyRef | StudyCount | QueryObject


@dataclass(frozen=True)
class AuditEvent:
    """One event, ready for :func:`render`. Use the builders below rather than this."""

    event: EventCode
    action: ActionCode
    at: datetime
    outcome: Outcome = Outcome.SUCCESS
    participants: tuple[Participant, ...] = ()
    objects: tuple[AuditObject, ...] = ()
    event_types: tuple[Code, ...] = ()
    description: str = ""  # EventOutcomeDescription: PHI-free, why it failed


# -- builders ------------------------------------------------------------------------


class _Kind(NamedTuple):
    """What PS3.15 A.5.3 fixes for an event: its EventActionCode, the RoleIDCode of each
    participant its builder names (in the builder's order; a participant's own role wins)
    and which of them is the requestor, where the event says (else each says for itself)."""

    action: ActionCode
    roles: tuple[Role | None, ...]
    requestor: int | None = None


_KINDS: dict[EventCode, _Kind] = {
    EventCode.APPLICATION_ACTIVITY: _Kind(
        ActionCode.EXECUTE, (Role.APPLICATION, Role.APPLICATION_LAUNCHER), requestor=1
    ),
    EventCode.INSTANCES_TRANSFERRED: _Kind(ActionCode.CREATE, (Role.SOURCE, Role.DESTINATION)),
    EventCode.BEGIN_TRANSFERRING: _Kind(ActionCode.EXECUTE, (Role.SOURCE, Role.DESTINATION)),
    EventCode.QUERY: _Kind(ActionCode.EXECUTE, (Role.SOURCE, Role.DESTINATION), requestor=0),
    EventCode.SECURITY_ALERT: _Kind(ActionCode.EXECUTE, (Role.APPLICATION,)),
    EventCode.USER_AUTHENTICATION: _Kind(ActionCode.EXECUTE, (None, Role.APPLICATION), requestor=0),
    EventCode.EXPORT: _Kind(ActionCode.READ, (Role.SOURCE, Role.DESTINATION_MEDIA), requestor=0),
    EventCode.IMPORT: _Kind(ActionCode.CREATE, (None, Role.SOURCE, Role.DESTINATION), requestor=0),
    EventCode.STUDY_DELETED: _Kind(ActionCode.DELETE, (None, Role.APPLICATION), requestor=0),
}


def _event(
    event: EventCode,
    named: Sequence[Participant | None],
    objects: Sequence[AuditObject],
    outcome: Outcome,
    description: str,
    at: datetime | None,
    *,
    others: Sequence[Participant] = (),
    event_type: Code | None = None,
    action: ActionCode | None = None,
) -> AuditEvent:
    """``named`` take their roles from :data:`_KINDS` (None: an optional one not given);
    ``others`` follow them as they are."""
    kind = _KINDS[event]
    people = [
        replace(who, role=who.role or role, requestor=who.requestor or slot == kind.requestor)
        for slot, (who, role) in enumerate(zip(named, kind.roles, strict=True))
        if who is not None
    ]
    return AuditEvent(
        event,
        action or kind.action,
        at if at is not None else datetime.now(UTC),
        outcome,
        (*people, *others),
        tuple(objects),
        () if event_type is None else (event_type,),
        description,
    )


def application_activity(
    application: Participant,
    *,
    started: bool,
    launcher: Participant | None = None,
    outcome: Outcome = Outcome.SUCCESS,
    description: str = "",
    at: datetime | None = None,
) -> AuditEvent:
    """110100: the node (``application``) started or stopped; ``launcher`` who ran it."""
    return _event(
        EventCode.APPLICATION_ACTIVITY,
        (application, launcher),
        (),
        outcome,
        description,
        at,
        event_type=APPLICATION_START if started else APPLICATION_STOP,
    )


def instances_transferred(
    source: Participant,
    destination: Participant,
    objects: Sequence[AuditObject],
    *,
    action: ActionCode = ActionCode.CREATE,
    others: Sequence[Participant] = (),
    outcome: Outcome = Outcome.SUCCESS,
    description: str = "",
    at: datetime | None = None,
) -> AuditEvent:
    """110104: instances went from ``source`` to ``destination`` (C: stored, R: sent);
    ``others``: e.g. the AE that asked for a C-MOVE to a third."""
    return _event(
        EventCode.INSTANCES_TRANSFERRED,
        (source, destination),
        objects,
        outcome,
        description,
        at,
        others=others,
        action=action,
    )


def begin_transferring(
    source: Participant,
    destination: Participant,
    objects: Sequence[AuditObject],
    *,
    others: Sequence[Participant] = (),
    outcome: Outcome = Outcome.SUCCESS,
    description: str = "",
    at: datetime | None = None,
) -> AuditEvent:
    """110102: a transfer (C-MOVE, C-GET, a recovery) of ``objects`` is starting."""
    return _event(
        EventCode.BEGIN_TRANSFERRING,
        (source, destination),
        objects,
        outcome,
        description,
        at,
        others=others,
    )


def query(
    requestor: Participant,
    responder: Participant,
    asked: QueryObject,
    *,
    outcome: Outcome = Outcome.SUCCESS,
    description: str = "",
    at: datetime | None = None,
) -> AuditEvent:
    """110112: ``requestor`` queried ``responder`` (a C-FIND)."""
    return _event(EventCode.QUERY, (requestor, responder), (asked,), outcome, description, at)


def security_alert(
    reporter: Participant,
    kind: Code,
    *,
    others: Sequence[Participant] = (),
    outcome: Outcome = Outcome.SUCCESS,  # PS3.15 A.5.3.11: success, an informative alert
    description: str = "",
    at: datetime | None = None,
) -> AuditEvent:
    """110113: something security-relevant (``kind``: e.g. :data:`NODE_AUTHENTICATION`)."""
    return _event(
        EventCode.SECURITY_ALERT,
        (reporter,),
        (),
        outcome,
        description,
        at,
        others=others,
        event_type=kind,
    )


def user_authentication(
    user: Participant,
    node: Participant,
    *,
    login: bool = True,
    outcome: Outcome = Outcome.SUCCESS,
    description: str = "",
    at: datetime | None = None,
) -> AuditEvent:
    """110114: ``user`` logged in to (or out of) ``node``; a failure is outcome 4."""
    return _event(
        EventCode.USER_AUTHENTICATION,
        (user, node),
        (),
        outcome,
        description,
        at,
        event_type=LOGIN if login else LOGOUT,
    )


def export(
    exporter: Participant,
    destination: Participant,
    objects: Sequence[AuditObject],
    *,
    others: Sequence[Participant] = (),
    outcome: Outcome = Outcome.SUCCESS,
    description: str = "",
    at: datetime | None = None,
) -> AuditEvent:
    """110106: ``objects`` left the site's control to ``destination`` (media, a folder,
    the federation's partners); ``others``: e.g. each partner site that holds a part."""
    return _event(
        EventCode.EXPORT, (exporter, destination), objects, outcome, description, at, others=others
    )


def import_(
    importer: Participant,
    source: Participant,
    objects: Sequence[AuditObject],
    *,
    destination: Participant | None = None,
    outcome: Outcome = Outcome.SUCCESS,
    description: str = "",
    at: datetime | None = None,
) -> AuditEvent:
    """110107: ``objects`` came into the site's control from ``source`` (a recovery from
    the federation), asked for by ``importer``, delivered to ``destination`` if given."""
    return _event(
        EventCode.IMPORT, (importer, source, destination), objects, outcome, description, at
    )


def study_deleted(
    requestor: Participant,
    application: Participant,
    studies: Sequence[AuditObject],
    *,
    outcome: Outcome = Outcome.SUCCESS,
    description: str = "",
    at: datetime | None = None,
) -> AuditEvent:
    """110105: ``requestor`` had ``application`` delete ``studies``."""
    return _event(
        EventCode.STUDY_DELETED, (requestor, application), studies, outcome, description, at
    )


# -- rendering -----------------------------------------------------------------------


def render(event: AuditEvent, source: AuditSource, *, include_uids: bool = False) -> bytes:
    """The event as one ``AuditMessage``, UTF-8 XML with its declaration.

    ``include_uids`` names studies by Study Instance UID as well as by record ID (see the
    module's docstring for why it is off by default).
    """
    root = ET.Element("AuditMessage")
    ident = _sub(
        root,
        "EventIdentification",
        EventActionCode=event.action.value,
        EventDateTime=_datetime(event.at),
        EventOutcomeIndicator=str(int(event.outcome)),
    )
    _code(ident, "EventID", event.event.value)
    for event_type in event.event_types:
        _code(ident, "EventTypeCode", event_type)
    if event.description:
        _sub(ident, "EventOutcomeDescription").text = _clean(event.description)
    for who in event.participants:
        _participant(root, who)
    audit_source = _sub(
        root,
        "AuditSourceIdentification",
        AuditEnterpriseSiteID=source.site_id,
        AuditSourceID=source.source_id,
    )
    _code(audit_source, "AuditSourceTypeCode", _AUDIT_SOURCE_APPLICATION)
    for thing in event.objects:
        _object(root, thing, include_uids)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _participant(root: ET.Element, who: Participant) -> None:
    attributes = {"UserID": who.user_id, "UserIsRequestor": "true" if who.requestor else "false"}
    if who.alternative_id:
        attributes["AlternativeUserID"] = who.alternative_id
    if who.user_name:
        attributes["UserName"] = who.user_name
    if who.network_address:
        attributes["NetworkAccessPointID"] = who.network_address
        attributes["NetworkAccessPointTypeCode"] = "2" if _is_ip(who.network_address) else "1"
    element = _sub(root, "ActiveParticipant", **attributes)
    if who.role is not None:
        _code(element, "RoleIDCode", who.role.value)


def _object(root: ET.Element, thing: AuditObject, include_uids: bool) -> None:
    if isinstance(thing, QueryObject):
        element = _sub(
            root,
            "ParticipantObjectIdentification",
            ParticipantObjectID=thing.sop_class_uid,
            ParticipantObjectTypeCode="2",  # system object
            ParticipantObjectTypeCodeRole="24",  # query
        )
        _code(element, "ParticipantObjectIDTypeCode", Code(thing.sop_class_uid, "DCM", "Query"))
        # The query "as sent" would carry the values (names, IDs): only its shape is kept.
        shape = f"QueryRetrieveLevel={thing.level}; keys={','.join(thing.keywords)}"
        _sub(element, "ParticipantObjectQuery").text = _b64(shape)
        return
    if isinstance(thing, StudyCount):
        element = _sub(
            root,
            "ParticipantObjectIdentification",
            ParticipantObjectID="count",
            ParticipantObjectTypeCode="2",
            ParticipantObjectTypeCodeRole="3",  # report (a study, as PS3.15 A.5.3 names it)
        )
        _code(element, "ParticipantObjectIDTypeCode", _STUDY_COUNT)
        if thing.studies is not None:
            _detail(element, "NumberOfStudies", str(thing.studies))
        if thing.instances is not None:
            _detail(element, "NumberOfInstances", str(thing.instances))
        return
    named = include_uids and bool(thing.uid)
    element = _sub(
        root,
        "ParticipantObjectIdentification",
        ParticipantObjectID=thing.uid if named else thing.record_id,
        ParticipantObjectTypeCode="2",
        ParticipantObjectTypeCodeRole="3",
    )
    _code(element, "ParticipantObjectIDTypeCode", _STUDY_UID if named else _STUDY_RECORD_ID)
    if named:
        _detail(element, "StudyRecordID", thing.record_id)
    if thing.instances is not None:
        _detail(element, "NumberOfInstances", str(thing.instances))


def _sub(parent: ET.Element, tag: str, **attributes: str) -> ET.Element:
    return ET.SubElement(parent, tag, {k: _clean(v) for k, v in attributes.items()})


def _code(parent: ET.Element, tag: str, code: Code) -> None:
    attributes = {"csd-code": code.code, "codeSystemName": code.scheme}
    _sub(parent, tag, **attributes, originalText=code.meaning)


def _detail(parent: ET.Element, kind: str, value: str) -> None:
    _sub(parent, "ParticipantObjectDetail", type=kind, value=_b64(value))


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8", "replace")).decode("ascii")


def _clean(text: str) -> str:
    return _XML_INVALID.sub("\ufffd", text)


def _datetime(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("audit event times must carry a time zone")
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    return True
