"""Scrub: a holder re-verifies what it stores; a fragment that rotted is quarantined, not served,
and its owner's put of the same ID brings it back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from meshpacs.erasure.layout import HEADER_SIZE
from meshpacs.store import FragmentState, FragmentStore, QuotaPolicy
from meshpacs.store.names import fragment_path

from .conftest import QUOTA
from .helpers import OWNER, FakeClock, Fragment, flip, make_bundle, put

ROT: dict[str, Callable[[Fragment], bytes]] = {
    "version byte": flip(lambda f: 0),
    "k field": flip(lambda f: 6),
    "share field": flip(lambda f: 10),
    "length field": flip(lambda f: 22),
    "bundle id": flip(lambda f: 30),
    "a share byte": flip(lambda f: HEADER_SIZE + 7),
    "a block hash": flip(lambda f: f.size - 32 * 3 - 1),
    "truncated": lambda f: f.data[: f.size - 1],
    "zero-filled": lambda f: bytes(f.size),
    "grown": lambda f: f.data + b"\x00",
}


def _rot_on_disk(store: FragmentStore, fragment: Fragment, how: str) -> Path:
    # What is on disk is the fragment's own bytes until this rots them.
    path = fragment_path(store.directory, fragment.fid)
    path.write_bytes(ROT[how](fragment))
    return path


def test_an_intact_fragment_passes_and_stays_served(store: FragmentStore) -> None:
    fragment = make_bundle(seed=11)[1]
    put(store, fragment)
    assert store.scrub(fragment.fid) is None
    assert store.has(fragment.fid) is not None
    assert store.quarantined() == []


@pytest.mark.parametrize("how", list(ROT))
def test_a_rotten_fragment_is_quarantined_and_no_longer_served(
    store: FragmentStore, how: str
) -> None:
    fragment = make_bundle(seed=12)[2]
    put(store, fragment)
    _rot_on_disk(store, fragment, how)
    finding = store.scrub(fragment.fid)
    assert finding is not None
    assert (finding.fragment_id, finding.owner_site, finding.share) == (
        fragment.fid,
        OWNER,
        fragment.share,
    )
    assert finding.reason
    assert store.has(fragment.fid) is None
    assert store.open_read(fragment.fid) is None
    assert [r.fragment_id for r in store.quarantined()] == [fragment.fid]
    assert fragment.fid not in store.held_ids()  # no longer announced as held
    # Quota and ownership stand until the owner acts.
    assert store.usage(OWNER) == fragment.size
    assert store.scrub(fragment.fid) is None  # not served, so not scrubbed again


def test_two_fragments_swapped_on_disk_are_both_caught(store: FragmentStore) -> None:
    first, second = make_bundle(seed=13)[:2]
    put(store, first)
    put(store, second)
    a, b = fragment_path(store.directory, first.fid), fragment_path(store.directory, second.fid)
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    assert store.scrub(first.fid) is not None
    assert store.scrub(second.fid) is not None


def test_a_vanished_file_is_quarantined(store: FragmentStore) -> None:
    fragment = make_bundle(seed=14)[0]
    put(store, fragment)
    fragment_path(store.directory, fragment.fid).unlink()
    finding = store.scrub(fragment.fid)
    assert finding is not None and "gone" in finding.reason


def test_the_owners_put_replaces_a_quarantined_fragment(store: FragmentStore) -> None:
    fragment = make_bundle(seed=15)[0]
    put(store, fragment)
    _rot_on_disk(store, fragment, "a share byte")
    assert store.scrub(fragment.fid) is not None
    stored = put(store, fragment)
    assert stored.state is FragmentState.OK
    assert store.has(fragment.fid) is not None
    assert fragment_path(store.directory, fragment.fid).read_bytes() == fragment.data
    assert store.quarantined() == []
    assert store.usage(OWNER) == fragment.size


def test_quarantine_survives_a_restart(store_dir: Path, clock: FakeClock) -> None:
    fragment = make_bundle(seed=16)[1]
    with FragmentStore(store_dir, QuotaPolicy(QUOTA), clock=clock) as store:
        put(store, fragment)
        _rot_on_disk(store, fragment, "zero-filled")
        assert store.scrub(fragment.fid) is not None
    with FragmentStore(store_dir, QuotaPolicy(QUOTA), clock=clock) as store:
        assert store.has(fragment.fid) is None
        assert [r.fragment_id for r in store.quarantined()] == [fragment.fid]


def test_the_owner_may_still_delete_a_quarantined_fragment(store: FragmentStore) -> None:
    fragment = make_bundle(seed=17)[0]
    put(store, fragment)
    _rot_on_disk(store, fragment, "truncated")
    assert store.scrub(fragment.fid) is not None
    assert store.delete(fragment.fid, OWNER)
    assert store.quarantined() == []
    assert store.usage(OWNER) == 0
    assert not fragment_path(store.directory, fragment.fid).exists()
