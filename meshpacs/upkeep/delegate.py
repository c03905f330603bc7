"""The trusted peer's repairer: rebuilds a down owner's lost shares, as the owner's delegate.

An owner's own :class:`~meshpacs.upkeep.repair.Repairer` heals its bundles while it runs.
When the owner itself is down (the very failure meshpacs exists for) and a holder dies
too, its trusted peers step in, with what the owner gave them (:mod:`meshpacs.backup.
delegation`): a signed delegation and a sealed repair manifest per bundle. One pass
(:meth:`DelegateRepairer.repair_once`)::

    for each owner whose delegation this node keeps (and that has not expired):
      owner down?      pinged; down for longer than the grace, or skip it
      whose turn?      the manifest's delegates in order: the first one up acts
      for each of the owner's manifests (a few per pass):
        check          ACT_FOR the owner at each recorded holder (and each the DHT names):
                       HAS the share, with the right size, set hash and share number?
                       (one connection per holder for the pass, opened when first asked)
        wait           a holder that stopped answering is lost only after the grace
        repair         fewer good shares than the owner's threshold, and at least k:
                         gather k verified fragments (acting for the owner)
                         regenerate the missing shares (keyless, same bytes, same IDs)
                         put each on a new distinct site (acting for the owner)
                         keep the manifest's new holders (sealed to this node again)

Holders keep a repaired share as the owner's (its delegate only presented the owner's
delegation), and publish a provider record for it, so the owner, back, finds and adopts
it (:meth:`Repairer` looks shares up in the DHT before regenerating them). A delegate
cannot delete or renew anything: it places no hedged spare that would need deleting.

After each pass the node writes what it did to ``state_file`` (``state/delegate.json``,
read by ``meshpacs status``): the delegations it keeps, the owners it acts for, and the
shares it has rebuilt since it started.

Down times are counted from when this node first saw the owner (or a holder) not answer;
a restart of this node counts again from zero, which only delays a repair.

Logs name owners and holders by site ID, bundles by the first 12 hex digits of their
manifest's record ID, shares by number: no UID, no patient data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from meshpacs.backup.delegation import DELEGATION_RECORD_ID
from meshpacs.backup.placement import Candidate, placement_key, rank_candidates
from meshpacs.backup.upload import UploadPolicy, place_shares
from meshpacs.durable import write_atomic
from meshpacs.errors import MeshError, PeerRefused, PeerUnreachable, Unrecoverable, brief
from meshpacs.federation.delegation import Delegation, read_delegation
from meshpacs.keys import NodeIdentity
from meshpacs.metadata.manifest import RepairManifest, open_manifest, seal_manifest
from meshpacs.metadata.repair import repair_threshold
from meshpacs.recovery.gather import FindHolders, connect_fetch, gather_bundle
from meshpacs.recovery.model import PlannedBundle, ShareHolder
from meshpacs.store.records import HeldRecords
from meshpacs.transport.client import FragmentInfo, PartnerConnection
from meshpacs.transport.frames import RecordKind
from meshpacs.upkeep.pacing import Pause, wait_or_stop
from meshpacs.upkeep.repair import regenerate_files

__all__ = ["DelegatePass", "DelegateRepairer", "DelegateSettings"]

_log = logging.getLogger("meshpacs.delegate")

Ping = Callable[[str], Awaitable[None]]
ConnectFor = Callable[[str, bytes], Awaitable[PartnerConnection]]
Candidates = Callable[[bytes, int], Awaitable[list[Candidate]]]
# Never hedge: a delegate cannot delete the surplus copy a hedge may leave.
_NO_HEDGE = UploadPolicy(hedge_fraction=2.0)


@dataclass(frozen=True)
class DelegateSettings:
    lost_after_seconds: float = 3 * 86400.0  # the owner's and a holder's grace
    interval_seconds: float = 600.0
    bundles_per_pass: int = 20
    fetch_timeout_seconds: float = 30.0
    parallel_fetches: int = 4
    spare_sites: int = 2


@dataclass
class DelegatePass:
    """What one pass found and did, for logs and tests."""

    owners: int = 0  # delegations held and valid
    owners_down: int = 0  # owners down past the grace
    acting_for: tuple[str, ...] = ()  # owners this node acted for (its turn)
    checked: int = 0
    repaired: int = 0
    unrecoverable: int = 0
    failed: int = 0
    shares_placed: int = 0

    def fields(self) -> dict[str, object]:
        """The pass as log fields (counts and site IDs only)."""
        return {
            "event": "delegate_pass",
            "owners": self.owners,
            "owners_down": self.owners_down,
            "acting_for": list(self.acting_for),
            "bundles_checked": self.checked,
            "repaired": self.repaired,
            "failed": self.failed,
            "unrecoverable": self.unrecoverable,
            "shares_placed": self.shares_placed,
        }


def _bundle(owner: str, record_id: str, **more: object) -> dict[str, object]:
    """Log fields naming one of an owner's bundles by its manifest's record ID prefix."""
    return {"owner": owner, "bundle": record_id[:12], **more}


@dataclass
class _Check:
    """What the holders said about one bundle."""

    good: dict[int, str] = field(default_factory=dict)  # share -> a site that holds it
    waiting: set[int] = field(default_factory=set)  # held by a site not yet lost
    unreachable: set[str] = field(default_factory=set)


class _CheckConnections:
    """One acting-for connection per holder, for the checks of one owner's bundles in a pass.

    A check asks every share of every bundle, mostly at the same few holders: a connection
    each time would cost a TLS handshake and a delegation check at the holder per share.
    The caller closes them at the end of the pass.
    """

    def __init__(self, connect_for: ConnectFor, token: bytes) -> None:
        self._connect_for = connect_for
        self._token = token
        self._open: dict[str, PartnerConnection] = {}

    async def has_fragment(self, site: str, fragment_id: str) -> FragmentInfo | None:
        kept = self._open.get(site)
        if kept is not None:
            try:
                return await self._ask(site, kept, fragment_id)
            except (PeerUnreachable, OSError, TimeoutError):
                pass  # the holder may have closed it while idle: once more, on a new one
        conn = await self._connect_for(site, self._token)
        self._open[site] = conn
        return await self._ask(site, conn, fragment_id)

    async def _ask(
        self, site: str, conn: PartnerConnection, fragment_id: str
    ) -> FragmentInfo | None:
        try:
            return await conn.has_fragment(fragment_id)
        except PeerRefused:
            raise  # an answer: the connection still serves the next share
        except BaseException:
            del self._open[site]
            await conn.close()
            raise

    async def close(self) -> None:
        connections, self._open = list(self._open.values()), {}
        for conn in connections:
            await conn.close()


class DelegateRepairer:
    """Repairs the shares of owners that are down and named this node their delegate."""

    def __init__(
        self,
        *,
        site_id: str,
        identity: NodeIdentity,
        records: HeldRecords,
        ping: Ping,
        connect_for: ConnectFor,
        candidates: Candidates,
        find_holders: FindHolders,
        work_dir: Path,
        settings: DelegateSettings | None = None,
        state_file: Path | None = None,
        clock: Callable[[], float] = time.time,
        pause: Pause = wait_or_stop,
    ) -> None:
        self.site_id = site_id
        self._state_file = state_file
        self._totals = {"repaired": 0, "shares_placed": 0}
        self._last_repair_at: float | None = None
        self._identity = identity
        self._records = records
        self._ping = ping
        self._connect_for = connect_for
        self._candidates = candidates
        self._find_holders = find_holders
        self._work_dir = work_dir
        self.settings = settings or DelegateSettings()
        self._clock = clock
        self._pause = pause
        self._down_since: dict[str, float] = {}  # site -> when it first did not answer

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.repair_once()
            except MeshError as error:
                _log.error("delegate repair pass failed: %s", error,
                           extra={"event": "delegate_error"})  # fmt: skip
            await self._pause(self.settings.interval_seconds, stop)

    async def repair_once(self) -> DelegatePass:
        report = DelegatePass()
        acting: list[str] = []
        for token, raw in await self._delegations():
            report.owners += 1
            owner = token.owner_site
            if not await self._down_long(owner):
                continue
            report.owners_down += 1
            manifests = await self._manifests(owner)
            # The owner names the same delegates in every manifest: the first decides.
            if not manifests or not await self._my_turn(manifests[0][1]):
                continue  # nothing kept, or an earlier delegate is up and looks after it
            acting.append(owner)
            checks = _CheckConnections(self._connect_for, raw)
            try:
                for record_id, manifest in manifests[: self.settings.bundles_per_pass]:
                    await self._look_after(owner, raw, checks, record_id, manifest, report)
            finally:
                await checks.close()
        report.acting_for = tuple(acting)
        self._note(report)
        if acting:
            _log.info(
                "delegate repair: acting for %s (down); %d bundle(s) checked, %d repaired,"
                " %d failed, %d short of k; %d share(s) placed",
                ",".join(acting), report.checked, report.repaired, report.failed,
                report.unrecoverable, report.shares_placed, extra=report.fields(),
            )  # fmt: skip
        return report

    def _note(self, report: DelegatePass) -> None:
        self._totals["repaired"] += report.repaired
        self._totals["shares_placed"] += report.shares_placed
        if report.shares_placed:
            self._last_repair_at = self._clock()
        if self._state_file is None:
            return
        document = {
            "updated_at": self._clock(),
            "delegations": report.owners,
            "owners_down": report.owners_down,
            "acting_for": list(report.acting_for),
            "last_pass": {"checked": report.checked, "repaired": report.repaired,
                          "failed": report.failed, "unrecoverable": report.unrecoverable,
                          "shares_placed": report.shares_placed},
            "since_start": {**self._totals, "last_repair_at": self._last_repair_at},
        }  # fmt: skip
        self._state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self._state_file, json.dumps(document, indent=2).encode(), 0o600)

    # -- who, and whether ---------------------------------------------------------------

    async def _delegations(self) -> list[tuple[Delegation, bytes]]:
        raw_tokens = await asyncio.to_thread(
            self._records.from_every_owner, RecordKind.DELEGATION, DELEGATION_RECORD_ID
        )
        now = self._clock()
        found = []
        for raw in raw_tokens:
            try:
                token, _, _ = read_delegation(raw)
            except MeshError as error:
                _log.warning("delegate repair: an unreadable delegation is kept here: %s", error,
                             extra={"event": "delegate_unreadable"})  # fmt: skip
                continue
            # Holders check the signature and certificate; here only what is ours to use.
            if token.delegate_site == self.site_id and now < token.expires_at:
                found.append((token, raw))
        return found

    async def _answers(self, site: str) -> bool:
        try:
            await self._ping(site)
        except (MeshError, OSError, TimeoutError):
            self._down_since.setdefault(site, self._clock())
            return False
        self._down_since.pop(site, None)
        return True

    def _lost(self, site: str) -> bool:
        since = self._down_since.get(site)
        return since is not None and self._clock() - since >= self.settings.lost_after_seconds

    async def _down_long(self, owner: str) -> bool:
        return not await self._answers(owner) and self._lost(owner)

    async def _my_turn(self, manifest: RepairManifest) -> bool:
        for delegate in manifest.delegates:
            if delegate == self.site_id:
                return True
            if await self._answers(delegate):
                return False
        return False  # not named: the manifest is not for this node

    async def _manifests(self, owner: str) -> list[tuple[str, RepairManifest]]:
        names = await asyncio.to_thread(self._records.list, RecordKind.REPAIR, owner)
        found = []
        for record_id in names:
            data = await asyncio.to_thread(self._records.get, RecordKind.REPAIR, owner, record_id)
            if data is None:
                continue
            try:
                manifest = open_manifest(
                    self._identity, data, owner_site=owner, peer_site=self.site_id,
                    record_id=record_id,
                )  # fmt: skip
            except MeshError as error:
                _log.warning("delegate repair: manifest %s of site %s unusable: %s",
                             record_id[:12], owner, error,
                             extra={"event": "delegate_manifest_unusable",
                                    **_bundle(owner, record_id)})  # fmt: skip
                continue
            found.append((record_id, manifest))
        return found

    # -- one bundle ---------------------------------------------------------------------

    async def _look_after(
        self,
        owner: str,
        token: bytes,
        checks: _CheckConnections,
        record_id: str,
        manifest: RepairManifest,
        report: DelegatePass,
    ) -> None:
        report.checked += 1
        check = await self._check(owner, checks, manifest)
        ref = manifest.ref
        k, n = ref.params.k, ref.params.n
        threshold = repair_threshold(k, n, manifest.threshold or None)
        if len(check.good) + len(check.waiting) >= threshold:
            await self._remember(owner, record_id, manifest, check.good)
            return
        if len(check.good) < k:
            report.unrecoverable += 1
            _log.warning(
                "delegate repair: bundle %s of site %s has %d good share(s), k is %d; waiting",
                record_id[:12], owner, len(check.good), k,
                extra={"event": "delegate_unrecoverable",
                       **_bundle(owner, record_id, good=len(check.good), k=k, n=n)},
            )  # fmt: skip
            return
        missing = [share for share in range(n) if share not in check.good]
        workdir = self._work_dir / f"{owner}-{record_id[:16]}"
        try:
            placed = await self._rebuild(owner, token, manifest, check, missing, workdir)
        except Unrecoverable as error:
            report.unrecoverable += 1
            _log.warning("delegate repair: bundle %s of site %s: %s", record_id[:12], owner,
                         error, extra={"event": "delegate_unrecoverable",
                                       **_bundle(owner, record_id, good=len(check.good), k=k,
                                                 n=n)})  # fmt: skip
            return
        except (MeshError, OSError) as error:
            report.failed += 1
            _log.warning("delegate repair of bundle %s of site %s failed: %s",
                         record_id[:12], owner, brief(error),
                         extra={"event": "delegate_failed",
                                **_bundle(owner, record_id, missing=len(missing))})  # fmt: skip
            return
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)
        report.shares_placed += len(placed)
        if not placed:
            report.failed += 1
            _log.warning("delegate repair of bundle %s of site %s placed nothing",
                         record_id[:12], owner,
                         extra={"event": "delegate_failed",
                                **_bundle(owner, record_id, missing=len(missing))})  # fmt: skip
            return
        report.repaired += 1
        _log.info(
            "delegate repair: bundle %s of site %s back to %d of %d shares (%d placed)",
            record_id[:12], owner, len(check.good) + len(placed), n, len(placed),
            extra={"event": "delegate_bundle",
                   **_bundle(owner, record_id, good=len(check.good), n=n,
                             placed=len(placed), sites=[placed[i] for i in sorted(placed)])},
        )  # fmt: skip
        await self._remember(owner, record_id, manifest, {**check.good, **placed})

    async def _check(
        self, owner: str, checks: _CheckConnections, manifest: RepairManifest
    ) -> _Check:
        check = _Check()
        expected = manifest.ref.header.fragment_size
        for share, fid in enumerate(manifest.fragment_ids):
            recorded = list(manifest.holders[share])
            with contextlib.suppress(MeshError, OSError, TimeoutError):
                recorded += [s for s in await self._find_holders(fid) if s not in recorded]
            for site in recorded:
                if site == owner or site in check.good.values():
                    continue
                if site in check.unreachable:
                    if not self._lost(site):
                        check.waiting.add(share)
                    continue
                try:
                    info = await checks.has_fragment(site, fid)
                except (PeerUnreachable, OSError, TimeoutError):
                    self._down_since.setdefault(site, self._clock())
                    check.unreachable.add(site)
                    if not self._lost(site):
                        check.waiting.add(share)
                    continue
                except MeshError as error:
                    _log.info("delegate repair: site %s refused a check: %s", site, error,
                              extra={"event": "delegate_check_refused", "owner": owner,
                                     "site": site})  # fmt: skip
                    continue
                self._down_since.pop(site, None)
                found = None if info is None else (info.size, info.set_hash, info.share)
                if found == (expected, manifest.ref.set_hash, share):
                    check.good[share] = site
                    check.waiting.discard(share)
                    break
        return check

    async def _rebuild(
        self,
        owner: str,
        token: bytes,
        manifest: RepairManifest,
        check: _Check,
        missing: list[int],
        workdir: Path,
    ) -> dict[int, str]:
        ref = manifest.ref
        holders = tuple(
            ShareHolder(share, site, manifest.fragment_ids[share])
            for share, site in check.good.items()
        )
        planned = PlannedBundle(ref=ref, wrapped_key=b"", fragment_ids=manifest.fragment_ids,
                                holders=holders, instances=())  # fmt: skip

        async def connect(site: str) -> PartnerConnection:
            return await self._connect_for(site, token)

        s = self.settings
        gathered = await gather_bundle(
            planned, connect_fetch(connect), self._find_holders, workdir / "gathered",
            parallel=s.parallel_fetches, timeout=s.fetch_timeout_seconds,
        )  # fmt: skip
        outputs = {share: workdir / f"share-{share}" for share in missing}
        await asyncio.to_thread(regenerate_files, ref, list(gathered.paths.values()), outputs)
        sites = await self._sites(owner, manifest, check)

        async def put(site: str, share: int) -> None:
            async with await self._connect_for(site, token) as conn:
                await conn.put_fragment(manifest.fragment_ids[share], outputs[share])

        async def delete(site: str, share: int) -> None:  # never called: no hedging
            _log.warning("delegate repair: a surplus share %d stays at site %s", share, site,
                         extra={"event": "delegate_surplus", "owner": owner, "share": share,
                                "site": site})  # fmt: skip

        placed: dict[int, str] = {}

        async def on_placed(share: int, site: str) -> None:
            placed[share] = site

        outcome = await place_shares(missing, sites, put, delete, on_placed, policy=_NO_HEDGE)
        for site, why in outcome.failed.items():
            _log.warning("delegate repair: site %s did not take a share of site %s: %s",
                         site, owner, why,
                         extra={"event": "delegate_share_refused", "owner": owner,
                                "site": site})  # fmt: skip
        return placed

    async def _sites(self, owner: str, manifest: RepairManifest, check: _Check) -> list[str]:
        key = placement_key(manifest.ref.bundle_id)
        exclude = {owner, *check.good.values(), *check.unreachable}
        wanted = manifest.ref.params.n + self.settings.spare_sites + len(exclude) + 1
        ranked = rank_candidates(
            key,
            await self._candidates(key, wanted),
            owner_site=owner,
            fragment_size=manifest.ref.header.fragment_size,
            exclude=sorted(exclude),
        )
        return [candidate.site_id for candidate in ranked]

    async def _remember(
        self, owner: str, record_id: str, manifest: RepairManifest, good: dict[int, str]
    ) -> None:
        """Keep where each share now is, so the next check asks there first."""
        holders = tuple(
            ((good[share],) if share in good else ())
            + tuple(s for s in manifest.holders[share] if s != good.get(share))[:7]
            for share in range(manifest.ref.params.n)
        )
        if holders == manifest.holders:
            return
        updated = replace(manifest, holders=holders)
        _, sealed = seal_manifest(
            updated, self._identity.public_key_bytes, owner_site=owner, peer_site=self.site_id
        )
        await asyncio.to_thread(self._records.put, RecordKind.REPAIR, owner, record_id, sealed)
