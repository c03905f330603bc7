"""The ``meshpacs`` command: a thin layer over the library, for PACS administrators.

Each command imports the library modules it runs in its own body, not here: loading the
whole node (pydicom, pynetdicom, the web server, the mesh) takes most of a second, which
``meshpacs --help``, ``status`` and above all ``recover``, timed against a PACS's own
copy, should not wait for. ``tests/test_cli_imports.py`` keeps it so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from meshpacs import __version__
from meshpacs.cli.catalog import read_phrase_file, restore_catalog
from meshpacs.cli.escrow import escrow_app
from meshpacs.cli.federation import federation_app
from meshpacs.cli.forget import forget
from meshpacs.cli.leave import node_leave
from meshpacs.cli.recover import recover
from meshpacs.cli.testbed import testbed_app
from meshpacs.cli.trail import trail_app
from meshpacs.errors import MeshError
from meshpacs.node.config import load_config
from meshpacs.node.logs import configure_logging

app = typer.Typer(
    name="meshpacs",
    help=(
        "meshpacs backs up a hospital's PACS onto partner hospitals: studies are encrypted,"
        " cut into k-of-n fragments and spread over the federation, and can be rebuilt"
        " byte for byte from any k of them."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",  # docstring paragraphs rewrapped, not kept line by line
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
    from meshpacs.selftest import run_selftest

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
    " rebuild this site's keys if this machine is lost. This machine keeps the same secret"
    " in site.key: protect its disk as you protect the paper."
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
    phrase_file: Annotated[
        Path | None,
        typer.Option(
            "--phrase-file",
            help=(
                "Set up an existing site again on a new machine: the file holding its"
                " recovery phrase. Keys and node identity come back; then install its"
                " federation files and run meshpacs node restore-catalog."
            ),
        ),
    ] = None,
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
    from meshpacs.node.site import create_site

    try:
        secret = read_phrase_file(phrase_file, "init") if phrase_file is not None else None
        created = create_site(directory, site_id, ae_title, dicom_port, secret=secret)
    except MeshError as exc:
        typer.echo(f"meshpacs init: {exc}", err=True)
        raise typer.Exit(2) from None
    if secret is not None:  # a rebuilt site: its phrase is on paper already, never printed
        rebuilt = {"config": str(created.config_path), "fingerprint": created.fingerprint}
        typer.echo(
            json.dumps(rebuilt, indent=2)
            if as_json
            else f"Set up site {site_id} again from its phrase in {created.config_path.parent}"
            f" (fingerprint {created.fingerprint}: the one noted with the phrase)"
        )
        return
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
    rich_markup_mode="markdown",  # docstring paragraphs rewrapped, not kept line by line
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
    from meshpacs.node.daemon import run_node
    from meshpacs.node.site import load_site_secret

    try:
        node_config = load_config(config)
        load_site_secret(node_config.key_file)  # refuse a site whose key is missing or exposed
    except MeshError as exc:
        typer.echo(f"meshpacs node run: {exc}", err=True)
        raise typer.Exit(2) from None
    log = node_config.logging
    configure_logging(log.level, log.format, log.log_phi)
    try:
        asyncio.run(run_node(node_config))
    except MeshError as exc:  # a node that cannot start (or go on) says why, in one line
        typer.echo(f"meshpacs node run: {exc}", err=True)
        raise typer.Exit(2) from None


node_app.command("restore-catalog")(restore_catalog)
node_app.command("leave")(node_leave)
app.add_typer(federation_app, name="federation")
app.add_typer(escrow_app, name="escrow")
app.add_typer(testbed_app, name="testbed")
app.add_typer(trail_app, name="audit")
app.command()(recover)
app.command()(forget)


@app.command()
def status(
    config: Annotated[Path, typer.Option("--config", help="The site's config.toml.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """How well this site's studies are protected, and which partner sites are online.

    Studies: protected (every bundle stored at n partner sites), degraded (protected,
    but some bundle on fewer than n sites; repair rebuilds it once it falls below the
    repair threshold) and unprotected (not
    yet backed up). Audits: how the partners holding this site's shares answered when
    asked to prove they still keep them (ok, failed: the bytes changed, missing: gone).
    Peers: the member sites the running node sees and the trusted peers from the config,
    each with its audit record (reputation 0 to 1; "shunned" peers get no new shares).
    Scrub: the last check of the shares this site keeps for partners. Space, per peer:
    what this node holds for it and what it holds of this site. Warnings come first,
    each with a stable code (in --json: "warnings", a list of {code, message}). Works
    whether or not the node is running.
    """
    from meshpacs.node.status import site_status

    try:
        report = site_status(load_config(config))
    except MeshError as exc:
        typer.echo(f"meshpacs status: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    studies = report["studies"]
    typer.echo(f"Site {report['site_id']}")
    _echo_warnings(report["warnings"])
    typer.echo(
        f"  studies: {studies['total']} total, {studies['protected']} protected,"
        f" {studies['degraded']} degraded, {studies['unprotected']} not yet protected"
    )
    _echo_backlog(report["backlog"])
    if not report["mesh_enabled"]:
        typer.echo("  mesh: off ([mesh] enabled = false): studies are kept here only")
    _echo_audits(report["audits"], report["scrub"])
    _echo_leases(report["leases"])
    _echo_delegate(report.get("delegate"))
    _echo_forgets(report["forgets"])
    if report["leaving"] is not None:
        leaving = report["leaving"]
        typer.echo(
            f"  LEAVING the federation (meshpacs node leave): still holding"
            f" {leaving['fragments_held']} shares for {leaving['owners']} partner sites"
        )
    for peer in report["peers"]:
        state = "online" if peer["online"] else "OFFLINE"
        trusted = ", trusted" if peer["trusted"] else ""
        typer.echo(f"  peer {peer['site_id']}: {state}{trusted}{_peer_audits(peer['audits'])}")
        typer.echo(f"    space: {_peer_space(peer['space'])}")


def _echo_warnings(warnings: list[dict[str, str]]) -> None:
    if not warnings:
        typer.echo("  no warnings")
        return
    typer.echo(f"  WARNINGS ({len(warnings)}):")
    for warning in warnings:
        typer.echo(f"  ! [{warning['code']}] {warning['message']}")


def _echo_backlog(backlog: dict[str, Any]) -> None:
    if backlog["studies"]:
        age = backlog["oldest_age_seconds"]
        waited = "?" if age is None else _ago(time.time() - age).removesuffix(" ago")
        typer.echo(f"  backlog: {backlog['studies']} studies waiting, the oldest for {waited}")


def _peer_space(space: dict[str, Any]) -> str:
    from meshpacs.recovery.report import format_size

    held_for, held_by = space["held_for_them"], space["held_by_them"]
    return (
        f"{held_for['fragments']} of its shares held here ({format_size(held_for['bytes'])}),"
        f" {held_by['shares']} of ours held there ({format_size(held_by['bytes'])})"
    )


def _echo_audits(audits: dict[str, Any], scrub: dict[str, Any] | None) -> None:
    placed = audits["placements"]
    if placed:
        typer.echo(
            f"  shares at partners: {placed['ok']} audited ok, {placed['failed']} failed,"
            f" {placed['missing']} missing, {placed['unaudited']} not yet audited"
            f" (last audit {_ago(audits['last_audit_at'])})"
        )
    repairs = audits.get("repairs")
    if repairs is not None:
        lost = ", ".join(repairs["lost_sites"]) or "none"
        typer.echo(
            f"  repair: {repairs['bundles_below_n']} bundles below n;"
            f" {repairs['repaired']} repaired, {repairs['failed']} failed,"
            f" {repairs['shares_placed']} shares placed (last {_ago(repairs['last_repair_at'])});"
            f" lost sites: {lost}; {repairs['replaced_copies_to_delete']} replaced copies to delete"
        )
    if scrub is not None:
        typer.echo(
            f"  scrub of partners' shares held here: {scrub.get('fragments', 0)} checked,"
            f" {scrub.get('quarantined', 0)} quarantined"
            f" (finished {_ago(scrub.get('finished_at'))});"
            f" {scrub.get('quarantined_held', 0)} quarantined shares kept as evidence"
        )


def _echo_delegate(delegate: dict[str, Any] | None) -> None:
    if not delegate or not delegate.get("delegations"):
        return
    acting = ", ".join(delegate.get("acting_for") or []) or "none"
    total = delegate.get("since_start") or {}
    typer.echo(
        f"  delegate for {delegate['delegations']} site(s) that trust this one: acting for"
        f" {acting} (down); {total.get('shares_placed', 0)} of their shares rebuilt since"
        f" this node started (last {_ago(total.get('last_repair_at'))})"
    )


def _echo_leases(leases: dict[str, Any]) -> None:
    renewal, expiry = leases["renewal"], leases["expiry"]
    if renewal is not None:
        unreachable = ", ".join(renewal["unreachable"]) or "none"
        typer.echo(
            f"  leases at partners: {renewal['renewed']} of {renewal['fragments']} shares"
            f" renewed for {renewal['lease_seconds'] / 86400:g} days"
            f" ({_ago(renewal['renewed_at'])}); {renewal['not_held']} not held;"
            f" unreachable: {unreachable}"
        )
    if expiry is not None and expiry.get("removed_total"):
        typer.echo(
            f"  partners' shares removed here after their lease ran out:"
            f" {expiry['removed_total']} (last {_ago(expiry.get('last_removed_at'))})"
        )


def _echo_forgets(forgets: dict[str, Any] | None) -> None:
    if not forgets or not (forgets["pending"] or forgets["deleting"] or forgets["done"]):
        return
    typer.echo(
        f"  forgotten studies: {forgets['done']} done, {forgets['deleting']} still deleting"
        f" at partners ({forgets['deletions_waiting']} deletions waiting),"
        f" {forgets['pending']} requested (last {_ago(forgets['last_forgotten_at'])})"
    )


def _peer_audits(audits: dict[str, Any] | None) -> str:
    if not audits:
        return ""
    shunned = ", SHUNNED: gets no new shares" if audits["shunned"] else ""
    if audits.get("leaving"):
        shunned = ", LEAVING: its shares are rebuilt elsewhere"
    latency = "" if audits["latency_ms"] is None else f", {audits['latency_ms']:g} ms"
    return (
        f", reputation {audits['reputation']:.2f} ({audits['audits_passed']} audits passed,"
        f" {audits['audits_failed']} failed{latency}){shunned}"
    )


def _ago(when: object) -> str:
    if not isinstance(when, int | float):
        return "never"
    seconds = max(0, int(time.time() - when))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def main() -> None:
    sys.exit(app())
