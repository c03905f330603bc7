"""The ``meshpacs`` command: a thin layer over the library, for PACS administrators."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import tempfile
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer

from meshpacs import __version__
from meshpacs.errors import FederationError, MeshError
from meshpacs.federation import (
    FederationCA,
    Member,
    SiteFederationFiles,
    create_federation_ca,
    enroll_site,
    install_federation_files,
    make_csr,
    parse_serial,
)
from meshpacs.federation.certs import CA_DAYS, CRL_DAYS, NODE_DAYS, crl_number
from meshpacs.keys.identity import NodeIdentity, node_id_for
from meshpacs.node.config import NodeConfig, load_config
from meshpacs.node.daemon import configure_logging, run_node
from meshpacs.node.site import create_site, load_site_secret
from meshpacs.selftest import run_selftest

app = typer.Typer(
    name="meshpacs",
    help=(
        "meshpacs backs up a hospital's PACS onto partner hospitals: studies are encrypted,"
        " cut into k-of-n fragments and spread over the federation, and can be rebuilt"
        " byte for byte from any k of them."
    ),
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """meshpacs: federated, encrypted, erasure-coded PACS backup."""


@app.command()
def version() -> None:
    """Print the meshpacs version."""
    typer.echo(__version__)


@app.command()
def selftest(
    k: Annotated[int, typer.Option(help="Fragments needed to rebuild a study.")] = 4,
    n: Annotated[int, typer.Option(help="Fragments made per study (n > k).")] = 7,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed for the generated study and the faults; random if unset."),
    ] = None,
    segment_size: Annotated[
        int, typer.Option(help="Bytes per encrypted segment (4 KiB .. 64 MiB).")
    ] = 1024 * 1024,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Keep the generated study and fragments here (must not exist yet)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON report for scripts.")
    ] = False,
) -> None:
    """Check that this machine can back up and restore a study exactly.

    Generates a synthetic study (no patient data), encrypts and erasure-codes it k-of-n
    under a fresh throwaway site key, loses n-k-1 fragments, corrupts one more, rebuilds the
    study from what is left and compares every instance byte for byte with the original.
    Then loses one more fragment and checks that meshpacs reports the study as
    unrecoverable instead of returning wrong data. Nothing leaves this machine.
    Exit status 0 means every check held.
    """
    if workdir is not None and workdir.exists():
        raise typer.BadParameter(
            f"{workdir} already exists; name a new directory", param_hint="--workdir"
        )
    say = (lambda line: None) if as_json else typer.echo
    try:
        if workdir is None:
            with tempfile.TemporaryDirectory(prefix="meshpacs-selftest-") as tmp:
                result = run_selftest(
                    Path(tmp), k=k, n=n, seed=seed, segment_size=segment_size, report=say
                )
        else:
            result = run_selftest(
                workdir, k=k, n=n, seed=seed, segment_size=segment_size, report=say
            )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if as_json:
        payload = dataclasses.asdict(result) | {"ok": result.ok}
        typer.echo(json.dumps(payload, indent=2, sort_keys=True))
    else:
        for failure in result.failures:
            typer.echo(f"FAILED: {failure}", err=True)
        typer.echo("selftest passed" if result.ok else "selftest FAILED")
    raise typer.Exit(0 if result.ok else 1)


_PHRASE_WARNING = (
    "Write this recovery phrase down on paper and keep it in a safe. It is the only way to"
    " rebuild this site's keys if this machine is lost. It is not stored anywhere."
)


@app.command()
def init(
    site_id: Annotated[
        str,
        typer.Option(
            "--site-id",
            help=(
                "This hospital's name in the federation, agreed with the partner sites:"
                " 1-64 characters a-z, 0-9 and '-', e.g. st-marys."
            ),
        ),
    ],
    ae_title: Annotated[
        str,
        typer.Option(
            "--ae-title",
            help=(
                "The AE title your PACS will send studies to, e.g. MESH_STMARYS:"
                " 1-16 characters, unique in your DICOM network."
            ),
        ),
    ],
    directory: Annotated[
        Path,
        typer.Option(
            "--dir",
            help=(
                "New or empty directory for the site's config, key and data. It will hold"
                " patient data: use an encrypted, access-controlled disk."
            ),
        ),
    ],
    dicom_port: Annotated[
        int, typer.Option("--dicom-port", help="TCP port the node listens on for DICOM.")
    ] = 11112,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print one JSON object (config, fingerprint, recovery_phrase)."
        ),
    ] = False,
) -> None:
    """Set up a new meshpacs site in a new or empty directory.

    Writes config.toml, with every setting explained in comments (review it
    before starting the node), creates the data directories and generates
    the site key, kept in site.key and readable only by this user.

    Prints the site's recovery phrase once. Write the recovery phrase down on
    paper and keep it in a safe: it is the only way to rebuild the site's
    keys, and so to restore its backups, if this machine is lost. meshpacs
    does not store it anywhere. The fingerprint printed with it lets you
    check later that a typed phrase belongs to this site.
    """
    try:
        created = create_site(directory, site_id, ae_title, dicom_port)
    except MeshError as exc:
        typer.echo(f"meshpacs init: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        payload = {
            "config": str(created.config_path),
            "fingerprint": created.fingerprint,
            "recovery_phrase": created.phrase,
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    typer.echo(f"Created a meshpacs site in {created.config_path.parent}")
    typer.echo(f"  config:      {created.config_path}")
    typer.echo(f"  fingerprint: {created.fingerprint}")
    typer.echo("")
    typer.echo("Recovery phrase (shown only now):")
    typer.echo("")
    typer.echo(f"    {created.phrase}")
    typer.echo("")
    typer.echo(textwrap.fill(_PHRASE_WARNING, width=78))
    typer.echo("Note the fingerprint with it: a phrase typed back must give the same one.")
    typer.echo("")
    typer.echo(
        textwrap.fill(
            f"Next: review {created.config_path}, then register this machine on your PACS"
            " as a DICOM destination with the AE title and port set there.",
            width=78,
        )
    )


node_app = typer.Typer(
    help="Run this site's node: the DICOM AE your PACS sends studies to.",
    no_args_is_help=True,
)
app.add_typer(node_app, name="node")


@node_app.command("run")
def node_run(
    config: Annotated[
        Path, typer.Option("--config", help="The site's config.toml, as written by meshpacs init.")
    ],
) -> None:
    """Run the node in the foreground until stopped.

    Listens for DICOM associations from your PACS (C-ECHO, C-STORE) on the AE
    title and port in the config, keeps every instance exactly as received and
    acknowledges it only once it is safely on disk. Logs go to standard error;
    SIGTERM or Ctrl-C stops the node after the transfers in flight finish
    (those still running after 10 s are aborted; the PACS sends them again).
    Suitable for a systemd service with Type=simple.
    """
    try:
        node_config = load_config(config)
        load_site_secret(node_config.key_file)  # refuse a site whose key is missing or exposed
    except MeshError as exc:
        typer.echo(f"meshpacs node run: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging(node_config.logging.level)
    asyncio.run(run_node(node_config))


federation_app = typer.Typer(
    help=(
        "Join hospitals into a federation: the administrator's certificate authority (CA),"
        " each site's node certificate, and revoking a site."
    ),
    no_args_is_help=True,
)
app.add_typer(federation_app, name="federation")

_CA_DIR_HELP = "The federation CA directory, as made by meshpacs federation create."
_CONFIG_HELP = "The site's config.toml, as written by meshpacs init."
_JSON_HELP = "Print one JSON object for scripts."
_MAX_INPUT_BYTES = 4 * 1024 * 1024  # a CRL is the largest file read; certs.MAX_CRL_BYTES


def _fail(command: str, exc: Exception) -> typer.Exit:
    typer.echo(f"meshpacs federation {command}: {exc}", err=True)
    return typer.Exit(2)


def _site(config: Path) -> tuple[NodeConfig, NodeIdentity, SiteFederationFiles]:
    node_config = load_config(config)
    identity = NodeIdentity.from_secret(load_site_secret(node_config.key_file))
    return node_config, identity, SiteFederationFiles.for_site(node_config.data_dir)


def _read_input(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as stream:
            data = stream.read(_MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise FederationError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_INPUT_BYTES:
        raise FederationError(f"{what} {path} is over {_MAX_INPUT_BYTES} bytes; it is not one")
    return data


def _write_output(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise FederationError(f"cannot write {path}: {exc.strerror or exc}") from None


def _member_json(member: Member) -> dict[str, str]:
    return {
        "site_id": member.site_id,
        "node_id": member.node_id.hex(),
        "serial": f"{member.serial:x}",
        "not_after": member.not_after.isoformat(),
        "fingerprint": member.fingerprint,
    }


def _echo_json(payload: Mapping[str, object]) -> None:
    typer.echo(json.dumps(payload, indent=2, sort_keys=True))


@federation_app.command("create")
def federation_create(
    name: Annotated[
        str,
        typer.Option(
            "--name",
            help='The federation\'s name, shown in every certificate, e.g. "North Region Mesh".',
        ),
    ],
    directory: Annotated[
        Path,
        typer.Option(
            "--dir",
            help=(
                "New or empty directory for the CA. It will hold the CA key: keep it on an"
                " access-controlled machine, ideally offline, and back it up."
            ),
        ),
    ],
    days: Annotated[
        int, typer.Option("--days", help="Days the CA certificate is valid (about 10 years).")
    ] = CA_DAYS,
    crl_days: Annotated[
        int,
        typer.Option("--crl-days", help="Days before the revocation list must be issued again."),
    ] = CRL_DAYS,
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Create a federation's certificate authority (CA), run once by its administrator.

    Writes ca.key (the CA's private key, readable only by you), ca.pem (the CA
    certificate every site installs), crl.pem (the revocation list, empty for now)
    and issued/ (every node certificate signed). Whoever holds ca.key decides who
    belongs to the federation: protect and back it up like a root password.

    Prints the CA fingerprint: give it to each site with ca.pem, so that they can
    check the ca.pem they received is yours.
    """
    try:
        ca = create_federation_ca(directory, name, days=days, crl_days=crl_days)
    except MeshError as exc:
        raise _fail("create", exc) from None
    if as_json:
        _echo_json(
            {
                "dir": str(ca.directory),
                "name": ca.name,
                "ca_cert": str(ca.cert_path),
                "crl": str(ca.crl_path),
                "fingerprint": ca.fingerprint,
                "not_after": ca.certificate.not_valid_after_utc.isoformat(),
            }
        )
        return
    typer.echo(f"Created the federation CA {ca.name!r} in {ca.directory}")
    typer.echo(f"  CA key:          {ca.key_path}  (secret: keep it safe and backed up)")
    typer.echo(f"  CA certificate:  {ca.cert_path}")
    typer.echo(f"  revocation list: {ca.crl_path}")
    typer.echo(f"  fingerprint:     {ca.fingerprint}")
    typer.echo("")
    typer.echo(
        textwrap.fill(
            "Next: each site runs meshpacs federation request and sends you the request;"
            " sign it with meshpacs federation sign and send back the certificate with"
            " ca.pem and crl.pem. On one machine, meshpacs federation enroll does all of it.",
            width=78,
        )
    )


