"""Finding dcmtk's command-line tools, and running them as the tests and benchmarks need.

pynetdicom installs apps named ``storescu``, ``storescp`` and ``echoscu`` into the venv;
with the venv on PATH they would shadow dcmtk's, and a test meant to talk to independent
software would talk to the library under test. Lookups here skip the venv's bin directory.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["dcmtk_env", "dcmtk_tool"]


def dcmtk_tool(name: str) -> str | None:
    """The dcmtk executable ``name``, never pynetdicom's app of the same name."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin
    )
    return shutil.which(name, path=path)


def dcmtk_env() -> dict[str, str]:
    """The environment for dcmtk and Orthanc: Nagle off, or every figure measures 40 ms ACKs."""
    return {**os.environ, "TCP_NODELAY": "1"}
