"""The bundle: one or more DICOM instances, their exact bytes, and an index.

The bundle is the plaintext that gets encrypted and erasure-coded, so its index (which
holds SOP Instance UIDs) never leaves the site in clear. Instances are opaque byte
strings here: this layer never parses DICOM, it only keeps bytes and checks digests.

Bundle stream, format version 1 (all integers big-endian)::

    offset   size   field
    0        1      version            = 1; a reader refuses any other value
    1        4      magic              b"MPBN"
    5        4      count              number of instances, 0..MAX_INSTANCES
    9        ...    index              count entries, each:
                      1    uid_length        1..MAX_UID_LENGTH
                      L    sop_instance_uid  printable ASCII
                      8    size              bytes of the instance
                      32   sha256            SHA-256 of the instance bytes
    ...      ...    instances          the instances' bytes, in index order, back to back

The stream's length follows from the index, so the encoder knows it before reading a
byte of instance data (the fragment header records it) and the reader checks that the
index and the decrypted length agree before it trusts either.

Reading is push-based in the style of h11: feed decrypted bytes in any chunking with
:meth:`BundleParser.feed` and receive events; each instance's digest is checked as its
last byte arrives.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from meshpacs.errors import CorruptBundle, InputChanged, LimitExceeded, UnknownVersion

__all__ = [
    "MAX_INSTANCES",
    "MAX_UID_LENGTH",
    "BundleIndex",
    "BundleParser",
    "BundleStream",
    "IndexEntry",
    "InstanceChunk",
    "InstanceEnd",
    "InstanceFile",
    "InstanceSource",
    "bundle_length",
    "pack_index",
]

VERSION = 1
MAGIC = b"MPBN"
_PREAMBLE = struct.Struct(">B4sI")
_ENTRY_TAIL = struct.Struct(">Q32s")
# DICOM PS3.5 §9.1 caps a UID at 64 characters.
MAX_UID_LENGTH = 64
# A study of 100,000 instances is beyond any real one (a large CT is a few thousand);
# the bound keeps a hostile index below 11 MB of memory.
MAX_INSTANCES = 100_000
_MAX_ENTRY_SIZE = 1 + MAX_UID_LENGTH + _ENTRY_TAIL.size


class InstanceFile(Protocol):
    """An open instance: a binary file, or anything that reads like one."""

    def readinto(self, buffer: memoryview, /) -> int: ...

    def read(self, size: int = ..., /) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class IndexEntry:
    """One instance as the index records it."""

    sop_instance_uid: str
    size: int
    sha256: bytes

    def __post_init__(self) -> None:
        uid = self.sop_instance_uid
        if not 1 <= len(uid) <= MAX_UID_LENGTH or not uid.isascii() or not uid.isprintable():
            raise ValueError("SOP Instance UID must be 1..64 printable ASCII characters")
        if self.size < 0 or len(self.sha256) != 32:
            raise ValueError("index entry needs a size >= 0 and a 32-byte SHA-256")


@dataclass(frozen=True)
class InstanceSource:
    """An instance to bundle: what the catalog knows of it, and how to read its bytes."""

    entry: IndexEntry
    open: Callable[[], InstanceFile]


@dataclass(frozen=True)
class BundleIndex:
    """Event: the index has been read and checked against the stream length."""

    entries: tuple[IndexEntry, ...]


@dataclass(frozen=True)
class InstanceChunk:
    """Event: the next bytes of instance ``position``.

    ``data`` may be a view into the decoder's reused buffer: consume it before asking the
    decoder for more.
    """

    position: int
    data: memoryview


@dataclass(frozen=True)
class InstanceEnd:
    """Event: instance ``position`` is complete and its SHA-256 matched the index."""

    position: int
    entry: IndexEntry


BundleEvent = BundleIndex | InstanceChunk | InstanceEnd


def pack_index(entries: Sequence[IndexEntry]) -> bytes:
    if len(entries) > MAX_INSTANCES:
        raise LimitExceeded(f"{len(entries)} instances in one bundle, over {MAX_INSTANCES}")
    parts = [_PREAMBLE.pack(VERSION, MAGIC, len(entries))]
    for entry in entries:
        uid = entry.sop_instance_uid.encode("ascii")
        parts.append(bytes([len(uid)]) + uid + _ENTRY_TAIL.pack(entry.size, entry.sha256))
    return b"".join(parts)


def bundle_length(entries: Sequence[IndexEntry]) -> int:
    index = _PREAMBLE.size + sum(1 + len(e.sop_instance_uid) + _ENTRY_TAIL.size for e in entries)
    return index + sum(e.size for e in entries)


class BundleStream:
    """The bundle stream of some instances, read like a file.

    It reads each instance as the encoder asks for bytes, and checks on the way that the
    instance has exactly the size and SHA-256 declared for it, so an instance file that
    changed after cataloguing raises :class:`InputChanged` instead of being backed up
    under a digest it does not have.
    """

    def __init__(self, sources: Sequence[InstanceSource]) -> None:
        self.entries = tuple(s.entry for s in sources)
        self.length = bundle_length(self.entries)
        self._head = memoryview(pack_index(self.entries))
        self._head_pos = 0
        self._sources: Iterator[tuple[int, InstanceSource]] = iter(enumerate(sources))
        self._current: tuple[int, InstanceSource, InstanceFile] | None = None
        self._left = 0
        self._hasher = hashlib.sha256()

    def readinto(self, buffer: memoryview) -> int:
        """Fill ``buffer`` as far as the stream goes; returns the bytes written."""
        filled = 0
        while filled < len(buffer):
            got = self._read_some(buffer[filled:])
            if got == 0:
                break
            filled += got
        return filled

    def _read_some(self, buffer: memoryview) -> int:
        if self._head_pos < len(self._head):
            n = min(len(buffer), len(self._head) - self._head_pos)
            buffer[:n] = self._head[self._head_pos : self._head_pos + n]
            self._head_pos += n
            return n
        if self._current is None and not self._next_instance():
            return 0
        assert self._current is not None
        position, _source, file = self._current
        want = min(len(buffer), self._left)
        got = file.readinto(buffer[:want]) if want else 0
        if want and not got:
            raise InputChanged(f"instance #{position} ended {self._left} bytes early")
        self._hasher.update(buffer[:got])
        self._left -= got
        if self._left == 0:
            self._finish_instance()
        return got

    def _next_instance(self) -> bool:
        for position, source in self._sources:
            file = source.open()
            self._current = (position, source, file)
            self._left = source.entry.size
            self._hasher = hashlib.sha256()
            if self._left:
                return True
            self._finish_instance()
        return False

    def _finish_instance(self) -> None:
        assert self._current is not None
        position, source, file = self._current
        self._current = None
        try:
            if file.read(1):
                raise InputChanged(f"instance #{position} is longer than its declared size")
            if self._hasher.digest() != source.entry.sha256:
                raise InputChanged(f"instance #{position} does not match its declared SHA-256")
        finally:
            file.close()


class BundleParser:
    """Sans-I/O reader of a bundle stream of a known total length."""

    def __init__(self, length: int) -> None:
        self._length = length
        self._received = 0
        self._head = bytearray()
        self._entries: tuple[IndexEntry, ...] | None = None
        self._position = 0
        self._left = 0
        self._hasher = hashlib.sha256()

    @property
    def finished(self) -> bool:
        return self._entries is not None and self._position == len(self._entries)

    def feed(self, data: bytes | memoryview) -> list[BundleEvent]:
        view = memoryview(data).cast("B")
        self._received += len(view)
        if self._received > self._length:
            raise CorruptBundle("bundle stream is longer than its recorded length")
        events: list[BundleEvent] = []
        if self._entries is None:
            view = self._feed_index(view, events)
        while len(view) and self._entries is not None:
            view = self._feed_instances(view, events)
        if self._entries is not None:
            self._emit_empty_instances(events)
        return events

    def close(self) -> None:
        """Call after the last byte: a stream that stopped early is an error."""
        if self._received != self._length or not self.finished:
            raise CorruptBundle("bundle stream ended before its last instance")

    def _feed_index(self, view: memoryview, events: list[BundleEvent]) -> memoryview:
        self._head += view
        try:
            entries, used = _parse_index(self._head)
        except _NeedMore:
            if len(self._head) > _PREAMBLE.size + MAX_INSTANCES * _MAX_ENTRY_SIZE:
                raise CorruptBundle("bundle index does not end") from None
            return memoryview(b"")
        if bundle_length(entries) != self._length:
            raise CorruptBundle("bundle index does not agree with the bundle length")
        self._entries = entries
        events.append(BundleIndex(entries))
        rest = memoryview(bytes(self._head[used:]))
        self._head = bytearray()
        self._start_instance()
        return rest

    def _start_instance(self) -> None:
        assert self._entries is not None
        if self._position < len(self._entries):
            self._left = self._entries[self._position].size
            self._hasher = hashlib.sha256()

    def _emit_empty_instances(self, events: list[BundleEvent]) -> None:
        assert self._entries is not None
        while self._position < len(self._entries) and self._left == 0:
            self._end_instance(events)

    def _feed_instances(self, view: memoryview, events: list[BundleEvent]) -> memoryview:
        assert self._entries is not None
        self._emit_empty_instances(events)
        if self._position >= len(self._entries):
            raise CorruptBundle("bytes after the last instance")
        n = min(len(view), self._left)
        chunk = view[:n]
        self._hasher.update(chunk)
        self._left -= n
        events.append(InstanceChunk(self._position, chunk))
        if self._left == 0:
            self._end_instance(events)
        return view[n:]

    def _end_instance(self, events: list[BundleEvent]) -> None:
        assert self._entries is not None
        entry = self._entries[self._position]
        if self._hasher.digest() != entry.sha256:
            raise CorruptBundle(f"instance #{self._position} does not match its SHA-256")
        events.append(InstanceEnd(self._position, entry))
        self._position += 1
        self._start_instance()


class _NeedMore(Exception):
    pass


def _parse_index(data: bytearray) -> tuple[tuple[IndexEntry, ...], int]:
    if len(data) >= 1 and data[0] != VERSION:
        raise UnknownVersion("bundle", data[0], [VERSION])
    if len(data) < _PREAMBLE.size:
        raise _NeedMore
    _version, magic, count = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise CorruptBundle("bad magic: not a meshpacs bundle")
    if count > MAX_INSTANCES:
        raise LimitExceeded(f"bundle index claims {count} instances, over {MAX_INSTANCES}")
    offset = _PREAMBLE.size
    entries = []
    for _ in range(count):
        entry, offset = _parse_entry(data, offset)
        entries.append(entry)
    return tuple(entries), offset


def _parse_entry(data: bytearray, offset: int) -> tuple[IndexEntry, int]:
    if offset >= len(data):
        raise _NeedMore
    uid_length = data[offset]
    end = offset + 1 + uid_length + _ENTRY_TAIL.size
    if not 1 <= uid_length <= MAX_UID_LENGTH:
        raise CorruptBundle(f"index entry with a {uid_length}-byte UID")
    if end > len(data):
        raise _NeedMore
    uid_bytes = bytes(data[offset + 1 : offset + 1 + uid_length])
    size, sha256 = _ENTRY_TAIL.unpack_from(data, offset + 1 + uid_length)
    try:
        entry = IndexEntry(uid_bytes.decode("ascii"), size, sha256)
    except (UnicodeDecodeError, ValueError):
        raise CorruptBundle("index entry with a malformed UID") from None
    return entry, end
