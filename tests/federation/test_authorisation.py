"""The recovery request and the CA's authorisation: byte layout, and every way to refuse one."""

from __future__ import annotations

import random
import struct

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshpacs.errors import FederationError, FormatError, LimitExceeded, MeshError, UnknownVersion
from meshpacs.federation import FederationCA
from meshpacs.federation.authorisation import (
    MAX_AUTHORISATION_BYTES,
    MAX_REQUEST_BYTES,
    MAX_VALID_SECONDS,
    RecoveryRequest,
    decode_request,
    encode_request,
    load_ca_signing_key,
    read_authorisation,
    recovery_code,
    recovery_code_matches,
    sign_authorisation,
    verify_authorisation,
)

from .helpers import ca_private_key

CREATED = 1_800_000_000
DAY = 86400
LABEL = b"meshpacs/v1/escrow-authorisation"  # as the module docstring draws it


def request(site_id: str = "site-a", seed: int = 1) -> RecoveryRequest:
    rng = random.Random(seed)
    return RecoveryRequest(site_id, rng.randbytes(16), rng.randbytes(32), CREATED)


def signed(ca: FederationCA, req: RecoveryRequest | None = None, now: int | None = None) -> bytes:
    return sign_authorisation(
        req or request(),
        ca_private_key(ca),
        ca.certificate,
        now=now if now is not None else _now(ca),
        valid_seconds=DAY,
    )


def _now(ca: FederationCA) -> int:
    """A time the CA certificate is valid at, with room behind it for a slow clock."""
    return int(ca.certificate.not_valid_before_utc.timestamp()) + 3 * DAY


def test_a_request_round_trips_with_its_version_byte_first_and_its_code() -> None:
    req = request()
    data = encode_request(req)
    assert data[0] == 1 and data[1] == len("site-a") and data[2:8] == b"site-a"
    assert data[8:24] == req.request_id and data[24:56] == req.requester_key
    assert struct.unpack(">Q", data[56:64]) == (req.created_at,) and len(data) == 64
    assert decode_request(data) == req
    assert req.code == recovery_code("site-a", req.request_id, req.requester_key)
    assert len(req.code) == 24 and req.code.count("-") == 4
    assert req.code != request(seed=2).code


def test_malformed_requests_are_refused_before_anything_is_trusted() -> None:
    data = encode_request(request())
    with pytest.raises(UnknownVersion):
        decode_request(b"\x02" + data[1:])
    with pytest.raises(FormatError):
        decode_request(data[:-1])
    with pytest.raises(FormatError):
        decode_request(data + b"\x00")
    with pytest.raises(FormatError):
        decode_request(b"")
    with pytest.raises(FormatError):
        decode_request(data[:1] + b"\xff" + data[2:])  # a site ID length past the end
    with pytest.raises(FormatError):
        decode_request(data[:2] + b"SITE-A" + data[8:])  # not a valid site ID
    with pytest.raises(LimitExceeded):
        decode_request(data + bytes(MAX_REQUEST_BYTES))


def test_the_ca_authorises_a_request_and_a_peer_verifies_every_field(ca: FederationCA) -> None:
    req = request()
    now = _now(ca)
    data = signed(ca, req, now)
    assert data[0] == 1 and len(data) <= MAX_AUTHORISATION_BYTES
    granted = verify_authorisation(data, ca.certificate, now=now + 60, site_id="site-a")
    assert (granted.site_id, granted.request_id, granted.requester_key) == (
        req.site_id,
        req.request_id,
        req.requester_key,
    )
    assert (granted.issued_at, granted.expires_at) == (now, now + DAY)
    assert granted.code == req.code


def test_an_authorisation_from_another_federation_ca_is_refused(
    ca: FederationCA, other_ca: FederationCA
) -> None:
    with pytest.raises(FederationError, match="another CA"):
        verify_authorisation(signed(other_ca), ca.certificate, now=_now(ca))
    # Signed by the other CA's key but claiming ours: the signature gives it away.
    forged = bytearray(signed(other_ca))
    fingerprint_at = len(forged) - 64 - 32
    genuine = signed(ca)
    forged[fingerprint_at : fingerprint_at + 32] = genuine[fingerprint_at : fingerprint_at + 32]
    with pytest.raises(FederationError, match="does not verify"):
        verify_authorisation(bytes(forged), ca.certificate, now=_now(ca))


def test_an_expired_or_future_authorisation_is_refused(ca: FederationCA) -> None:
    now = _now(ca)
    data = signed(ca, now=now)
    verify_authorisation(data, ca.certificate, now=now + DAY)  # the last second still counts
    with pytest.raises(FederationError, match="expired"):
        verify_authorisation(data, ca.certificate, now=now + DAY + 1)
    verify_authorisation(data, ca.certificate, now=now - 1800)  # a peer's clock a little behind
    verify_authorisation(data, ca.certificate, now=now - 6 * 3600)  # hours behind: no NTP
    with pytest.raises(FederationError, match="future"):
        verify_authorisation(data, ca.certificate, now=now - DAY - 3600)


