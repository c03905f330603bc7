"""``meshpacs node leave``: hand back every share held for partners before the site goes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from meshpacs.errors import MeshError
from meshpacs.node.config import load_config

__all__ = ["node_leave"]


def node_leave(
    config: Annotated[Path, typer.Option("--config", help="The site's config.toml.")],
    yes: Annotated[
        bool, typer.Option("--yes", help="Do not ask for confirmation (for scripts).")
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            help="Seconds to follow the hand-over (0: file the request only). The node"
            " carries on after this either way.",
        ),
    ] = 3600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Leave the federation: hand the shares held here for partners to other sites.

    The running node stops taking new shares and tells each partner (at its next audit)
    that it is leaving; each partner then rebuilds its shares on other sites and asks this
    node to delete its copies. This command follows the hand-over until nothing is held
    here, then says the node may be stopped for good. This site's own backups at
    partners are not touched (they expire with their leases; `meshpacs forget` removes a
    study at once). Exit status: 0 when nothing is held any more, 1 when shares are still
    held at --timeout (the node carries on), 2 for an unusable config.
    """
    from meshpacs.node.leave import HeldNow, request_leave, wait_until_empty

    try:
        site = load_config(config)
        if not site.mesh.enabled:
            raise MeshError("the mesh is off ([mesh] enabled = false): this site is in none")
        if not yes and not typer.confirm(
            "Leave the federation? This node will take no new shares from partners."
        ):
            raise typer.Exit(2)
        request = request_leave(site)
    except MeshError as exc:
        typer.echo(f"meshpacs node leave: {exc}", err=True)
        raise typer.Exit(2) from None

    def progress(held: HeldNow) -> None:
        if not as_json:
            typer.echo(f"  still holding {held.fragments} shares for {held.owners} partner sites")

    if not as_json:
        typer.echo("Leaving: the running node hands over what it holds (see its log).")
    held = wait_until_empty(site, timeout, progress)
    if as_json:
        document = {**request, "fragments_held": held.fragments, "owners": held.owners}
        typer.echo(json.dumps(document, indent=2))
    elif held.fragments == 0:
        typer.echo("Nothing held for partners any more: the node may be stopped for good.")
    else:
        typer.echo(
            f"Still holding {held.fragments} shares for {held.owners} sites; the node carries"
            " on. Run this command again to follow it."
        )
    if held.fragments:
        raise typer.Exit(1)
