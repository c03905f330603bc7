"""A throwaway federation on disk, and TLS handshakes over real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshpacs.federation import (
    Federation,
    FederationCA,
    SiteFederationFiles,
    enroll_site,
    peer_member,
)
from meshpacs.federation.certs import new_serial
from meshpacs.keys import NodeIdentity, SiteSecret

__all__ = [
    "Outcome",
    "Site",
    "ca_private_key",
    "handcrafted_cert",
    "handshake",
    "make_site",
    "raw_context",
]

TIMEOUT = 5.0


@dataclass(frozen=True)
class Site:
    site_id: str
    identity: NodeIdentity
    files: SiteFederationFiles

    def federation(self) -> Federation:
        return self.files.federation()


def make_site(ca: FederationCA, root: Path, site_id: str, seed: int = 0) -> Site:
    """A site enrolled with ``ca``; its secret is drawn from ``seed`` (tests are repeatable)."""
    secret = SiteSecret(bytes((seed + i) % 256 for i in range(32)))
    identity = NodeIdentity.from_secret(secret)
    files = SiteFederationFiles.for_site(root / site_id)
    enroll_site(ca, files, identity, site_id)
    return Site(site_id, identity, files)


def ca_private_key(ca: FederationCA) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(ca.key_path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def handcrafted_cert(
    ca: FederationCA,
    identity: NodeIdentity,
    *,
    common_name: str,
    uri: str,
    eku: tuple[x509.ObjectIdentifier, ...] = (
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ),
) -> x509.Certificate:
    """A certificate signed with the CA's real key but fields meshpacs would never issue."""
    now = datetime.now(UTC)
    public = identity.public_key
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(public)
        .serial_number(new_serial())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_private_key(ca), None)
    )


def raw_context(
    tmp: Path,
    *,
    server_side: bool,
    ca_file: Path,
    identity: NodeIdentity | None = None,
    cert_pem: bytes | None = None,
    maximum_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A context built straight on ``ssl``, skipping meshpacs's own checks: what an
    outsider (or a node with a bad certificate) would use."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(ca_file))
    if maximum_version is not None:
        context.maximum_version = maximum_version
    if identity is not None and cert_pem is not None:
        tmp.mkdir(parents=True, exist_ok=True)
        key_path = tmp / "raw.key"
        key_path.write_bytes(
            identity.signing_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        cert_path = tmp / "raw.pem"
        cert_path.write_bytes(cert_pem)
        context.load_cert_chain(str(cert_path), str(key_path))
    return context


@dataclass
class Outcome:
    """What each end of one connection saw: the peer's site ID, or the error."""

    server_peer: str | None = None
    client_peer: str | None = None
    server_error: BaseException | None = None
    client_error: BaseException | None = None
    version: str | None = None

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None


_GREETING = b"ok"


def handshake(
    server: ssl.SSLContext,
    client: ssl.SSLContext,
    server_federation: Federation | None,
    client_federation: Federation | None,
    expected_site_id: str | None = None,
) -> Outcome:
    """One connection over 127.0.0.1. Each side checks the other with ``peer_member`` (if
    given a federation); the server greets only a peer it accepted, and the client counts
    the connection only once greeted. In TLS 1.3 the client's handshake ends before the
    server has checked the client's certificate, so a refused client learns it only then.
    """
    outcome = Outcome()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        thread = threading.Thread(
            target=_serve, args=(listener, server, server_federation, outcome)
        )
        thread.start()
        try:
            raw = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
            with raw, client.wrap_socket(raw, server_side=False) as tls:
                outcome.version = tls.version()
                if client_federation is not None:
                    member = peer_member(tls, client_federation, expected_site_id)
                    outcome.client_peer = member.site_id
                if tls.recv(len(_GREETING)) != _GREETING:
                    raise ConnectionError("the server closed the connection without a greeting")
        except Exception as exc:
            outcome.client_error = exc
        finally:
            thread.join(TIMEOUT)
    return outcome


def _serve(
    listener: socket.socket,
    context: ssl.SSLContext,
    federation: Federation | None,
    outcome: Outcome,
) -> None:
    try:
        raw, _ = listener.accept()
    except OSError as exc:
        outcome.server_error = exc
        return
    with raw:
        raw.settimeout(TIMEOUT)
        try:
            with context.wrap_socket(raw, server_side=True) as tls:
                if federation is not None:
                    outcome.server_peer = peer_member(tls, federation).site_id
                tls.sendall(_GREETING)
        except Exception as exc:
            outcome.server_error = exc
