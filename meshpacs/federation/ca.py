"""The federation CA's directory, kept by the federation's administrator.

::

    DIR/                    mode 0700
    ├── ca.key              the CA's Ed25519 private key, PKCS#8 PEM, mode 0600, created once
    ├── ca.pem              the CA certificate: every site installs it
    ├── crl.pem             the current revocation list: every site installs each new one
    └── issued/
        └── <serial>.pem    every node certificate issued, named by its serial in hex

The CRL is the CA's only mutable state: which serials are revoked, and the number of the
next CRL, are read back from ``crl.pem``. It starts empty at ``create``, and each
revocation writes a new one (higher number, fresh next-update) atomically: temporary
file, fsync, rename. ``issued/`` answers "which certificates does this site hold".
Changes (sign, revoke, new CRL) hold an exclusive ``flock`` on DIR, so two
administrators' commands cannot interleave.

The CA refuses to sign a request whose signature fails or whose key is not Ed25519, and a
request for a site ID that already holds a live certificate for a different key (two
nodes claiming one site) unless told ``replace=True``, in which case the old certificates
are revoked in the same step.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshpacs.durable import (
    fsync_dir,
    read_bounded,
    read_private,
    remove_created,
    require_new_or_empty,
    write_atomic,
    write_new,
)
from meshpacs.errors import ConfigError, FederationError
from meshpacs.federation.certs import (
    CA_DAYS,
    CRL_DAYS,
    MAX_CERT_BYTES,
    MAX_CRL_BYTES,
    NODE_DAYS,
    Revocation,
    build_ca_certificate,
    build_crl,
    build_node_certificate,
    certificate_fingerprint,
    certificate_public_key,
    common_name,
    crl_number,
    load_certificate,
    load_crl,
    new_serial,
    parse_csr,
    pem,
    raw_public_key,
)
from meshpacs.federation.names import validate_federation_name, validate_site_id

_NEW_DIRECTORY = (
    "a federation CA is created only in a new or empty directory, so that an existing CA key"
    " is never overwritten"
)

__all__ = [
    "CA_CERT_NAME",
    "CA_KEY_NAME",
    "CRL_NAME",
    "ISSUED_DIR_NAME",
    "FederationCA",
    "IssuedCertificate",
    "create_federation_ca",
    "parse_serial",
]

CA_KEY_NAME = "ca.key"
CA_CERT_NAME = "ca.pem"
CRL_NAME = "crl.pem"
ISSUED_DIR_NAME = "issued"

_KEY_MODE = 0o600
_DIR_MODE = 0o700
_PUBLIC_MODE = 0o644
_MAX_KEY_BYTES = 4096
_MAX_SERIAL_HEX = 40  # RFC 5280: at most 20 octets


@dataclass(frozen=True)
class IssuedCertificate:
    """A node certificate the CA issued, as kept in ``issued/``."""

    site_id: str
    serial: int
    public_key: bytes
    not_after: datetime
    fingerprint: str
    pem: bytes


def parse_serial(text: str) -> int:
    """A serial number typed by an administrator: hex, with or without ``0x`` or colons."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    if (
        not cleaned
        or len(cleaned) > _MAX_SERIAL_HEX
        or any(c not in "0123456789abcdef" for c in cleaned)
    ):
        raise FederationError(f"serial {text[:60]!r} is not a hexadecimal certificate serial")
    return int(cleaned, 16)


