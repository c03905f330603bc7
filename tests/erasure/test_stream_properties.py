"""Property tests of the segment codec: every k-subset decodes, every bad bit is caught."""

from __future__ import annotations

import io
import itertools
import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from meshpacs.erasure import SegmentDecoder, verify_fragment
from meshpacs.erasure.layout import HEADER_SIZE
from meshpacs.errors import CorruptFragment, FormatError, LimitExceeded, Unrecoverable

from .helpers import SEGMENT, encode_bytes, streams

# What verifying a damaged fragment may raise: a bad field, or a bound it claims to exceed.
REJECTED = (FormatError, LimitExceeded)

SIZES = [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT, 3 * SEGMENT + 17]

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def k_n(draw: st.DrawFn) -> tuple[int, int]:
    n = draw(st.integers(min_value=1, max_value=7))
    k = draw(st.integers(min_value=1, max_value=n))
    return k, n


def decode(record, fragments) -> bytes:  # type: ignore[no-untyped-def]
    decoder = SegmentDecoder(record.ref, record.data_key, fragments)
    return b"".join(bytes(s) for s in decoder.segments())


@PROPERTY
@given(size=st.sampled_from(SIZES) | st.integers(0, 5 * SEGMENT), kn=k_n(), seed=st.integers())
@example(size=0, kn=(1, 1), seed=0)
@example(size=1, kn=(1, 5), seed=0)
@example(size=SEGMENT, kn=(5, 5), seed=0)
@example(size=SEGMENT + 1, kn=(3, 7), seed=0)
@example(size=SEGMENT - 1, kn=(7, 7), seed=0)
def test_every_k_subset_decodes_exactly(size: int, kn: tuple[int, int], seed: int) -> None:
    k, n = kn
    data = random.Random(seed).randbytes(size)
    record, fragments = encode_bytes(data, k, n)
    for subset in itertools.combinations(range(n), k):
        assert decode(record, streams([fragments[i] for i in subset])) == data, subset


@PROPERTY
@given(size=st.sampled_from(SIZES), kn=k_n(), seed=st.integers())
def test_fewer_than_k_is_unrecoverable_and_names_what_is_missing(
    size: int, kn: tuple[int, int], seed: int
) -> None:
    k, n = kn
    record, fragments = encode_bytes(random.Random(seed).randbytes(size), k, n)
    rng = random.Random(seed)
    kept = sorted(rng.sample(range(n), k - 1))
    with pytest.raises(Unrecoverable) as info:
        decode(record, streams([fragments[i] for i in kept]))
    assert info.value.missing == tuple(s for s in range(n) if s not in kept)
    assert info.value.good == k - 1


@PROPERTY
@given(
    size=st.sampled_from(SIZES),
    kn=k_n(),
    seed=st.integers(),
    where=st.floats(min_value=0, max_value=1, exclude_max=True),
    bit=st.integers(0, 7),
)
def test_a_flipped_bit_anywhere_rejects_that_fragment_only(
    size: int, kn: tuple[int, int], seed: int, where: float, bit: int
) -> None:
    k, n = kn
    rng = random.Random(seed)
    data = rng.randbytes(size)
    record, fragments = encode_bytes(data, k, n)
    victim = rng.randrange(n)
    bad = bytearray(fragments[victim])
    bad[int(where * len(bad))] ^= 1 << bit
    corrupted = [bytes(bad) if i == victim else f for i, f in enumerate(fragments)]

    with pytest.raises(REJECTED):
        verify_fragment(io.BytesIO(corrupted[victim]), record.ref.set_hash)

    # Made to use it: k fragments, the bad one among them.
    others = [i for i in range(n) if i != victim][: k - 1]
    subset = [victim, *others]
    with pytest.raises(Unrecoverable) as info:
        decode(record, streams([corrupted[i] for i in subset]))
    assert list(info.value.rejected) == [0]

    # All n offered: the others still give the exact bytes.
    if n > k:
        decoder = SegmentDecoder(record.ref, record.data_key, streams(corrupted))
        assert b"".join(bytes(s) for s in decoder.segments()) == data
        assert set(decoder.rejected) <= {victim}


