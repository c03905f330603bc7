"""The bundle format and the instance-level codec: exact bytes back, every check enforced."""

from __future__ import annotations

import hashlib
import io
import random
import secrets
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshpacs.erasure import (
    BundleIndex,
    IndexEntry,
    InstanceChunk,
    InstanceEnd,
    InstanceSource,
    decode_bundle,
    decode_bundle_to_memory,
    fragment_id,
)
from meshpacs.erasure.bundle import (
    MAX_INSTANCES,
    BundleParser,
    BundleStream,
    bundle_length,
    pack_index,
)
from meshpacs.erasure.layout import parse_header
from meshpacs.errors import (
    CorruptBundle,
    InputChanged,
    LimitExceeded,
    UnknownVersion,
    Unrecoverable,
    WrongKey,
)

from .helpers import SEGMENT, encode_instances, source, streams


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.sampled_from([0, 1, 100, SEGMENT - 1, SEGMENT, 2 * SEGMENT + 3]), max_size=6),
    seed=st.integers(),
    k=st.integers(1, 4),
    extra=st.integers(0, 3),
)
def test_instances_come_back_exactly_from_any_k(
    sizes: list[int], seed: int, k: int, extra: int
) -> None:
    rng = random.Random(seed)
    instances = [rng.randbytes(size) for size in sizes]
    n = k + extra
    record, fragments = encode_instances(instances, k, n)
    chosen = rng.sample(range(n), k)
    decoded = decode_bundle_to_memory(
        record.ref, record.data_key, streams([fragments[i] for i in chosen])
    )
    assert [data for _, data in decoded] == instances
    assert [e.sha256 for e, _ in decoded] == [hashlib.sha256(d).digest() for d in instances]


def test_events_report_index_then_each_instance_once_verified() -> None:
    instances = [b"first", b"", b"third" * 3000]
    record, fragments = encode_instances(instances, 2, 3)
    events = list(decode_bundle(record.ref, record.data_key, streams(fragments)))
    assert isinstance(events[0], BundleIndex)
    assert [e.size for e in events[0].entries] == [5, 0, 15000]
    ends = [e for e in events if isinstance(e, InstanceEnd)]
    assert [e.position for e in ends] == [0, 1, 2]
    chunks = [e for e in events if isinstance(e, InstanceChunk)]
    assert {c.position for c in chunks} == {0, 2}


@settings(max_examples=20, deadline=None)
@given(chunk=st.integers(1, 300), seed=st.integers())
def test_parser_gives_the_same_instances_whatever_the_chunking(chunk: int, seed: int) -> None:
    rng = random.Random(seed)
    instances = [rng.randbytes(rng.randrange(0, 700)) for _ in range(rng.randrange(0, 5))]
    sources = [source(f"1.2.3.{i}", d) for i, d in enumerate(instances)]
    stream = BundleStream(sources)
    plain = bytearray(stream.length)
    assert stream.readinto(memoryview(plain)) == stream.length
    parser = BundleParser(len(plain))
    got: list[bytes] = []
    part = b""
    for i in range(0, len(plain), chunk):
        for event in parser.feed(bytes(plain[i : i + chunk])):
            if isinstance(event, InstanceChunk):
                part += bytes(event.data)
            elif isinstance(event, InstanceEnd):
                got.append(part)
                part = b""
    parser.close()
    assert got == instances


def _plain(instances: list[bytes]) -> bytearray:
    stream = BundleStream([source(f"1.2.3.{i}", d) for i, d in enumerate(instances)])
    plain = bytearray(stream.length)
    stream.readinto(memoryview(plain))
    return plain


def test_parser_refuses_an_unknown_version() -> None:
    plain = _plain([b"x"])
    plain[0] = 9
    with pytest.raises(UnknownVersion, match="version 9"):
        BundleParser(len(plain)).feed(plain)


def test_parser_refuses_an_index_that_claims_too_many_instances() -> None:
    head = struct.pack(">B4sI", 1, b"MPBN", MAX_INSTANCES + 1)
    with pytest.raises(LimitExceeded):
        BundleParser(10**9).feed(head)


