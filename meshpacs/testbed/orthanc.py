"""A real Orthanc in front of every testbed site, auto-forwarding to the site's node.

This is the hospital's side of the picture: an Orthanc PACS that receives studies from
modalities and hands each complete study to its meshpacs node, set up exactly as
``docs/orthanc.md`` tells an administrator to, with the files shipped in ``docs/orthanc/``:
the config snippet (the node as modality ``meshnode``, the Lua script, ``StableAge``,
``DicomScuTimeout``) and ``autoforward.lua`` (``OnStableStudy`` -> C-STORE job to the
node). The testbed changes only the snippet's values: the node's AE title and port, and
a short ``StableAge``, so a pushed study reaches the node seconds later, not a minute.

Under the testbed's root::

    orthanc/                      0700: configs hold the REST password, storage holds studies
      <site id>/orthanc.json      the whole config (written by OrthancProcess)
      <site id>/autoforward.lua   the shipped script, copied next to the config, as the guide says
      <site id>/password          the REST password of user "meshpacs-testbed" (0600)
      <site id>/storage/          Orthanc's storage and index
      <site id>/orthanc.log

Each Orthanc gets free ports on 127.0.0.1 (it cannot bind one address: its HTTP side
refuses non-loopback clients, ``RemoteAccessAllowed: false``), AE title ``ORTHANC_<SITE>``,
and runs detached in its own session so that ``testbed up`` can exit and leave it running.
What scripts need to reach it is in the site's ``orthanc`` entry of ``testbed.json``
(:func:`orthanc_rest` makes REST calls with only that); stopping it is
:func:`meshpacs.testbed.processes.stop_testbed`'s job (by PID, checked).
:func:`start_site_orthanc` starts one stopped Orthanc again from its saved config, same
ports, password and script, over whatever its storage holds then: a disaster drill
removes the storage first and gets the empty Orthanc a rebuilt hospital would have.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import os
import secrets
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from meshpacs.dicom.scu import Target, echo
from meshpacs.errors import ConfigError, MeshError
from meshpacs.testbed.layout import TestbedPlan, TestbedSite
from meshpacs.testing.orthanc import (
    OrthancError,
    OrthancProcess,
    OrthancUnavailable,
    orthanc_available,
)

__all__ = [
    "ORTHANC_USER",
    "SHIPPED_ORTHANC_DIR",
    "orthanc_ae_title",
    "orthanc_rest",
    "start_orthancs",
    "start_site_orthanc",
]

SHIPPED_ORTHANC_DIR = Path(__file__).resolve().parents[2] / "docs" / "orthanc"
"""``autoforward.lua`` and ``orthanc-meshpacs.json``, as shipped to administrators."""

ORTHANC_USER = "meshpacs-testbed"
_LUA_SCRIPT = "autoforward.lua"
_CONFIG_SNIPPET = "orthanc-meshpacs.json"
_MODALITY = "meshnode"  # the name autoforward.lua sends to
_CALLING_AE = "MESH_TESTBED"


def orthanc_ae_title(site_id: str) -> str:
    """``site-a`` -> ``ORTHANC_SITE_A`` (AE titles hold at most 16 characters)."""
    return f"ORTHANC_{site_id.upper().replace('-', '_')}"[:16]


def _shipped_files(shipped: Path) -> tuple[Path, dict[str, Any]]:
    script, snippet = shipped / _LUA_SCRIPT, shipped / _CONFIG_SNIPPET
    try:
        config = json.loads(snippet.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"cannot read the shipped Orthanc config snippet {snippet}: {error}; the testbed's"
            " Orthancs need the docs/orthanc/ files of a meshpacs source tree"
        ) from None
    if not script.is_file():
        raise ConfigError(f"the shipped Orthanc script {script} is missing")
    if _MODALITY not in config.get("DicomModalities", {}):
        raise ConfigError(f"{snippet} declares no modality {_MODALITY!r}")
    return script, config


def _orthanc_config(snippet: dict[str, Any], site: TestbedSite, stable_age: int) -> dict[str, Any]:
    """The shipped snippet with this site's node and a testbed ``StableAge``."""
    config: dict[str, Any] = copy.deepcopy(snippet)  # the snippet is shared by all sites
    config["DicomModalities"][_MODALITY].update(
        AET=site.ae_title, Host=site.host, Port=site.dicom_port
    )
    config["StableAge"] = stable_age
    config["Name"] = f"meshpacs testbed {site.site_id}"
    return config


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(text + "\n")


def _prepare(
    site: TestbedSite, directory: Path, script: Path, snippet: dict[str, Any], stable_age: int
) -> OrthancProcess:
    directory.mkdir(mode=0o700)
    shutil.copyfile(script, directory / _LUA_SCRIPT)  # the snippet names it relative to here
    password = secrets.token_urlsafe(24)
    _write_secret(directory / "password", password)
    return OrthancProcess(
        directory,
        aet=orthanc_ae_title(site.site_id),
        config=_orthanc_config(snippet, site, stable_age),
        user=ORTHANC_USER,
        password=password,
        detached=True,
    )


