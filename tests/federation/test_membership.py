"""``Federation.verify``: the one rule for who is a member, with a precise reason for who is not."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshpacs.errors import FederationError, NotAMember
from meshpacs.federation import Federation, FederationCA, create_federation_ca, make_csr
from meshpacs.federation.certs import build_crl, crl_number

from .helpers import Site, ca_private_key, handcrafted_cert

DER = serialization.Encoding.DER


def der_of(site: Site) -> bytes:
    return x509.load_pem_x509_certificate(site.files.node_certificate_pem()).public_bytes(DER)


def test_a_member_is_described_by_its_certificate(site: Callable[..., Site]) -> None:
    a = site("st-a", seed=1)
    b = site("st-b", seed=2)
    member = a.federation().verify(der_of(b))
    cert = x509.load_der_x509_certificate(der_of(b))
    assert member.site_id == "st-b"
    assert member.public_key == b.identity.public_key_bytes
    assert member.node_id == b.identity.node_id
    assert member.fingerprint == hashlib.sha256(der_of(b)).hexdigest()
    assert member.not_after == cert.not_valid_after_utc
    assert member.serial == cert.serial_number


def test_pem_is_accepted_as_well_as_der(site: Callable[..., Site]) -> None:
    a = site("st-a", seed=1)
    assert a.federation().verify(a.files.node_certificate_pem()).site_id == "st-a"


def test_a_certificate_from_another_ca_is_not_a_member(
    site: Callable[..., Site], other_ca: FederationCA
) -> None:
    a = site("st-a", seed=1)
    rogue = site("st-b", seed=2, authority=other_ca)
    with pytest.raises(NotAMember, match="not issued by the federation CA 'Test Mesh'"):
        a.federation().verify(der_of(rogue))


def test_a_ca_with_the_same_name_but_another_key_is_not_ours(
    site: Callable[..., Site], tmp_path: Path
) -> None:
    twin = create_federation_ca(tmp_path / "twin", "Test Mesh")
    a = site("st-a", seed=1)
    impostor = site("st-b", seed=2, authority=twin)
    with pytest.raises(NotAMember, match="not issued by"):
        a.federation().verify(der_of(impostor))


def test_an_expired_certificate_is_refused(ca: FederationCA, site: Callable[..., Site]) -> None:
    a = site("st-a", seed=1)
    b = site("st-b", seed=2)
    past = datetime.now(UTC) - timedelta(days=10)
    old = ca.sign_csr(make_csr(b.identity, "st-b"), days=1, now=past)
    with pytest.raises(NotAMember, match=r"certificate of site 'st-b' .* expired on"):
        a.federation().verify(old.pem)


def test_a_certificate_before_its_start_is_refused(
    ca: FederationCA, site: Callable[..., Site]
) -> None:
    a = site("st-a", seed=1)
    b = site("st-b", seed=2)
    future = ca.sign_csr(make_csr(b.identity, "st-b"), now=datetime.now(UTC) + timedelta(days=2))
    with pytest.raises(NotAMember, match="not valid until"):
        a.federation().verify(future.pem)


def test_now_may_be_posix_seconds(ca: FederationCA, site: Callable[..., Site]) -> None:
    a = site("st-a", seed=1)
    now = datetime.now(UTC)
    assert a.federation().verify(der_of(a), now=now.timestamp()).site_id == "st-a"
    old = ca.sign_csr(make_csr(a.identity, "st-a"), days=1, now=now - timedelta(days=3))
    with pytest.raises(NotAMember, match="expired"):
        a.federation().verify(old.pem, now=now.timestamp())


def test_a_certificate_whose_common_name_and_site_uri_disagree_is_refused(
    ca: FederationCA, site: Callable[..., Site]
) -> None:
    a = site("st-a", seed=1)
    b = site("st-b", seed=2)
    forged = handcrafted_cert(
        ca, b.identity, common_name="st-b", uri="urn:meshpacs:site:st-a"
    ).public_bytes(DER)
    with pytest.raises(NotAMember, match="'st-b' and site URI 'st-a' disagree"):
        a.federation().verify(forged)


@pytest.mark.parametrize(
    ("common_name", "uri", "eku", "words"),
    [
        ("st-b", "https://st-b.example", None, "not a urn:meshpacs:site: URI"),
        ("St B", "urn:meshpacs:site:st-b", None, "not a valid site ID"),
        ("st-b", "urn:meshpacs:site:st-b", (ExtendedKeyUsageOID.SERVER_AUTH,), "client and server"),
    ],
)
def test_certificates_the_ca_would_never_issue_are_refused(
    ca: FederationCA,
    site: Callable[..., Site],
    common_name: str,
    uri: str,
    eku: tuple[x509.ObjectIdentifier, ...] | None,
    words: str,
) -> None:
    a = site("st-a", seed=1)
    b = site("st-b", seed=2)
    extra = {} if eku is None else {"eku": eku}
    cert = handcrafted_cert(ca, b.identity, common_name=common_name, uri=uri, **extra)
    with pytest.raises(NotAMember, match=words):
        a.federation().verify(cert.public_bytes(DER))


def test_the_ca_certificate_itself_is_not_a_member(
    ca: FederationCA, site: Callable[..., Site]
) -> None:
    a = site("st-a", seed=1)
    with pytest.raises(NotAMember):
        a.federation().verify(ca.certificate.public_bytes(DER))


def test_garbage_and_oversized_certificates_are_not_members(site: Callable[..., Site]) -> None:
    federation = site("st-a", seed=1).federation()
    with pytest.raises(NotAMember, match=r"not an X\.509 certificate"):
        federation.verify(b"\x30\x03\x02\x01\x00")
    with pytest.raises(NotAMember, match="over"):
        federation.verify(bytes(100_000))


def test_a_revoked_certificate_is_refused_once_the_new_crl_file_is_in_place(
    ca: FederationCA, site: Callable[..., Site]
) -> None:
    a = site("st-a", seed=1)
    b = site("st-b", seed=2)
    federation = a.federation()
    assert federation.verify(der_of(b)).site_id == "st-b"
    ca.revoke(site_id="st-b")
    assert federation.verify(der_of(b)).site_id == "st-b"  # st-a has not installed it yet
    shutil.copyfile(ca.crl_path, a.files.crl)
    with pytest.raises(NotAMember, match=r"certificate of site 'st-b' .* was revoked on"):
        federation.verify(der_of(b))
    assert federation.verify(der_of(a)).site_id == "st-a"
    assert crl_number(federation.crl) == 2


def test_a_rolled_back_crl_fails_closed(ca: FederationCA, site: Callable[..., Site]) -> None:
    a = site("st-a", seed=1)
    b = site("st-b", seed=2)
    first = ca.crl_path.read_bytes()
    ca.revoke(site_id="st-b")
    shutil.copyfile(ca.crl_path, a.files.crl)
    federation = a.federation()
    a.files.crl.write_bytes(first)  # someone puts the old list back, un-revoking st-b
    with pytest.raises(FederationError, match="older than the one this node already read"):
        federation.verify(der_of(b))
    with pytest.raises(FederationError):
        federation.verify(der_of(a))


def test_a_crl_signed_by_another_key_fails_closed(
    other_ca: FederationCA, site: Callable[..., Site]
) -> None:
    a = site("st-a", seed=1)
    federation = a.federation()
    forged = build_crl(ca_private_key(other_ca), federation.ca_certificate, [], number=99)
    a.files.crl.write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(FederationError, match="signature does not verify") as caught:
        federation.verify(der_of(a))
    assert not isinstance(caught.value, NotAMember)


def test_a_stale_crl_is_the_federations_fault_not_the_peers(site: Callable[..., Site]) -> None:
    a = site("st-a", seed=1)
    federation = a.federation()
    later = federation.crl_next_update + timedelta(seconds=1)
    with pytest.raises(FederationError, match="went stale") as caught:
        federation.verify(der_of(a), now=later)
    assert not isinstance(caught.value, NotAMember)


def test_a_missing_crl_file_fails_closed(site: Callable[..., Site]) -> None:
    a = site("st-a", seed=1)
    federation = a.federation()
    cert = der_of(a)
    a.files.crl.unlink()
    with pytest.raises(FederationError, match="does not exist"):
        federation.verify(cert)


def test_from_pem_gives_the_same_answers(ca: FederationCA, site: Callable[..., Site]) -> None:
    a = site("st-a", seed=1)
    federation = Federation.from_pem(ca.certificate_pem(), ca.crl_pem())
    assert federation.verify(der_of(a)).site_id == "st-a"
    assert federation.ca_fingerprint == ca.fingerprint
