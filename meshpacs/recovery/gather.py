"""Gathering a bundle's fragments: any k good ones, from whichever holders answer first.

A bundle of k-of-n shares needs k good fragments, nothing more. :func:`gather_bundle`
starts one fetch more than it still needs (up to ``parallel`` at once), primaries first
(k primaries decode by copying), and keeps whichever arrive and verify first; once k are
good, the fetches still running are cancelled. That "start n + ε, stop at n" is the
long-tail remedy Storj uses for uploads: a slow holder costs nothing while a faster one
has the share's place.

Where each share is looked for, in order:

1. the holders the catalog recorded for it (``bundle.holders``);
2. the DHT's provider records for its fragment ID (``find_holders``), asked once per
   share when the recorded holders are exhausted: placements go stale when a holder
   repairs or moves a fragment, and shares never recorded as placed may still be held.

A fetch streams into a file in ``workdir``, never into memory, and is given the exact
size the fragment must have (it follows from the recorded header), so a holder cannot
make us store more. It fails when the holder is unreachable or refuses, when the file
stops growing for ``timeout`` seconds (a stalled holder), or when what arrived is not
exactly the share asked for: same bundle, same share, same coding parameters, every
block matching the recorded set hash (:func:`~meshpacs.erasure.decoder.verify_fragment`,
in a thread). A failed fetch is recorded with a reason that names the share and the
site, never anything about the study, its file is deleted, and the share's next holder
is tried.

Fewer than k good fragments end in :class:`~meshpacs.errors.Unrecoverable`, naming the
shares nobody offered and why each offered one was refused; nothing is left in
``workdir`` then. Errors other than transport, format and file errors are bugs: they
propagate, after every fetch is cancelled and every file removed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from meshpacs.erasure.decoder import verify_fragment
from meshpacs.erasure.layout import HEADER_SIZE, FragmentHeader, parse_header
from meshpacs.errors import CorruptFragment, MeshError, PeerUnreachable, Unrecoverable, brief
from meshpacs.recovery.model import PlannedBundle
from meshpacs.transport.client import PartnerConnection
from meshpacs.transport.pool import PartnerPool

__all__ = [
    "GOOD",
    "NOT_NEEDED",
    "Attempt",
    "Connect",
    "Fetch",
    "FindHolders",
    "GatheredBundle",
    "connect_fetch",
    "gather_bundle",
    "pool_fetch",
]

_log = logging.getLogger("meshpacs.recovery")

# fetch(site_id, fragment_id, dest, size): write the fragment into the file ``dest`` as its
# bytes arrive (the stall timeout watches the file grow), and never more than ``size``.
Fetch = Callable[[str, str, Path, int], Awaitable[None]]
# find_holders(fragment_id) -> site IDs whose provider records say they hold it.
FindHolders = Callable[[str], Awaitable[list[str]]]
# connect(site_id) -> an open connection to that partner (the caller's to close).
Connect = Callable[[str], Awaitable[PartnerConnection]]

# One fetch beyond what is still needed: the long tail's remedy, at 1/k extra traffic.
_SPARE = 1
# Peer-chosen refusal texts end up in reasons: keep them short.
_MAX_REASON = 200
GOOD = "good"
NOT_NEEDED = "not needed: k good shares arrived first"


@dataclass(frozen=True)
class Attempt:
    """One fetch of share ``share`` from ``site_id``; ``result`` is GOOD, NOT_NEEDED (cancelled
    or dropped once k were good) or why the fragment was refused."""

    share: int
    site_id: str
    from_dht: bool
    result: str


@dataclass
class GatheredBundle:
    """k verified fragments of a bundle (``paths``, by share), and how they were had.

    ``rejected`` maps ``(share, site_id)`` to why that holder's fragment was refused;
    ``tried`` lists every fetch in the order they ended. The caller owns the files.
    """

    paths: dict[int, Path]
    rejected: dict[tuple[int, str], str] = field(default_factory=dict)
    tried: tuple[Attempt, ...] = ()


@dataclass(frozen=True)
class _Candidate:
    share: int
    site_id: str
    fragment_id: str
    from_dht: bool


class _Gatherer:
    def __init__(
        self,
        bundle: PlannedBundle,
        fetch: Fetch,
        find_holders: FindHolders,
        workdir: Path,
        parallel: int,
        timeout: float,
    ) -> None:
        self.bundle = bundle
        self.fetch = fetch
        self.find_holders = find_holders
        self.workdir = workdir
        self.parallel = parallel
        self.timeout = timeout
        self.stem = bundle.bundle_id.hex()
        self.queues: dict[int, deque[_Candidate]] = {s: deque() for s in range(bundle.n)}
        self.seen: set[tuple[int, str]] = set()
        self.asked: set[int] = set()
        self.fetches: dict[asyncio.Task[None], tuple[_Candidate, Path]] = {}
        self.lookups: dict[asyncio.Task[list[str]], int] = {}
        self.good: dict[int, Path] = {}
        self.rejected: dict[tuple[int, str], str] = {}
        self.tried: list[Attempt] = []
        self.numbers = itertools.count()
        for holder in bundle.holders:
            self._offer(_Candidate(holder.share, holder.site_id, holder.fragment_id, False))

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> GatheredBundle:
        try:
            while len(self.good) < self.bundle.k:
                self._start_fetches()
                self._start_lookups()
                if not self.fetches and not self.lookups:
                    raise self._unrecoverable()
                await asyncio.wait([*self.fetches, *self.lookups], return_when="FIRST_COMPLETED")
                for task in [t for t in self.fetches if t.done()]:
                    self._fetched(task)
                for lookup in [t for t in self.lookups if t.done()]:
                    self._looked_up(lookup)
        except BaseException:
            for path in self.good.values():
                path.unlink(missing_ok=True)
            raise
        finally:
            await self._cancel_all()
        return GatheredBundle(dict(self.good), dict(self.rejected), tuple(self.tried))

    def _wanted_in_flight(self) -> int:
        return min(self.parallel, self.bundle.k - len(self.good) + _SPARE)

    def _busy(self, share: int) -> bool:
        return share in self.good or any(c.share == share for c, _ in self.fetches.values())

    def _start_fetches(self) -> None:
        for share in range(self.bundle.n):  # primaries first
            if len(self.fetches) >= self._wanted_in_flight():
                return
            if self.queues[share] and not self._busy(share):
                self._start(self.queues[share].popleft())

    def _start(self, candidate: _Candidate) -> None:
        dest = self.workdir / f"{self.stem}-{candidate.share}-{next(self.numbers)}.part"
        task = asyncio.create_task(self._attempt(candidate, dest))
        self.fetches[task] = (candidate, dest)

    def _start_lookups(self) -> None:
        """Ask the DHT about shares whose recorded holders are used up, if slots are free."""
        if len(self.fetches) >= self._wanted_in_flight():
            return
        for share in range(self.bundle.n):
            if len(self.lookups) >= self.parallel:
                return
            if share in self.asked or self.queues[share] or self._busy(share):
                continue
            self.asked.add(share)
            task = asyncio.create_task(self._lookup(share))
            self.lookups[task] = share

    # --- one fetch ------------------------------------------------------------------------

    async def _attempt(self, candidate: _Candidate, dest: Path) -> None:
        expected = self.bundle.ref.header.for_share(candidate.share)
        size = expected.fragment_size
        fetching = self.fetch(candidate.site_id, candidate.fragment_id, dest, size)
        await _watched(fetching, dest, size, self.timeout, candidate)
        await asyncio.to_thread(_check_fragment, dest, expected, self.bundle.ref.set_hash)

    def _fetched(self, task: asyncio.Task[None]) -> None:
        candidate, dest = self.fetches.pop(task)
        error = PeerUnreachable("fetch cancelled") if task.cancelled() else task.exception()
        if error is None and len(self.good) >= self.bundle.k:
            dest.unlink(missing_ok=True)  # finished together with the k-th: surplus
            self._record(candidate, NOT_NEEDED)
            return
        if error is None:
            final = self.workdir / f"{self.stem}-{candidate.share}.frag"
            os.replace(dest, final)  # no await: a cancellation here would lose track of it
            self.good[candidate.share] = final
            self._record(candidate, GOOD)
            return
        reason = _reason(error)
        dest.unlink(missing_ok=True)
        self.rejected[(candidate.share, candidate.site_id)] = reason
        self._record(candidate, reason)
        _log.info(
            "recovery: share %d from site %s refused: %s",
            candidate.share,
            candidate.site_id,
            reason,
        )

    def _record(self, candidate: _Candidate, result: str) -> None:
        self.tried.append(Attempt(candidate.share, candidate.site_id, candidate.from_dht, result))

    # --- the DHT fallback -----------------------------------------------------------------

    async def _lookup(self, share: int) -> list[str]:
        try:
            async with asyncio.timeout(self.timeout):
                return list(await self.find_holders(self.bundle.fragment_ids[share]))
        except (MeshError, OSError) as error:  # TimeoutError is an OSError
            _log.info("recovery: no provider records for share %d: %s", share, _reason(error))
            return []

    def _looked_up(self, task: asyncio.Task[list[str]]) -> None:
        share = self.lookups.pop(task)
        fragment_id = self.bundle.fragment_ids[share]
        for site_id in task.result():
            self._offer(_Candidate(share, site_id, fragment_id, True))

    def _offer(self, candidate: _Candidate) -> None:
        key = (candidate.share, candidate.site_id)
        if key not in self.seen:
            self.seen.add(key)
            self.queues[candidate.share].append(candidate)

    # --- endings --------------------------------------------------------------------------

    async def _cancel_all(self) -> None:
        tasks: list[asyncio.Task[None] | asyncio.Task[list[str]]] = [*self.fetches, *self.lookups]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for task, (candidate, dest) in self.fetches.items():
            if not task.cancelled():
                task.exception()  # retrieved, so asyncio does not log it as lost
            dest.unlink(missing_ok=True)
            self._record(candidate, NOT_NEEDED)
        self.fetches.clear()
        self.lookups.clear()

    def _unrecoverable(self) -> Unrecoverable:
        why: dict[int, list[str]] = {}
        for (share, site_id), reason in self.rejected.items():
            if share not in self.good:
                why.setdefault(share, []).append(f"site {site_id}: {reason}")
        missing = [s for s in range(self.bundle.n) if s not in self.good and s not in why]
        return Unrecoverable(
            k=self.bundle.k,
            good=len(self.good),
            missing=missing,
            rejected={share: "; ".join(reasons) for share, reasons in why.items()},
        )


async def _watched(
    fetching: Awaitable[None], dest: Path, size: int, stall: float, candidate: _Candidate
) -> None:
    """Run the fetch while the file grows; stop it when it stalls or overruns ``size``."""
    task = asyncio.ensure_future(fetching)
    loop = asyncio.get_running_loop()
    tick = min(stall / 4, 0.5)
    seen, since = -1, loop.time()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=tick)
            got = _file_size(dest)
            if got > size:
                raise CorruptFragment(
                    f"holder sent more than the {size} bytes the fragment has", candidate.share
                )
            if done:
                task.result()
                break
            now = loop.time()
            if got != seen:
                seen, since = got, now
            elif now - since >= stall:
                raise PeerUnreachable(
                    f"site {candidate.site_id}: no bytes for {stall:g} s, fetch abandoned"
                )
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as lost
    got = _file_size(dest)
    if got != size:
        raise CorruptFragment(f"holder sent {got} bytes, the fragment has {size}", candidate.share)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _check_fragment(path: Path, expected: FragmentHeader, set_hash: bytes) -> None:
    """Refuse anything but exactly the fragment of ``expected``'s share the owner encoded."""
    with path.open("rb") as source:
        header = parse_header(source.read(HEADER_SIZE))
        if header.bundle_id != expected.bundle_id:
            raise CorruptFragment("belongs to another bundle", expected.share)
        if header.share != expected.share:
            raise CorruptFragment(f"is share {header.share}, not the one asked for", expected.share)
        if header != expected:
            raise CorruptFragment("coding parameters differ from the catalog's", expected.share)
        verify_fragment(source, set_hash)