def _entry(orthanc: OrthancProcess) -> dict[str, object]:
    return {
        "ae_title": orthanc.aet,
        "dicom_port": orthanc.dicom_port,
        "http_port": orthanc.http_port,
        "storage_dir": str(orthanc.storage_dir),
        "pid": orthanc.pid,
        "url": orthanc.url,
        "user": orthanc.user,
        "password_file": str(orthanc.directory / "password"),
        "config": str(orthanc.config_path),
        "log": str(orthanc.log_path),
    }


def start_orthancs(
    plan: TestbedPlan,
    *,
    stable_age: float = 1.0,
    shipped: Path = SHIPPED_ORTHANC_DIR,
    timeout: float = 30.0,
) -> None:
    """Start an Orthanc per site, forwarding stable studies to the site's node.

    Returns once every Orthanc answers REST ``/system`` and C-ECHO. Each site's
    ``orthanc`` entry is saved to ``testbed.json`` as soon as that Orthanc runs, so a
    failure half-way leaves ``testbed down`` able to stop what did start. ``stable_age``
    is rounded up to whole seconds, Orthanc's unit. The nodes need not run yet: Orthanc
    contacts its node only when it forwards a study.
    """
    if not orthanc_available():
        raise ConfigError(
            "Orthanc is not installed (/usr/sbin/Orthanc): install it, or run the testbed"
            " without Orthancs"
        )
    script, snippet = _shipped_files(shipped)
    base = Path(plan.root) / "orthanc"
    base.mkdir(mode=0o700, exist_ok=True)
    for site in plan.sites:
        orthanc = _prepare(
            site, base / site.site_id, script, snippet, max(1, math.ceil(stable_age))
        )
        _started(plan, site, orthanc, timeout)


def _started(plan: TestbedPlan, site: TestbedSite, orthanc: OrthancProcess, timeout: float) -> None:
    """Start ``orthanc``, record it in ``testbed.json``, and check that it answers C-ECHO."""
    orthanc.startup_timeout = timeout
    try:
        orthanc.start()
    except (OrthancError, OrthancUnavailable) as error:
        raise ConfigError(f"the Orthanc of {site.site_id} did not start: {error}") from None
    site.orthanc = _entry(orthanc)
    plan.save()
    if not echo(Target(orthanc.aet, site.host, orthanc.dicom_port, _CALLING_AE), timeout=timeout):
        raise ConfigError(
            f"the Orthanc of {site.site_id} answers REST but not C-ECHO on port"
            f" {orthanc.dicom_port}; see {orthanc.log_path}"
        )


def _entry_text(site: TestbedSite, key: str) -> str:
    value = (site.orthanc or {}).get(key)
    if not isinstance(value, str):
        raise ConfigError(f"{site.site_id} has no Orthanc {key} in testbed.json")
    return value


def _entry_port(site: TestbedSite, key: str) -> int:
    value = (site.orthanc or {}).get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{site.site_id} has no Orthanc {key} in testbed.json")
    return value


def start_site_orthanc(plan: TestbedPlan, site: TestbedSite, *, timeout: float = 30.0) -> None:
    """Start the site's (stopped) Orthanc again exactly as configured: same config file,
    ports, REST password and Lua script, over what its storage directory holds now.

    The caller stops it first (by PID). Its new PID goes in ``testbed.json``.
    """
    if site.orthanc is None:
        raise ConfigError(f"{site.site_id} has no Orthanc (the testbed ran without one)")
    config_path = Path(_entry_text(site, "config"))
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {config_path}: {error}") from None
    password_file = Path(_entry_text(site, "password_file"))
    orthanc = OrthancProcess(
        config_path.parent,
        aet=_entry_text(site, "ae_title"),
        config=config,
        dicom_port=_entry_port(site, "dicom_port"),
        http_port=_entry_port(site, "http_port"),
        user=_entry_text(site, "user"),
        password=password_file.read_text(encoding="ascii").strip(),
        detached=True,
    )
    _started(plan, site, orthanc, timeout)


def orthanc_rest(site: TestbedSite, method: str, path: str, *, timeout: float = 120.0) -> bytes:
    """One REST call to the site's Orthanc with what ``testbed.json`` says; the raw answer.

    Raises :class:`MeshError` for an HTTP error or an Orthanc that does not answer.
    """
    password = Path(_entry_text(site, "password_file")).read_text(encoding="ascii").strip()
    user = _entry_text(site, "user")
    request = urllib.request.Request(_entry_text(site, "url") + path, method=method.upper())
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload: bytes = response.read()
    except urllib.error.HTTPError as error:
        raise MeshError(
            f"the Orthanc of {site.site_id}: {method.upper()} {path}: HTTP {error.code}"
        ) from None
    except OSError as error:
        raise MeshError(f"the Orthanc of {site.site_id} does not answer REST: {error}") from None
    return payload
