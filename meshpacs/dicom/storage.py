"""The node's instance files: content-addressed, written durably, never named by DICOM values.

Each instance is a Part 10 file at ``instances/ab/<sha256>.dcm``, where the name is the
SHA-256 of the file's bytes and ``ab`` its first byte in hex. Two versions of one SOP
Instance UID therefore never overwrite each other, the same bytes received twice are one
file, and no value a peer sends becomes a path. A file reaches its name only by ``rename``
after ``fsync``, and :meth:`InstanceStore.adopt` fsyncs the directory entry before it
returns, so a crash leaves a whole file or none and the catalog never commits a row for a
file whose name could still be lost.

The 256 fan-out directories are created (and made durable) when the store is opened, so
storing an instance never creates a directory: one level of 256 keeps a directory under
40,000 entries up to 10 million instances, which ext4 and XFS index without trouble.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from meshpacs.durable import fsync_dir
from meshpacs.errors import LimitExceeded

__all__ = ["FANOUT", "HEAD_BYTES", "InstanceStore", "PendingFile", "StoredFile"]

_CHUNK = 1024 * 1024
# How much of the start of each file adopt() keeps in memory for the caller (the Part 10
# header of almost any dataset: the catalog attributes are read from it, not from disk).
HEAD_BYTES = 64 * 1024
# The fan-out directory names: the first byte of the digest, in hex.
FANOUT = tuple(f"{i:02x}" for i in range(256))


@dataclass(frozen=True)
class StoredFile:
    """An instance file in place, its bytes and its directory entry fsynced."""

    sha256: bytes
    size: int
    path: Path
    existed: bool  # the same bytes were already stored
    # The start of the file as read while hashing: at most HEAD_BYTES, all of it when
    # ``len(head) == size``.
    head: bytes = field(default=b"", repr=False, compare=False)


@dataclass
class PendingFile:
    """A file being received: open for writing, not yet under its content address."""

    fd: int
    path: Path | None  # None: an unnamed O_TMPFILE inode


class InstanceStore:
    def __init__(self, instances_dir: Path, tmp_dir: Path) -> None:
        self.instances_dir = instances_dir
        self.tmp_dir = tmp_dir
        instances_dir.mkdir(parents=True, exist_ok=True)
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self._make_fanout_dirs()
        self._unnamed = _can_link_unnamed(instances_dir)

    def path_for(self, sha256: bytes) -> Path:
        name = sha256.hex()
        return self.instances_dir / name[:2] / f"{name}.dcm"

    def sweep_tmp(self) -> int:
        """Remove what crashed or aborted transfers left behind; run before accepting peers."""
        removed = 0
        for entry in self.tmp_dir.iterdir():
            if entry.is_file():
                entry.unlink()
                removed += 1
        return removed

    def adopt(self, temp_path: Path, max_bytes: int) -> StoredFile:
        """Move a received file into place under its digest, durably.

        The file is hashed (one read, which also keeps its head) and fsynced; it is renamed
        when on the same filesystem (pynetdicom's temporary directory is set to ours) and
        copied otherwise; then its directory is fsynced. All of it runs in the caller's
        thread: hashing and fsync release the GIL.
        """
        sha256, size, head = _hash_and_sync(temp_path, max_bytes)
        return self.place(temp_path, sha256, size, head)

    def open_pending(self) -> PendingFile:
        """A new file for a transfer in progress, open for writing.

        Where the file system allows it (``O_TMPFILE``: ext4, XFS, btrfs, tmpfs) the file
        has no name until :meth:`place_pending` links it under its content address: no
        directory entry to create and remove per instance, and nothing left behind by a
        crash. Elsewhere it is a named file in ``tmp/``.
        """
        if self._unnamed:
            try:
                fd = os.open(self.instances_dir, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            except OSError:
                self._unnamed = False
            else:
                return PendingFile(fd, None)
        fd, name = _mkstemp(self.tmp_dir)
        return PendingFile(fd, Path(name))

    def place_pending(
        self, pending: PendingFile, sha256: bytes, size: int, head: bytes
    ) -> StoredFile:
        """fsync a fully written pending file, then put it in place as :meth:`place` does.

        The descriptor is closed in every case; on failure the file is discarded.
        """
        try:
            os.fsync(pending.fd)
            if pending.path is not None:
                os.close(pending.fd)
                pending.fd = -1
                return self.place(pending.path, sha256, size, head)
            target = self.path_for(sha256)
            directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                existed = not _link_unnamed(pending.fd, directory, target.name)
                os.fsync(directory)
            finally:
                os.close(directory)
            return StoredFile(sha256, size, target, existed=existed, head=head)
        finally:
            self.discard_pending(pending)

    @staticmethod
    def discard_pending(pending: PendingFile) -> None:
        """Close a pending file and remove it if it has a name (idempotent)."""
        if pending.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(pending.fd)
            pending.fd = -1
        if pending.path is not None:
            pending.path.unlink(missing_ok=True)
            pending.path = None

    def place(self, temp_path: Path, sha256: bytes, size: int, head: bytes) -> StoredFile:
        """Rename a file already hashed *and fsynced* by its writer to its content address.

        The receiver hashes each fragment as it writes it, so the file is not read again.
        """
        target = self.path_for(sha256)
        if target.exists():
            temp_path.unlink(missing_ok=True)
            # The earlier copy may have been renamed into place by a process that died
            # before its directory fsync: make sure its name is durable before it counts.
            fsync_dir(target.parent)
            return StoredFile(sha256, size, target, existed=True, head=head)
        try:
            os.replace(temp_path, target)
        except OSError:
            self._copy_into_place(temp_path, target)
        fsync_dir(target.parent)
        return StoredFile(sha256, size, target, existed=False, head=head)

    def write(self, data: bytes) -> StoredFile:
        """Store bytes already in memory (small instances, tests)."""
        fd, name = _mkstemp(self.tmp_dir)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return self.adopt(Path(name), max_bytes=len(data))

    def _make_fanout_dirs(self) -> None:
        """Create the missing fan-out directories; fsync their parent once, every start.

        The fsync also covers directories a process created and then died before syncing.
        """
        present = set(os.listdir(self.instances_dir))
        for name in FANOUT:
            if name not in present:
                (self.instances_dir / name).mkdir(exist_ok=True)
        fsync_dir(self.instances_dir)
        fsync_dir(self.instances_dir.parent)

    def _copy_into_place(self, source: Path, target: Path) -> None:
        fd, name = _mkstemp(self.tmp_dir)
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())
        os.replace(name, target)
        source.unlink(missing_ok=True)


def _mkstemp(directory: Path) -> tuple[int, str]:
    return tempfile.mkstemp(dir=directory, suffix=".part")


def _hash_and_sync(path: Path, max_bytes: int) -> tuple[bytes, int, bytes]:
    """SHA-256, size and first HEAD_BYTES bytes of the file, in one read; then fsync it."""
    with path.open("rb", buffering=0) as f:
        size_on_disk = os.fstat(f.fileno()).st_size
        if size_on_disk > max_bytes:
            raise LimitExceeded(f"instance of {size_on_disk} bytes, over {max_bytes}")
        head = f.read(HEAD_BYTES) or b""  # may be short; the loop reads on to the end
        hasher = hashlib.sha256(head)
        size = len(head)
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        while n := f.readinto(buffer):
            hasher.update(view[:n])
            size += n
        os.fsync(f.fileno())
    return hasher.digest(), size, head


def _link_unnamed(fd: int, directory: int, name: str) -> bool:
    """Give the O_TMPFILE inode ``fd`` the name ``name`` in ``directory``; False if taken.

    ``linkat(AT_FDCWD, "/proc/self/fd/N", dirfd, name, AT_SYMLINK_FOLLOW)`` (open(2)).
    Python calls plain link(2), which does not follow the /proc link, unless a directory
    descriptor is given, hence ``dst_dir_fd``.
    """
    try:
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=directory, follow_symlinks=True)
    except FileExistsError:
        return False  # the same bytes, linked only after their own fsync
    return True


def _can_link_unnamed(directory: Path) -> bool:
    """Whether O_TMPFILE files can be created here and linked by /proc/self/fd."""
    probe = f".probe-{os.getpid()}-{id(directory):x}"
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except (OSError, AttributeError):
        return False
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _link_unnamed(fd, dir_fd, probe)
        os.unlink(probe, dir_fd=dir_fd)
    except OSError:
        return False
    finally:
        os.close(fd)
        os.close(dir_fd)
    return True