def test_an_authorisation_for_another_site_is_refused(ca: FederationCA) -> None:
    data = signed(ca, request("site-b"))
    with pytest.raises(FederationError, match="for site 'site-b', not 'site-a'"):
        verify_authorisation(data, ca.certificate, now=_now(ca), site_id="site-a")


def test_any_changed_byte_is_refused(ca: FederationCA) -> None:
    data = signed(ca)
    for position in range(len(data)):
        tampered = bytearray(data)
        tampered[position] ^= 0x01
        with pytest.raises(MeshError):
            verify_authorisation(bytes(tampered), ca.certificate, now=_now(ca))
    with pytest.raises(FormatError):
        verify_authorisation(data[:-1], ca.certificate, now=_now(ca))
    with pytest.raises(LimitExceeded):
        verify_authorisation(data + bytes(200), ca.certificate, now=_now(ca))
    # A body byte changed: the fields still parse, the CA's signature does not follow.
    site_byte = bytearray(data)
    site_byte[2] = ord("b")
    with pytest.raises(FederationError, match="does not verify"):
        verify_authorisation(bytes(site_byte), ca.certificate, now=_now(ca))


def test_a_window_longer_than_allowed_is_refused_even_if_the_ca_signed_it(
    ca: FederationCA,
) -> None:
    with pytest.raises(FederationError):
        sign_authorisation(
            request(), ca_private_key(ca), ca.certificate, now=_now(ca), valid_seconds=59
        )
    with pytest.raises(FederationError):
        sign_authorisation(
            request(),
            ca_private_key(ca),
            ca.certificate,
            now=_now(ca),
            valid_seconds=MAX_VALID_SECONDS + 1,
        )
    # Hand-made: the same layout, signed by the real CA key, with a 30-day window.
    fields, body, _ = read_authorisation(signed(ca))
    times_at = len(body) - 32 - 16
    long_body = body[:times_at] + struct.pack(">QQ", _now(ca), _now(ca) + 30 * DAY) + body[-32:]
    long_one = long_body + ca_private_key(ca).sign(LABEL + long_body)
    assert fields.site_id == "site-a"
    with pytest.raises(FederationError, match="longer than allowed"):
        verify_authorisation(long_one, ca.certificate, now=_now(ca))


def test_the_signature_is_bound_to_its_label(ca: FederationCA) -> None:
    """What the CA key signs elsewhere (without the label) is no authorisation."""
    _, body, _ = read_authorisation(signed(ca))
    unlabelled = body + ca_private_key(ca).sign(body)
    with pytest.raises(FederationError, match="does not verify"):
        verify_authorisation(unlabelled, ca.certificate, now=_now(ca))


def test_the_ca_key_must_be_the_ca_certificates(ca: FederationCA, other_ca: FederationCA) -> None:
    assert load_ca_signing_key(ca.key_path.read_bytes(), ca.certificate) is not None
    with pytest.raises(FederationError, match="does not belong"):
        load_ca_signing_key(other_ca.key_path.read_bytes(), ca.certificate)
    with pytest.raises(FederationError):
        load_ca_signing_key(b"not a key", ca.certificate)


def test_a_typed_code_matches_in_any_case_with_or_without_dashes() -> None:
    code = request().code
    assert recovery_code_matches(code, code)
    assert recovery_code_matches(code, code.upper().replace("-", " "))
    assert not recovery_code_matches(code, request(seed=2).code)
    assert not recovery_code_matches(code, code[:-1])
    assert not recovery_code_matches(code, "")


