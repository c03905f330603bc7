"""Mutual TLS between federation nodes.

Every node-to-node channel is TLS 1.3 (no older version: both ends are meshpacs) with a
certificate on *both* sides, verified against the federation CA only, never the system's
web roots, with the CA's revocation list checked by OpenSSL during the handshake
(``VERIFY_CRL_CHECK_LEAF``, strict X.509 checks). Host names are not checked: peers are
found through the DHT by site ID, not DNS. Instead, after the handshake,
``peer_member`` re-verifies the peer's certificate with ``Federation.verify``: so the
peer's site ID is read from a certificate our CA signed (never from what it says on the
wire), and a CRL installed after the context was built still counts. Session tickets
are off, so a revoked peer cannot resume a session opened before its revocation.

The node's private key is never written to disk. Python's ``ssl`` can only load a key
from a file, so ``_key_file`` writes it, PKCS#8-encrypted under a random one-time
password kept only in memory, to an anonymous in-memory file (``memfd_create``, reached
through ``/proc/self/fd``); where that does not exist, to a 0600 file in a fresh 0700
temporary directory, removed as soon as OpenSSL has read it. Either way the bytes that
touch a file system are useless without the password.

``MutualTls`` keeps contexts in step with the site's federation files: its server
context is one object for the server's lifetime, yet each new connection is switched (in
the SNI callback, which OpenSSL calls for every ClientHello) to a context built from the
current ``crl.pem`` and ``node.pem``, so a revocation refuses the peer at the handshake.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from meshpacs.errors import FederationError, NotAMember
from meshpacs.federation.certs import Member
from meshpacs.federation.membership import Federation
from meshpacs.federation.sitefiles import SiteFederationFiles
from meshpacs.keys.identity import NodeIdentity

__all__ = [
    "MutualTls",
    "client_context",
    "peer_member",
    "server_context",
]

_FileStamps = tuple[tuple[int, int, int, int], ...]


def server_context(identity: NodeIdentity, files: SiteFederationFiles) -> ssl.SSLContext:
    """A context for accepting federation peers: client certificate required."""
    context = _context(identity, files, server_side=True)
    # No resumption: every connection presents and verifies a certificate against the CRL.
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    return context


def client_context(identity: NodeIdentity, files: SiteFederationFiles) -> ssl.SSLContext:
    """A context for connecting to a federation peer (pass ``server_hostname=None``)."""
    return _context(identity, files, server_side=False)


def peer_member(
    ssl_object: ssl.SSLObject | ssl.SSLSocket,
    federation: Federation,
    expected_site_id: str | None = None,
) -> Member:
    """The federation member at the other end of a completed handshake.

    ``ssl_object`` is an ``SSLSocket``, or an asyncio stream's
    ``writer.get_extra_info("ssl_object")``. Raises ``NotAMember`` if the peer sent no
    certificate, if ``federation`` does not accept it now, or if it is not
    ``expected_site_id`` (the site a client meant to reach).
    """
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise NotAMember("the peer presented no certificate")
    member = federation.verify(der)
    if expected_site_id is not None and member.site_id != expected_site_id:
        raise NotAMember(
            f"the peer's certificate is for site {member.site_id!r}, not {expected_site_id!r}"
        )
    return member


class MutualTls:
    """A site's TLS contexts and federation, kept in step with its federation files."""

    def __init__(self, identity: NodeIdentity, files: SiteFederationFiles) -> None:
        self._identity = identity
        self._files = files
        self._lock = threading.Lock()
        self.federation = files.federation()
        self._stamps = _stamps(files)
        self._server = server_context(identity, files)
        self._client = client_context(identity, files)
        self._front = server_context(identity, files)
        self._front.sni_callback = self._switch_to_current

    def server_context(self) -> ssl.SSLContext:
        """The context to serve with; each connection uses the files current when it opens."""
        return self._front

    def client_context(self) -> ssl.SSLContext:
        """A context built from the current files, for a new outgoing connection."""
        self._refresh()
        return self._client

    def peer_member(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, expected_site_id: str | None = None
    ) -> Member:
        return peer_member(ssl_object, self.federation, expected_site_id)

    def _switch_to_current(
        self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        # On broken files keep serving with the last good ones: peer_member's
        # Federation.verify still fails closed on a broken CRL.
        with contextlib.suppress(FederationError):
            self._refresh()
        ssl_object.context = self._server

    def _refresh(self) -> None:
        with self._lock:
            stamps = _stamps(self._files)
            if stamps == self._stamps:
                return
            server = server_context(self._identity, self._files)
            client = client_context(self._identity, self._files)
            self._server, self._client, self._stamps = server, client, stamps

    def __repr__(self) -> str:
        return f"MutualTls({self._identity!r}, {str(self._files.directory)!r})"


def _context(
    identity: NodeIdentity, files: SiteFederationFiles, *, server_side: bool
) -> ssl.SSLContext:
    _check_own_certificate(identity, files)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # peers are named by the site ID in their certificate
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF | ssl.VERIFY_X509_STRICT
    context.options |= ssl.OP_NO_COMPRESSION
    try:
        # Only the federation CA: an SSLContext built this way holds no system roots.
        context.load_verify_locations(cafile=str(files.ca))
        context.load_verify_locations(cafile=str(files.crl))
        _load_identity(context, identity, files.node_cert)
    except (ssl.SSLError, OSError) as exc:
        raise FederationError(f"cannot set up TLS from {files.directory}: {exc}") from None
    return context


def _check_own_certificate(identity: NodeIdentity, files: SiteFederationFiles) -> None:
    """Refuse to start TLS with a certificate our own federation would refuse."""
    try:
        member = files.federation().verify(files.node_certificate_pem())
    except NotAMember as exc:
        raise FederationError(f"this node's own certificate is unusable: {exc}") from None
    if member.public_key != identity.public_key_bytes:
        raise FederationError(
            f"{files.node_cert} holds another key than this site's identity key;"
            " enroll the site again"
        )


def _load_identity(context: ssl.SSLContext, identity: NodeIdentity, cert_path: Path) -> None:
    password = secrets.token_hex(32)
    key_pem = identity.signing_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password.encode("ascii")),
    )
    with _key_file(key_pem) as key_path:
        context.load_cert_chain(str(cert_path), key_path, password=password)


@contextlib.contextmanager
def _key_file(data: bytes) -> Iterator[str]:
    """A path OpenSSL can read ``data`` from, gone when the block ends."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd = memfd_create("meshpacs-node-key", os.MFD_CLOEXEC)
        try:
            _write_all(fd, data)
            path = f"/proc/self/fd/{fd}"
            if os.path.exists(path):
                yield path
                return
        finally:
            os.close(fd)
    with tempfile.TemporaryDirectory(prefix="meshpacs-tls-") as directory:  # mode 0700
        path = os.path.join(directory, "node.key")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        yield path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _stamps(files: SiteFederationFiles) -> _FileStamps:
    found = []
    for path in (files.ca, files.node_cert, files.crl):
        try:
            info = os.stat(path)
        except OSError:
            found.append((0, 0, 0, 0))
        else:
            found.append((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(found)
