"""Who is in the federation: the CA certificate plus its current revocation list.

A ``Federation`` answers one question, ``verify(cert_der) -> Member``: was this node
certificate issued by *our* CA, is it current, and has the CA not revoked it? The TLS layer
asks it for every peer after the handshake, so the peer's site ID is always read from a
certificate our CA signed.

Loaded from files, it watches the CRL file: when the file changes (a new inode, size or
modification time; ``install`` replaces it atomically) the next ``verify`` reads it again,
so a revocation installed while the node runs takes effect on the next connection. A new
CRL must be signed by the CA and must not be older (lower cRLNumber) than the one held:
otherwise ``verify`` fails closed with ``FederationError`` rather than trust anyone on a
list that may have been rolled back.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime
from pathlib import Path

from cryptography import x509

from meshpacs.durable import read_bounded
from meshpacs.errors import FederationError, NotAMember
from meshpacs.federation.certs import (
    MAX_CERT_BYTES,
    MAX_CRL_BYTES,
    Member,
    certificate_fingerprint,
    check_node_certificate,
    crl_number,
    load_certificate,
    load_crl,
)

__all__ = ["Federation"]

_FileStamp = tuple[int, int, int, int]  # device, inode, size, mtime in ns


class Federation:
    """A federation's CA certificate and revocation list; ``verify`` tells members apart."""

    def __init__(
        self,
        ca_cert: x509.Certificate,
        crl: x509.CertificateRevocationList,
        crl_path: Path | None = None,
    ) -> None:
        constraints = _basic_constraints(ca_cert)
        if constraints is None or not constraints.ca:
            raise FederationError("the federation CA certificate is not a CA certificate")
        self._ca = ca_cert
        self._crl = crl
        self._crl_path = crl_path
        self._crl_stamp: _FileStamp | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_pem(cls, ca_pem: bytes, crl_pem: bytes) -> Federation:
        """A federation from the CA certificate and CRL as bytes (PEM or DER); never reloads."""
        ca_cert = load_certificate(ca_pem, "federation CA certificate")
        return cls(ca_cert, load_crl(crl_pem, ca_cert))

    @classmethod
    def load(cls, ca_path: Path, crl_path: Path) -> Federation:
        """A federation from its files; the CRL file is read again whenever it changes."""
        ca_pem = read_bounded(ca_path, MAX_CERT_BYTES, "federation CA certificate", FederationError)
        ca_cert = load_certificate(ca_pem, f"federation CA certificate {ca_path}")
        stamp = _stamp(crl_path)
        crl = _read_crl(crl_path, ca_cert)
        federation = cls(ca_cert, crl, crl_path)
        federation._crl_stamp = stamp
        return federation

    @property
    def ca_certificate(self) -> x509.Certificate:
        return self._ca

    @property
    def ca_fingerprint(self) -> str:
        """SHA-256 (hex) of the CA certificate: what administrators compare out of band."""
        return certificate_fingerprint(self._ca)

    @property
    def crl(self) -> x509.CertificateRevocationList:
        """The current revocation list (read again first if its file changed)."""
        self._refresh()
        return self._crl

    @property
    def crl_next_update(self) -> datetime:
        """When the current CRL goes stale; after that every ``verify`` fails."""
        next_update = self.crl.next_update_utc
        assert next_update is not None  # load_crl refuses a CRL without one
        return next_update

    def verify(self, cert_der: bytes, now: datetime | float | None = None) -> Member:
        """The member ``cert_der`` (DER or PEM) certifies, or ``NotAMember`` saying why not.

        ``now`` (default: the current time) is a datetime or POSIX seconds.

        ``FederationError`` (not ``NotAMember``) means the federation's own files are
        unusable: an expired CA, a stale, forged or rolled-back CRL.
        """
        if len(cert_der) > MAX_CERT_BYTES:
            raise NotAMember(f"certificate is over {MAX_CERT_BYTES} bytes")
        try:
            cert = load_certificate(cert_der)
        except FederationError as exc:
            raise NotAMember(str(exc)) from None
        self._refresh()
        return check_node_certificate(cert, self._ca, self._crl, now)

    def _refresh(self) -> None:
        if self._crl_path is None:
            return
        with self._lock:
            stamp = _stamp(self._crl_path)
            if stamp == self._crl_stamp:
                return
            crl = _read_crl(self._crl_path, self._ca)
            if crl_number(crl) < crl_number(self._crl):
                raise FederationError(
                    f"revocation list {self._crl_path} (number {crl_number(crl)}) is older than"
                    f" the one this node already read (number {crl_number(self._crl)});"
                    " install the newest one from the federation administrator"
                )
            self._crl = crl
            self._crl_stamp = stamp

    def __repr__(self) -> str:
        return f"Federation(ca={self.ca_fingerprint[:16]}, crl_number={crl_number(self._crl)})"


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _stamp(path: Path) -> _FileStamp:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FederationError(f"revocation list {path} does not exist") from None
    except OSError as exc:
        raise FederationError(f"cannot read revocation list {path}: {exc.strerror}") from None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _read_crl(path: Path, ca_cert: x509.Certificate) -> x509.CertificateRevocationList:
    data = read_bounded(path, MAX_CRL_BYTES, "revocation list", FederationError)
    try:
        return load_crl(data, ca_cert)
    except FederationError as exc:
        raise FederationError(f"{path}: {exc}") from None
