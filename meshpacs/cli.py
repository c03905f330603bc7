"""The ``meshpacs`` command: a thin layer over the library, for PACS administrators."""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from meshpacs import __version__
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


def main() -> None:
    sys.exit(app())
