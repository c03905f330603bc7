"""The file-system steps of the store, each made durable the way :mod:`meshpacs.dicom.storage` does.

A name is durable only once its directory is fsynced, and a file's bytes only once the
file is; so every creation, rename and removal below ends with the fsync that makes it
survive a power cut. Temporary files are named (``tmp/*.part``) rather than ``O_TMPFILE``:
an owner may overwrite its fragment, which needs ``rename`` over the old name (``linkat``
cannot replace), and a fragment is megabytes, so one directory entry more costs nothing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from meshpacs.durable import fsync_dir, write_all

__all__ = [
    "TEMP_SUFFIX",
    "fsync_dir",
    "make_dir",
    "make_temp",
    "remove_file",
    "replace_file",
    "sweep_dir",
    "write_all",
]

TEMP_SUFFIX = ".part"
_DIR_MODE = 0o700  # partners' ciphertext: nobody else on the host needs to list it


def make_dir(directory: Path) -> bool:
    """Create ``directory`` if missing (not its parents); True if it was created.

    The caller fsyncs the parent once after creating a batch of them.
    """
    try:
        directory.mkdir(mode=_DIR_MODE)
    except FileExistsError:
        return False
    return True


def make_temp(directory: Path) -> tuple[int, Path]:
    """A new, empty file open for writing in ``directory`` (mode 0600)."""
    fd, name = tempfile.mkstemp(dir=directory, suffix=TEMP_SUFFIX)
    return fd, Path(name)


def replace_file(source: Path, target: Path) -> None:
    """Rename ``source`` (already fsynced) over ``target`` atomically, and make it durable.

    Only the target's directory is fsynced: should the old name in ``tmp/`` survive a
    crash as well, it is a second name for the same file, which the next open sweeps.
    """
    os.replace(source, target)
    fsync_dir(target.parent)


def remove_file(path: Path) -> bool:
    """Remove ``path`` durably; False if it was not there."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def sweep_dir(directory: Path) -> int:
    """Remove every regular file in ``directory`` (crash leftovers); how many were removed."""
    removed = 0
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    if removed:
        fsync_dir(directory)
    return removed
