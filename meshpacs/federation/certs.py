"""Federation certificates as pure functions: build them, and check a peer's.

Nothing here touches files or sockets; ``ca.py`` keeps the CA's files, ``membership.py``
holds a federation's CA certificate and CRL, ``tls.py`` puts them on the wire.

What the federation CA issues (X.509 v3, every key Ed25519, signatures Ed25519)::

    CA certificate      subject = issuer = CN=<federation name>
                        basicConstraints CA:TRUE, pathlen 0 (critical)
                        keyUsage keyCertSign, cRLSign (critical)
    node certificate    subject CN=<site ID>, issuer = the CA's subject
                        subjectAltName URI:urn:meshpacs:site:<site ID>   (must equal the CN)
                        basicConstraints CA:FALSE (critical)
                        keyUsage digitalSignature (critical)
                        extendedKeyUsage serverAuth, clientAuth
                        public key = the site's NodeIdentity Ed25519 key
    CRL                 issuer = the CA's subject, cRLNumber rising by one per issue,
                        nextUpdate: after it the CRL is stale and every check fails

Serial numbers are 128 random bits (top bit set, so every serial prints as 32 hex digits).
``check_node_certificate`` is the one rule for "is this a member": ``Federation.verify``
and the TLS layer both use it, so the site ID always comes from a certificate the CA
signed. Every length read from a peer or a file is bounded before parsing.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshpacs.errors import FederationError, NotAMember
from meshpacs.federation.names import (
    site_id_from_uri,
    site_id_problem,
    site_uri,
    validate_federation_name,
)
from meshpacs.keys.identity import NodeIdentity, node_id_for

__all__ = [
    "CA_DAYS",
    "CLOCK_SKEW",
    "CRL_DAYS",
    "MAX_CERT_BYTES",
    "MAX_CRL_BYTES",
    "MAX_CSR_BYTES",
    "NODE_DAYS",
    "Member",
    "Revocation",
    "build_ca_certificate",
    "build_crl",
    "build_node_certificate",
    "certificate_fingerprint",
    "certificate_public_key",
    "check_node_certificate",
    "common_name",
    "crl_number",
    "load_certificate",
    "load_crl",
    "make_csr",
    "new_serial",
    "parse_csr",
    "pem",
    "raw_public_key",
]

CA_DAYS = 3650
NODE_DAYS = 825
CRL_DAYS = 90
# Certificates start this long before they are issued, so a peer whose clock is behind
# the CA's (by hours, on a server that lost its NTP) still accepts one issued a minute ago.
# A certificate valid a day before it existed gives nobody anything: it names the same key.
CLOCK_SKEW = timedelta(days=1)
MAX_CERT_BYTES = 16 * 1024
MAX_CSR_BYTES = 16 * 1024
MAX_CRL_BYTES = 4 * 1024 * 1024  # ~80 000 revocations: far more than a federation has

_SERIAL_BITS = 128
_PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class Member:
    """A federation member, as its CA-verified node certificate describes it.

    ``public_key`` is the raw 32-byte Ed25519 key; ``fingerprint`` the SHA-256 (hex) of the
    certificate's DER bytes; ``serial`` the certificate's serial number.
    """

    site_id: str
    public_key: bytes
    fingerprint: str
    not_after: datetime
    serial: int

    @property
    def node_id(self) -> bytes:
        """The member's 20-byte Kademlia node ID, from its certified public key."""
        return node_id_for(self.public_key)


@dataclass(frozen=True)
class Revocation:
    """One entry of a CRL: which serial, since when."""

    serial: int
    revoked_at: datetime


def new_serial() -> int:
    """A fresh certificate serial number: 128 bits from ``secrets``, top bit set."""
    return secrets.randbits(_SERIAL_BITS - 1) | (1 << (_SERIAL_BITS - 1))


