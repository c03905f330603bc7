"""The repair threshold: strictly between k and n where there is room."""

from __future__ import annotations

import pytest

from meshpacs.metadata.repair import repair_threshold


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [(4, 7, 6), (3, 5, 4), (2, 4, 3), (2, 3, 3), (1, 1, 1), (5, 6, 6), (10, 20, 15)],
)
def test_the_default_threshold_is_halfway_between_k_and_n(k: int, n: int, expected: int) -> None:
    assert repair_threshold(k, n) == expected


@pytest.mark.parametrize(("configured", "expected"), [(2, 5), (5, 5), (6, 6), (7, 7), (99, 7)])
def test_a_configured_threshold_is_kept_above_k_and_at_most_n(
    configured: int, expected: int
) -> None:
    assert repair_threshold(4, 7, configured) == expected
