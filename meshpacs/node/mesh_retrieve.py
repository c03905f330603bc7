"""Instances the catalog lists but the disk does not hold, gathered from the mesh for a retrieve.

The Q/R SCP (:mod:`meshpacs.dicom.qr`) asks its :class:`~meshpacs.dicom.qr.MissingInstances`
hook for instances pruned under ``[backup] keep_local`` (or never here, on a node rebuilt
with ``meshpacs node restore-catalog``). :class:`MeshRetriever` is that hook::

    missing instances ──► catalog ledger: the bundle of each (members, placements, key)
        │                    (metadata.adopt.recall_bundles)
        ▼
    per bundle, at most ``parallel_bundles`` at once node-wide:
        gather any k good fragments (recovery.gather: recorded holders, then the DHT)
        decode, every instance checked against the catalog's SHA-256 (recovery.decode)
        each wanted instance into the InstanceStore (hashed, fsynced, renamed, dir fsynced)
        then its ``pruned_at`` cleared (metadata.adopt.mark_recalled)
        ▼
    one :class:`~meshpacs.dicom.qr.Recalled` batch per bundle, in the order they finish

Bundles are handed back as they finish, so a C-MOVE sends the first bundle's instances
while later ones are still being gathered.

**Leases.** The retention setting may remove a recalled file again at its next pass (the
file is back in the store and in the catalog as kept, so ``keep_local`` applies to it as to
any other). So the Q/R is not given the store's path but a hard link to it in a lease
directory of this request, removed when the request closes the generator: a pass that
prunes the file meanwhile removes one name, not the bytes being sent. Where a hard link
is impossible (another file system) the store's path is handed back instead.

**Bounds.** Per request at most ``max_bundles`` bundles and ``max_bytes`` of bundle
plaintext are gathered; the instances of bundles beyond fail their sub-operations (the
administrator retrieves in smaller pieces, series by series). A gather gives up on a
holder that sends nothing for ``stall_seconds`` and on the whole bundle after
``bundle_seconds``. A bundle that cannot be gathered or decoded fails its own instances
only, with one log line naming the bundle by the first hex digits of its random ID,
never a DICOM value; the others are sent, and the peer gets 0xB000.

Work files (fragments, decoded instances, leases) live under ``<data dir>/tmp/recall``,
emptied when the node starts.

**Counts.** :class:`RestoreCounts` keeps, since the node started, what its C-MOVEs and
C-GETs delivered (each sub-operation's end, told by the Q/R: instances stored by the
peer and their bytes, and instances that failed), and of those what this module brought
back from the mesh (bundles gathered or not, instances and bytes decoded into the store).
The node's figures carry them to ``/metrics``; they are counts and sizes only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import threading
from collections.abc import AsyncGenerator, Generator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import cast

from meshpacs.dicom.qr import Recalled
from meshpacs.dicom.storage import InstanceStore
from meshpacs.erasure.ids import fragment_id
from meshpacs.erasure.layout import BundleRef, CodingParams
from meshpacs.errors import CorruptBundle, MeshError, brief
from meshpacs.keys import SiteKeys, SiteSecret
from meshpacs.metadata import Catalog, InstanceLocation
from meshpacs.metadata.adopt import RecallBundle, RecallPlan, mark_recalled, recall_bundles
from meshpacs.node.mesh import MeshNode, dht_holders
from meshpacs.recovery.decode import decode_to_files
from meshpacs.recovery.gather import Fetch, FindHolders, gather_bundle, pool_fetch
from meshpacs.recovery.model import PlannedBundle, PlannedInstance, ShareHolder

__all__ = [
    "RECALL_DIR",
    "MeshRetriever",
    "RecallLimits",
    "RestoreCounts",
    "dht_holders",
    "retriever_for",
]

LOG = logging.getLogger("meshpacs.retrieve")
RECALL_DIR = "recall"  # under the node's tmp directory

NOT_BACKED_UP = "not held here and in no backed-up bundle"
OVER_BOUND = "its bundle is over this node's bound for one retrieve"
NOT_GATHERED = "its bundle could not be gathered from the mesh"
NOT_DECODED = "its bundle could not be decoded"


@dataclass(frozen=True)
class RecallLimits:
    """How much one retrieve may gather, and how long the mesh may take."""

    max_bundles: int = 64
    max_bytes: int = 16 * 1024**3  # sum of the bundles' plaintext lengths, per request
    parallel_bundles: int = 2  # gathers running at once on this node, all requests together
    fetches_per_bundle: int = 4
    stall_seconds: float = 30.0  # a holder sending nothing this long is given up
    bundle_seconds: float = 900.0  # one bundle's gather, from start to k good fragments

    def __post_init__(self) -> None:
        if min(self.max_bundles, self.max_bytes, self.parallel_bundles) < 1:
            raise ValueError("recall limits must be positive")
        if self.fetches_per_bundle < 1 or min(self.stall_seconds, self.bundle_seconds) <= 0:
            raise ValueError("recall limits must be positive")


class RestoreCounts:
    """What the node's retrieves delivered since it started; thread-safe.

    :meth:`sent` is the Q/R's hook (pynetdicom's association threads call it); the
    recall counts come from the event loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent = self._sent_bytes = self._failed = 0
        self._gathered = self._not_gathered = self._recalled = self._recalled_bytes = 0

    def sent(self, size: int, stored: bool) -> None:
        """One C-MOVE/C-GET sub-operation ended: the peer ``stored`` the instance or not."""
        with self._lock:
            if stored:
                self._sent += 1
                self._sent_bytes += size
            else:
                self._failed += 1

    def bundle(self, gathered: bool, instances: int = 0, size: int = 0) -> None:
        """A bundle was gathered from the mesh (``instances`` of ``size`` bytes back), or not."""
        with self._lock:
            if gathered:
                self._gathered += 1
                self._recalled += instances
                self._recalled_bytes += size
            else:
                self._not_gathered += 1

    def figures(self) -> dict[str, int]:
        with self._lock:
            return {
                "instances": self._sent,
                "bytes": self._sent_bytes,
                "failed": self._failed,
                "mesh_bundles": self._gathered,
                "mesh_bundles_failed": self._not_gathered,
                "mesh_instances": self._recalled,
                "mesh_bytes": self._recalled_bytes,
            }


