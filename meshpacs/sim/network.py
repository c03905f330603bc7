"""The real Kademlia code of meshpacs' DHT, many nodes in one process, over memory.

Every simulated site runs :class:`meshpacs.dht.network.MeshProtocol` (the protocol the
node runs: the ``kademlia`` package's routing table, k-buckets and RPC handlers, with
meshpacs' checked inputs and tolerant eviction), and lookups are the package's own
``NodeSpiderCrawl``, as :class:`~meshpacs.dht.network.DhtNode` runs them. Only the
datagram transport is replaced: :class:`MemoryNetwork` hands each msgpack datagram to the
addressed protocol on the next turn of the event loop, or drops it when that site is down
(the asker then waits for its RPC timeout, as over UDP).

Time is not real: a lookup's **latency** is added up from the crawl's rounds (the crawl
waits for every RPC of a round before the next), each round costing the longest
round-trip of the peers asked in it (:class:`~meshpacs.sim.sites.LatencyModel`), or the
configured DHT RPC timeout when one of them is down. The event loop's own timeout is
short, so that a simulation with failed sites does not take real seconds per lookup.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from kademlia.crawling import NodeSpiderCrawl
from kademlia.node import Node

from meshpacs.dht.network import MeshProtocol
from meshpacs.dht.storage import RecordStore
from meshpacs.sim.sites import LatencyModel, SimSite

__all__ = ["LookupResult", "MemoryNetwork", "SimDht"]

Address = tuple[str, int]
_PORT = 4000


def _address(index: int) -> Address:
    # 10.0.0.0/8 holds 16 million sites; MeshProtocol accepts only IP addresses in replies.
    return (f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}", _PORT)


class _NoRecords:
    """A record store with nothing in it: the simulation only routes, it stores nothing."""

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(())

    def put(self, key: object, value: object) -> bool:
        return False

    def values_for(self, key: bytes, budget: int) -> list[bytes]:
        return []


class _MemoryTransport(asyncio.DatagramTransport):
    def __init__(self, network: MemoryNetwork, address: Address) -> None:
        super().__init__()
        self._network = network
        self._address = address

    def sendto(self, data: bytes, addr: Any = None) -> None:  # type: ignore[override]
        self._network.deliver(bytes(data), self._address, addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._address if name == "sockname" else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


class MemoryNetwork:
    """Datagrams between protocols in one process; a site that is down receives nothing."""

    def __init__(self) -> None:
        self._protocols: dict[Address, MeshProtocol] = {}
        self.down: set[Address] = set()
        self.datagrams = 0

    def attach(self, address: Address, protocol: MeshProtocol) -> None:
        self._protocols[address] = protocol
        protocol.connection_made(_MemoryTransport(self, address))

    def deliver(self, data: bytes, source: Address, destination: Any) -> None:
        self.datagrams += 1
        target = self._protocols.get(tuple(destination))
        if target is None or tuple(destination) in self.down or source in self.down:
            return
        asyncio.get_running_loop().call_soon(target.datagram_received, data, source)


@dataclass
class LookupResult:
    """One lookup: what it found, how many rounds and RPCs it took, how long (simulated)."""

    found: list[bytes]  # the nodes that answered, closest first
    rounds: int  # the crawl's rounds; the node-record round after them is not counted
    rpcs: int  # every RPC, the node-record round's included
    latency_ms: float
    closest_round: int | None  # the crawl rounds after which the true closest node was known
    exact: bool  # found the true k closest live nodes, in order
    closest_found: bool  # found the true closest live node
    recall: float  # the share of the true k closest live nodes found


@dataclass
class _Round:
    asked: list[tuple[bytes, bool]] = field(default_factory=list)  # (node ID, answered)


class _CountingCrawl(NodeSpiderCrawl):  # type: ignore[misc]  # kademlia ships no type hints
    """The package's crawl, unchanged, with each round's RPCs written down."""

    def __init__(self, *args: Any, watch: bytes | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rounds: list[_Round] = []
        self._watch = watch
        self.watch_known_after: int | None = None

    async def find(self) -> Any:
        if self.watch_known_after is None and self._watch in self.nearest.get_ids():
            self.watch_known_after = len(self.rounds)
        self.rounds.append(_Round())
        return await self._find(self._ask)

    def _ask(self, peer: Node, node: Node) -> Coroutine[Any, Any, tuple[bool, Any]]:
        this_round = self.rounds[-1]

        async def ask() -> tuple[bool, Any]:
            result: tuple[bool, Any] = await self.protocol.call_find_node(peer, node)
            this_round.asked.append((bytes(peer.id), bool(result[0])))
            return result

        return ask()


class SimDht:
    """``len(sites)`` DHT nodes, joined one by one through a few earlier ones.

    ``ksize`` and ``alpha`` are :class:`~meshpacs.dht.network.DhtNode`'s defaults;
    ``rpc_timeout_ms`` is what a lookup is charged for a peer that does not answer.
    """

    def __init__(
        self,
        sites: Sequence[SimSite],
        *,
        seed: int,
        ksize: int = 20,
        alpha: int = 3,
        bootstrap_peers: int = 3,
        latency: LatencyModel | None = None,
        rpc_timeout_ms: float = 5000.0,
        loop_timeout_s: float = 0.5,
        max_missed_replies: int = 3,
    ) -> None:
        self.sites = list(sites)
        self.ksize = ksize
        self.alpha = alpha
        self.latency = latency or LatencyModel()
        self.rpc_timeout_ms = rpc_timeout_ms
        self.network = MemoryNetwork()
        self._rng = random.Random(f"meshpacs-sim-dht/{seed}")
        self._bootstrap_peers = bootstrap_peers
        self._by_id = {site.node_id: site for site in self.sites}
        if len(self._by_id) != len(self.sites):
            raise ValueError("two simulated sites share a node ID")
        self.protocols: list[MeshProtocol] = []
        for site in self.sites:
            protocol = MeshProtocol(
                Node(site.node_id, *_address(site.index)),
                cast(RecordStore, _NoRecords()),
                ksize,
                rpc_timeout=loop_timeout_s,
                max_missed_replies=max_missed_replies,
            )
            self.network.attach(_address(site.index), protocol)
            self.protocols.append(protocol)

    # --- membership -----------------------------------------------------------------------

    async def join_all(self) -> None:
        """Each site joins as ``DhtNode.bootstrap`` does: ping its peers, crawl for itself."""
        for index in range(1, len(self.sites)):
            peers = self._rng.sample(range(index), min(self._bootstrap_peers, index))
            await self._join(index, peers)

    async def _join(self, index: int, peers: Sequence[int]) -> None:
        protocol = self.protocols[index]
        own = protocol.source_node
        answered = []
        for peer in peers:
            ok, their_id = await protocol.ping(_address(peer), own.id)
            if ok and isinstance(their_id, bytes):
                answered.append(Node(their_id, *_address(peer)))
        for node in answered:
            protocol.welcome_if_new(node)
        await NodeSpiderCrawl(protocol, own, answered, self.ksize, self.alpha).find()

    def fail(self, indices: Sequence[int]) -> None:
        """These sites stop answering (their routing tables stay as they were)."""
        self.network.down.update(_address(i) for i in indices)

    def recover_all(self) -> None:
        self.network.down.clear()

    def is_up(self, index: int) -> bool:
        return _address(index) not in self.network.down

    # --- lookups --------------------------------------------------------------------------

    def true_closest(self, key: bytes, count: int, exclude: int | None = None) -> list[bytes]:
        """The ``count`` live node IDs closest to ``key`` (everyone's view, for checking)."""
        target = int.from_bytes(key, "big")
        live = [s.node_id for s in self.sites if self.is_up(s.index) and s.index != exclude]
        live.sort(key=lambda node_id: int.from_bytes(node_id, "big") ^ target)
        return live[:count]

    async def lookup(self, origin: int, key: bytes) -> LookupResult:
        """The k closest nodes to ``key`` as ``origin`` finds them (``DhtNode._closest_nodes``)."""
        protocol = self.protocols[origin]
        target = Node(key)
        nearest = protocol.router.find_neighbors(target, k=self.ksize)
        truth = self.true_closest(key, self.ksize, exclude=origin)
        crawl = _CountingCrawl(
            protocol, target, nearest, self.ksize, self.alpha, watch=truth[0] if truth else None
        )
        crawled = list(await crawl.find()) if nearest else []
        found = await self._answering(protocol, crawled, crawl)
        origin_site = self.sites[origin]
        latency = 0.0
        for step in crawl.rounds:
            costs = [
                self.latency.rtt_ms(origin_site, self._by_id[node_id])
                if answered
                else self.rpc_timeout_ms
                for node_id, answered in step.asked
            ]
            latency += max(costs, default=0.0)
        return LookupResult(
            found=found,
            rounds=len(crawl.rounds) - 1,
            rpcs=sum(len(step.asked) for step in crawl.rounds),
            latency_ms=latency,
            closest_round=crawl.watch_known_after,
            exact=found == truth,
            closest_found=bool(found) and bool(truth) and found[0] == truth[0],
            recall=len(set(found) & set(truth)) / len(truth) if truth else 1.0,
        )

    async def _answering(
        self, protocol: MeshProtocol, crawled: list[Node], crawl: _CountingCrawl
    ) -> list[bytes]:
        """Those of the crawl's nodes that answer the node-record RPC, in order: what
        ``DhtNode.closest_sites`` keeps. The crawl can return a node that did not answer
        (kademlia 2.2.3 removes it from its heap, but takes it back, still marked as
        contacted, when a later reply names it), so this last round is needed."""
        step = _Round()
        crawl.rounds.append(step)
        replies = await asyncio.gather(
            *(
                protocol.node_record((node.ip, node.port), protocol.source_node.id)
                for node in crawled
            )
        )
        for node, reply in zip(crawled, replies, strict=True):
            step.asked.append((bytes(node.id), bool(reply[0])))
        return [node_id for node_id, answered in step.asked if answered]

    async def lookups(
        self, pairs: Sequence[tuple[int, bytes]], *, parallel: int = 32
    ) -> list[LookupResult]:
        """Many lookups, ``parallel`` at a time (a dead peer's timeout is waited out once)."""
        gate = asyncio.Semaphore(parallel)

        async def one(origin: int, key: bytes) -> LookupResult:
            async with gate:
                return await self.lookup(origin, key)

        return list(await asyncio.gather(*(one(o, k) for o, k in pairs)))
