"""Mutual TLS between nodes, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from meshpacs.errors import FederationError, NotAMember
from meshpacs.federation import (
    FederationCA,
    MutualTls,
    client_context,
    install_federation_files,
    make_csr,
    peer_member,
    server_context,
)

from .helpers import Site, handcrafted_cert, handshake, raw_context


def test_two_members_each_learn_the_others_site_id_from_its_certificate(
    site: Callable[..., Site],
) -> None:
    a = site("st-a", seed=1)
    b = site("st-b", seed=2)
    outcome = handshake(
        server_context(a.identity, a.files),
        client_context(b.identity, b.files),
        a.federation(),
        b.federation(),
        expected_site_id="st-a",
    )
    assert outcome.ok, outcome
    assert outcome.server_peer == "st-b" and outcome.client_peer == "st-a"
    assert outcome.version == "TLSv1.3"


async def test_asyncio_streams_carry_mutual_tls(site: Callable[..., Site]) -> None:
    a = site("st-a", seed=1)
    b = site("st-b", seed=2)
    a_tls, b_tls = MutualTls(a.identity, a.files), MutualTls(b.identity, b.files)
    learned: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        member = a_tls.peer_member(writer.get_extra_info("ssl_object"))
        learned.append(member.site_id)
        writer.write(member.node_id)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=a_tls.server_context())
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=b_tls.client_context()), 5
        )
        member = b_tls.peer_member(writer.get_extra_info("ssl_object"), "st-a")
        node_id = await asyncio.wait_for(reader.readexactly(20), 5)
        writer.close()
        await writer.wait_closed()
    assert member.site_id == "st-a" and member.public_key == a.identity.public_key_bytes
    assert learned == ["st-b"]
    assert node_id == b.identity.node_id


def test_a_client_from_another_ca_is_refused_at_the_handshake(
    site: Callable[..., Site], other_ca: FederationCA, tmp_path: Path
) -> None:
    a = site("st-a", seed=1)
    rogue = site("st-r", seed=3, authority=other_ca)
    # The rogue trusts our CA, so the only refusal left to see is our server's.
    client = raw_context(
        tmp_path / "raw",
        server_side=False,
        ca_file=a.files.ca,
        identity=rogue.identity,
        cert_pem=rogue.files.node_certificate_pem(),
    )
    outcome = handshake(server_context(a.identity, a.files), client, a.federation(), None)
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert "unable to get local issuer certificate" in str(outcome.server_error)
    assert outcome.client_error is not None
    assert outcome.server_peer is None


def test_a_server_from_another_ca_is_refused_at_the_handshake(
    site: Callable[..., Site], other_ca: FederationCA, tmp_path: Path
) -> None:
    a = site("st-a", seed=1)
    rogue = site("st-r", seed=3, authority=other_ca)
    server = raw_context(
        tmp_path / "raw",
        server_side=True,
        ca_file=a.files.ca,
        identity=rogue.identity,
        cert_pem=rogue.files.node_certificate_pem(),
    )
    outcome = handshake(server, client_context(a.identity, a.files), None, a.federation())
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert "unable to get local issuer certificate" in str(outcome.client_error)
    assert isinstance(outcome.server_error, ssl.SSLError)  # the client's alert
    assert outcome.client_peer is None


def test_members_of_two_federations_cannot_talk_either_way(
    site: Callable[..., Site], other_ca: FederationCA
) -> None:
    a = site("st-a", seed=1)
    rogue = site("st-r", seed=3, authority=other_ca)
    for server, client in ((a, rogue), (rogue, a)):
        outcome = handshake(
            server_context(server.identity, server.files),
            client_context(client.identity, client.files),
            server.federation(),
            client.federation(),
        )
        assert outcome.server_peer is None and outcome.client_peer is None
        assert outcome.server_error is not None and outcome.client_error is not None


def test_a_revoked_client_is_refused_by_a_running_server_once_the_crl_is_installed(
    ca: FederationCA, site: Callable[..., Site]
) -> None:
    a = site("st-a", seed=1)
    b = site("st-b", seed=2)
    a_tls, b_tls = MutualTls(a.identity, a.files), MutualTls(b.identity, b.files)
    server = a_tls.server_context()  # one context for the server's whole life
    assert handshake(server, b_tls.client_context(), a_tls.federation, b_tls.federation).ok

    ca.revoke(site_id="st-b")
    install_federation_files(a.files, a.identity, "st-a", crl_pem=ca.crl_pem())

    outcome = handshake(server, b_tls.client_context(), a_tls.federation, None)
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert "certificate revoked" in str(outcome.server_error)  # OpenSSL's CRL check
    assert outcome.client_error is not None
    assert a_tls.server_context() is server


def test_a_revoked_server_is_refused_by_a_client(
    ca: FederationCA, site: Callable[..., Site]
) -> None:
    a = site("st-a", seed=1)
    b = site("st-b", seed=2)
    b_tls = MutualTls(b.identity, b.files)
    a_server = server_context(a.identity, a.files)
    ca.revoke(site_id="st-a")
    install_federation_files(b.files, b.identity, "st-b", crl_pem=ca.crl_pem())
    outcome = handshake(a_server, b_tls.client_context(), None, b_tls.federation)
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert "certificate revoked" in str(outcome.client_error)


def test_peer_member_refuses_a_peer_revoked_after_the_context_was_built(
    ca: FederationCA, site: Callable[..., Site]
) -> None:
    a = site("st-a", seed=1)
    b = site("st-b", seed=2)
    stale_server = server_context(a.identity, a.files)  # holds the CRL from before
    federation = a.federation()
    ca.revoke(site_id="st-b")
    shutil.copyfile(ca.crl_path, a.files.crl)
    outcome = handshake(stale_server, client_context(b.identity, b.files), federation, None)
    assert isinstance(outcome.server_error, NotAMember)
    assert "revoked" in str(outcome.server_error)
    assert outcome.client_error is not None  # never greeted


def test_an_expired_certificate_is_refused(
    ca: FederationCA, site: Callable[..., Site], tmp_path: Path
) -> None:
    a = site("st-a", seed=1)
    b = site("st-b", seed=2)
    past = datetime.now(UTC) - timedelta(days=10)
    expired = ca.sign_csr(make_csr(b.identity, "st-b"), days=1, now=past)
    client = raw_context(
        tmp_path / "raw",
        server_side=False,
        ca_file=a.files.ca,
        identity=b.identity,
        cert_pem=expired.pem,
    )
    outcome = handshake(server_context(a.identity, a.files), client, a.federation(), None)
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert "certificate has expired" in str(outcome.server_error)
    assert outcome.client_error is not None


def test_a_certificate_whose_names_disagree_passes_openssl_but_not_peer_member(
    ca: FederationCA, site: Callable[..., Site], tmp_path: Path
) -> None:
    a = site("st-a", seed=1)
    b = site("st-b", seed=2)
    forged = handcrafted_cert(ca, b.identity, common_name="st-b", uri="urn:meshpacs:site:st-a")
    client = raw_context(
        tmp_path / "raw",
        server_side=False,
        ca_file=a.files.ca,
        identity=b.identity,
        cert_pem=forged.public_bytes(Encoding.PEM),
    )
    outcome = handshake(server_context(a.identity, a.files), client, a.federation(), None)
    assert isinstance(outcome.server_error, NotAMember)
    assert "disagree" in str(outcome.server_error)
    assert outcome.client_error is not None


def test_a_client_without_a_certificate_is_refused(
    site: Callable[..., Site], tmp_path: Path
) -> None:
    a = site("st-a", seed=1)
    anonymous = raw_context(tmp_path / "raw", server_side=False, ca_file=a.files.ca)
    outcome = handshake(server_context(a.identity, a.files), anonymous, a.federation(), None)
    assert isinstance(outcome.server_error, ssl.SSLError)
    assert "certificate" in str(outcome.server_error)
    assert outcome.client_error is not None


def test_tls_1_2_is_refused(site: Callable[..., Site], tmp_path: Path) -> None:
    a = site("st-a", seed=1)
    b = site("st-b", seed=2)
    old = raw_context(
        tmp_path / "raw",
        server_side=False,
        ca_file=a.files.ca,
        identity=b.identity,
        cert_pem=b.files.node_certificate_pem(),
        maximum_version=ssl.TLSVersion.TLSv1_2,
    )
    outcome = handshake(server_context(a.identity, a.files), old, a.federation(), None)
    assert isinstance(outcome.server_error, ssl.SSLError)
    assert isinstance(outcome.client_error, ssl.SSLError)


def test_a_client_reaching_the_wrong_site_is_told(site: Callable[..., Site]) -> None:
    a = site("st-a", seed=1)
    b = site("st-b", seed=2)
    outcome = handshake(
        server_context(a.identity, a.files),
        client_context(b.identity, b.files),
        a.federation(),
        b.federation(),
        expected_site_id="st-c",
    )
    assert isinstance(outcome.client_error, NotAMember)
    assert "for site 'st-a', not 'st-c'" in str(outcome.client_error)


def test_a_node_refuses_to_start_tls_with_its_own_revoked_certificate(
    ca: FederationCA, site: Callable[..., Site]
) -> None:
    a = site("st-a", seed=1)
    ca.revoke(site_id="st-a")
    shutil.copyfile(ca.crl_path, a.files.crl)
    with pytest.raises(FederationError, match=r"own certificate is unusable.*revoked"):
        server_context(a.identity, a.files)


def test_a_node_refuses_a_certificate_for_another_key(
    ca: FederationCA, site: Callable[..., Site]
) -> None:
    a = site("st-a", seed=1)
    b = site("st-b", seed=2)
    with pytest.raises(FederationError, match="another key"):
        client_context(b.identity, a.files)


def test_peer_member_needs_a_peer_certificate(site: Callable[..., Site]) -> None:
    class NoCertificate:
        def getpeercert(self, binary_form: bool = False) -> None:
            return None

    a = site("st-a", seed=1)
    with pytest.raises(NotAMember, match="no certificate"):
        peer_member(NoCertificate(), a.federation())  # type: ignore[arg-type]


def test_the_private_key_is_not_left_in_the_site_files(site: Callable[..., Site]) -> None:
    a = site("st-a", seed=1)
    MutualTls(a.identity, a.files)
    assert sorted(p.name for p in a.files.directory.iterdir()) == ["ca.pem", "crl.pem", "node.pem"]
    for path in a.files.directory.iterdir():
        assert b"PRIVATE KEY" not in path.read_bytes()
