"""The fragment server tells ``on_refused`` of every peer refused for its certificate:
a stranger's CA, a revoked member, no TLS at all; over real mutual TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshpacs.errors import NotAMember, PeerRefused, PeerUnreachable
from meshpacs.federation import FederationCA, MutualTls, create_federation_ca
from meshpacs.federation.certs import Member
from meshpacs.store import FragmentStore, QuotaPolicy
from meshpacs.store.records import HeldRecords
from meshpacs.transport.client import PartnerConnection
from meshpacs.transport.server import FragmentServer, RefusedPeer

from ..federation.helpers import make_site


@dataclass
class Holder:
    port: int
    refused: list[RefusedPeer]
    root: Path


def _tls(ca: FederationCA, root: Path, site_id: str, seed: int) -> MutualTls:
    site = make_site(ca, root, site_id, seed)
    return MutualTls(site.identity, site.files)


@pytest.fixture
def ca(tmp_path: Path) -> FederationCA:
    return create_federation_ca(tmp_path / "ca", "Test Mesh")


@pytest.fixture
async def holder(ca: FederationCA, tmp_path: Path) -> AsyncIterator[Holder]:
    tls = _tls(ca, tmp_path / "sites", "holder", 1)
    store = FragmentStore(tmp_path / "fragments", QuotaPolicy(10**8))
    refused: list[RefusedPeer] = []
    server = FragmentServer(
        store,
        HeldRecords(tmp_path / "records"),
        tls.server_context(),
        tls.peer_member,
        on_refused=refused.append,
    )
    _, port = await server.start("127.0.0.1", 0)
    yield Holder(port, refused, tmp_path)
    await server.close()
    store.close()


async def _ping(tls: MutualTls, holder: Holder) -> None:
    conn = await PartnerConnection.open(
        "holder", "127.0.0.1", holder.port, tls.client_context(), tls.peer_member, timeout=5
    )
    async with conn:
        await conn.ping()


async def _told(holder: Holder, count: int) -> list[RefusedPeer]:
    for _ in range(200):
        if len(holder.refused) >= count:
            break
        await asyncio.sleep(0.02)
    return holder.refused


async def test_a_member_is_served_and_not_reported(ca: FederationCA, holder: Holder) -> None:
    await _ping(_tls(ca, holder.root / "sites", "owner", 2), holder)
    await asyncio.sleep(0.1)
    assert holder.refused == []


async def test_a_certificate_from_another_ca_is_refused_at_the_handshake(
    holder: Holder, tmp_path: Path
) -> None:
    rogue_ca = create_federation_ca(tmp_path / "rogue-ca", "Rogue Mesh")
    rogue = _tls(rogue_ca, tmp_path / "rogue", "owner", 2)
    # One that does not check us (a rogue would not care) but presents its certificate;
    # a client that refuses us first is its own refusal, not ours.
    rogue.client_context().verify_mode = ssl.CERT_NONE
    with pytest.raises((PeerUnreachable, NotAMember, PeerRefused)):
        await _ping(rogue, holder)
    (refused,) = await _told(holder, 1)
    assert refused.address == "127.0.0.1"
    assert refused.reason.startswith("TLS handshake refused: ")
    assert refused.reason == "TLS handshake refused: self-signed certificate in certificate chain"
    assert refused.fingerprint == ""  # a certificate the handshake refused is not looked at


async def test_a_member_revoked_since_is_refused(ca: FederationCA, holder: Holder) -> None:
    revoked = _tls(ca, holder.root / "sites", "leaver", 7)
    await _ping(revoked, holder)
    ca.revoke(site_id="leaver")
    (holder.root / "sites" / "holder" / "federation" / "crl.pem").write_bytes(ca.crl_pem())
    with pytest.raises((PeerUnreachable, NotAMember, PeerRefused)):
        await _ping(revoked, holder)
    (refused,) = await _told(holder, 1)
    assert "revoked" in refused.reason


async def test_a_peer_speaking_no_tls_is_refused(holder: Holder) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", holder.port)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(reader.read(), 10)
    writer.close()
    (refused,) = await _told(holder, 1)
    assert re.match(r"TLS handshake refused: \S+", refused.reason)


async def test_a_certificate_the_federation_refuses_after_the_handshake_is_named_by_cn_and_hash(
    ca: FederationCA, tmp_path: Path
) -> None:
    tls = _tls(ca, tmp_path / "sites", "holder", 1)
    refused: list[RefusedPeer] = []

    def nobody(ssl_object: object) -> Member:
        raise NotAMember("not in this federation's member list")

    store = FragmentStore(tmp_path / "fragments", QuotaPolicy(10**8))
    server = FragmentServer(
        store, HeldRecords(tmp_path / "records"), tls.server_context(), nobody,
        on_refused=refused.append,
    )  # fmt: skip
    _, port = await server.start("127.0.0.1", 0)
    owner = make_site(ca, tmp_path / "sites", "owner", 2)
    try:
        with pytest.raises((PeerUnreachable, PeerRefused, NotAMember)):
            await _ping(MutualTls(owner.identity, owner.files), Holder(port, refused, tmp_path))
        (found,) = await _told(Holder(port, refused, tmp_path), 1)
    finally:
        await server.close()
        store.close()
    assert found.reason == "not in this federation's member list"
    der = owner.files.node_certificate_pem()

    cert = x509.load_pem_x509_certificate(der)
    assert (
        found.fingerprint
        == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    )
    assert found.common_name  # the subject's CN, whatever the federation puts there
