"""Shamir escrow: any t shares rebuild the secret, t-1 do not, and mistakes are refused."""

from __future__ import annotations

import dataclasses
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshpacs.errors import ShamirError, UnknownVersion
from meshpacs.keys.shamir import (
    ShamirShare,
    _gf_div,
    _gf_mul,
    combine,
    decode_share,
    encode_share,
    interpolate,
    split,
)

_SECRET = bytes(range(100, 132))
_PARAMETERS = [(1, 1), (1, 3), (2, 2), (2, 3), (3, 5), (5, 5)]


def _points(shares: tuple[ShamirShare, ...]) -> list[tuple[int, bytes]]:
    return [(share.x, share.y) for share in shares]


def test_gf256_matches_fips197_example() -> None:
    # FIPS-197 section 4.2: {57} * {83} = {c1}.
    assert _gf_mul(0x57, 0x83) == 0xC1
    assert _gf_mul(0x57, 0x13) == 0xFE


def test_gf256_every_nonzero_element_has_an_inverse() -> None:
    for a in range(1, 256):
        inverse = _gf_div(1, a)
        assert _gf_mul(a, inverse) == 1
        for b in (1, 2, 0x53, 0xFF):
            assert _gf_mul(_gf_div(b, a), a) == b


@pytest.mark.parametrize(("threshold", "count"), _PARAMETERS)
def test_every_threshold_subset_combines(threshold: int, count: int) -> None:
    shares = split(_SECRET, threshold, count)
    assert [share.x for share in shares] == list(range(1, count + 1))
    assert len({share.split_id for share in shares}) == 1
    for subset in itertools.combinations(shares, threshold):
        assert combine(subset) == _SECRET
        assert combine(subset[::-1]) == _SECRET
        assert interpolate(_points(subset)) == _SECRET


@pytest.mark.parametrize(("threshold", "count"), _PARAMETERS)
def test_every_smaller_subset_fails(threshold: int, count: int) -> None:
    shares = split(_SECRET, threshold, count)
    subsets = list(itertools.combinations(shares, threshold - 1))
    assert len(subsets) >= 1
    for subset in subsets:
        if not subset:
            # t = 1: the only smaller subset is empty.
            with pytest.raises(ShamirError, match="no escrow shares"):
                combine(subset)
            continue
        assert interpolate(_points(subset)) != _SECRET
        with pytest.raises(ShamirError, match=f"need {threshold} distinct"):
            combine(subset)


def test_combine_with_no_shares() -> None:
    with pytest.raises(ShamirError, match="no escrow shares"):
        combine([])
    with pytest.raises(ShamirError):
        interpolate([])


def test_more_than_threshold_shares_still_combine() -> None:
    shares = split(_SECRET, 3, 6)
    assert combine(shares) == _SECRET
    assert combine(shares[2:]) == _SECRET


def test_single_share_reveals_nothing_about_a_byte() -> None:
    # With t = 2, share 1 of a fixed secret byte takes every value across splits.
    seen = {split(b"\x42", 2, 2)[0].y for _ in range(3000)}
    assert len(seen) > 240


def test_mixed_splits_refused() -> None:
    first, second = split(_SECRET, 2, 3), split(_SECRET, 2, 3)
    with pytest.raises(ShamirError, match="different splits"):
        combine([first[0], second[1]])


def test_mixed_thresholds_refused() -> None:
    shares = split(_SECRET, 2, 3)
    forged = dataclasses.replace(shares[1], threshold=3)
    with pytest.raises(ShamirError, match="threshold"):
        combine([shares[0], forged, shares[2]])


def test_duplicate_share_counts_once() -> None:
    shares = split(_SECRET, 3, 5)
    with pytest.raises(ShamirError, match="need 3 distinct escrow shares of this split, have 2"):
        combine([shares[0], shares[1], shares[0]])
    assert combine([shares[0], shares[0], shares[1], shares[4]]) == _SECRET


def test_duplicate_x_with_different_y_refused() -> None:
    shares = split(_SECRET, 2, 3)
    forged = dataclasses.replace(shares[0], y=bytes(len(_SECRET)))
    with pytest.raises(ShamirError, match="x = 1"):
        combine([shares[0], forged, shares[1]])


def test_different_y_lengths_refused() -> None:
    shares = split(_SECRET, 2, 3)
    forged = dataclasses.replace(shares[1], y=shares[1].y[:-1])
    with pytest.raises(ShamirError, match="different lengths"):
        combine([shares[0], forged])
    with pytest.raises(ShamirError):
        interpolate([(1, b"ab"), (2, b"abc")])


