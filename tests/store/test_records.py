"""Sealed records kept for other sites: owner-scoped, bounded, replaced atomically."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshpacs.errors import FormatError, LimitExceeded, QuotaExceeded
from meshpacs.store.records import MAX_RECORD_BYTES, HeldRecords

ID1, ID2 = "a" * 64, "b" * 64


def test_put_get_list_and_replace(tmp_path: Path) -> None:
    store = HeldRecords(tmp_path / "records")
    store.put(1, "site-a", ID1, b"first")
    store.put(1, "site-a", ID1, b"second version")
    store.put(1, "site-a", ID2, b"other")
    store.put(2, "site-a", ID1, b"escrow share")
    assert store.get(1, "site-a", ID1) == b"second version"
    assert store.list(1, "site-a") == [ID1, ID2]
    assert store.get(2, "site-a", ID1) == b"escrow share"
    assert store.usage("site-a") == len(b"second version") + 5 + len(b"escrow share")
    # Another owner sees nothing of site-a's records, even under the same ID.
    assert store.get(1, "site-b", ID1) is None
    assert store.list(1, "site-b") == []
    assert store.delete(1, "site-a", ID2) and not store.delete(1, "site-a", ID2)
    # A reopened store has kept everything (and no temp file is listed).
    again = HeldRecords(tmp_path / "records")
    assert again.list(1, "site-a") == [ID1]
    assert not list((tmp_path / "records").rglob("*.part"))


def test_no_owner_text_or_bad_id_becomes_a_path(tmp_path: Path) -> None:
    store = HeldRecords(tmp_path / "records")
    for bad_site in ["../x", "Site", "a/b", ""]:
        with pytest.raises(FormatError):
            store.put(1, bad_site, ID1, b"x")
    for bad_id in ["../" + "a" * 61, "A" * 64, "a" * 63]:
        with pytest.raises(FormatError):
            store.put(1, "site-a", bad_id, b"x")
    with pytest.raises(FormatError):
        store.put(9, "site-a", ID1, b"x")
    store.put(1, "site-a", ID1, b"x")
    names = [p.name for p in (tmp_path / "records").rglob("*")]
    assert "site-a" not in names


def test_quota_and_size_bounds(tmp_path: Path) -> None:
    store = HeldRecords(tmp_path / "records", quota_bytes=100)
    store.put(1, "site-a", ID1, b"x" * 60)
    with pytest.raises(QuotaExceeded):
        store.put(1, "site-a", ID2, b"y" * 60)
    store.put(1, "site-a", ID1, b"x" * 90)  # a replacement is charged the difference
    store.put(1, "site-b", ID2, b"y" * 60)  # another owner has its own quota
    with pytest.raises(LimitExceeded):
        HeldRecords(tmp_path / "big").put(1, "site-a", ID1, bytes(MAX_RECORD_BYTES + 1))
