"""Site secret and derived site keys: separation, determinism, and redaction."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshpacs.errors import KeyMaterialError, PhraseError
from meshpacs.keys.secret import SiteKeys, SiteSecret

_SECRET = SiteSecret(bytes(range(32)))
_OTHER = SiteSecret(bytes(range(1, 33)))


def _subkeys(keys: SiteKeys) -> list[bytes]:
    return [keys.fragment_id, keys.key_wrap, keys.catalog, keys.node_identity_seed]


def _rfc5869_hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def test_generate_gives_distinct_32_byte_secrets() -> None:
    generated = {SiteSecret.generate().value for _ in range(20)}
    assert len(generated) == 20
    assert all(len(value) == 32 for value in generated)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_wrong_length_refused(length: int) -> None:
    with pytest.raises(KeyMaterialError):
        SiteSecret(bytes(length))


def test_non_bytes_refused() -> None:
    # bytes(32) would be an all-zero key: an int must never be taken for key material.
    with pytest.raises(KeyMaterialError):
        SiteSecret(32)  # type: ignore[arg-type]


def test_bytearray_copied_to_immutable_bytes() -> None:
    raw = bytearray(range(32))
    secret = SiteSecret(raw)  # type: ignore[arg-type]
    raw[0] = 99
    assert type(secret.value) is bytes
    assert secret.value == bytes(range(32))


def test_secret_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        _SECRET.value = bytes(32)  # type: ignore[misc]


def test_equality_and_hash() -> None:
    assert SiteSecret(bytes(range(32))) == _SECRET
    assert hash(SiteSecret(bytes(range(32)))) == hash(_SECRET)
    assert _SECRET != _OTHER
    assert bytes(_SECRET) == bytes(range(32))


def test_subkeys_distinct_from_each_other_and_from_secret() -> None:
    keys = SiteKeys.derive(_SECRET)
    subkeys = _subkeys(keys)
    assert all(len(key) == 32 for key in subkeys)
    assert len(set(subkeys)) == 4
    assert _SECRET.value not in subkeys
    for a, b in itertools.combinations([*subkeys, _SECRET.value], 2):
        assert a[:8] != b[:8]


def test_derivation_is_deterministic() -> None:
    first = SiteKeys.derive(_SECRET)
    second = SiteKeys.derive(SiteSecret(bytes(range(32))))
    assert _subkeys(first) == _subkeys(second)
    assert first == second
    assert first.fingerprint == second.fingerprint


def test_other_secret_gives_other_keys() -> None:
    mine, theirs = SiteKeys.derive(_SECRET), SiteKeys.derive(_OTHER)
    for a, b in zip(_subkeys(mine), _subkeys(theirs), strict=True):
        assert a != b
    assert set(_subkeys(mine)).isdisjoint(_subkeys(theirs))
    assert mine.fingerprint != theirs.fingerprint
    assert mine != theirs


def test_derivation_matches_rfc5869_with_documented_labels() -> None:
    # Pins salt and labels: changing either would orphan every site's existing data.
    keys = SiteKeys.derive(_SECRET)
    salt = b"meshpacs/site-keys/v1"
    expected = {
        "fragment_id": b"meshpacs/v1/fragment-id",
        "key_wrap": b"meshpacs/v1/key-wrap",
        "catalog": b"meshpacs/v1/catalog",
        "node_identity_seed": b"meshpacs/v1/node-identity",
    }
    for field, info in expected.items():
        assert getattr(keys, field) == _rfc5869_hkdf_sha256(_SECRET.value, salt, info, 32)
    fingerprint = _rfc5869_hkdf_sha256(_SECRET.value, salt, b"meshpacs/v1/fingerprint", 8)
    assert keys.fingerprint == fingerprint.hex()


def test_fingerprint_is_short_hex_and_not_key_material() -> None:
    keys = SiteKeys.derive(_SECRET)
    assert _SECRET.fingerprint == keys.fingerprint
    assert len(keys.fingerprint) == 16
    int(keys.fingerprint, 16)
    for key in [*_subkeys(keys), _SECRET.value]:
        assert keys.fingerprint not in key.hex()


def test_repr_leaks_no_key_bytes() -> None:
    keys = SiteKeys.derive(_SECRET)
    texts = [repr(_SECRET), str(_SECRET), repr(keys), str(keys), f"{[_SECRET, keys]}"]
    for text in texts:
        assert "redacted" in text
        for key in [_SECRET.value, *_subkeys(keys)]:
            assert key.hex() not in text
            assert key.hex()[:8] not in text
            assert repr(key) not in text
            assert str(list(key)) not in text


@given(st.binary(min_size=32, max_size=32))
def test_phrase_round_trip(raw: bytes) -> None:
    secret = SiteSecret(raw)
    phrase = secret.to_phrase()
    assert SiteSecret.from_phrase(phrase) == secret
    assert SiteSecret.from_phrase(phrase).fingerprint == secret.fingerprint


def test_mistyped_phrase_raises_phrase_error() -> None:
    groups = _SECRET.to_phrase().split("-")
    groups[4] = ("1" if groups[4][0] != "1" else "2") + groups[4][1:]
    with pytest.raises(PhraseError) as caught:
        SiteSecret.from_phrase("-".join(groups))
    assert caught.value.bad_groups == (5,)


def test_site_keys_validate_fields() -> None:
    keys = SiteKeys.derive(_SECRET)
    with pytest.raises(KeyMaterialError):
        dataclasses.replace(keys, key_wrap=bytes(31))
    with pytest.raises(KeyMaterialError):
        dataclasses.replace(keys, fingerprint="not-a-fingerprint")
