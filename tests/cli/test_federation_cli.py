"""``meshpacs federation`` as an administrator runs it: create, request, sign, install,
enroll, revoke, crl; every failure a message and exit status 2, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from typer.testing import CliRunner

from meshpacs.cli import app
from meshpacs.errors import NotAMember
from meshpacs.federation import SiteFederationFiles
from meshpacs.keys import NodeIdentity
from meshpacs.node.config import load_config
from meshpacs.node.site import load_site_secret

MESHPACS = shutil.which("meshpacs", path=str(Path(sys.executable).parent)) or "meshpacs"


def run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "100"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def run_json(*args: str | Path) -> dict[str, object]:
    code, out, err = run(*args, "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert isinstance(payload, dict)
    return payload


def new_site(root: Path, site_id: str) -> Path:
    payload = run_json(
        "init", "--site-id", site_id, "--ae-title", site_id.upper(), "--dir", root / site_id
    )
    return Path(str(payload["config"]))


def identity_of(config: Path) -> NodeIdentity:
    return NodeIdentity.from_secret(load_site_secret(load_config(config).key_file))


def files_of(config: Path) -> SiteFederationFiles:
    return SiteFederationFiles.for_site(load_config(config).data_dir)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    payload = run_json("federation", "create", "--name", "Test Mesh", "--dir", directory)
    assert payload["name"] == "Test Mesh"
    return directory


def test_create_writes_the_ca_and_prints_its_fingerprint(tmp_path: Path) -> None:
    code, out, err = run("federation", "create", "--name", "Test Mesh", "--dir", tmp_path / "ca")
    assert code == 0, err
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == [
        "ca.key",
        "ca.pem",
        "crl.pem",
        "issued",
    ]
    assert "fingerprint:" in out and "keep it safe" in out
    code, _, err = run("federation", "create", "--name", "Again", "--dir", tmp_path / "ca")
    assert code == 2 and "not empty" in err and "Traceback" not in err


def test_request_sign_install_as_two_administrators_would(ca_dir: Path, tmp_path: Path) -> None:
    config = new_site(tmp_path, "st-marys")
    csr = tmp_path / "st-marys.csr"
    requested = run_json("federation", "request", "--config", config, "--out", csr)
    signed = run_json(
        "federation", "sign", "--dir", ca_dir, "--csr", csr, "--out", tmp_path / "node.pem"
    )
    # The node ID is what the two administrators compare by phone.
    assert requested["node_id"] == signed["node_id"] == identity_of(config).node_id.hex()
    assert signed["site_id"] == "st-marys"
    installed = run_json(
        "federation",
        "install",
        "--config",
        config,
        "--ca",
        ca_dir / "ca.pem",
        "--cert",
        tmp_path / "node.pem",
        "--crl",
        ca_dir / "crl.pem",
    )
    assert installed["site_id"] == "st-marys" and installed["serial"] == signed["serial"]
    files = files_of(config)
    assert files.federation().verify(files.node_certificate_pem()).site_id == "st-marys"
    assert (ca_dir / "issued" / f"{signed['serial']}.pem").exists()


def test_enroll_revoke_and_install_the_new_crl(ca_dir: Path, tmp_path: Path) -> None:
    a, b = new_site(tmp_path, "st-a"), new_site(tmp_path, "st-b")
    enrolled_a = run_json("federation", "enroll", "--dir", ca_dir, "--config", a)
    enrolled_b = run_json("federation", "enroll", "--dir", ca_dir, "--config", b)
    assert enrolled_a["site_id"] == "st-a" and enrolled_b["site_id"] == "st-b"
    federation = files_of(a).federation()
    b_cert = files_of(b).node_certificate_pem()
    assert federation.verify(b_cert).site_id == "st-b"

    revoked = run_json("federation", "revoke", "--dir", ca_dir, "--site-id", "st-b")
    assert revoked["revoked"] == [enrolled_b["serial"]] and revoked["crl_number"] == 2
    installed = run_json("federation", "install", "--config", a, "--crl", ca_dir / "crl.pem")
    assert installed["crl_number"] == 2
    with pytest.raises(NotAMember, match="revoked"):
        federation.verify(b_cert)


def test_revoke_by_serial_and_renew_the_crl(ca_dir: Path, tmp_path: Path) -> None:
    a = new_site(tmp_path, "st-a")
    serial = run_json("federation", "enroll", "--dir", ca_dir, "--config", a)["serial"]
    code, out, err = run("federation", "revoke", "--dir", ca_dir, "--serial", f"0x{serial}")
    assert code == 0, err
    assert str(serial) in out and "install" in out
    renewed = run_json("federation", "crl", "--dir", ca_dir, "--days", "30")
    assert renewed["crl_number"] == 3


def test_revoke_needs_exactly_one_target(ca_dir: Path) -> None:
    code, _, err = run("federation", "revoke", "--dir", ca_dir)
    assert code == 2 and "exactly one of --site-id and --serial" in err
    code, _, err = run("federation", "revoke", "--dir", ca_dir, "--site-id", "x", "--serial", "ab")
    assert code == 2
    code, _, err = run("federation", "revoke", "--dir", ca_dir, "--site-id", "st-nobody")
    assert code == 2 and "no live certificate" in err and "Traceback" not in err


def test_a_second_key_for_a_site_needs_replace(ca_dir: Path, tmp_path: Path) -> None:
    first = new_site(tmp_path / "one", "st-a")
    second = new_site(tmp_path / "two", "st-a")  # rebuilt with a new secret, not the phrase
    run_json("federation", "enroll", "--dir", ca_dir, "--config", first)
    code, _, err = run("federation", "enroll", "--dir", ca_dir, "--config", second)
    assert code == 2 and "--replace" in err
    run_json("federation", "enroll", "--dir", ca_dir, "--config", second, "--replace")
    with pytest.raises(NotAMember, match="revoked"):
        files_of(second).federation().verify(files_of(first).node_certificate_pem())


def test_install_refuses_another_sites_certificate(ca_dir: Path, tmp_path: Path) -> None:
    a, b = new_site(tmp_path, "st-a"), new_site(tmp_path, "st-b")
    run_json("federation", "enroll", "--dir", ca_dir, "--config", b)
    code, _, err = run(
        "federation",
        "install",
        "--config",
        a,
        "--ca",
        ca_dir / "ca.pem",
        "--cert",
        files_of(b).node_cert,
        "--crl",
        ca_dir / "crl.pem",
    )
    assert code == 2 and "for site 'st-b', but this site is 'st-a'" in err
    assert not files_of(a).directory.exists()


def test_install_refuses_a_certificate_from_another_ca(ca_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-ca"
    run_json("federation", "create", "--name", "Rogue", "--dir", other)
    a = new_site(tmp_path, "st-a")
    run_json("federation", "enroll", "--dir", other, "--config", a)
    code, _, err = run(
        "federation",
        "install",
        "--config",
        a,
        "--ca",
        ca_dir / "ca.pem",
        "--cert",
        files_of(a).node_cert,
        "--crl",
        ca_dir / "crl.pem",
    )
    assert code == 2 and "not issued by the federation CA 'Test Mesh'" in err


def test_sign_refuses_a_tampered_request(ca_dir: Path, tmp_path: Path) -> None:
    config = new_site(tmp_path, "st-a")
    csr = tmp_path / "st-a.csr"
    run_json("federation", "request", "--config", config, "--out", csr)
    der = bytearray(x509.load_pem_x509_csr(csr.read_bytes()).public_bytes(Encoding.DER))
    der[-1] ^= 1  # a bit of the signature
    csr.write_bytes(bytes(der))
    code, _, err = run(
        "federation", "sign", "--dir", ca_dir, "--csr", csr, "--out", tmp_path / "x.pem"
    )
    assert code == 2 and "signature does not verify" in err and "Traceback" not in err
    assert not (tmp_path / "x.pem").exists()
    assert list((ca_dir / "issued").iterdir()) == []


def test_a_ca_key_open_to_others_is_refused(ca_dir: Path, tmp_path: Path) -> None:
    os.chmod(ca_dir / "ca.key", 0o640)
    code, _, err = run("federation", "crl", "--dir", ca_dir)
    assert code == 2 and "chmod 600" in err


def test_the_commands_help_is_written_for_the_administrator() -> None:
    env = os.environ | {"COLUMNS": "100", "NO_COLOR": "1"}
    done = subprocess.run(
        [MESHPACS, "federation", "--help"], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    for command in ("create", "request", "sign", "enroll", "revoke", "crl", "install"):
        assert command in done.stdout
    code, out, _ = run("federation", "sign", "--help")
    assert code == 0
    text = " ".join(out.replace("│", " ").split())
    assert "node ID" in text and "phone" in text and "--replace" in text