@federation_app.command("request")
def federation_request(
    config: Annotated[Path, typer.Option("--config", help=_CONFIG_HELP)],
    out: Annotated[
        Path, typer.Option("--out", help="Where to write the request (e.g. st-marys.csr).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Make this site's certificate request, to send to the federation administrator.

    The request names this site and carries its public identity key, derived from
    the site key (so a site rebuilt from its recovery phrase makes the same one).
    It holds no secret. Tell the administrator the node ID printed here by phone
    or in person: they check it against the request before signing.
    """
    try:
        node_config, identity, _ = _site(config)
        _write_output(out, make_csr(identity, node_config.site.id))
    except MeshError as exc:
        raise _fail("request", exc) from None
    if as_json:
        _echo_json(
            {"site_id": node_config.site.id, "node_id": identity.node_id.hex(), "csr": str(out)}
        )
        return
    typer.echo(f"Wrote the certificate request of site {node_config.site.id!r} to {out}")
    typer.echo(f"  node ID: {identity.node_id.hex()}")
    typer.echo("Send it to the federation administrator and confirm the node ID with them.")


@federation_app.command("sign")
def federation_sign(
    directory: Annotated[Path, typer.Option("--dir", help=_CA_DIR_HELP)],
    csr: Annotated[Path, typer.Option("--csr", help="The site's request file.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the node certificate.")],
    days: Annotated[int, typer.Option("--days", help="Days the certificate is valid.")] = NODE_DAYS,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help=(
                "The site already holds a certificate for another key (it was rebuilt with a"
                " new site key): revoke that one and sign this one."
            ),
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Sign a site's certificate request, making it a member of the federation.

    Before signing, check with the site (by phone or in person) that the node ID
    printed here is the one their meshpacs federation request printed: the request
    file alone does not prove who sent it. Then send the certificate back with the
    CA's ca.pem and crl.pem; the site installs them with meshpacs federation install.
    """
    try:
        ca = FederationCA(directory)
        issued = ca.sign_csr(_read_input(csr, "certificate request"), days=days, replace=replace)
        _write_output(out, issued.pem)
    except MeshError as exc:
        raise _fail("sign", exc) from None
    node_id = node_id_for(issued.public_key).hex()
    if as_json:
        _echo_json(
            {
                "site_id": issued.site_id,
                "node_id": node_id,
                "serial": f"{issued.serial:x}",
                "not_after": issued.not_after.isoformat(),
                "cert": str(out),
                "ca_cert": str(ca.cert_path),
                "crl": str(ca.crl_path),
            }
        )
        return
    typer.echo(f"Signed a node certificate for site {issued.site_id!r}: {out}")
    typer.echo(f"  node ID: {node_id}")
    typer.echo(f"  serial:  {issued.serial:x}")
    typer.echo(f"  valid until {issued.not_after:%Y-%m-%d}")
    typer.echo(f"Send it with {ca.cert_path} and {ca.crl_path} to the site.")


@federation_app.command("enroll")
def federation_enroll(
    directory: Annotated[Path, typer.Option("--dir", help=_CA_DIR_HELP)],
    config: Annotated[Path, typer.Option("--config", help=_CONFIG_HELP)],
    days: Annotated[int, typer.Option("--days", help="Days the certificate is valid.")] = NODE_DAYS,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace", help="Revoke a certificate the site holds for another key, if any."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Request, sign and install a site's certificate in one step.

    For when the CA directory and the site are on the same machine (a test bed, or
    an administrator enrolling a site on its own server): same result as request,
    sign and install.
    """
    try:
        node_config, identity, files = _site(config)
        member = enroll_site(
            FederationCA(directory),
            files,
            identity,
            node_config.site.id,
            days=days,
            replace=replace,
        )
    except MeshError as exc:
        raise _fail("enroll", exc) from None
    if as_json:
        _echo_json(_member_json(member) | {"dir": str(files.directory)})
        return
    typer.echo(f"Site {member.site_id!r} joined the federation; files in {files.directory}")
    typer.echo(f"  node ID: {member.node_id.hex()}")
    typer.echo(f"  serial:  {member.serial:x}, valid until {member.not_after:%Y-%m-%d}")


@federation_app.command("revoke")
def federation_revoke(
    directory: Annotated[Path, typer.Option("--dir", help=_CA_DIR_HELP)],
    site_id: Annotated[
        str | None,
        typer.Option("--site-id", help="Revoke every live certificate of this site."),
    ] = None,
    serial: Annotated[
        str | None,
        typer.Option("--serial", help="Revoke the one certificate with this serial (hex)."),
    ] = None,
    crl_days: Annotated[
        int,
        typer.Option("--crl-days", help="Days before the revocation list must be issued again."),
    ] = CRL_DAYS,
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Remove a site from the federation by revoking its certificate.

    Writes a new crl.pem. It takes effect at each site once installed there: send
    it to every site and have them run meshpacs federation install --crl. A
    revoked node can no longer connect to, store on or fetch from sites that have
    the new list.
    """
    if (site_id is None) == (serial is None):
        raise typer.BadParameter("give exactly one of --site-id and --serial")
    try:
        ca = FederationCA(directory)
        if site_id is not None:
            revoked = ca.revoke(site_id=site_id, crl_days=crl_days)
        else:
            assert serial is not None
            revoked = ca.revoke(serial=parse_serial(serial), crl_days=crl_days)
        crl_no = crl_number(ca.crl())
    except MeshError as exc:
        raise _fail("revoke", exc) from None
    serials = [f"{s:x}" for s in revoked]
    if as_json:
        _echo_json({"revoked": serials, "crl": str(ca.crl_path), "crl_number": crl_no})
        return
    typer.echo(f"Revoked {', '.join(serials)}; revocation list number {crl_no}: {ca.crl_path}")
    typer.echo(
        textwrap.fill(
            "Send it to every site; each installs it with: meshpacs federation install"
            " --config SITE_CONFIG --crl crl.pem",
            width=78,
        )
    )


@federation_app.command("crl")
def federation_crl(
    directory: Annotated[Path, typer.Option("--dir", help=_CA_DIR_HELP)],
    days: Annotated[
        int, typer.Option("--days", help="Days before it must be issued again.")
    ] = CRL_DAYS,
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Issue the revocation list again, before it goes stale.

    A site refuses every peer once its revocation list is past its next-update
    date, so issue it again (and install it at every site) well before then.
    """
    try:
        crl = FederationCA(directory).publish_crl(days=days)
    except MeshError as exc:
        raise _fail("crl", exc) from None
    next_update = crl.next_update_utc
    assert next_update is not None
    if as_json:
        _echo_json({"crl_number": crl_number(crl), "next_update": next_update.isoformat()})
        return
    typer.echo(
        f"Issued revocation list number {crl_number(crl)}, valid until {next_update:%Y-%m-%d}"
    )


@federation_app.command("install")
def federation_install(
    config: Annotated[Path, typer.Option("--config", help=_CONFIG_HELP)],
    ca_file: Annotated[
        Path | None,
        typer.Option("--ca", help="The federation CA certificate (ca.pem) from the administrator."),
    ] = None,
    cert_file: Annotated[
        Path | None,
        typer.Option("--cert", help="This site's node certificate from the administrator."),
    ] = None,
    crl_file: Annotated[
        Path | None,
        typer.Option("--crl", help="The federation's revocation list (crl.pem)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Install the federation's files at this site, after checking them.

    Checks that the certificate was issued by that CA for this site and this
    site's key, and is current and not revoked, before copying anything. Give
    what you received: --ca, --cert and --crl the first time, --crl alone for a
    new revocation list. A running node uses a new revocation list on its next
    connection. Compare the printed CA fingerprint with the administrator's.
    """
    try:
        node_config, identity, files = _site(config)
        member = install_federation_files(
            files,
            identity,
            node_config.site.id,
            ca_pem=None if ca_file is None else _read_input(ca_file, "CA certificate"),
            cert_pem=None if cert_file is None else _read_input(cert_file, "node certificate"),
            crl_pem=None if crl_file is None else _read_input(crl_file, "revocation list"),
        )
        federation = files.federation()
    except MeshError as exc:
        raise _fail("install", exc) from None
    if as_json:
        _echo_json(
            _member_json(member)
            | {
                "dir": str(files.directory),
                "ca_fingerprint": federation.ca_fingerprint,
                "crl_number": crl_number(federation.crl),
            }
        )
        return
    typer.echo(f"Installed the federation files of site {member.site_id!r} in {files.directory}")
    typer.echo(f"  CA fingerprint: {federation.ca_fingerprint}")
    typer.echo(f"  serial:         {member.serial:x}, valid until {member.not_after:%Y-%m-%d}")
    typer.echo(f"  revocation list number {crl_number(federation.crl)}")


def main() -> None:
    sys.exit(app())
