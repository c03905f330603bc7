"""Encoding a planned bundle into its n fragment files, in the owner's work directory.

Fragments are written to ``<work>/<bundle id hex>/<share>.frag`` before any is sent, so
that one slow or failed partner never makes the owner encode again, and a restart finds
them still there. They are ciphertext only (the data key never leaves the process), but
they are still deleted as soon as the bundle is stored.

The ledger records the bundle's ID and wrapped data key before encoding, and the codec
is deterministic given both, so encoding again after a stop yields the same fragments
and the same set hash; a different set hash means an instance file changed under us,
and is refused (``InputChanged``) instead of silently replacing what partners hold.

Runs in a worker thread: blocking file I/O and the codec (zfec and AES release the GIL).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from meshpacs.erasure import CodingParams, IndexEntry, InstanceSource, encode_bundle
from meshpacs.erasure.layout import BundleRef, FragmentHeader
from meshpacs.errors import InputChanged
from meshpacs.metadata.ledger import BundleMember, BundleRow

__all__ = ["EncodedFiles", "discard_work", "encode_to_files", "reuse_encoded"]


@dataclass(frozen=True)
class EncodedFiles:
    """A bundle's fragments on the owner's disk, share i at ``paths[i]``."""

    ref: BundleRef
    paths: tuple[Path, ...]


def _bundle_dir(work_dir: Path, row: BundleRow) -> Path:
    return work_dir / row.bundle_id.hex()


def _paths(work_dir: Path, row: BundleRow) -> tuple[Path, ...]:
    directory = _bundle_dir(work_dir, row)
    return tuple(directory / f"{share:03d}.frag" for share in range(row.n))


def _params(row: BundleRow) -> CodingParams:
    return CodingParams(row.k, row.n, row.segment_size)


def encode_to_files(
    row: BundleRow,
    members: Sequence[BundleMember],
    instance_path: Callable[[bytes], Path],
    data_key: bytes,
    work_dir: Path,
) -> EncodedFiles:
    """Encode ``members`` (in index order) into ``row.n`` fragment files under ``work_dir``.

    Raises ``InputChanged`` when an instance file no longer matches its catalog size or
    SHA-256, or when the result does not match a set hash recorded before.
    """
    directory = _bundle_dir(work_dir, row)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    sources = [_source(member, instance_path) for member in members]
    paths = _paths(work_dir, row)
    partial = [path.with_suffix(".part") for path in paths]
    with contextlib.ExitStack() as stack:
        outputs: list[BinaryIO] = [stack.enter_context(open(p, "wb")) for p in partial]
        encoded = encode_bundle(
            sources, _params(row), outputs, bundle_id=row.bundle_id, data_key=data_key
        )
    if row.set_hash is not None and encoded.ref.set_hash != row.set_hash:
        shutil.rmtree(directory, ignore_errors=True)
        raise InputChanged("bundle encodes to a different set hash than recorded before")
    for part, path in zip(partial, paths, strict=True):
        os.replace(part, path)
    return EncodedFiles(encoded.ref, paths)


def reuse_encoded(row: BundleRow, work_dir: Path) -> EncodedFiles | None:
    """The fragment files an earlier run left, if all n are there at their full size."""
    if row.length is None or row.set_hash is None:
        return None
    header = FragmentHeader(row.k, row.n, 0, row.segment_size, row.length, row.bundle_id)
    paths = _paths(work_dir, row)
    for path in paths:
        try:
            if path.stat().st_size != header.fragment_size:
                return None
        except FileNotFoundError:
            return None
    ref = BundleRef(row.bundle_id, _params(row), row.length, row.set_hash)
    return EncodedFiles(ref, paths)


def discard_work(row: BundleRow, work_dir: Path) -> None:
    """Remove the bundle's fragment files once partners hold them."""
    shutil.rmtree(_bundle_dir(work_dir, row), ignore_errors=True)


def _source(member: BundleMember, instance_path: Callable[[bytes], Path]) -> InstanceSource:
    path = instance_path(member.sha256)
    entry = IndexEntry(member.sop_instance_uid, member.size, member.sha256)
    return InstanceSource(entry, lambda: open(path, "rb"))
