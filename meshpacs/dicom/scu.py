"""C-STORE SCU: deliver stored instances, byte for byte, into a (rebuilt) PACS.

Recovery restores Part 10 files and hands them here as :class:`Outgoing` items. Each is sent
from its file by :func:`meshpacs.dicom.sender.send_stored`: the dataset bytes go from disk to
the socket exactly as stored, in their own transfer syntax, never decoded nor transcoded. That
needs an accepted presentation context whose transfer syntax is exactly the file's, so every
association proposes one context per (SOP class, transfer syntax) pair present in what it
carries, and nothing else; pynetdicom refuses more than 128 requested contexts, so a share
spanning more pairs is sent over several successive associations.

:func:`send_instances` is synchronous and thread-based (call it through
``asyncio.to_thread``): the items are split into contiguous shares, one per parallel
association. When an association is lost (the peer aborts or crashes, a DIMSE timeout, no
valid response) the share re-associates and resumes with the instances not yet acknowledged.
Each instance may be retried ``max_retries`` times: the one in flight when an association
is lost, and every waiting one when an association cannot be established, is charged one
attempt; after that it is reported as failed. A response that never arrived may mean the
peer stored the instance anyway, so a retried instance can reach the PACS twice; PACSs take
a repeated SOP Instance UID as the same object.

Every instance gets one :class:`Delivery` in the result, in input order. Success and warning
statuses (0xB000 coercion, 0xB006 elements discarded, 0xB007 data set does not match SOP
class, and any other warning-class code) count as delivered; failures carry the peer's status.
Log lines and details name SOP classes, transfer syntaxes, statuses and the peer's address,
never an instance UID or anything from a dataset.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID
from pynetdicom import AE, _config, build_context
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

from meshpacs.dicom.nodelay import install_tcp_nodelay
from meshpacs.dicom.reactor import install_counting_checkpoint
from meshpacs.dicom.sender import install_send_lock, send_stored

__all__ = [
    "MAX_CONTEXTS",
    "Delivery",
    "Outgoing",
    "Target",
    "context_refused_detail",
    "echo",
    "send_instances",
]

LOG = logging.getLogger("meshpacs.scu")

MAX_CONTEXTS = 128
"""Requested presentation contexts per association (PS3.8: odd context IDs 1..255)."""

_MAX_BACKOFF = 30.0
_MAX_MESSAGE_ID = 0xFFFF


@dataclass(frozen=True)
class Outgoing:
    """One stored instance to deliver: its Part 10 file, sent as it is, and its identity."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class Target:
    """The receiving AE (``ae_title`` at ``host:port``) and the title we call it with."""

    ae_title: str
    host: str
    port: int
    calling_ae_title: str

    def __post_init__(self) -> None:
        for name in ("ae_title", "calling_ae_title"):
            _check_ae_title(name, getattr(self, name))
        if not self.host:
            raise ValueError("host must not be empty")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError("port must be an integer")
        if not 1 <= self.port <= 65535:
            raise ValueError("port must be in [1, 65535]")


@dataclass(frozen=True)
class Delivery:
    """What became of one instance.

    ``status`` is the peer's C-STORE status, or ``None`` when no response was received (the
    instance was never sent, or every attempt lost its association). ``ok`` is true for
    success and warning statuses: the PACS holds the instance. ``detail`` says what happened
    in words, without PHI or instance UIDs.
    """

    item: Outgoing
    status: int | None
    ok: bool
    detail: str


def context_refused_detail(sop_class_uid: str, transfer_syntax_uid: str) -> str:
    """The detail of an instance whose (SOP class, transfer syntax) the peer refused."""
    return f"peer does not accept {_name(sop_class_uid)} in {_name(transfer_syntax_uid)}"


