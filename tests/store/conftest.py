from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshpacs.store import FragmentStore, QuotaPolicy

from ..metadata.helpers import FakeClock

QUOTA = 1_000_000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "site" / "fragments"


@pytest.fixture
def store(store_dir: Path, clock: FakeClock) -> Iterator[FragmentStore]:
    with FragmentStore(store_dir, QuotaPolicy(QUOTA), clock=clock) as opened:
        yield opened