class MeshRetriever:
    """The Q/R's :class:`~meshpacs.dicom.qr.MissingInstances`, over this site's mesh."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        store: InstanceStore,
        keys: SiteKeys,
        fetch: Fetch,
        find_holders: FindHolders,
        workdir: Path,
        limits: RecallLimits | None = None,
        counts: RestoreCounts | None = None,
    ) -> None:
        self._catalog = catalog
        self.counts = counts or RestoreCounts()
        self._store = store
        self._keys = keys
        self._fetch = fetch
        self._find_holders = find_holders
        self._workdir = workdir
        self._limits = limits or RecallLimits()
        self._slots = asyncio.Semaphore(self._limits.parallel_bundles)
        # What a stop left behind: leases and half-gathered bundles of no live request.
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"MeshRetriever(workdir={self._workdir!s})"  # no key material

    async def recall(self, missing: Sequence[InstanceLocation]) -> AsyncGenerator[Recalled, None]:
        """One batch per bundle as it is gathered (see the module docstring)."""
        wanted = {location.sha256 for location in missing}
        pairs = [(location.sop_instance_uid, location.sha256) for location in missing]
        plan: RecallPlan = await self._catalog.read(partial(recall_bundles, wanted=pairs))
        if plan.not_backed_up:
            LOG.warning(
                "retrieve: %d instances are in no backed-up bundle", len(plan.not_backed_up)
            )
            yield Recalled(failed={sha256: NOT_BACKED_UP for _, sha256 in plan.not_backed_up})
        chosen, over = self._within_limits(plan.bundles)
        if over:
            LOG.warning("retrieve: %d of %d bundles are over the bound for one request (%d"
                        " bundles, %d bytes) and fail", len(over), len(plan.bundles),
                        self._limits.max_bundles, self._limits.max_bytes)  # fmt: skip
            yield Recalled(failed=dict.fromkeys(_wanted_in(over, wanted), OVER_BOUND))
        if not chosen:
            return
        lease = self._workdir / f"lease-{secrets.token_hex(8)}"
        await asyncio.to_thread(lease.mkdir)
        tasks = [
            asyncio.create_task(self._bring_back(bundle, _wanted_in([bundle], wanted), lease))
            for bundle in chosen
        ]
        try:
            pending: set[asyncio.Task[Recalled]] = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.to_thread(shutil.rmtree, lease, True)

    def _within_limits(
        self, bundles: Sequence[RecallBundle]
    ) -> tuple[list[RecallBundle], list[RecallBundle]]:
        chosen: list[RecallBundle] = []
        over: list[RecallBundle] = []
        total = 0
        for bundle in bundles:
            fits = total + bundle.length <= self._limits.max_bytes
            if fits and len(chosen) < self._limits.max_bundles:
                chosen.append(bundle)
                total += bundle.length
            else:
                over.append(bundle)
        return chosen, over

    async def _bring_back(
        self, bundle: RecallBundle, wanted: frozenset[bytes], lease: Path
    ) -> Recalled:
        name = bundle.bundle_id.hex()[:12]
        async with self._slots:
            # Another retrieve may have brought them back while this one waited its turn.
            paths = await asyncio.to_thread(self._lease_present, wanted, lease)
            rest = wanted - paths.keys()
            if not rest:
                return Recalled(paths)
            work = self._workdir / f"bundle-{name}-{secrets.token_hex(4)}"
            try:
                try:
                    planned = _planned(bundle, self._keys)
                    async with asyncio.timeout(self._limits.bundle_seconds):
                        gathered = await gather_bundle(
                            planned,
                            self._fetch,
                            self._find_holders,
                            work / "fragments",
                            parallel=self._limits.fetches_per_bundle,
                            timeout=self._limits.stall_seconds,
                        )
                except (MeshError, OSError, ValueError) as error:  # TimeoutError is an OSError
                    LOG.warning("retrieve: bundle %s could not be gathered (%d instances fail):"
                                " %s", name, len(rest), brief(error))  # fmt: skip
                    self.counts.bundle(False)
                    return Recalled(paths, dict.fromkeys(rest, NOT_GATHERED))
                brought = await asyncio.to_thread(
                    self._decode_into_store, planned, gathered.paths, rest, work, lease
                )
                sizes = {m.sha256: m.size for m in bundle.members}
                self.counts.bundle(True, len(brought), sum(sizes[d] for d in brought))
            finally:
                await asyncio.to_thread(shutil.rmtree, work, True)
        if brought:
            back = [(uid, sha256) for sha256, (uid, _) in brought.items()]
            await self._catalog.write(partial(mark_recalled, instances=back))
            LOG.info("retrieve: bundle %s gathered, %d instances back in the store", name,
                     len(brought))  # fmt: skip
        paths.update({sha256: path for sha256, (_, path) in brought.items()})
        return Recalled(paths, dict.fromkeys(rest - brought.keys(), NOT_DECODED))

    def _lease_present(self, wanted: frozenset[bytes], lease: Path) -> dict[bytes, Path]:
        """Leases on the wanted instances already in the store (blocking)."""
        found: dict[bytes, Path] = {}
        for sha256 in wanted:
            path = self._store.path_for(sha256)
            if path.exists():
                leased = _lease(path, lease)
                if leased is not None:
                    found[sha256] = leased
        return found

    def _decode_into_store(
        self,
        planned: PlannedBundle,
        fragments: Mapping[int, Path],
        wanted: frozenset[bytes],
        work: Path,
        lease: Path,
    ) -> dict[bytes, tuple[str, Path]]:
        """Decode, store and lease the wanted instances (blocking); sha256 -> (UID, lease).

        Instances decoded before a failure stay: each was checked before it was stored.
        """
        brought: dict[bytes, tuple[str, Path]] = {}
        # A generator (typed as an Iterator): closed here, not whenever it is collected, so
        # its fragment files are shut before the caller removes them.
        decoded = cast(
            Generator[tuple[PlannedInstance, Path], None, None],
            decode_to_files(planned, self._keys.key_wrap, fragments, work / "decoded"),
        )
        try:
            for instance, path in decoded:
                if instance.sha256 not in wanted:
                    path.unlink(missing_ok=True)
                    continue
                stored = self._store.adopt(path, max_bytes=instance.size)
                if stored.sha256 != instance.sha256:  # decode checked it: cannot happen
                    raise CorruptBundle(f"instance #{instance.position} changed on disk")
                leased = _lease(stored.path, lease)
                if leased is not None:
                    brought[instance.sha256] = (instance.sop_instance_uid, leased)
        except (MeshError, OSError) as error:
            LOG.warning("retrieve: bundle %s stopped decoding after %d instances: %s",
                        planned.bundle_id.hex()[:12], len(brought), brief(error))  # fmt: skip
        finally:
            decoded.close()
        return brought


def _lease(path: Path, lease: Path) -> Path | None:
    """A hard link to ``path`` in ``lease`` (the path itself across file systems); None
    when the file is gone."""
    link = lease / f"{secrets.token_hex(8)}.dcm"
    try:
        os.link(path, link)
    except FileNotFoundError:
        return None if not path.exists() else path
    except OSError:
        return path
    return link


def _wanted_in(bundles: Sequence[RecallBundle], wanted: set[bytes]) -> frozenset[bytes]:
    return frozenset(m.sha256 for b in bundles for m in b.members if m.sha256 in wanted)


def _planned(bundle: RecallBundle, keys: SiteKeys) -> PlannedBundle:
    """The ledger's bundle as recovery's gatherer and decoder take it."""
    params = CodingParams(bundle.k, bundle.n, bundle.segment_size)
    ref = BundleRef(bundle.bundle_id, params, bundle.length, bundle.set_hash)
    return PlannedBundle(
        ref=ref,
        wrapped_key=bundle.wrapped_key,
        fragment_ids=tuple(
            fragment_id(keys.fragment_id, bundle.bundle_id, share) for share in range(bundle.n)
        ),
        holders=tuple(
            ShareHolder(p.share, p.holder_site, p.fragment_id)
            for p in bundle.placements
            if 0 <= p.share < bundle.n
        ),
        instances=tuple(
            PlannedInstance(
                m.position,
                m.sop_instance_uid,
                m.sop_class_uid,
                m.transfer_syntax_uid,
                m.size,
                m.sha256,
            )
            for m in bundle.members
        ),
    )


def retriever_for(
    mesh: MeshNode,
    secret: SiteSecret,
    catalog: Catalog,
    store: InstanceStore,
    counts: RestoreCounts | None = None,
) -> MeshRetriever:
    """The retriever of a started node: its partner pool, its DHT, ``tmp/recall``."""
    return MeshRetriever(
        catalog=catalog,
        store=store,
        keys=SiteKeys.derive(secret),
        fetch=pool_fetch(mesh.pool),
        find_holders=dht_holders(mesh.dht),
        workdir=mesh.config.tmp_dir / RECALL_DIR,
        counts=counts,
    )
