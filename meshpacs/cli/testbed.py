"""``meshpacs testbed ...``: a whole federation on this machine, on loopback only."""

from __future__ import annotations

import contextlib
import json
import secrets
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from meshpacs.errors import MeshError

if TYPE_CHECKING:
    from meshpacs.testbed.drill import DrillReport

# Each command imports the testbed (pydicom, the node) itself: see meshpacs.cli.

__all__ = ["testbed_app"]

testbed_app = typer.Typer(
    help=(
        "A whole federation on this machine, for trying meshpacs out and for disaster"
        " drills: a federation CA and several sites, each node its own process, on"
        " 127.0.0.1 only."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",  # docstring paragraphs rewrapped, not kept line by line
)


def _fail(command: str, exc: Exception) -> typer.Exit:
    typer.echo(f"meshpacs testbed {command}: {exc}", err=True)
    return typer.Exit(2)


@testbed_app.command("up")
def testbed_up(
    root: Annotated[
        Path, typer.Option("--root", help="A new or empty directory for the whole testbed.")
    ],
    sites: Annotated[int, typer.Option("--sites", help="How many sites (hospitals).")] = 5,
    k: Annotated[int, typer.Option("--k", help="Fragments needed to rebuild a study.")] = 2,
    n: Annotated[
        int, typer.Option("--n", help="Fragments made per study, each on its own site.")
    ] = 3,
    trust: Annotated[
        int, typer.Option("--trust", help="How many other sites each site trusts.")
    ] = 2,
    stable_seconds: Annotated[
        float,
        typer.Option(
            "--stable-seconds",
            help=(
                "Quiet time after which a study is complete: backed up by the node, and"
                " forwarded by Orthanc (whole seconds there)."
            ),
        ),
    ] = 2.0,
    with_orthanc: Annotated[
        bool,
        typer.Option(
            "--with-orthanc",
            help=(
                "Also start a real Orthanc per site (/usr/sbin/Orthanc) that forwards every"
                " stable study to its node with the shipped Lua script."
            ),
        ),
    ] = False,
    fast_maintenance: Annotated[
        bool,
        typer.Option(
            "--fast-maintenance",
            help=(
                "Audit, scrub and repair every few seconds and treat a site silent for 4"
                " seconds as lost, so a trial sees a damaged or missing fragment noticed and"
                " rebuilt within a minute. For trials only: real sites audit hourly."
            ),
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print testbed.json when ready.")] = False,
) -> None:
    """Lay out a federation under --root and start every site's node (and Orthanc).

    Returns once every node (and every Orthanc) answers C-ECHO. Push studies with any
    DICOM tool to a site's AE title and port, or to its Orthanc's (see ROOT/testbed.json;
    an Orthanc's REST password is in its password_file): they are backed up across the
    other sites with no further step. Each site's dashboard URL (token included; metrics
    at /metrics with the same token) is printed and kept in testbed.json. Stop everything
    with `meshpacs testbed down`. If starting fails half-way, what did start is stopped
    again.
    """
    from meshpacs.testbed import create_testbed
    from meshpacs.testbed.layout import FAST_MAINTENANCE
    from meshpacs.testbed.orthanc import start_orthancs
    from meshpacs.testbed.processes import start_nodes, stop_testbed

    try:
        plan = create_testbed(
            root,
            sites,
            k=k,
            n=n,
            trust=trust,
            stable_seconds=stable_seconds,
            pass_interval=0.5,
            maintenance=FAST_MAINTENANCE if fast_maintenance else None,
        )
    except MeshError as exc:
        raise _fail("up", exc) from None
    try:
        start_nodes(plan)
        if with_orthanc:
            start_orthancs(plan, stable_age=stable_seconds)
    except MeshError as exc:
        stop_testbed(plan)
        raise _fail("up", exc) from None
    if as_json:
        typer.echo(json.dumps(asdict(plan), indent=2))
        return
    typer.echo(f"Testbed of {sites} sites running (k={k}, n={n}); details in {root}/testbed.json")
    for site in plan.sites:
        typer.echo(
            f"  {site.site_id}: AE {site.ae_title} at {site.host}:{site.dicom_port}"
            f"  (pid {site.pid}, trusts {', '.join(site.trusted) or 'nobody'})"
        )
        if site.dashboard_url:
            typer.echo(f"    dashboard {site.dashboard_url}")
        if site.orthanc is not None:
            typer.echo(
                f"    Orthanc {site.orthanc['ae_title']} at {site.host}:"
                f"{site.orthanc['dicom_port']}, REST {site.orthanc['url']}"
                f"  (pid {site.orthanc['pid']})"
            )


@testbed_app.command("down")
def testbed_down(
    root: Annotated[Path, typer.Option("--root", help="The testbed's directory.")],
) -> None:
    """Stop exactly the nodes and Orthancs `testbed up` started, by PID, and nothing else.

    A PID is signalled only while it still runs that site's node or Orthanc with that
    site's config; a PID since reused by another program is left alone.
    """
    from meshpacs.testbed import load_testbed
    from meshpacs.testbed.processes import stop_testbed

    try:
        stopped = stop_testbed(load_testbed(root))
    except MeshError as exc:
        raise _fail("down", exc) from None
    typer.echo(
        f"Stopped {len(stopped.nodes)} node(s): {', '.join(stopped.nodes) or 'none was running'}"
    )
    if stopped.orthancs:
        typer.echo(f"Stopped {len(stopped.orthancs)} Orthanc(s): {', '.join(stopped.orthancs)}")


@testbed_app.command("push")
def testbed_push(
    root: Annotated[Path, typer.Option("--root", help="A running testbed.")],
    site: Annotated[
        str, typer.Option("--site", help="The site whose PACS receives them (default: the first).")
    ] = "",
    studies: Annotated[
        int,
        typer.Option("--studies", min=1, max=500, help="How many studies (CT and MR, some RLE)."),
    ] = 5,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Seed of the made-up patients (default: a fresh one)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was sent as JSON.")] = False,
) -> None:
    """Push generated studies into a site's PACS, as a hospital's modality would.

    With `up --with-orthanc` they go into the site's Orthanc, which forwards each study to
    its node once it is stable; otherwise straight to the node. The patients are made up
    (seeded, so a rerun with the same --seed sends the same studies again). Then watch the
    site's dashboard (its URL is in testbed.json) or `meshpacs status`: each study goes from
    receiving to protected. A later `testbed drill` recovers these studies too.
    """
    from meshpacs.testbed import load_testbed
    from meshpacs.testbed.drill import DRILL_MIX
    from meshpacs.testbed.push import push_generated

    chosen_seed = secrets.randbelow(2**31) if seed is None else seed
    try:
        plan = load_testbed(root)
        target = plan.site(site) if site else plan.sites[0]
        workdir = Path(plan.root) / "push" / str(chosen_seed)
        pushed = push_generated(target, workdir, studies, DRILL_MIX, chosen_seed)
    except KeyError:
        raise _fail("push", MeshError(f"{root} has no site {site!r}")) from None
    except (MeshError, IndexError) as exc:
        raise _fail("push", exc) from None
    figures = {
        "site": target.site_id,
        "target": pushed.target,
        "studies": pushed.studies,
        "instances": pushed.instances,
        "bytes": pushed.bytes,
        "seed": chosen_seed,
        "dashboard_url": target.dashboard_url,
    }
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
        return
    typer.echo(
        f"Pushed {pushed.studies} studies ({pushed.instances} instances,"
        f" {pushed.bytes / 1e6:.1f} MB) into {pushed.target} of {target.site_id}"
        f" (seed {chosen_seed})"
    )
    if target.dashboard_url:
        typer.echo(f"Watch them become protected: {target.dashboard_url}")


@testbed_app.command("demo")
def testbed_demo(
    root: Annotated[
        Path | None,
        typer.Option("--root", help="Keep the testbed here (new or empty); a temp dir if unset."),
    ] = None,
    sites: Annotated[int, typer.Option("--sites", help="How many sites.")] = 5,
    studies: Annotated[int, typer.Option("--studies", help="Studies to push.")] = 2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the generated studies.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """The local-federation drill: push studies to one site, see them protected across
    the others, and check that no patient data reached any other site or log."""
    from meshpacs.testbed.demo import run_demo

    with contextlib.ExitStack() as stack:
        if root is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meshpacs-demo-")))
        try:
            report = run_demo(
                root, sites=sites, studies=studies, seed=seed, say=lambda m: typer.echo(m, err=True)
            )
        except MeshError as exc:
            raise _fail("demo", exc) from None
    if as_json:
        typer.echo(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    else:
        typer.echo(f"fragments held per site: {report.fragments_per_site}")
        typer.echo(f"catalog records held per site: {report.records_per_site}")
        typer.echo(
            "PHI outside the owner: none" if not report.phi_hits else f"PHI: {report.phi_hits}"
        )
        typer.echo("DRILL PASSED" if report.ok else "DRILL FAILED: " + "; ".join(report.problems))
    if not report.ok:
        raise typer.Exit(1)


@testbed_app.command("drill")
def testbed_drill(
    root: Annotated[
        Path,
        typer.Option("--root", help="A running testbed started with `up --with-orthanc`."),
    ],
    studies: Annotated[
        int, typer.Option("--studies", help="Generated studies to push (CT and MR, some RLE).")
    ] = 20,
    pydicom_files: Annotated[
        int,
        typer.Option("--pydicom-files", help="Also push this many of pydicom's own test files."),
    ] = 6,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the studies and choices.")] = 1,
    timeout: Annotated[
        float,
        typer.Option("--timeout", help="Seconds each wait and each recovery run may take."),
    ] = 900.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdict as JSON.")] = False,
) -> None:
    """The disaster drill: site A (the first site) loses its PACS and its node, and gets
    its archive back from the federation through `meshpacs recover`.

    Pushes studies into Orthanc A with dcmtk's storescu and records what Orthanc A holds;
    waits until A reports them protected; kills A's node and Orthanc, deletes A's
    directory and Orthanc's storage; recovers from the phrase into an empty Orthanc A and
    compares every instance (transfer syntax, dataset bytes); again with n-k other sites
    stopped; with n-k+1 stopped, checks that exactly the lost bundles are reported (exit
    code non-zero, nothing wrong delivered); restarts them and completes the archive.
    Exit code 0 only if every step passed. Site A's node stays gone afterwards; stop the
    rest with `meshpacs testbed down`. Working files are kept in ROOT/drill.
    """
    from meshpacs.testbed import load_testbed
    from meshpacs.testbed.drill import run_drill

    try:
        report = run_drill(
            load_testbed(root),
            studies=studies,
            pydicom_files=pydicom_files,
            seed=seed,
            timeout=timeout,
            say=lambda m: typer.echo(m, err=True),
        )
    except (MeshError, ValueError) as exc:
        raise _fail("drill", exc) from None
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        typer.echo(_verdict(report))
    if not report.ok:
        raise typer.Exit(1)


def _earlier(report: DrillReport) -> str:
    """The studies pushed before the drill (`testbed push`), which it recovers too."""
    earlier = report.studies - report.generated_studies - len(report.pydicom_files)
    return f", {earlier} pushed before the drill" if earlier > 0 else ""


def _verdict(report: DrillReport) -> str:
    down = ", ".join(report.stopped_in_step_6) or "none"
    lines = [
        f"Disaster drill on {report.sites} sites (k={report.k}, n={report.n})",
        f"  studies {report.studies} ({report.generated_studies} generated,"
        f" {len(report.pydicom_files)} pydicom test files{_earlier(report)}),"
        f" instances {report.instances},"
        f" bytes {report.bytes / 1e6:.1f} MB, {len(report.transfer_syntaxes)} transfer syntaxes",
        f"  time to protect {report.seconds_to_protect:.1f} s, time to recover"
        f" {report.seconds_to_recover:.1f} s ({report.seconds_to_recover_degraded:.1f} s with"
        f" {down} down), mismatches: {report.mismatches}",
    ]
    if report.pydicom_refused:
        lines.append(f"  refused by Orthanc: {', '.join(sorted(report.pydicom_refused))}")
    for step in report.steps:
        lines.append(f"  {'pass' if step.ok else 'FAIL'}  {step.step}. {step.title}: {step.detail}")
    lines.append("DRILL PASSED" if report.ok else "DRILL FAILED")
    return "\n".join(lines)
