"""``federation(n)``: n in-process nodes on 127.0.0.1 with real mTLS, temp dirs and a test CA."""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meshpacs.node.config import NodeConfig, load_config
from meshpacs.node.daemon import NodeStarted, run_node
from meshpacs.testbed import TestbedPlan, TestbedSite, create_testbed

HALT_SECONDS = 120


@dataclass
class RunningSite:
    """One site's node, running on this event loop until ``stop``."""

    plan: TestbedSite
    config: NodeConfig
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    started: NodeStarted | None = None

    @property
    def site_id(self) -> str:
        return self.plan.site_id

    @property
    def data_dir(self) -> Path:
        return Path(self.plan.data_dir)

    async def start(self) -> None:
        ready = asyncio.get_running_loop().create_future()

        def on_started(info: NodeStarted) -> None:
            self.started = info
            ready.set_result(None)

        self.stop = asyncio.Event()
        self.task = asyncio.create_task(
            run_node(self.config, stop=self.stop, started=on_started, handle_signals=False)
        )
        done, _ = await asyncio.wait([self.task, ready], return_when="FIRST_COMPLETED")
        if self.task in done:
            self.task.result()  # raises what stopped the node from starting
        await ready

    async def halt(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task
            self.task = None


def _dump_stacks(site_id: str) -> None:
    """Print where every task and thread is, so that a halt that hangs says why."""
    print(f"--- site {site_id} did not stop: asyncio tasks ---", file=sys.stderr)
    for task in asyncio.all_tasks():
        task.print_stack(limit=12, file=sys.stderr)
    print("--- threads ---", file=sys.stderr)
    for ident, frame in sys._current_frames().items():
        print(f"thread {ident}:", file=sys.stderr)
        traceback.print_stack(frame, limit=12, file=sys.stderr)


@dataclass
class Federation:
    plan: TestbedPlan
    sites: list[RunningSite]

    def site(self, site_id: str) -> RunningSite:
        return next(s for s in self.sites if s.site_id == site_id)


FederationFactory = Callable[..., Awaitable[Federation]]


@pytest.fixture
async def federation(tmp_path: Path) -> AsyncIterator[FederationFactory]:
    """``await federation(5, k=2, n=3)``: a started federation, stopped after the test."""
    made: list[Federation] = []

    async def make(
        count: int, *, not_started: Collection[str] = (), **options: object
    ) -> Federation:
        """``not_started``: sites the test runs itself (as processes, say)."""
        options.setdefault("stable_seconds", 0.5)
        options.setdefault("pass_interval", 0.2)
        options.setdefault("segment_kib", 64)
        plan = create_testbed(tmp_path / f"federation-{len(made)}", count, **options)  # type: ignore[arg-type]
        sites = [RunningSite(s, load_config(Path(s.config))) for s in plan.sites]
        fed = Federation(plan, sites)
        made.append(fed)
        for site in sites:
            if site.site_id not in not_started:
                await site.start()
        return fed

    yield make
    stuck: list[str] = []
    for fed in made:
        for site in fed.sites:
            # Bounded: a halt that waits forever (seen once after a partition test) would
            # hang the worker past every timeout; a site that will not stop fails the test.
            try:
                await asyncio.wait_for(site.halt(), HALT_SECONDS)
            except TimeoutError:
                stuck.append(site.site_id)
                _dump_stacks(site.site_id)
            except Exception:
                pass
    if stuck:
        pytest.fail(f"sites did not stop within {HALT_SECONDS} s: {', '.join(stuck)}")
