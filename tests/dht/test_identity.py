"""The DHT's collaborators are the real ones: Federation verifies, NodeIdentity signs."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from meshpacs.dht import Ed25519Signer, MemberVerifier, sign_record, verify_record
from meshpacs.errors import FederationError, NotAMember
from meshpacs.federation import Federation, make_csr
from meshpacs.keys import NodeIdentity, SiteSecret, node_id_for

from .helpers import NOW, TestFederation, fragment_ids, provider_record


def test_a_federation_is_the_member_verifier(federation: TestFederation) -> None:
    # mypy checks the same statically (meshpacs.dht.identity); this checks it does the job.
    verifier: MemberVerifier = federation.verifier
    signer = federation.issue("st-alpha")
    member = verifier.verify(signer.cert_der, NOW)
    assert member.site_id == "st-alpha"
    assert member.public_key == signer.public_key_bytes
    assert member.node_id == node_id_for(signer.public_key_bytes)
    with pytest.raises(NotAMember):
        verifier.verify(b"\x30\x03\x02\x01\x00", NOW)


def test_signer_from_identity_signs_records_members_accept(
    federation: TestFederation, verifier: Federation
) -> None:
    identity = NodeIdentity.from_secret(SiteSecret.generate())
    issued = federation.ca.sign_csr(make_csr(identity, "st-alpha"))
    der = x509.load_pem_x509_certificate(issued.pem).public_bytes(Encoding.DER)
    from_der = Ed25519Signer.from_identity(identity, der)
    from_pem = Ed25519Signer.from_identity(identity, issued.pem)
    assert from_der.cert_der == from_pem.cert_der == der  # records always carry DER
    assert from_der.public_key_bytes == identity.public_key_bytes
    raw = sign_record(provider_record(fragment_ids(1, seed=5)[0], "st-alpha"), from_pem)
    verified = verify_record(raw, verifier, NOW)
    assert verified.author.site_id == "st-alpha"
    assert verified.author.node_id == identity.node_id
    assert verified.author.fingerprint == issued.fingerprint


def test_signer_from_identity_refuses_another_node_s_certificate(
    federation: TestFederation,
) -> None:
    other = federation.issue("st-other")
    identity = NodeIdentity.from_secret(SiteSecret.generate())
    with pytest.raises(FederationError, match="not for this node's identity key"):
        Ed25519Signer.from_identity(identity, other.cert_der)
    with pytest.raises(FederationError):
        Ed25519Signer.from_identity(identity, b"not a certificate")


def test_signer_repr_shows_no_private_key(federation: TestFederation) -> None:
    identity = NodeIdentity.from_secret(SiteSecret.generate())
    issued = federation.ca.sign_csr(make_csr(identity, "st-alpha"))
    signer = Ed25519Signer.from_identity(identity, issued.pem)
    private = identity.signing_key.private_bytes_raw()
    text = repr(signer)
    assert "redacted" in text and identity.public_key_bytes.hex() in text
    assert private.hex() not in text and str(private) not in text
