"""The ``meshpacs`` command starts without loading the node: ``--help``, ``status`` and
above all ``recover`` (timed against a PACS's own copy in scripts/bench_recover.py) used to
wait most of a second for pydicom, pynetdicom, the web server and the mesh to import."""

from __future__ import annotations

import json
import subprocess
import sys

# Third-party packages that only the commands which use them may load.
HEAVY = ("pydicom", "pynetdicom", "numpy", "aiosqlite", "kademlia", "matplotlib")
# meshpacs modules that load most of the rest.
NODE = ("meshpacs.node.daemon", "meshpacs.node.status", "meshpacs.recovery.command")


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_importing_the_command_loads_neither_the_dicom_stack_nor_the_node() -> None:
    loaded = loaded_after("import meshpacs.cli")
    assert not loaded & {*HEAVY, *NODE}, sorted(loaded & {*HEAVY, *NODE})


def test_the_command_still_names_every_subcommand() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "meshpacs", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for command in ("init", "node", "status", "recover", "forget", "federation", "escrow",
                    "testbed", "audit", "selftest"):  # fmt: skip
        assert command in done.stdout, command


def test_a_command_loads_what_it_runs() -> None:
    loaded = loaded_after(
        "from typer.testing import CliRunner\n"
        "from meshpacs.cli import app\n"
        "CliRunner().invoke(app, ['status', '--config', '/nonexistent/config.toml'])"
    )
    assert "meshpacs.node.status" in loaded  # the lazy import is the command's, not lost
