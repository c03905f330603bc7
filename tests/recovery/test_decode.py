"""Decoding gathered fragments into files: only instances that match the catalog, no leftovers."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random
import secrets
from pathlib import Path

import pytest

from meshpacs.erasure import CodingParams, IndexEntry, encode_stream, fragment_id
from meshpacs.erasure.bundle import pack_index
from meshpacs.errors import CorruptBundle, Unrecoverable, WrongKey
from meshpacs.recovery.decode import decode_to_files
from meshpacs.recovery.model import PlannedBundle

from ..store.helpers import SEGMENT, Fragment
from .holders import KEY_WRAP_KEY, Made, files_in, make, planned_bundle


def write_fragments(made: Made, directory: Path, shares: list[int]) -> dict[int, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for share in shares:
        paths[share] = directory / f"{share}.frag"
        paths[share].write_bytes(made.fragments[share].data)
    return paths


def decode(
    made: Made, paths: dict[int, Path], outdir: Path, bundle: PlannedBundle | None = None
) -> list[tuple[int, bytes]]:
    """(position, bytes) of each instance yielded, read as soon as it is yielded."""
    got = []
    for instance, path in decode_to_files(bundle or made.bundle, KEY_WRAP_KEY, paths, outdir):
        assert path.parent == outdir and path.suffix == ".dcm"
        got.append((instance.position, path.read_bytes()))
    return got


def tampered(seed: int, sizes: tuple[int, ...], bad: int, k: int = 2, n: int = 3) -> Made:
    """A bundle whose index is honest but whose instance ``bad`` has one byte changed.

    The fragments are real and verify (the damage predates encoding); only the
    instance's own SHA-256 can tell.
    """
    rng = random.Random(seed)
    instances = tuple(rng.randbytes(size) for size in sizes)
    entries = [
        IndexEntry(f"1.2.826.0.1.3680043.8.498.{i + 1}", len(d), hashlib.sha256(d).digest())
        for i, d in enumerate(instances)
    ]
    body = [bytearray(d) for d in instances]
    body[bad][len(body[bad]) // 2] ^= 0x01
    stream = pack_index(entries) + b"".join(body)
    outputs = [io.BytesIO() for _ in range(n)]
    encoded = encode_stream(
        io.BytesIO(stream),
        len(stream),
        CodingParams(k, n, SEGMENT),
        outputs,
        bundle_id=rng.randbytes(16),
        data_key=rng.randbytes(32),
    )
    id_key = rng.randbytes(32)
    fragments = [
        Fragment(
            fragment_id(id_key, encoded.ref.bundle_id, share),
            out.getvalue(),
            share,
            encoded,
            instances,
        )
        for share, out in enumerate(outputs)
    ]
    return Made(planned_bundle(fragments), fragments, instances)


def test_every_instance_decodes_to_its_exact_bytes_in_its_own_file(tmp_path: Path) -> None:
    made = make(seed=20, sizes=(3000, 0, 20_000), k=2, n=3)
    paths = write_fragments(made, tmp_path / "frags", [2, 0])
    got = decode(made, paths, tmp_path / "out")
    assert got == list(enumerate(made.instances))
    stem = made.bundle.bundle_id.hex()
    assert files_in(tmp_path / "out") == [f"{stem}-{i}.dcm" for i in range(3)]


def test_an_instance_that_fails_its_digest_is_never_delivered(tmp_path: Path) -> None:
    made = tampered(seed=21, sizes=(3000, 20_000, 5000), bad=1)
    paths = write_fragments(made, tmp_path / "frags", [0, 1])
    got: list[int] = []
    with pytest.raises(CorruptBundle, match="instance #1 does not match its SHA-256"):
        for instance, path in decode_to_files(made.bundle, KEY_WRAP_KEY, paths, tmp_path / "out"):
            assert path.read_bytes() == made.instances[instance.position]
            got.append(instance.position)
    assert got == [0]
    assert files_in(tmp_path / "out") == [f"{made.bundle.bundle_id.hex()}-0.dcm"]  # no .part


def test_a_bundle_that_is_not_the_one_catalogued_delivers_nothing(tmp_path: Path) -> None:
    made = make(seed=22, sizes=(3000, 9000))
    paths = write_fragments(made, tmp_path / "frags", [0, 1])
    changed = dataclasses.replace(made.bundle.instances[1], sha256=bytes(32))
    bundle = dataclasses.replace(made.bundle, instances=(made.bundle.instances[0], changed))
    with pytest.raises(CorruptBundle, match="instance #1 of the bundle is not the one catalogued"):
        decode(made, paths, tmp_path / "out", bundle)
    assert files_in(tmp_path / "out") == []


def test_an_instance_the_bundle_does_not_hold_is_corrupt(tmp_path: Path) -> None:
    made = make(seed=23, sizes=(3000,))
    paths = write_fragments(made, tmp_path / "frags", [0, 1])
    extra = dataclasses.replace(made.bundle.instances[0], position=1)
    bundle = dataclasses.replace(made.bundle, instances=(*made.bundle.instances, extra))
    with pytest.raises(CorruptBundle, match="lists instance #1, the bundle holds 1"):
        decode(made, paths, tmp_path / "out", bundle)
    assert files_in(tmp_path / "out") == []


def test_instances_the_catalog_does_not_list_are_skipped(tmp_path: Path) -> None:
    made = make(seed=24, sizes=(3000, 9000, 4000))
    paths = write_fragments(made, tmp_path / "frags", [1, 2])
    bundle = dataclasses.replace(made.bundle, instances=(made.bundle.instances[1],))
    assert decode(made, paths, tmp_path / "out", bundle) == [(1, made.instances[1])]
    assert files_in(tmp_path / "out") == [f"{made.bundle.bundle_id.hex()}-1.dcm"]


def test_the_wrong_key_wrap_key_opens_nothing(tmp_path: Path) -> None:
    made = make(seed=25)
    paths = write_fragments(made, tmp_path / "frags", [0, 1])
    with pytest.raises(WrongKey):
        list(decode_to_files(made.bundle, secrets.token_bytes(32), paths, tmp_path / "out"))
    assert files_in(tmp_path / "out") == []


@pytest.mark.parametrize("spare", [False, True])
def test_a_fragment_going_bad_halfway_is_replaced_or_leaves_no_partial_file(
    tmp_path: Path, spare: bool
) -> None:
    made = make(seed=26, sizes=(3000, 40_000), k=2, n=3)
    paths = write_fragments(made, tmp_path / "frags", [0, 1, 2] if spare else [0, 1])
    data = bytearray(paths[0].read_bytes())
    data[made.bundle.ref.header.block_offset(5) + 7] ^= 0x80  # inside instance #1
    paths[0].write_bytes(bytes(data))
    got: list[tuple[int, bytes]] = []
    if spare:
        got = decode(made, paths, tmp_path / "out")
        assert got == list(enumerate(made.instances))
        return
    with pytest.raises(Unrecoverable) as caught:
        for instance, path in decode_to_files(made.bundle, KEY_WRAP_KEY, paths, tmp_path / "out"):
            got.append((instance.position, path.read_bytes()))
    assert got == [(0, made.instances[0])]
    assert caught.value.good == 1
    assert files_in(tmp_path / "out") == [f"{made.bundle.bundle_id.hex()}-0.dcm"]
