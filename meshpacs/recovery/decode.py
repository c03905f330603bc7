"""Decoding gathered fragments into instance files, each checked before it is handed on.

The bundle decoder (:class:`~meshpacs.erasure.codec.BundleDecoder`) streams a bundle's
plaintext as events: the index, each instance's bytes in chunks, and an ``InstanceEnd``
only once those bytes matched the SHA-256 the index holds. Here the index is first
compared with what the catalog recorded for the bundle (SOP Instance UID, size, SHA-256 at
each position), so the decoded bundle is the one catalogued and not merely a consistent
one; then each instance's chunks go to a ``.part`` file, renamed and handed on at its
``InstanceEnd``. An instance that fails (its digest, the bundle's stream, a fragment
that turns bad halfway with no replacement) leaves no file behind and is never yielded;
the instances yielded before it stay with the caller, each already verified.

File names carry the bundle ID (random) and the instance's position in the bundle,
never a DICOM value. Instances in the bundle that the catalog does not list are skipped:
with nothing to check them against they are never delivered.

Synchronous and blocking (file reads, decryption, zfec): the caller runs it in a thread.
Memory is the decoder's: a few segments, whatever the bundle size.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from meshpacs.erasure.bundle import BundleIndex, IndexEntry, InstanceChunk, InstanceEnd
from meshpacs.erasure.codec import BundleDecoder
from meshpacs.errors import CorruptBundle
from meshpacs.keys.wrap import unwrap_data_key
from meshpacs.recovery.model import PlannedBundle, PlannedInstance

__all__ = ["decode_to_files"]

_log = logging.getLogger("meshpacs.recovery")


class _InstanceFiles:
    """The one instance file being written, and its move into place once verified."""

    def __init__(self, outdir: Path, stem: str) -> None:
        self._outdir = outdir
        self._stem = stem
        self._open: tuple[int, BinaryIO, Path] | None = None

    def write(self, position: int, data: memoryview) -> None:
        if self._open is None or self._open[0] != position:
            self.discard()
            part = self._outdir / f"{self._stem}-{position}.part"
            self._open = (position, part.open("wb"), part)
        self._open[1].write(data)

    def finish(self, position: int) -> Path:
        if self._open is None or self._open[0] != position:
            self.discard()
            part = self._outdir / f"{self._stem}-{position}.part"
            self._open = (position, part.open("wb"), part)  # an empty instance
        _, out, part = self._open
        self._open = None
        out.close()
        final = self._outdir / f"{self._stem}-{position}.dcm"
        os.replace(part, final)
        return final

    def discard(self) -> None:
        if self._open is not None:
            _, out, part = self._open
            self._open = None
            out.close()
            part.unlink(missing_ok=True)


def _matches(entry: IndexEntry, instance: PlannedInstance) -> bool:
    return (
        entry.sop_instance_uid == instance.sop_instance_uid
        and entry.size == instance.size
        and entry.sha256 == instance.sha256
    )


def _check_index(entries: Sequence[IndexEntry], planned: Mapping[int, PlannedInstance]) -> None:
    """Every catalogued instance must be where the catalog says, as the catalog says."""
    for position, instance in sorted(planned.items()):
        if position >= len(entries):
            raise CorruptBundle(
                f"the catalog lists instance #{position}, the bundle holds {len(entries)}"
            )
        if not _matches(entries[position], instance):
            raise CorruptBundle(f"instance #{position} of the bundle is not the one catalogued")
    unlisted = len(entries) - len(planned)
    if unlisted:
        _log.warning("recovery: %d instances of a bundle are not in the catalog: skipped", unlisted)


def decode_to_files(
    bundle: PlannedBundle,
    key_wrap_key: bytes,
    fragments: Mapping[int, Path],
    outdir: Path,
) -> Iterator[tuple[PlannedInstance, Path]]:
    """Decode ``bundle`` from its gathered ``fragments`` (by share) into files in ``outdir``.

    Yields ``(instance, path)`` for each catalogued instance once its bytes are complete
    and match the catalog's SHA-256; the caller owns each file from then on. Raises
    :class:`~meshpacs.errors.CorruptBundle` when the bundle does not match the catalog,
    :class:`~meshpacs.errors.Unrecoverable` when too few fragments stay good, and
    :class:`~meshpacs.errors.WrongKey` when the key does not open the bundle; in every
    case the instance being written is removed. A generator: nothing happens until the
    first item is asked for.
    """
    data_key = unwrap_data_key(key_wrap_key, bundle.bundle_id, bundle.wrapped_key)
    planned = {instance.position: instance for instance in bundle.instances}
    outdir.mkdir(parents=True, exist_ok=True)
    files = _InstanceFiles(outdir, bundle.bundle_id.hex())
    with contextlib.ExitStack() as stack:
        stack.callback(files.discard)
        sources = [stack.enter_context(path.open("rb")) for _, path in sorted(fragments.items())]
        decoder = BundleDecoder(bundle.ref, data_key, sources)
        for event in decoder.events():
            if isinstance(event, BundleIndex):
                _check_index(event.entries, planned)
            elif event.position not in planned:
                continue
            elif isinstance(event, InstanceChunk):
                files.write(event.position, event.data)
            elif isinstance(event, InstanceEnd):
                instance = planned[event.position]
                if not _matches(event.entry, instance):  # checked at the index already
                    raise CorruptBundle(f"instance #{event.position} is not the one catalogued")
                yield instance, files.finish(event.position)
        if decoder.rejected:
            _log.info("recovery: %d fragments refused while decoding", len(decoder.rejected))
