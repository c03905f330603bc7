"""The codec drill: one generated study through keys, bundle, fragments and back.

It runs what the whole mesh depends on, on this machine, with no network: generate a
study, encode it k-of-n under a fresh site's keys, lose n-k-1 fragments, corrupt one more,
decode from what is left and compare every instance byte for byte with the original; then
lose one more fragment and check that the answer is a precise ``Unrecoverable`` report, not
wrong bytes. Later issues turn this into the full local-federation drill.
"""

from __future__ import annotations

import hashlib
import io
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from meshpacs.erasure import (
    BundleDecoder,
    BundleRef,
    CodingParams,
    IndexEntry,
    InstanceChunk,
    InstanceEnd,
    InstanceSource,
    SegmentDecoder,
    encode_bundle,
    fragment_id,
    verify_fragment,
)
from meshpacs.errors import MeshError, Unrecoverable
from meshpacs.keys import SiteKeys, SiteSecret, unwrap_data_key, wrap_data_key
from meshpacs.testing import DEFAULT_STUDY, generate_study

__all__ = ["SelftestResult", "run_selftest"]

Report = Callable[[str], None]


@dataclass
class SelftestResult:
    """What the drill did and found; ``ok`` only if every check held."""

    seed: int
    k: int
    n: int
    instances: int = 0
    study_bytes: int = 0
    fragment_bytes: int = 0
    dropped: list[int] = field(default_factory=list)
    corrupted: int | None = None
    rejected: dict[int, str] = field(default_factory=dict)
    instances_identical: int = 0
    phi_found_in_fragments: bool = False
    unrecoverable_report: str = ""
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def run_selftest(
    workdir: Path,
    *,
    k: int = 4,
    n: int = 7,
    seed: int | None = None,
    segment_size: int = 1024 * 1024,
    report: Report = lambda line: None,
) -> SelftestResult:
    """Run the drill in ``workdir`` (which must be empty or absent)."""
    if not 1 <= k < n:
        raise ValueError(
            "the drill needs 1 <= k < n, so that one fragment can be lost and one corrupted"
        )
    params = CodingParams(k, n, segment_size)
    seed = secrets.randbelow(2**31) if seed is None else seed
    rng = random.Random(seed)
    result = SelftestResult(seed=seed, k=k, n=n)
    report(f"seed {seed} (pass --seed {seed} to repeat this run)")

    keys = _fresh_site(report)
    originals, phi_markers, sources = _write_study(workdir / "study", seed, result, report)
    fragments_dir = workdir / "fragments"
    fragments_dir.mkdir(parents=True)

    start = time.perf_counter()
    paths, bundle_id, set_hash, length, wrapped_key = _encode(sources, params, keys, fragments_dir)
    result.encode_seconds = time.perf_counter() - start
    result.fragment_bytes = sum(p.stat().st_size for p in paths)
    report(
        f"encoded into {n} fragments, {result.fragment_bytes / 1e6:.1f} MB in all"
        f" (k={k}: any {k} rebuild the study), {result.encode_seconds:.2f} s"
    )

    result.phi_found_in_fragments = _phi_in(paths, phi_markers)
    if result.phi_found_in_fragments:
        result.failures.append("patient data or UIDs found in fragment bytes")
    report(
        "fragments scanned for patient name, ID and UIDs: "
        + ("FOUND" if result.phi_found_in_fragments else "none found")
    )

    survivors = list(range(n))
    rng.shuffle(survivors)
    result.dropped = sorted(survivors[: n - k - 1])
    survivors = sorted(survivors[n - k - 1 :])
    result.corrupted = rng.choice(survivors)
    _corrupt(paths[result.corrupted], rng)
    report(f"lost fragments {_names(result.dropped)}; corrupted fragment {result.corrupted}")
    _holder_check(paths, survivors, set_hash, result, report)

    ref = BundleRef(bundle_id, params, length, set_hash)
    data_key = unwrap_data_key(keys.key_wrap, bundle_id, wrapped_key)
    start = time.perf_counter()
    _decode_and_compare(ref, data_key, [paths[i] for i in survivors], originals, result)
    result.decode_seconds = time.perf_counter() - start
    report(
        f"decoded from {len(survivors)} fragments: {result.instances_identical} of"
        f" {result.instances} instances byte-identical, {result.decode_seconds:.2f} s"
    )
    for why in result.rejected.values():
        report(f"  {why}")

    one_more = next(i for i in survivors if i != result.corrupted)
    fewer = [paths[i] for i in survivors if i != one_more]
    _expect_unrecoverable(ref, data_key, fewer, result)
    report(
        f"with fragment {one_more} lost as well: {result.unrecoverable_report or 'NOT REPORTED'}"
    )
    return result


