"""The fragment store with real fragments, real files and real SQLite."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from meshpacs.erasure import decode_bundle_to_memory
from meshpacs.erasure.layout import HEADER_SIZE
from meshpacs.errors import (
    ConfigError,
    CorruptFragment,
    Forbidden,
    FormatError,
    LimitExceeded,
    QuotaExceeded,
    SchemaTooNew,
)
from meshpacs.store import (
    MAX_LIST,
    MAX_READ_BYTES,
    FragmentState,
    FragmentStore,
    QuotaPolicy,
)

from .conftest import QUOTA
from .helpers import (
    OTHER,
    OWNER,
    FakeClock,
    Fragment,
    chunks,
    files_under,
    flip,
    make_bundle,
    put,
)


def assert_nothing_left(store: FragmentStore, fragment: Fragment) -> None:
    assert store.has(fragment.fid) is None
    assert files_under(store.directory) == []
    assert store.usage(OWNER) == 0
    assert store.available(OWNER) == QUOTA


# --- round trip ---------------------------------------------------------------------------


def test_fragments_come_back_exactly_and_decode(store: FragmentStore) -> None:
    fragments = make_bundle(seed=1)
    for fragment in fragments:
        stored = put(store, fragment, expected_set_hash=fragment.bundle.ref.set_hash)
        assert stored.size == fragment.size
        assert stored.share == fragment.share
        assert stored.set_hash == fragment.bundle.ref.set_hash
        assert stored.state is FragmentState.OK
        assert stored.lease_expires == stored.stored_at + store.quota.lease_seconds
        assert store.has(fragment.fid) == stored

    first = fragments[0]
    path = store.directory / first.fid[:2] / first.fid
    assert path.read_bytes() == first.data
    assert store.read_range(first.fid, 0, HEADER_SIZE) == first.data[:HEADER_SIZE]
    assert store.read_range(first.fid, 100, 777) == first.data[100:877]
    assert store.read_range(first.fid, first.size - 5, 5) == first.data[-5:]
    assert store.read_range(first.fid, first.size, 0) == b""
    assert store.usage(OWNER) == sum(f.size for f in fragments)

    # Any k of the stored fragments, read back through the store, rebuild the bundle.
    bundle = first.bundle
    readers = [store.open_read(f.fid) for f in fragments[1:]]
    assert all(readers)
    try:
        decoded = decode_bundle_to_memory(bundle.ref, bundle.data_key, readers)  # type: ignore[arg-type]
    finally:
        for reader in readers:
            assert reader is not None
            reader.close()
    assert [data for _, data in decoded] == list(first.instances)


def test_has_and_reads_answer_none_for_unknown(store: FragmentStore) -> None:
    missing = make_bundle(seed=2)[0].fid
    assert store.has(missing) is None
    assert store.open_read(missing) is None
    assert store.read_range(missing, 0, 10) is None


def test_read_range_is_bounded(store: FragmentStore) -> None:
    fragment = make_bundle(seed=3)[0]
    put(store, fragment)
    with pytest.raises(LimitExceeded):
        store.read_range(fragment.fid, fragment.size - 10, 11)
    with pytest.raises(LimitExceeded):
        store.read_range(fragment.fid, 0, MAX_READ_BYTES + 1)
    with pytest.raises(LimitExceeded):
        store.read_range(fragment.fid, -1, 10)
    with pytest.raises(LimitExceeded):
        store.read_range(fragment.fid, 0, -1)


def test_list_owned_pages_through_one_owner_only(store: FragmentStore) -> None:
    fragments = make_bundle(seed=4, n=4)
    for fragment in fragments[:3]:
        put(store, fragment)
    put(store, fragments[3], OTHER)
    mine = sorted(f.fid for f in fragments[:3])
    first = store.list_owned(OWNER, limit=2)
    assert [r.fragment_id for r in first] == mine[:2]
    rest = store.list_owned(OWNER, after=first[-1].fragment_id)
    assert [r.fragment_id for r in rest] == mine[2:]
    assert [r.fragment_id for r in store.list_owned(OTHER)] == [fragments[3].fid]
    with pytest.raises(LimitExceeded):
        store.list_owned(OWNER, limit=MAX_LIST + 1)


# --- refused fragments leave nothing behind -----------------------------------------------


BIT_FLIPS = {
    "share number": flip(lambda f: 10),
    "bundle id": flip(lambda f: 30),
    "first block": flip(lambda f: HEADER_SIZE),
    "middle block": flip(lambda f: f.size // 2),
    "block hash": flip(lambda f: f.size - 32 * 3 - 1),
    "own share root": flip(lambda f: f.size - 32 * (3 - f.share) + 5),
}


@pytest.mark.parametrize("where", list(BIT_FLIPS))
def test_one_flipped_bit_is_refused_at_commit(store: FragmentStore, where: str) -> None:
    fragment = make_bundle(seed=5)[0]
    with pytest.raises(CorruptFragment):
        put(store, fragment, data=BIT_FLIPS[where](fragment))
    assert_nothing_left(store, fragment)


def test_version_byte_flipped_is_refused(store: FragmentStore) -> None:
    fragment = make_bundle(seed=5)[1]
    with pytest.raises(FormatError):
        put(store, fragment, data=flip(lambda f: 0)(fragment))
    assert_nothing_left(store, fragment)


def test_a_fragment_of_another_set_is_refused_when_the_set_hash_is_given(
    store: FragmentStore,
) -> None:
    fragment = make_bundle(seed=6)[0]
    other_set = make_bundle(seed=7)[0].bundle.ref.set_hash
    with pytest.raises(CorruptFragment, match="set hash"):
        put(store, fragment, expected_set_hash=other_set)
    assert_nothing_left(store, fragment)


def test_only_the_set_hash_catches_a_changed_root_of_another_share(store: FragmentStore) -> None:
    fragment = make_bundle(seed=6)[0]
    # Share 0 with the root of share 2 changed is self-consistent, but not what was encoded.
    altered = flip(lambda f: f.size - 1)(fragment)
    with pytest.raises(CorruptFragment, match="set hash"):
        put(store, fragment, data=altered, expected_set_hash=fragment.bundle.ref.set_hash)
    assert_nothing_left(store, fragment)
    stored = put(store, fragment, data=altered)
    assert stored.set_hash != fragment.bundle.ref.set_hash


def test_truncated_fragment_is_refused_at_commit(store: FragmentStore) -> None:
    fragment = make_bundle(seed=8)[0]
    with pytest.raises(CorruptFragment, match="cut short"):
        put(store, fragment, data=fragment.data[:-1], size=fragment.size)
    assert_nothing_left(store, fragment)


@pytest.mark.parametrize("declared", [-1, +1, +4096])
def test_declared_size_that_disagrees_with_the_header_is_refused_at_the_header(
    store: FragmentStore, declared: int
) -> None:
    fragment = make_bundle(seed=9)[0]
    pending = store.begin_put(fragment.fid, OWNER, fragment.size + declared)
    pending.write(fragment.data[: HEADER_SIZE - 1])
    with pytest.raises(CorruptFragment, match="header implies"):
        pending.write(fragment.data[HEADER_SIZE - 1 : HEADER_SIZE + 10])
    assert pending.closed
    assert_nothing_left(store, fragment)


def test_header_whose_size_disagrees_with_the_bytes_is_refused(store: FragmentStore) -> None:
    fragment = make_bundle(seed=10)[0]
    lying = bytearray(fragment.data)
    lying[22] ^= 0x80  # the bundle length: the header now implies another size
    pending = store.begin_put(fragment.fid, OWNER, fragment.size)
    with pytest.raises(CorruptFragment, match="header implies"):
        pending.write(bytes(lying[:HEADER_SIZE]))
    assert_nothing_left(store, fragment)


def test_padded_fragment_is_refused_past_its_declared_size(store: FragmentStore) -> None:
    fragment = make_bundle(seed=11)[0]
    pending = store.begin_put(fragment.fid, OWNER, fragment.size)
    pending.write(fragment.data)
    with pytest.raises(LimitExceeded, match="past its declared size"):
        pending.write(b"\x00")
    assert_nothing_left(store, fragment)


def test_sizes_out_of_bounds_are_refused_before_anything_exists(
    store_dir: Path, clock: FakeClock
) -> None:
    fragment = make_bundle(seed=12)[0]
    with FragmentStore(
        store_dir, QuotaPolicy(QUOTA), max_fragment_bytes=fragment.size - 1, clock=clock
    ) as small:
        with pytest.raises(LimitExceeded):
            small.begin_put(fragment.fid, OWNER, fragment.size)
        with pytest.raises(CorruptFragment):
            small.begin_put(fragment.fid, OWNER, HEADER_SIZE - 1)
        assert files_under(small.directory) == []


def test_abort_and_context_exit_discard_the_pending_file(store: FragmentStore) -> None:
    fragment = make_bundle(seed=13)[0]
    pending = store.begin_put(fragment.fid, OWNER, fragment.size)
    pending.write(fragment.data[:500])
    assert store.available(OWNER) == QUOTA - fragment.size
    assert len(files_under(store.directory)) == 1
    pending.abort()
    pending.abort()  # idempotent
    assert_nothing_left(store, fragment)
    with pytest.raises(ValueError):
        pending.write(b"x")
    with store.begin_put(fragment.fid, OWNER, fragment.size) as second:
        second.write(fragment.data[:500])
    assert second.closed
    assert_nothing_left(store, fragment)


# --- quota ---------------------------------------------------------------------------------


def test_quota_is_refused_before_anything_is_written(store_dir: Path, clock: FakeClock) -> None:
    fragments = make_bundle(seed=14)
    size = fragments[0].size
    assert all(f.size == size for f in fragments)
    policy = QuotaPolicy(2 * size, overrides={OTHER: size - 1})
    with FragmentStore(store_dir, policy, clock=clock) as store:
        put(store, fragments[0])
        put(store, fragments[1])
        with pytest.raises(QuotaExceeded):
            store.begin_put(fragments[2].fid, OWNER, size)
        with pytest.raises(QuotaExceeded):
            store.begin_put(fragments[2].fid, OTHER, size)
        assert not any(store.directory.joinpath("tmp").iterdir())
        assert store.usage(OWNER) == 2 * size
        assert store.available(OWNER) == 0
        assert store.usage(OTHER) == 0
        # Deleting frees the room again.
        assert store.delete(fragments[0].fid, OWNER)
        put(store, fragments[2])
        assert store.usage(OWNER) == 2 * size


def test_fragments_still_arriving_count_against_the_quota(
    store_dir: Path, clock: FakeClock
) -> None:
    fragments = make_bundle(seed=15)
    size = fragments[0].size
    with FragmentStore(store_dir, QuotaPolicy(size + size // 2), clock=clock) as store:
        pending = store.begin_put(fragments[0].fid, OWNER, size)
        with pytest.raises(QuotaExceeded):
            store.begin_put(fragments[1].fid, OWNER, size)
        pending.abort()
        put(store, fragments[1])
        assert store.usage(OWNER) == size


def test_quota_policy_is_checked() -> None:
    with pytest.raises(ValueError):
        QuotaPolicy(-1)
    with pytest.raises(FormatError):
        QuotaPolicy(10, overrides={"../etc": 5})
    overrides = {OTHER: 5}
    policy = QuotaPolicy(10, overrides=overrides)
    overrides[OTHER] = 50
    assert policy.limit_for(OTHER) == 5
    assert policy.limit_for(OWNER) == 10


# --- names ---------------------------------------------------------------------------------

GOOD_ID = "0123456789abcdef" * 4
BAD_IDS = [
    "../x",
    "../" + GOOD_ID[3:],
    GOOD_ID.upper(),
    GOOD_ID[:-1],
    GOOD_ID + "0",
    GOOD_ID[:-1] + "\x00",
    GOOD_ID[:-1] + "/",
    GOOD_ID[:-1] + "g",
    GOOD_ID + "\n",
    "",
    b"0" * 64,
]


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_bad_fragment_ids_are_refused_by_every_call(store: FragmentStore, bad: str) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.begin_put(bad, OWNER, 1000),
        lambda: store.has(bad),
        lambda: store.open_read(bad),
        lambda: store.read_range(bad, 0, 1),
        lambda: store.delete(bad, OWNER),
        lambda: store.list_owned(OWNER, after=bad),
    ]
    for call in calls:
        with pytest.raises(FormatError, match="fragment ID"):
            call()
    assert files_under(store.directory) == []


@pytest.mark.parametrize("bad", ["", "St-Marys", "a/b", "x" * 65, "a\x00"], ids=repr)
def test_bad_site_ids_are_refused(store: FragmentStore, bad: str) -> None:
    with pytest.raises(FormatError, match="site ID"):
        store.begin_put(GOOD_ID, bad, 1000)
    with pytest.raises(FormatError, match="site ID"):
        store.delete(GOOD_ID, bad)
    with pytest.raises(FormatError, match="site ID"):
        store.usage(bad)


# --- owners --------------------------------------------------------------------------------


def test_only_the_owner_may_overwrite_or_delete(store: FragmentStore, clock: FakeClock) -> None:
    original, replacement = make_bundle(seed=16)[0], make_bundle(seed=17, sizes=(20_000,))[0]
    put(store, original)
    with pytest.raises(Forbidden):
        store.begin_put(original.fid, OTHER, original.size)
    with pytest.raises(Forbidden):
        store.delete(original.fid, OTHER)
    assert store.read_range(original.fid, 0, original.size) == original.data
    assert store.usage(OTHER) == 0

    # The owner may replace its fragment with other bytes under the same ID.
    clock.advance(60)
    stored = put(store, original, data=replacement.data)
    assert stored.set_hash == replacement.bundle.ref.set_hash
    assert stored.stored_at == clock.now
    assert store.has(original.fid) == stored
    assert store.read_range(original.fid, 0, replacement.size) == replacement.data
    assert store.usage(OWNER) == replacement.size
    assert len(files_under(store.directory)) == 1

    assert store.delete(original.fid, OWNER)
    assert store.delete(original.fid, OWNER) is False
    assert store.has(original.fid) is None
    assert files_under(store.directory) == []
    assert store.usage(OWNER) == 0


def test_another_site_cannot_take_an_id_that_is_still_arriving(store: FragmentStore) -> None:
    fragment = make_bundle(seed=18)[0]
    pending = store.begin_put(fragment.fid, OWNER, fragment.size)
    with pytest.raises(Forbidden):
        store.begin_put(fragment.fid, OTHER, fragment.size)
    for chunk in chunks(fragment.data):
        pending.write(chunk)
    assert pending.commit().owner_site == OWNER


def test_same_bytes_again_succeed_without_rewriting(store_dir: Path, clock: FakeClock) -> None:
    fragment = make_bundle(seed=19)[0]
    with FragmentStore(store_dir, QuotaPolicy(fragment.size), clock=clock) as store:
        first = put(store, fragment)
        path = store_dir / fragment.fid[:2] / fragment.fid
        inode = os.stat(path).st_ino
        clock.advance(60)
        # Even at the full quota: the re-put replaces, it does not add.
        again = put(store, fragment, expected_set_hash=fragment.bundle.ref.set_hash)
        # Only the lease moves: a put, even one that rewrites nothing, leases afresh.
        assert again == dataclasses.replace(first, lease_expires=clock.now + 30 * 86400)
        assert store.has(fragment.fid) == again
        assert os.stat(path).st_ino == inode
        assert store.usage(OWNER) == fragment.size
        assert files_under(store.directory) == [path]


# --- opening -------------------------------------------------------------------------------


def test_a_store_directory_opens_only_once(store: FragmentStore, clock: FakeClock) -> None:
    with pytest.raises(ConfigError, match="already open"):
        FragmentStore(store.directory, QuotaPolicy(QUOTA), clock=clock)


def test_calls_on_a_closed_store_are_refused(store: FragmentStore) -> None:
    fragment = make_bundle(seed=20)[0]
    pending = store.begin_put(fragment.fid, OWNER, fragment.size)
    pending.write(fragment.data)
    store.close()
    store.close()
    with pytest.raises(ValueError):
        pending.commit()
    with pytest.raises(ValueError):
        store.has(fragment.fid)


def test_an_index_from_a_newer_meshpacs_is_refused(store_dir: Path, clock: FakeClock) -> None:
    FragmentStore(store_dir, QuotaPolicy(QUOTA), clock=clock).close()
    set_user_version(store_dir, 99)
    with pytest.raises(SchemaTooNew):
        FragmentStore(store_dir, QuotaPolicy(QUOTA), clock=clock)
    # The refused open released the directory: it opens again once the version is known.
    set_user_version(store_dir, 1)
    FragmentStore(store_dir, QuotaPolicy(QUOTA), clock=clock).close()


def set_user_version(store_dir: Path, version: int) -> None:
    with contextlib.closing(sqlite3.connect(store_dir / "index.sqlite")) as db:
        db.execute(f"PRAGMA user_version = {version}")
