"""Where a bundle's shares go: n distinct partner sites, never the owner, closest first.

Sites are ranked by Kademlia closeness (XOR distance) of their DHT node ID to the
bundle's placement key, as the issue asks and as Tahoe-LAFS ranks servers by a hash of
storage index and server ID: each bundle gets its own ordering of the federation, so
load spreads evenly and anyone who knows the bundle ID can recompute where its shares
most likely are (recovery falls back to that when placements are stale).

Only sites that are online and offer room for one more fragment are ranked; a site that
already holds a share of this bundle is skipped, so one lost site costs one share.

Pure functions over frozen dataclasses: the DHT and the transport sit around them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meshpacs.dht import placement_key

__all__ = ["Candidate", "placement_key", "rank_candidates"]


@dataclass(frozen=True)
class Candidate:
    """A partner site that may take a share: what its signed node record says of it."""

    site_id: str
    node_id: bytes
    free_bytes: int
    online: bool = True


def _distance(node_id: bytes, key: bytes) -> int:
    return int.from_bytes(node_id, "big") ^ int.from_bytes(key, "big")


def rank_candidates(
    key: bytes,
    candidates: Iterable[Candidate],
    *,
    owner_site: str,
    fragment_size: int,
    exclude: Sequence[str] = (),
) -> list[Candidate]:
    """Distinct eligible sites, closest to ``key`` first (ties broken by site ID).

    Drops the owner, the sites in ``exclude`` (already holding a share, or failed for
    this bundle), sites offline or without ``fragment_size`` bytes free, and every
    duplicate of a site ID but its closest entry.
    """
    skip = {owner_site, *exclude}
    best: dict[str, Candidate] = {}
    for candidate in candidates:
        if candidate.site_id in skip or not candidate.online:
            continue
        if candidate.free_bytes < fragment_size:
            continue
        held = best.get(candidate.site_id)
        if held is None or _distance(candidate.node_id, key) < _distance(held.node_id, key):
            best[candidate.site_id] = candidate
    return sorted(best.values(), key=lambda c: (_distance(c.node_id, key), c.site_id))
