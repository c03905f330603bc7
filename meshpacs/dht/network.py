"""A DHT node: the project's small interface over the ``kademlia`` package.

:class:`DhtNode` is all the rest of meshpacs sees of the DHT: ``start``, ``bootstrap``,
``publish``, ``find_node_record``, ``find_providers``, ``closest_sites``, ``stop``.

**Why a wrapper.** ``kademlia`` 2.2.3 has no authentication at all, and its high-level
``Server.get`` answers with its *local copy first*, else the *most common* value among the
responders, so one forged STORE or a few colluding peers decide what a reader sees. The
pieces meshpacs needs instead (the k closest nodes to a key, a raw per-peer query) exist
only as internals: ``NodeSpiderCrawl``, ``RoutingTable.find_neighbors``, the protocol's RPC
calls. Their only supported extension points are ``Server.protocol_class`` and
``Server(storage=...)``. Keeping every use of the internals in this module, behind methods
that speak in verified records, means a change of package (or of its version, pinned at
2.2.3) touches one file, and no caller can reach the unverified paths by accident.

**Reads.** A read never trusts the package's choice of value: it crawls for the k closest
nodes to the key, asks each of them for *every* record it holds under the key (a
``find_records`` RPC added by :class:`MeshProtocol`; the package's FIND_VALUE returns only
one value per key), adds the local copies, verifies every value
(:func:`~meshpacs.dht.records.verify_record`: signature, membership, site, lifetime) and
keeps each author's highest ``seq``. Unsigned, forged, expired, replayed and non-member
records are dropped whatever their number.

**Placement.** :meth:`DhtNode.closest_sites` crawls for the DHT nodes closest to a key,
asks each for its own node record (a ``node_record`` RPC), and keeps a node only if its
DHT ID equals :func:`~meshpacs.keys.identity.node_id_for` of the key that signed the record.
A node squatting on an ID it cannot prove is ignored, so placement order follows certified
keys, not self-chosen IDs.

**Eviction.** The package drops a contact from its routing table on the first missed reply
(one lost UDP datagram, or a peer busy for more than the RPC timeout); the Kademlia paper
tolerates several, and the package's users report whole networks falling apart when one
node stops. :class:`MeshProtocol` evicts only after ``max_missed_replies`` consecutive
misses, and :class:`DhtNode` re-pings its bootstrap peers every ``maintenance_interval``
seconds, so a federation partner that was evicted during an outage is taken back as soon
as it answers again. The RPC timeout is a constructor argument (tests use a fraction of a
second).

**Other package behaviour worked around here.**

* ``welcome_if_new`` (the hand-off of stored values to a newly seen node) hashes keys that
  are already digests, so it aims at the wrong point of the keyspace; and with fewer than k
  known nodes it never hands anything off. :class:`MeshProtocol` fixes both. It still walks
  the whole store once per new contact, on the event loop thread.
* RPC arguments and replies are msgpack from anyone: node IDs, keys, node lists and record
  lists are checked for type and size before use, node lists must name IP addresses (a host
  name would make ``sendto`` resolve it, blocking), so a malformed message cannot crash a
  lookup.
* rpcudp sets the result of a request's future when its reply or its timeout comes, even
  if the caller was cancelled meanwhile (InvalidStateError, logged as an unretrieved task
  exception); :class:`MeshProtocol` drops such a request instead, and a reply whose
  transport closed while it was being made (the node stopping).
* ``save_state``/``load_state`` use pickle and are never called; restarts rely on the
  SQLite record store and the configured bootstrap peers.
* The package's hourly refresh (``Server.refresh_table``) still runs: it refreshes lonely
  buckets and republishes stored records, which every receiving store verifies again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from kademlia.crawling import NodeSpiderCrawl
from kademlia.network import Server
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol

from meshpacs.dht.identity import MemberVerifier
from meshpacs.dht.records import (
    MAX_RECORD_SIZE,
    NodeRecord,
    ProviderRecord,
    VerifiedRecord,
    node_key,
    provider_key,
    verify_record,
)
from meshpacs.dht.storage import RecordStore
from meshpacs.errors import InvalidRecord
from meshpacs.keys.identity import NODE_ID_SIZE

__all__ = ["MAX_RECORDS_PER_REPLY", "REPLY_BUDGET", "DhtNode", "MeshProtocol"]

log = logging.getLogger(__name__)

# A find_records reply carries at most this many bytes of records (the same 8 KB class as
# the package's request limit), and a reader accepts at most this many records from one peer.
REPLY_BUDGET = 8000
MAX_RECORDS_PER_REPLY = REPLY_BUDGET // 64

Address = tuple[str, int]


class MeshProtocol(KademliaProtocol):  # type: ignore[misc]  # kademlia ships no type hints
    """The package's protocol with checked inputs, tolerant eviction and two extra RPCs."""

    def __init__(
        self,
        source_node: Node,
        storage: RecordStore,
        ksize: int,
        *,
        rpc_timeout: float,
        max_missed_replies: int,
    ) -> None:
        super().__init__(source_node, storage, ksize)
        # KademliaProtocol does not pass a timeout on to rpcudp's RPCProtocol, which keeps
        # it in this attribute (fixed at 5 s otherwise; kademlia is pinned at 2.2.3).
        self._wait_timeout = rpc_timeout
        self._max_missed = max_missed_replies
        self._missed: dict[bytes, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.own_node_record: bytes | None = None

    # --- rpcudp's bookkeeping of outstanding requests ---------------------------------------

    def _accept_response(self, msg_id: bytes, data: object, address: Address) -> None:
        # rpcudp sets the result of the request's future unconditionally; when the caller
        # was cancelled (a lookup abandoned, a node stopping) the late reply raised
        # InvalidStateError in a task nobody awaits.
        entry = self._outstanding.get(msg_id)
        if entry is not None and entry[0].done():
            entry[1].cancel()
            del self._outstanding[msg_id]
            return
        super()._accept_response(msg_id, data, address)

    async def _accept_request(self, msg_id: bytes, data: object, address: Address) -> None:
        # A request still being answered when the node stops: asyncio's closed transport
        # fails the reply with AttributeError (its socket and loop are gone), in a task
        # nobody awaits. The asker gets no reply, as from any node that went away.
        try:
            await super()._accept_request(msg_id, data, address)
        except (AttributeError, OSError):
            if self.transport is None or self.transport.is_closing():
                return
            raise

    def _timeout(self, msg_id: bytes) -> None:
        # The same for the timer of a request whose caller is gone.
        entry = self._outstanding.get(msg_id)
        if entry is not None and entry[0].done():
            del self._outstanding[msg_id]
            return
        super()._timeout(msg_id)

    # --- RPCs served ----------------------------------------------------------------------

    def rpc_ping(self, sender: Address, nodeid: object) -> bytes | None:
        if not _is_id(nodeid):
            return None
        return bytes(super().rpc_ping(sender, nodeid))

    def rpc_store(self, sender: Address, nodeid: object, key: object, value: object) -> bool:
        if not _is_id(nodeid):
            return False
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        # The store verifies the record and answers whether it kept it.
        return self.storage.put(key, value)  # type: ignore[no-any-return]

    def rpc_find_node(self, sender: Address, nodeid: object, key: object) -> list[Any]:
        if not (_is_id(nodeid) and _is_id(key)):
            return []
        return list(super().rpc_find_node(sender, nodeid, key))

    def rpc_find_value(self, sender: Address, nodeid: object, key: object) -> Any:
        if not (_is_id(nodeid) and _is_id(key)):
            return []
        return super().rpc_find_value(sender, nodeid, key)

    def rpc_find_records(self, sender: Address, nodeid: object, key: object) -> list[bytes]:
        """Every author's record under ``key`` (FIND_VALUE returns only one)."""
        if not (_is_id(nodeid) and _is_id(key)):
            return []
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        return self.storage.values_for(key, REPLY_BUDGET)  # type: ignore[no-any-return]

    def rpc_node_record(self, sender: Address, nodeid: object) -> bytes | None:
        """This node's own signed node record, for ``closest_sites``."""
        if not _is_id(nodeid):
            return None
        self.welcome_if_new(Node(nodeid, sender[0], sender[1]))
        return self.own_node_record

    # --- RPCs called ----------------------------------------------------------------------

    async def call_find_node(self, node_to_ask: Node, node_to_find: Node) -> tuple[bool, Any]:
        result = await super().call_find_node(node_to_ask, node_to_find)
        if not result[0]:
            return (False, None)
        return (True, _node_triples(result[1], self.router.ksize))

    async def call_find_records(self, node: Node, key: bytes) -> list[bytes]:
        result = await self.find_records((node.ip, node.port), self.source_node.id, key)
        self.handle_call_response(result, node)
        return _record_list(result[1]) if result[0] else []

    async def call_node_record(self, node: Node) -> bytes | None:
        result = await self.node_record((node.ip, node.port), self.source_node.id)
        self.handle_call_response(result, node)
        value = result[1]
        if result[0] and isinstance(value, bytes) and len(value) <= MAX_RECORD_SIZE:
            return value
        return None

    # --- routing table --------------------------------------------------------------------

    def handle_call_response(self, result: tuple[bool, Any], node: Node) -> tuple[bool, Any]:
        if result[0]:
            self._missed.pop(node.id, None)
            self.welcome_if_new(node)
            return result
        missed = self._missed.pop(node.id, 0) + 1
        if missed >= self._max_missed:
            log.info("DHT peer %s:%s missed %d replies; dropped", node.ip, node.port, missed)
            self.router.remove_contact(node)
        else:
            self._missed[node.id] = missed
            # Bounded: forget the oldest counts (at worst a peer gets a few more chances).
            while len(self._missed) > 4 * self.router.ksize:
                self._missed.pop(next(iter(self._missed)))
        return result

    def welcome_if_new(self, node: Node) -> None:
        if not self.router.is_new_node(node):
            return
        for key, value in self.storage:
            if self.should_hand_off(node, key):
                self.spawn(self.call_store(node, key, value))
        self.router.add_contact(node)

    def should_hand_off(self, node: Node, key: bytes) -> bool:
        """Whether this node should send its record under ``key`` to the newcomer ``node``.

        Yes if ``node`` is among the k closest to the key that this node knows of, and this
        node is the closest holder it knows of (so one node, not all, sends it).
        """
        # Keys are already 20-byte digests (the package hashes them again here).
        target = Node(key)
        neighbors = self.router.find_neighbors(target)
        if not neighbors:
            return True
        # With fewer than k known nodes every node is among the k closest.
        farthest = neighbors[-1].distance_to(target)
        new_is_close = len(neighbors) < self.router.ksize or node.distance_to(target) < farthest
        we_are_closest = self.source_node.distance_to(target) < neighbors[0].distance_to(target)
        return bool(new_is_close and we_are_closest)

    def spawn(self, job: Coroutine[Any, Any, Any]) -> None:
        """Run ``job`` in the background, kept referenced until done, cancelled on stop."""
        task = asyncio.ensure_future(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel_background(self) -> None:
        for task in list(self._tasks):
            task.cancel()


class DhtNode:
    """One member's DHT node: publish signed records, find and verify others' records.

    The caller owns ``store`` (opens and closes it); ``verifier`` decides who is a member.
    ``ksize`` is the replication factor and the most nodes a lookup returns.
    """

    def __init__(
        self,
        store: RecordStore,
        verifier: MemberVerifier,
        *,
        ksize: int = 20,
        alpha: int = 3,
        rpc_timeout: float = 5.0,
        max_missed_replies: int = 3,
        maintenance_interval: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ksize < 1 or alpha < 1 or rpc_timeout <= 0 or max_missed_replies < 1:
            raise ValueError("ksize, alpha, rpc_timeout and max_missed_replies must be positive")
        self._store = store
        self._verifier = verifier
        self._ksize = ksize
        self._alpha = alpha
        self._rpc_timeout = rpc_timeout
        self._max_missed = max_missed_replies
        self._interval = maintenance_interval
        self._clock = clock
        self._server: Any = None
        self._peers: list[Address] = []
        self._maintenance: asyncio.Task[None] | None = None

    # --- life cycle -----------------------------------------------------------------------

    async def start(self, host: str, port: int, node_id: bytes) -> Address:
        """Listen on ``host:port`` (0 picks a free port) as ``node_id``; returns the address."""
        if not _is_id(node_id):
            raise ValueError(f"a DHT node ID is {NODE_ID_SIZE} bytes")
        if self._server is not None:
            raise RuntimeError("this DHT node is already started")
        server = Server(ksize=self._ksize, alpha=self._alpha, node_id=node_id, storage=self._store)
        server.protocol_class = functools.partial(
            MeshProtocol, rpc_timeout=self._rpc_timeout, max_missed_replies=self._max_missed
        )
        await server.listen(port, interface=host)
        self._server = server
        self._maintenance = asyncio.create_task(self._maintain())
        return self.address

    async def stop(self) -> None:
        """Stop listening and cancel background work; the store stays open (caller's)."""
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
            self._maintenance = None
        if self._server is not None:
            self._protocol.cancel_background()
            self._server.stop()
            self._server = None

    @property
    def address(self) -> Address:
        """The (IP, port) this node listens on."""
        host, port = self._started.transport.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    @property
    def node_id(self) -> bytes:
        return bytes(self._started.node.id)

    @property
    def _started(self) -> Any:
        if self._server is None:
            raise RuntimeError("this DHT node is not started")
        return self._server

    @property
    def _protocol(self) -> MeshProtocol:
        protocol: MeshProtocol = self._started.protocol
        return protocol

    def contacts(self) -> list[tuple[bytes, str, int]]:
        """(node ID, IP, port) of every node in the routing table."""
        router = self._protocol.router
        return [(n.id, n.ip, n.port) for bucket in router.buckets for n in bucket.get_nodes()]

    # --- joining --------------------------------------------------------------------------

    async def bootstrap(self, peers: Sequence[Address]) -> int:
        """Join through ``peers`` (IP addresses, not host names); returns how many answered.

        The peers are remembered and pinged again on every maintenance round.
        """
        for host, _port in peers:
            ipaddress.ip_address(host)  # ValueError for a host name: the package needs IPs
        for peer in peers:
            if peer not in self._peers:
                self._peers.append(peer)
        answered = [node for node in await self._ping_all(peers) if node is not None]
        for node in answered:
            self._protocol.welcome_if_new(node)
        own = Node(self.node_id)
        await NodeSpiderCrawl(self._protocol, own, answered, self._ksize, self._alpha).find()
        return len(answered)

    async def maintain_once(self) -> None:
        """Prune expired records and take back bootstrap peers that were evicted."""
        self._store.prune_expired()
        for node in await self._ping_all(self._peers):
            if node is not None:
                self._protocol.welcome_if_new(node)

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.maintain_once()
            except Exception:
                log.exception("DHT maintenance round failed; next round in %s s", self._interval)

    async def _ping_all(self, peers: Sequence[Address]) -> list[Node | None]:
        return list(await asyncio.gather(*(self._ping(peer) for peer in peers)))

    async def _ping(self, peer: Address) -> Node | None:
        answered, their_id = await self._protocol.ping(peer, self.node_id)
        if answered and _is_id(their_id) and their_id != self.node_id:
            return Node(their_id, peer[0], peer[1])
        return None

    # --- publishing -----------------------------------------------------------------------

    async def publish(self, record: bytes) -> int:
        """Store a signed record locally and on the k closest nodes to its key.

        Raises ``InvalidRecord`` if the record does not verify here (no peer would keep
        it). Returns how many peers kept it. A node record signed with this node's own key
        is also what this node answers ``closest_sites`` queries with.
        """
        verified = verify_record(record, self._verifier, self._clock())
        if isinstance(verified.record, NodeRecord) and self._is_own(verified):
            self._protocol.own_node_record = record
        self._store.put(verified.key, record)
        peers = await self._closest_nodes(verified.key)
        replies = await asyncio.gather(
            *(self._protocol.call_store(peer, verified.key, record) for peer in peers)
        )
        return sum(1 for answered, kept in replies if answered and kept is True)

    def _is_own(self, verified: VerifiedRecord) -> bool:
        return verified.author.node_id == self.node_id

    # --- reading --------------------------------------------------------------------------

    async def find_node_record(self, site_id: str) -> NodeRecord | None:
        """The newest valid node record of ``site_id``, or None if nobody has one."""
        for verified in await self._collect(node_key(site_id)):
            record = verified.record
            if isinstance(record, NodeRecord) and record.site_id == site_id:
                return record
        return None

    async def find_providers(self, fragment_id: str) -> list[ProviderRecord]:
        """The newest valid provider record of each site holding ``fragment_id``."""
        found = [
            verified.record
            for verified in await self._collect(provider_key(fragment_id))
            if isinstance(verified.record, ProviderRecord)
            and verified.record.fragment_id == fragment_id
        ]
        return sorted(found, key=lambda record: record.holder_site_id)

    async def closest_sites(self, key: bytes, count: int) -> list[tuple[bytes, NodeRecord]]:
        """Up to ``count`` member sites (not this one) whose node IDs are XOR-closest to ``key``,
        as ``(node ID, node record)`` pairs (placement ranks by the node ID).

        ``key`` is a 20-byte keyspace point (``records.placement_key(bundle_id)``). At most
        ``ksize`` nodes are found. Distinct sites, closest first.
        """
        if not _is_id(key):
            raise ValueError(f"a DHT key is {NODE_ID_SIZE} bytes")
        peers = await self._closest_nodes(key)
        replies = await asyncio.gather(*(self._protocol.call_node_record(p) for p in peers))
        now = self._clock()
        certified: list[tuple[int, bytes, NodeRecord]] = []
        for peer, raw in zip(peers, replies, strict=True):
            verified = self._verified(raw, now) if raw is not None else None
            if verified is None or not isinstance(verified.record, NodeRecord):
                continue
            derived = verified.author.node_id
            if derived != peer.id:
                log.info("DHT node %s:%s ignored: its ID is not its key's", peer.ip, peer.port)
                continue
            certified.append((_distance(derived, key), derived, verified.record))
        certified.sort(key=lambda triple: triple[0])
        sites: dict[str, tuple[bytes, NodeRecord]] = {}
        for _distance_to_key, node_id, record in certified:
            sites.setdefault(record.site_id, (node_id, record))
        return list(sites.values())[: max(count, 0)]

    async def _closest_nodes(self, key: bytes) -> list[Node]:
        target = Node(key)
        nearest = self._protocol.router.find_neighbors(target, k=self._ksize)
        if not nearest:
            return []
        crawl = NodeSpiderCrawl(self._protocol, target, nearest, self._ksize, self._alpha)
        return list(await crawl.find())

    async def _collect(self, key: bytes) -> list[VerifiedRecord]:
        """Each author's newest valid record under ``key``, from here and the k closest."""
        raws = self._store.values_for(key, MAX_RECORDS_PER_REPLY * MAX_RECORD_SIZE)
        peers = await self._closest_nodes(key)
        for reply in await asyncio.gather(
            *(self._protocol.call_find_records(peer, key) for peer in peers)
        ):
            raws.extend(reply)
        now = self._clock()
        newest: dict[str, VerifiedRecord] = {}
        for raw in dict.fromkeys(raws):  # the same bytes from many peers: verify once
            verified = self._verified(raw, now)
            if verified is None or verified.key != key:
                continue
            held = newest.get(verified.author.site_id)
            if held is None or verified.seq > held.seq:
                newest[verified.author.site_id] = verified
        return sorted(newest.values(), key=lambda verified: verified.seq, reverse=True)

    def _verified(self, raw: bytes, now: float) -> VerifiedRecord | None:
        try:
            return verify_record(raw, self._verifier, now)
        except InvalidRecord as error:
            log.info("DHT record ignored: %s", error.reason)
            return None


def _is_id(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == NODE_ID_SIZE


def _distance(node_id: bytes, key: bytes) -> int:
    return int.from_bytes(node_id, "big") ^ int.from_bytes(key, "big")


def _node_triples(reply: object, limit: int) -> list[tuple[bytes, str, int]]:
    """The (id, ip, port) entries of a FIND_NODE reply that are well formed."""
    if not isinstance(reply, list):
        return []
    triples = []
    for item in reply[:limit]:
        if not (isinstance(item, list | tuple) and len(item) == 3):
            continue
        node_id, ip, port = item
        if _is_id(node_id) and _is_ip(ip) and isinstance(port, int) and 0 < port < 65536:
            triples.append((node_id, ip, port))
    return triples


def _is_ip(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _record_list(reply: object) -> list[bytes]:
    if not isinstance(reply, list):
        return []
    return [
        value
        for value in reply[:MAX_RECORDS_PER_REPLY]
        if isinstance(value, bytes) and len(value) <= MAX_RECORD_SIZE
    ]
