"""``meshpacs recover``: rebuild a lost archive from the federation, for a tired administrator.

The recovery itself (pydicom, pynetdicom, the DHT, the transport) is imported when a
recovery runs, not with the ``meshpacs`` command (see :mod:`meshpacs.cli`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from meshpacs.errors import MeshError
from meshpacs.keys import SiteSecret
from meshpacs.keys.secret import audit_trail_key
from meshpacs.node.config import AuditTrailConfig, NodeConfig, load_config
from meshpacs.node.forwarding import trail_forwarder
from meshpacs.node.logs import configure_logging
from meshpacs.recovery.escrow import (
    ESCROW_KEY_FILE,
    keep_regained_phrase,
    load_escrow_key,
    regain_secret,
)
from meshpacs.recovery.plan import PlanFilter
from meshpacs.trail import TrailLog, TrailWriter, local_user, trail_dir
from meshpacs.trail.messages import (
    AuditEvent,
    AuditSource,
    Outcome,
    Participant,
    StudyCount,
    import_,
)

if TYPE_CHECKING:
    from meshpacs.dicom.scu import Target
    from meshpacs.recovery.command import RecoverRequest
    from meshpacs.recovery.report import RecoveryReport
    from meshpacs.recovery.session import RecoveryCredentials

__all__ = ["recover"]

_MAX_FILE = 1024 * 1024


def _fail(message: str) -> typer.Exit:
    typer.echo(f"meshpacs recover: {message}", err=True)
    return typer.Exit(2)


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _fail(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_FILE:
        raise _fail(f"{what} {path} is too large to be one")
    return data


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _fail(f'--bootstrap takes "ip:port" (the DHT port of a partner), not {text!r}')
    return host.strip("[]"), int(port)


def _target(text: str) -> Target:
    from meshpacs.dicom.scu import Target

    title, sep, rest = text.partition("@")
    host, sep2, port = rest.rpartition(":")
    if not sep or not sep2 or not port.isdigit():
        raise _fail(f'--to-ae takes "AET@host:port", e.g. ORTHANC@10.1.2.20:4242, not {text!r}')
    try:
        return Target(title, host, int(port), "MESHPACS_RCV")
    except ValueError as exc:
        raise _fail(f"--to-ae {text!r}: {exc}") from None


def _phrase(phrase_file: Path | None) -> SiteSecret:
    if phrase_file is not None:
        text = _read(phrase_file, "phrase file").decode("utf-8", "replace")
    else:
        text = typer.prompt("Recovery phrase (not shown)", hide_input=True)
    try:
        return SiteSecret.from_phrase(text)
    except MeshError as exc:
        raise _fail(str(exc)) from None


def _dashboard_node(config_file: Path) -> NodeConfig:
    """The config of the node whose dashboard is to show the recovery."""
    try:
        node = load_config(config_file)
    except MeshError as exc:
        raise _fail(f"--show-on-dashboard: {exc}") from None
    if not node.state_dir.is_dir():
        raise _fail(
            f"--show-on-dashboard: {node.state_dir} does not exist; start that node once first"
        )
    return node


def _note(line: str) -> None:
    typer.echo(line, err=True)


def _from_escrow(
    releases: list[Path], key_file: Path, workdir: Path, credentials: RecoveryCredentials
) -> SiteSecret:
    """The site secret from t trusted peers' releases (the phrase is lost too)."""
    try:
        key = load_escrow_key(key_file)
        if key.site_id != credentials.site_id:
            raise MeshError(
                f"{key_file} is the key of a request for site {key.site_id!r},"
                f" not {credentials.site_id!r}"
            )
        found = [(str(path), _read(path, "escrow release")) for path in releases]
        regained = regain_secret(key, found, credentials.cert_pem)
        phrase_path, written = keep_regained_phrase(workdir, regained.secret)
    except MeshError as exc:
        raise _fail(str(exc)) from None
    _note(
        f"Rebuilt the site key from {len(regained.used)} trusted peers' escrow shares"
        f" ({regained.threshold} needed); fingerprint {regained.secret.fingerprint}"
    )
    for label in regained.set_aside:
        _note(f"  not used: {label} (its share did not agree with the others)")
    if written:
        _note(
            f"The recovery phrase is written ONCE, to {phrase_path} (readable only by you)"
            " and shown nowhere else: copy it onto paper now, keep it in a safe, then"
            " delete the file. Later runs can use --phrase-file."
        )
    else:
        _note(f"The recovery phrase was written by an earlier run to {phrase_path}.")
    return regained.secret


