"""Query/Retrieve SCP over the catalog: C-FIND, C-MOVE and C-GET, stored bytes sent as they are.

pynetdicom's C-MOVE and C-GET handlers must yield pydicom ``Dataset`` objects, which it then
encodes again for the C-STORE sub-operation: a decode and re-encode of every image, slow
(Orthanc serves a 300-image C-MOVE in 0.6 s, a naive pynetdicom handler in 2.6 s) and not
byte-preserving for odd files. Here the handlers yield a :class:`StoredInstance`, a
``Dataset`` that carries only the two UIDs and the stored file's location, and
:func:`install_raw_retrieve` makes ``Association.send_c_store`` send such an object from its
file through :mod:`sender`: the dataset bytes go from disk to the socket exactly as they
were received, in their own transfer syntax, without pynetdicom's per-PDU machinery.
``tests/dicom/test_qr.py`` proves it with pydicom's odd test files and fails if pynetdicom
stops calling the wrapped method.

The C-MOVE sub-association proposes exactly the SOP classes and transfer syntaxes of the
instances it sends, never a static list (pynetdicom refuses more than 128 contexts).

Instances the catalog lists but this node's disk does not hold (pruned under ``[backup]
keep_local``, or never here on a node rebuilt with ``meshpacs node restore-catalog``) are
asked of an optional :class:`MissingInstances` hook, which the node wires to the mesh.
The instances on disk go first; the hook then hands back the others in batches, one per
bundle gathered, as an async generator driven from the handler's thread on the node's
loop, so the first bundle's instances are sent while later ones are still gathered. Each
path it hands back stays readable until the generator is closed (the handler closes it
when the retrieve ends, however it ends). An instance the hook cannot bring back fails
its sub-operation with a PHI-free reason (the final status then says some failed). The
dicom room knows nothing of the mesh: the hook is a Protocol defined here.

C-FIND arrives on two paths: pynetdicom's (:meth:`QueryRetrieveService.handle_find`) and
the node's own for query-only associations (:mod:`find_receiver`). Both go through
:meth:`QueryRetrieveService.find` (identifier to query, answers, the audit trail's Query
event) and encode answers as :func:`encode_answer_identifier` does, the bytes pydicom
writes for :func:`_answer_dataset`'s dataset (:mod:`answer_codec`, pydicom when it cannot).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import _config, build_context, dsutils, service_class
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from meshpacs.dicom.answer_codec import UTF8, encode_answer
from meshpacs.dicom.auditing import (
    Retrieve,
    record_find,
    record_retrieve_begun,
    record_retrieve_done,
)
from meshpacs.dicom.reactor import install_counting_checkpoint
from meshpacs.dicom.sender import install_send_lock, send_stored
from meshpacs.dicom.storage import InstanceStore
from meshpacs.errors import InvalidQuery, LimitExceeded, MeshError
from meshpacs.metadata.catalog import Catalog
from meshpacs.metadata.records import FindQuery, InstanceLocation
from meshpacs.trail import TrailWriter
from meshpacs.trail.messages import Outcome

__all__ = [
    "FIND_MODELS",
    "GET_MODELS",
    "MOVE_MODELS",
    "FindAnswer",
    "FindCaller",
    "Found",
    "InstanceUnavailable",
    "MissingInstances",
    "QueryRetrieveService",
    "Recalled",
    "RetrieveRefused",
    "StoredInstance",
    "encode_answer_identifier",
    "install_fast_find_answers",
    "install_raw_retrieve",
]

LOG = logging.getLogger("meshpacs.qr")
T = TypeVar("T")

FIND_MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.1": "PATIENT",  # Patient Root Q/R Information Model - FIND
    "1.2.840.10008.5.1.4.1.2.2.1": "STUDY",  # Study Root Q/R Information Model - FIND
}
MOVE_MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.2": "PATIENT",
    "1.2.840.10008.5.1.4.1.2.2.2": "STUDY",
}
GET_MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.3": "PATIENT",
    "1.2.840.10008.5.1.4.1.2.2.3": "STUDY",
}
_MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are odd numbers 1..255

# PS3.4 C.4.1.1.4 and C.4.2.1.5 statuses the handlers answer.
PENDING = 0xFF00
CANCEL = 0xFE00
DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_MISMATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
OUT_OF_RESOURCES = 0xA700  # a query value or UID list over its bound


class StoredInstance(Dataset):
    """A stored instance standing in for its dataset: pynetdicom sends it from the file.

    ``unavailable`` (a PHI-free reason) instead of a file makes its sub-operation fail.
    ``sent`` is told each sub-operation's end: (the instance's bytes, whether the peer
    stored it), for the node's restore counts.
    """

    def __init__(
        self,
        path: Path | None,
        location: InstanceLocation,
        unavailable: str = "",
        sent: SentHook | None = None,
    ) -> None:
        super().__init__()
        self.meshpacs_sent = sent
        self.SOPClassUID = location.sop_class_uid
        self.SOPInstanceUID = location.sop_instance_uid
        self.meshpacs_path = path
        self.meshpacs_location = location
        self.meshpacs_unavailable = unavailable if path is None else ""
        # The C-STORE-RSP status once sent (None: not sent, or no answer), for the trail.
        self.meshpacs_status: int | None = None


@dataclass(frozen=True)
class Recalled:
    """One batch from a :class:`MissingInstances` hook, keyed by the instances' SHA-256.

    ``paths``: files holding exactly those bytes, readable until the hook's generator is
    closed. ``failed``: why the others could not be brought back (no PHI: the reason goes
    to the log and the peer's failure count).
    """

    paths: Mapping[bytes, Path] = field(default_factory=dict)
    failed: Mapping[bytes, str] = field(default_factory=dict)


class MissingInstances(Protocol):
    """Brings back instances the catalog lists but this node's disk does not hold."""

    def recall(self, missing: Sequence[InstanceLocation]) -> AsyncGenerator[Recalled, None]:
        """Batches until every one of ``missing`` was in ``paths`` or ``failed`` once.

        Runs on the node's event loop; closed (``aclose``) by the caller when done.
        """
        ...


_MARK = "_meshpacs_raw_retrieve"
SentHook = Callable[[int, bool], None]


def _tell_sent(dataset: StoredInstance, status: Dataset | None) -> None:
    if dataset.meshpacs_sent is None:
        return
    code = int(getattr(status, "Status", 0xC000)) if status is not None else 0xC000
    # Success, or a warning (0xB000..): the peer stored the instance.
    dataset.meshpacs_sent(dataset.meshpacs_location.size, code == 0 or code >> 12 == 0xB)


def install_raw_retrieve() -> None:
    """Make ``send_c_store`` send a :class:`StoredInstance` from its file, byte for byte."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    install_counting_checkpoint()
    install_send_lock()
    if getattr(Association.send_c_store, _MARK, False):
        return
    original = Association.send_c_store

    def send_c_store(
        self: Association,
        dataset: Any,
        msg_id: int = 1,
        priority: int = 2,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ) -> Dataset:
        if not isinstance(dataset, StoredInstance):
            return original(self, dataset, msg_id, priority, originator_aet, originator_id)
        location = dataset.meshpacs_location
        if dataset.meshpacs_path is None:
            # pynetdicom counts the exception as a failed sub-operation and logs its text.
            _tell_sent(dataset, None)
            raise InstanceUnavailable(dataset.meshpacs_unavailable or "not available")
        status = send_stored(
            self,
            dataset.meshpacs_path,
            sop_class_uid=location.sop_class_uid,
            sop_instance_uid=location.sop_instance_uid,
            transfer_syntax_uid=location.transfer_syntax_uid,
            msg_id=msg_id,
            priority=priority,
            originator_aet=originator_aet,
            originator_id=originator_id,
        )
        _tell_sent(dataset, status)
        _note_status(dataset, status)
        return status

    setattr(send_c_store, _MARK, True)
    Association.send_c_store = send_c_store  # type: ignore[method-assign]


@dataclass(frozen=True)
class FindCaller:
    """Who asked a C-FIND, for its audit event and the log."""

    calling_ae: str
    address: str
    called_ae: str


@dataclass(frozen=True)
class Found:
    """A C-FIND's result: a failure status, or the answers (then each goes Pending)."""

    failure: int | None
    identifier: Dataset = field(default_factory=Dataset)
    answers: Sequence[dict[str, str]] = ()


class QueryRetrieveService:
    """C-FIND, C-MOVE and C-GET handlers for pynetdicom, answering from the catalog."""

    def __init__(
        self,
        catalog: Catalog,
        store: InstanceStore,
        loop: asyncio.AbstractEventLoop,
        destinations: Mapping[str, tuple[str, int]],
        *,
        timeout: float = 60.0,
        missing: MissingInstances | None = None,
        recall_timeout: float = 1800.0,
        trail: TrailWriter | None = None,
    ) -> None:
        self._catalog = catalog
        self._store = store
        self._loop = loop
        self._destinations = {k.strip(): v for k, v in destinations.items()}
        self._timeout = timeout
        # Set by the node once its mesh runs (the AE starts first); read per retrieve.
        self.missing = missing
        # How long one batch from the hook may take; the hook bounds its own work tighter.
        self._recall_timeout = recall_timeout
        # Each C-FIND is recorded there as an ATNA Query event (see dicom.auditing).
        self.trail = trail
        # Set by the node: told each C-MOVE/C-GET sub-operation's end (its restore counts).
        self.sent: SentHook | None = None

    def _call(self, coroutine_factory: Callable[[], Any], timeout: float | None = None) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine_factory(), self._loop)
        try:
            return future.result(self._timeout if timeout is None else timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # the coroutine stops too, instead of running on unseen
            raise

    # -- C-FIND ----------------------------------------------------------------------

    def handle_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        """EVT_C_FIND: :meth:`find`, each answer as a dataset pynetdicom encodes."""
        found = self.find(
            str(event.request.AffectedSOPClassUID),
            lambda: event.identifier,
            FindCaller(
                calling_ae=_calling(event),
                address=str(event.assoc.requestor.address),
                called_ae=str(event.assoc.acceptor.ae_title).strip(),
            ),
        )
        if found.failure is not None:
            yield found.failure, None
            return
        for answer in found.answers:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, _answer_dataset(answer, found.identifier)

    def find(
        self, sop_class_uid: str, identifier: Callable[[], Dataset], caller: FindCaller
    ) -> Found:
        """One C-FIND, whichever path received it: the query, its answers, its audit event.

        ``identifier`` decodes the request's identifier (pydicom decodes lazily, so a
        malformed one may only fail when read: that is a refusal, like a bad key).
        """
        root = FIND_MODELS.get(sop_class_uid)
        asked: dict[str, Any] = {}
        try:
            decoded = identifier()
            asked.update(level=_level(decoded), keywords=_keys(decoded))
            query = FindQuery(root or "", asked["level"], asked["keywords"])  # type: ignore[arg-type]
            answers: list[dict[str, str]] = self._call(lambda: self._catalog.find(query))
        except LimitExceeded as exc:
            LOG.warning("C-FIND refused: %s", exc)
            self._audit_find(caller, sop_class_uid, asked, Outcome.MINOR_FAILURE, f"refused: {exc}")
            return Found(OUT_OF_RESOURCES)
        except (InvalidQuery, ValueError) as exc:
            LOG.warning("C-FIND refused: %s", exc)
            self._audit_find(
                caller, sop_class_uid, asked, Outcome.MINOR_FAILURE, f"refused: {_safe(exc)}"
            )
            return Found(IDENTIFIER_MISMATCH)
        except Exception as exc:
            LOG.error("C-FIND failed: %s", _safe(exc))
            self._audit_find(
                caller, sop_class_uid, asked, Outcome.SERIOUS_FAILURE, f"failed: {_safe(exc)}"
            )
            return Found(UNABLE_TO_PROCESS)
        LOG.info("C-FIND from %s: %d matches", caller.calling_ae, len(answers))
        self._audit_find(caller, sop_class_uid, asked, Outcome.SUCCESS, "")
        return Found(None, decoded, answers)

    def encode_answer(
        self, found: Found, answer: Mapping[str, str], *, implicit: bool, little_endian: bool
    ) -> bytes | None:
        """One answer's identifier as :meth:`handle_find`'s dataset would be encoded."""
        return encode_answer_identifier(
            answer, found.identifier, implicit=implicit, little_endian=little_endian
        )

    def _audit_find(
        self,
        caller: FindCaller,
        sop_class_uid: str,
        asked: Mapping[str, Any],
        outcome: Outcome,
        description: str,
    ) -> None:
        if self.trail is None:
            return
        record_find(
            self.trail,
            calling_ae=caller.calling_ae,
            address=caller.address,
            called_ae=caller.called_ae,
            sop_class_uid=sop_class_uid,
            level=str(asked.get("level", "")),
            keywords=asked.get("keywords", {}).keys(),
            outcome=outcome,
            description=description,
        )

    # -- C-MOVE ----------------------------------------------------------------------

    def handle_move(self, event: Any) -> Iterator[Any]:
        destination = str(event.move_destination).strip()
        address = self._destinations.get(destination)
        if address is None:
            LOG.warning("C-MOVE from %s to unknown destination %s refused",
                        _calling(event), destination)  # fmt: skip
            refused = self._retrieve(event, "C-MOVE", destination, "", 0)
            self._audit_refused(refused, "unknown move destination")
            yield None, None
            return
        retrieve = self._retrieve(event, "C-MOVE", destination, address[0], 0)
        located = self._audited_locate(event, retrieve)
        retrieve = replace(retrieve, instances=len(located))
        contexts = _contexts_for(located)
        record_retrieve_begun(self.trail, retrieve)
        tally = _Tally(retrieve)
        try:
            yield address[0], address[1], {"contexts": contexts}
            yield len(located)
            for item in self._sub_operations(event, located, "C-MOVE"):
                tally.see(item)
                yield item
        finally:
            # Also when pynetdicom drops the generator early (destination unreachable,
            # association gone): every sub-operation it ran has its status by now.
            tally.record(self.trail)

    # -- C-GET -----------------------------------------------------------------------

    def handle_get(self, event: Any) -> Iterator[Any]:
        retrieve = self._retrieve(
            event, "C-GET", _calling(event), str(event.assoc.requestor.address), 0
        )
        located = self._audited_locate(event, retrieve)
        retrieve = replace(retrieve, instances=len(located))
        record_retrieve_begun(self.trail, retrieve)
        tally = _Tally(retrieve)
        try:
            yield len(located)
            for item in self._sub_operations(event, located, "C-GET"):
                tally.see(item)
                yield item
        finally:
            tally.record(self.trail)

    # -- auditing retrieves ------------------------------------------------------------

    def _retrieve(
        self, event: Any, what: str, destination: str, address: str, instances: int
    ) -> Retrieve:
        return Retrieve(
            what=what,
            calling_ae=_calling(event),
            address=str(event.assoc.requestor.address),
            called_ae=str(event.assoc.acceptor.ae_title).strip(),
            destination_ae=destination,
            destination_address=address,
            instances=instances,
        )

    def _audit_refused(self, retrieve: Retrieve, why: str) -> None:
        record_retrieve_begun(
            self.trail,
            retrieve,
            outcome=Outcome.SERIOUS_FAILURE,
            description=f"{retrieve.what} refused: {why}",
        )

    def _audited_locate(self, event: Any, retrieve: Retrieve) -> list[InstanceLocation]:
        try:
            return self._locate(event)
        except RetrieveRefused:
            # The reason stays in the log: a ValueError's text may quote the identifier.
            self._audit_refused(retrieve, "the identifier could not be resolved")
            raise

    # -- shared ----------------------------------------------------------------------

    def _locate(self, event: Any) -> list[InstanceLocation]:
        """The instances an identifier names.

        pynetdicom gives a retrieve handler no way to answer a failure status before the
        sub-operation count, so a bad identifier raises here and pynetdicom answers with
        a failure (0xC5xx, "unable to process") and logs that the handler failed.
        """
        try:
            identifier = event.identifier
            level = _level(identifier)
            uids = _keys(identifier)
            found: list[InstanceLocation] = self._call(lambda: self._catalog.locate(level, uids))
        except (InvalidQuery, LimitExceeded, ValueError) as exc:
            LOG.warning("retrieve from %s refused: %s", _calling(event), exc)
            raise RetrieveRefused(str(exc)) from None
        except Exception as exc:
            LOG.error("retrieve from %s failed: %s", _calling(event), _safe(exc))
            raise RetrieveRefused(_safe(exc)) from None
        return found

    def _sub_operations(
        self, event: Any, located: list[InstanceLocation], what: str
    ) -> Iterator[tuple[int, Dataset | None]]:
        LOG.info("%s from %s: %d instances", what, _calling(event), len(located))
        missing: list[InstanceLocation] = []
        for location in located:
            if event.is_cancelled:
                yield CANCEL, None
                return
            path = self._store.path_for(location.sha256)
            if path.exists():
                yield PENDING, StoredInstance(path, location, sent=self.sent)
            else:
                missing.append(location)
        if not missing:
            return
        hook = self.missing
        LOG.info("%s: %d of %d instances are not on this node's disk; %s", what, len(missing),
                 len(located), "asking the mesh" if hook else "they fail")  # fmt: skip
        if hook is None:
            # Pruned under [backup] keep_local (or lost), and no mesh to ask: each fails
            # its sub-operation and the peer gets 0xB000.
            for location in missing:
                yield (
                    PENDING,
                    StoredInstance(None, location, "not held on this node's disk", self.sent),
                )
            return
        yield from self._recalled(event, hook, missing, what)

    def _recalled(
        self, event: Any, hook: MissingInstances, missing: list[InstanceLocation], what: str
    ) -> Iterator[tuple[int, Dataset | None]]:
        """Send what the hook brings back, batch by batch; fail what it cannot."""
        waiting: dict[bytes, list[InstanceLocation]] = {}
        for location in missing:
            waiting.setdefault(location.sha256, []).append(location)
        batches = hook.recall(missing)
        try:
            while waiting:
                try:
                    batch: Recalled | None = self._call(
                        lambda: _next_batch(batches), self._recall_timeout
                    )
                except Exception as exc:  # the hook's bug or timeout must not end the retrieve
                    LOG.error("%s: bringing instances back failed: %s", what, _safe(exc))
                    break
                if batch is None:
                    break
                for sha256, path in batch.paths.items():
                    for location in waiting.pop(sha256, []):
                        if event.is_cancelled:
                            yield CANCEL, None
                            return
                        yield PENDING, StoredInstance(path, location, sent=self.sent)
                for sha256, reason in batch.failed.items():
                    for location in waiting.pop(sha256, []):
                        yield PENDING, StoredInstance(None, location, reason, self.sent)
            for locations in waiting.values():
                for location in locations:
                    yield (
                        PENDING,
                        StoredInstance(None, location, "the mesh did not bring it back", self.sent),
                    )
        finally:
            with contextlib.suppress(Exception):
                self._call(lambda: _close(batches))


class _Tally:
    """What one retrieve's sub-operations did, read from the instances it offered."""

    def __init__(self, retrieve: Retrieve) -> None:
        self.retrieve = retrieve
        self.offered: list[StoredInstance] = []
        self.cancelled = False

    def see(self, item: tuple[int, Dataset | None]) -> None:
        status, dataset = item
        if status == CANCEL:
            self.cancelled = True
        elif isinstance(dataset, StoredInstance):
            self.offered.append(dataset)

    def record(self, trail: TrailWriter | None) -> None:
        sent = sum(1 for d in self.offered if _delivered(d.meshpacs_status))
        # Not offered at all (the destination was unreachable, the peer left) is failed
        # too, unless the peer cancelled them.
        failed = (len(self.offered) if self.cancelled else self.retrieve.instances) - sent
        record_retrieve_done(trail, self.retrieve, sent=sent, failed=failed,
                             cancelled=self.cancelled)  # fmt: skip


def _delivered(status: int | None) -> bool:
    """Success, or a warning (PS3.4 B.2.3: stored, with coercion or the like)."""
    return status is not None and (status == 0 or 0xB000 <= status <= 0xBFFF)


def _note_status(dataset: StoredInstance, status: Dataset) -> None:
    answered = getattr(status, "Status", None)
    dataset.meshpacs_status = int(answered) if answered is not None else None


class RetrieveRefused(MeshError):
    """A C-MOVE or C-GET identifier the catalog cannot resolve; the peer gets a failure."""


class InstanceUnavailable(MeshError):
    """An instance to send is neither on this disk nor brought back: its sub-operation fails."""


# run_coroutine_threadsafe takes coroutines; anext() and aclose() give bare awaitables.
async def _next_batch(batches: AsyncGenerator[Recalled, None]) -> Recalled | None:
    return await anext(batches, None)


async def _close(batches: AsyncGenerator[Recalled, None]) -> None:
    await batches.aclose()


def _calling(event: Any) -> str:
    return str(event.assoc.requestor.ae_title).strip()


def _safe(exc: BaseException) -> str:
    # Our own errors carry no PHI by design; others might quote values, so name the type.
    return str(exc) if isinstance(exc, MeshError) else type(exc).__name__


def _level(identifier: Dataset) -> str:
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if not level:
        raise InvalidQuery("QueryRetrieveLevel is missing")
    return level


def _keys(identifier: Dataset) -> dict[str, str]:
    """Keyword -> value as a DICOM string, for every non-sequence element but the level."""
    keys: dict[str, str] = {}
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            continue
        if element.VR == "SQ":
            continue  # sequence matching is not supported; the key is ignored
        value = element.value
        if value is None:
            keys[keyword] = ""
        elif isinstance(value, list | tuple | MultiValue):
            keys[keyword] = "\\".join(str(v) for v in value)
        else:
            keys[keyword] = str(value)
    return keys


def _answer_dataset(answer: Mapping[str, str], identifier: Dataset) -> Dataset:
    ds = FindAnswer(answer, identifier)
    if any(not v.isascii() for v in answer.values()):
        ds.SpecificCharacterSet = UTF8  # values come back as Unicode text
    elif "SpecificCharacterSet" in identifier:
        ds.SpecificCharacterSet = identifier.SpecificCharacterSet
    for keyword, value in answer.items():
        setattr(ds, keyword, value.split("\\") if "\\" in value else value)
    return ds


def _answer_charset(answer: Mapping[str, str], identifier: Dataset) -> str | None:
    """The Specific Character Set :func:`_answer_dataset` gives the answer, as one string."""
    if any(not v.isascii() for v in answer.values()):
        return UTF8
    if "SpecificCharacterSet" not in identifier:
        return None
    value = identifier.SpecificCharacterSet
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def encode_answer_identifier(
    answer: Mapping[str, str], identifier: Dataset, *, implicit: bool, little_endian: bool = True
) -> bytes | None:
    """The bytes of the answer's identifier, as pydicom writes :func:`_answer_dataset`'s.

    :func:`~meshpacs.dicom.answer_codec.encode_answer` when it can, else pydicom; None
    when pydicom cannot encode it either (the peer is then answered a failure).
    """
    if little_endian:
        fast = encode_answer(answer, _answer_charset(answer, identifier), implicit=implicit)
        if fast is not None:
            return fast
    return dsutils.encode(_answer_dataset(answer, identifier), implicit, little_endian)


class FindAnswer(Dataset):
    """A C-FIND answer's dataset that remembers the answer, so that the hook installed by
    :func:`install_fast_find_answers` can encode it without pydicom's writer."""

    def __init__(self, answer: Mapping[str, str], identifier: Dataset) -> None:
        super().__init__()
        self.meshpacs_answer = answer
        self.meshpacs_identifier = identifier


_FAST_MARK = "_meshpacs_fast_find_answers"


def install_fast_find_answers() -> None:
    """Make pynetdicom's C-FIND SCP encode a :class:`FindAnswer` with :mod:`answer_codec`.

    pynetdicom's service classes call the ``encode`` they imported from ``dsutils``; the
    wrapper takes only our answers in Little Endian and hands everything else on.
    """
    current: Callable[..., bytes | None] = getattr(service_class, "encode")  # noqa: B009
    if getattr(current, _FAST_MARK, False):
        return

    def encode(
        ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
    ) -> bytes | None:
        if isinstance(ds, FindAnswer) and is_little_endian and not deflated:
            fast = encode_answer(
                ds.meshpacs_answer,
                _answer_charset(ds.meshpacs_answer, ds.meshpacs_identifier),
                implicit=is_implicit_vr,
            )
            if fast is not None:
                return fast
        return current(ds, is_implicit_vr, is_little_endian, deflated)

    setattr(encode, _FAST_MARK, True)
    setattr(service_class, "encode", encode)  # noqa: B010


def _contexts_for(located: list[InstanceLocation]) -> list[PresentationContext]:
    """One context per (SOP class, transfer syntax) present: each instance goes as stored.

    A context offering several syntaxes would be accepted with one of them, and the
    instances in the others could then only be sent by transcoding them.
    """
    pairs = list(dict.fromkeys((i.sop_class_uid, i.transfer_syntax_uid) for i in located))
    if len(pairs) > _MAX_CONTEXTS:
        LOG.warning("retrieve spans %d SOP class and syntax pairs; only %d fit one association",
                    len(pairs), _MAX_CONTEXTS)  # fmt: skip
    return [build_context(sop_class, [syntax]) for sop_class, syntax in pairs[:_MAX_CONTEXTS]]
