"""Fixtures of the fault suite: the in-process federation, node processes, a printed seed."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from tests.mesh.conftest import federation

from .helpers import SEED_VARIABLE, NodeProcesses

__all__ = ["fault_rng", "federation", "node_processes"]  # federation: from tests/mesh


@pytest.fixture
def fault_rng() -> random.Random:
    """The scenario's random choices; the seed is printed (shown with a failure) and
    ``MESHPACS_FAULT_SEED=<seed>`` repeats them."""
    seed = int(os.environ.get(SEED_VARIABLE) or random.randrange(2**31))
    print(f"fault seed {seed} (rerun with {SEED_VARIABLE}={seed})")
    return random.Random(seed)


@pytest.fixture
def node_processes() -> Iterator[NodeProcesses]:
    """Sites run as node processes by the test; SIGKILLed (by PID) when it ends."""
    processes = NodeProcesses()
    yield processes
    processes.stop_all()
