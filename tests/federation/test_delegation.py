"""Delegation tokens: the byte layout, and every way a holder refuses one."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshpacs.errors import Forbidden, FormatError, LimitExceeded, UnknownVersion
from meshpacs.federation import Federation, FederationCA
from meshpacs.federation.delegation import (
    MAX_DELEGATION_BYTES,
    MAX_VALID_SECONDS,
    Delegation,
    read_delegation,
    sign_delegation,
    verify_delegation,
)
from meshpacs.keys import NodeIdentity, SiteSecret, verify_signature

from .helpers import Site, make_site

DAY = 86400
LABEL = b"meshpacs/v1/delegation"  # as the module docstring draws it


def cert_der(site: Site) -> bytes:
    cert = x509.load_pem_x509_certificate(site.files.node_certificate_pem())
    return cert.public_bytes(serialization.Encoding.DER)


def token(owner: Site, delegate: str = "site-b", *, now: int | None = None) -> Delegation:
    issued = int(time.time()) if now is None else now
    return Delegation(owner.site_id, delegate, issued, issued + 7 * DAY, cert_der(owner))


def federation(ca: FederationCA) -> Federation:
    return Federation.load(ca.cert_path, ca.crl_path)


def check(
    ca: FederationCA, data: bytes, presenter: str = "site-b", now: float | None = None
) -> Delegation:
    return verify_delegation(
        data,
        presenter=presenter,
        verify_certificate=federation(ca).verify,
        now=time.time() if now is None else now,
    )


@pytest.fixture
def owner(ca: FederationCA, tmp_path: Path) -> Site:
    return make_site(ca, tmp_path / "sites", "site-a", 1)


def test_a_token_is_laid_out_as_drawn_and_verifies(ca: FederationCA, owner: Site) -> None:
    fields = token(owner)
    data = sign_delegation(fields, owner.identity)
    assert data[0] == 1 and data[1] == 6 and data[2:8] == b"site-a"
    assert data[8] == 6 and data[9:15] == b"site-b"
    assert struct.unpack(">QQ", data[15:31]) == (fields.issued_at, fields.expires_at)
    (length,) = struct.unpack(">H", data[31:33])
    assert data[33 : 33 + length] == fields.owner_certificate
    body, signature = data[: 33 + length], data[33 + length :]
    assert len(signature) == 64
    assert verify_signature(owner.identity.public_key_bytes, LABEL + body, signature)
    assert read_delegation(data) == (fields, body, signature)
    assert check(ca, data) == fields


def test_only_the_named_delegate_may_present_it(ca: FederationCA, owner: Site) -> None:
    data = sign_delegation(token(owner), owner.identity)
    with pytest.raises(Forbidden, match="for site site-b, not site-c"):
        check(ca, data, presenter="site-c")


def test_an_expired_or_future_token_is_refused(ca: FederationCA, owner: Site) -> None:
    fields = token(owner)
    data = sign_delegation(fields, owner.identity)
    with pytest.raises(Forbidden, match="not valid now"):
        check(ca, data, now=fields.expires_at)
    with pytest.raises(Forbidden, match="not valid now"):
        check(ca, data, now=fields.issued_at - 2 * DAY)
    # A clock a few hours behind the owner's still takes part.
    assert check(ca, data, now=fields.issued_at - 3 * 3600) == fields


def test_any_changed_byte_or_another_signer_is_refused(ca: FederationCA, owner: Site) -> None:
    fields = token(owner)
    data = bytearray(sign_delegation(fields, owner.identity))
    data[20] ^= 1  # inside expires_at: still parses, no longer signed
    with pytest.raises(Forbidden, match="not signed by site site-a"):
        check(ca, bytes(data))
    intruder = NodeIdentity.from_secret(SiteSecret(bytes(range(32))))
    with pytest.raises(Forbidden, match="not signed by site site-a"):
        check(ca, sign_delegation(fields, intruder))


def test_a_certificate_of_another_site_does_not_speak_for_the_owner(
    ca: FederationCA, owner: Site, tmp_path: Path
) -> None:
    other = make_site(ca, tmp_path / "sites", "site-c", 3)
    # Signed by site-c's own key, with site-c's real certificate, but naming site-a.
    forged = Delegation("site-a", "site-b", int(time.time()), int(time.time()) + DAY,
                        cert_der(other))  # fmt: skip
    with pytest.raises(Forbidden, match="names site site-c"):
        check(ca, sign_delegation(forged, other.identity))


def test_a_revoked_owner_delegates_nothing(ca: FederationCA, owner: Site) -> None:
    data = sign_delegation(token(owner), owner.identity)
    assert check(ca, data).owner_site == "site-a"
    ca.revoke(site_id="site-a")
    with pytest.raises(Forbidden, match="owner certificate"):
        check(ca, data)


def test_bounds_and_malformed_tokens(ca: FederationCA, owner: Site) -> None:
    data = sign_delegation(token(owner), owner.identity)
    with pytest.raises(FormatError):
        read_delegation(data[:-1])
    with pytest.raises(FormatError):
        read_delegation(data[:5])
    with pytest.raises(FormatError):
        read_delegation(b"")
    with pytest.raises(UnknownVersion):
        read_delegation(b"\x02" + data[1:])
    with pytest.raises(LimitExceeded):
        read_delegation(data + bytes(MAX_DELEGATION_BYTES))
    now = int(time.time())
    with pytest.raises(FormatError, match="expire"):
        Delegation("site-a", "site-b", now, now + MAX_VALID_SECONDS + 1, cert_der(owner))
    with pytest.raises(FormatError, match="itself"):
        Delegation("site-a", "site-a", now, now + DAY, cert_der(owner))
    with pytest.raises(LimitExceeded):
        Delegation("site-a", "site-b", now, now + DAY, bytes(5000))


def test_bytes_as_the_first_version_wrote_them_still_read() -> None:
    # Drawn by hand from the docstring's table; read_delegation checks no signature.
    body = (
        b"\x01\x06site-a\x08st-marys"
        + struct.pack(">QQ", 1_700_000_000, 1_700_086_400)
        + b"\x00\x03DER"
    )
    signature = bytes(range(64))
    token, signed, sig = read_delegation(body + signature)
    assert token == Delegation("site-a", "st-marys", 1_700_000_000, 1_700_086_400, b"DER")
    assert (signed, sig) == (body, signature)
    for bad in (
        b"\x01",  # cut short before the owner site
        b"\x01\x00" + body[1:] + signature,  # an empty owner site
        b"\x01\x41" + body[1:] + signature,  # an owner site over 64
        b"\x01\x06site-\xe1" + body[8:] + signature,  # not ASCII
        body[:10],  # cut short inside the delegate site
    ):
        with pytest.raises(FormatError, match=r"delegation (owner|delegate) site"):
            read_delegation(bad)
    with pytest.raises(FormatError, match="delegation owner site"):  # ASCII, not a site ID
        read_delegation(b"\x01\x06SITE-A" + body[8:] + signature)