def pem(item: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return item.public_bytes(_PEM)


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER bytes, 64 hex digits."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def certificate_public_key(cert: x509.Certificate) -> bytes:
    """The raw Ed25519 public key a certificate holds; ``FederationError`` for any other."""
    key = cert.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise FederationError("certificate key is not Ed25519")
    return raw_public_key(key)


def common_name(cert: x509.Certificate) -> str:
    """The subject's (first) common name, ``""`` if it has none."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now(now: datetime | float | None) -> datetime:
    """``now`` as an aware UTC datetime; a float is POSIX seconds (as ``time.time()``)."""
    if now is None:
        return datetime.now(UTC)
    if isinstance(now, int | float):
        return datetime.fromtimestamp(now, UTC)
    return now.astimezone(UTC)


# --- building (the CA side) -------------------------------------------------------------


def build_ca_certificate(
    key: Ed25519PrivateKey, name: str, now: datetime | None = None, days: int = CA_DAYS
) -> x509.Certificate:
    """The self-signed certificate of a new federation CA named ``name``."""
    validate_federation_name(name)
    _require_days(days)
    now = _now(now)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(public)
        .serial_number(new_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, None)
    )


def build_node_certificate(
    ca_key: Ed25519PrivateKey,
    ca_cert: x509.Certificate,
    site_id: str,
    public_key: bytes,
    *,
    serial: int,
    now: datetime | None = None,
    days: int = NODE_DAYS,
) -> x509.Certificate:
    """A node certificate for ``site_id``'s raw Ed25519 ``public_key``, signed by the CA."""
    _require_days(days)
    now = _now(now)
    subject_key = Ed25519PublicKey.from_public_bytes(public_key)
    eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return (
        x509.CertificateBuilder()
        .subject_name(_name(site_id))
        .issuer_name(ca_cert.subject)
        .public_key(subject_key)
        .serial_number(serial)
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(site_uri(site_id))]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
        .sign(ca_key, None)
    )


def build_crl(
    ca_key: Ed25519PrivateKey,
    ca_cert: x509.Certificate,
    revoked: Iterable[Revocation],
    *,
    number: int,
    now: datetime | None = None,
    days: int = CRL_DAYS,
) -> x509.CertificateRevocationList:
    """The CA's revocation list number ``number``, listing ``revoked``."""
    _require_days(days)
    now = _now(now)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - CLOCK_SKEW)  # OpenSSL refuses a CRL "not yet valid" too
        .next_update(now + timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
    )
    for entry in sorted(revoked, key=lambda r: r.serial):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
            .build()
        )
    return builder.sign(ca_key, None)


def _key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _require_days(days: int) -> None:
    if not 1 <= days <= 100 * 366:
        raise FederationError(f"a validity of {days} days is not allowed (1 to 36600)")


# --- the request (the site side) --------------------------------------------------------


def make_csr(identity: NodeIdentity, site_id: str) -> bytes:
    """A PEM certificate request for ``site_id``, signed with the node's identity key.

    The signature proves to the CA that whoever sent the request holds the key.
    """
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(site_id))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(site_uri(site_id))]),
            critical=False,
        )
        .sign(identity.signing_key, None)
    )
    return request.public_bytes(_PEM)


def parse_csr(data: bytes) -> tuple[str, bytes]:
    """The site ID and raw Ed25519 public key of a certificate request, once checked.

    Refuses (``FederationError``) a request over ``MAX_CSR_BYTES``, one whose signature
    does not verify (it was altered, or its sender does not hold the key), one whose key
    is not Ed25519, and one whose common name is not a valid site ID or disagrees with its
    site URI. Other requested extensions are ignored: the CA decides what it signs.
    """
    if len(data) > MAX_CSR_BYTES:
        raise FederationError(f"certificate request is over {MAX_CSR_BYTES} bytes")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            request = x509.load_pem_x509_csr(data)
        else:
            request = x509.load_der_x509_csr(data)
    except ValueError:
        raise FederationError("not a certificate request (PEM or DER)") from None
    public = request.public_key()
    if not isinstance(public, Ed25519PublicKey):
        raise FederationError(
            "certificate request key is not Ed25519; make the request with"
            " meshpacs federation request"
        )
    if not request.is_signature_valid:
        raise FederationError(
            "certificate request signature does not verify: it was altered, or made"
            " without the key it names"
        )
    site_id = _common_name_site_id(request.subject, FederationError, "certificate request")
    try:
        san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return site_id, raw_public_key(public)
    except ValueError:
        raise FederationError("certificate request extensions do not parse") from None
    if _san_site_id(san, FederationError, "certificate request") != site_id:
        raise FederationError("certificate request common name and site URI disagree")
    return site_id, raw_public_key(public)


# --- checking (everyone) ----------------------------------------------------------------


def load_certificate(data: bytes, what: str = "certificate") -> x509.Certificate:
    """A certificate from PEM or DER bytes, refused (``FederationError``) over the bound."""
    if len(data) > MAX_CERT_BYTES:
        raise FederationError(f"{what} is over {MAX_CERT_BYTES} bytes")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion):  # InvalidVersion is not a ValueError
        raise FederationError(f"{what} is not an X.509 certificate (PEM or DER)") from None


