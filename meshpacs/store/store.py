"""The fragment store: partners' fragments on this node's disk, verified, durable, per-owner.

Layout of the store's directory (the site's ``fragments/``)::

    index.sqlite        one row per fragment: owner, size, share, set hash, state, lease
    lock                held (flock) while a process has the store open
    tmp/*.part          fragments still arriving; emptied at every open
    00/ .. ff/          fan-out by the first two hex characters of the fragment ID
        ab/abcdef...    the fragment, exactly the bytes the owner sent, named by its ID

Every method is synchronous and thread-safe (the async transport calls it through
``asyncio.to_thread``): one lock guards the index and the quota reservations, and the slow
work (receiving, fsyncing, verifying, reading) runs outside it. Only the step that makes a
fragment visible, index row then rename then row again, runs under the lock, so a reader
never sees a half-made change and two puts of one ID cannot interleave.

Rules a partner meets:

- A fragment ID names at most one fragment, owned by the site that first stored it: only
  that site may overwrite or delete it (:class:`~meshpacs.errors.Forbidden` otherwise).
- Each owner has a quota (:class:`~meshpacs.store.quota.QuotaPolicy`); a put is refused
  (:class:`~meshpacs.errors.QuotaExceeded`) *before anything is created* when its size,
  added to what the owner has stored and is still sending, would exceed it. An overwrite
  is charged only the difference, since it replaces the old fragment.
- A fragment is kept only if it verifies in full (see :mod:`meshpacs.store.pending`).
  The same owner sending the same fragment again is a success that rewrites nothing
  (but its lease, below).
- A fragment is kept only while its owner keeps leasing it. A put leases it for the
  policy's ``lease_seconds`` from now (never less than it already had); the owner renews
  (:meth:`FragmentStore.renew`) for at most ``max_lease_seconds`` at a time; and
  :meth:`FragmentStore.expire` removes what has been out of lease for longer than the
  grace the node allows, so a site that left without deleting stops taking up room.

Crash safety: the order of the steps, and how an open repairs what a crash cut short, is
explained in :mod:`meshpacs.store.reconcile`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from meshpacs.erasure.decoder import VerifiedFragment, verify_fragment
from meshpacs.erasure.layout import HEADER_SIZE
from meshpacs.errors import (
    ConfigError,
    CorruptFragment,
    Forbidden,
    FormatError,
    LimitExceeded,
    MeshError,
    QuotaExceeded,
)
from meshpacs.store.durable import fsync_dir, make_dir, make_temp, remove_file, replace_file
from meshpacs.store.durable import sweep_dir as _sweep_dir
from meshpacs.store.index import FragmentIndex, FragmentState, StoredFragment
from meshpacs.store.names import (
    FANOUT,
    fragment_path,
    validate_fragment_id,
    validate_site_id,
)
from meshpacs.store.pending import PendingFragment
from meshpacs.store.quota import QuotaPolicy
from meshpacs.store.reconcile import ReconcileReport, reconcile, settle

__all__ = [
    "DEFAULT_MAX_FRAGMENT_BYTES",
    "INDEX_NAME",
    "MAX_LIST",
    "MAX_READ_BYTES",
    "MAX_RENEW",
    "TEMP_DIR",
    "FragmentStore",
    "ScrubFinding",
]

# A fragment is one share of one study's bundle: 4 GiB is a 16 GiB study at k = 4, far
# past any study, and the bound keeps a lying partner from reserving the whole disk.
DEFAULT_MAX_FRAGMENT_BYTES = 4 * 1024**3
# One read_range answer is held in memory whole: 16 MiB keeps 64 concurrent ones under 1 GiB.
MAX_READ_BYTES = 16 * 1024 * 1024
# Rows per list_owned page: a few MB of records at most.
MAX_LIST = 10_000
# Fragment IDs per renewal: one transaction, and one transport request of 64 KiB of IDs.
MAX_RENEW = 1024

INDEX_NAME = "index.sqlite"
TEMP_DIR = "tmp"
_LOCK_NAME = "lock"


@dataclass(frozen=True)
class ScrubFinding:
    """A held fragment that no longer verifies, now quarantined; for telling its owner."""

    fragment_id: str
    owner_site: str
    share: int
    reason: str


class FragmentStore:
    """Partners' fragments under ``directory``; open it once per process, close it at exit.

    Opening creates what is missing, takes the directory's lock (:class:`ConfigError` if
    another store holds it), empties ``tmp/`` and reconciles the index with the files
    (:mod:`meshpacs.store.reconcile`); ``reconciled`` says what that repaired, for the log.
    """

    def __init__(
        self,
        directory: Path,
        quota: QuotaPolicy,
        *,
        max_fragment_bytes: int = DEFAULT_MAX_FRAGMENT_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.quota = quota
        self.max_fragment_bytes = max_fragment_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: set[PendingFragment] = set()
        self._temp_dir = directory / TEMP_DIR
        self._lock_fd = _prepare_directory(directory)
        try:
            temp_removed = _sweep_dir(self._temp_dir)
            self._index = FragmentIndex.open(directory / INDEX_NAME)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._closed = False
        try:
            self.reconciled: ReconcileReport = reconcile(self._index, directory, temp_removed)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"FragmentStore({str(self.directory)!r})"

    # --- receiving -------------------------------------------------------------------

    def begin_put(self, fragment_id: str, owner_site: str, size: int) -> PendingFragment:
        """Reserve room for a fragment of ``size`` bytes and open it for streaming.

        Raises, before creating anything: :class:`FormatError` for a malformed ID,
        :class:`LimitExceeded` for a size over the bound, :class:`Forbidden` if another
        site owns (or is sending) this ID, :class:`QuotaExceeded` if it does not fit.
        """
        fragment_id = validate_fragment_id(fragment_id)
        owner_site = validate_site_id(owner_site)
        self._check_size(size)
        with self._lock:
            self._check_open()
            existing = self._index.get(fragment_id)
            self._check_owner(fragment_id, owner_site, existing)
            self._check_quota(owner_site, size, existing)
            fd, temp_path = make_temp(self._temp_dir)
            pending = PendingFragment(
                fragment_id, owner_site, size, fd, temp_path, self._publish, self._release
            )
            self._pending.add(pending)
        return pending

    # --- answering ---------------------------------------------------------------------

    def has(self, fragment_id: str) -> StoredFragment | None:
        fragment_id = validate_fragment_id(fragment_id)
        with self._lock:
            self._check_open()
            return self._visible(fragment_id)

    def open_read(self, fragment_id: str) -> BinaryIO | None:
        """The fragment's bytes as a binary file (the caller closes it); None if not held.

        Opened under the lock, so a concurrent overwrite or delete cannot swap the file
        between the lookup and the open; once open, the reader keeps what it opened.
        """
        opened = self._open_fragment(validate_fragment_id(fragment_id))
        return opened[1] if opened else None

    def read_range(self, fragment_id: str, offset: int, length: int) -> bytes | None:
        """``length`` bytes at ``offset``, all inside the fragment; None if not held."""
        fragment_id = validate_fragment_id(fragment_id)
        _check_range(offset, length)
        opened = self._open_fragment(fragment_id)
        if opened is None:
            return None
        record, source = opened
        with source:
            if offset + length > record.size:
                raise LimitExceeded(
                    f"range {offset}+{length} runs past the fragment's {record.size} bytes"
                )
            source.seek(offset)
            data = source.read(length)
        if len(data) != length:
            raise CorruptFragment("stored fragment is shorter than its index row", record.share)
        return data

    def usage(self, owner_site: str) -> int:
        """Bytes of ``owner_site``'s fragments stored here (not counting ones still arriving)."""
        owner_site = validate_site_id(owner_site)
        with self._lock:
            self._check_open()
            return self._index.usage(owner_site)

    def total_usage(self) -> int:
        """Bytes of every partner's fragments stored here (from the index, no disk walk)."""
        with self._lock:
            self._check_open()
            return self._index.total_usage()

    def available(self, owner_site: str) -> int:
        """Bytes ``owner_site`` may still send: its quota less stored and arriving bytes."""
        owner_site = validate_site_id(owner_site)
        with self._lock:
            self._check_open()
            used = self._index.usage(owner_site) + self._arriving(owner_site)
            return max(0, self.quota.limit_for(owner_site) - used)

    def list_owned(
        self, owner_site: str, *, after: str | None = None, limit: int = MAX_LIST
    ) -> list[StoredFragment]:
        """One page of ``owner_site``'s fragments in ID order, starting after ID ``after``."""
        owner_site = validate_site_id(owner_site)
        start = "" if after is None else validate_fragment_id(after)
        if not 1 <= limit <= MAX_LIST:
            raise LimitExceeded(f"list page of {limit} rows; 1..{MAX_LIST} allowed")
        with self._lock:
            self._check_open()
            rows = self._index.owned(owner_site, start, limit)
        return [row for row in rows if row.state is not FragmentState.WRITING]

    def held_ids(self, *, after: str | None = None, limit: int = MAX_LIST) -> list[str]:
        """One page of every fragment held here (any owner), in ID order, after ``after``.

        For the holder's periodic re-announcement of what it holds (DHT provider records).
        """
        start = "" if after is None else validate_fragment_id(after)
        if not 1 <= limit <= MAX_LIST:
            raise LimitExceeded(f"list page of {limit} rows; 1..{MAX_LIST} allowed")
        with self._lock:
            self._check_open()
            return self._index.held(start, limit)

    # --- scrubbing ---------------------------------------------------------------------

    def scrub(self, fragment_id: str) -> ScrubFinding | None:
        """Re-verify one held fragment in full against the set hash it was stored with.

        None if it is intact (or no longer held). A fragment that fails (a flipped bit, a
        truncated or zero-filled file, a file gone) is **quarantined**: its row stays, so
        the owner's quota and ownership stand, but it is no longer served (has, get,
        audit all answer "not held"), and the owner's own put of the same ID replaces it.
        The file is left where it is, as evidence, until the owner deletes or replaces it.
        The caller rate-limits; this reads the whole fragment.
        """
        fragment_id = validate_fragment_id(fragment_id)
        opened = self._open_fragment(fragment_id)
        if opened is None:
            record = self.has(fragment_id)
            if record is None:
                return None
            reason: str | None = "the file is gone"
        else:
            record, source = opened
            reason = _failed_check(source, record)
        if reason is None:
            return None
        with self._lock:
            self._check_open()
            if self._index.get(fragment_id) != record:
                return None  # replaced or deleted meanwhile: what was checked is gone
            self._index.set_state(fragment_id, FragmentState.QUARANTINED)
        return ScrubFinding(fragment_id, record.owner_site, record.share, reason)

    def quarantined(self) -> list[StoredFragment]:
        """Fragments scrub found bad that their owners have not yet replaced or deleted."""
        with self._lock:
            self._check_open()
            found = (self._index.get(i) for i in self._index.in_state(FragmentState.QUARANTINED))
            return [record for record in found if record is not None]

    # --- leases ------------------------------------------------------------------------

    def renew(self, owner_site: str, fragment_ids: Sequence[str], seconds: float) -> int:
        """Lease ``owner_site``'s listed fragments for ``seconds`` from now; how many are its.

        ``seconds`` is cut to the policy's ``max_lease_seconds``, and a lease already
        running longer is kept, so a renewal never shortens one. Whole and quarantined
        fragments are renewed (a quarantined one is the owner's until it acts on it); an
        ID that is not held, or is another site's, is skipped and not counted, so the
        answer says nothing about what this node holds for others. An ID listed twice
        counts once. :class:`LimitExceeded` for more than :data:`MAX_RENEW` IDs or a
        duration that is not a finite number > 0; :class:`FormatError` for a malformed ID.
        """
        owner_site = validate_site_id(owner_site)
        if len(fragment_ids) > MAX_RENEW:
            raise LimitExceeded(f"renewal of {len(fragment_ids)} fragments; {MAX_RENEW} allowed")
        wanted = list(dict.fromkeys(validate_fragment_id(i) for i in fragment_ids))
        _check_seconds("lease duration", seconds, allow_zero=False)
        with self._lock:
            self._check_open()
            until = self._clock() + min(seconds, self.quota.max_lease_seconds)
            return self._index.renew(owner_site, wanted, until, self.quota.lease_seconds)

    def expire(self, grace_seconds: float, limit: int = 1000) -> list[str]:
        """Remove fragments whose lease ended over ``grace_seconds`` ago; their IDs.

        At most ``limit`` (1..:data:`MAX_LIST`) per call, the longest out of lease first,
        so a caller repeats until fewer come back. Whole and quarantined fragments alike;
        one stored before leases existed counts as leased for ``lease_seconds`` from its
        put. Removed as :meth:`delete` removes, rows then files; an ``OSError`` while
        removing the files comes after the rows are gone, and the next open removes them.
        """
        _check_seconds("grace", grace_seconds, allow_zero=True)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
            raise LimitExceeded(f"expiry of {limit} fragments; 1..{MAX_LIST} allowed")
        with self._lock:
            self._check_open()
            cutoff = self._clock() - grace_seconds
            expired = self._index.expired(cutoff, self.quota.lease_seconds, limit)
            if expired:
                self._index.remove_all(expired)
                # Under the lock: an owner's new put of one of these IDs waits for it, so
                # its new file cannot be the one unlinked here.
                _remove_files(self.directory, expired)
        return expired

    # --- removing ----------------------------------------------------------------------

    def delete(self, fragment_id: str, requester_site: str) -> bool:
        """Delete a fragment on behalf of its owner; False if it is not held here.

        The row goes first, then the file: a crash in between leaves a file no row
        claims, which the next open removes. :class:`Forbidden` if ``requester_site``
        is not the owner. An ``OSError`` while removing the file comes after the row is
        gone: the fragment is deleted, and the next open removes the file.
        """
        fragment_id = validate_fragment_id(fragment_id)
        requester_site = validate_site_id(requester_site)
        with self._lock:
            self._check_open()
            existing = self._index.get(fragment_id)
            if existing is None:
                return False
            if existing.owner_site != requester_site:
                raise Forbidden("only the site that stored a fragment may delete it")
            self._index.remove(fragment_id)
            remove_file(fragment_path(self.directory, fragment_id))
        return True

    # --- lifetime ----------------------------------------------------------------------

    def close(self) -> None:
        """Close the index and release the directory; pending fragments can no longer commit."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._index.close()
            os.close(self._lock_fd)

    def __enter__(self) -> FragmentStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals -------------------------------------------------------------------

    def _publish(self, pending: PendingFragment, verified: VerifiedFragment) -> StoredFragment:
        """Put a verified, fsynced temp file in place (called by ``PendingFragment.commit``)."""
        try:
            with self._lock:
                # The reservation ends as the row appears: the quota never counts both.
                self._pending.discard(pending)
                self._check_open()
                existing = self._index.get(pending.fragment_id)
                self._check_owner(pending.fragment_id, pending.owner_site, existing)
                if existing is not None and self._is_same(existing, verified):
                    return self._lease_again(existing)
                return self._place(pending, verified, existing)
        finally:
            pending.temp_path.unlink(missing_ok=True)

    def _place(
        self,
        pending: PendingFragment,
        verified: VerifiedFragment,
        existing: StoredFragment | None,
    ) -> StoredFragment:
        """Row ``writing``, rename, row ``ok``; on failure, settle the row from the disk."""
        now = self._clock()
        record = StoredFragment(
            fragment_id=pending.fragment_id,
            owner_site=pending.owner_site,
            size=pending.size,
            share=verified.header.share,
            set_hash=verified.set_hash,
            stored_at=now,
            lease_expires=self._lease_after_put(existing, now),
            state=FragmentState.WRITING,
        )
        self._index.put(record)
        try:
            replace_file(pending.temp_path, fragment_path(self.directory, record.fragment_id))
            self._index.set_state(record.fragment_id, FragmentState.OK)
        except BaseException:
            # Best effort now; the next open settles it anyway.
            with contextlib.suppress(MeshError, OSError):
                settle(self._index, self.directory, record.fragment_id)
            raise
        return dataclasses.replace(record, state=FragmentState.OK)

    def _lease_again(self, existing: StoredFragment) -> StoredFragment:
        """The owner sent a fragment it already has here: a put all the same, for its lease."""
        until = self._lease_after_put(existing, self._clock())
        self._index.renew(
            existing.owner_site, [existing.fragment_id], until, self.quota.lease_seconds
        )
        return dataclasses.replace(existing, lease_expires=until)

    def _lease_after_put(self, existing: StoredFragment | None, now: float) -> float:
        """A put leases for the policy's time from ``now``, never less than the row had."""
        fresh = now + self.quota.lease_seconds
        if existing is None:
            return fresh
        return max(fresh, self._lease_of(existing))

    def _lease_of(self, record: StoredFragment) -> float:
        # A row stored before leases existed counts from when it was stored, as in the index.
        if record.lease_expires is None:
            return record.stored_at + self.quota.lease_seconds
        return record.lease_expires

    def _is_same(self, existing: StoredFragment, verified: VerifiedFragment) -> bool:
        """Whether a verified fragment is byte for byte the one already stored, and intact.

        Two fragments that both verified, with the same share number and set hash, have
        the same header, trailer and (through the block hashes) blocks.
        """
        return (
            existing.state is FragmentState.OK
            and existing.share == verified.header.share
            and existing.set_hash == verified.set_hash
            and existing.size == verified.header.fragment_size
            and fragment_path(self.directory, existing.fragment_id).is_file()
        )

    def _release(self, pending: PendingFragment) -> None:
        with self._lock:
            self._pending.discard(pending)

    def _visible(self, fragment_id: str) -> StoredFragment | None:
        record = self._index.get(fragment_id)
        if record is None or record.state is not FragmentState.OK:
            return None
        return record

    def _open_fragment(self, fragment_id: str) -> tuple[StoredFragment, io.BufferedReader] | None:
        with self._lock:
            self._check_open()
            record = self._visible(fragment_id)
            if record is None:
                return None
            try:
                source = fragment_path(self.directory, fragment_id).open("rb")
            except FileNotFoundError:
                return None
        return record, source

    def _arriving(self, owner_site: str) -> int:
        return sum(p.size for p in self._pending if p.owner_site == owner_site)

    def _check_size(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int):
            raise CorruptFragment("declared fragment size is not a whole number")
        if size > self.max_fragment_bytes:
            raise LimitExceeded(
                f"fragment of {size} bytes, over this node's {self.max_fragment_bytes}"
            )
        if size < HEADER_SIZE:
            raise CorruptFragment(f"declared size {size} is smaller than a fragment header")

    def _check_owner(
        self, fragment_id: str, owner_site: str, existing: StoredFragment | None
    ) -> None:
        if existing is not None and existing.owner_site != owner_site:
            raise Forbidden("this fragment ID belongs to another site")
        if any(p.fragment_id == fragment_id and p.owner_site != owner_site for p in self._pending):
            raise Forbidden("another site is sending this fragment ID")

    def _check_quota(self, owner_site: str, size: int, existing: StoredFragment | None) -> None:
        limit = self.quota.limit_for(owner_site)
        used = self._index.usage(owner_site) + self._arriving(owner_site)
        # An overwrite frees the old fragment when it lands.
        freed = existing.size if existing is not None else 0
        if used - freed + size > limit:
            raise QuotaExceeded(
                f"site {owner_site} would hold {used - freed + size} bytes here,"
                f" over its quota of {limit}"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the fragment store is closed")


def _failed_check(source: io.BufferedReader, record: StoredFragment) -> str | None:
    """Why a stored fragment fails verification, or None if it passes (closes ``source``)."""
    with source:
        size = source.seek(0, os.SEEK_END)
        if size != record.size:
            return f"the file is {size} bytes, not the {record.size} stored"
        source.seek(0)
        try:
            verified = verify_fragment(source, record.set_hash)
        except (FormatError, LimitExceeded) as error:
            return str(error)
    if verified.header.share != record.share:
        return f"the file holds share {verified.header.share}, not {record.share}"
    return None


def _check_seconds(what: str, value: float, *, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LimitExceeded(f"{what} must be a number of seconds")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise LimitExceeded(f"{what} must be a finite number of seconds {bound}")


def _remove_files(root: Path, fragment_ids: Sequence[str]) -> None:
    """Unlink the (validated) fragments' files, then fsync each fan-out directory once.

    One fsync per directory rather than per file: an expiry may remove a thousand.
    """
    touched: set[Path] = set()
    for fragment_id in fragment_ids:
        path = fragment_path(root, fragment_id)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            touched.add(path.parent)
    for directory in sorted(touched):
        fsync_dir(directory)


def _check_range(offset: int, length: int) -> None:
    for value in (offset, length):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise LimitExceeded("read range offset and length must be whole numbers >= 0")
    if length > MAX_READ_BYTES:
        raise LimitExceeded(f"read of {length} bytes, over the {MAX_READ_BYTES} allowed")


def _prepare_directory(directory: Path) -> int:
    """Create the store's directories durably and lock it; the lock's descriptor."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock_fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise ConfigError(
            f"fragment store {directory} is already open (another node process?)"
        ) from None
    try:
        for name in (TEMP_DIR, *FANOUT):
            make_dir(directory / name)
        # Every open, not only when something was created: this also covers directories
        # made by a process that died before syncing them.
        fsync_dir(directory)
        fsync_dir(directory.parent)
    except BaseException:
        os.close(lock_fd)
        raise
    return lock_fd
