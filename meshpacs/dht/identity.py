"""Who may write to the DHT, and who signs: two small Protocols over the federation's types.

The DHT trusts nothing it has not verified against the federation. It does not define
members or node IDs itself; it uses the federation's and the node identity's:

* a member is :class:`meshpacs.federation.certs.Member` (site ID, raw Ed25519 public key,
  certificate fingerprint, expiry, serial), as the federation CA certified it;
* a node's DHT ID is :func:`meshpacs.keys.identity.node_id_for` of its certified key
  (also ``Member.node_id``), so nobody can pick where they sit in the keyspace (Sybil and
  eclipse attacks are not free), and a reader can check that the DHT node it talked to
  has the ID its signed node record implies (``DhtNode.closest_sites`` does).

What the DHT asks of its collaborators is two Protocols, so that tests and tools can use
any implementation while the node uses the real ones:

* :class:`MemberVerifier` turns an author's certificate into a ``Member`` or raises
  :class:`~meshpacs.errors.NotAMember` (another ``FederationError`` if the federation's
  own files are unusable). :class:`meshpacs.federation.membership.Federation` satisfies
  it as it stands; mypy checks that below.
* :class:`Signer` is what an author needs to sign records: its public key, its
  certificate (DER) and an Ed25519 ``sign``. :class:`Ed25519Signer` is the plain
  implementation; :meth:`Ed25519Signer.from_identity` builds the node's own from its
  :class:`~meshpacs.keys.identity.NodeIdentity` and the certificate the CA issued for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshpacs.errors import FederationError
from meshpacs.federation.certs import Member, certificate_public_key, load_certificate
from meshpacs.keys.identity import NodeIdentity

if TYPE_CHECKING:
    from meshpacs.federation.membership import Federation

__all__ = ["Ed25519Signer", "MemberVerifier", "Signer"]


class MemberVerifier(Protocol):
    """Checks that a certificate was issued by the federation and is still valid."""

    def verify(self, cert_der: bytes, now: float) -> Member:
        """The member the certificate names at ``now`` (POSIX seconds).

        ``cert_der`` comes from any peer: for bytes that are not a valid member
        certificate the verifier raises ``NotAMember``, never a parser's own exception;
        another ``FederationError`` means the verifier itself cannot decide (for the
        federation: its CA certificate or revocation list is stale or unusable).
        """
        ...


if TYPE_CHECKING:

    def _federation_is_a_member_verifier(federation: Federation) -> MemberVerifier:
        # Never called: mypy fails here if Federation.verify stops fitting the Protocol.
        return federation


class Signer(Protocol):
    """An author of DHT records: its key, its certificate, and a way to sign."""

    @property
    def public_key_bytes(self) -> bytes: ...

    @property
    def cert_der(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


class Ed25519Signer:
    """A :class:`Signer` over an Ed25519 private key and the certificate issued for it."""

    def __init__(self, private_key: Ed25519PrivateKey, cert_der: bytes) -> None:
        self._private_key = private_key
        self._cert_der = bytes(cert_der)
        self._public_key_bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def from_identity(cls, identity: NodeIdentity, certificate: bytes) -> Ed25519Signer:
        """The node's signer: its identity key and its node certificate (DER or PEM).

        The certificate is carried in every record as DER (a PEM one is converted), and
        must hold the identity's public key: a signer whose records no member could
        verify is refused here with ``FederationError`` rather than at every reader.
        """
        cert = load_certificate(certificate, "node certificate")
        if certificate_public_key(cert) != identity.public_key_bytes:
            raise FederationError(
                "the node certificate is not for this node's identity key; install the"
                " certificate the federation CA issued for this site"
            )
        return cls(identity.signing_key, cert.public_bytes(serialization.Encoding.DER))

    @property
    def public_key_bytes(self) -> bytes:
        return self._public_key_bytes

    @property
    def cert_der(self) -> bytes:
        return self._cert_der

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)

    def __repr__(self) -> str:
        # The private key never appears; the public key is enough to tell signers apart.
        return f"Ed25519Signer(public_key={self._public_key_bytes.hex()}, private_key=<redacted>)"
