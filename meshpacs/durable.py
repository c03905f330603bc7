"""Small, careful file operations, one definition for every room that writes files.

A name is durable only once its directory is fsynced, and a file's bytes only once the
file is. Files others read whole (certificates, CRLs, config) are replaced atomically
(temporary file in the same directory, fsync, rename, fsync of the directory), so a reader
never sees half a file and a crash leaves either the old or the new one. Key files are
created exclusively, never replacing an existing key, and refused when others may read
them. Reads are bounded before anything is allocated. A directory that will hold a new
key is used only when new or empty, and a half-made one is removed again.

The same care for SQLite: :func:`transaction` is one ``BEGIN IMMEDIATE`` .. ``COMMIT``,
rolled back on any error, and :func:`split_statements` cuts a migration script so that
it runs inside such a transaction (``executescript`` would commit first).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import sqlite3
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from meshpacs.errors import ConfigError, MeshError

__all__ = [
    "fsync_dir",
    "read_bounded",
    "read_private",
    "remove_created",
    "require_new_or_empty",
    "split_statements",
    "transaction",
    "write_all",
    "write_atomic",
    "write_new",
]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (never replacing a file) with ``mode``, write ``data``, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may only take permissions away
        write_all(fd, data)
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
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make the names in ``directory`` (a rename, a new or removed file) durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_bounded(path: Path, limit: int, what: str, error: type[MeshError] = ConfigError) -> bytes:
    """The whole of ``path``, refused with ``error`` if it is over ``limit`` bytes."""
    try:
        with path.open("rb") as stream:
            data = stream.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise error(f"{what} {path} is over {limit} bytes; it is not one")
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


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data``; ``os.write`` may write fewer than asked."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def require_new_or_empty(directory: Path, why: str) -> None:
    """Refuse a ``directory`` that exists and holds anything; ``why`` ends the message."""
    try:
        if not directory.exists():
            return
        if not directory.is_dir():
            raise ConfigError(f"{directory} exists and is not a directory; choose a new directory")
        if any(directory.iterdir()):
            raise ConfigError(f"{directory} is not empty; {why}")
    except OSError as exc:
        raise ConfigError(f"cannot use {directory}: {exc.strerror or exc}") from None


def remove_created(created: Sequence[Path]) -> None:
    """Undo a half-made directory tree, newest first; best effort (the first error counts)."""
    for path in reversed(created):
        with contextlib.suppress(OSError):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()


@contextlib.contextmanager
def transaction(
    db: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE"
) -> Iterator[sqlite3.Connection]:
    """One transaction on ``db`` (autocommit mode): committed on exit, rolled back on any
    exception. One left open by a cancelled rollback is rolled back first."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
    db.execute(begin)
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def split_statements(script: str) -> list[str]:
    """Split a migration script into single statements, trigger bodies kept whole.

    ``executescript`` would do this itself, but it commits any open transaction first,
    which would put each migration outside the transaction that records it.
    """
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip():
        raise ValueError("migration script ends inside a statement")
    return statements
