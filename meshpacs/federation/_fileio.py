"""Small, careful file operations for the federation's files.

Certificates and CRLs are replaced atomically (temporary file in the same directory,
fsync, rename, fsync of the directory), so a node reading them never sees half a file and
a crash leaves either the old or the new one. Key files are created exclusively, never
replacing an existing key. Reads are bounded before anything is allocated.
"""

from __future__ import annotations

import os
import secrets
import shlex
import stat
from pathlib import Path

from meshpacs.errors import ConfigError, FederationError

__all__ = [
    "fsync_directory",
    "read_bounded",
    "read_private",
    "write_atomic",
    "write_new",
]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (never replacing a file) with ``mode``, write ``data``, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may only take permissions away
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that readers see the old file or the new, whole."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    write_new(temp, data, mode)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The whole of ``path``, refused with ``FederationError`` if it is over ``limit`` bytes."""
    try:
        with path.open("rb") as stream:
            data = stream.read(limit + 1)
    except FileNotFoundError:
        raise FederationError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise FederationError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise FederationError(f"{what} {path} is over {limit} bytes; it is not one")
    return data


def read_private(path: Path, limit: int, what: str) -> bytes:
    """Read a key file, refusing one that group or others may read or write."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot open {what} {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)  # of the file opened, so it cannot be swapped after the check
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what} {path} is not a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(
                f"{what} {path} is open to other users (mode {stat.S_IMODE(info.st_mode):04o});"
                f" restrict it with: chmod 600 {shlex.quote(str(path))}"
            )
        with os.fdopen(os.dup(fd), "rb") as stream:
            data = stream.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(f"{what} {path} is over {limit} bytes; it is not one")
    return data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
