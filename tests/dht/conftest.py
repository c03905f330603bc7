from __future__ import annotations

from pathlib import Path

import pytest

from meshpacs.federation import Federation

from .helpers import Clock, TestFederation


@pytest.fixture
def federation(tmp_path: Path) -> TestFederation:
    return TestFederation.create(tmp_path / "ca", "DHT Test Mesh")


@pytest.fixture
def outsiders(tmp_path: Path) -> TestFederation:
    """Another real CA: its certificates look right but are not the federation's."""
    return TestFederation.create(tmp_path / "outsiders-ca", "Rogue Mesh")


@pytest.fixture
def verifier(federation: TestFederation) -> Federation:
    return federation.verifier


@pytest.fixture
def clock() -> Clock:
    return Clock()
