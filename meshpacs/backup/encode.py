"""Encoding a planned bundle: into any outputs, or into fragment files in the work directory.

The pipeline first streams shares straight to partners (:mod:`meshpacs.backup.stream`,
through :func:`encode_into`). Shares that could not be streamed (a partner failed or
stalled, too few partners online) are then encoded into ``<work>/<bundle id hex>/<share>.frag``
(:func:`encode_to_files`, only the shares still missing), from where the hedged upload
places them, and a restart finds them still there. They are ciphertext only (the data key
never leaves the process), but they are still deleted as soon as the bundle is stored.

The ledger records the bundle's ID and wrapped data key before encoding, and the codec
is deterministic given both, so encoding again after a stop yields the same fragments
and the same set hash; a different set hash means an instance file changed under us,
and is refused (``InputChanged``) instead of silently replacing what partners hold.

While the codec writes, each output is tapped (:mod:`meshpacs.audit.tap`) so the owner
learns the answers of the audit challenges it will ask the holders later, from the very
bytes they store.

Runs in a worker thread: blocking file I/O and the codec (zfec and AES release the GIL).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from meshpacs.audit.tap import challenge_sets, tap_shares
from meshpacs.erasure import (
    CodingParams,
    IndexEntry,
    InstanceSource,
    Writable,
    bundle_length,
    encode_bundle,
)
from meshpacs.erasure.layout import BundleRef, FragmentHeader
from meshpacs.errors import InputChanged
from meshpacs.metadata.ledger import BundleMember, BundleRow

__all__ = [
    "Encoded",
    "EncodedFiles",
    "NullSink",
    "discard_work",
    "encode_into",
    "encode_to_files",
    "length_of",
    "reuse_encoded",
]


class NullSink:
    """The output for a share a partner already holds: the codec's bytes go nowhere."""

    def write(self, data: bytes | memoryview, /) -> int:
        return len(data)


@dataclass(frozen=True)
class Encoded:
    """What encoding a bundle told the owner: its reference and each share's challenges."""

    ref: BundleRef
    challenge_sets: dict[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class EncodedFiles:
    """A bundle's fragments on the owner's disk, share i at ``paths[i]``.

    ``challenge_sets`` is empty for files an earlier run left (:func:`reuse_encoded`).
    """

    ref: BundleRef
    paths: tuple[Path, ...]
    challenge_sets: dict[int, bytes] = field(default_factory=dict)


def _bundle_dir(work_dir: Path, row: BundleRow) -> Path:
    return work_dir / row.bundle_id.hex()


def _paths(work_dir: Path, row: BundleRow) -> tuple[Path, ...]:
    directory = _bundle_dir(work_dir, row)
    return tuple(directory / f"{share:03d}.frag" for share in range(row.n))


def _params(row: BundleRow) -> CodingParams:
    return CodingParams(row.k, row.n, row.segment_size)


def length_of(members: Sequence[BundleMember]) -> int:
    """The bundle's length in bytes, known before encoding (fragment sizes follow from it)."""
    return bundle_length([_entry(member) for member in members])


def encode_into(
    row: BundleRow,
    members: Sequence[BundleMember],
    instance_path: Callable[[bytes], Path],
    data_key: bytes,
    outputs: Sequence[Writable],
    *,
    challenges: int = 0,
) -> Encoded:
    """Encode ``members`` (in index order) into ``row.n`` outputs, share i into outputs[i].

    With ``challenges`` > 0, that many audit challenges are planned per share and answered
    from the bytes written. Raises ``InputChanged`` when an instance file no longer matches
    its catalog size or SHA-256 (before any output received its last byte), or when the
    result does not match a set hash recorded before.
    """
    sources = [_source(member, instance_path) for member in members]
    fragment_size = _header(row, length_of(members)).fragment_size
    taps = tap_shares(outputs, fragment_size, challenges) if challenges else []
    encoded = encode_bundle(
        sources, _params(row), taps or outputs, bundle_id=row.bundle_id, data_key=data_key
    )
    if row.set_hash is not None and encoded.ref.set_hash != row.set_hash:
        raise InputChanged("bundle encodes to a different set hash than recorded before")
    return Encoded(encoded.ref, challenge_sets(taps) if taps else {})


def encode_to_files(
    row: BundleRow,
    members: Sequence[BundleMember],
    instance_path: Callable[[bytes], Path],
    data_key: bytes,
    work_dir: Path,
    shares: Collection[int] | None = None,
    *,
    challenges: int = 0,
) -> EncodedFiles:
    """Encode ``members`` into fragment files under ``work_dir``: ``shares``, or all n."""
    directory = _bundle_dir(work_dir, row)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    wanted = set(range(row.n) if shares is None else shares)
    paths = _paths(work_dir, row)
    partial = {share: paths[share].with_suffix(".part") for share in wanted}
    with contextlib.ExitStack() as stack:
        outputs: list[BinaryIO | NullSink] = [
            stack.enter_context(open(partial[share], "wb")) if share in wanted else NullSink()
            for share in range(row.n)
        ]
        try:
            encoded = encode_into(
                row, members, instance_path, data_key, outputs, challenges=challenges
            )
        except InputChanged:
            shutil.rmtree(directory, ignore_errors=True)
            raise
    for share, part in partial.items():
        os.replace(part, paths[share])
    return EncodedFiles(encoded.ref, paths, encoded.challenge_sets)


def reuse_encoded(
    row: BundleRow, work_dir: Path, shares: Collection[int] | None = None
) -> EncodedFiles | None:
    """The fragment files an earlier run left, if ``shares`` (or all n) are there in full."""
    if row.length is None or row.set_hash is None:
        return None
    header = _header(row, row.length)
    paths = _paths(work_dir, row)
    for path in paths if shares is None else [paths[share] for share in shares]:
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


def _header(row: BundleRow, length: int) -> FragmentHeader:
    return FragmentHeader(row.k, row.n, 0, row.segment_size, length, row.bundle_id)


def _source(member: BundleMember, instance_path: Callable[[bytes], Path]) -> InstanceSource:
    path = instance_path(member.sha256)
    return InstanceSource(_entry(member), lambda: open(path, "rb"))


def _entry(member: BundleMember) -> IndexEntry:
    return IndexEntry(member.sop_instance_uid, member.size, member.sha256)
