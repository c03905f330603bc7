"""Delivering restored instances: into the rebuilt PACS by C-STORE, or into a directory.

Recovery decodes each bundle into local Part 10 files and hands them here as
:class:`Restored` items. Both deliverers share one interface::

    identity: str                      the journal's key for the target
    async deliver(batch, progress=None) -> list[DeliveryOutcome]

``deliver`` returns one :class:`DeliveryOutcome` per item, in input order, and calls
``progress`` once per outcome as soon as it is known (from a worker thread, one call at a
time; an exception it raises is logged and ignored). The work runs in threads, so the event
loop stays free. Cancelling ``deliver`` (Ctrl-C) stops it at the next safe point (the end of
the C-STORE chunk in flight, or of the file being written), lets what the target
acknowledged reach the journal, then raises ``CancelledError``.

Nothing that fails a check leaves this module: before an instance goes out, its file must
have exactly the size and SHA-256 the sealed catalog recorded; otherwise it is refused
(:attr:`OutcomeKind.REFUSED`) and reported, never sent. An instance the journal says this
target already acknowledged is skipped (:attr:`OutcomeKind.ALREADY_DELIVERED`), and so is
one an interrupted run left in flight that the target is found to hold (below).

:class:`AeDeliverer` sends through :func:`meshpacs.dicom.scu.send_instances` (byte for byte,
several parallel associations), in chunks so an interruption is honoured quickly. Each
chunk is recorded **in flight** in the journal (one commit) before its first instance goes
out. Each acknowledgement (success or warning status) goes to the journal from a thread of
its own that commits whatever has accumulated in one transaction (group commit): the
senders never wait for an fsync. A hard crash (power, SIGKILL) can therefore forget the
acknowledgements of the last commit in progress, but not that those instances were in
flight. The next run asks the PACS about every instance left in flight, by C-FIND
(:mod:`meshpacs.dicom.find_scu`): one it holds is journaled as delivered and not sent
again; one it answered it lacks is sent. When the PACS cannot be asked (it rejects the
association, accepts no Study Root C-FIND, fails or stays silent), the instances it gave no
answer about are sent again, and a warning says how many may so reach it twice (Orthanc,
for one, answers C-FIND only from the AEs in its ``DicomModalities``, or from any when
``DicomAlwaysAllowFind`` is true; it aborts the others). An instance the PACS refused with
a failure status has its in-flight row cleared; one without an answer (an association lost
under it) keeps it, because the PACS may hold it.

:class:`DirDeliverer` writes ``ROOT/study-000001/<sha256 hex>.dcm`` (``ROOT/unsorted/`` for
instances that were never parsed into a study). Study folders are numbered by the journal,
so a study keeps its folder across runs, and no DICOM value ever becomes a path. Each file
is copied to a temporary name while being hashed, fsynced, checked, renamed into place, and
its folder fsynced before the journal records it. Each group of ``flush_every`` files is
recorded in flight (one commit) before the first of them is written; after a crash, an
instance left in flight whose final file is there with exactly the expected size and
SHA-256 (read back in full) is journaled as delivered without being written again, and
any other is written. Each study folder has a ``manifest.json``, rewritten atomically as the
study's files arrive (its cost stays bounded by the study's size), listing for every file:
its path under ROOT, SOP Instance UID, SOP class, transfer syntax, size, SHA-256 and study
UID; :meth:`DirDeliverer.finish` rewrites all of them from the journal and
``ROOT/manifest.json``, the index of study folders. Files and folders are private to their
owner: they hold patients' images.

Log lines name counts, SOP classes and reasons, never a UID (the outcomes returned do
carry the items, for the operator's report).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import queue
import re
import secrets
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from pydicom.uid import UID

from meshpacs.dicom.find_scu import MAX_UIDS, HeldInstances, find_held_instances
from meshpacs.dicom.scu import Delivery, Outgoing, Target, send_instances
from meshpacs.durable import fsync_dir, write_all, write_atomic
from meshpacs.recovery.journal import MAX_BATCH, JournalEntry, RecoveryJournal
from meshpacs.recovery.model import PlannedInstance

__all__ = [
    "MANIFEST",
    "MANIFEST_VERSION",
    "UNSORTED",
    "AeDeliverer",
    "Deliverer",
    "DeliveryOutcome",
    "DirDeliverer",
    "OutcomeKind",
    "Progress",
    "Restored",
    "ae_identity",
    "check_restored",
    "dir_identity",
    "index_manifest",
    "study_folder",
    "study_manifest",
]

LOG = logging.getLogger("meshpacs.recovery")

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
UNSORTED = "unsorted"
_CHUNK = 1 << 20
_FILE_MODE = 0o600
_DIR_MODE = 0o700
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# What a crash may leave in a study folder: a file being copied, a manifest being replaced.
_LEFTOVER = re.compile(r"\.(?:[0-9a-f]{64}\.dcm|manifest\.json)\.[0-9a-f]{16}\.tmp")
_FOLDER = re.compile(rf"study-[0-9]{{6,}}|{UNSORTED}")


@dataclass(frozen=True)
class Restored:
    """An instance rebuilt into a local Part 10 file, ready to go out.

    ``study_uid`` is the study it belongs to ("" for an instance never parsed into one).
    """

    instance: PlannedInstance
    path: Path
    study_uid: str


class OutcomeKind(StrEnum):
    DELIVERED = "delivered"  # the target acknowledged it in this run
    ALREADY_DELIVERED = "already delivered"  # the journal says it did in an earlier run
    REFUSED = "refused"  # failed a check here: never sent
    FAILED = "failed"  # sent, or tried, but the target did not acknowledge it


@dataclass(frozen=True)
class DeliveryOutcome:
    """What became of one item. ``detail`` is in words, without UIDs; ``status`` is the
    PACS's C-STORE status when it answered."""

    item: Restored
    kind: OutcomeKind
    detail: str
    status: int | None = None

    @property
    def ok(self) -> bool:
        """The target holds the instance."""
        return self.kind in (OutcomeKind.DELIVERED, OutcomeKind.ALREADY_DELIVERED)


