"""``meshpacs forget``: forget one study here and at every partner, for good."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from meshpacs.errors import MeshError
from meshpacs.node.config import load_config

__all__ = ["forget"]


def forget(
    config: Annotated[Path, typer.Option("--config", help="The site's config.toml.")],
    study: Annotated[
        str, typer.Option("--study", help="The Study Instance UID of the study to forget.")
    ],
    yes: Annotated[
        bool, typer.Option("--yes", help="Do not ask for confirmation (for scripts).")
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            help="Seconds to wait for the running node to finish (0: file the request only).",
        ),
    ] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Forget a study: delete it from this site and every backup of it, irreversibly.

    For a study that must not be kept (sent in error, a patient's objection, the end of
    its retention). The running node removes the study from this site's catalog and its
    files here, deletes its fragments at every partner holding them and its catalog
    record at every trusted peer; no restore can bring it back afterwards. Partners that
    cannot be reached are asked again until they answer (a fragment is given up after 20
    tries: its lease, no longer renewed, then expires there). The request stays in the
    catalog as the record of who asked, when, and how much went; `meshpacs status` shows
    requests still in progress. Logs never name the study.

    Exit status: 0 done, 1 still in progress after --wait (the node carries on), 2 no
    such study or an unusable config.
    """
    from meshpacs.node.forget import file_request, forget_here, wait_for

    try:
        site = load_config(config)
        if not yes and not typer.confirm(
            "Forget this study here and at every partner? This cannot be undone."
        ):
            raise typer.Exit(2)
        ref = asyncio.run(file_request(site, study))
        if ref is None:
            raise MeshError("this site's catalog holds no study with that Study Instance UID")
        if not site.mesh.enabled:
            asyncio.run(forget_here(site))
        report = asyncio.run(wait_for(site, ref, wait))
    except MeshError as exc:
        typer.echo(f"meshpacs forget: {exc}", err=True)
        raise typer.Exit(2) from None
    _answer(report, as_json)
    if report.get("state") != "done":
        raise typer.Exit(1)


def _answer(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    ref, state = report["id"], report["state"]
    if state == "pending":
        typer.echo(
            f"Request {ref} filed; the node has not acted on it yet (is it running?)."
            " It will when it runs; see meshpacs status."
        )
        return
    typer.echo(
        f"Request {ref}: study removed from this site ({report['instances']} instances,"
        f" {report['bundles']} bundles)."
    )
    if state == "done":
        typer.echo(
            f"  Deleted at partners: {report['fragments']} fragments,"
            f" {report['records']} catalog records (or already gone)."
        )
    else:
        typer.echo(
            f"  {report['deletions_waiting']} deletions at partners still waiting for them"
            " to answer; the node keeps trying (see meshpacs status)."
        )
