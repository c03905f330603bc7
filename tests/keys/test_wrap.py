"""Data-key wrapping: round trip, and every mismatch refused as the right error."""

from __future__ import annotations

import pytest

from meshpacs.errors import KeyMaterialError, UnknownVersion, WrongKey
from meshpacs.keys.secret import SiteKeys, SiteSecret
from meshpacs.keys.wrap import WRAPPED_KEY_SIZE, unwrap_data_key, wrap_data_key

_KEY = SiteKeys.derive(SiteSecret(bytes(range(32)))).key_wrap
_OTHER_KEY = SiteKeys.derive(SiteSecret(bytes(range(1, 33)))).key_wrap
_BUNDLE = b"bundle-0001"
_DATA_KEY = bytes(range(200, 232))


def test_round_trip() -> None:
    wrapped = wrap_data_key(_KEY, _BUNDLE, _DATA_KEY)
    assert unwrap_data_key(_KEY, _BUNDLE, wrapped) == _DATA_KEY


def test_layout() -> None:
    wrapped = wrap_data_key(_KEY, _BUNDLE, _DATA_KEY)
    assert len(wrapped) == WRAPPED_KEY_SIZE == 61
    assert wrapped[0] == 1
    assert _DATA_KEY not in wrapped


def test_nonce_is_fresh_per_wrap() -> None:
    wrapped = {wrap_data_key(_KEY, _BUNDLE, _DATA_KEY) for _ in range(50)}
    assert len(wrapped) == 50
    assert len({w[1:13] for w in wrapped}) == 50


def test_wrong_key() -> None:
    wrapped = wrap_data_key(_KEY, _BUNDLE, _DATA_KEY)
    with pytest.raises(WrongKey, match="wrong site key or a wrapped key of another bundle"):
        unwrap_data_key(_OTHER_KEY, _BUNDLE, wrapped)


@pytest.mark.parametrize("other", [b"bundle-0002", b"bundle-000", b"bundle-00010", b"x"])
def test_other_bundle(other: bytes) -> None:
    wrapped = wrap_data_key(_KEY, _BUNDLE, _DATA_KEY)
    with pytest.raises(WrongKey):
        unwrap_data_key(_KEY, other, wrapped)


def test_every_flipped_bit_refused() -> None:
    wrapped = wrap_data_key(_KEY, _BUNDLE, _DATA_KEY)
    for index in range(len(wrapped)):
        for bit in range(8):
            tampered = bytearray(wrapped)
            tampered[index] ^= 1 << bit
            # The version byte is read first; everything after it is authenticated.
            expected = UnknownVersion if index == 0 else WrongKey
            with pytest.raises(expected):
                unwrap_data_key(_KEY, _BUNDLE, bytes(tampered))


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_version(version: int) -> None:
    wrapped = bytearray(wrap_data_key(_KEY, _BUNDLE, _DATA_KEY))
    wrapped[0] = version
    with pytest.raises(UnknownVersion) as caught:
        unwrap_data_key(_KEY, _BUNDLE, bytes(wrapped))
    assert caught.value.version == version


def test_unknown_version_of_other_length() -> None:
    with pytest.raises(UnknownVersion):
        unwrap_data_key(_KEY, _BUNDLE, b"\x02" + bytes(100))


def test_wrong_lengths() -> None:
    wrapped = wrap_data_key(_KEY, _BUNDLE, _DATA_KEY)
    with pytest.raises(KeyMaterialError):
        wrap_data_key(_KEY[:31], _BUNDLE, _DATA_KEY)
    with pytest.raises(KeyMaterialError):
        wrap_data_key(_KEY, _BUNDLE, _DATA_KEY[:16])
    with pytest.raises(KeyMaterialError):
        unwrap_data_key(_KEY + b"\x00", _BUNDLE, wrapped)
    for length in range(len(wrapped)):
        with pytest.raises(KeyMaterialError):
            unwrap_data_key(_KEY, _BUNDLE, wrapped[:length])
    with pytest.raises(KeyMaterialError):
        unwrap_data_key(_KEY, _BUNDLE, wrapped + b"\x00")


def test_length_errors_are_not_wrong_key() -> None:
    # WrongKey must mean "authentication failed", never "garbage bytes".
    wrapped = wrap_data_key(_KEY, _BUNDLE, _DATA_KEY)
    with pytest.raises(KeyMaterialError) as caught:
        unwrap_data_key(_KEY, _BUNDLE, wrapped[:-1])
    assert not isinstance(caught.value, WrongKey)


def test_empty_bundle_id_refused() -> None:
    with pytest.raises(KeyMaterialError):
        wrap_data_key(_KEY, b"", _DATA_KEY)
    wrapped = wrap_data_key(_KEY, _BUNDLE, _DATA_KEY)
    with pytest.raises(KeyMaterialError):
        unwrap_data_key(_KEY, b"", wrapped)
