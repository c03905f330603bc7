"""The audit trail's file: append-only, hash-chained, sealed with the site's trail key.

Two files in the trail's directory. ``atna.log`` holds the entries, back to back, each
chained to the one before it::

    offset   size  field
    0        1     version = 1
    1        8     sequence number, big-endian; 1 for the first entry, then +1 each
    9        8     time appended, microseconds since 1970-01-01 UTC, big-endian
    17       32    chain hash of the entry before (entry 1: GENESIS)
    49       4     message length L, big-endian, 1 .. MAX_MESSAGE_BYTES
    53       L     message: one ATNA AuditMessage (UTF-8 XML, meshpacs.trail.messages)
    53+L     32    chain hash = SHA-256("meshpacs/trail/v1/entry" || bytes 0 .. 53+L)
    85+L     32    seal = HMAC-SHA256(trail key, "meshpacs/trail/v1/seal" || chain hash)
    117+L          the next entry

so the chain hash covers the previous entry's chain hash and every field of this one.
``atna.head`` (81 bytes, replaced atomically after every append) records the last entry::

    0    1   version = 1
    1    8   entries: the last entry's sequence number (0: none yet)
    9    8   offset in atna.log just past that entry
    17   32  that entry's chain hash (GENESIS when none)
    49   32  HMAC-SHA256(trail key, "meshpacs/trail/v1/head" || bytes 0 .. 49)

What each check catches. A changed byte breaks that entry's chain hash or seal; a
deleted, inserted or reordered entry breaks the sequence numbers and the chain; an entry
forged and appended by someone without the key has no valid seal; and a log cut short
(whole entries or half of one) ends before the entry the signed head names. What it
cannot catch alone: the log and its head both rolled back to an older copy, or the
directory deleted; forwarding every message to a syslog collector (meshpacs.trail.syslog)
keeps a copy out of reach for that.

An append is fsynced before it returns, then the head is replaced: an event acknowledged
survives a crash. A crash between the two leaves sealed entries after the head's, which
:func:`verify` accepts (their seals prove they are the site's) and the next append adopts;
a crash mid-write leaves part of an entry after the head's last one, never acknowledged,
which :func:`verify` reports as a note and the next append cuts off. Appends from several
processes (the node, ``meshpacs forget``) take an exclusive ``flock`` on the log.
Every length read is bounded before anything is allocated.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshpacs.durable import fsync_dir, read_bounded, write_all, write_atomic
from meshpacs.errors import KeyMaterialError, LimitExceeded, TrailBroken

__all__ = [
    "ENTRY_VERSION",
    "GENESIS",
    "HEAD_FILE",
    "HEAD_SIZE",
    "LOG_FILE",
    "MAX_MESSAGE_BYTES",
    "Entry",
    "TrailLog",
    "TrailReport",
    "encode_entry",
    "read_entries",
    "verify",
]

LOG = logging.getLogger("meshpacs.trail")

ENTRY_VERSION = 1
HEAD_VERSION = 1
LOG_FILE = "atna.log"
HEAD_FILE = "atna.head"
MAX_MESSAGE_BYTES = 1024 * 1024
GENESIS = hashlib.sha256(b"meshpacs/trail/v1/genesis").digest()

_ENTRY_LABEL = b"meshpacs/trail/v1/entry"
_SEAL_LABEL = b"meshpacs/trail/v1/seal"
_HEAD_LABEL = b"meshpacs/trail/v1/head"
_FIXED = struct.Struct(">BQQ32sI")  # version, sequence, time, previous chain hash, length
_TAIL = 64  # chain hash + seal
_HEAD = struct.Struct(">BQQ32s")
HEAD_SIZE = _HEAD.size + 32
_FILE_MODE = 0o600
_DIR_MODE = 0o700
_READ_CHUNK = 1024 * 1024
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class Entry:
    """One entry read back: ``offset`` where it starts, ``end`` just past it."""

    sequence: int
    time_us: int
    previous: bytes = field(repr=False)
    message: bytes = field(repr=False)
    chain: bytes = field(repr=False)
    offset: int = 0
    end: int = 0


@dataclass(frozen=True)
class _Head:
    entries: int
    end: int
    chain: bytes


@dataclass(frozen=True)
class TrailReport:
    """What :func:`verify` found. ``ok`` only when nothing was changed or cut.

    ``first_bad`` is the 1-based position of the first entry that fails (None when the
    problem is the head or the log as a whole); ``problem`` says what, for an administrator.
    ``notes`` are harmless findings (a crash left an unfinished entry).
    """

    directory: str
    ok: bool
    entries: int  # entries checked and found intact
    signed_entries: int  # entries the signed head vouches for
    first_bad: int | None = None
    problem: str | None = None
    notes: tuple[str, ...] = ()
    first_time_us: int | None = None
    last_time_us: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "ok": self.ok,
            "entries": self.entries,
            "signed_entries": self.signed_entries,
            "first_bad": self.first_bad,
            "problem": self.problem,
            "notes": list(self.notes),
            "first_time_us": self.first_time_us,
            "last_time_us": self.last_time_us,
        }


def _require_key(key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) < 16:
        raise KeyMaterialError("the audit trail key must be at least 16 bytes")
    return key


def _chain(fixed_and_message: bytes) -> bytes:
    return hashlib.sha256(_ENTRY_LABEL + fixed_and_message).digest()


def _seal(key: bytes, chain: bytes) -> bytes:
    return hmac.new(key, _SEAL_LABEL + chain, hashlib.sha256).digest()


def encode_entry(key: bytes, sequence: int, time_us: int, previous: bytes, message: bytes) -> bytes:
    """The bytes of one entry (for :class:`TrailLog` and for tests that forge one)."""
    if not 1 <= len(message) <= MAX_MESSAGE_BYTES:
        raise LimitExceeded(
            f"an audit message is 1 to {MAX_MESSAGE_BYTES} bytes, not {len(message)}"
        )
    body = _FIXED.pack(ENTRY_VERSION, sequence, time_us, previous, len(message)) + message
    chain = _chain(body)
    return body + chain + _seal(key, chain)


def _encode_head(key: bytes, head: _Head) -> bytes:
    body = _HEAD.pack(HEAD_VERSION, head.entries, head.end, head.chain)
    return body + hmac.new(key, _HEAD_LABEL + body, hashlib.sha256).digest()


def _decode_head(key: bytes, data: bytes) -> _Head:
    if len(data) != HEAD_SIZE:
        raise TrailBroken(f"the head file is {len(data)} bytes, not {HEAD_SIZE}")
    if data[0] != HEAD_VERSION:
        raise TrailBroken(f"the head file has version {data[0]}; this reader knows 1")
    body, mac = data[: _HEAD.size], data[_HEAD.size :]
    expected = hmac.new(key, _HEAD_LABEL + body, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise TrailBroken(
            "the head file's seal does not verify with this site's key"
            " (it was changed, or this is another site's trail)"
        )
    _, entries, end, chain = _HEAD.unpack(body)
    return _Head(entries, end, chain)


class _Reader:
    """Entries one by one from a binary stream, every length bounded."""

    def __init__(self, stream: Any, key: bytes, start: int = 0) -> None:
        self._stream = stream
        self._key = key
        self.offset = start
        self.partial = 0  # bytes of an entry cut short at the end

    def next(self, expected_sequence: int, previous: bytes) -> Entry | None:
        """The next entry, checked; None at a clean end. Raises TrailBroken."""
        position = expected_sequence
        fixed = self._stream.read(_FIXED.size)
        if not fixed:
            return None
        if len(fixed) < _FIXED.size:
            self.partial = len(fixed)
            return None
        version, sequence, time_us, prev, length = _FIXED.unpack(fixed)
        if version != ENTRY_VERSION:
            raise TrailBroken(f"version byte {version} where an entry should start", position)
        if not 1 <= length <= MAX_MESSAGE_BYTES:
            raise TrailBroken(
                f"message length {length} is outside 1 .. {MAX_MESSAGE_BYTES}", position
            )
        rest = self._stream.read(length + _TAIL)
        if len(rest) < length + _TAIL:
            self.partial = len(fixed) + len(rest)
            return None
        message, chain, seal = rest[:length], rest[length : length + 32], rest[length + 32 :]
        if not hmac.compare_digest(chain, _chain(fixed + message)):
            raise TrailBroken("its contents do not match its chain hash (changed)", position)
        if not hmac.compare_digest(seal, _seal(self._key, chain)):
            raise TrailBroken(
                "its seal does not verify with this site's key (forged or changed)", position
            )
        if sequence != expected_sequence:
            raise TrailBroken(
                f"it carries sequence number {sequence} where {expected_sequence} was expected"
                " (an entry was removed, inserted or moved)",
                position,
            )
        if not hmac.compare_digest(prev, previous):
            raise TrailBroken(
                "it does not chain to the entry before it (an entry was removed, inserted"
                " or moved)",
                position,
            )
        start = self.offset
        self.offset += _FIXED.size + length + _TAIL
        return Entry(sequence, time_us, prev, message, chain, start, self.offset)


def read_entries(directory: Path, key: bytes) -> Iterator[Entry]:
    """Every entry of the trail in ``directory``, each checked as it is read.

    Raises ``TrailBroken`` at the first that fails; checks neither the head nor the end
    (that is :func:`verify`).
    """
    key = _require_key(key)
    path = directory / LOG_FILE
    with path.open("rb", buffering=_READ_CHUNK) as stream:
        reader = _Reader(stream, key)
        previous, sequence = GENESIS, 1
        while (entry := reader.next(sequence, previous)) is not None:
            yield entry
            previous, sequence = entry.chain, sequence + 1


def verify(directory: Path, key: bytes) -> TrailReport:
    """Check the whole trail in ``directory`` against its head; never raises on damage."""
    key = _require_key(key)
    where = str(directory)
    log_path, head_path = directory / LOG_FILE, directory / HEAD_FILE
    has_log, has_head = log_path.exists(), head_path.exists()
    if not has_log and not has_head:
        return TrailReport(where, False, 0, 0, problem=f"there is no audit trail in {directory}")
    if not has_head:
        return TrailReport(
            where,
            False,
            0,
            0,
            problem=f"the head file {HEAD_FILE} is missing: the trail's end cannot be checked",
        )
    try:
        head = _decode_head(
            key, read_bounded(head_path, HEAD_SIZE, "audit trail head", TrailBroken)
        )
    except TrailBroken as exc:
        return TrailReport(where, False, 0, 0, problem=exc.reason)
    except Exception as exc:
        return TrailReport(where, False, 0, 0, problem=f"cannot read the head file: {exc}")
    if not has_log:
        if head.entries == 0:
            return TrailReport(where, True, 0, 0, notes=("no event recorded yet",))
        return TrailReport(
            where,
            False,
            0,
            head.entries,
            problem=f"the log file {LOG_FILE} is missing; its head records {head.entries} entries",
        )
    return _walk(where, log_path, key, head)


def _walk(where: str, log_path: Path, key: bytes, head: _Head) -> TrailReport:
    checked, first, last = 0, None, None
    notes: list[str] = []

    def broken(problem: str, entry: int | None) -> TrailReport:
        return TrailReport(where, False, checked, head.entries, entry, problem, tuple(notes),
                           first, last)  # fmt: skip

    try:
        stream = log_path.open("rb", buffering=_READ_CHUNK)
    except OSError as exc:
        return broken(f"cannot read the log file: {exc.strerror or exc}", None)
    with stream:
        reader = _Reader(stream, key)
        previous, sequence = (GENESIS, 1)
        while True:
            try:
                entry = reader.next(sequence, previous)
            except TrailBroken as exc:
                return broken(exc.reason, exc.entry)
            except OSError as exc:
                return broken(f"cannot read the log file: {exc.strerror or exc}", sequence)
            if entry is None:
                break
            if entry.sequence == head.entries and (
                entry.end != head.end or not hmac.compare_digest(entry.chain, head.chain)
            ):
                return broken("it is not the entry the signed head records", entry.sequence)
            checked += 1
            first = entry.time_us if first is None else first
            last = entry.time_us
            previous, sequence = entry.chain, sequence + 1
    if checked < head.entries:
        cut = " and part of another" if reader.partial else ""
        return broken(
            f"the log ends after {checked} entries{cut}, but its signed head records"
            f" {head.entries}: entries were cut from the end",
            checked + 1,
        )
    if checked > head.entries:
        notes.append(
            f"{checked - head.entries} sealed entries after the head's last (the writer"
            " stopped before updating the head; the next event updates it)"
        )
    if reader.partial:
        notes.append(
            f"{reader.partial} bytes of an unfinished entry at the end (a crash while"
            " writing it; it was never acknowledged and the next event removes it)"
        )
    return TrailReport(where, True, checked, head.entries, None, None, tuple(notes), first, last)


class TrailLog:
    """Appends to the trail in ``directory``; safe across threads and processes."""

    def __init__(self, directory: Path, key: bytes, clock: Any = time.time) -> None:
        self.directory = directory
        self._key = _require_key(key)
        self._clock = clock
        self._lock = threading.Lock()

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_FILE

    @property
    def head_path(self) -> Path:
        return self.directory / HEAD_FILE

    @property
    def exists(self) -> bool:
        """Whether the trail was started (either of its files is there)."""
        return self.log_path.exists() or self.head_path.exists()

    def append(self, message: bytes) -> Entry:
        """Append ``message``; returns once it (and then the head) is on stable storage.

        Raises ``TrailBroken`` when the trail as found does not verify at its end (the
        head's seal, the head's entry, the entries after it): nothing is appended to a
        trail that was tampered with, so the damage stays for ``verify`` to report.
        """
        if not 1 <= len(message) <= MAX_MESSAGE_BYTES:
            raise LimitExceeded(
                f"an audit message is 1 to {MAX_MESSAGE_BYTES} bytes, not {len(message)}"
            )
        with self._lock:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                head = self._tail(fd)
                time_us = int(self._clock() * 1_000_000)
                data = encode_entry(self._key, head.entries + 1, time_us, head.chain, message)
                os.lseek(fd, head.end, os.SEEK_SET)
                write_all(fd, data)
                os.fsync(fd)
                entry_chain = data[-_TAIL:-32]
                new_head = _Head(head.entries + 1, head.end + len(data), entry_chain)
                write_atomic(self.head_path, _encode_head(self._key, new_head), _FILE_MODE)
            finally:
                os.close(fd)  # releases the flock
        return Entry(new_head.entries, time_us, head.chain, message, entry_chain,
                     head.end, new_head.end)  # fmt: skip

    def _open(self) -> int:
        """The log, opened for writing; the directory and an empty head made if new."""
        if not self.directory.exists():
            self.directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            fsync_dir(self.directory.parent)
        fresh = not self.log_path.exists() and not self.head_path.exists()
        if fresh:
            # The head first: from then on, a log without its head is always tampering.
            write_atomic(self.head_path, _encode_head(self._key, _Head(0, 0, GENESIS)), _FILE_MODE)
        fd = os.open(self.log_path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, _FILE_MODE)
        if fresh:
            with contextlib.suppress(OSError):
                fsync_dir(self.directory)
        return fd

    def _tail(self, fd: int) -> _Head:
        """Where the next entry goes, checked; under the lock."""
        try:
            data = read_bounded(self.head_path, HEAD_SIZE, "audit trail head", TrailBroken)
            head = _decode_head(self._key, data)
        except TrailBroken:
            raise
        except Exception as exc:
            raise TrailBroken(f"cannot read the head file: {exc}") from None
        size = os.fstat(fd).st_size
        if size < head.end:
            raise TrailBroken(
                f"the log is {size} bytes, shorter than the {head.end} its signed head"
                " records: entries were cut from the end"
            )
        if head.entries:
            tail = os.pread(fd, _TAIL, head.end - _TAIL)
            chain, seal = tail[:32], tail[32:]
            if not hmac.compare_digest(chain, head.chain) or not hmac.compare_digest(
                seal, _seal(self._key, chain)
            ):
                raise TrailBroken("the last entry is not the one the signed head records")
        if size == head.end:
            return head
        return self._adopt(fd, head, size)

    def _adopt(self, fd: int, head: _Head, size: int) -> _Head:
        """Sealed entries a crash left after the head's are kept; a partial one is cut."""
        with os.fdopen(os.dup(fd), "rb") as stream:
            stream.seek(head.end)
            reader = _Reader(stream, self._key, head.end)
            sequence, previous, end = head.entries + 1, head.chain, head.end
            while (entry := reader.next(sequence, previous)) is not None:
                sequence, previous, end = sequence + 1, entry.chain, entry.end
        if end < size:
            LOG.warning("audit trail: removing %d bytes of an entry a crash left unfinished",
                        size - end)  # fmt: skip
            os.ftruncate(fd, end)
            os.fsync(fd)
        return _Head(sequence - 1, end, previous)
