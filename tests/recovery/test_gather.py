"""Gathering k good fragments from holders that are up, down, slow, stalled, moved or lying."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from meshpacs.errors import PeerUnreachable, Unrecoverable
from meshpacs.recovery.decode import decode_to_files
from meshpacs.recovery.gather import GOOD, NOT_NEEDED, Attempt, GatheredBundle, gather_bundle

from .holders import KEY_WRAP_KEY, Holders, Made, files_in, make, site


def decoded(made: Made, gathered: GatheredBundle, outdir: Path) -> list[bytes]:
    out = decode_to_files(made.bundle, KEY_WRAP_KEY, gathered.paths, outdir)
    return [path.read_bytes() for _, path in out]


async def test_all_holders_up_gives_the_exact_instances(tmp_path: Path) -> None:
    made = make(seed=1, sizes=(3000, 20_000, 1), k=3, n=5)
    holders = Holders.serving(made)
    gathered = await gather_bundle(made.bundle, holders.fetch, holders.find, tmp_path / "work")
    # k + 1 fetches, primaries first; whichever k verify first are kept.
    assert holders.calls == [(site(s), made.fid(s)) for s in range(4)]
    assert len(gathered.paths) == 3 and set(gathered.paths) <= {0, 1, 2, 3}
    assert gathered.rejected == {}
    assert files_in(tmp_path / "work") == sorted(p.name for p in gathered.paths.values())
    assert holders.lookups == []
    assert decoded(made, gathered, tmp_path / "out") == list(made.instances)


async def test_n_minus_k_holders_down_still_gives_the_exact_instances(tmp_path: Path) -> None:
    made = make(seed=2, k=3, n=5)
    holders = Holders.serving(made)
    holders.down = {site(0), site(3)}
    gathered = await gather_bundle(made.bundle, holders.fetch, holders.find, tmp_path / "work")
    assert sorted(gathered.paths) == [1, 2, 4]
    assert set(gathered.rejected) == {(0, site(0)), (3, site(3))}
    assert all("connection refused" in why for why in gathered.rejected.values())
    assert decoded(made, gathered, tmp_path / "out") == list(made.instances)


def _flip_block(made: Made, share: int) -> bytes:
    data = bytearray(made.fragments[share].data)
    data[made.bundle.ref.header.block_offset(1) + 5] ^= 0x01
    return bytes(data)


@pytest.mark.parametrize(
    ("served", "reason"),
    [
        (lambda m, o: _flip_block(m, 0), "segment 1 block does not match its hash"),
        (lambda m, o: m.fragments[1].data, "is share 1, not the one asked for"),
        (lambda m, o: o.fragments[0].data, "belongs to another bundle"),
        (lambda m, o: m.fragments[0].data[:-100], "bytes, the fragment has"),
        (lambda m, o: m.fragments[0].data + bytes(9000), "holder sent more than"),
        (lambda m, o: b"\x02" + bytes(m.fragments[0].size - 1), "version 2"),
    ],
    ids=["flipped-bit", "other-share", "other-bundle", "truncated", "padded", "garbage"],
)
async def test_a_bad_fragment_is_refused_with_its_reason_and_another_used(
    tmp_path: Path, served: object, reason: str
) -> None:
    made, other = make(seed=3, sizes=(30_000,)), make(seed=4, sizes=(30_000,))
    holders = Holders.serving(made)
    holders.hold(site(0), made.fragments[0], served(made, other))  # type: ignore[operator]
    # Share 2 comes late: else shares 1 and 2 may be good before share 0 is checked, and
    # share 0 is cancelled as not needed (a clean-clone CI run on two busy workers did).
    holders.delay[site(2)] = 0.5
    gathered = await gather_bundle(made.bundle, holders.fetch, holders.find, tmp_path / "work")
    assert sorted(gathered.paths) == [1, 2]
    assert list(gathered.rejected) == [(0, site(0))]
    assert reason in gathered.rejected[(0, site(0))]
    assert files_in(tmp_path / "work") == sorted(p.name for p in gathered.paths.values())
    assert decoded(made, gathered, tmp_path / "out") == list(made.instances)


@pytest.mark.parametrize("sent_before_stalling", [0, 8192])
async def test_a_stalled_holder_times_out_and_the_next_holder_is_tried(
    tmp_path: Path, sent_before_stalling: int
) -> None:
    made = make(
        seed=5, sizes=(40_000,), k=3, n=3, holders={0: ["slow", "fast"], 1: [site(1)], 2: [site(2)]}
    )
    holders = Holders.serving(made)
    holders.stall_after["slow"] = sent_before_stalling
    started = time.monotonic()
    gathered = await gather_bundle(
        made.bundle, holders.fetch, holders.find, tmp_path / "work", timeout=0.3
    )
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 3
    assert sorted(gathered.paths) == [0, 1, 2]
    assert list(gathered.rejected) == [(0, "slow")]
    assert "no bytes for 0.3 s" in gathered.rejected[(0, "slow")]
    assert Attempt(0, "fast", False, GOOD) in gathered.tried
    assert files_in(tmp_path / "work") == sorted(p.name for p in gathered.paths.values())
    assert decoded(made, gathered, tmp_path / "out") == list(made.instances)


async def test_the_fastest_holders_win_and_the_slow_one_is_cancelled(tmp_path: Path) -> None:
    made = make(seed=6, k=2, n=4)
    holders = Holders.serving(made)
    holders.stall_after[site(1)] = 4096  # a slow holder: a little, then a long wait
    started = time.monotonic()
    gathered = await gather_bundle(made.bundle, holders.fetch, holders.find, tmp_path / "work")
    assert time.monotonic() - started < 2
    assert sorted(gathered.paths) == [0, 2]
    assert Attempt(1, site(1), False, NOT_NEEDED) in gathered.tried
    assert gathered.rejected == {}  # slow is not bad
    assert (site(3), made.fid(3)) not in holders.calls  # k + 1 in flight, not all n
    assert files_in(tmp_path / "work") == sorted(p.name for p in gathered.paths.values())


async def test_another_recorded_holder_of_the_same_share_is_tried(tmp_path: Path) -> None:
    made = make(seed=7, k=3, n=3, holders={0: ["site-a", "site-b"], 1: [site(1)], 2: [site(2)]})
    holders = Holders.serving(made)
    holders.down = {"site-a"}
    gathered = await gather_bundle(made.bundle, holders.fetch, holders.find, tmp_path / "work")
    assert sorted(gathered.paths) == [0, 1, 2]
    assert Attempt(0, "site-b", False, GOOD) in gathered.tried
    assert holders.lookups == []  # the recorded holders were enough
    assert decoded(made, gathered, tmp_path / "out") == list(made.instances)


async def test_stale_placements_are_found_through_provider_records(tmp_path: Path) -> None:
    made = make(seed=8, k=3, n=4, holders={0: [site(0)], 1: [site(1)], 3: [site(3)]})
    holders = Holders()
    holders.hold("site-9", made.fragments[0])  # share 0 moved from site-0 to site-9
    holders.hold(site(1), made.fragments[1])
    holders.hold("site-7", made.fragments[2])  # share 2 was never recorded as placed
    holders.down = {site(3)}
    holders.providers = {made.fid(0): [site(0), "site-9"], made.fid(2): ["site-7"]}
    gathered = await gather_bundle(made.bundle, holders.fetch, holders.find, tmp_path / "work")
    assert sorted(gathered.paths) == [0, 1, 2]
    assert Attempt(0, "site-9", True, GOOD) in gathered.tried
    assert Attempt(2, "site-7", True, GOOD) in gathered.tried
    assert "NOT_FOUND" in gathered.rejected[(0, site(0))]
    assert holders.calls.count((site(0), made.fid(0))) == 1  # not asked again via the DHT
    assert decoded(made, gathered, tmp_path / "out") == list(made.instances)


async def test_fewer_than_k_good_fragments_is_unrecoverable_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    made = make(seed=9, sizes=(30_000,), k=2, n=3, holders={0: [site(0)], 1: [site(1)]})
    holders = Holders.serving(made)
    holders.hold(site(1), made.fragments[1], _flip_block(made, 1))

    async def broken_dht(fragment_id: str) -> list[str]:
        holders.lookups.append(fragment_id)
        raise PeerUnreachable("no DHT peers answered")

    with pytest.raises(Unrecoverable) as caught:
        await gather_bundle(made.bundle, holders.fetch, broken_dht, tmp_path / "work")
    error = caught.value
    assert (error.k, error.good, error.missing) == (2, 1, (2,))
    assert list(error.rejected) == [1]
    assert "site site-1: fragment 1 rejected: segment 1 block" in error.rejected[1]
    assert set(holders.lookups) == {made.fid(1), made.fid(2)}
    assert files_in(tmp_path / "work") == []  # the one good fragment is no use alone
    assert "1.2.826" not in str(error)


async def test_a_bug_in_a_fetch_propagates_and_leaves_nothing(tmp_path: Path) -> None:
    made = make(seed=10, k=2, n=3)
    holders = Holders.serving(made)

    async def buggy(site_id: str, fragment_id: str, dest: Path, size: int) -> None:
        if site_id == site(1):
            raise RuntimeError("a bug, not a holder's fault")
        await holders.fetch(site_id, fragment_id, dest, size)

    with pytest.raises(RuntimeError, match="a bug"):
        await gather_bundle(made.bundle, buggy, holders.find, tmp_path / "work")
    assert files_in(tmp_path / "work") == []


async def test_nonsense_arguments_are_refused(tmp_path: Path) -> None:
    made = make(seed=11)
    holders = Holders.serving(made)
    with pytest.raises(ValueError, match="parallel"):
        await gather_bundle(made.bundle, holders.fetch, holders.find, tmp_path, parallel=0)
    with pytest.raises(ValueError, match="timeout"):
        await gather_bundle(made.bundle, holders.fetch, holders.find, tmp_path, timeout=0)
