"""``meshpacs node restore-catalog``, and the recovery phrase a rebuilt site is set up from."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from meshpacs.durable import read_bounded
from meshpacs.errors import MeshError
from meshpacs.keys import SiteSecret
from meshpacs.node.config import load_config
from meshpacs.node.logs import configure_logging

__all__ = ["read_phrase_file", "restore_catalog"]

_MAX_PHRASE_FILE = 64 * 1024


def read_phrase_file(path: Path, command: str) -> SiteSecret:
    """The site secret from a file holding its recovery phrase; exits 2 with the reason."""
    try:
        text = read_bounded(path, _MAX_PHRASE_FILE, "phrase file").decode("utf-8", "replace")
        return SiteSecret.from_phrase(text)
    except MeshError as exc:
        typer.echo(f"meshpacs {command}: {exc}", err=True)
        raise typer.Exit(2) from None


def restore_catalog(
    config: Annotated[
        Path, typer.Option("--config", help="The site's config.toml, as written by meshpacs init.")
    ],
    peer: Annotated[
        list[str] | None,
        typer.Option("--peer", help="A site to ask (repeatable; default: mesh.trusted_peers)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON report.")] = False,
) -> None:
    """Get this site's catalog back from its trusted peers (a site rebuilt from its phrase).

    For a site set up again on a new machine: meshpacs init --phrase-file,
    then meshpacs federation install, with the mesh settings of the config
    (bootstrap, trusted_peers) as before. Joins the federation with the
    site's identity, fetches the sealed catalog records its trusted peers
    keep for it, opens them with the site's key and imports every patient,
    study, series and instance, with where its encrypted fragments are.

    No image comes back now: once the node runs, it answers C-FIND over the
    whole archive, and a C-MOVE or C-GET gathers the instances from the
    partners. Run it before meshpacs node run; running it again adds nothing
    twice. Exit status 0 when a peer answered and every record it sent was
    imported.
    """
    from meshpacs.node.catalog_restore import restore_catalog as restore_site_catalog

    if not logging.getLogger().handlers:  # as basicConfig: an embedding keeps its own
        configure_logging("WARNING")

    def say(line: str) -> None:
        typer.echo(line, err=True)

    try:
        node_config = load_config(config)
        report = asyncio.run(restore_site_catalog(node_config, peers=tuple(peer or ()), say=say))
    except MeshError as exc:
        typer.echo(f"meshpacs node restore-catalog: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report.as_json(), indent=2))
    else:
        counts = report.imported
        typer.echo(
            f"Site {report.site_id}: {report.records_received} records from"
            f" {len(report.peers_asked) - len(report.peers_failed)} of"
            f" {len(report.peers_asked)} peers; new in the catalog: {counts.patients} patients,"
            f" {counts.studies} studies, {counts.series} series, {counts.instances} instances,"
            f" {counts.bundles} bundles"
        )
        if counts.not_backed_up:
            typer.echo(f"  {counts.not_backed_up} instances were in no stored bundle: not imported")
    raise typer.Exit(0 if report.ok else 1)
