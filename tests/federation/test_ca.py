"""The federation CA's directory: create, sign, revoke, and the CRL as its only state."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshpacs.errors import ConfigError, FederationError
from meshpacs.federation import FederationCA, create_federation_ca, make_csr, parse_serial
from meshpacs.federation.certs import crl_number
from meshpacs.keys import NodeIdentity, SiteSecret

from .helpers import Site

LAYOUT = ["ca.key", "ca.pem", "crl.pem", "issued"]


def identity(seed: int) -> NodeIdentity:
    return NodeIdentity.from_secret(SiteSecret(bytes([seed]) * 32))


def test_create_lays_out_the_directory(ca: FederationCA) -> None:
    assert sorted(p.name for p in ca.directory.iterdir()) == LAYOUT
    assert stat.S_IMODE(ca.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ca.directory.stat().st_mode) == 0o700
    assert list(ca.issued_dir.iterdir()) == []


def test_the_ca_certificate_is_a_ten_year_ed25519_ca(ca: FederationCA) -> None:
    cert = ca.certificate
    assert isinstance(cert.public_key(), Ed25519PublicKey)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Test Mesh"
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    lifetime = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=3649) < lifetime <= timedelta(days=3650)


def test_the_first_crl_is_empty_signed_and_numbered_one(ca: FederationCA) -> None:
    crl = ca.crl()
    assert len(crl) == 0
    assert crl_number(crl) == 1
    assert crl.next_update_utc is not None and crl.next_update_utc > datetime.now(UTC)
    public = ca.certificate.public_key()
    assert isinstance(public, Ed25519PublicKey) and crl.is_signature_valid(public)


def test_create_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    create_federation_ca(directory, "Test Mesh")
    key = (directory / "ca.key").read_bytes()
    with pytest.raises(ConfigError, match="not empty"):
        create_federation_ca(directory, "Another")
    assert (directory / "ca.key").read_bytes() == key


def test_create_refuses_a_bad_name_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="federation name"):
        create_federation_ca(tmp_path / "ca", "bad\nname")
    assert not (tmp_path / "ca").exists()


def test_a_ca_key_open_to_others_is_refused(ca: FederationCA) -> None:
    os.chmod(ca.key_path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        FederationCA(ca.directory)


def test_a_ca_key_from_another_ca_is_refused(ca: FederationCA, other_ca: FederationCA) -> None:
    ca.key_path.unlink()
    ca.key_path.write_bytes(other_ca.key_path.read_bytes())
    os.chmod(ca.key_path, 0o600)
    with pytest.raises(FederationError, match="does not belong"):
        FederationCA(ca.directory)


def test_signing_issues_the_node_certificate_the_design_draws(ca: FederationCA) -> None:
    node = identity(1)
    issued = ca.sign_csr(make_csr(node, "st-marys"))
    cert = x509.load_pem_x509_certificate(issued.pem)
    assert issued.site_id == "st-marys" and issued.public_key == node.public_key_bytes
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "st-marys"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:meshpacs:site:st-marys"]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.issuer == ca.certificate.subject
    cert.verify_directly_issued_by(ca.certificate)
    lifetime = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=824) < lifetime <= timedelta(days=825)
    assert (ca.issued_dir / f"{issued.serial:x}.pem").read_bytes() == issued.pem


def test_days_sets_the_validity(ca: FederationCA) -> None:
    issued = ca.sign_csr(make_csr(identity(1), "st-marys"), days=30)
    assert issued.not_after - datetime.now(UTC) <= timedelta(days=30)


def test_a_request_whose_signature_fails_is_refused(ca: FederationCA) -> None:
    request = x509.load_pem_x509_csr(make_csr(identity(1), "st-marys"))
    der = bytearray(request.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte is the signature's
    with pytest.raises(FederationError, match="signature does not verify"):
        ca.sign_csr(bytes(der))
    assert list(ca.issued_dir.iterdir()) == []


def test_a_request_whose_key_is_not_ed25519_is_refused(ca: FederationCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "st-marys")]))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(FederationError, match="not Ed25519"):
        ca.sign_csr(request.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize(
    ("common_name", "uri", "words"),
    [
        ("st-marys", "urn:meshpacs:site:st-johns", "disagree"),
        ("St Marys", "urn:meshpacs:site:st-marys", "not a valid site ID"),
        ("st-marys", "https://st-marys.example", "not a urn:meshpacs:site: URI"),
    ],
)
def test_a_request_with_inconsistent_names_is_refused(
    ca: FederationCA, common_name: str, uri: str, words: str
) -> None:
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .sign(identity(1).signing_key, None)
    )
    with pytest.raises(FederationError, match=words):
        ca.sign_csr(request.public_bytes(serialization.Encoding.PEM))


def test_garbage_and_oversized_requests_are_refused(ca: FederationCA) -> None:
    with pytest.raises(FederationError, match="not a certificate request"):
        ca.sign_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n")
    with pytest.raises(FederationError, match="over"):
        ca.sign_csr(b"x" * 20000)


def test_a_second_key_for_a_live_site_needs_replace(ca: FederationCA) -> None:
    first = ca.sign_csr(make_csr(identity(1), "st-marys"))
    with pytest.raises(FederationError, match="already holds a live certificate"):
        ca.sign_csr(make_csr(identity(2), "st-marys"))
    second = ca.sign_csr(make_csr(identity(2), "st-marys"), replace=True)
    crl = ca.crl()
    assert crl.get_revoked_certificate_by_serial_number(first.serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(second.serial) is None
    assert [c.serial for c in ca.live("st-marys")] == [second.serial]


def test_renewing_with_the_same_key_needs_no_replace(ca: FederationCA) -> None:
    first = ca.sign_csr(make_csr(identity(1), "st-marys"))
    second = ca.sign_csr(make_csr(identity(1), "st-marys"))
    assert first.serial != second.serial
    assert len(ca.crl()) == 0
    assert len(ca.live("st-marys")) == 2


def test_an_expired_or_revoked_certificate_does_not_block_a_new_key(ca: FederationCA) -> None:
    past = datetime.now(UTC) - timedelta(days=10)
    ca.sign_csr(make_csr(identity(1), "st-marys"), days=1, now=past)
    ca.sign_csr(make_csr(identity(2), "st-marys"))  # the first one has expired
    ca.revoke(site_id="st-marys")
    ca.sign_csr(make_csr(identity(3), "st-marys"))  # the second one is revoked
    assert [c.public_key for c in ca.live("st-marys")] == [identity(3).public_key_bytes]


def test_revoke_by_site_id_lists_every_live_certificate(ca: FederationCA) -> None:
    one = ca.sign_csr(make_csr(identity(1), "st-marys"))
    two = ca.sign_csr(make_csr(identity(1), "st-marys"))
    other = ca.sign_csr(make_csr(identity(5), "st-johns"))
    revoked = ca.revoke(site_id="st-marys")
    assert sorted(revoked) == sorted([one.serial, two.serial])
    crl = ca.crl()
    assert crl_number(crl) == 2
    assert {entry.serial_number for entry in crl} == {one.serial, two.serial}
    assert crl.get_revoked_certificate_by_serial_number(other.serial) is None


def test_revoke_by_serial_keeps_earlier_revocations(ca: FederationCA) -> None:
    one = ca.sign_csr(make_csr(identity(1), "st-marys"))
    two = ca.sign_csr(make_csr(identity(2), "st-johns"))
    ca.revoke(serial=one.serial)
    ca.revoke(serial=two.serial)
    crl = ca.crl()
    assert crl_number(crl) == 3
    assert {entry.serial_number for entry in crl} == {one.serial, two.serial}
    assert crl.next_update_utc is not None and crl.next_update_utc > datetime.now(UTC)


def test_revoking_nothing_is_an_error_not_a_silent_no_op(ca: FederationCA) -> None:
    issued = ca.sign_csr(make_csr(identity(1), "st-marys"))
    with pytest.raises(FederationError, match="no live certificate"):
        ca.revoke(site_id="st-johns")
    with pytest.raises(FederationError, match="no certificate with serial"):
        ca.revoke(serial=issued.serial + 1)
    ca.revoke(serial=issued.serial)
    with pytest.raises(FederationError, match="already revoked"):
        ca.revoke(serial=issued.serial)
    with pytest.raises(FederationError, match="one site ID or one serial"):
        ca.revoke()
    assert crl_number(ca.crl()) == 2


def test_the_crl_is_replaced_atomically_leaving_no_temporary_files(ca: FederationCA) -> None:
    before = ca.crl_path.stat().st_ino
    ca.sign_csr(make_csr(identity(1), "st-marys"))
    ca.revoke(site_id="st-marys")
    assert ca.crl_path.stat().st_ino != before  # renamed into place, not rewritten
    assert sorted(p.name for p in ca.directory.iterdir()) == LAYOUT


def test_publish_crl_renews_it_with_the_same_entries(ca: FederationCA) -> None:
    issued = ca.sign_csr(make_csr(identity(1), "st-marys"))
    ca.revoke(serial=issued.serial)
    crl = ca.publish_crl(days=7)
    assert crl_number(crl) == 3
    assert crl.get_revoked_certificate_by_serial_number(issued.serial) is not None
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - datetime.now(UTC) <= timedelta(days=7)


@pytest.mark.parametrize(
    ("text", "value"),
    [("ff", 255), ("0xFF", 255), ("0f:a0", 0xFA0), (" AB ", 0xAB)],
)
def test_serials_are_read_as_hex(text: str, value: int) -> None:
    assert parse_serial(text) == value


@pytest.mark.parametrize("text", ["", "0x", "xyz", "f" * 41])
def test_bad_serials_are_refused(text: str) -> None:
    with pytest.raises(FederationError, match="not a hexadecimal"):
        parse_serial(text)


def test_issued_lists_what_was_signed(ca: FederationCA, site: Callable[..., Site]) -> None:
    one = site("st-a", seed=1)
    two = site("st-b", seed=2)
    issued = {item.site_id: item.public_key for item in ca.issued()}
    assert issued == {
        "st-a": one.identity.public_key_bytes,
        "st-b": two.identity.public_key_bytes,
    }