def _record_import(
    request: RecoverRequest,
    report: RecoveryReport | None,
    error: str,
    audit: AuditTrailConfig | None = None,
) -> None:
    """The run as an ATNA Import event, in WORKDIR/trail (the site has no data directory
    yet); ``meshpacs audit verify --trail WORKDIR/trail`` checks it.

    With ``audit`` (the ``[audit_trail]`` of the --show-on-dashboard node, the one node
    the command knows) the event is rendered and forwarded as that node's are, the
    command waiting a few seconds at most for the collector before it exits.
    """
    trail = TrailWriter(
        TrailLog(trail_dir(request.workdir), audit_trail_key(request.secret)),
        AuditSource("meshpacs recover", request.credentials.site_id),
        include_uids=audit is not None and audit.include_uids,
        forward=trail_forwarder(audit) if audit is not None else None,
    )
    try:
        trail.record_quietly(_import_event(request, report, error))
    finally:
        trail.close()


def _import_event(request: RecoverRequest, report: RecoveryReport | None, error: str) -> AuditEvent:
    site_id = request.credentials.site_id
    ae = request.to_ae
    target = f"{ae.ae_title}@{ae.host}:{ae.port}" if ae is not None else str(request.to_dir)
    if report is None:
        outcome, counted, description = Outcome.SERIOUS_FAILURE, StudyCount(), error
    else:
        counted = StudyCount(report.studies_delivered, report.instances_this_run)
        outcome = (
            Outcome.SUCCESS
            if report.complete
            else Outcome.MINOR_FAILURE
            if report.instances_this_run
            else Outcome.SERIOUS_FAILURE
        )
        description = (
            f"{report.studies_delivered} of {report.studies_planned} studies delivered;"
            f" {len(report.unrecoverable)} bundles unrecoverable, {report.failed_count}"
            " instances failed"
        )
    return import_(
        local_user(),
        Participant(user_id=f"federation of {site_id}", alternative_id="meshpacs mesh"),
        [counted],
        destination=Participant(user_id=target),
        outcome=outcome,
        description=description,
    )


