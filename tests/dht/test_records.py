"""The signed record codec: round trips, keys, and every reason a record is refused."""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshpacs.dht import (
    Ed25519Signer,
    MemberVerifier,
    NodeRecord,
    ProviderRecord,
    RejectReason,
    cert_fingerprint,
    decode_record,
    node_key,
    placement_key,
    provider_key,
    record_key,
    sign_record,
    verify_record,
)
from meshpacs.dht.records import (
    CLOCK_SKEW,
    KADEMLIA_VALUE_LIMIT,
    KIND_NODE,
    KIND_PROVIDER,
    MAX_CERT_SIZE,
    MAX_PAYLOAD_SIZE,
    MAX_RECORD_LIFETIME,
    MAX_RECORD_SIZE,
    SIGNATURE_LABEL,
)
from meshpacs.errors import InvalidRecord, LimitExceeded
from meshpacs.federation import Federation
from meshpacs.keys import node_id_for

from .helpers import (
    DAY,
    NOW,
    TestFederation,
    fragment_ids,
    node_record,
    provider_record,
    signer_with_another_key,
)

FRAGMENT = fragment_ids(1, seed=1)[0]
# SHA-256(b"meshpacs/v1/dht-key/placement\n" + 16 zero bytes)[:20]
PLACEMENT_OF_ZERO_BUNDLE = "6ad0f4c81e0d438de9073811781dac2125f310ba"


@pytest.fixture
def alpha(federation: TestFederation) -> Ed25519Signer:
    return federation.issue("st-alpha")


def reason_of(raw: bytes, verifier: MemberVerifier, now: float = NOW) -> str:
    with pytest.raises(InvalidRecord) as caught:
        verify_record(raw, verifier, now)
    return caught.value.reason


def envelope(signer: Ed25519Signer, kind: int, payload: bytes, cert: bytes | None = None) -> bytes:
    """A correctly signed envelope around any payload, to reach the payload checks."""
    cert = signer.cert_der if cert is None else cert
    signed = struct.pack(">BBH", 1, kind, len(cert)) + cert + struct.pack(">H", len(payload))
    signed += payload
    return signed + signer.sign(SIGNATURE_LABEL + signed)


def node_payload(signer: Ed25519Signer, site_id: bytes = b"st-alpha", port: int = 7000) -> bytes:
    return b"".join(
        (
            bytes([len(site_id)]) + site_id,
            cert_fingerprint(signer.cert_der),
            b"\x09127.0.0.1",
            port.to_bytes(2, "big"),
            b"\x09127.0.0.1",
            (11112).to_bytes(2, "big"),
            b"\x04MESH",
            struct.pack(">QQQ", 10**9, 1, int(NOW) + 60),
        )
    )


# --- round trips -----------------------------------------------------------------------------


def test_node_record_round_trip(alpha: Ed25519Signer, verifier: Federation) -> None:
    record = node_record(alpha, "st-alpha", seq=7)
    raw = sign_record(record, alpha)
    assert raw[0] == 1 and raw[1] == KIND_NODE
    assert decode_record(raw).record == record
    verified = verify_record(raw, verifier, NOW)
    assert verified.record == record
    assert verified.author.site_id == "st-alpha"
    assert verified.author.public_key == alpha.public_key_bytes
    assert verified.key == node_key("st-alpha") == record_key(record)
    assert verified.seq == 7 and verified.raw == raw


def test_provider_record_round_trip(alpha: Ed25519Signer, verifier: Federation) -> None:
    record = provider_record(FRAGMENT, "st-alpha", seq=3)
    raw = sign_record(record, alpha)
    assert raw[1] == KIND_PROVIDER
    verified = verify_record(raw, verifier, NOW)
    assert verified.record == record
    assert verified.key == provider_key(FRAGMENT)
    assert FRAGMENT.encode() not in raw  # carried as 32 raw bytes, not as text


