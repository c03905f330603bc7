"""Shared helpers for the codec tests: in-memory instances and fragments."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence

from meshpacs.erasure import CodingParams, EncodedBundle, IndexEntry, InstanceSource, encode_bundle
from meshpacs.erasure.encoder import encode_stream

SEGMENT = 4096  # the smallest allowed, so a few KB span several segments


def source(uid: str, data: bytes) -> InstanceSource:
    entry = IndexEntry(uid, len(data), hashlib.sha256(data).digest())
    return InstanceSource(entry, lambda: io.BytesIO(data))


def encode_instances(
    instances: Sequence[bytes], k: int, n: int, segment: int = SEGMENT
) -> tuple[EncodedBundle, list[bytes]]:
    outputs = [io.BytesIO() for _ in range(n)]
    sources = [source(f"1.2.826.0.1.3680043.8.498.{i + 1}", d) for i, d in enumerate(instances)]
    record = encode_bundle(sources, CodingParams(k, n, segment), outputs)
    return record, [o.getvalue() for o in outputs]


def encode_bytes(
    data: bytes, k: int, n: int, segment: int = SEGMENT
) -> tuple[EncodedBundle, list[bytes]]:
    outputs = [io.BytesIO() for _ in range(n)]
    record = encode_stream(io.BytesIO(data), len(data), CodingParams(k, n, segment), outputs)
    return record, [o.getvalue() for o in outputs]


def streams(fragments: Sequence[bytes]) -> list[io.BytesIO]:
    return [io.BytesIO(f) for f in fragments]