Progress = Callable[[DeliveryOutcome], None]


class Deliverer(Protocol):
    @property
    def identity(self) -> str: ...

    async def deliver(
        self, batch: Sequence[Restored], progress: Progress | None = None
    ) -> list[DeliveryOutcome]: ...


def ae_identity(target: Target) -> str:
    """The journal key of a PACS: its AE title, host and port (not our calling title)."""
    return f"ae:{target.ae_title}@{target.host}:{target.port}"


def dir_identity(root: Path) -> str:
    """The journal key of a target directory: its absolute path."""
    return f"dir:{Path(root).resolve()}"


def check_restored(item: Restored) -> str:
    """Why ``item``'s file may not go out ("" when it may): it must be a regular file with
    exactly the size and SHA-256 the catalog recorded."""
    return _check_file(item.path, item.instance, "the restored file")


def _check_file(path: Path, expected: PlannedInstance, what: str) -> str:
    """Why ``path`` is not exactly ``expected``'s bytes ("" when it is); read in full."""
    try:
        with path.open("rb") as stream:
            info = os.fstat(stream.fileno())
            shape = _shape_mismatch(info, expected.size, what)
            if shape:
                return shape
            digest = hashlib.sha256()
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        return f"{what} is missing"
    except OSError as exc:
        return f"{what} cannot be read ({exc.strerror or type(exc).__name__})"
    if digest.digest() != expected.sha256:
        return f"{what}'s SHA-256 does not match the catalog's"
    return ""


# -- C-STORE into a PACS ---------------------------------------------------------------------