def _holder_check(
    paths: list[Path], survivors: list[int], set_hash: bytes, result: SelftestResult, report: Report
) -> None:
    """Verify every surviving fragment on its own, as its holder would on a scrub."""
    bad = []
    for share in survivors:
        with paths[share].open("rb") as f:
            try:
                verify_fragment(f, set_hash)
            except MeshError as exc:
                bad.append(share)
                report(f"holder check: {exc}")
    if bad != [result.corrupted]:
        result.failures.append(
            f"holder check flagged fragments {bad}, expected [{result.corrupted}]"
        )


def _fresh_site(report: Report) -> SiteKeys:
    secret = SiteSecret.generate()
    if SiteSecret.from_phrase(secret.to_phrase()) != secret:
        raise MeshError("recovery phrase did not round-trip")
    keys = SiteKeys.derive(secret)
    report(f"fresh site secret, fingerprint {keys.fingerprint}; recovery phrase round-trips")
    return keys


def _write_study(
    directory: Path, seed: int, result: SelftestResult, report: Report
) -> tuple[list[bytes], list[bytes], list[InstanceSource]]:
    directory.mkdir(parents=True)
    originals: list[bytes] = []
    markers: set[bytes] = set()
    sources: list[InstanceSource] = []
    for number, instance in enumerate(generate_study(seed % 2**31, DEFAULT_STUDY)):
        path = directory / f"{number:06d}.dcm"  # counters only: no DICOM value in a path
        path.write_bytes(instance.data)
        digest = hashlib.sha256(instance.data).digest()
        entry = IndexEntry(instance.sop_instance_uid, len(instance.data), digest)
        sources.append(InstanceSource(entry, _opener(path)))
        originals.append(instance.data)
        markers.update(
            v.encode()
            for v in (
                instance.patient_id,
                instance.sop_instance_uid,
                instance.study_instance_uid,
                instance.series_instance_uid,
            )
        )
    markers.add(b"SYNTH^PATIENT")
    result.instances = len(originals)
    result.study_bytes = sum(len(d) for d in originals)
    report(f"generated a study of {result.instances} instances, {result.study_bytes / 1e6:.1f} MB")
    return originals, sorted(markers), sources


def _opener(path: Path) -> Callable[[], io.BufferedReader]:
    return lambda: path.open("rb")


def _encode(
    sources: list[InstanceSource], params: CodingParams, keys: SiteKeys, directory: Path
) -> tuple[list[Path], bytes, bytes, int, bytes]:
    bundle_id = secrets.token_bytes(16)
    # Fragment files are named by their keyed IDs, as a partner would store them.
    paths = [directory / fragment_id(keys.fragment_id, bundle_id, i) for i in range(params.n)]
    outputs = [p.open("wb") for p in paths]
    try:
        record = encode_bundle(sources, params, outputs, bundle_id=bundle_id)
    finally:
        for out in outputs:
            out.close()
    wrapped = wrap_data_key(keys.key_wrap, bundle_id, record.data_key)
    return paths, bundle_id, record.ref.set_hash, record.ref.length, wrapped


def _phi_in(paths: list[Path], markers: list[bytes]) -> bool:
    for path in paths:
        data = path.read_bytes()  # once per fragment, not once per marker
        if any(marker in data for marker in markers):
            return True
    return False


def _corrupt(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    path.write_bytes(data)


def _names(shares: list[int]) -> str:
    return ", ".join(str(s) for s in shares) if shares else "(none)"


def _decode_and_compare(
    ref: BundleRef,
    data_key: bytes,
    paths: list[Path],
    originals: list[bytes],
    result: SelftestResult,
) -> None:
    files = [p.open("rb") for p in paths]
    decoder: BundleDecoder | None = None
    try:
        hasher = hashlib.sha256()
        decoder = BundleDecoder(ref, data_key, files)
        for event in decoder.events():
            if isinstance(event, InstanceChunk):
                hasher.update(event.data)
            elif isinstance(event, InstanceEnd):
                position = event.position
                if hasher.digest() == hashlib.sha256(originals[position]).digest():
                    result.instances_identical += 1
                else:
                    result.failures.append(f"instance #{position} differs from the original")
                hasher = hashlib.sha256()
    except MeshError as exc:
        result.failures.append(f"decode failed: {exc}")
    finally:
        if decoder is not None:
            result.rejected = dict(decoder.rejected)
        for f in files:
            f.close()
    if result.instances_identical != len(originals):
        result.failures.append(
            f"{result.instances_identical} of {len(originals)} instances came back identical"
        )


def _expect_unrecoverable(
    ref: BundleRef, data_key: bytes, paths: list[Path], result: SelftestResult
) -> None:
    files = [p.open("rb") for p in paths]
    try:
        decoder = SegmentDecoder(ref, data_key, files)
        for _ in decoder.segments():
            pass
        result.failures.append("decoding from fewer than k good fragments did not fail")
    except Unrecoverable as exc:
        result.unrecoverable_report = str(exc)
    finally:
        for f in files:
            f.close()