def test_parser_refuses_an_index_that_disagrees_with_the_length() -> None:
    plain = _plain([b"abc"])
    with pytest.raises(CorruptBundle, match="length"):
        BundleParser(len(plain) + 1).feed(plain)


def test_parser_refuses_bytes_that_do_not_match_the_digest_without_naming_the_uid() -> None:
    plain = _plain([b"abc", b"defgh"])
    plain[-1] ^= 1
    with pytest.raises(CorruptBundle) as info:
        BundleParser(len(plain)).feed(plain)
    assert "#1" in str(info.value) and "1.2.3" not in str(info.value)


def test_parser_refuses_a_stream_that_stops_early() -> None:
    plain = _plain([b"abcdef"])
    parser = BundleParser(len(plain))
    parser.feed(plain[:-2])
    with pytest.raises(CorruptBundle):
        parser.close()


@pytest.mark.parametrize(
    ("declared", "actual", "why"),
    [
        (b"abcd", b"abc", "early"),
        (b"abc", b"abcd", "longer"),
        (b"abcd", b"abce", "SHA-256"),
    ],
)
def test_an_instance_that_changed_since_cataloguing_is_refused(
    declared: bytes, actual: bytes, why: str
) -> None:
    entry = IndexEntry("1.2.3.4", len(declared), hashlib.sha256(declared).digest())
    stream = BundleStream([InstanceSource(entry, lambda: io.BytesIO(actual))])
    with pytest.raises(InputChanged, match=why):
        stream.readinto(memoryview(bytearray(stream.length + 10)))


def test_length_is_known_before_reading_any_instance() -> None:
    entries = [IndexEntry("1.2.3", 10, bytes(32)), IndexEntry("1.2.3.44", 0, bytes(32))]
    assert bundle_length(entries) == len(pack_index(entries)) + 10


def test_wrong_data_key_is_an_error_never_garbage() -> None:
    record, fragments = encode_instances([b"pixel data" * 1000], 2, 3)
    with pytest.raises(WrongKey):
        decode_bundle_to_memory(record.ref, secrets.token_bytes(32), streams(fragments))


def test_unknown_fragment_version_is_refused_with_a_clear_reason() -> None:
    record, fragments = encode_instances([b"abc"], 1, 2)
    future = b"\x02" + fragments[0][1:]
    with pytest.raises(UnknownVersion, match="fragment has format version 2"):
        parse_header(future)
    with pytest.raises(Unrecoverable) as info:
        decode_bundle_to_memory(record.ref, record.data_key, streams([future]))
    assert "version 2" in info.value.rejected[0]


def test_fragments_carry_no_uid_and_no_patient_bytes() -> None:
    uid = "1.2.826.0.1.3680043.8.498.77"
    instance = b"DICM" + b"DOE^JANE" + uid.encode() + b"\x00" * 64
    entry = IndexEntry(uid, len(instance), hashlib.sha256(instance).digest())
    outputs = [io.BytesIO() for _ in range(3)]
    from meshpacs.erasure import CodingParams, encode_bundle

    encode_bundle(
        [InstanceSource(entry, lambda: io.BytesIO(instance))], CodingParams(2, 3, SEGMENT), outputs
    )
    for out in outputs:
        blob = out.getvalue()
        assert b"DOE^JANE" not in blob and uid.encode() not in blob and b"498.77" not in blob


def test_fragment_ids_are_keyed_opaque_and_distinct() -> None:
    key, other_key = secrets.token_bytes(32), secrets.token_bytes(32)
    bundle, other_bundle = secrets.token_bytes(16), secrets.token_bytes(16)
    ids = {fragment_id(key, bundle, i) for i in range(7)}
    assert len(ids) == 7 and all(len(i) == 64 and int(i, 16) >= 0 for i in ids)
    assert fragment_id(key, bundle, 0) == fragment_id(key, bundle, 0)
    assert fragment_id(other_key, bundle, 0) not in ids
    assert fragment_id(key, other_bundle, 0) not in ids
    assert bundle.hex() not in "".join(ids)
