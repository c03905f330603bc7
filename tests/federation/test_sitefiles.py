"""A site's federation files: installed only when they fit this site, kept by a rebuilt site."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from meshpacs.errors import FederationError, NotAMember
from meshpacs.federation import (
    FederationCA,
    SiteFederationFiles,
    install_federation_files,
    make_csr,
)
from meshpacs.federation.certs import crl_number
from meshpacs.keys import NodeIdentity, SiteSecret
from meshpacs.node.config import load_config
from meshpacs.node.site import create_site, load_site_secret

from .helpers import Site


def snapshot(files: SiteFederationFiles) -> dict[str, bytes]:
    if not files.directory.exists():
        return {}
    return {path.name: path.read_bytes() for path in sorted(files.directory.iterdir())}


def test_enroll_installs_the_three_files(ca: FederationCA, site: Callable[..., Site]) -> None:
    a = site("st-a", seed=1)
    assert sorted(snapshot(a.files)) == ["ca.pem", "crl.pem", "node.pem"]
    assert a.files.ca.read_bytes() == ca.certificate_pem()
    assert a.files.crl.read_bytes() == ca.crl_pem()
    assert a.files.directory == a.files.directory.parent / "federation"
    assert a.federation().verify(a.files.node_certificate_pem()).site_id == "st-a"


def test_install_from_the_administrators_files(ca: FederationCA, tmp_path: Path) -> None:
    identity = NodeIdentity.from_secret(SiteSecret(bytes([7]) * 32))
    files = SiteFederationFiles.for_site(tmp_path / "st-x")
    issued = ca.sign_csr(make_csr(identity, "st-x"))
    member = install_federation_files(
        files,
        identity,
        "st-x",
        ca_pem=ca.certificate_pem(),
        cert_pem=issued.pem,
        crl_pem=ca.crl_pem(),
    )
    assert member.site_id == "st-x" and member.serial == issued.serial
    assert files.node_cert.read_bytes() == issued.pem


def test_a_certificate_for_another_site_is_not_installed(
    ca: FederationCA, site: Callable[..., Site]
) -> None:
    a = site("st-a", seed=1)
    before = snapshot(a.files)
    issued = ca.sign_csr(make_csr(a.identity, "st-b"))
    with pytest.raises(FederationError, match="for site 'st-b', but this site is 'st-a'"):
        install_federation_files(a.files, a.identity, "st-a", cert_pem=issued.pem)
    assert snapshot(a.files) == before


def test_a_certificate_for_another_key_is_not_installed(
    ca: FederationCA, site: Callable[..., Site]
) -> None:
    a = site("st-a", seed=1)
    before = snapshot(a.files)
    stranger = NodeIdentity.from_secret(SiteSecret(bytes([9]) * 32))
    issued = ca.sign_csr(make_csr(stranger, "st-a"), replace=True)
    with pytest.raises(FederationError, match="another key than this site's identity key"):
        install_federation_files(
            a.files, a.identity, "st-a", cert_pem=issued.pem, crl_pem=ca.crl_pem()
        )
    assert snapshot(a.files) == before


def test_a_certificate_from_another_ca_is_not_installed(
    other_ca: FederationCA, site: Callable[..., Site]
) -> None:
    a = site("st-a", seed=1)
    before = snapshot(a.files)
    foreign = other_ca.sign_csr(make_csr(a.identity, "st-a"))
    with pytest.raises(NotAMember, match="not issued by the federation CA"):
        install_federation_files(a.files, a.identity, "st-a", cert_pem=foreign.pem)
    assert snapshot(a.files) == before


def test_a_new_ca_needs_its_crl(other_ca: FederationCA, site: Callable[..., Site]) -> None:
    a = site("st-a", seed=1)
    foreign = other_ca.sign_csr(make_csr(a.identity, "st-a"))
    with pytest.raises(FederationError, match="needs its revocation list"):
        install_federation_files(
            a.files, a.identity, "st-a", ca_pem=other_ca.certificate_pem(), cert_pem=foreign.pem
        )
    install_federation_files(
        a.files,
        a.identity,
        "st-a",
        ca_pem=other_ca.certificate_pem(),
        cert_pem=foreign.pem,
        crl_pem=other_ca.crl_pem(),
    )
    assert a.federation().ca_fingerprint == other_ca.fingerprint


def test_a_crl_alone_updates_an_enrolled_site(ca: FederationCA, site: Callable[..., Site]) -> None:
    a = site("st-a", seed=1)
    site("st-b", seed=2)
    ca.revoke(site_id="st-b")
    install_federation_files(a.files, a.identity, "st-a", crl_pem=ca.crl_pem())
    assert crl_number(a.federation().crl) == 2


def test_an_older_crl_is_not_installed(ca: FederationCA, site: Callable[..., Site]) -> None:
    a = site("st-a", seed=1)
    site("st-b", seed=2)
    old = ca.crl_pem()
    ca.revoke(site_id="st-b")
    install_federation_files(a.files, a.identity, "st-a", crl_pem=ca.crl_pem())
    with pytest.raises(FederationError, match="older than the installed one"):
        install_federation_files(a.files, a.identity, "st-a", crl_pem=old)
    assert a.files.crl.read_bytes() == ca.crl_pem()


def test_a_crl_from_another_ca_is_not_installed(
    other_ca: FederationCA, site: Callable[..., Site]
) -> None:
    a = site("st-a", seed=1)
    with pytest.raises(FederationError, match="not from this federation's CA"):
        install_federation_files(a.files, a.identity, "st-a", crl_pem=other_ca.crl_pem())


def test_a_site_without_files_is_told_to_enroll(tmp_path: Path) -> None:
    files = SiteFederationFiles.for_site(tmp_path / "nowhere")
    assert not files.installed()
    with pytest.raises(FederationError, match="has not joined a federation"):
        files.federation()
    identity = NodeIdentity.from_secret(SiteSecret(bytes(32)))
    with pytest.raises(FederationError, match="no federation CA certificate is installed"):
        install_federation_files(files, identity, "st-x")


def test_a_site_rebuilt_from_its_recovery_phrase_keeps_its_identity_and_certificate(
    ca: FederationCA, tmp_path: Path
) -> None:
    created = create_site(tmp_path / "st-marys", "st-marys", "MESH_SM")
    config = load_config(created.config_path)
    identity = NodeIdentity.from_secret(load_site_secret(config.key_file))
    files = SiteFederationFiles.for_site(config.data_dir)
    issued = ca.sign_csr(make_csr(identity, "st-marys"))
    install_federation_files(
        files,
        identity,
        "st-marys",
        ca_pem=ca.certificate_pem(),
        cert_pem=issued.pem,
        crl_pem=ca.crl_pem(),
    )

    # The machine is lost; the administrator types the phrase on a new one.
    rebuilt = NodeIdentity.from_secret(SiteSecret.from_phrase(created.phrase))
    assert rebuilt.public_key_bytes == identity.public_key_bytes
    assert rebuilt.node_id == identity.node_id
    new_files = SiteFederationFiles.for_site(tmp_path / "rebuilt")
    member = install_federation_files(
        new_files,
        rebuilt,
        "st-marys",
        ca_pem=ca.certificate_pem(),
        cert_pem=issued.pem,
        crl_pem=ca.crl_pem(),
    )
    assert member.node_id == identity.node_id
    # ...and a new request from the rebuilt site is a renewal, not a second key.
    ca.sign_csr(make_csr(rebuilt, "st-marys"))
    assert len(ca.crl()) == 0