def test_largest_record_stays_far_below_the_kademlia_limit(
    alpha: Ed25519Signer, verifier: Federation
) -> None:
    assert MAX_RECORD_SIZE == 4 + MAX_CERT_SIZE + 2 + MAX_PAYLOAD_SIZE + 64
    assert MAX_RECORD_SIZE <= KADEMLIA_VALUE_LIMIT // 2
    widest = NodeRecord(
        site_id="s" * 64,
        cert_fingerprint=bytes(32),
        transport_host="h" * 253,
        transport_port=65535,
        dicom_host="d" * 253,
        dicom_port=65535,
        dicom_ae_title="A" * 16,
        capacity_bytes=2**63 - 1,
        seq=2**63 - 1,
        expires_at=2**63 - 1,
    )
    raw = sign_record(widest, alpha)
    assert len(raw) <= MAX_RECORD_SIZE
    assert decode_record(raw).record == widest


def test_sign_refuses_an_oversized_certificate(alpha: Ed25519Signer) -> None:
    big = signer_with_another_key(b"\x30" * (MAX_CERT_SIZE + 1))
    with pytest.raises(LimitExceeded):
        sign_record(provider_record(FRAGMENT, "st-alpha"), big)


# --- keys ------------------------------------------------------------------------------------


def test_keys_are_deterministic_twenty_bytes_and_domain_separated() -> None:
    assert node_key("st-alpha") == node_key("st-alpha") != node_key("st-beta")
    assert len(node_key("st-alpha")) == len(provider_key(FRAGMENT)) == 20
    # Same name bytes under two labels never give the same key.
    hex_site = "a" * 64
    assert node_key(hex_site) != provider_key(hex_site)
    assert placement_key(bytes.fromhex(hex_site)) not in {
        node_key(hex_site),
        provider_key(hex_site),
    }
    assert node_id_for(bytes(32)) != node_key("a")  # node IDs have their own label too
    with pytest.raises(ValueError):
        node_key("St Alpha")
    with pytest.raises(ValueError):
        provider_key(FRAGMENT.upper())
    with pytest.raises(ValueError):
        placement_key(b"")


def test_placement_key_is_pinned() -> None:
    # Where every bundle's fragments go: changing it moves every placement in a federation.
    assert placement_key(b"\x00" * 16).hex() == PLACEMENT_OF_ZERO_BUNDLE
    assert len(placement_key(b"bundle")) == 20


@pytest.mark.parametrize(
    "change",
    [
        {"site_id": "UPPER"},
        {"site_id": ""},
        {"site_id": "x" * 65},
        {"cert_fingerprint": bytes(31)},
        {"transport_host": "host name"},
        {"dicom_port": 0},
        {"transport_port": 65536},
        {"dicom_ae_title": " PADDED"},
        {"dicom_ae_title": "A" * 17},
        {"dicom_ae_title": "BACK\\SLASH"},
        {"seq": -1},
        {"capacity_bytes": 2**63},
    ],
)
def test_node_record_fields_are_checked(alpha: Ed25519Signer, change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(node_record(alpha, "st-alpha"), **change)


def test_provider_record_fields_are_checked() -> None:
    with pytest.raises(ValueError):
        ProviderRecord("z" * 64, "st-alpha", 1, 2)
    with pytest.raises(ValueError):
        ProviderRecord(FRAGMENT, "st alpha", 1, 2)
    with pytest.raises(ValueError):
        ProviderRecord(FRAGMENT, "st-alpha", 1, 2**63)


# --- every rejection reason ------------------------------------------------------------------


def test_unknown_version(alpha: Ed25519Signer, verifier: Federation) -> None:
    raw = sign_record(provider_record(FRAGMENT, "st-alpha"), alpha)
    assert reason_of(b"\x02" + raw[1:], verifier) == RejectReason.UNKNOWN_VERSION
    assert reason_of(b"\x00" + raw[1:], verifier) == RejectReason.UNKNOWN_VERSION


def test_every_truncation_and_an_extra_byte_are_malformed(
    alpha: Ed25519Signer, verifier: Federation
) -> None:
    raw = sign_record(node_record(alpha, "st-alpha"), alpha)
    for cut in range(len(raw)):
        assert reason_of(raw[:cut], verifier) == RejectReason.MALFORMED, cut
    assert reason_of(raw + b"\x00", verifier) == RejectReason.MALFORMED


def test_oversized_value_is_refused_before_parsing(verifier: Federation) -> None:
    assert reason_of(b"\x01" + bytes(MAX_RECORD_SIZE), verifier) == RejectReason.TOO_LARGE


def test_not_bytes_is_malformed(verifier: Federation) -> None:
    assert reason_of("text", verifier) == RejectReason.MALFORMED  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "header",
    [
        struct.pack(">BBH", 1, 3, 10),  # unknown kind
        struct.pack(">BBH", 1, KIND_NODE, 0),  # empty certificate
        struct.pack(">BBH", 1, KIND_NODE, MAX_CERT_SIZE + 1),  # over the bound
    ],
)
def test_bad_envelope_header_is_malformed(header: bytes, verifier: Federation) -> None:
    assert reason_of(header + bytes(200), verifier) == RejectReason.MALFORMED


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda s: node_payload(s, site_id=b"ST-ALPHA"), id="site-id-charset"),
        pytest.param(lambda s: node_payload(s, site_id=b"st-\xffalpha"), id="site-id-not-ascii"),
        pytest.param(lambda s: node_payload(s, site_id=b""), id="site-id-empty"),
        pytest.param(lambda s: node_payload(s, port=0), id="port-zero"),
        pytest.param(lambda s: node_payload(s) + b"\x00", id="payload-trailing-byte"),
        pytest.param(lambda s: node_payload(s)[:-1], id="payload-short"),
        pytest.param(lambda s: b"", id="payload-empty"),
        pytest.param(lambda s: b"\x00" * (MAX_PAYLOAD_SIZE + 1), id="payload-over-bound"),
    ],
)
def test_malformed_payload_under_a_valid_signature(
    payload: object, alpha: Ed25519Signer, verifier: Federation
) -> None:
    raw = envelope(alpha, KIND_NODE, payload(alpha))  # type: ignore[operator]
    assert reason_of(raw, verifier) == RejectReason.MALFORMED