def create_federation_ca(
    directory: Path, name: str, *, days: int = CA_DAYS, crl_days: int = CRL_DAYS
) -> FederationCA:
    """Create a new federation CA in ``directory``, which must not exist or be empty.

    Generates the CA key (from ``secrets``), writes ``ca.key`` (0600, exclusively),
    ``ca.pem``, an empty ``crl.pem`` and ``issued/``. On failure, removes what it wrote.
    """
    validate_federation_name(name)
    directory = directory.absolute()
    require_new_or_empty(directory, _NEW_DIRECTORY)
    key = Ed25519PrivateKey.from_private_bytes(secrets.token_bytes(32))
    ca_cert = build_ca_certificate(key, name, days=days)
    crl = build_crl(key, ca_cert, [], number=1, days=crl_days)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    created: list[Path] = []
    try:
        if not directory.exists():
            directory.mkdir(mode=_DIR_MODE, parents=True)
            created.append(directory)
        write_new(directory / CA_KEY_NAME, key_pem, _KEY_MODE)
        created.append(directory / CA_KEY_NAME)
        (directory / ISSUED_DIR_NAME).mkdir(mode=_DIR_MODE)
        created.append(directory / ISSUED_DIR_NAME)
        write_new(directory / CRL_NAME, pem(crl), _PUBLIC_MODE)
        created.append(directory / CRL_NAME)
        write_new(directory / CA_CERT_NAME, pem(ca_cert), _PUBLIC_MODE)  # last: marks complete
        created.append(directory / CA_CERT_NAME)
        fsync_dir(directory)
    except OSError as exc:
        remove_created(created)
        raise ConfigError(
            f"cannot create the federation CA in {directory}: {exc.strerror or exc}"
        ) from None
    return FederationCA(directory)


