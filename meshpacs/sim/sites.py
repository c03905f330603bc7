"""The simulated federation's members: seeded keys, the real node IDs, and where they sit.

Each site gets an Ed25519 key made from the seed, and its DHT node ID is
:func:`meshpacs.keys.identity.node_id_for` of that key, as a real member's is: the
keyspace a simulation sees is the one real sites would occupy. A site also gets a point
on a plane (for round-trip times) and a storage offer.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshpacs.backup.placement import Candidate
from meshpacs.keys.identity import node_id_for

__all__ = ["LatencyModel", "SimSite", "as_candidates", "make_sites", "site_name"]


@dataclass(frozen=True)
class SimSite:
    """One member: its ID, its DHT node ID, its key for fragment IDs, where it is."""

    index: int
    site_id: str
    node_id: bytes
    fragment_id_key: bytes
    x_km: float
    y_km: float
    capacity_bytes: int


@dataclass(frozen=True)
class LatencyModel:
    """Round-trip time between two sites: a fixed cost plus light in fibre over the distance.

    Sites sit uniformly on a square ``span_km`` wide (about a large country); fibre runs
    at about 200 km per ms and rarely straight (``route_factor``).
    """

    base_ms: float = 2.0
    span_km: float = 2000.0
    route_factor: float = 1.5
    km_per_ms: float = 200.0

    def rtt_ms(self, a: SimSite, b: SimSite) -> float:
        distance = math.hypot(a.x_km - b.x_km, a.y_km - b.y_km)
        return self.base_ms + 2 * distance * self.route_factor / self.km_per_ms


def as_candidates(
    sites: Sequence[SimSite], used: Sequence[int], chosen: Iterable[int]
) -> list[Candidate]:
    """The ``chosen`` sites as placement candidates, each offering what it has left."""
    return [
        Candidate(sites[i].site_id, sites[i].node_id, sites[i].capacity_bytes - used[i])
        for i in chosen
    ]


def site_name(index: int) -> str:
    return f"site-{index:04d}"


def make_sites(
    count: int,
    seed: int,
    *,
    capacity_bytes: int = 10**13,
    span_km: float = LatencyModel().span_km,
) -> list[SimSite]:
    """``count`` sites, the same for the same seed."""
    if count < 2:
        raise ValueError("a federation needs at least two sites")
    rng = random.Random(f"meshpacs-sim-sites/{seed}")
    sites = []
    for index in range(count):
        secret = hashlib.sha256(f"meshpacs-sim/{seed}/site/{index}".encode()).digest()
        public = (
            Ed25519PrivateKey.from_private_bytes(secret)
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        sites.append(
            SimSite(
                index=index,
                site_id=site_name(index),
                node_id=node_id_for(public),
                fragment_id_key=hashlib.sha256(b"fid/" + secret).digest(),
                x_km=rng.uniform(0, span_km),
                y_km=rng.uniform(0, span_km),
                capacity_bytes=capacity_bytes,
            )
        )
    return sites
