"""Fragment leases on the holder: a put leases, the owner renews, the lapsed are removed.

Real fragments, real files and real SQLite; time is the store's injected clock.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshpacs.errors import FormatError, LimitExceeded
from meshpacs.store import FragmentStore, QuotaPolicy
from meshpacs.store.index import SCHEMA_VERSION
from meshpacs.store.names import fragment_path
from meshpacs.store.store import MAX_LIST, MAX_RENEW

from .conftest import QUOTA
from .helpers import OTHER, OWNER, FakeClock, Fragment, files_under, make_bundle, put

DAY = 86400.0
LEASE = 30 * DAY  # the policy's defaults
MAX_LEASE = 90 * DAY
GRACE = 7 * DAY


def lease_of(store: FragmentStore, fragment: Fragment) -> float | None:
    stored = store.has(fragment.fid)
    assert stored is not None
    return stored.lease_expires


@contextlib.contextmanager
def index_of(store_dir: Path) -> Iterator[sqlite3.Connection]:
    """The index as another program would see it, for making rows from before leases."""
    with contextlib.closing(sqlite3.connect(store_dir / "index.sqlite")) as db, db:
        yield db


def reopen(store_dir: Path, clock: FakeClock) -> FragmentStore:
    return FragmentStore(store_dir, QuotaPolicy(QUOTA), clock=clock)


# --- the policy ----------------------------------------------------------------------------


def test_the_policy_leases_thirty_days_and_renews_for_at_most_ninety() -> None:
    policy = QuotaPolicy(QUOTA)
    assert (policy.lease_seconds, policy.max_lease_seconds) == (LEASE, MAX_LEASE)


@pytest.mark.parametrize(
    "lease", [{"lease_seconds": 0}, {"lease_seconds": -1.0}, {"max_lease_seconds": math.inf},
              {"lease_seconds": math.nan}, {"lease_seconds": True},
              {"lease_seconds": 10 * DAY, "max_lease_seconds": 5 * DAY}],
    ids=repr,
)  # fmt: skip
def test_the_policy_refuses_leases_that_make_no_sense(lease: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        QuotaPolicy(QUOTA, **lease)  # type: ignore[arg-type]


# --- a put leases --------------------------------------------------------------------------


def test_a_put_leases_the_fragment_for_the_policys_time(
    store: FragmentStore, clock: FakeClock
) -> None:
    fragment = make_bundle(seed=60)[0]
    stored = put(store, fragment)
    assert stored.lease_expires == clock.now + LEASE
    assert lease_of(store, fragment) == clock.now + LEASE


def test_a_re_put_keeps_the_later_of_the_two_leases(store: FragmentStore, clock: FakeClock) -> None:
    original, replacement = make_bundle(seed=61)[0], make_bundle(seed=62)[0]
    put(store, original)
    assert store.renew(OWNER, [original.fid], MAX_LEASE) == 1
    long_lease = clock.now + MAX_LEASE
    clock.advance(DAY)
    # A put a day later would lease for less than the renewal did: the renewal stands,
    # whether the put sends the same bytes or replaces them.
    assert put(store, original).lease_expires == long_lease
    assert put(store, original, data=replacement.data).lease_expires == long_lease
    assert lease_of(store, original) == long_lease
    clock.advance(80 * DAY)
    assert put(store, original).lease_expires == clock.now + LEASE
    assert lease_of(store, original) == clock.now + LEASE


# --- renewing ------------------------------------------------------------------------------


def test_renewing_extends_the_lease_from_now(store: FragmentStore, clock: FakeClock) -> None:
    fragments = make_bundle(seed=63)
    for fragment in fragments:
        put(store, fragment)
    clock.advance(20 * DAY)
    assert store.renew(OWNER, [f.fid for f in fragments], 60 * DAY) == 3
    assert all(lease_of(store, f) == clock.now + 60 * DAY for f in fragments)


def test_renewing_is_capped_at_the_policys_maximum(store: FragmentStore, clock: FakeClock) -> None:
    fragment = make_bundle(seed=64)[0]
    put(store, fragment)
    assert store.renew(OWNER, [fragment.fid], 10 * 365 * DAY) == 1
    assert lease_of(store, fragment) == clock.now + MAX_LEASE


def test_renewing_never_shortens_a_lease(store: FragmentStore, clock: FakeClock) -> None:
    fragment = make_bundle(seed=65)[0]
    put(store, fragment)
    store.renew(OWNER, [fragment.fid], 60 * DAY)
    long_lease = clock.now + 60 * DAY
    clock.advance(DAY)
    # Still counted: the fragment is held and leased at least as long as asked.
    assert store.renew(OWNER, [fragment.fid], DAY) == 1
    assert lease_of(store, fragment) == long_lease


def test_renewing_counts_only_the_owners_own_fragments(
    store: FragmentStore, clock: FakeClock
) -> None:
    mine, theirs, unknown = make_bundle(seed=66)
    put(store, mine)
    put(store, theirs, OTHER)
    their_lease = lease_of(store, theirs)
    clock.advance(DAY)
    assert store.renew(OWNER, [mine.fid, theirs.fid, unknown.fid], 60 * DAY) == 1
    assert lease_of(store, mine) == clock.now + 60 * DAY
    assert lease_of(store, theirs) == their_lease
    assert store.renew(OTHER, [mine.fid], 60 * DAY) == 0
    assert store.renew(OWNER, [], 60 * DAY) == 0


def test_an_id_named_twice_is_counted_once(store: FragmentStore) -> None:
    fragment = make_bundle(seed=67)[0]
    put(store, fragment)
    assert store.renew(OWNER, [fragment.fid] * 5, DAY) == 1


def test_a_quarantined_fragment_is_renewed_for_its_owner(store: FragmentStore) -> None:
    fragment = make_bundle(seed=68)[0]
    put(store, fragment)
    fragment_path(store.directory, fragment.fid).write_bytes(bytes(fragment.size))
    assert store.scrub(fragment.fid) is not None
    assert store.renew(OWNER, [fragment.fid], DAY) == 1


def test_a_renewal_of_more_than_1024_ids_is_refused(store: FragmentStore) -> None:
    ids = [f"{i:064x}" for i in range(MAX_RENEW + 1)]
    assert MAX_RENEW == 1024
    assert store.renew(OWNER, ids[:MAX_RENEW], DAY) == 0
    with pytest.raises(LimitExceeded):
        store.renew(OWNER, ids, DAY)


@pytest.mark.parametrize("seconds", [0, -1.0, math.inf, -math.inf, math.nan, True, "60"])
def test_a_renewal_for_no_time_or_no_number_is_refused(
    store: FragmentStore, seconds: float
) -> None:
    fragment = make_bundle(seed=69)[0]
    stored = put(store, fragment)
    with pytest.raises(LimitExceeded):
        store.renew(OWNER, [fragment.fid], seconds)
    assert store.has(fragment.fid) == stored


def test_a_renewal_with_a_bad_id_or_owner_is_refused(store: FragmentStore) -> None:
    with pytest.raises(FormatError, match="fragment ID"):
        store.renew(OWNER, ["../" + "a" * 61], DAY)
    with pytest.raises(FormatError, match="site ID"):
        store.renew("St Marys", ["a" * 64], DAY)


# --- expiring ------------------------------------------------------------------------------


def test_only_fragments_past_their_lease_and_the_grace_are_removed(
    store: FragmentStore, clock: FakeClock
) -> None:
    kept, lapsed, renewed = make_bundle(seed=70)
    put(store, lapsed)
    put(store, renewed)
    clock.advance(10 * DAY)
    put(store, kept)  # ends 10 days after the other two
    store.renew(OWNER, [renewed.fid], 60 * DAY)
    clock.advance(LEASE + GRACE - 10 * DAY)
    assert store.expire(GRACE) == []  # lapsed has been out of lease for exactly the grace
    clock.advance(1)
    assert store.expire(GRACE) == [lapsed.fid]
    assert store.has(lapsed.fid) is None
    assert store.has(kept.fid) is not None
    assert store.has(renewed.fid) is not None
    assert store.expire(GRACE) == []


def test_expiry_removes_the_longest_lapsed_first_and_honours_the_limit(
    store: FragmentStore, clock: FakeClock
) -> None:
    fragments = make_bundle(seed=71, n=5)
    for fragment in reversed(fragments):  # so ID order is not lease order
        put(store, fragment)
        clock.advance(DAY)
    clock.advance(LEASE + GRACE)
    oldest_first = [f.fid for f in reversed(fragments)]
    assert store.expire(GRACE, limit=2) == oldest_first[:2]
    assert store.expire(GRACE, limit=2) == oldest_first[2:4]
    assert store.expire(GRACE) == oldest_first[4:]


def test_expiry_leaves_files_rows_and_usage_in_agreement(store_dir: Path, clock: FakeClock) -> None:
    lapsed, kept, theirs = make_bundle(seed=72)
    with reopen(store_dir, clock) as store:
        put(store, lapsed)
        put(store, theirs, OTHER)
        clock.advance(LEASE + GRACE + 1)
        put(store, kept)
        assert sorted(store.expire(GRACE)) == sorted([lapsed.fid, theirs.fid])
        for gone in (lapsed, theirs):
            assert store.has(gone.fid) is None
            assert store.open_read(gone.fid) is None
            assert not fragment_path(store_dir, gone.fid).exists()
        assert store.held_ids() == [kept.fid]
        assert [r.fragment_id for r in store.list_owned(OWNER)] == [kept.fid]
        assert store.usage(OWNER) == kept.size
        assert store.usage(OTHER) == 0
        assert store.total_usage() == kept.size
        assert files_under(store_dir) == [fragment_path(store_dir, kept.fid)]
    with reopen(store_dir, clock) as store:
        assert store.reconciled.clean  # nothing left behind for the open to repair
        assert store.held_ids() == [kept.fid]


def test_a_quarantined_fragment_expires_like_any_other(
    store: FragmentStore, clock: FakeClock
) -> None:
    fragment = make_bundle(seed=73)[0]
    put(store, fragment)
    fragment_path(store.directory, fragment.fid).write_bytes(bytes(fragment.size))
    assert store.scrub(fragment.fid) is not None
    clock.advance(LEASE + GRACE + 1)
    assert store.expire(GRACE) == [fragment.fid]
    assert store.quarantined() == []
    assert files_under(store.directory) == []
    assert store.usage(OWNER) == 0


def test_the_owner_may_put_again_what_expired(store: FragmentStore, clock: FakeClock) -> None:
    fragment = make_bundle(seed=74)[0]
    put(store, fragment)
    clock.advance(LEASE + 1)
    assert store.expire(0) == [fragment.fid]
    assert put(store, fragment).lease_expires == clock.now + LEASE
    assert store.has(fragment.fid) is not None


@pytest.mark.parametrize(
    ("grace", "limit"),
    [(-1.0, 10), (math.nan, 10), (math.inf, 10), (0, 0), (0, MAX_LIST + 1), (0, True)],
)
def test_expiry_with_a_bad_grace_or_limit_is_refused(
    store: FragmentStore, grace: float, limit: int
) -> None:
    with pytest.raises(LimitExceeded):
        store.expire(grace, limit)


# --- rows from before leases ---------------------------------------------------------------


def downgrade_to_v1(store_dir: Path) -> None:
    """Make the index what version 1 left: no lease index of v2, rows without a lease."""
    with index_of(store_dir) as db:
        db.execute("DROP INDEX fragments_unleased")
        db.execute("UPDATE fragments SET lease_expires = NULL")
        db.execute("PRAGMA user_version = 1")


def test_a_version_1_index_is_upgraded_and_its_rows_count_from_their_put(
    store_dir: Path, clock: FakeClock
) -> None:
    old, renewed, new = make_bundle(seed=75)
    with reopen(store_dir, clock) as store:
        put(store, old)
        put(store, renewed)
    stored_at = clock.now
    downgrade_to_v1(store_dir)

    clock.advance(DAY)
    with reopen(store_dir, clock) as store:
        assert store.reconciled.clean
        assert lease_of(store, old) is None  # rows are not rewritten by the upgrade
        put(store, new)
        # A renewal shorter than the row's implied lease (stored_at + 30 days) keeps it.
        assert store.renew(OWNER, [renewed.fid], DAY) == 1
        assert lease_of(store, renewed) == stored_at + LEASE
        clock.advance(LEASE - DAY + GRACE)
        assert store.expire(GRACE) == []
        clock.advance(1)
        assert sorted(store.expire(GRACE)) == sorted([old.fid, renewed.fid])
        assert store.held_ids() == [new.fid]
    with index_of(store_dir) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert {"fragments_lease", "fragments_unleased"} <= names


def test_finding_lapsed_fragments_walks_indexes_not_the_table(store: FragmentStore) -> None:
    # The node calls expire every so often, over what may be millions of rows.
    queries: list[str] = []
    db = store._index._db
    db.set_trace_callback(queries.append)
    try:
        store.expire(GRACE)
    finally:
        db.set_trace_callback(None)
    [select] = [q for q in queries if "SELECT" in q]
    plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + select)]
    assert [step for step in plan if step.startswith(("SCAN fragments", "SEARCH"))] == [
        "SEARCH fragments USING INDEX fragments_lease (lease_expires<?)",
        "SEARCH fragments USING INDEX fragments_unleased (stored_at<?)",
    ]
