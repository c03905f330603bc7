"""The node's scrubber over a real store: finds exactly the rotten fragments, keeps its rate."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from meshpacs.errors import LimitExceeded
from meshpacs.node.scrub import Scrubber, last_pass_at, scrub_on_schedule
from meshpacs.store import FragmentStore, QuotaPolicy
from meshpacs.store.names import fragment_path

from ..store.helpers import OWNER, make_bundle, put


class VirtualTime:
    """A clock that only moves when the scrubber sleeps, so pacing is checked exactly."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def rot(store: FragmentStore, fid: str) -> None:
    path = fragment_path(store.directory, fid)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.fixture
def store(tmp_path: Path):
    with FragmentStore(tmp_path / "fragments", QuotaPolicy(10**8)) as opened:
        yield opened


async def test_a_pass_quarantines_exactly_the_rotten_fragments(store: FragmentStore) -> None:
    fragments = [f for seed in (21, 22, 23) for f in make_bundle(seed=seed)]
    for fragment in fragments:
        put(store, fragment)
    rotten = {fragments[1].fid, fragments[5].fid}
    for fid in rotten:
        rot(store, fid)
    time = VirtualTime()
    scrubber = Scrubber(store, bytes_per_second=10**9, sleep=time.sleep, clock=time.clock)
    first = await scrubber.pass_once()
    assert first.fragments == len(fragments)
    assert first.bytes == sum(f.size for f in fragments)
    assert {f.fragment_id for f in first.findings} == rotten
    assert all(f.owner_site == OWNER for f in first.findings)
    second = await scrubber.pass_once()
    assert second.fragments == len(fragments) - len(rotten)
    assert second.findings == []


async def test_a_pass_keeps_to_its_rate(store: FragmentStore) -> None:
    fragments = make_bundle(seed=31, sizes=(20_000, 20_000))
    for fragment in fragments:
        put(store, fragment)
    total = sum(f.size for f in fragments)
    time = VirtualTime()
    rate = total // 4  # the whole pass should take 4 virtual seconds
    result = await Scrubber(
        store, bytes_per_second=rate, sleep=time.sleep, clock=time.clock
    ).pass_once()
    assert result.bytes == total
    assert result.seconds == pytest.approx(total / rate)
    assert len(time.slept) == len(fragments)


def test_a_zero_rate_is_refused(store: FragmentStore) -> None:
    with pytest.raises(LimitExceeded):
        Scrubber(store, bytes_per_second=0)


async def test_scheduled_passes_count_from_the_last_pass_written_down(
    store: FragmentStore, tmp_path: Path
) -> None:
    fragments = make_bundle(seed=41)
    for fragment in fragments:
        put(store, fragment)
    rot(store, fragments[0].fid)
    state = tmp_path / "state" / "scrub.json"
    scrubber = Scrubber(store, bytes_per_second=10**9)
    stop = asyncio.Event()
    # Never scrubbed: the first pass starts at once and is written down.
    task = asyncio.create_task(scrub_on_schedule(scrubber, stop, interval=3600, state_file=state))
    while last_pass_at(state) is None:
        await asyncio.sleep(0.01)
    stop.set()
    await task
    written = json.loads(state.read_text())
    assert (written["fragments"], written["quarantined"], written["quarantined_held"]) == (
        len(fragments),
        1,
        1,
    )
    # A restart an hour early does not scrub again: it waits out the rest of the interval.
    calls: list[float] = []
    stop = asyncio.Event()
    task = asyncio.create_task(
        scrub_on_schedule(
            scrubber, stop, interval=3600, state_file=state, clock=lambda: written["finished_at"]
        )
    )
    await asyncio.sleep(0.2)
    calls.append(json.loads(state.read_text())["finished_at"])
    stop.set()
    await task
    assert calls == [written["finished_at"]]
