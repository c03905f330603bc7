from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshpacs.metadata import Catalog

from .helpers import FakeClock, dicomdir_records


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def catalog(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Catalog]:
    async with await Catalog.open(tmp_path / "catalog.sqlite", clock=clock) as opened:
        yield opened


@pytest.fixture
async def loaded(catalog: Catalog) -> Catalog:
    """A catalog holding pydicom's dicomdirtests hierarchy, added as one batch."""
    await catalog.add_instances(dicomdir_records())
    return catalog