def test_corrupted_y_detected_by_check() -> None:
    shares = split(_SECRET, 3, 5)
    for index in range(len(_SECRET)):
        y = bytearray(shares[1].y)
        y[index] ^= 0x01
        corrupted = dataclasses.replace(shares[1], y=bytes(y))
        with pytest.raises(ShamirError, match="does not match"):
            combine([shares[0], corrupted, shares[2]])


def test_corrupted_check_detected() -> None:
    shares = split(_SECRET, 2, 2)
    forged = [dataclasses.replace(share, check=b"\x00\x00\x00\x00") for share in shares]
    with pytest.raises(ShamirError, match="does not match"):
        combine(forged)
    with pytest.raises(ShamirError, match="check value"):
        combine([shares[0], forged[1]])


@pytest.mark.parametrize(("threshold", "count"), [(0, 1), (2, 1), (1, 256), (256, 256), (-1, 3)])
def test_bad_split_parameters(threshold: int, count: int) -> None:
    with pytest.raises(ShamirError):
        split(_SECRET, threshold, count)


def test_empty_secret_refused() -> None:
    with pytest.raises(ShamirError):
        split(b"", 1, 1)


def test_interpolate_refuses_bad_points() -> None:
    with pytest.raises(ShamirError, match="distinct"):
        interpolate([(1, b"a"), (1, b"b")])
    with pytest.raises(ShamirError):
        interpolate([(0, b"a")])


def test_255_shares() -> None:
    shares = split(_SECRET, 4, 255)
    assert shares[-1].x == 255
    assert combine([shares[254], shares[100], shares[7], shares[0]]) == _SECRET


@settings(max_examples=50, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=64),
    threshold=st.integers(min_value=1, max_value=8),
    extra=st.integers(min_value=0, max_value=8),
    data=st.data(),
)
def test_random_subsets_combine(
    secret: bytes, threshold: int, extra: int, data: st.DataObject
) -> None:
    shares = split(secret, threshold, threshold + extra)
    subset = data.draw(st.permutations(shares))[:threshold]
    assert combine(subset) == secret


def test_repr_hides_y() -> None:
    secret = b"\x13\x37" * 16
    for share in split(secret, 2, 3):
        text = repr(share)
        assert share.y.hex() not in text
        assert share.y.hex()[:8] not in text
        assert secret.hex()[:8] not in text
        assert "redacted" in text


def test_encode_layout() -> None:
    share = ShamirShare(
        split_id=bytes(range(8)), threshold=3, x=7, y=b"\xaa\xbb\xcc", check=b"WXYZ"
    )
    encoded = encode_share(share)
    assert encoded == (
        b"\x01" + bytes(range(8)) + b"\x03" + b"\x07" + b"\x00\x03" + b"\xaa\xbb\xcc" + b"WXYZ"
    )
    assert decode_share(encoded) == share


def test_encode_decode_round_trip() -> None:
    shares = split(_SECRET, 3, 5)
    decoded = [decode_share(encode_share(share)) for share in shares]
    assert decoded == shares
    assert combine(decoded[2:]) == _SECRET


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_version_refused(version: int) -> None:
    encoded = bytearray(encode_share(split(_SECRET, 2, 2)[0]))
    encoded[0] = version
    with pytest.raises(UnknownVersion) as caught:
        decode_share(bytes(encoded))
    assert caught.value.version == version


def test_truncated_input_refused_at_every_length() -> None:
    encoded = encode_share(split(_SECRET, 2, 2)[0])
    for length in range(len(encoded)):
        with pytest.raises(ShamirError):
            decode_share(encoded[:length])


def test_trailing_bytes_refused() -> None:
    encoded = encode_share(split(_SECRET, 2, 2)[0])
    with pytest.raises(ShamirError):
        decode_share(encoded + b"\x00")


def test_huge_declared_length_refused_without_reading() -> None:
    header = struct.pack(">B8sBBH", 1, bytes(8), 2, 1, 0xFFFF)
    with pytest.raises(ShamirError, match="should be"):
        decode_share(header + b"\x00" * 10)


@pytest.mark.parametrize(("threshold", "x", "y_length"), [(0, 1, 1), (2, 0, 1), (2, 1, 0)])
def test_decoded_fields_validated(threshold: int, x: int, y_length: int) -> None:
    data = struct.pack(">B8sBBH", 1, bytes(8), threshold, x, y_length)
    data += b"\x01" * y_length + b"chck"
    with pytest.raises(ShamirError):
        decode_share(data)
