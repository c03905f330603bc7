"""``meshpacs escrow ...``: recovering a site that lost its phrase, from its trusted peers.

The administrators' procedure, step by step, is ``docs/escrow.md``: ``request`` on the
recovering machine, ``federation authorize-recovery`` at the federation administrator,
``release`` at each of t trusted peers, then ``meshpacs recover --escrow-release ...``.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from meshpacs.durable import read_bounded
from meshpacs.errors import MeshError
from meshpacs.federation.authorisation import MAX_AUTHORISATION_BYTES
from meshpacs.node.config import load_config

__all__ = ["escrow_app"]

escrow_app = typer.Typer(
    help=(
        "Rebuild a site that lost its recovery phrase from the escrow shares its trusted"
        " peers hold, with the federation administrator's authorisation."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",  # docstring paragraphs rewrapped, not kept line by line
)

_JSON_HELP = "Print one JSON object for scripts."


def _fail(command: str, exc: Exception) -> typer.Exit:
    typer.echo(f"meshpacs escrow {command}: {exc}", err=True)
    return typer.Exit(2)


def _echo_json(payload: Mapping[str, object]) -> None:
    typer.echo(json.dumps(payload, indent=2, sort_keys=True))


def _fill(text: str) -> None:
    typer.echo(textwrap.fill(text, width=78))


@escrow_app.command("request")
def escrow_request(
    site_id: Annotated[str, typer.Option("--site-id", help="The site to recover.")],
    workdir: Annotated[
        Path,
        typer.Option(
            "--workdir",
            help=(
                "The recovery's working directory on this machine (give the same one to"
                " meshpacs recover). The request's private key stays in it."
            ),
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Ask for this site's escrow shares, when its recovery phrase is lost too.

    Makes a one-off key pair for this recovery (the private key stays in WORKDIR,
    readable only by you) and a request file naming the site and the public key.
    Send the request file to the federation administrator, and read them the code
    printed here over the phone or in person: they authorise only a request whose
    code you confirmed.
    """
    from meshpacs.recovery.escrow import create_request

    try:
        created = create_request(workdir, site_id, int(time.time()))
    except MeshError as exc:
        raise _fail("request", exc) from None
    request = created.request
    if as_json:
        _echo_json(
            {
                "site_id": request.site_id,
                "request_id": request.request_id.hex(),
                "code": request.code,
                "request": str(created.request_path),
                "key": str(created.key_path),
            }
        )
        return
    typer.echo(f"Wrote a recovery request for site {request.site_id!r}: {created.request_path}")
    typer.echo(f"  request ID: {request.request_id.hex()}")
    typer.echo(f"  code:       {request.code}")
    typer.echo(f"  key:        {created.key_path}  (private: never send it)")
    typer.echo("")
    _fill(
        "Send the request file to the federation administrator and read them the code."
        " With their authorisation file, ask the administrators of a majority of this"
        " site's trusted peers to run meshpacs escrow release, and collect their release"
        " files. Then run meshpacs recover with --escrow-release FILE (once per file)"
        f" and --workdir {workdir}."
    )


@escrow_app.command("release")
def escrow_release(
    config: Annotated[
        Path, typer.Option("--config", help="This (trusted peer) site's config.toml.")
    ],
    authorisation: Annotated[
        Path,
        typer.Option("--authorisation", help="The federation administrator's authorisation file."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Where to write the release (a new file).")],
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Release the escrow share this site holds for a site being recovered.

    Checks the authorisation against this site's federation CA, opens the share
    this site holds for the site it names, and seals it again so that only the
    recovering machine's request key can open it. Works whether or not this
    site's node is running. Every attempt is recorded in the node's
    state/escrow-audit.log. Before releasing, you may confirm the printed code with
    the recovering site's administrator. Send the release file to them.
    """
    from meshpacs.node.escrow_release import AUDIT_FILE, release_escrow_share

    try:
        node_config = load_config(config)
        data = read_bounded(authorisation, MAX_AUTHORISATION_BYTES, "authorisation file")
        released = release_escrow_share(node_config, data, out)
    except MeshError as exc:
        raise _fail("release", exc) from None
    expires = datetime.fromtimestamp(released.expires_at, UTC)
    if as_json:
        _echo_json(
            {
                "site_id": released.owner_site,
                "released_by": released.releasing_site,
                "request_id": released.request_id,
                "code": released.code,
                "expires_at": expires.isoformat(),
                "release": str(released.path),
            }
        )
        return
    typer.echo(
        f"Site {released.releasing_site!r} released its escrow share of site"
        f" {released.owner_site!r}: {released.path}"
    )
    typer.echo(f"  request ID: {released.request_id}")
    typer.echo(f"  code:       {released.code}")
    typer.echo(f"  authorised until {expires:%Y-%m-%d %H:%M}Z; recorded in state/{AUDIT_FILE}")
    _fill(
        "Only the recovering machine that made this request can open the release."
        " Send it to the recovering site's administrator."
    )