# Bytes written by the code as it was (2026-12), kept so that every request and
# authorisation already handed out still reads the same: a fixed CA key and certificate,
# and Ed25519 signs deterministically, so signing again must give these very bytes.
PINNED_CA_KEY = bytes(range(32))
PINNED_CA_CERT = b"""-----BEGIN CERTIFICATE-----
MIIBCjCBvaADAgECAgEBMAUGAytlcDAiMSAwHgYDVQQDDBdtZXNocGFjcyBwaW5u
ZWQgdGVzdCBDQTAgFw0yNjAxMDEwMDAwMDBaGA8yMTI2MDEwMTAwMDAwMFowIjEg
MB4GA1UEAwwXbWVzaHBhY3MgcGlubmVkIHRlc3QgQ0EwKjAFBgMrZXADIQADoQe/
884Qvh1w3RjnS8CZZ+TWMJulDV8d3IZkElUxuKMWMBQwEgYDVR0TAQH/BAgwBgEB
/wIBADAFBgMrZXADQQAWhTymupvUhrDua4QruwMaaCl7XmlpUM+iWC8cOuJ8Ipbh
vqa27uzSximW0U+/kimrSwUJg/kUpjfIrq7VnJEH
-----END CERTIFICATE-----
"""
PINNED_REQUEST = RecoveryRequest(
    "st-marys",
    bytes.fromhex("38b4e652e44da7f2370d9e260e271365"),
    bytes.fromhex("50a4a3a6d07f5c0c332f8b1224083fd22b902f8911e81818f8c99d5d5d983195"),
    1_800_000_000,
)
PINNED_REQUEST_BYTES = bytes.fromhex(
    "01"  # version
    "08" "73742d6d61727973"  # site ID: length, "st-marys"
    "38b4e652e44da7f2370d9e260e271365"  # request ID
    "50a4a3a6d07f5c0c332f8b1224083fd22b902f8911e81818f8c99d5d5d983195"  # requester key
    "000000006b49d200"  # created at
)  # fmt: skip
PINNED_ISSUED_AT = 1_800_000_600
PINNED_AUTHORISATION_BYTES = bytes.fromhex(
    "01"
    "08" "73742d6d61727973"
    "38b4e652e44da7f2370d9e260e271365"
    "50a4a3a6d07f5c0c332f8b1224083fd22b902f8911e81818f8c99d5d5d983195"
    "000000006b49d458" "000000006b4b25d8"  # issued at, expires at
    "1e8d44bf540e48b0320f51e8830d497317f989e1c040d7009a2c629ec39939c9"  # CA fingerprint
    "5553885cf1f80f86950906ac5f47d06ad558690534da0c661e1c78d5be6492a6"  # signature
    "09586c81ec48e919d8ecd2df3a263ad08aa8d6b99a3712dac5f8ba7ce101f401"
)  # fmt: skip


def test_requests_and_authorisations_written_before_read_and_write_the_same() -> None:
    assert encode_request(PINNED_REQUEST) == PINNED_REQUEST_BYTES
    assert decode_request(PINNED_REQUEST_BYTES) == PINNED_REQUEST
    cert = x509.load_pem_x509_certificate(PINNED_CA_CERT)
    key = Ed25519PrivateKey.from_private_bytes(PINNED_CA_KEY)
    again = sign_authorisation(PINNED_REQUEST, key, cert, now=PINNED_ISSUED_AT, valid_seconds=DAY)
    assert again == PINNED_AUTHORISATION_BYTES
    granted = verify_authorisation(
        PINNED_AUTHORISATION_BYTES, cert, now=PINNED_ISSUED_AT + 60, site_id="st-marys"
    )
    assert (granted.site_id, granted.request_id, granted.requester_key) == (
        PINNED_REQUEST.site_id, PINNED_REQUEST.request_id, PINNED_REQUEST.requester_key,
    )  # fmt: skip
    assert (granted.issued_at, granted.expires_at) == (PINNED_ISSUED_AT, PINNED_ISSUED_AT + DAY)
    assert granted.code == PINNED_REQUEST.code == "da9f-6717-ca76-8531-5e13"


def _request_bytes(site: bytes) -> bytes:
    """A request naming ``site`` as given, the rest as the pinned one's."""
    rest = PINNED_REQUEST_BYTES[2 + 8 :]
    return b"\x01" + bytes([len(site) % 256]) + site + rest


@pytest.mark.parametrize("site", [b"a", b"-", b"0-9", b"z" * 64, b"st-marys"])
def test_every_valid_site_id_reads_in_both_formats(site: bytes) -> None:
    data = _request_bytes(site)
    assert decode_request(data).site_id == site.decode()
    assert encode_request(decode_request(data)) == data
    body = b"\x01" + bytes([len(site)]) + site + PINNED_AUTHORISATION_BYTES[10:]
    assert read_authorisation(body)[0].site_id == site.decode()


@pytest.mark.parametrize(
    "site", [b"", b"St-marys", b"st marys", b"st_marys", b"st-mar\xffs", b"st\x00"]
)
def test_an_invalid_site_id_is_a_format_error_in_both_formats(site: bytes) -> None:
    with pytest.raises(FormatError):
        decode_request(_request_bytes(site))
    with pytest.raises(FormatError):
        read_authorisation(b"\x01" + bytes([len(site)]) + site + PINNED_AUTHORISATION_BYTES[10:])


def test_every_cut_and_every_wrong_length_byte_is_a_format_error() -> None:
    for data in (PINNED_REQUEST_BYTES, PINNED_AUTHORISATION_BYTES):
        read = decode_request if data is PINNED_REQUEST_BYTES else read_authorisation
        for end in range(len(data)):
            with pytest.raises(FormatError):
                read(data[:end])
        for length in (0, 7, 9, 64, 65, 255):
            with pytest.raises(FormatError):
                read(data[:1] + bytes([length]) + data[2:])


def test_a_site_id_over_64_makes_either_format_too_long_to_read() -> None:
    with pytest.raises(LimitExceeded):
        decode_request(_request_bytes(b"z" * 65))
    with pytest.raises(LimitExceeded):
        read_authorisation(b"\x01" + bytes([65]) + b"z" * 65 + PINNED_AUTHORISATION_BYTES[10:])