class FederationCA:
    """An existing federation CA directory. Opening it checks that its files fit together."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.absolute()
        cert_pem = read_bounded(
            self.cert_path, MAX_CERT_BYTES, "federation CA certificate", FederationError
        )
        self.certificate = load_certificate(cert_pem, f"federation CA certificate {self.cert_path}")
        self._key = self._load_key()
        self.crl()  # refuse a directory whose CRL is missing or not from this CA

    # -- paths and reads ------------------------------------------------------------------

    @property
    def key_path(self) -> Path:
        return self.directory / CA_KEY_NAME

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT_NAME

    @property
    def crl_path(self) -> Path:
        return self.directory / CRL_NAME

    @property
    def issued_dir(self) -> Path:
        return self.directory / ISSUED_DIR_NAME

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the CA certificate, for sites to compare out of band."""
        return certificate_fingerprint(self.certificate)

    @property
    def name(self) -> str:
        return common_name(self.certificate)

    def certificate_pem(self) -> bytes:
        return pem(self.certificate)

    def crl(self) -> x509.CertificateRevocationList:
        return load_crl(
            read_bounded(self.crl_path, MAX_CRL_BYTES, "revocation list", FederationError),
            self.certificate,
        )

    def crl_pem(self) -> bytes:
        return pem(self.crl())

    def issued(self) -> list[IssuedCertificate]:
        """Every certificate in ``issued/``, oldest expiry first."""
        found = []
        for path in sorted(self.issued_dir.glob("*.pem")):
            cert = load_certificate(
                read_bounded(path, MAX_CERT_BYTES, "issued certificate", FederationError)
            )
            found.append(_issued(cert))
        return sorted(found, key=lambda item: (item.not_after, item.serial))

    def live(self, site_id: str, now: datetime | None = None) -> list[IssuedCertificate]:
        """The site's certificates that are neither revoked nor expired at ``now``."""
        now = datetime.now(UTC) if now is None else now
        crl = self.crl()
        return [
            item
            for item in self.issued()
            if item.site_id == site_id
            and item.not_after >= now
            and crl.get_revoked_certificate_by_serial_number(item.serial) is None
        ]

    # -- changes --------------------------------------------------------------------------

    def sign_csr(
        self,
        csr: bytes,
        *,
        days: int = NODE_DAYS,
        replace: bool = False,
        now: datetime | None = None,
    ) -> IssuedCertificate:
        """Issue a node certificate for a checked request (see ``certs.parse_csr``).

        If the site already holds a live certificate for a different key, refuses with
        ``FederationError`` unless ``replace``, which revokes those certificates. A request
        for the key the site already holds is a renewal and needs no ``replace``.
        """
        site_id, public_key = parse_csr(csr)
        with self._locked():
            others = [c for c in self.live(site_id, now) if c.public_key != public_key]
            if others and not replace:
                raise FederationError(
                    f"site {site_id!r} already holds a live certificate for another key"
                    f" (serial {others[0].serial:x}); if that site was rebuilt with a new"
                    " secret, sign again with replace (--replace), which revokes the old one"
                )
            cert = build_node_certificate(
                self._key,
                self.certificate,
                site_id,
                public_key,
                serial=self._unused_serial(),
                now=now,
                days=days,
            )
            write_new(self._issued_path(cert.serial_number), pem(cert), _PUBLIC_MODE)
            fsync_dir(self.issued_dir)
            if others:
                self._publish([c.serial for c in others], now=now)
        return _issued(cert)

    def revoke(
        self,
        *,
        site_id: str | None = None,
        serial: int | None = None,
        now: datetime | None = None,
        crl_days: int = CRL_DAYS,
    ) -> list[int]:
        """Revoke one certificate by serial, or every live one of a site; returns the serials.

        Writes the new CRL before returning. Refuses an unknown or already revoked serial,
        and a site ID with no live certificate, so a typo is never a silent no-op.
        """
        if (site_id is None) == (serial is None):
            raise FederationError("revoke one site ID or one serial")
        with self._locked():
            if site_id is not None:
                serials = [c.serial for c in self.live(validate_site_id(site_id), now)]
                if not serials:
                    raise FederationError(f"site {site_id!r} holds no live certificate")
            else:
                assert serial is not None
                if not self._issued_path(serial).exists():
                    raise FederationError(f"this CA issued no certificate with serial {serial:x}")
                if self.crl().get_revoked_certificate_by_serial_number(serial) is not None:
                    raise FederationError(f"certificate {serial:x} is already revoked")
                serials = [serial]
            self._publish(serials, now=now, days=crl_days)
        return serials

    def publish_crl(
        self, *, now: datetime | None = None, days: int = CRL_DAYS
    ) -> x509.CertificateRevocationList:
        """Issue the CRL again with a fresh next-update (before the current one goes stale)."""
        with self._locked():
            return self._publish([], now=now, days=days)

    # -- internals ------------------------------------------------------------------------

    def _publish(
        self, serials: list[int], *, now: datetime | None, days: int = CRL_DAYS
    ) -> x509.CertificateRevocationList:
        current = self.crl()
        revoked_at = datetime.now(UTC) if now is None else now
        entries = [Revocation(r.serial_number, r.revocation_date_utc) for r in current]
        entries += [Revocation(s, revoked_at) for s in serials]
        crl = build_crl(
            self._key,
            self.certificate,
            entries,
            number=crl_number(current) + 1,
            now=now,
            days=days,
        )
        write_atomic(self.crl_path, pem(crl), _PUBLIC_MODE)
        return crl

    def _unused_serial(self) -> int:
        while True:  # 127 random bits: a collision is never expected, but costs nothing to rule out
            serial = new_serial()
            if not self._issued_path(serial).exists():
                return serial

    def _issued_path(self, serial: int) -> Path:
        return self.issued_dir / f"{serial:x}.pem"

    def _load_key(self) -> Ed25519PrivateKey:
        data = read_private(self.key_path, _MAX_KEY_BYTES, "federation CA key file")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise FederationError(
                f"{self.key_path} is not an unencrypted PEM private key"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise FederationError(f"{self.key_path} is not an Ed25519 key")
        if raw_public_key(key.public_key()) != certificate_public_key(self.certificate):
            raise FederationError(f"{self.key_path} does not belong to {self.cert_path}")
        return key

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        except OSError as exc:
            raise FederationError(
                f"cannot update the federation CA in {self.directory}: {exc.strerror or exc}"
            ) from None
        finally:
            os.close(fd)  # closing releases the lock

    def __repr__(self) -> str:
        return f"FederationCA({str(self.directory)!r}, <key redacted>)"


def _issued(cert: x509.Certificate) -> IssuedCertificate:
    return IssuedCertificate(
        site_id=common_name(cert),
        serial=cert.serial_number,
        public_key=certificate_public_key(cert),
        not_after=cert.not_valid_after_utc,
        fingerprint=certificate_fingerprint(cert),
        pem=pem(cert),
    )
