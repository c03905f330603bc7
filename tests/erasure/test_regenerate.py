"""Regenerating lost shares: from any k good fragments, the exact bytes first encoded."""

from __future__ import annotations

import io
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import meshpacs.erasure.regenerate as regenerate_module
from meshpacs.erasure import regenerate_shares, verify_fragment
from meshpacs.erasure.layout import HEADER_SIZE
from meshpacs.errors import CorruptFragment, Unrecoverable

from .helpers import SEGMENT, encode_bytes, streams

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def regenerate(record, fragments, shares):  # type: ignore[no-untyped-def]
    outputs = [io.BytesIO() for _ in shares]
    rejected = regenerate_shares(record.ref, fragments, shares, outputs)
    return [o.getvalue() for o in outputs], rejected


@PROPERTY
@given(
    size=st.sampled_from([0, 1, SEGMENT, 3 * SEGMENT + 17]) | st.integers(0, 4 * SEGMENT),
    n=st.integers(1, 8),
    data=st.data(),
)
def test_any_k_shares_regenerate_every_other_share_byte_for_byte(
    size: int, n: int, data: st.DataObject
) -> None:
    k = data.draw(st.integers(1, n), label="k")
    seed = data.draw(st.integers(0, 2**32), label="seed")
    rng = random.Random(seed)
    record, fragments = encode_bytes(rng.randbytes(size), k, n)
    kept = rng.sample(range(n), k)
    lost = [s for s in range(n) if s not in kept] or [kept[0]]
    rebuilt, rejected = regenerate(record, streams([fragments[s] for s in kept]), lost)
    assert rejected == {}
    assert rebuilt == [fragments[s] for s in lost]
    for share, fragment in zip(lost, rebuilt, strict=True):
        verified = verify_fragment(io.BytesIO(fragment), record.ref.set_hash)
        assert verified.header.share == share


def test_a_bad_source_is_passed_over_when_k_good_ones_remain() -> None:
    record, fragments = encode_bytes(random.Random(7).randbytes(3 * SEGMENT), 3, 6)
    rotten = bytearray(fragments[0])
    rotten[HEADER_SIZE + 10] ^= 0x01  # a share byte in segment 0
    sources = [bytes(rotten), fragments[1], fragments[2], fragments[3]]
    rebuilt, rejected = regenerate(record, streams(sources), [4, 5])
    assert rebuilt == [fragments[4], fragments[5]]
    assert list(rejected) == [0] and "segment 0" in rejected[0]


def test_a_fragment_of_another_bundle_is_refused_not_used() -> None:
    record, fragments = encode_bytes(b"x" * 5000, 2, 4)
    _, foreign = encode_bytes(b"x" * 5000, 2, 4)
    with pytest.raises(Unrecoverable) as caught:
        regenerate(record, streams([fragments[0], foreign[1]]), [2])
    assert caught.value.good == 1
    assert "another bundle" in str(caught.value)


def test_fewer_than_k_good_fragments_is_unrecoverable() -> None:
    record, fragments = encode_bytes(b"y" * 9000, 3, 5)
    with pytest.raises(Unrecoverable) as caught:
        regenerate(record, streams(fragments[:2]), [3, 4])
    assert caught.value.k == 3 and caught.value.good == 2


def test_a_wrong_recorded_root_is_caught_before_any_trailer_is_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A regenerated share that disagrees with its root (a codec bug, which cannot be made
    real) leaves no output whole."""
    record, fragments = encode_bytes(b"z" * 6000, 2, 4)
    real = regenerate_module.share_root

    def wrong_for_share_3(bundle_id: bytes, share: int, hashes: tuple[bytes, ...]) -> bytes:
        return real(bundle_id, share, hashes) if share != 3 else bytes(32)

    monkeypatch.setattr(regenerate_module, "share_root", wrong_for_share_3)
    outputs = [io.BytesIO(), io.BytesIO()]
    with pytest.raises(CorruptFragment, match="recorded root"):
        regenerate_shares(record.ref, streams(fragments[:2]), [2, 3], outputs)
    assert all(len(o.getvalue()) < len(fragments[2]) for o in outputs)  # no trailer on either


@pytest.mark.parametrize("shares", [[], [1, 1], [4], [-1]])
def test_the_shares_asked_for_must_be_distinct_and_in_range(shares: list[int]) -> None:
    record, fragments = encode_bytes(b"w" * 100, 2, 4)
    with pytest.raises(ValueError, match="distinct"):
        regenerate(record, streams(fragments[:2]), shares)