def recover(
    site_id: Annotated[str, typer.Option("--site-id", help="The site being recovered.")],
    ca: Annotated[Path, typer.Option("--ca", help="The federation CA certificate (ca.pem).")],
    cert: Annotated[
        Path, typer.Option("--cert", help="This site's node certificate (any kept copy).")
    ],
    crl: Annotated[Path, typer.Option("--crl", help="The federation's current revocation list.")],
    bootstrap: Annotated[
        list[str],
        typer.Option("--bootstrap", help='A partner\'s DHT address "ip:port" (repeatable).'),
    ],
    workdir: Annotated[
        Path,
        typer.Option(
            "--workdir",
            help="Recovery's own directory (journal, fragments in flight); keep it to resume.",
        ),
    ],
    phrase_file: Annotated[
        Path | None,
        typer.Option("--phrase-file", help="File holding the recovery phrase (else: prompt)."),
    ] = None,
    escrow_release: Annotated[
        list[Path] | None,
        typer.Option(
            "--escrow-release",
            help="Instead of the phrase: a trusted peer's escrow release file (repeatable).",
        ),
    ] = None,
    escrow_key: Annotated[
        Path | None,
        typer.Option(
            "--escrow-key",
            help="The key of meshpacs escrow request (default: WORKDIR/escrow.key).",
        ),
    ] = None,
    to_ae: Annotated[
        str | None,
        typer.Option("--to-ae", help='Deliver by C-STORE to "AET@host:port" (the rebuilt PACS).'),
    ] = None,
    to_dir: Annotated[
        Path | None, typer.Option("--to-dir", help="Write DICOM files and a manifest here.")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only studies dated on/after YYYYMMDD.")
    ] = None,
    patient: Annotated[str | None, typer.Option("--patient", help="Only this Patient ID.")] = None,
    study: Annotated[
        str | None, typer.Option("--study", help="Only this Study Instance UID.")
    ] = None,
    modality: Annotated[
        str | None, typer.Option("--modality", help="Only studies with this modality.")
    ] = None,
    order: Annotated[str, typer.Option("--order", help="newest (default) or oldest first.")] = (
        "newest"
    ),
    peer: Annotated[
        list[str] | None,
        typer.Option("--peer", help="A trusted peer to ask for the catalog (default: all)."),
    ] = None,
    associations: Annotated[
        int, typer.Option("--associations", help="Parallel C-STORE associations.")
    ] = 4,
    dry: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan and what is recoverable; move nothing.")
    ] = False,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Write the final report here as JSON.")
    ] = None,
    show_on_dashboard: Annotated[
        Path | None,
        typer.Option(
            "--show-on-dashboard",
            help="A running node's config.toml (any site's, e.g. a trusted peer's or the"
            " new node's): its dashboard shows this recovery's progress (counts only), and"
            " its [audit_trail] collector gets the run's audit event.",
        ),
    ] = None,
) -> None:
    """Rebuild this site's archive from the federation, byte for byte.

    From the recovery phrase (or, if it is lost too, the escrow releases of a majority of
    the site's trusted peers: see meshpacs escrow) and the public certificates kept
    outside the lost site, rejoins the federation, reads the site's catalog back from its
    trusted peers, and for each study (newest first) gathers any k good fragments of each
    bundle, checks every instance's SHA-256 and delivers the exact original files by
    C-STORE or to a folder.
    Run it again after any interruption: the journal in --workdir resumes it without
    delivering anything twice. Exit code 0 only when everything planned was delivered.
    Progress (counts and sizes, no patient data) is kept in WORKDIR/progress.json and,
    with --show-on-dashboard, in that node's state/recovery.json for its dashboard.
    The run is an audit event in WORKDIR/trail, forwarded as that node's events are.
    """
    from meshpacs.recovery.command import RecoverRequest, dry_run, run_recovery
    from meshpacs.recovery.session import RecoveryCredentials

    if not logging.getLogger().handlers:  # as basicConfig: an embedding keeps its own
        configure_logging("WARNING")
    if (to_ae is None) == (to_dir is None) and not dry:
        raise _fail("give --to-ae AET@host:port or --to-dir DIR (one of them)")
    try:
        plan = PlanFilter(since, patient, study, modality, order)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if escrow_release and phrase_file is not None:
        raise _fail("give --phrase-file or --escrow-release, not both")
    if escrow_key is not None and not escrow_release:
        raise _fail("--escrow-key goes with --escrow-release")
    credentials = RecoveryCredentials(
        site_id=site_id,
        ca_pem=_read(ca, "CA certificate"),
        cert_pem=_read(cert, "node certificate"),
        crl_pem=_read(crl, "revocation list"),
        bootstrap=tuple(_address(b) for b in bootstrap),
        bind="0.0.0.0" if any(not b.startswith("127.") for b in bootstrap) else "127.0.0.1",
    )
    target_ae = _target(to_ae) if to_ae else None
    dashboard = _dashboard_node(show_on_dashboard) if show_on_dashboard else None
    if dry and target_ae is None and to_dir is None:
        to_dir = workdir / "dry-run"  # never written: a dry run delivers nothing
    if escrow_release:
        secret = _from_escrow(
            escrow_release, escrow_key or workdir / ESCROW_KEY_FILE, workdir, credentials
        )
    else:
        secret = _phrase(phrase_file)
    request = RecoverRequest(
        secret=secret,
        credentials=credentials,
        workdir=workdir,
        plan=plan,
        to_ae=target_ae,
        to_dir=to_dir if target_ae is None else None,
        peers=tuple(peer or ()),
        associations=associations,
        show_on=dashboard.state_dir if dashboard is not None else None,
    )
    audit = dashboard.audit_trail if dashboard is not None else None

    def say(message: str) -> None:
        typer.echo(message, err=True)

    try:
        if dry:
            result = asyncio.run(dry_run(request, say))
            typer.echo(json.dumps(result, indent=2))
            return
        report = asyncio.run(run_recovery(request, say, progress=sys.stderr))
    except MeshError as exc:
        _record_import(request, None, str(exc), audit)
        raise _fail(str(exc)) from None
    _record_import(request, report, "", audit)
    if json_file is not None:
        report.write_json(json_file)
    typer.echo(report.summary())
    raise typer.Exit(report.exit_code)
