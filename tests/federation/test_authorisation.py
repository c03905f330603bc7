"""The recovery request and the CA's authorisation: byte layout, and every way to refuse one."""

from __future__ import annotations

import random
import struct

import pytest

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