def test_well_formed_hand_built_envelope_verifies(
    alpha: Ed25519Signer, verifier: Federation
) -> None:
    # The hand-built layout above is the documented one: without a fault it verifies.
    verified = verify_record(envelope(alpha, KIND_NODE, node_payload(alpha)), verifier, NOW)
    assert verified.record.author_site_id == "st-alpha"


def test_provider_seq_over_63_bits_is_malformed(alpha: Ed25519Signer, verifier: Federation) -> None:
    payload = bytes.fromhex(FRAGMENT) + b"\x08st-alpha" + struct.pack(">QQ", 2**63, int(NOW) + 1)
    assert reason_of(envelope(alpha, KIND_PROVIDER, payload), verifier) == RejectReason.MALFORMED


def test_every_single_bit_flip_is_refused(alpha: Ed25519Signer, verifier: Federation) -> None:
    raw = sign_record(node_record(alpha, "st-alpha"), alpha)
    for position in range(len(raw)):
        changed = bytearray(raw)
        changed[position] ^= 0x01
        with pytest.raises(InvalidRecord):
            verify_record(bytes(changed), verifier, NOW)


def test_altered_payload_or_signature_is_a_bad_signature(
    alpha: Ed25519Signer, verifier: Federation
) -> None:
    raw = sign_record(provider_record(FRAGMENT, "st-alpha", seq=1), alpha)
    seq_at = len(raw) - 64 - 16
    bumped = raw[:seq_at] + struct.pack(">Q", 99) + raw[seq_at + 8 :]
    assert decode_record(bumped).record.seq == 99  # still parses: only the signature catches it
    assert reason_of(bumped, verifier) == RejectReason.BAD_SIGNATURE
    assert reason_of(raw[:-1] + bytes([raw[-1] ^ 1]), verifier) == RejectReason.BAD_SIGNATURE


def test_record_signed_with_another_key_than_the_certificate_s(
    alpha: Ed25519Signer, verifier: Federation
) -> None:
    wrong = signer_with_another_key(alpha.cert_der)  # alpha's certificate, another key
    raw = sign_record(provider_record(FRAGMENT, "st-alpha"), wrong)
    assert reason_of(raw, verifier) == RejectReason.BAD_SIGNATURE


def test_a_certificate_of_an_unknown_x509_version_is_not_a_member(
    alpha: Ed25519Signer, verifier: Federation
) -> None:
    version_v3 = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2, i.e. X.509 v3
    assert alpha.cert_der.count(version_v3) == 1
    odd = alpha.cert_der.replace(version_v3, bytes.fromhex("a003020103"))
    raw = envelope(alpha, KIND_NODE, node_payload(alpha), cert=odd)  # any peer can send this
    assert reason_of(raw, verifier) == RejectReason.NOT_A_MEMBER


