"""Planned bundles of real fragments, and holders that serve them with the faults real ones have."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meshpacs.errors import PeerRefused, PeerUnreachable
from meshpacs.keys import wrap_data_key
from meshpacs.recovery.model import PlannedBundle, PlannedInstance, ShareHolder

from ..store.helpers import Fragment, make_bundle

KEY_WRAP_KEY = secrets.token_bytes(32)
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@dataclass(frozen=True)
class Made:
    """A planned bundle, its fragments by share, and the instances it decodes back to."""

    bundle: PlannedBundle
    fragments: list[Fragment]
    instances: tuple[bytes, ...]

    def fid(self, share: int) -> str:
        return self.fragments[share].fid


def site(share: int) -> str:
    return f"site-{share}"


def planned_bundle(
    fragments: list[Fragment],
    holders: Mapping[int, Sequence[str]] | None = None,
    key_wrap_key: bytes = KEY_WRAP_KEY,
) -> PlannedBundle:
    """What the catalog would plan for these fragments; share s at ``site-s`` by default."""
    encoded = fragments[0].bundle
    placed = holders if holders is not None else {f.share: [site(f.share)] for f in fragments}
    instances = tuple(
        PlannedInstance(
            position=i,
            sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{i + 1}",
            sop_class_uid=CT_IMAGE,
            transfer_syntax_uid=EXPLICIT_LE,
            size=len(data),
            sha256=hashlib.sha256(data).digest(),
        )
        for i, data in enumerate(fragments[0].instances)
    )
    return PlannedBundle(
        ref=encoded.ref,
        wrapped_key=wrap_data_key(key_wrap_key, encoded.ref.bundle_id, encoded.data_key),
        fragment_ids=tuple(f.fid for f in fragments),
        holders=tuple(
            ShareHolder(share, holder, fragments[share].fid)
            for share, sites in sorted(placed.items())
            for holder in sites
        ),
        instances=instances,
    )


def make(
    seed: int,
    sizes: tuple[int, ...] = (3000, 9000),
    k: int = 2,
    n: int = 3,
    holders: Mapping[int, Sequence[str]] | None = None,
) -> Made:
    fragments = make_bundle(seed, sizes, k, n)
    return Made(planned_bundle(fragments, holders), fragments, fragments[0].instances)


@dataclass
class Holders:
    """Sites serving fragments from memory, each able to be down, slow, stalled or lying.

    ``fetch`` has the :data:`~meshpacs.recovery.gather.Fetch` shape and, like a careless
    implementation, writes whatever the site has, whatever ``size`` says: the gatherer is
    the one that must bound it. ``find`` answers like the DHT's provider records.
    """

    held: dict[str, dict[str, bytes]] = field(default_factory=dict)
    providers: dict[str, list[str]] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    delay: dict[str, float] = field(default_factory=dict)
    stall_after: dict[str, int] = field(default_factory=dict)  # bytes sent, then silence
    calls: list[tuple[str, str]] = field(default_factory=list)
    lookups: list[str] = field(default_factory=list)

    def hold(self, site_id: str, fragment: Fragment, data: bytes | None = None) -> None:
        self.held.setdefault(site_id, {})[fragment.fid] = fragment.data if data is None else data

    @classmethod
    def serving(cls, made: Made) -> Holders:
        """Each share held by the site(s) the plan recorded for it."""
        holders = cls()
        for holder in made.bundle.holders:
            holders.hold(holder.site_id, made.fragments[holder.share])
        return holders

    async def fetch(self, site_id: str, fragment_id: str, dest: Path, size: int) -> None:
        self.calls.append((site_id, fragment_id))
        await asyncio.sleep(self.delay.get(site_id, 0))
        if site_id in self.down:
            raise PeerUnreachable(f"site {site_id}: connection refused")
        data = self.held.get(site_id, {}).get(fragment_id)
        if data is None:
            raise PeerRefused("NOT_FOUND", "no such fragment")
        stall = self.stall_after.get(site_id)
        with dest.open("wb") as out:
            for start in range(0, len(data), 4096):
                if stall is not None and start >= stall:
                    out.flush()
                    await asyncio.sleep(3600)
                out.write(data[start : start + 4096])
                out.flush()
                await asyncio.sleep(0)

    async def find(self, fragment_id: str) -> list[str]:
        self.lookups.append(fragment_id)
        return list(self.providers.get(fragment_id, []))


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []
