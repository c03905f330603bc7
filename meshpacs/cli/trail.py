"""``meshpacs audit ...``: the site's ATNA audit trail, checked.

(``meshpacs/audit/`` is something else: the proof-of-storage challenges partners answer.)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from meshpacs.errors import MeshError
from meshpacs.keys.secret import audit_trail_key
from meshpacs.node.config import load_config
from meshpacs.node.site import load_site_secret
from meshpacs.trail import TrailReport, trail_dir, verify
from meshpacs.trail.log import HEAD_FILE, LOG_FILE

__all__ = ["trail_app"]

# Exit statuses of ``verify``.
INTACT, BROKEN, UNUSABLE, NO_TRAIL = 0, 1, 2, 3

trail_app = typer.Typer(
    help=(
        "The site's audit trail: every security-relevant event (node start and stop,"
        " studies received, queries, studies forgotten, recoveries) as a DICOM / IHE ATNA"
        " audit message, in a tamper-evident log in the site's data directory."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",  # docstring paragraphs rewrapped, not kept line by line
)


@trail_app.command("verify")
def audit_verify(
    config: Annotated[Path, typer.Option("--config", help="The site's config.toml.")],
    trail: Annotated[
        Path | None,
        typer.Option(
            "--trail",
            help=(
                "Check the trail in this directory instead of the site's own (e.g. a"
                " recovery's WORKDIR/trail), with the same site's key."
            ),
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Check that the audit trail is complete and unchanged since it was written.

    Reads every entry of the trail in the site's data directory (DATA_DIR/trail) and
    checks it against the site's key: each entry must be unchanged, follow the one
    before it, and carry the site's seal, and the log must end where its sealed head
    says. Any change, removal, insertion, reordering or truncation of an entry, and any
    entry added by someone without the site's key, is reported with the number of the
    first bad entry. Works whether or not the node is running; reads only.

    Exit status: 0 intact; 1 changed, cut short or forged (keep the files as evidence
    and tell your security officer); 2 the config or site key cannot be used; 3 there is
    no audit trail yet (the node has never run), or it was deleted.
    """
    try:
        site = load_config(config)
        key = audit_trail_key(load_site_secret(site.key_file))
    except MeshError as exc:
        typer.echo(f"meshpacs audit verify: {exc}", err=True)
        raise typer.Exit(UNUSABLE) from None
    directory = trail if trail is not None else trail_dir(site.data_dir)
    report = verify(directory, key)
    missing = not (directory / LOG_FILE).exists() and not (directory / HEAD_FILE).exists()
    code = INTACT if report.ok else NO_TRAIL if missing else BROKEN
    if as_json:
        typer.echo(json.dumps(report.to_json() | {"exit_code": code}, indent=2))
    else:
        _explain(report, missing)
    raise typer.Exit(code)


def _explain(report: TrailReport, missing: bool) -> None:
    if missing:
        typer.echo(
            f"meshpacs audit verify: there is no audit trail in {report.directory}: nothing"
            " has been recorded yet (the node writes one when it first starts), or it was"
            " deleted",
            err=True,
        )
        return
    if not report.ok:
        where = f" at entry {report.first_bad}" if report.first_bad is not None else ""
        typer.echo(f"AUDIT TRAIL BROKEN{where}: {report.problem}", err=True)
        typer.echo(
            f"  {report.entries} entries before it are intact. Keep {report.directory}"
            " as it is for investigation.",
            err=True,
        )
        return
    span = ""
    if report.first_time_us is not None and report.last_time_us is not None:
        span = f", {_when(report.first_time_us)} to {_when(report.last_time_us)}"
    typer.echo(f"Audit trail intact: {report.entries} entries{span} ({report.directory})")
    for note in report.notes:
        typer.echo(f"  note: {note}")


def _when(time_us: int) -> str:
    return datetime.fromtimestamp(time_us / 1_000_000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
