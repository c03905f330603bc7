"""Bringing the files and the index back into agreement after a crash, at every open.

The store changes a fragment in this order (see :mod:`meshpacs.store.store`):

- **put**: index row in state ``writing`` (committed), then rename + directory fsync, then
  the row set to ``ok``. The row comes first because it is the only place the *owner* is
  recorded: a file alone cannot say whose it is, so it could never be re-inserted.
- **delete**: row removed (committed), then the file removed + directory fsync. A crash
  in between leaves a file no row claims, which is simply removed.

So after a crash, at open:

1. ``tmp/`` is emptied (transfers that never reached ``commit``; done by the store).
2. Each ``writing`` row is *settled*: the file under its name is verified again
   (:func:`~meshpacs.erasure.decoder.verify_fragment`); if it checks, the row is set to
   what the file actually is (for an interrupted overwrite that may be the old fragment
   or the new one, both the owner's) and marked ``ok``; if there is no file, or it fails,
   row and file are removed.
3. Each fan-out directory is compared with the rows of its prefix: a file without a row
   (an interrupted delete, or anything put there by hand) is removed, since no owner can
   be given for it; a row without a file (lost outside our control) is dropped so that
   ``has`` never answers for a fragment that is not there.

Only ``writing`` rows are re-read here: re-verifying everything is the scrubber's job.
Memory holds one fan-out directory's names at a time.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from meshpacs.erasure.decoder import VerifiedFragment, verify_fragment
from meshpacs.errors import FormatError, LimitExceeded
from meshpacs.store.durable import fsync_dir, remove_file
from meshpacs.store.index import FragmentIndex, FragmentState
from meshpacs.store.names import FANOUT, fragment_path, is_fragment_id

__all__ = ["ReconcileReport", "reconcile", "settle"]


@dataclass(frozen=True)
class ReconcileReport:
    """What opening the store had to repair; all zero after a clean shutdown."""

    temp_files_removed: int = 0
    interrupted_kept: int = 0  # ``writing`` rows whose file verified
    interrupted_dropped: int = 0  # ``writing`` rows with no good file
    unindexed_files_removed: int = 0
    missing_files_dropped: int = 0

    @property
    def clean(self) -> bool:
        return self == ReconcileReport()


def reconcile(index: FragmentIndex, root: Path, temp_files_removed: int) -> ReconcileReport:
    """Settle interrupted puts, then match every fan-out directory against the index."""
    kept = dropped = 0
    for fragment_id in index.in_state(FragmentState.WRITING):
        if settle(index, root, fragment_id):
            kept += 1
        else:
            dropped += 1
    unindexed = missing = 0
    for prefix in FANOUT:
        files_gone, rows_gone = _match_directory(index, root / prefix, prefix)
        unindexed += files_gone
        missing += rows_gone
    return ReconcileReport(temp_files_removed, kept, dropped, unindexed, missing)


def settle(index: FragmentIndex, root: Path, fragment_id: str) -> bool:
    """Make the row of ``fragment_id`` say what its file is, or remove both; True if kept."""
    row = index.get(fragment_id)
    path = fragment_path(root, fragment_id)
    verified = _verify_file(path)
    if row is None or verified is None:
        index.remove(fragment_id)
        remove_file(path)
        return False
    header = verified.header
    index.put(
        dataclasses.replace(
            row,
            size=header.fragment_size,
            share=header.share,
            set_hash=verified.set_hash,
            state=FragmentState.OK,
        )
    )
    return True


def _verify_file(path: Path) -> VerifiedFragment | None:
    try:
        with path.open("rb") as source:
            return verify_fragment(source)
    except (FileNotFoundError, FormatError, LimitExceeded):
        return None


def _match_directory(index: FragmentIndex, directory: Path, prefix: str) -> tuple[int, int]:
    on_disk = {
        entry.name
        for entry in os.scandir(directory)
        if is_fragment_id(entry.name)
        and entry.name.startswith(prefix)
        and entry.is_file(follow_symlinks=False)
    }
    indexed = index.ids_with_prefix(prefix)
    unindexed = on_disk - indexed
    for fragment_id in sorted(unindexed):
        (directory / fragment_id).unlink(missing_ok=True)
    if unindexed:
        fsync_dir(directory)
    missing = indexed - on_disk
    for fragment_id in sorted(missing):
        index.remove(fragment_id)
    return len(unindexed), len(missing)
