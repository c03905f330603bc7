"""Pushing generated studies into a testbed site, the way its PACS would.

With ``--with-orthanc`` a site's studies go into its Orthanc, which forwards each stable
study to the node with the shipped Lua script: the path a hospital's studies take. Without
Orthanc they go straight to the node's AE. Either way dcmtk's ``storescu`` sends them, one
run per transfer syntax, proposing that syntax first so every file arrives as it is.

The studies are synthetic (:mod:`meshpacs.testing.synth`): their patient names, IDs and
UIDs are made up from the seed, and a different seed gives different studies, so a push
never collides with the studies a drill generates.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meshpacs.errors import ConfigError, MeshError
from meshpacs.testbed.layout import TestbedSite
from meshpacs.testing.dcmtk import dcmtk_env, dcmtk_tool
from meshpacs.testing.synth import (
    TRANSFER_SYNTAXES,
    StudySpec,
    SynthInstance,
    generate_study,
    write_study,
)

__all__ = ["STORESCU_OPTION", "Pushed", "last_line", "push_generated", "storescu"]

# storescu proposes only uncompressed syntaxes unless told; one option per file syntax
# makes it propose that one first, so every file arrives as it is.
STORESCU_OPTION = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
}
_CALLING_AE = "DRILL_PACS"


@dataclass
class Pushed:
    """What one push sent: the studies, their instances and bytes, and where to."""

    target: str  # "Orthanc ORTHANC_SITE_A" or "node MESH_SITE_A"
    studies: int = 0
    instances: int = 0
    bytes: int = 0
    sop_uids: set[str] = field(default_factory=set)


def _destination(site: TestbedSite) -> tuple[str, int, str]:
    """(AE title, port, description) of the site's PACS side: its Orthanc, else its node."""
    if site.orthanc is not None:
        title = str(site.orthanc["ae_title"])
        return title, int(str(site.orthanc["dicom_port"])), f"Orthanc {title}"
    return site.ae_title, site.dicom_port, f"node {site.ae_title}"


def storescu(site: TestbedSite, target: Path, syntax: str) -> subprocess.CompletedProcess[str]:
    """Send a file, or a folder's files, to the site's Orthanc (or node) in ``syntax``."""
    tool = dcmtk_tool("storescu")
    if tool is None:
        raise ConfigError("dcmtk's storescu is not installed (apt-get install dcmtk)")
    title, port, _ = _destination(site)
    argv = [tool, "-aet", _CALLING_AE, "-aec", title, "-R", STORESCU_OPTION[syntax]]
    if target.is_dir():
        argv += ["+sd", "+r"]
    argv += [site.host, str(port), str(target)]
    return subprocess.run(
        argv, capture_output=True, text=True, env=dcmtk_env(), timeout=1800, check=False
    )


def push_generated(
    site: TestbedSite, workdir: Path, studies: int, mix: Sequence[StudySpec], seed: int
) -> Pushed:
    """Generate ``studies`` studies (shapes from ``mix`` in turn) under ``workdir`` and push
    them, one storescu run per transfer syntax. Raises :class:`MeshError` if one fails."""
    pushed = Pushed(_destination(site)[2], studies=studies)
    folders: dict[str, Path] = {}
    for number in range(studies):
        spec = mix[number % len(mix)]
        folder = workdir / spec.transfer_syntax
        folders[spec.transfer_syntax] = folder
        instances = generate_study(seed, spec, patient=number)
        write_study(folder / f"study-{number:04d}", _noted(instances, pushed))
    for name, folder in folders.items():
        done = storescu(site, folder, str(TRANSFER_SYNTAXES[name]))
        if done.returncode != 0:
            raise MeshError(f"storescu failed to push the {name} studies: {last_line(done)}")
    return pushed


def _noted(instances: Iterable[SynthInstance], pushed: Pushed) -> Iterator[SynthInstance]:
    for instance in instances:
        pushed.sop_uids.add(instance.sop_instance_uid)
        pushed.instances += 1
        pushed.bytes += len(instance.data)
        yield instance


def last_line(done: subprocess.CompletedProcess[str]) -> str:
    """The tool's last words, for an error message."""
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"