def load_crl(data: bytes, ca_cert: x509.Certificate) -> x509.CertificateRevocationList:
    """A CRL from PEM or DER bytes, checked to be signed by the CA of ``ca_cert``."""
    if len(data) > MAX_CRL_BYTES:
        raise FederationError(f"revocation list is over {MAX_CRL_BYTES} bytes")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(data)
    except ValueError:
        raise FederationError("not a certificate revocation list (PEM or DER)") from None
    ca_key = ca_cert.public_key()
    if crl.issuer != ca_cert.subject or not isinstance(ca_key, Ed25519PublicKey):
        raise FederationError("revocation list is not from this federation's CA")
    if not crl.is_signature_valid(ca_key):
        raise FederationError("revocation list signature does not verify with the CA's key")
    if crl.next_update_utc is None:
        raise FederationError("revocation list has no next-update time")
    return crl


def crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def check_node_certificate(
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    crl: x509.CertificateRevocationList,
    now: datetime | float | None = None,
) -> Member:
    """The member ``cert`` certifies, or ``NotAMember`` saying which check failed.

    Checks, in order: the CA and its CRL are current (else ``FederationError``: the fault
    is ours, not the peer's); ``cert`` is signed by this CA; it names one valid site ID,
    the same in its common name and site URI; it is within its validity period; its key
    is Ed25519; it is a node (not CA) certificate for TLS client and server use; and the
    CRL does not list it. Messages quote only fields the CA signed.
    """
    now = _now(now)
    _check_federation_current(ca_cert, crl, now)
    ca_name = common_name(ca_cert)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise NotAMember(f"certificate was not issued by the federation CA {ca_name!r}") from None
    site_id = _certified_site_id(cert)
    label = f"certificate of site {site_id!r} (serial {cert.serial_number:x})"
    if now < cert.not_valid_before_utc:
        raise NotAMember(f"{label} is not valid until {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z")
    if now > cert.not_valid_after_utc:
        raise NotAMember(f"{label} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z")
    public = cert.public_key()
    if not isinstance(public, Ed25519PublicKey):
        raise NotAMember(f"{label} does not hold an Ed25519 key")
    _check_node_usage(cert, label)
    revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if revoked is not None:
        raise NotAMember(f"{label} was revoked on {revoked.revocation_date_utc:%Y-%m-%d}")
    return Member(
        site_id=site_id,
        public_key=raw_public_key(public),
        fingerprint=certificate_fingerprint(cert),
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
    )


def _check_federation_current(
    ca_cert: x509.Certificate, crl: x509.CertificateRevocationList, now: datetime
) -> None:
    if not ca_cert.not_valid_before_utc <= now <= ca_cert.not_valid_after_utc:
        raise FederationError(
            f"the federation CA certificate is valid from"
            f" {ca_cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z to"
            f" {ca_cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z, not now"
            f" ({now:%Y-%m-%d %H:%M}Z); check this machine's clock"
        )
    next_update = crl.next_update_utc
    if next_update is not None and now > next_update:
        raise FederationError(
            f"the federation's revocation list went stale on {next_update:%Y-%m-%d %H:%M}Z;"
            " ask the federation administrator for a fresh one (meshpacs federation crl)"
            " and install it (meshpacs federation install --crl)"
        )


def _certified_site_id(cert: x509.Certificate) -> str:
    site_id = _common_name_site_id(cert.subject, NotAMember, "certificate")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise NotAMember(f"certificate of {site_id!r} has no site URI") from None
    uri_site = _san_site_id(san, NotAMember, f"certificate of {site_id!r}")
    if uri_site != site_id:
        raise NotAMember(f"certificate common name {site_id!r} and site URI {uri_site!r} disagree")
    return site_id


def _check_node_usage(cert: x509.Certificate, label: str) -> None:
    extensions = cert.extensions
    try:
        if extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise NotAMember(f"{label} is a CA certificate, not a node certificate")
    except x509.ExtensionNotFound:
        pass
    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
        purposes = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise NotAMember(f"{label} lacks key usage or extended key usage") from None
    if not usage.digital_signature:
        raise NotAMember(f"{label} does not allow digital signatures")
    needed = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    if not needed <= set(purposes):
        raise NotAMember(f"{label} is not for TLS client and server use")


def _common_name_site_id(subject: x509.Name, error: type[FederationError], what: str) -> str:
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        raise error(f"{what} must have exactly one common name")
    site_id = names[0].value
    if site_id_problem(site_id) is not None:
        raise error(f"{what} common name is not a valid site ID")
    return site_id


def _san_site_id(san: x509.SubjectAlternativeName, error: type[FederationError], what: str) -> str:
    names = list(san)
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(names) != 1 or len(uris) != 1:
        raise error(f"{what} must have exactly one subject alternative name, its site URI")
    site_id = site_id_from_uri(uris[0])
    if site_id is None:
        raise error(f"{what} alternative name is not a urn:meshpacs:site: URI")
    return site_id
