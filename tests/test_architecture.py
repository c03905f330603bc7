"""The design's one-way imports, and each module's public names, checked mechanically."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "meshpacs"

# Top to bottom, as the developers' guide draws it: a room may import only rooms below it.
RANK = {
    "errors": 0,
    "durable": 1,  # careful file writes and reads, for every room that keeps files
    "keys": 1,
    "testing": 1,  # generates DICOM with pydicom; imports nothing of meshpacs
    "federation": 2,  # CA, node certificates, CRL, TLS contexts
    "trail": 2,  # the ATNA audit trail: messages, the hash-chained log; errors, durable, keys only
    "erasure": 3,
    "audit": 3,  # proof-of-storage challenges: sans-I/O, beside the fragment format
    "dht": 3,
    "store": 4,
    "transport": 5,
    "metadata": 6,
    "dicom": 7,
    "backup": 8,
    "recovery": 8,
    "upkeep": 9,  # audits and repair: uses both backup and recovery
    "web": 10,  # dashboard, metrics: given the status document, imports nothing of node
    "sim": 10,  # many sites in one process: the real DHT, placement and repair decisions
    "node": 11,
    "selftest": 11,
    "testbed": 12,  # lays out and runs whole federations of nodes
    "cli": 13,
    "__main__": 14,  # python -m meshpacs
}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        found.append((name, path))
    return found


def internal_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n == "meshpacs" or n.startswith("meshpacs.")}


@pytest.mark.parametrize(("name", "path"), modules(), ids=[m for m, _ in modules()])
def test_imports_point_down_only(name: str, path: Path) -> None:
    here = room(name)
    if not here:
        return  # meshpacs/__init__.py
    assert here in RANK, f"{name}: room {here!r} has no place in the layering; add it to RANK"
    for imported in internal_imports(path):
        there = room(imported)
        if there in ("", here):
            continue
        assert RANK[there] < RANK[here], f"{name} imports {imported}: {here} may not use {there}"


@pytest.mark.parametrize(("name", "path"), modules(), ids=[m for m, _ in modules()])
def test_public_names_exist(name: str, path: Path) -> None:
    module = importlib.import_module(name)
    for public in getattr(module, "__all__", []):
        assert hasattr(module, public), f"{name}.__all__ names {public!r}, which does not exist"