def _reason(error: BaseException) -> str:
    if isinstance(error, MeshError | OSError):
        return brief(error, _MAX_REASON)
    raise error


async def gather_bundle(
    bundle: PlannedBundle,
    fetch: Fetch,
    find_holders: FindHolders,
    workdir: Path,
    *,
    parallel: int = 4,
    timeout: float = 30.0,
) -> GatheredBundle:
    """k verified fragments of ``bundle`` in files under ``workdir``, by share.

    Up to ``parallel`` fetches run at once; ``timeout`` is how long a fetch may go
    without receiving a byte (and how long a DHT lookup may take). Raises
    :class:`~meshpacs.errors.Unrecoverable` when fewer than k good fragments can be had.
    """
    if parallel < 1 or timeout <= 0:
        raise ValueError("parallel must be at least 1 and timeout positive")
    if len(bundle.fragment_ids) != bundle.n:
        raise ValueError(f"{len(bundle.fragment_ids)} fragment IDs for n={bundle.n}")
    if any(not 0 <= h.share < bundle.n for h in bundle.holders):
        raise ValueError(f"a recorded holder has a share number outside 0..{bundle.n - 1}")
    workdir.mkdir(parents=True, exist_ok=True)
    gatherer = _Gatherer(bundle, fetch, find_holders, workdir, parallel, timeout)
    return await gatherer.run()


def connect_fetch(connect: Connect) -> Fetch:
    """A :data:`Fetch` that streams a fragment over a connection ``connect`` opens.

    It asks for exactly ``size`` bytes (a holder whose file is shorter refuses the range;
    none can send more), and writes each chunk off the event loop as it arrives. One
    connection per fetch: fetches run in parallel, and a connection takes one request at
    a time. ``connect`` may be a delegate's, already acting for the owner.
    """

    async def fetch(site_id: str, fragment_id: str, dest: Path, size: int) -> None:
        out: BinaryIO = await asyncio.to_thread(dest.open, "wb")
        try:

            async def sink(chunk: bytes) -> None:
                await asyncio.to_thread(out.write, chunk)

            async with await connect(site_id) as conn:
                await conn.get_fragment(fragment_id, sink, length=size)
        finally:
            await asyncio.to_thread(out.close)

    return fetch


def pool_fetch(pool: PartnerPool) -> Fetch:
    """A :data:`Fetch` from partners over their mTLS channels (:func:`connect_fetch`)."""
    return connect_fetch(pool.connect)