def send_instances(
    items: Sequence[Outgoing],
    target: Target,
    *,
    associations: int = 1,
    max_retries: int = 2,
    retry_delay: float = 1.0,
    connect_timeout: float = 10.0,
    acse_timeout: float = 30.0,
    dimse_timeout: float = 60.0,
    network_timeout: float = 60.0,
    progress: Callable[[Delivery], None] | None = None,
) -> list[Delivery]:
    """C-STORE every item to ``target``; one :class:`Delivery` per item, in input order.

    ``associations`` parallel associations (threads) each carry a contiguous share of the
    items. A lost association is re-established after ``retry_delay`` seconds (growing
    linearly with consecutive failures, at most 30 s) and resumes where it stopped.
    ``progress`` is called once per instance as soon as its outcome is known, from the
    worker threads, one call at a time (calls are serialised, so it needs no lock of its
    own); an exception it raises is logged and ignored. Never raises for a peer's
    behaviour: a peer that is down gives failed deliveries.
    """
    if isinstance(associations, bool) or not isinstance(associations, int) or associations < 1:
        raise ValueError("associations must be a positive integer")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError("max_retries must be a non-negative integer")
    if retry_delay < 0:
        raise ValueError("retry_delay must not be negative")
    _prepare_pynetdicom()
    items = list(items)
    if not items:
        return []
    settings = _Settings(
        target=target,
        max_retries=max_retries,
        retry_delay=retry_delay,
        connect_timeout=connect_timeout,
        acse_timeout=acse_timeout,
        dimse_timeout=dimse_timeout,
        network_timeout=network_timeout,
    )
    run = _Run(items, progress)
    shares = _split(len(items), min(associations, len(items)))
    started = time.monotonic()
    LOG.info("C-STORE to %s at %s:%d: %d instances over %d association(s)",
             target.ae_title, target.host, target.port, len(items), len(shares))  # fmt: skip
    if len(shares) == 1:
        _Worker(run, settings, shares[0], "1/1").run()
    else:
        threads = [
            threading.Thread(
                target=_Worker(run, settings, share, f"{n}/{len(shares)}").run,
                name=f"meshpacs-scu-{n}",
                daemon=True,
            )
            for n, share in enumerate(shares, start=1)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    results = run.finish()
    delivered = sum(1 for d in results if d.ok)
    warned = sum(1 for d in results if d.ok and d.status not in (None, 0))
    LOG.info("C-STORE to %s: %d of %d delivered (%d with a warning), %d failed, in %.1f s",
             target.ae_title, delivered, len(results), warned, len(results) - delivered,
             time.monotonic() - started)  # fmt: skip
    return results


def echo(target: Target, *, timeout: float = 5.0) -> bool:
    """True when ``target`` accepts an association and answers C-ECHO with Success."""
    _prepare_pynetdicom()
    ae = AE(ae_title=target.calling_ae_title)
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    assoc = ae.associate(target.host, target.port, ae_title=target.ae_title)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


# -- internals ---------------------------------------------------------------------------


def _prepare_pynetdicom() -> None:
    """What this sender needs of pynetdicom's process-wide state; idempotent."""
    _config.STORE_SEND_CHUNKED_DATASET = True  # send from the file, never re-encode
    install_tcp_nodelay()
    install_counting_checkpoint()
    install_send_lock()
    pynetdicom_log = logging.getLogger("pynetdicom")
    if pynetdicom_log.level == logging.NOTSET:
        # At INFO pynetdicom logs every DIMSE message, UIDs included.
        pynetdicom_log.setLevel(logging.WARNING)


def _check_ae_title(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-blank string")
    if len(value) > 16 or not value.isascii() or not value.isprintable() or "\\" in value:
        raise ValueError(f"{name} must be at most 16 printable ASCII characters, no backslash")


def _name(uid: str) -> str:
    return str(UID(uid).name)


def _split(count: int, parts: int) -> list[list[int]]:
    """``parts`` contiguous, nearly equal runs of ``range(count)``."""
    bounds = [count * k // parts for k in range(parts + 1)]
    return [list(range(bounds[k], bounds[k + 1])) for k in range(parts)]


def _pair(item: Outgoing) -> tuple[str, str]:
    return (item.sop_class_uid, item.transfer_syntax_uid)


def _batches(share: list[int], items: Sequence[Outgoing]) -> list[list[int]]:
    """A share cut into runs whose (SOP class, syntax) pairs fit one association."""
    pairs = list(dict.fromkeys(_pair(items[i]) for i in share))
    if len(pairs) <= MAX_CONTEXTS:
        return [share]
    group = {pair: n // MAX_CONTEXTS for n, pair in enumerate(pairs)}
    batches: list[list[int]] = [[] for _ in range(max(group.values()) + 1)]
    for i in share:
        batches[group[_pair(items[i])]].append(i)
    return batches


def _delivery(item: Outgoing, status: int) -> Delivery:
    category = code_to_category(status)
    text = STORAGE_SERVICE_CLASS_STATUS.get(status, ("", ""))[1]
    described = f"0x{status:04X}" + (f" ({text})" if text else "")
    if status == 0x0000:
        return Delivery(item, status, True, "stored")
    if category == "Warning":
        return Delivery(item, status, True, f"stored with warning {described}")
    return Delivery(item, status, False, f"peer refused the instance: {category.lower()} "
                                         f"{described}")  # fmt: skip


@dataclass(frozen=True)
class _Settings:
    target: Target
    max_retries: int
    retry_delay: float
    connect_timeout: float
    acse_timeout: float
    dimse_timeout: float
    network_timeout: float


class _Run:
    """The results of one call, filled in by the workers; progress calls serialised."""

    def __init__(self, items: list[Outgoing], progress: Callable[[Delivery], None] | None):
        self.items = items
        self._results: list[Delivery | None] = [None] * len(items)
        self._progress = progress
        self._lock = threading.Lock()

    def report(self, index: int, delivery: Delivery) -> None:
        with self._lock:
            if self._results[index] is not None:
                return
            self._results[index] = delivery
            if self._progress is None:
                return
            try:
                self._progress(delivery)
            except Exception as exc:
                LOG.warning("progress callback raised %s; delivery goes on", type(exc).__name__)

    def unreported(self, indices: list[int]) -> list[int]:
        with self._lock:
            return [i for i in indices if self._results[i] is None]

    def finish(self) -> list[Delivery]:
        with self._lock:
            missing = [i for i, d in enumerate(self._results) if d is None]
        for i in missing:  # only after a bug in a worker; never leave a hole
            self.report(i, Delivery(self.items[i], None, False, "not sent: internal error"))
        with self._lock:
            return [d for d in self._results if d is not None]


class _Lost(Exception):
    """The association went away while an instance was unacknowledged."""


class _Worker:
    """One share of the items, over one association at a time."""

    def __init__(self, run: _Run, settings: _Settings, share: list[int], label: str) -> None:
        self.run_ = run
        self.settings = settings
        self.share = share
        self.label = label
        self.items = run.items
        self.attempts: dict[int, int] = dict.fromkeys(share, 0)
        self.failures_in_row = 0
        self.message_id = 0
        self._acknowledged = 0  # instances answered on the current association

    def run(self) -> None:
        try:
            for batch in _batches(self.share, self.items):
                self._deliver(deque(batch))
        except Exception as exc:  # a bug: report this share's rest as failed, keep the others
            LOG.error("association %s stopped on an internal error (%s)",
                      self.label, type(exc).__name__)  # fmt: skip
            LOG.debug("internal error in the C-STORE sender", exc_info=True)
            for i in self.run_.unreported(self.share):
                self.run_.report(
                    i, Delivery(self.items[i], None, False,
                                f"not sent: internal error ({type(exc).__name__})")
                )  # fmt: skip

    # -- one batch: associate, send, re-associate until everything has an outcome ---------

    def _deliver(self, pending: deque[int]) -> None:
        while pending:
            if self.failures_in_row:
                time.sleep(min(self.settings.retry_delay * self.failures_in_row, _MAX_BACKOFF))
            pairs = list(dict.fromkeys(_pair(self.items[i]) for i in pending))
            assoc = self._associate(pairs)
            if not assoc.is_established:
                if _refused_all(assoc):
                    self._refuse(pending, set(pairs))
                    continue
                self._charge_all(pending, _why_not(assoc, self.settings.target))
                continue
            try:
                accepted = {
                    (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                    for cx in assoc.accepted_contexts
                }
                self._refuse(pending, set(pairs) - accepted)
                self._send(assoc, pending)
                self.failures_in_row = 0
            except _Lost as lost:
                # Progress on this association: the peer is back, start the backoff over.
                self.failures_in_row = 1 if self._acknowledged else self.failures_in_row + 1
                self._charge_first(pending, str(lost))
            finally:
                if assoc.is_established:
                    assoc.release()
                elif not assoc.is_aborted:
                    assoc.abort()

    def _associate(self, pairs: list[tuple[str, str]]) -> Any:
        s, target = self.settings, self.settings.target
        ae = AE(ae_title=target.calling_ae_title)
        ae.connection_timeout = s.connect_timeout
        ae.acse_timeout = s.acse_timeout
        ae.dimse_timeout = s.dimse_timeout
        ae.network_timeout = s.network_timeout
        contexts = [build_context(sop_class, [syntax]) for sop_class, syntax in pairs]
        LOG.info("association %s to %s: %d contexts",
                 self.label, target.ae_title, len(contexts))  # fmt: skip
        self._acknowledged = 0
        self.message_id = 0
        return ae.associate(target.host, target.port, contexts=contexts, ae_title=target.ae_title)

    def _send(self, assoc: Any, pending: deque[int]) -> None:
        """Send until ``pending`` is empty; raises :class:`_Lost` when the association goes."""
        while pending:
            index = pending[0]
            item = self.items[index]
            mismatch = _file_mismatch(item)
            if mismatch:
                pending.popleft()
                self.run_.report(index, Delivery(item, None, False, mismatch))
                continue
            self.message_id = self.message_id % _MAX_MESSAGE_ID + 1
            started = time.monotonic()
            try:
                answer = send_stored(
                    assoc,
                    item.path,
                    sop_class_uid=item.sop_class_uid,
                    sop_instance_uid=item.sop_instance_uid,
                    transfer_syntax_uid=item.transfer_syntax_uid,
                    msg_id=self.message_id,
                )
            except RuntimeError:  # "must be established": it went between two instances
                raise _Lost("the association was lost") from None
            except Exception as exc:
                # Part of the request may be on the wire: this association is no longer usable.
                if assoc.is_established:
                    assoc.abort()
                raise _Lost(f"sending failed ({type(exc).__name__})") from None
            status = answer.get("Status")
            if status is None:
                if _still_up(assoc):  # an invalid response: the exchange is out of step
                    assoc.abort()
                    raise _Lost("invalid response from the peer")
                waited = time.monotonic() - started
                if waited >= self.settings.dimse_timeout:
                    raise _Lost(f"no response within {self.settings.dimse_timeout:g} s")
                raise _Lost("the association was lost before the instance was acknowledged")
            pending.popleft()
            self._acknowledged += 1
            delivery = _delivery(item, int(status))
            if not delivery.ok:
                LOG.warning("association %s: %s for an instance of %s", self.label,
                            delivery.detail, _name(item.sop_class_uid))  # fmt: skip
            self.run_.report(index, delivery)

    # -- outcomes ----------------------------------------------------------------------------

    def _refuse(self, pending: deque[int], refused: set[tuple[str, str]]) -> None:
        if not refused:
            return
        keep: deque[int] = deque()
        counts: dict[tuple[str, str], int] = {}
        for i in pending:
            pair = _pair(self.items[i])
            if pair in refused:
                counts[pair] = counts.get(pair, 0) + 1
                self.run_.report(i, Delivery(self.items[i], None, False,
                                             context_refused_detail(*pair)))  # fmt: skip
            else:
                keep.append(i)
        for pair, count in counts.items():
            LOG.warning("association %s: %s; %d instance(s) not sent",
                        self.label, context_refused_detail(*pair), count)  # fmt: skip
        pending.clear()
        pending.extend(keep)

    def _charge_all(self, pending: deque[int], reason: str) -> None:
        """An association that could not be established costs every waiting instance a try."""
        self.failures_in_row += 1
        keep: deque[int] = deque()
        gave_up = 0
        for i in pending:
            if self._charge(i):
                keep.append(i)
            else:
                gave_up += 1
                self.run_.report(i, self._given_up(i, reason))
        LOG.warning("association %s: %s; %s", self.label, reason,
                    f"gave up on {gave_up} instance(s)" if gave_up else "will retry")  # fmt: skip
        pending.clear()
        pending.extend(keep)

    def _charge_first(self, pending: deque[int], reason: str) -> None:
        """A lost association costs the unacknowledged instance in flight a try."""
        LOG.warning("association %s: %s (%d instance(s) acknowledged on it, %d left)",
                    self.label, reason, self._acknowledged, len(pending))  # fmt: skip
        if pending and not self._charge(pending[0]):
            index = pending.popleft()
            self.run_.report(index, self._given_up(index, reason))

    def _charge(self, index: int) -> bool:
        """Count a failed try; true if the instance may be tried again."""
        self.attempts[index] += 1
        return self.attempts[index] <= self.settings.max_retries

    def _given_up(self, index: int, reason: str) -> Delivery:
        tries = self.attempts[index]
        return Delivery(self.items[index], None, False,
                        f"not delivered: {reason} (gave up after {tries} attempt"
                        f"{'s' if tries != 1 else ''})")  # fmt: skip


def _still_up(assoc: Any, settle: float = 0.5) -> bool:
    """Whether an association that gave no status is still up: then the response was invalid.

    After an abort pynetdicom hands ``send_c_store`` its empty answer before its reactor has
    marked the association down, so give the flags a moment to settle.
    """
    deadline = time.monotonic() + settle
    while assoc.is_established and not assoc.is_aborted:
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.005)
    return False


def _refused_all(assoc: Any) -> bool:
    """Whether the peer accepted the association but none of its presentation contexts.

    pynetdicom then aborts the association itself, so it is not established, but the peer
    has answered: every pair proposed is refused, and trying again would not change that.
    """
    primitive = assoc.acceptor.primitive
    return primitive is not None and primitive.result == 0x00 and not assoc.accepted_contexts


def _why_not(assoc: Any, target: Target) -> str:
    """Why an association was not established, in words (no PHI in any of them)."""
    where = f"{target.ae_title} at {target.host}:{target.port}"
    primitive = assoc.acceptor.primitive
    if assoc.is_rejected and primitive is not None:
        return (f"{where} rejected the association ({primitive.result_str}, "
                f"{primitive.source_str}: {primitive.reason_str})")  # fmt: skip
    if primitive is None:
        return f"no association with {where} (connection refused, unreachable or timed out)"
    return f"{where} aborted the association request"


def _file_mismatch(item: Outgoing) -> str:
    """Why the stored file cannot go out as its record says, or "" if it can.

    The file goes out under its record's SOP class and transfer syntax: a file whose meta
    disagrees with its record would be sent under the wrong context.
    """
    try:
        meta = read_file_meta_info(item.path)
    except OSError as exc:
        return f"not sent: stored file unreadable ({type(exc).__name__})"
    except Exception as exc:
        return f"not sent: stored file is not a Part 10 file ({type(exc).__name__})"
    sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
    syntax = str(meta.get("TransferSyntaxUID", ""))
    if sop_class != item.sop_class_uid or syntax != item.transfer_syntax_uid:
        return "not sent: the stored file's meta names another SOP class or transfer syntax"
    if not meta.get("MediaStorageSOPInstanceUID"):
        return "not sent: the stored file's meta has no SOP Instance UID"
    if str(meta.MediaStorageSOPInstanceUID) != item.sop_instance_uid:
        return "not sent: the stored file's meta names another SOP instance"
    return ""
