"""Opening a store after a crash: each interrupted state is built for real, then reopened.

A crash is simulated by closing the store at the point of interest (or leaving a pending
fragment unfinished) and changing files or index rows the way the cut-short step would
have left them; the next open must bring both back into agreement.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from meshpacs.store import FragmentState, FragmentStore, QuotaPolicy, ReconcileReport

from .conftest import QUOTA
from .helpers import OWNER, FakeClock, Fragment, files_under, make_bundle, put


def reopen(store_dir: Path, clock: FakeClock) -> FragmentStore:
    return FragmentStore(store_dir, QuotaPolicy(QUOTA), clock=clock)


@contextlib.contextmanager
def index_of(store_dir: Path) -> Iterator[sqlite3.Connection]:
    """The index as another program would see it, for setting up a crash state."""
    with contextlib.closing(sqlite3.connect(store_dir / "index.sqlite")) as db, db:
        yield db


def path_of(store_dir: Path, fragment: Fragment) -> Path:
    return store_dir / fragment.fid[:2] / fragment.fid


def stored(store_dir: Path, clock: FakeClock, *fragments: Fragment) -> None:
    with reopen(store_dir, clock) as store:
        for fragment in fragments:
            put(store, fragment)


def test_a_clean_shutdown_needs_no_repair(store_dir: Path, clock: FakeClock) -> None:
    stored(store_dir, clock, *make_bundle(seed=30))
    with reopen(store_dir, clock) as store:
        assert store.reconciled == ReconcileReport()
        assert store.reconciled.clean
        assert len(store.list_owned(OWNER)) == 3


def test_leftover_temp_files_are_removed(store_dir: Path, clock: FakeClock) -> None:
    fragment = make_bundle(seed=31)[0]
    store = reopen(store_dir, clock)
    pending = store.begin_put(fragment.fid, OWNER, fragment.size)
    pending.write(fragment.data[:1000])
    store.close()  # the process "dies" mid-transfer: the pending file stays in tmp/
    (store_dir / "tmp" / "stray.part").write_bytes(b"half a fragment")
    assert len(files_under(store_dir)) == 2
    with reopen(store_dir, clock) as store:
        assert store.reconciled.temp_files_removed == 2
        assert files_under(store_dir) == []
        assert store.available(OWNER) == QUOTA
    pending.abort()


def test_a_file_without_a_row_is_removed(store_dir: Path, clock: FakeClock) -> None:
    kept, orphan = make_bundle(seed=32)[:2]
    stored(store_dir, clock, kept, orphan)
    with index_of(store_dir) as db:  # an interrupted delete: row gone, file not yet
        db.execute("DELETE FROM fragments WHERE id = ?", (orphan.fid,))
    with reopen(store_dir, clock) as store:
        assert store.reconciled.unindexed_files_removed == 1
        assert not path_of(store_dir, orphan).exists()
        assert store.has(orphan.fid) is None
        assert store.has(kept.fid) is not None
        assert store.usage(OWNER) == kept.size


def test_a_row_without_a_file_is_dropped(store_dir: Path, clock: FakeClock) -> None:
    kept, lost = make_bundle(seed=33)[:2]
    stored(store_dir, clock, kept, lost)
    path_of(store_dir, lost).unlink()
    with reopen(store_dir, clock) as store:
        assert store.reconciled.missing_files_dropped == 1
        assert store.has(lost.fid) is None
        assert store.usage(OWNER) == kept.size
        assert [r.fragment_id for r in store.list_owned(OWNER)] == [kept.fid]


def test_an_interrupted_put_whose_file_landed_is_kept(store_dir: Path, clock: FakeClock) -> None:
    fragment = make_bundle(seed=34)[0]
    stored(store_dir, clock, fragment)
    with index_of(store_dir) as db:  # renamed and fsynced, but the row never said "ok"
        db.execute("UPDATE fragments SET state = 'writing' WHERE id = ?", (fragment.fid,))
    with reopen(store_dir, clock) as store:
        assert store.reconciled.interrupted_kept == 1
        record = store.has(fragment.fid)
        assert record is not None
        assert record.state is FragmentState.OK
        assert record.set_hash == fragment.bundle.ref.set_hash
        assert store.read_range(fragment.fid, 0, fragment.size) == fragment.data


def test_an_interrupted_put_whose_file_never_landed_is_dropped(
    store_dir: Path, clock: FakeClock
) -> None:
    fragment = make_bundle(seed=35)[0]
    stored(store_dir, clock, fragment)
    path_of(store_dir, fragment).unlink()  # the row was written, the rename never happened
    with index_of(store_dir) as db:
        db.execute("UPDATE fragments SET state = 'writing' WHERE id = ?", (fragment.fid,))
    with reopen(store_dir, clock) as store:
        assert store.reconciled.interrupted_dropped == 1
        assert store.has(fragment.fid) is None
        assert store.usage(OWNER) == 0


def test_an_interrupted_overwrite_keeps_whichever_fragment_is_on_disk(
    store_dir: Path, clock: FakeClock
) -> None:
    old = make_bundle(seed=36)[0]
    new = make_bundle(seed=37, sizes=(20_000,))[0]
    stored(store_dir, clock, old)
    with index_of(store_dir) as db:  # the row already describes the new bytes; no rename yet
        db.execute(
            "UPDATE fragments SET state = 'writing', size = ?, set_hash = ? WHERE id = ?",
            (new.size, new.bundle.ref.set_hash, old.fid),
        )
    with reopen(store_dir, clock) as store:
        assert store.reconciled.interrupted_kept == 1
        record = store.has(old.fid)
        assert record is not None
        assert (record.size, record.set_hash) == (old.size, old.bundle.ref.set_hash)
        assert store.usage(OWNER) == old.size


def test_an_interrupted_put_whose_file_does_not_verify_is_dropped(
    store_dir: Path, clock: FakeClock
) -> None:
    fragment = make_bundle(seed=38)[0]
    stored(store_dir, clock, fragment)
    path = path_of(store_dir, fragment)
    damaged = bytearray(path.read_bytes())
    damaged[100] ^= 0x04
    path.write_bytes(bytes(damaged))
    with index_of(store_dir) as db:
        db.execute("UPDATE fragments SET state = 'writing' WHERE id = ?", (fragment.fid,))
    with reopen(store_dir, clock) as store:
        assert store.reconciled.interrupted_dropped == 1
        assert not path.exists()
        assert store.has(fragment.fid) is None
        assert store.usage(OWNER) == 0


def test_rows_being_written_are_invisible_until_settled(store_dir: Path, clock: FakeClock) -> None:
    """Outside a crash nobody sees a ``writing`` row; this pins that has() hides one."""
    fragment = make_bundle(seed=39)[0]
    stored(store_dir, clock, fragment)
    with reopen(store_dir, clock) as store:
        with index_of(store_dir) as db:
            db.execute("UPDATE fragments SET state = 'writing' WHERE id = ?", (fragment.fid,))
        assert store.has(fragment.fid) is None
        assert store.open_read(fragment.fid) is None
        assert store.list_owned(OWNER) == []
