"""C-FIND SCU: which of these SOP instances does a PACS hold already?

Recovery asks this after an interruption, about the instances it had sent (or was about to
send) when it stopped without learning the answer: one held is journaled as delivered and
not sent again, one the PACS answered it does not hold is sent. It is one thin question, at
IMAGE level of the Study Root model::

    QueryRetrieveLevel = IMAGE
    StudyInstanceUID   = <the study>        (universal, i.e. empty, when it is unknown)
    SOPInstanceUID     = uid1\\uid2\\...     list of UID matching (PS3.4 C.2.2.2.2), at
                                             most ``per_query`` UIDs per request

and each match's SOPInstanceUID is read back. The answer has three parts, because only a
query that ended with Success proves absence: :attr:`HeldInstances.held` (the PACS has
them: any match counts, even from a query that then failed), :attr:`HeldInstances.absent`
(asked in a query that completed with Success and not matched) and, for everything else,
the reason it is unknown (:attr:`HeldInstances.detail`): the association was rejected, the
PACS accepts no Study Root C-FIND context, a failure or cancel status, silence past
``timeout``, an answer with more matches than can be true. The first such failure ends the
questions: what was not asked is unknown too.

Bounded: at most :data:`MAX_UIDS` UIDs per call, ``per_query`` per request, ``2 x per_query
+ 8`` matches and about ``timeout`` seconds per request (past either, the association is
aborted). No TLS. Log lines give counts and statuses, never a UID; pynetdicom's per-message
logging (which prints identifiers) is kept at WARNING.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_context

from meshpacs.dicom.nodelay import install_tcp_nodelay
from meshpacs.dicom.reactor import install_counting_checkpoint, reactor_held
from meshpacs.dicom.scu import Target
from meshpacs.errors import LimitExceeded

__all__ = [
    "MAX_UIDS",
    "MAX_UIDS_PER_QUERY",
    "STUDY_ROOT_FIND",
    "HeldInstances",
    "find_held_instances",
]

LOG = logging.getLogger("meshpacs.scu")

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
"""Study Root Query/Retrieve Information Model - FIND."""
MAX_UIDS_PER_QUERY = 200
"""UIDs per request: about 13 KB of identifier, well inside any PACS's PDU and parser."""
MAX_UIDS = 100_000

_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_PENDING = (0xFF00, 0xFF01)
_SUCCESS = 0x0000


@dataclass(frozen=True)
class HeldInstances:
    """What the PACS said about the SOP Instance UIDs asked.

    ``held``: it holds them. ``absent``: it answered, completely, that it does not. Any UID
    asked and in neither set is unknown, and ``detail`` says why (in words, without UIDs).
    ``unreachable``: no association could be made at all (nobody listening, no route, no
    answer in time): unlike a refusal, asking again later may work.
    """

    held: frozenset[str] = field(default_factory=frozenset)
    absent: frozenset[str] = field(default_factory=frozenset)
    detail: str = ""
    unreachable: bool = False

    def unknown(self, asked: Sequence[str]) -> list[str]:
        """The UIDs among ``asked`` the PACS gave no certain answer about."""
        return [u for u in asked if u not in self.held and u not in self.absent]


def find_held_instances(
    target: Target,
    wanted: Mapping[str, Sequence[str]],
    *,
    per_query: int = MAX_UIDS_PER_QUERY,
    timeout: float = 20.0,
) -> HeldInstances:
    """Ask ``target`` which of ``wanted`` (study UID, or "" if unknown -> SOP Instance UIDs)
    it holds, over one association. Never raises for the PACS's behaviour.

    A UID that is not a well-formed DICOM UID is not put in a query (it could break list
    matching): it stays unknown. Raises :class:`LimitExceeded` over :data:`MAX_UIDS` UIDs.
    """
    if isinstance(per_query, bool) or not 1 <= per_query <= MAX_UIDS_PER_QUERY:
        raise ValueError(f"per_query must be in [1, {MAX_UIDS_PER_QUERY}]")
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    total = sum(len(uids) for uids in wanted.values())
    if total > MAX_UIDS:
        raise LimitExceeded(f"a C-FIND for {total} instances (at most {MAX_UIDS} per call)")
    queries = list(_queries(wanted, per_query))
    if not queries:
        return HeldInstances(detail="" if not total else "no well-formed UID to ask about")
    asking = _Asking(target, timeout)
    asking.run(queries)
    skipped = total - sum(len(uids) for _, uids in queries)
    detail = asking.detail or (f"{skipped} UID(s) not well-formed, not asked" if skipped else "")
    return HeldInstances(
        frozenset(asking.held), frozenset(asking.absent), detail, asking.unreachable
    )


