"""Threads sharing one store, as the transport's ``asyncio.to_thread`` calls do; and memory."""

from __future__ import annotations

import io
import random
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from meshpacs.erasure import CodingParams
from meshpacs.erasure.encoder import encode_stream
from meshpacs.errors import QuotaExceeded
from meshpacs.store import FragmentStore, QuotaPolicy, StoredFragment

from .helpers import OTHER, OWNER, FakeClock, Fragment, make_bundle, put


def race(workers: list[Callable[[], StoredFragment]]) -> list[StoredFragment | Exception]:
    """Run every worker in its own thread, all released at once; their results in order."""
    barrier = threading.Barrier(len(workers))
    results: list[StoredFragment | Exception] = [RuntimeError("did not run")] * len(workers)

    def run(slot: int) -> None:
        barrier.wait()
        try:
            results[slot] = workers[slot]()
        except Exception as exc:
            results[slot] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def putter(store: FragmentStore, fragment: Fragment, owner: str) -> Callable[[], StoredFragment]:
    return lambda: put(store, fragment, owner)


def test_parallel_puts_of_one_owner_cannot_together_exceed_its_quota(
    store_dir: Path, clock: FakeClock
) -> None:
    fragments = [f for seed in range(40, 43) for f in make_bundle(seed=seed)]
    size = fragments[0].size
    assert all(f.size == size for f in fragments)
    quota = 2 * size + size // 2
    with FragmentStore(store_dir, QuotaPolicy(quota), clock=clock) as store:
        mine = [putter(store, f, OWNER) for f in fragments[:8]]
        theirs = [putter(store, fragments[8], OTHER)]
        results = race(mine + theirs)
        kept = [r for r in results[:8] if isinstance(r, StoredFragment)]
        refused = [r for r in results[:8] if isinstance(r, QuotaExceeded)]
        assert len(kept) == 2, results
        assert len(refused) == 6, results
        assert isinstance(results[8], StoredFragment), results[8]
        assert store.usage(OWNER) == 2 * size <= quota
        assert sorted(r.fragment_id for r in store.list_owned(OWNER)) == sorted(
            r.fragment_id for r in kept
        )
        assert not any((store_dir / "tmp").iterdir())


def test_parallel_puts_of_one_id_leave_one_fragment(store_dir: Path, clock: FakeClock) -> None:
    fragment = make_bundle(seed=43)[0]
    with FragmentStore(store_dir, QuotaPolicy(10 * fragment.size), clock=clock) as store:
        results = race([putter(store, fragment, OWNER) for _ in range(6)])
        assert all(isinstance(r, StoredFragment) for r in results), results
        assert store.usage(OWNER) == fragment.size
        assert store.read_range(fragment.fid, 0, fragment.size) == fragment.data
        assert not any((store_dir / "tmp").iterdir())


def test_a_large_fragment_never_sits_whole_in_memory(
    tmp_path: Path, store_dir: Path, clock: FakeClock
) -> None:
    rng = random.Random(44)
    data = rng.randbytes(8 * 1024 * 1024)
    fragment_file = tmp_path / "share0"
    params = CodingParams(k=2, n=2, segment_size=64 * 1024)
    with fragment_file.open("wb") as out, (tmp_path / "share1").open("wb") as spare:
        encode_stream(io.BytesIO(data), len(data), params, [out, spare])
    del data
    size = fragment_file.stat().st_size
    assert size > 4 * 1024 * 1024
    fid = rng.randbytes(32).hex()
    with FragmentStore(store_dir, QuotaPolicy(size), clock=clock) as store:
        tracemalloc.start()
        try:
            pending = store.begin_put(fid, OWNER, size)
            with fragment_file.open("rb") as source:
                while chunk := source.read(64 * 1024):
                    pending.write(chunk)
            stored = pending.commit()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert stored.size == size
        assert peak < 1024 * 1024, f"peak {peak} bytes while storing a {size}-byte fragment"
