"""Fixtures: a federation CA in a temporary directory, and enrolled sites."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from meshpacs.federation import FederationCA, create_federation_ca

from .helpers import Site, make_site


@pytest.fixture
def ca(tmp_path: Path) -> FederationCA:
    return create_federation_ca(tmp_path / "ca", "Test Mesh")


@pytest.fixture
def other_ca(tmp_path: Path) -> FederationCA:
    return create_federation_ca(tmp_path / "other-ca", "Rogue Mesh")


@pytest.fixture
def site(ca: FederationCA, tmp_path: Path) -> Callable[..., Site]:
    """``site("st-a", seed=1)``: a site enrolled with ``ca``."""

    def make(site_id: str, seed: int = 0, authority: FederationCA | None = None) -> Site:
        authority = authority or ca
        return make_site(authority, tmp_path / f"sites-{authority.directory.name}", site_id, seed)

    return make
