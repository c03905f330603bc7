"""Recovery without the phrase: request, the CA's authorisation, t peers' releases, combine.

The first tests lay a federation out on disk (no nodes running) and deposit site-a's
escrow with its trusted peers the way a peer's server stores it, so that every refusal
can be tried quickly. The last one runs the whole procedure on a running federation, as
administrators would: the deposit through the mesh, the CLI for every step, and
``meshpacs recover`` as a separate process rebuilding the archive from the releases.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import stat
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshpacs.backup.escrow import escrow_record_id
from meshpacs.cli import app
from meshpacs.errors import (
    ConfigError,
    FederationError,
    KeyMaterialError,
    MeshError,
    ShamirError,
    WrongKey,
)
from meshpacs.federation import FederationCA, create_federation_ca
from meshpacs.federation.authorisation import sign_authorisation
from meshpacs.keys import NodeIdentity, ShamirShare, SiteSecret, split
from meshpacs.keys.escrow import open_share, seal_release, seal_share
from meshpacs.node.config import NodeConfig, load_config
from meshpacs.node.escrow_release import AUDIT_FILE, held_share_path, release_escrow_share
from meshpacs.node.site import load_site_secret
from meshpacs.recovery.escrow import (
    PHRASE_FILE,
    REQUEST_FILE,
    CreatedRequest,
    EscrowKey,
    create_request,
    keep_regained_phrase,
    load_escrow_key,
    regain_secret,
)
from meshpacs.store.records import HeldRecords
from meshpacs.testbed import TestbedPlan as Plan
from meshpacs.testbed import create_testbed
from meshpacs.transport.frames import RecordKind

from ..federation.helpers import ca_private_key
from ..mesh.conftest import FederationFactory, federation  # noqa: F401  (the fixture)
from ..mesh.helpers import eventually, held_catalog_records, push, study, wait_protected
from ..mesh.test_recovery import originals, restored

DAY = 86400
MESHPACS = shutil.which("meshpacs", path=str(Path(sys.executable).parent)) or "meshpacs"


# --- a federation on disk, site-a's secret escrowed 2-of-3 with site-b, -c and -d -------------


def config(plan: Plan, site_id: str) -> NodeConfig:
    return load_config(Path(plan.site(site_id).config))


def secret_of(plan: Plan, site_id: str) -> SiteSecret:
    return load_site_secret(Path(plan.site(site_id).data_dir) / "site.key")


def deposit(plan: Plan, owner: str) -> list[ShamirShare]:
    """What EscrowDepositor puts on each trusted peer, stored as the peer's server stores it."""
    trusted = plan.site(owner).trusted
    shares = split(secret_of(plan, owner).value, len(trusted) // 2 + 1, len(trusted))
    for peer, share in zip(trusted, shares, strict=True):
        identity = NodeIdentity.from_secret(secret_of(plan, peer))
        sealed = seal_share(share, identity.public_key_bytes, owner_site=owner, recipient_site=peer)
        HeldRecords(config(plan, peer).records_dir).put(
            RecordKind.ESCROW, owner, escrow_record_id(owner, peer), sealed
        )
    return shares


@pytest.fixture
def plan(tmp_path: Path) -> Plan:
    laid_out = create_testbed(tmp_path / "testbed", 5, trust=3)
    assert laid_out.site("site-a").trusted == ["site-b", "site-c", "site-d"]
    deposit(laid_out, "site-a")
    return laid_out


def authorise(plan: Plan | FederationCA, created: CreatedRequest) -> bytes:
    ca = FederationCA(Path(plan.ca_dir)) if isinstance(plan, Plan) else plan
    return sign_authorisation(
        created.request,
        ca_private_key(ca),
        ca.certificate,
        now=int(time.time()),
        valid_seconds=DAY,
    )


def cert_of(plan: Plan, site_id: str) -> bytes:
    return Path(str(plan.site(site_id).recover_args["cert"])).read_bytes()


def release(plan: Plan, peer: str, authorisation: bytes, out: Path) -> bytes:
    release_escrow_share(config(plan, peer), authorisation, out)
    return out.read_bytes()


def audit_lines(plan: Plan, site_id: str) -> list[dict[str, object]]:
    path = config(plan, site_id).state_dir / AUDIT_FILE
    return [json.loads(line) for line in path.read_text().splitlines()]


def open_for_test(plan: Plan, peer: str, owner: str) -> ShamirShare:
    identity = NodeIdentity.from_secret(secret_of(plan, peer))
    sealed = held_share_path(config(plan, peer), owner).read_bytes()
    return open_share(identity, sealed, owner_site=owner, recipient_site=peer)


def released_to(key: EscrowKey, shares: dict[str, ShamirShare]) -> list[tuple[str, bytes]]:
    return [
        (
            f"{peer}.release",
            seal_release(
                share,
                key.public_key,
                owner_site=key.site_id,
                releasing_site=peer,
                request_id=key.request_id,
            ),
        )
        for peer, share in shares.items()
    ]


def test_t_releases_rebuild_the_secret_and_t_minus_one_is_refused_naming_the_file(
    plan: Plan, tmp_path: Path
) -> None:
    created = create_request(tmp_path / "work", "site-a", int(time.time()))
    assert stat.S_IMODE(created.key_path.stat().st_mode) == 0o600
    key = load_escrow_key(created.key_path)
    assert key.request_id == created.request.request_id and "redacted" in repr(key)
    granted = authorise(plan, created)
    from_b = release(plan, "site-b", granted, tmp_path / "b.release")
    from_d = release(plan, "site-d", granted, tmp_path / "d.release")
    assert stat.S_IMODE((tmp_path / "b.release").stat().st_mode) == 0o600

    regained = regain_secret(
        key, [("b.release", from_b), ("d.release", from_d)], cert_of(plan, "site-a")
    )
    assert regained.secret == secret_of(plan, "site-a")
    assert regained.threshold == 2 and regained.set_aside == ()
    assert NodeIdentity.from_secret(regained.secret) == NodeIdentity.from_secret(
        secret_of(plan, "site-a")
    )
    with pytest.raises(
        ShamirError, match=r"2 escrow releases .* 1 given: b\.release \(from site-b\)"
    ):
        regain_secret(key, [("b.release", from_b)], cert_of(plan, "site-a"))
    with pytest.raises(ShamirError):
        regain_secret(key, [], cert_of(plan, "site-a"))
    # The same release twice is still one peer's share.
    with pytest.raises(ShamirError, match="1 given"):
        regain_secret(key, [("b", from_b), ("b-again", from_b)], cert_of(plan, "site-a"))

    for peer in ("site-b", "site-d"):
        [line] = audit_lines(plan, peer)
        assert line["outcome"] == "released" and line["owner_site"] == "site-a"
        assert line["request_id"] == created.request.request_id.hex()

    phrase_path, written = keep_regained_phrase(tmp_path / "work", regained.secret)
    assert written and stat.S_IMODE(phrase_path.stat().st_mode) == 0o600
    assert SiteSecret.from_phrase(phrase_path.read_text()) == secret_of(plan, "site-a")
    assert keep_regained_phrase(tmp_path / "work", regained.secret) == (phrase_path, False)


def test_a_peer_refuses_a_bad_authorisation_or_a_site_it_holds_nothing_for_and_audits_it(
    plan: Plan, tmp_path: Path
) -> None:
    created = create_request(tmp_path / "work", "site-a", int(time.time()))
    granted = authorise(plan, created)
    peer = config(plan, "site-b")

    rogue = create_federation_ca(tmp_path / "rogue", "Rogue Mesh")
    with pytest.raises(FederationError, match="another CA"):
        release_escrow_share(peer, authorise(rogue, created), tmp_path / "1")
    with pytest.raises(FederationError, match="expired"):
        release_escrow_share(peer, granted, tmp_path / "2", now=time.time() + 2 * DAY)
    tampered = bytearray(granted)
    tampered[-100] ^= 0x01  # the expiry, moved by 2**24 seconds
    with pytest.raises(FederationError, match="does not verify"):
        release_escrow_share(peer, bytes(tampered), tmp_path / "3")
    # site-e is nobody's trusted peer of site-a; site-a holds nothing for itself.
    for holder in ("site-e", "site-a"):
        with pytest.raises(MeshError, match="holds no escrow share of site 'site-a'"):
            release_escrow_share(config(plan, holder), granted, tmp_path / f"4-{holder}")
    # A share for another site than the one authorised is never picked up instead.
    for_b = authorise(plan, create_request(tmp_path / "work-b", "site-b", int(time.time())))
    deposit(plan, "site-b")  # site-b's peers are site-c, -d and -e
    with pytest.raises(MeshError, match="holds no escrow share of site 'site-b'"):
        release_escrow_share(config(plan, "site-b"), for_b, tmp_path / "5")
    (tmp_path / "exists").write_bytes(b"")
    with pytest.raises(ConfigError, match="already exists"):
        release_escrow_share(peer, granted, tmp_path / "exists")
    assert not any((tmp_path / name).exists() for name in ("1", "2", "3", "4-site-e", "5"))

    lines = audit_lines(plan, "site-b")
    assert [line["outcome"] for line in lines] == ["refused"] * 5
    assert lines[0]["owner_site"] is None  # refused before anything in it was trusted
    assert "another CA" in str(lines[0]["reason"]) and "expired" in str(lines[1]["reason"])
    assert audit_lines(plan, "site-e")[0]["outcome"] == "refused"
    assert set(lines[0]) == {
        "time", "event", "outcome", "owner_site", "releasing_site", "request_id", "reason"
    }  # fmt: skip


def test_a_release_for_another_request_site_or_key_is_refused_naming_its_file(
    plan: Plan, tmp_path: Path
) -> None:
    first = create_request(tmp_path / "first", "site-a", int(time.time()))
    second = create_request(tmp_path / "second", "site-a", int(time.time()))
    key = load_escrow_key(first.key_path)
    cert = cert_of(plan, "site-a")
    good = release(plan, "site-b", authorise(plan, first), tmp_path / "b.release")
    other_request = release(plan, "site-c", authorise(plan, second), tmp_path / "c.release")
    with pytest.raises(KeyMaterialError, match=r"c\.release: it answers request .*another"):
        regain_secret(key, [("b.release", good), ("c.release", other_request)], cert)

    share = open_for_test(plan, "site-c", "site-a")
    for_b = seal_release(
        share,
        key.public_key,
        owner_site="site-b",
        releasing_site="site-c",
        request_id=key.request_id,
    )
    with pytest.raises(KeyMaterialError, match=r"x\.release: it releases site 'site-b'"):
        regain_secret(key, [("b.release", good), ("x.release", for_b)], cert)

    stranger = load_escrow_key(second.key_path)  # right request ID, sealed to another key
    to_stranger = seal_release(
        share,
        stranger.public_key,
        owner_site="site-a",
        releasing_site="site-c",
        request_id=key.request_id,
    )
    with pytest.raises(WrongKey, match=r"y\.release: .*does not open"):
        regain_secret(key, [("b.release", good), ("y.release", to_stranger)], cert)
    damaged = bytearray(good)
    damaged[-1] ^= 0x40
    with pytest.raises(WrongKey, match=r"z\.release"):
        regain_secret(key, [("z.release", bytes(damaged)), ("b.release", good)], cert)
    with pytest.raises(MeshError, match=r"w\.release"):
        regain_secret(key, [("w.release", b"\x01garbage")], cert)


def test_a_forged_or_damaged_share_is_never_taken_for_the_secret(
    plan: Plan, tmp_path: Path
) -> None:
    key = load_escrow_key(create_request(tmp_path / "w", "site-a", int(time.time())).key_path)
    cert = cert_of(plan, "site-a")
    genuine = {peer: open_for_test(plan, peer, "site-a") for peer in ("site-b", "site-c", "site-d")}

    # Anyone holding the (public) authorisation can seal shares of a secret of their own:
    # they combine, but to a secret whose identity is not the certified one.
    made_up = split(SiteSecret(random.Random(5).randbytes(32)).value, 2, 3)
    forged = dict(zip(genuine, made_up, strict=True))
    with pytest.raises(KeyMaterialError, match="do not rebuild this site's secret"):
        regain_secret(key, released_to(key, forged), cert)
    # A certificate of another site: no subset rebuilds its identity either.
    with pytest.raises(KeyMaterialError, match="do not rebuild"):
        regain_secret(key, released_to(key, genuine), cert_of(plan, "site-b"))

    # One trusted peer hands back a damaged share (the same split, a changed value):
    # with all three, the two good ones still rebuild the secret, and the bad one is named.
    bad = genuine["site-c"]
    damaged = ShamirShare(bad.split_id, bad.threshold, bad.x, bytes(32), bad.check)
    regained = regain_secret(key, released_to(key, genuine | {"site-c": damaged}), cert)
    assert regained.secret == secret_of(plan, "site-a")
    assert regained.set_aside == ("site-c.release",)
    with pytest.raises(KeyMaterialError, match="do not rebuild"):
        regain_secret(key, released_to(key, {"site-b": genuine["site-b"], "site-c": damaged}), cert)

    # Shares of an older split do not mix with the current one's.
    older = split(secret_of(plan, "site-a").value, 2, 3)
    mixed = {"site-b": genuine["site-b"], "site-c": older[2]}
    with pytest.raises(ShamirError, match="different escrow splits"):
        regain_secret(key, released_to(key, mixed), cert)
    mixed["site-d"] = genuine["site-d"]
    assert regain_secret(key, released_to(key, mixed), cert).secret == secret_of(plan, "site-a")


def run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "100"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_the_administrator_authorises_only_a_request_whose_code_was_confirmed(
    plan: Plan, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    code, out, err = run("escrow", "request", "--site-id", "site-a", "--workdir", work, "--json")
    assert code == 0, err
    asked = json.loads(out)
    assert (work / REQUEST_FILE).is_file() and asked["site_id"] == "site-a"
    code, _, err = run("escrow", "request", "--site-id", "site-a", "--workdir", work)
    assert code == 2 and "already holds the key of an earlier request" in err

    authorize = ("federation", "authorize-recovery", "--dir", plan.ca_dir)
    wrong = asked["code"][:-1] + ("0" if asked["code"][-1] != "0" else "1")
    code, _, err = run(
        *authorize, "--request", work / REQUEST_FILE, "--code", wrong, "--out", tmp_path / "a"
    )
    assert code == 2 and "is not this request's" in err and not (tmp_path / "a").exists()

    stranger = create_request(tmp_path / "x", "site-z", int(time.time()))
    code, _, err = run(
        *authorize, "--request", stranger.request_path, "--code", stranger.request.code,
        "--out", tmp_path / "z",
    )  # fmt: skip
    assert code == 2 and "never issued a certificate to site 'site-z'" in err

    code, out, err = run(
        *authorize, "--request", work / REQUEST_FILE, "--code", asked["code"].upper(),
        "--out", tmp_path / "auth", "--valid-hours", "2", "--json",
    )  # fmt: skip
    assert code == 0, err
    granted = json.loads(out)
    assert granted["request_id"] == asked["request_id"] and granted["site_id"] == "site-a"

    recover = ["recover", *recover_args(plan, "site-a"), "--to-dir", str(tmp_path / "out")]
    code, _, err = run(*recover, "--phrase-file", "p", "--escrow-release", "r")
    assert code == 2 and "not both" in err
    code, _, err = run(*recover, "--escrow-key", created_for_b(tmp_path))
    assert code == 2 and "goes with --escrow-release" in err
    code, _, err = run(*recover, "--escrow-release", "r", "--escrow-key", created_for_b(tmp_path))
    assert code == 2 and "is the key of a request for site 'site-b', not 'site-a'" in err


def created_for_b(tmp_path: Path) -> Path:
    key_path = tmp_path / "for-b" / "escrow.key"
    if not key_path.exists():
        create_request(key_path.parent, "site-b", int(time.time()))
    return key_path


def recover_args(plan: Plan, site_id: str) -> list[str]:
    args: list[str] = []
    for name, value in plan.site(site_id).recover_args.items():
        for item in value if isinstance(value, list) else [value]:
            args += [f"--{name}", str(item)]
    return args


# --- the whole procedure on a running federation ---------------------------------------------


async def test_a_site_that_lost_its_phrase_too_is_recovered_from_two_of_its_three_trusted_peers(
    federation: FederationFactory,  # noqa: F811
    tmp_path: Path,
) -> None:
    fed = await federation(5, k=2, n=3, trust=3)
    owner = fed.site("site-a")
    trusted = [fed.site(s) for s in ("site-b", "site-c", "site-d")]
    sent = study(seed=90)
    await push(owner, sent, tmp_path / "pacs")
    await wait_protected(owner, {sent[0].study_instance_uid})
    await eventually(lambda: all(held_catalog_records(p) for p in trusted), 30, "catalog")
    await eventually(
        lambda: all(held_share_path(p.config, "site-a").is_file() for p in trusted), 60, "escrow"
    )
    original = load_site_secret(owner.data_dir / "site.key")
    await owner.halt()
    shutil.rmtree(owner.data_dir)  # archive, key and phrase: all gone
    plan = fed.plan
    work = Path(str(plan.site("site-a").recover_args["workdir"]))

    code, out, err = run("escrow", "request", "--site-id", "site-a", "--workdir", work, "--json")
    assert code == 0, err
    asked = json.loads(out)
    code, _, err = run(
        "federation", "authorize-recovery", "--dir", plan.ca_dir, "--request",
        work / REQUEST_FILE, "--code", asked["code"], "--out", tmp_path / "auth",
    )  # fmt: skip
    assert code == 0, err

    await fed.site("site-c").halt()  # a peer's administrator may release with the node down
    releases = {}
    for peer in ("site-b", "site-c"):
        releases[peer] = tmp_path / f"{peer}.release"
        code, out, err = run(
            "escrow", "release", "--config", fed.site(peer).plan.config,
            "--authorisation", tmp_path / "auth", "--out", releases[peer],
        )  # fmt: skip
        assert code == 0, err
        assert asked["code"] in out and "site-a" in out
    code, _, err = run(
        "escrow", "release", "--config", fed.site("site-e").plan.config,
        "--authorisation", tmp_path / "auth", "--out", tmp_path / "e.release",
    )  # fmt: skip
    assert code == 2 and "holds no escrow share of site 'site-a'" in err

    command = [
        MESHPACS,
        "recover",
        *recover_args(plan, "site-a"),
        "--to-dir",
        str(tmp_path / "out"),
    ]
    one = await run_process(*command, "--escrow-release", str(releases["site-b"]))
    assert one.returncode == 2
    assert f"{releases['site-b']} (from site-b)" in one.stderr and "2 escrow releases" in one.stderr
    assert not (work / PHRASE_FILE).exists()

    both = [
        arg for peer in ("site-b", "site-c") for arg in ("--escrow-release", str(releases[peer]))
    ]
    done = await run_process(*command, *both)
    assert done.returncode == 0, done.stderr
    assert "written ONCE" in done.stderr and str(work / PHRASE_FILE) in done.stderr
    assert original.to_phrase() not in done.stdout + done.stderr
    assert restored(tmp_path / "out") == originals(sent)
    phrase_file = work / PHRASE_FILE
    assert stat.S_IMODE(phrase_file.stat().st_mode) == 0o600
    assert SiteSecret.from_phrase(phrase_file.read_text()) == original


class Finished:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


async def run_process(*command: str) -> Finished:
    """A CLI run as its own process, while this test's event loop keeps the nodes serving."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=os.environ | {"COLUMNS": "100"},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=180)
    assert process.returncode is not None
    return Finished(process.returncode, stdout.decode(), stderr.decode())