class AeDeliverer:
    """C-STORE into ``target`` over ``associations`` parallel associations.

    ``chunk_instances`` instances go per :func:`send_instances` call (and per in-flight
    commit): the most an interruption waits for. ``max_retries`` and ``retry_delay`` are the
    sender's; ``find_timeout`` bounds each wait of the C-FIND about instances left in flight.
    """

    def __init__(
        self,
        target: Target,
        journal: RecoveryJournal,
        *,
        associations: int = 2,
        chunk_instances: int = 256,
        max_retries: int = 2,
        retry_delay: float = 1.0,
        dimse_timeout: float = 60.0,
        find_timeout: float = 20.0,
    ) -> None:
        if isinstance(associations, bool) or not isinstance(associations, int) or associations < 1:
            raise ValueError("associations must be a positive integer")
        if isinstance(chunk_instances, bool) or not 1 <= chunk_instances <= MAX_BATCH:
            raise ValueError(f"chunk_instances must be in [1, {MAX_BATCH}]")
        self.target = target
        self._identity = ae_identity(target)
        _check_journal(journal, self._identity)
        self.journal = journal
        self.associations = associations
        self.chunk_instances = chunk_instances
        self._send_options: dict[str, Any] = {
            "max_retries": max_retries,
            "retry_delay": retry_delay,
            "dimse_timeout": dimse_timeout,
        }
        self.find_timeout = find_timeout
        self._cannot_ask = ""  # why the PACS could not answer C-FIND: not asked again

    @property
    def identity(self) -> str:
        return self._identity

    async def deliver(
        self, batch: Sequence[Restored], progress: Progress | None = None
    ) -> list[DeliveryOutcome]:
        return await _run_in_thread(self._deliver, list(batch), progress)

    def _deliver(
        self, batch: list[Restored], stop: threading.Event, progress: Progress | None
    ) -> list[DeliveryOutcome]:
        run = _Run(batch, self.journal, progress)
        left = self._settle_in_flight(run, run.triage())
        with _GroupCommit(self.journal) as commits:
            for start in range(0, len(left), self.chunk_instances):
                if stop.is_set() or commits.failed:
                    break  # a journal that cannot record would only make us send again
                # Checked chunk by chunk: as late before sending as is cheap.
                chunk = left[start : start + self.chunk_instances]
                self._send_chunk(run, [i for i in chunk if not run.refuse_if_bad(i)], commits)
        return run.finish()

    def _send_chunk(self, run: _Run, indices: list[int], commits: _GroupCommit) -> None:
        if not indices:
            return
        # On disk before the first byte goes out: after any crash, these are asked about.
        self.journal.record_in_flight([_entry(run.batch[i]) for i in indices])
        outgoing = [_outgoing(run.batch[i]) for i in indices]
        where = {id(o): i for o, i in zip(outgoing, indices, strict=True)}

        def acknowledged(delivery: Delivery) -> None:
            index = where[id(delivery.item)]
            outcome = _from_delivery(run.batch[index], delivery)
            if outcome.ok:
                commits.add(_entry(run.batch[index]))
            elif delivery.status is not None:  # the PACS answered that it did not take it
                commits.add(run.batch[index].instance.sha256)
            run.settle(index, outcome)

        results = send_instances(
            outgoing,
            self.target,
            associations=self.associations,
            progress=acknowledged,
            **self._send_options,
        )
        for delivery in results:  # only when the callback itself failed
            index = where[id(delivery.item)]
            if run.outcomes[index] is None:
                acknowledged(delivery)

    def _settle_in_flight(self, run: _Run, left: list[int]) -> list[int]:
        """Ask the PACS about the instances of ``left`` an interrupted run left in flight;
        settle those it holds; the indices still to send."""
        in_flight = self.journal.in_flight_among(run.batch[i].instance.sha256 for i in left)
        asking = [i for i in left if run.batch[i].instance.sha256 in in_flight]
        held: set[int] = set()
        for start in range(0, len(asking), MAX_UIDS):
            held.update(self._ask_and_settle(run, asking[start : start + MAX_UIDS]))
        return [i for i in left if i not in held]

    def _ask_and_settle(self, run: _Run, asking: list[int]) -> list[int]:
        wanted: dict[str, list[str]] = {}
        for i in asking:
            wanted.setdefault(run.batch[i].study_uid, []).append(
                run.batch[i].instance.sop_instance_uid
            )
        answer = self._ask(wanted)
        held = [i for i in asking if run.batch[i].instance.sop_instance_uid in answer.held]
        for start in range(0, len(held), MAX_BATCH):
            self.journal.record_delivered(
                [_entry(run.batch[i]) for i in held[start : start + MAX_BATCH]]
            )
        for i in held:
            detail = "an interrupted run sent it; the target holds it (C-FIND)"
            run.settle(i, DeliveryOutcome(run.batch[i], OutcomeKind.ALREADY_DELIVERED, detail))
        unknown = len(answer.unknown([u for uids in wanted.values() for u in uids]))
        LOG.info("%d instance(s) left in flight by an interrupted run: %d held by the target, "
                 "%d to send", len(asking), len(held), len(asking) - len(held))  # fmt: skip
        if unknown:
            LOG.warning(
                "cannot ask %s whether it holds %d instance(s) an interrupted run left in "
                "flight (%s): they are sent again, so up to %d instance(s) may be delivered "
                "twice (allow C-FIND from %s on the target to avoid this)",
                self.target.ae_title, unknown, answer.detail or "no answer", unknown,
                self.target.calling_ae_title,
            )  # fmt: skip
        return held

    def _ask(self, wanted: dict[str, list[str]]) -> HeldInstances:
        if self._cannot_ask:
            return HeldInstances(detail=self._cannot_ask)
        answer = find_held_instances(self.target, wanted, timeout=self.find_timeout)
        if answer.detail and not (answer.held or answer.absent or answer.unreachable):
            self._cannot_ask = answer.detail  # it would not answer the next batch either
        return answer


