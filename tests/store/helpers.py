"""Real fragments for the store tests, made by the bundle codec from seeded random instances."""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meshpacs.erasure import (
    CodingParams,
    EncodedBundle,
    IndexEntry,
    InstanceSource,
    encode_bundle,
    fragment_id,
)
from meshpacs.store import FragmentStore, StoredFragment

from ..metadata.helpers import FakeClock as FakeClock  # one fake clock for every suite

SEGMENT = 4096  # the smallest allowed, so a few KB span several segments
OWNER = "st-marys"
OTHER = "county-general"


@dataclass(frozen=True)
class Fragment:
    """One encoded fragment, its ID under a test key, and the bundle it belongs to."""

    fid: str
    data: bytes
    share: int
    bundle: EncodedBundle
    instances: tuple[bytes, ...]  # what the bundle decodes back to

    @property
    def size(self) -> int:
        return len(self.data)


def source(uid: str, data: bytes) -> InstanceSource:
    entry = IndexEntry(uid, len(data), hashlib.sha256(data).digest())
    return InstanceSource(entry, lambda: io.BytesIO(data))


def make_bundle(
    seed: int, sizes: tuple[int, ...] = (3000, 9000), k: int = 2, n: int = 3
) -> list[Fragment]:
    """The n fragments of one bundle of random instances; everything follows from ``seed``."""
    rng = random.Random(seed)
    instances = tuple(rng.randbytes(size) for size in sizes)
    sources = [source(f"1.2.826.0.1.3680043.8.498.{i + 1}", d) for i, d in enumerate(instances)]
    outputs = [io.BytesIO() for _ in range(n)]
    bundle = encode_bundle(
        sources,
        CodingParams(k, n, SEGMENT),
        outputs,
        bundle_id=rng.randbytes(16),
        data_key=rng.randbytes(32),
    )
    id_key = rng.randbytes(32)
    return [
        Fragment(
            fragment_id(id_key, bundle.ref.bundle_id, share),
            out.getvalue(),
            share,
            bundle,
            instances,
        )
        for share, out in enumerate(outputs)
    ]


def flip(offset: Callable[[Fragment], int]) -> Callable[[Fragment], bytes]:
    """A corruption: the fragment's bytes with one bit flipped at ``offset(fragment)``."""

    def corrupt(fragment: Fragment) -> bytes:
        data = bytearray(fragment.data)
        data[offset(fragment)] ^= 0x01
        return bytes(data)

    return corrupt


def chunks(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def files_under(directory: Path) -> list[Path]:
    """Every fragment or temp file in a store directory (not the index, WAL or lock)."""
    skip = {"index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "lock"}
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in skip)


def put(
    store: FragmentStore,
    fragment: Fragment,
    owner: str = OWNER,
    *,
    data: bytes | None = None,
    size: int | None = None,
    expected_set_hash: bytes | None = None,
) -> StoredFragment:
    """Stream ``data`` (the fragment's own bytes by default) in 1000-byte chunks and commit."""
    body = fragment.data if data is None else data
    pending = store.begin_put(fragment.fid, owner, len(body) if size is None else size)
    with pending:
        for chunk in chunks(body):
            pending.write(chunk)
        return pending.commit(expected_set_hash)
