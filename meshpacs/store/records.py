"""Small sealed records this node keeps for other sites: catalog records, escrow shares,
repair manifests and delegations.

A site sends its trusted peers a sealed catalog record per protected study and, later,
its escrow shares; with them a repair manifest per bundle (sealed to this node) and a
signed delegation, so this node can repair the site's shares while it is down
(:mod:`meshpacs.upkeep.delegate`). Catalog records and escrow shares this node cannot
read (they are encrypted for the owner or for its own identity key); it keeps every
record only for its owner: put, get, list, each keyed by
the owner's site ID from its certificate, a record kind and a 64-hex record ID.

Layout under ``records/``::

    <kind>/<owner dir>/<record id>

where ``<owner dir>`` is the SHA-256 (hex, first 32 digits) of the owner's site ID, so no
peer-chosen text becomes a path, and ``<record id>`` is checked to be 64 hex digits. A put
writes a temp file, fsyncs it and renames it over the old version (the newest seal of a
study replaces the older one), then fsyncs the directory. A per-owner quota bounds what
one site can make this node keep.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import threading
from pathlib import Path

from meshpacs.errors import FormatError, LimitExceeded, QuotaExceeded
from meshpacs.store.durable import TEMP_SUFFIX, make_temp, remove_file, replace_file, write_all
from meshpacs.store.names import validate_fragment_id, validate_site_id

__all__ = ["DEFAULT_RECORD_QUOTA", "MAX_RECORD_BYTES", "HeldRecords", "owner_directory"]

MAX_RECORD_BYTES = 80 * 1024 * 1024  # a sealed catalog record of a very large study
DEFAULT_RECORD_QUOTA = 4 * 1024**3
_KINDS = {1: "catalog", 2: "escrow", 3: "repair", 4: "delegation"}
_MAX_LIST = 100_000


def owner_directory(root: Path, kind: int, owner_site: str) -> Path:
    """Where the records of ``kind`` kept for ``owner_site`` live under ``root``."""
    name = _KINDS.get(kind)
    if name is None:
        raise FormatError(f"record kind {kind} is unknown")
    validate_site_id(owner_site)
    digest = hashlib.sha256(owner_site.encode("ascii")).hexdigest()[:32]
    return root / name / digest


class HeldRecords:
    """Sealed records kept for their owners; synchronous, thread-safe."""

    def __init__(self, directory: Path, quota_bytes: int = DEFAULT_RECORD_QUOTA) -> None:
        self._root = directory
        self._quota = quota_bytes
        self._lock = threading.Lock()
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for kind in _KINDS.values():
            (self._root / kind).mkdir(mode=0o700, exist_ok=True)
            for owner in (self._root / kind).iterdir():
                for leftover in owner.glob("*" + TEMP_SUFFIX):  # a put cut short by a crash
                    leftover.unlink()

    def _owner_dir(self, kind: int, owner_site: str) -> Path:
        return owner_directory(self._root, kind, owner_site)

    def _path(self, kind: int, owner_site: str, record_id: str) -> Path:
        validate_fragment_id(record_id)  # the same 64-hex rule
        return self._owner_dir(kind, owner_site) / record_id

    def usage(self, owner_site: str) -> int:
        total = 0
        for kind in _KINDS:
            directory = self._owner_dir(kind, owner_site)
            if directory.is_dir():
                total += sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
        return total

    def put(self, kind: int, owner_site: str, record_id: str, data: bytes) -> None:
        """Keep ``data`` as the owner's record, replacing an older version, durably."""
        if len(data) > MAX_RECORD_BYTES:
            raise LimitExceeded(f"record of {len(data)} bytes is over {MAX_RECORD_BYTES}")
        path = self._path(kind, owner_site, record_id)
        with self._lock:
            old = path.stat().st_size if path.exists() else 0
            if self.usage(owner_site) - old + len(data) > self._quota:
                raise QuotaExceeded(f"site {owner_site} is over its record quota")
            path.parent.mkdir(mode=0o700, exist_ok=True)
            fd, temp = make_temp(path.parent)
            try:
                write_all(fd, data)
                os.fsync(fd)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            finally:
                os.close(fd)
            replace_file(temp, path)

    def get(self, kind: int, owner_site: str, record_id: str) -> bytes | None:
        path = self._path(kind, owner_site, record_id)
        try:
            with open(path, "rb") as f:
                return f.read(MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            return None

    def list(self, kind: int, owner_site: str) -> list[str]:
        """The owner's record IDs of that kind, sorted."""
        directory = self._owner_dir(kind, owner_site)
        if not directory.is_dir():
            return []
        names = sorted(p.name for p in directory.iterdir() if len(p.name) == 64)
        return names[:_MAX_LIST]

    def from_every_owner(self, kind: int, record_id: str) -> builtins.list[bytes]:
        """Record ``record_id`` of ``kind`` from every owner that keeps one here.

        Owner directories are named by hash, so the records themselves must say whose
        they are (a delegation names its owner, and is checked against it).
        """
        validate_fragment_id(record_id)
        name = _KINDS.get(kind)
        if name is None:
            raise FormatError(f"record kind {kind} is unknown")
        found: builtins.list[bytes] = []  # ``list`` here is the method above
        for owner in sorted((self._root / name).iterdir())[:_MAX_LIST]:
            with (
                contextlib.suppress(FileNotFoundError, NotADirectoryError),
                open(owner / record_id, "rb") as f,
            ):
                found.append(f.read(MAX_RECORD_BYTES + 1))
        return found

    def delete(self, kind: int, owner_site: str, record_id: str) -> bool:
        path = self._path(kind, owner_site, record_id)
        with self._lock:
            if not path.exists():
                return False
            remove_file(path)
            return True
