"""A generated study of 1 GB encodes and decodes with memory bounded by the segment size.

The bound is stated, not measured-and-copied: peak traced Python memory during encode and
during a worst-case decode (all parity shares used, n-k primaries missing) must stay under
``(n + 8) * segment_size`` = 15 MiB for k=4, n=7 and 1 MiB segments, that is k+n block
buffers, one ciphertext and one plaintext segment, and slack for the largest instance in
flight; it must not grow with the study. ``MESHPACS_MEMORY_TEST_BYTES`` shrinks the study for
a quick local run; CI runs the full gigabyte.
"""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from meshpacs.erasure import (
    CodingParams,
    IndexEntry,
    InstanceChunk,
    InstanceEnd,
    InstanceSource,
    decode_bundle,
    encode_bundle,
)
from meshpacs.testing import study_of_size

STUDY_BYTES = int(os.environ.get("MESHPACS_MEMORY_TEST_BYTES", 1_000_000_000))
PARAMS = CodingParams(k=4, n=7, segment_size=1024 * 1024)
BOUND = (PARAMS.n + 8) * PARAMS.segment_size

T = TypeVar("T")


def peak_while(run: Callable[[], T]) -> tuple[T, int]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _opener(path: Path) -> Callable[[], object]:
    return lambda: path.open("rb", buffering=0)


def test_one_gigabyte_study_encodes_and_decodes_in_bounded_memory(tmp_path: Path) -> None:
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    sources = []
    for number, instance in enumerate(study_of_size(7, STUDY_BYTES)):
        path = study_dir / f"{number:06d}.dcm"  # counters, never a DICOM value, in a path
        path.write_bytes(instance.data)
        entry = IndexEntry(
            instance.sop_instance_uid, len(instance.data), hashlib.sha256(instance.data).digest()
        )
        sources.append(InstanceSource(entry, _opener(path)))  # type: ignore[arg-type]
    total = sum(s.entry.size for s in sources)
    assert total >= STUDY_BYTES

    paths = [tmp_path / f"fragment-{i}" for i in range(PARAMS.n)]
    outputs = [p.open("wb") for p in paths]
    try:
        record, encode_peak = peak_while(lambda: encode_bundle(sources, PARAMS, outputs))
    finally:
        for out in outputs:
            out.close()

    worst = [p.open("rb") for p in paths[PARAMS.n - PARAMS.k :]]  # shares 3..6: 3 primaries gone

    def decode_all() -> tuple[int, int]:
        instances = decoded = 0
        for event in decode_bundle(record.ref, record.data_key, worst):
            if isinstance(event, InstanceChunk):
                decoded += len(event.data)
            elif isinstance(event, InstanceEnd):
                instances += 1
        return instances, decoded

    try:
        (instances, decoded), decode_peak = peak_while(decode_all)
    finally:
        for f in worst:
            f.close()

    print(
        f"study {total} B in {len(sources)} instances; peak encode {encode_peak} B, "
        f"decode {decode_peak} B; bound {BOUND} B"
    )
    assert instances == len(sources)
    assert decoded == total
    assert encode_peak < BOUND
    assert decode_peak < BOUND