def test_author_not_a_member(outsiders: TestFederation, verifier: Federation) -> None:
    intruder = outsiders.issue("st-alpha")  # right name, a real certificate of another CA
    raw = sign_record(node_record(intruder, "st-alpha"), intruder)
    assert verify_record(raw, outsiders.verifier, NOW).author.site_id == "st-alpha"
    assert reason_of(raw, verifier) == RejectReason.NOT_A_MEMBER


def test_author_whose_certificate_has_expired(
    federation: TestFederation, verifier: Federation
) -> None:
    lapsed = federation.issue("st-lapsed", issued_at=NOW - DAY - 60, days=1)  # to NOW - 60
    raw = sign_record(provider_record(FRAGMENT, "st-lapsed"), lapsed)
    assert verify_record(raw, verifier, NOW - 120).author.site_id == "st-lapsed"
    assert reason_of(raw, verifier) == RejectReason.NOT_A_MEMBER


def test_author_whose_certificate_was_revoked(
    federation: TestFederation, verifier: Federation, alpha: Ed25519Signer
) -> None:
    beta = federation.issue("st-beta")
    records = [
        sign_record(node_record(alpha, "st-alpha"), alpha),
        sign_record(provider_record(FRAGMENT, "st-alpha"), alpha),
    ]
    for raw in records:
        assert verify_record(raw, verifier, NOW).author.site_id == "st-alpha"
    federation.revoke(alpha)  # a new CRL file, which the Federation reads on its next check
    for raw in records:
        assert reason_of(raw, verifier) == RejectReason.NOT_A_MEMBER
    still = sign_record(provider_record(FRAGMENT, "st-beta"), beta)
    assert verify_record(still, verifier, NOW).author.site_id == "st-beta"


def test_a_stale_revocation_list_fails_closed_under_its_own_reason(
    alpha: Ed25519Signer, verifier: Federation
) -> None:
    raw = sign_record(provider_record(FRAGMENT, "st-alpha", expires_at=NOW + 200 * DAY), alpha)
    later = verifier.crl_next_update.timestamp() + 1
    assert reason_of(raw, verifier, now=later) == RejectReason.MEMBERSHIP_UNKNOWN


def test_member_claiming_another_site(alpha: Ed25519Signer, verifier: Federation) -> None:
    as_node = sign_record(node_record(alpha, "st-beta"), alpha)
    as_provider = sign_record(provider_record(FRAGMENT, "st-beta"), alpha)
    assert reason_of(as_node, verifier) == RejectReason.SITE_NOT_AUTHOR
    assert reason_of(as_provider, verifier) == RejectReason.SITE_NOT_AUTHOR


def test_node_record_with_another_certificate_s_fingerprint(
    alpha: Ed25519Signer, verifier: Federation
) -> None:
    raw = sign_record(node_record(alpha, "st-alpha", fingerprint=bytes(32)), alpha)
    assert reason_of(raw, verifier) == RejectReason.FINGERPRINT_MISMATCH


def test_expiry_bounds(alpha: Ed25519Signer, verifier: Federation) -> None:
    def raw(expires_at: float) -> bytes:
        return sign_record(provider_record(FRAGMENT, "st-alpha", expires_at=expires_at), alpha)

    assert reason_of(raw(NOW), verifier) == RejectReason.EXPIRED
    assert reason_of(raw(NOW - 10), verifier) == RejectReason.EXPIRED
    furthest = NOW + MAX_RECORD_LIFETIME + CLOCK_SKEW
    assert verify_record(raw(NOW + 1), verifier, NOW).expires_at == NOW + 1
    assert verify_record(raw(furthest), verifier, NOW).expires_at == furthest
    assert reason_of(raw(furthest + 1), verifier) == RejectReason.TOO_FAR_AHEAD


@pytest.fixture(scope="module")
def shared_verifier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    # Module scope: hypothesis runs many examples in one test call.
    yield TestFederation.create(tmp_path_factory.mktemp("shared") / "ca", "Shared").verifier


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_ever_raise_invalid_record(
    shared_verifier: Federation, data: bytes
) -> None:
    for candidate in (data, b"\x01" + data, b"\x01\x01" + data, b"\x01\x02" + data):
        with pytest.raises(InvalidRecord):
            verify_record(candidate, shared_verifier, NOW)