def _outgoing(item: Restored) -> Outgoing:
    i = item.instance
    return Outgoing(item.path, i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid)


def _from_delivery(item: Restored, delivery: Delivery) -> DeliveryOutcome:
    kind = OutcomeKind.DELIVERED if delivery.ok else OutcomeKind.FAILED
    return DeliveryOutcome(item, kind, delivery.detail, delivery.status)


class _GroupCommit:
    """Acknowledgements into the journal from a thread of their own, many per transaction.

    The C-STORE threads only enqueue: an entry for an acknowledged instance, a digest for
    one the PACS refused (its in-flight row is cleared). Each commit takes everything that
    arrived during the previous one. :meth:`close` commits the rest and raises the first
    journal error.
    """

    def __init__(self, journal: RecoveryJournal) -> None:
        self._journal = journal
        self._queue: queue.SimpleQueue[JournalEntry | bytes | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="meshpacs-journal", daemon=True)
        self._thread.start()

    def add(self, entry: JournalEntry | bytes) -> None:
        self._queue.put(entry)

    @property
    def failed(self) -> bool:
        return self._error is not None

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> _GroupCommit:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            self.close()
            return
        with contextlib.suppress(Exception):  # keep the error already on its way out
            self.close()

    def _run(self) -> None:
        closing = False
        while not closing:
            waiting = [self._queue.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    waiting.append(self._queue.get_nowait())
            closing = None in waiting
            entries = [e for e in waiting if isinstance(e, JournalEntry)]
            refused = [e for e in waiting if isinstance(e, bytes)]
            if self._error is not None:
                continue
            try:
                for start in range(0, len(entries), MAX_BATCH):
                    self._journal.record_delivered(entries[start : start + MAX_BATCH])
                for start in range(0, len(refused), MAX_BATCH):
                    self._journal.clear_in_flight(refused[start : start + MAX_BATCH])
            except BaseException as exc:  # the delivery reports it when it closes us
                self._error = exc
                LOG.error("the recovery journal could not record acknowledgements: %s", exc)


# -- files into a directory ------------------------------------------------------------------


class DirDeliverer:
    """Write restored instances under ``root`` (see the module docstring for the layout).

    The journal is flushed, with the folders' fsyncs before it, every ``flush_every``
    files; the files' outcomes are reported then. Calls to :meth:`deliver` may overlap:
    they take turns.
    """

    def __init__(self, root: Path, journal: RecoveryJournal, *, flush_every: int = 64) -> None:
        if isinstance(flush_every, bool) or not 1 <= flush_every <= MAX_BATCH:
            raise ValueError(f"flush_every must be in [1, {MAX_BATCH}]")
        self.root = Path(root).resolve()
        self._identity = dir_identity(self.root)
        _check_journal(journal, self._identity)
        self.journal = journal
        self.flush_every = flush_every
        self._folders: dict[str, str] = {}
        self._made: set[Path] = set()
        self._turn = threading.Lock()
        self._make_dir(self.root)
        self._sweep()

    @property
    def identity(self) -> str:
        return self._identity

    async def deliver(
        self, batch: Sequence[Restored], progress: Progress | None = None
    ) -> list[DeliveryOutcome]:
        return await _run_in_thread(self._deliver, list(batch), progress)

    async def finish(self) -> None:
        """Rewrite every study manifest and the index from the journal (after a crash, too)."""
        await asyncio.to_thread(self._write_all_manifests)

    def _deliver(
        self, batch: list[Restored], stop: threading.Event, progress: Progress | None
    ) -> list[DeliveryOutcome]:
        with self._turn:
            return self._deliver_in_turn(batch, stop, progress)

    def _deliver_in_turn(
        self, batch: list[Restored], stop: threading.Event, progress: Progress | None
    ) -> list[DeliveryOutcome]:
        run = _Run(batch, self.journal, progress)
        left = self._settle_in_flight(run, run.triage())
        written = _Written()
        for start in range(0, len(left), self.flush_every):
            if stop.is_set():
                break
            group = left[start : start + self.flush_every]
            self.journal.record_in_flight([_entry(run.batch[i]) for i in group])
            for index in group:
                if stop.is_set():
                    break
                self._write_one(run, index, written)
            self._flush(run, written)
        return run.finish()

    def _settle_in_flight(self, run: _Run, left: list[int]) -> list[int]:
        """Settle the instances an interrupted run left in flight whose final file is in
        place with the right bytes; the indices still to write."""
        in_flight = self.journal.in_flight_among(run.batch[i].instance.sha256 for i in left)
        held = _Written()
        for index in left:
            item = run.batch[index]
            if item.instance.sha256 not in in_flight:
                continue
            folder_name = self._folder(item.study_uid)
            name = f"{folder_name}/{item.instance.sha256.hex()}.dcm"
            if not _check_file(self.root / name, item.instance, "the file"):
                held.add(index, _entry(item, name), self.root / folder_name, item.study_uid)
        if in_flight:
            LOG.info("%d instance(s) left in flight by an interrupted run: %d in place, "
                     "%d to write", len(in_flight), len(held.entries),
                     len(in_flight) - len(held.entries))  # fmt: skip
        done = {index for index, _ in held.entries}
        self._flush(run, held, "an interrupted run wrote it; the file is in place")
        return [i for i in left if i not in done]

    def _write_one(self, run: _Run, index: int, written: _Written) -> None:
        item = run.batch[index]
        folder_name = self._folder(item.study_uid)
        folder = self.root / folder_name
        try:
            self._make_dir(folder)
            reason = _copy_verified(item.path, folder, item.instance)
        except OSError as exc:
            detail = f"not written: {exc.strerror or type(exc).__name__} in the target directory"
            run.settle(index, DeliveryOutcome(item, OutcomeKind.FAILED, detail))
            return
        if reason:
            run.refuse(index, reason)
            return
        name = f"{folder_name}/{item.instance.sha256.hex()}.dcm"
        written.add(index, _entry(item, name), folder, item.study_uid)

    def _flush(self, run: _Run, written: _Written, earlier: str = "") -> None:
        """Folders fsynced, then the journal, then the outcomes and the manifests.

        ``earlier``: the files were written by an interrupted run (why they are held).
        """
        if not written.entries:
            return
        for folder in written.folders:
            fsync_dir(folder)
        for start in range(0, len(written.entries), MAX_BATCH):
            self.journal.record_delivered(
                [entry for _, entry in written.entries[start : start + MAX_BATCH]]
            )
        kind = OutcomeKind.ALREADY_DELIVERED if earlier else OutcomeKind.DELIVERED
        for index, _ in written.entries:
            run.settle(index, DeliveryOutcome(run.batch[index], kind, earlier or "written"))
        for study_uid in written.studies:
            self._write_manifest(study_uid)
        written.clear()

    def _folder(self, study_uid: str) -> str:
        name = self._folders.get(study_uid)
        if name is None:
            number = self.journal.study_number(study_uid) if study_uid else 0
            name = self._folders[study_uid] = study_folder(number)
        return name

    def _make_dir(self, folder: Path) -> None:
        if folder in self._made:
            return
        if not folder.is_dir():
            folder.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            fsync_dir(folder.parent)  # the new folder's name must survive a crash too
        self._made.add(folder)

    def _write_manifest(self, study_uid: str) -> tuple[str, str, int, int]:
        """Rewrite a study folder's manifest; its index line."""
        folder = self._folder(study_uid)
        self._make_dir(self.root / folder)
        entries = self.journal.entries_of_study(study_uid)
        manifest = study_manifest(folder, study_uid, entries)
        write_atomic(self.root / folder / MANIFEST, manifest, _FILE_MODE)
        return (folder, study_uid, len(entries), sum(e.size for e in entries))

    def _write_all_manifests(self) -> None:
        with self._turn:
            self._write_index()

    def _write_index(self) -> None:
        summaries = [self._write_manifest(uid) for uid in self.journal.delivered_study_uids()]
        write_atomic(self.root / MANIFEST, index_manifest(summaries), _FILE_MODE)

    def _sweep(self) -> None:
        """Remove what a crash left half written (only names this module makes)."""
        for folder in self.root.iterdir():
            if not (_FOLDER.fullmatch(folder.name) and folder.is_dir()):
                continue
            for leftover in folder.iterdir():
                if _LEFTOVER.fullmatch(leftover.name):
                    leftover.unlink(missing_ok=True)
        for leftover in self.root.iterdir():
            if _LEFTOVER.fullmatch(leftover.name):
                leftover.unlink(missing_ok=True)


@dataclass
class _Written:
    """Files in place whose folders are not yet fsynced nor the journal told."""

    entries: list[tuple[int, JournalEntry]] = dataclasses.field(default_factory=list)
    folders: set[Path] = dataclasses.field(default_factory=set)
    studies: set[str] = dataclasses.field(default_factory=set)

    def add(self, index: int, entry: JournalEntry, folder: Path, study_uid: str) -> None:
        self.entries.append((index, entry))
        self.folders.add(folder)
        self.studies.add(study_uid)

    def clear(self) -> None:
        self.entries.clear()
        self.folders.clear()
        self.studies.clear()


def study_folder(number: int) -> str:
    """The folder of study ``number`` (0: instances never parsed into a study)."""
    return UNSORTED if number == 0 else f"study-{number:06d}"


def study_manifest(folder: str, study_uid: str, entries: Sequence[JournalEntry]) -> bytes:
    """A study folder's ``manifest.json``: one object per file, paths relative to ROOT."""
    document = {
        "version": MANIFEST_VERSION,
        "kind": "meshpacs recovery study manifest",
        "folder": folder,
        "study_uid": study_uid,
        "instances": [
            {
                "file": e.name,
                "sop_instance_uid": e.sop_instance_uid,
                "sop_class_uid": e.sop_class_uid,
                "transfer_syntax_uid": e.transfer_syntax_uid,
                "size": e.size,
                "sha256": e.sha256.hex(),
                "study_uid": e.study_uid,
            }
            for e in entries
        ],
    }
    return (json.dumps(document, indent=1) + "\n").encode("utf-8")


def index_manifest(studies: Sequence[tuple[str, str, int, int]]) -> bytes:
    """ROOT's ``manifest.json``: ``(folder, study UID, instances, bytes)`` per study folder."""
    document = {
        "version": MANIFEST_VERSION,
        "kind": "meshpacs recovery index",
        "instances": sum(s[2] for s in studies),
        "bytes": sum(s[3] for s in studies),
        "studies": [
            {
                "folder": f,
                "manifest": f"{f}/{MANIFEST}",
                "study_uid": uid,
                "instances": count,
                "bytes": size,
            }
            for f, uid, count, size in studies
        ],
    }
    return (json.dumps(document, indent=1) + "\n").encode("utf-8")


def _copy_verified(source: Path, folder: Path, expected: PlannedInstance) -> str:
    """Copy ``source`` into ``folder`` under its digest, checked while copied; the reason
    it was refused, or "" once it is in place (fsynced; the folder is not yet).

    Only the bytes checked are written, so nothing unchecked reaches its final name.
    Raises OSError when the target directory fails us.
    """
    name = f"{expected.sha256.hex()}.dcm"
    try:
        stream = source.open("rb")
    except FileNotFoundError:
        return "the restored file is missing"
    except OSError as exc:
        return f"the restored file cannot be read ({exc.strerror or type(exc).__name__})"
    with stream:
        shape = _shape_mismatch(os.fstat(stream.fileno()), expected.size)
        if shape:
            return shape
        temp = folder / f".{name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, _FILE_MODE)
        try:
            digest = hashlib.sha256()
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
                write_all(fd, chunk)
            if digest.digest() != expected.sha256:
                os.close(fd)
                fd = -1
                temp.unlink()
                return "the restored file's SHA-256 does not match the catalog's"
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(temp, folder / name)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            temp.unlink(missing_ok=True)
            raise
    return ""


# -- shared ----------------------------------------------------------------------------------


class _Run:
    """One ``deliver`` call: its outcomes, the progress calls (serialised), duplicates."""

    def __init__(
        self, batch: list[Restored], journal: RecoveryJournal, progress: Progress | None
    ) -> None:
        self.batch = batch
        self.journal = journal
        self.outcomes: list[DeliveryOutcome | None] = [None] * len(batch)
        self._progress = progress
        self._lock = threading.Lock()
        self._first: dict[bytes, int] = {}
        self._copies: list[int] = []

    def triage(self) -> list[int]:
        """Settle what the journal already has; the indices left to deliver, each digest
        once (a repeated one gets the outcome of its first item at the end)."""
        held = self.journal.delivered_among(item.instance.sha256 for item in self.batch)
        left = []
        for index, item in enumerate(self.batch):
            digest = item.instance.sha256
            if digest in held:
                detail = "the target acknowledged it in an earlier run"
                self.settle(index, DeliveryOutcome(item, OutcomeKind.ALREADY_DELIVERED, detail))
            elif digest in self._first:
                self._copies.append(index)
            else:
                self._first[digest] = index
                left.append(index)
        return left

    def refuse_if_bad(self, index: int) -> bool:
        reason = check_restored(self.batch[index])
        if reason:
            self.refuse(index, reason)
        return bool(reason)

    def refuse(self, index: int, reason: str) -> None:
        item = self.batch[index]
        LOG.warning("refused a restored %s instance, never sent: %s",
                    _name(item.instance.sop_class_uid), reason)  # fmt: skip
        self.settle(index, DeliveryOutcome(item, OutcomeKind.REFUSED, f"refused: {reason}"))

    def settle(self, index: int, outcome: DeliveryOutcome) -> None:
        with self._lock:
            if self.outcomes[index] is not None:
                return
            self.outcomes[index] = outcome
            if self._progress is None:
                return
            try:
                self._progress(outcome)
            except Exception as exc:
                LOG.warning("progress callback raised %s; delivery goes on", type(exc).__name__)

    def finish(self) -> list[DeliveryOutcome]:
        """Every outcome; copies take their first item's; what an interruption left unsent
        is reported as failed here (but not to ``progress``: it was never tried)."""
        for index in self._copies:
            first = self.outcomes[self._first[self.batch[index].instance.sha256]]
            if first is not None:
                self.settle(index, dataclasses.replace(first, item=self.batch[index]))
        return [
            o if o is not None
            else DeliveryOutcome(self.batch[i], OutcomeKind.FAILED, "not sent: interrupted")
            for i, o in enumerate(self.outcomes)
        ]  # fmt: skip


async def _run_in_thread(
    work: Callable[[list[Restored], threading.Event, Progress | None], list[DeliveryOutcome]],
    batch: list[Restored],
    progress: Progress | None,
) -> list[DeliveryOutcome]:
    """Run ``work`` in a thread; on cancellation, ask it to stop, wait for it, re-raise."""
    stop = threading.Event()
    task = asyncio.ensure_future(asyncio.to_thread(work, batch, stop, progress))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            LOG.error("delivery failed while stopping: %s", task.exception())
        raise


def _check_journal(journal: RecoveryJournal, identity: str) -> None:
    if journal.target != identity:
        raise ValueError(f"the journal is open for {journal.target!r}, not {identity!r}")


def _entry(item: Restored, name: str = "") -> JournalEntry:
    return JournalEntry.of(item.instance, item.study_uid, name)


def _shape_mismatch(info: os.stat_result, size: int, what: str = "the restored file") -> str:
    if not stat.S_ISREG(info.st_mode):
        return f"{what} is not a regular file"
    if info.st_size != size:
        return f"{what} has {info.st_size} bytes, the catalog says {size}"
    return ""


def _name(uid: str) -> str:
    return str(UID(uid).name) or "unknown SOP class"