# -- internals ---------------------------------------------------------------------------


def _queries(
    wanted: Mapping[str, Sequence[str]], per_query: int
) -> Iterator[tuple[str, list[str]]]:
    for study_uid, uids in wanted.items():
        if study_uid and not _well_formed(study_uid):
            continue
        good = list(dict.fromkeys(u for u in uids if _well_formed(u)))
        for start in range(0, len(good), per_query):
            yield study_uid, good[start : start + per_query]


def _well_formed(uid: str) -> bool:
    return len(uid) <= 64 and _UID.fullmatch(uid) is not None


def _identifier(study_uid: str, uids: list[str]) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study_uid
    query.SOPInstanceUID = uids if len(uids) > 1 else uids[0]
    return query


class _Asking:
    """One association, the queries in turn; the first failure leaves the rest unknown."""

    def __init__(self, target: Target, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self.held: set[str] = set()
        self.absent: set[str] = set()
        self.detail = ""
        self.unreachable = False

    def run(self, queries: list[tuple[str, list[str]]]) -> None:
        _prepare_pynetdicom()
        ae = AE(ae_title=self.target.calling_ae_title)
        ae.connection_timeout = ae.acse_timeout = self.timeout
        ae.dimse_timeout = ae.network_timeout = self.timeout
        context = build_context(STUDY_ROOT_FIND)
        t = self.target
        assoc = ae.associate(t.host, t.port, contexts=[context], ae_title=t.ae_title)
        if not assoc.is_established:
            self.detail = _why_not(assoc, t)
            self.unreachable = assoc.acceptor.primitive is None
            return
        try:
            for study_uid, uids in queries:
                if not self._ask(assoc, study_uid, uids):
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        LOG.info("C-FIND to %s: %d held, %d absent%s", t.ae_title, len(self.held),
                 len(self.absent), f" ({self.detail})" if self.detail else "")  # fmt: skip

    def _ask(self, assoc: Any, study_uid: str, uids: list[str]) -> bool:
        """One request; true when it completed with Success (its non-matches are absent)."""
        deadline = time.monotonic() + self.timeout
        # pynetdicom's own pause before the request can let its reactor swallow a response
        # (meshpacs.dicom.reactor): a lost match would read as "absent".
        with reactor_held(assoc):
            return self._answers(assoc, study_uid, uids, deadline)

    def _answers(self, assoc: Any, study_uid: str, uids: list[str], deadline: float) -> bool:
        asked = set(uids)
        bound = 2 * len(uids) + 8
        matches = 0
        for status, identifier in assoc.send_c_find(_identifier(study_uid, uids), STUDY_ROOT_FIND):
            code = status.get("Status") if status is not None else None
            if code is None:
                self.detail = (f"no C-FIND answer from {self.target.ae_title} within "
                               f"{self.timeout:g} s, or the association was lost")  # fmt: skip
                return False
            code = int(code)
            if code in _PENDING:
                matches += 1
                if matches > bound or time.monotonic() > deadline:
                    assoc.abort()
                    self.detail = (f"{self.target.ae_title} answered more matches than asked "
                                   f"for, or took over {self.timeout:g} s")  # fmt: skip
                    return False
                found = str(identifier.get("SOPInstanceUID", "")) if identifier else ""
                if found in asked:
                    self.held.add(found)
                continue
            if code == _SUCCESS:
                self.absent.update(asked - self.held)
                return True
            self.detail = f"{self.target.ae_title} answered C-FIND with status 0x{code:04X}"
            return False
        self.detail = f"no final C-FIND status from {self.target.ae_title}"
        return False


def _why_not(assoc: Any, target: Target) -> str:
    """Why no C-FIND association, in words (no PHI)."""
    where = f"{target.ae_title} at {target.host}:{target.port}"
    primitive = assoc.acceptor.primitive
    if primitive is not None and primitive.result == 0x00 and not assoc.accepted_contexts:
        return f"{where} accepts no Study Root C-FIND"
    if assoc.is_rejected and primitive is not None:
        return (f"{where} rejected the C-FIND association ({primitive.result_str}, "
                f"{primitive.source_str}: {primitive.reason_str})")  # fmt: skip
    if primitive is None:
        return f"no association with {where} (connection refused, unreachable or timed out)"
    return f"{where} aborted the C-FIND association request"


def _prepare_pynetdicom() -> None:
    install_tcp_nodelay()
    install_counting_checkpoint()
    pynetdicom_log = logging.getLogger("pynetdicom")
    if pynetdicom_log.level == logging.NOTSET:
        # At INFO pynetdicom logs every DIMSE message, identifiers (UIDs) included.
        pynetdicom_log.setLevel(logging.WARNING)
