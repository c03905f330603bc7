"""A site's copy of its federation: where the files live, and installing them safely.

::

    <site data dir>/federation/
    ├── ca.pem      the federation CA certificate (the only trust anchor for peers)
    ├── node.pem    this node's certificate, issued by that CA for this site's identity key
    └── crl.pem     the latest revocation list from the federation administrator

None of these is secret: the node's private key is never written here, it is derived from
the site secret whenever it is needed (``NodeIdentity``). ``install_federation_files``
checks everything before writing anything: the certificate must be issued by that CA, be
current and unrevoked, name this site, and hold this site's identity key; a CRL must be
the CA's, and not older than the one installed. Each file is replaced atomically. A
running node picks up a new CRL or node certificate on its next connection; a new CA (the
site moved to another federation) takes effect when the node restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from meshpacs.durable import read_bounded, write_atomic
from meshpacs.errors import FederationError
from meshpacs.federation.ca import FederationCA
from meshpacs.federation.certs import (
    MAX_CERT_BYTES,
    MAX_CRL_BYTES,
    NODE_DAYS,
    Member,
    check_node_certificate,
    crl_number,
    load_certificate,
    load_crl,
    make_csr,
    pem,
)
from meshpacs.federation.membership import Federation
from meshpacs.keys.identity import NodeIdentity

__all__ = [
    "FEDERATION_DIR_NAME",
    "SiteFederationFiles",
    "enroll_site",
    "install_federation_files",
]

FEDERATION_DIR_NAME = "federation"
_DIR_MODE = 0o755
_FILE_MODE = 0o644


@dataclass(frozen=True)
class SiteFederationFiles:
    """The paths of a site's federation files, under ``directory``."""

    directory: Path

    @classmethod
    def for_site(cls, data_dir: Path) -> SiteFederationFiles:
        """The files of the site whose data directory (where ``site.key`` is) is ``data_dir``."""
        return cls(data_dir / FEDERATION_DIR_NAME)

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def node_cert(self) -> Path:
        return self.directory / "node.pem"

    @property
    def crl(self) -> Path:
        return self.directory / "crl.pem"

    def installed(self) -> bool:
        return self.ca.is_file() and self.node_cert.is_file() and self.crl.is_file()

    def federation(self) -> Federation:
        """The installed federation (its CRL read again whenever ``crl.pem`` changes)."""
        self._require_installed()
        return Federation.load(self.ca, self.crl)

    def node_certificate_pem(self) -> bytes:
        self._require_installed()
        return read_bounded(self.node_cert, MAX_CERT_BYTES, "node certificate", FederationError)

    def _require_installed(self) -> None:
        if not self.installed():
            raise FederationError(
                f"this site has not joined a federation: {self.directory} lacks ca.pem, node.pem"
                " or crl.pem; enroll it (meshpacs federation enroll, or request + sign +"
                " install)"
            )


def install_federation_files(
    files: SiteFederationFiles,
    identity: NodeIdentity,
    site_id: str,
    *,
    ca_pem: bytes | None = None,
    cert_pem: bytes | None = None,
    crl_pem: bytes | None = None,
    now: datetime | None = None,
) -> Member:
    """Check and install any of CA certificate, node certificate and CRL for this site.

    What is not given is taken from what is installed, and the whole set is checked as
    one: so ``crl_pem`` alone updates the revocation list of an enrolled site. Returns
    the site's ``Member`` as the installed files certify it. Raises ``FederationError``
    (nothing written) if the set does not fit together or is not this site's.
    """
    if ca_pem is None:
        ca_pem = _installed(files.ca, MAX_CERT_BYTES, "federation CA certificate")
    if cert_pem is None:
        cert_pem = _installed(files.node_cert, MAX_CERT_BYTES, "node certificate")
    ca_cert = load_certificate(ca_pem, "federation CA certificate")
    installed_ca = _installed(files.ca, MAX_CERT_BYTES, "CA") if files.ca.is_file() else None
    same_ca = installed_ca == pem(ca_cert)
    if crl_pem is None:
        if not same_ca:
            raise FederationError("a new federation CA needs its revocation list too (--crl)")
        crl_pem = _installed(files.crl, MAX_CRL_BYTES, "revocation list")
    crl = load_crl(crl_pem, ca_cert)
    if same_ca and files.crl.is_file():
        old = load_crl(_installed(files.crl, MAX_CRL_BYTES, "revocation list"), ca_cert)
        if crl_number(crl) < crl_number(old):
            raise FederationError(
                f"this revocation list (number {crl_number(crl)}) is older than the installed"
                f" one (number {crl_number(old)}); install the newest one"
            )
    cert = load_certificate(cert_pem, "node certificate")
    member = check_node_certificate(cert, ca_cert, crl, now)
    if member.site_id != site_id:
        raise FederationError(
            f"the node certificate is for site {member.site_id!r}, but this site is {site_id!r}"
        )
    if member.public_key != identity.public_key_bytes:
        raise FederationError(
            "the node certificate holds another key than this site's identity key; it was"
            " issued for another request, or this site's secret has changed since"
        )
    try:
        files.directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        write_atomic(files.ca, pem(ca_cert), _FILE_MODE)
        write_atomic(files.node_cert, pem(cert), _FILE_MODE)
        write_atomic(files.crl, pem(crl), _FILE_MODE)
    except OSError as exc:
        raise FederationError(
            f"cannot install the federation files in {files.directory}: {exc.strerror or exc}"
        ) from None
    return member


def enroll_site(
    ca: FederationCA,
    files: SiteFederationFiles,
    identity: NodeIdentity,
    site_id: str,
    *,
    days: int = NODE_DAYS,
    replace: bool = False,
    now: datetime | None = None,
) -> Member:
    """Request, sign and install in one step, when the CA and the site share a machine."""
    issued = ca.sign_csr(make_csr(identity, site_id), days=days, replace=replace, now=now)
    return install_federation_files(
        files,
        identity,
        site_id,
        ca_pem=ca.certificate_pem(),
        cert_pem=issued.pem,
        crl_pem=ca.crl_pem(),
        now=now,
    )


def _installed(path: Path, limit: int, what: str) -> bytes:
    if not path.is_file():
        raise FederationError(f"no {what} is installed at {path} yet; install one first")
    return read_bounded(path, limit, what, FederationError)