@PROPERTY
@given(size=st.sampled_from(SIZES), kn=k_n(), seed=st.integers(), data=st.data())
def test_truncated_fragments_are_rejected(
    size: int, kn: tuple[int, int], seed: int, data: st.DataObject
) -> None:
    k, n = kn
    record, fragments = encode_bytes(random.Random(seed).randbytes(size), k, n)
    victim = data.draw(st.integers(0, n - 1))
    cut = data.draw(st.integers(0, len(fragments[victim]) - 1))
    with pytest.raises(REJECTED):
        verify_fragment(io.BytesIO(fragments[victim][:cut]))
    offered = streams([fragments[victim][:cut], *fragments[:victim], *fragments[victim + 1 :]])
    if n > k:
        decoder = SegmentDecoder(record.ref, record.data_key, offered)
        b"".join(bytes(s) for s in decoder.segments())
        assert list(decoder.rejected) == [0]


def test_fragments_of_another_bundle_are_rejected_even_with_the_same_data() -> None:
    data = random.Random(1).randbytes(3 * SEGMENT)
    record, fragments = encode_bytes(data, 2, 4)
    _, strangers = encode_bytes(data, 2, 4)
    with pytest.raises(Unrecoverable) as info:
        SegmentDecoder(record.ref, record.data_key, streams([*strangers, fragments[3]]))
    assert set(info.value.rejected) == {0, 1, 2, 3}
    assert all("another bundle" in why for why in info.value.rejected.values())


def test_spliced_fragment_header_of_one_share_body_of_another_is_rejected() -> None:
    record, fragments = encode_bytes(random.Random(2).randbytes(2 * SEGMENT), 2, 4)
    spliced = fragments[1][:HEADER_SIZE] + fragments[2][HEADER_SIZE:]
    with pytest.raises(CorruptFragment):
        verify_fragment(io.BytesIO(spliced), record.ref.set_hash)
    with pytest.raises(Unrecoverable) as info:
        SegmentDecoder(record.ref, record.data_key, streams([spliced, fragments[3]]))
    assert list(info.value.rejected) == [0]
    assert info.value.missing == (0, 2)


def test_swapped_and_duplicated_fragments_in_any_order_decode() -> None:
    data = random.Random(3).randbytes(5 * SEGMENT + 5)
    record, fragments = encode_bytes(data, 3, 6)
    offered = [fragments[5], fragments[5], fragments[4], fragments[1], fragments[4]]
    assert decode(record, streams(offered)) == data


def test_duplicate_good_copy_replaces_a_corrupt_one_of_the_same_share() -> None:
    data = random.Random(4).randbytes(4 * SEGMENT)
    record, fragments = encode_bytes(data, 2, 3)
    bad = bytearray(fragments[0])
    bad[-HEADER_SIZE - 200] ^= 0xFF  # inside the last block region, found mid-decode
    offered = streams([bytes(bad), fragments[1], fragments[0]])
    decoder = SegmentDecoder(record.ref, record.data_key, offered)
    assert b"".join(bytes(s) for s in decoder.segments()) == data
    assert list(decoder.rejected) == [0]


@pytest.mark.parametrize(("k", "n"), [(1, 2), (2, 3), (3, 3)])
def test_every_single_bit_flip_in_a_small_fragment_is_caught(k: int, n: int) -> None:
    """Exhaustive over every byte of a fragment: header, blocks, block hashes, share roots."""
    data = random.Random(5).randbytes(SEGMENT + 300)  # two segments, the last one short
    record, fragments = encode_bytes(data, k, n)
    original = fragments[0]
    for offset in range(len(original)):
        bad = bytearray(original)
        bad[offset] ^= 1 << (offset % 8)
        with pytest.raises(REJECTED):
            verify_fragment(io.BytesIO(bytes(bad)), record.ref.set_hash)
        offered = streams([bytes(bad), *fragments[1:]])
        if n > k:
            assert decode(record, offered) == data
        else:
            with pytest.raises(Unrecoverable):
                decode(record, offered)
