"""The real federation for the DHT tests: a CA on disk, members enrolled through CSRs.

Members are made the way sites are: ``NodeIdentity`` from a fresh site secret, a CSR
(``make_csr``), the CA's ``sign_csr``, and ``Ed25519Signer.from_identity``. The verifier is
the ``Federation`` a node would hold, loaded from the CA's certificate and CRL files, so a
revocation (``ca.revoke``, which rewrites the CRL file) takes effect on its next check.
``tests/federation/helpers.py`` enrolls whole site directories and drives TLS; the DHT
needs only a signer per member, so this stays a separate small helper.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from meshpacs.dht import Ed25519Signer, NodeRecord, ProviderRecord, cert_fingerprint
from meshpacs.federation import Federation, FederationCA, create_federation_ca, make_csr
from meshpacs.federation.certs import NODE_DAYS
from meshpacs.keys import NodeIdentity, SiteSecret

# "Now" for everything that is not about the passage of time. The CA (like the real one)
# dates its certificate and CRL by the wall clock, valid from an hour before they are made
# and its CRL for 90 days; a NOW one day past the session's start lies inside all of them
# for any session shorter than a day, and leaves room for the tests' clock moves.
NOW = float(int(time.time()) + 24 * 3600)
DAY = 24 * 3600


@dataclass
class Clock:
    """A clock tests move by hand."""

    now: float = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class TestFederation:
    """A federation CA on disk, and the ``Federation`` a member node verifies peers with."""

    __test__ = False  # not a pytest test class

    ca: FederationCA
    verifier: Federation

    @classmethod
    def create(cls, directory: Path, name: str) -> TestFederation:
        ca = create_federation_ca(directory, name)
        return cls(ca, Federation.load(ca.cert_path, ca.crl_path))

    def issue(
        self, site_id: str, *, issued_at: float | None = None, days: int = NODE_DAYS
    ) -> Ed25519Signer:
        """A new member: a fresh identity, its CSR signed by the CA, its record signer."""
        identity = NodeIdentity.from_secret(SiteSecret.generate())
        when = None if issued_at is None else datetime.fromtimestamp(issued_at, UTC)
        issued = self.ca.sign_csr(make_csr(identity, site_id), now=when, days=days)
        return Ed25519Signer.from_identity(identity, issued.pem)

    def revoke(self, signer: Ed25519Signer) -> None:
        """Revoke the member's certificate; the CRL file changes, the verifier re-reads it."""
        serial = self.verifier.verify(signer.cert_der, NOW).serial
        self.ca.revoke(serial=serial)


def node_record(
    signer: Ed25519Signer,
    site_id: str,
    *,
    seq: int = 1,
    expires_at: float = NOW + 3600,
    port: int = 7000,
    fingerprint: bytes | None = None,
) -> NodeRecord:
    return NodeRecord(
        site_id=site_id,
        cert_fingerprint=fingerprint or cert_fingerprint(signer.cert_der),
        transport_host="127.0.0.1",
        transport_port=port,
        dicom_host="pacs.example.org",
        dicom_port=11112,
        dicom_ae_title="MESH_TEST",
        capacity_bytes=10**12,
        seq=seq,
        expires_at=int(expires_at),
    )


def provider_record(
    fragment_id: str, holder: str, *, seq: int = 1, expires_at: float = NOW + 3600
) -> ProviderRecord:
    return ProviderRecord(fragment_id, holder, seq, int(expires_at))


def fragment_ids(count: int, seed: int) -> list[str]:
    """Opaque 64-hex fragment IDs, the form ``meshpacs.erasure.fragment_id`` produces."""
    rng = random.Random(seed)
    return [rng.randbytes(32).hex() for _ in range(count)]


def signer_with_another_key(cert_der: bytes) -> Ed25519Signer:
    """A signer holding some other member's certificate but its own, unrelated key."""
    identity = NodeIdentity.from_secret(SiteSecret.generate())
    return Ed25519Signer(identity.signing_key, cert_der)
