"""The node's instance files: content-addressed, written durably, never named by DICOM values.

Each instance is a Part 10 file at ``instances/ab/cd/<sha256>.dcm``, where the name is the
SHA-256 of the file's bytes. Two versions of one SOP Instance UID therefore never overwrite
each other, the same bytes received twice are one file, and no value a peer sends becomes
a path. A file reaches its name only by ``rename`` after ``fsync``, so a crash leaves a
whole file or none; the directory entries are fsynced before the catalog commits.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from meshpacs.errors import LimitExceeded

__all__ = ["InstanceStore", "StoredFile"]

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class StoredFile:
    """An instance file in place and fsynced; its directory entry may still need a sync."""

    sha256: bytes
    size: int
    path: Path
    existed: bool  # the same bytes were already stored


class InstanceStore:
    def __init__(self, instances_dir: Path, tmp_dir: Path) -> None:
        self.instances_dir = instances_dir
        self.tmp_dir = tmp_dir
        instances_dir.mkdir(parents=True, exist_ok=True)
        tmp_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: bytes) -> Path:
        name = sha256.hex()
        return self.instances_dir / name[:2] / name[2:4] / f"{name}.dcm"

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

        The file is hashed and fsynced here; it is renamed when on the same filesystem
        (pynetdicom's temporary directory is set to ours) and copied otherwise.
        """
        sha256, size = _hash_and_sync(temp_path, max_bytes)
        target = self.path_for(sha256)
        if target.exists():
            temp_path.unlink(missing_ok=True)
            return StoredFile(sha256, size, target, existed=True)
        self._make_fanout_dirs(target.parent)
        try:
            os.replace(temp_path, target)
        except OSError:
            self._copy_into_place(temp_path, target)
        return StoredFile(sha256, size, target, existed=False)

    def write(self, data: bytes) -> StoredFile:
        """Store bytes already in memory (small instances, tests)."""
        fd, name = _mkstemp(self.tmp_dir)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return self.adopt(Path(name), max_bytes=len(data))

    def sync_directories(self, files: Iterable[StoredFile]) -> None:
        """fsync each directory that gained an entry, once per batch: group commit."""
        for directory in sorted({f.path.parent for f in files if not f.existed}):
            _fsync_dir(directory)

    def _make_fanout_dirs(self, directory: Path) -> None:
        """Create ab/cd on first use and make the new entries durable at once (rare)."""
        if directory.is_dir():
            return
        directory.mkdir(parents=True, exist_ok=True)
        _fsync_dir(directory.parent)
        _fsync_dir(self.instances_dir)

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


def _hash_and_sync(path: Path, max_bytes: int) -> tuple[bytes, int]:
    hasher = hashlib.sha256()
    size = 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size > max_bytes:
            raise LimitExceeded(
                f"instance of {os.fstat(f.fileno()).st_size} bytes, over {max_bytes}"
            )
        while n := f.readinto(buffer):
            hasher.update(view[:n])
            size += n
        os.fsync(f.fileno())
    return hasher.digest(), size


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
