"""The node identity: deterministic from the site secret, one key per purpose, redacted."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from meshpacs.errors import KeyMaterialError
from meshpacs.keys import NodeIdentity, SiteKeys, SiteSecret, node_id_for, verify_signature
from meshpacs.keys.identity import NODE_ID_SIZE, x25519_public_for

SEED_SECRET = SiteSecret(bytes(range(32)))
# Known answers: a rebuilt site must derive exactly these again, release after release,
# or its certificate and its place in the DHT no longer match its keys.
KNOWN_PUBLIC_KEY = "1b843a3bebb7bff336fe4422810b6bc192e69d066d962cf5fe171e28393a6dbc"
KNOWN_X25519_PUBLIC = "61820e60107ad15b9af737ac98b60aedaa0fdc402afd2c753d1c839a8ec34224"
KNOWN_NODE_ID = "7b08daf577772888c9b05102f0146a1c295fba92"


def test_the_same_secret_gives_the_same_identity() -> None:
    secret = SiteSecret.generate()
    first = NodeIdentity.from_keys(SiteKeys.derive(secret))
    rebuilt = NodeIdentity.from_secret(SiteSecret.from_phrase(secret.to_phrase()))
    assert rebuilt == first
    assert rebuilt.public_key_bytes == first.public_key_bytes
    assert rebuilt.x25519_public_bytes == first.x25519_public_bytes
    assert rebuilt.node_id == first.node_id


def test_different_secrets_give_different_identities() -> None:
    one = NodeIdentity.from_secret(SiteSecret.generate())
    two = NodeIdentity.from_secret(SiteSecret.generate())
    assert one != two
    assert one.public_key_bytes != two.public_key_bytes
    assert one.x25519_public_bytes != two.x25519_public_bytes
    assert one.node_id != two.node_id


def test_known_answers_pin_the_derivation() -> None:
    identity = NodeIdentity.from_secret(SEED_SECRET)
    assert identity.public_key_bytes.hex() == KNOWN_PUBLIC_KEY
    assert identity.x25519_public_bytes.hex() == KNOWN_X25519_PUBLIC
    assert identity.node_id.hex() == KNOWN_NODE_ID


def test_each_key_has_its_own_derivation() -> None:
    keys = SiteKeys.derive(SEED_SECRET)
    identity = NodeIdentity.from_keys(keys)
    ed_private = identity.signing_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    x_private = identity.x25519_private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    assert len({ed_private, x_private, keys.node_identity_seed}) == 3
    assert identity.public_key_bytes != identity.x25519_public_bytes


def test_node_id_is_the_labelled_hash_of_the_public_key() -> None:
    identity = NodeIdentity.from_secret(SEED_SECRET)
    expected = hashlib.sha256(b"meshpacs/v1/dht-node-id" + identity.public_key_bytes).digest()
    assert identity.node_id == expected[:NODE_ID_SIZE] == node_id_for(identity.public_key_bytes)
    assert len(identity.node_id) == 20


def test_signatures_verify_only_for_the_signed_data_and_key() -> None:
    identity = NodeIdentity.from_secret(SEED_SECRET)
    other = NodeIdentity.from_secret(SiteSecret(bytes(32)))
    signature = identity.sign(b"record")
    assert len(signature) == 64
    assert verify_signature(identity.public_key_bytes, b"record", signature)
    assert not verify_signature(identity.public_key_bytes, b"recorD", signature)
    assert not verify_signature(other.public_key_bytes, b"record", signature)
    forged = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify_signature(identity.public_key_bytes, b"record", forged)


@pytest.mark.parametrize(("key_size", "signature_size"), [(31, 64), (33, 64), (32, 63), (0, 0)])
def test_malformed_keys_and_signatures_are_simply_invalid(
    key_size: int, signature_size: int
) -> None:
    assert not verify_signature(bytes(key_size), b"data", bytes(signature_size))


def test_x25519_keys_agree() -> None:
    one = NodeIdentity.from_secret(SEED_SECRET)
    two = NodeIdentity.from_secret(SiteSecret(bytes(32)))
    shared_one = one.x25519_private.exchange(
        X25519PublicKey.from_public_bytes(two.x25519_public_bytes)
    )
    shared_two = two.x25519_private.exchange(
        X25519PublicKey.from_public_bytes(one.x25519_public_bytes)
    )
    assert shared_one == shared_two


def test_repr_shows_the_node_id_and_no_key_material() -> None:
    identity = NodeIdentity.from_secret(SEED_SECRET)
    keys = SiteKeys.derive(SEED_SECRET)
    text = repr(identity)
    assert identity.node_id.hex() in text and "redacted" in text
    private = identity.signing_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    for secret in (private, keys.node_identity_seed, SEED_SECRET.value):
        assert secret.hex() not in text


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33)])
def test_a_seed_of_the_wrong_size_is_refused(seed: bytes) -> None:
    with pytest.raises(KeyMaterialError):
        NodeIdentity(seed)


def test_node_id_for_refuses_a_key_of_the_wrong_size() -> None:
    with pytest.raises(KeyMaterialError):
        node_id_for(bytes(31))


@pytest.mark.parametrize("seed", range(20))
def test_the_x25519_key_is_the_certificate_keys_montgomery_form(seed: int) -> None:
    """Anyone holding a node's certificate can encrypt to it (escrow shares), and only the
    node can decrypt: the X25519 public key follows from the Ed25519 one alone."""
    identity = NodeIdentity(bytes((seed * 7 + i) % 256 for i in range(32)))
    assert x25519_public_for(identity.public_key_bytes) == identity.x25519_public_bytes


def test_a_point_unusable_for_key_agreement_is_refused() -> None:
    with pytest.raises(KeyMaterialError):
        x25519_public_for((1).to_bytes(32, "little"))
    with pytest.raises(KeyMaterialError):
        x25519_public_for(b"short")
