"""``meshpacs federation ...``: the federation CA, node certificates, revocation, and the
authorisation to release a site's escrow shares (``authorize-recovery``)."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from meshpacs.durable import read_private
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
from meshpacs.federation.authorisation import (
    MAX_VALID_SECONDS,
    RecoveryAuthorisation,
    decode_request,
    load_ca_signing_key,
    recovery_code_matches,
    sign_authorisation,
    verify_authorisation,
)
from meshpacs.federation.certs import CA_DAYS, CRL_DAYS, NODE_DAYS, crl_number
from meshpacs.keys.identity import NodeIdentity, node_id_for
from meshpacs.node.config import NodeConfig, load_config
from meshpacs.node.site import load_site_secret

federation_app = typer.Typer(
    help=(
        "Join hospitals into a federation: the administrator's certificate authority (CA),"
        " each site's node certificate, and revoking a site."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",  # docstring paragraphs rewrapped, not kept line by line
)

_CA_DIR_HELP = "The federation CA directory, as made by meshpacs federation create."
_CONFIG_HELP = "The site's config.toml, as written by meshpacs init."
_JSON_HELP = "Print one JSON object for scripts."
_MAX_INPUT_BYTES = 4 * 1024 * 1024  # a CRL is the largest file read; certs.MAX_CRL_BYTES
_MAX_CA_KEY_BYTES = 4096  # an Ed25519 PKCS#8 PEM is 119 bytes


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


def _authorise(
    ca: FederationCA, request_file: Path, code: str, valid_hours: int
) -> tuple[bytes, RecoveryAuthorisation]:
    """The signed authorisation for the request in ``request_file``, once its code matches."""
    request = decode_request(_read_input(request_file, "recovery request"))
    if not recovery_code_matches(request.code, code):
        raise FederationError(
            f"the code {code[:40]!r} is not this request's: confirm the code with the person"
            " recovering the site, and check that the request file is theirs"
        )
    if not any(item.site_id == request.site_id for item in ca.issued()):
        raise FederationError(
            f"this CA never issued a certificate to site {request.site_id!r}; check the site ID"
        )
    key_pem = read_private(ca.key_path, _MAX_CA_KEY_BYTES, "federation CA key file")
    now = int(time.time())
    signed = sign_authorisation(
        request,
        load_ca_signing_key(key_pem, ca.certificate),
        ca.certificate,
        now=now,
        valid_seconds=valid_hours * 3600,
    )
    return signed, verify_authorisation(signed, ca.certificate, now=now)


@federation_app.command("authorize-recovery")
def federation_authorize_recovery(
    directory: Annotated[Path, typer.Option("--dir", help=_CA_DIR_HELP)],
    request: Annotated[
        Path,
        typer.Option("--request", help="The request file made by meshpacs escrow request."),
    ],
    code: Annotated[
        str,
        typer.Option(
            "--code",
            help=(
                "The request's code, as the recovering site's administrator read it to you"
                " (by phone or in person, not in the mail that brought the request)."
            ),
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Where to write the authorisation.")],
    valid_hours: Annotated[
        int,
        typer.Option(
            "--valid-hours",
            min=1,
            max=MAX_VALID_SECONDS // 3600,
            help="Hours the trusted peers may release shares on it.",
        ),
    ] = 24,
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Authorise a site's trusted peers to release its escrow shares (break glass).

    For a site that lost both its archive and its recovery phrase. The authorisation
    lets each trusted peer of the site hand its escrow share to the one machine that
    made the request, and to no other; with a majority of them, that machine rebuilds
    the site's key. Before authorising, make sure the request comes from the site's
    real administrator: ask them, by phone or in person, for the code their meshpacs
    escrow request printed and give it with --code. Send the authorisation file to
    them; they show it to the trusted peers.
    """
    try:
        ca = FederationCA(directory)
        if out.exists():
            raise FederationError(f"{out} already exists; name a new file")
        signed, granted = _authorise(ca, request, code, valid_hours)
        _write_output(out, signed)
    except MeshError as exc:
        raise _fail("authorize-recovery", exc) from None
    site_id = granted.site_id
    expires = datetime.fromtimestamp(granted.expires_at, UTC)
    if as_json:
        _echo_json(
            {
                "site_id": site_id,
                "request_id": granted.request_id.hex(),
                "code": granted.code,
                "expires_at": expires.isoformat(),
                "authorisation": str(out),
            }
        )
        return
    typer.echo(f"Authorised the recovery of site {site_id!r} from its escrow shares: {out}")
    typer.echo(f"  request ID: {granted.request_id.hex()}")
    typer.echo(f"  code:       {granted.code}")
    typer.echo(f"  valid until {expires:%Y-%m-%d %H:%M}Z")
    typer.echo(
        textwrap.fill(
            "Send it to the recovering site's administrator. Each trusted peer of the site"
            " releases its share with meshpacs escrow release --authorisation FILE.",
            width=78,
        )
    )
