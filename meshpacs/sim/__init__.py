"""Hundreds of sites in one process, with meshpacs' own DHT, placement and repair logic.

::

    sites.py       seeded members: Ed25519 keys, their real node IDs, a place on a plane
    network.py     SimDht: every site runs the node's MeshProtocol (kademlia's routing
                   table and crawl) over an in-memory datagram network; lookups counted
    federation.py  Federation: bundles placed by rank_candidates and place_shares, sites
                   failed, repairers' passes on a simulated clock (bundles_below,
                   good_shares, upkeep.targets)
    run.py         simulate(SimConfig): the whole run as plain data
    durability.py  a year of churn (outages, departures, disk losses, regional disasters)
                   against k-of-n and replication: bundles lost, live shares, repair traffic

``scripts/simulate_federation.py`` prints it, writes it as JSON and draws docs/scale.md.
Nothing here touches a socket, a file or the wall clock; the same seed gives the same run.
"""

from meshpacs.sim.durability import Churn, DurabilityConfig, Scheme, durability
from meshpacs.sim.federation import Balance, FailureOutcome, Federation, SimBundle
from meshpacs.sim.network import LookupResult, MemoryNetwork, SimDht
from meshpacs.sim.run import SimConfig, simulate
from meshpacs.sim.sites import LatencyModel, SimSite, make_sites

__all__ = [
    "Balance",
    "Churn",
    "DurabilityConfig",
    "FailureOutcome",
    "Federation",
    "LatencyModel",
    "LookupResult",
    "MemoryNetwork",
    "Scheme",
    "SimBundle",
    "SimConfig",
    "SimDht",
    "SimSite",
    "durability",
    "make_sites",
    "simulate",
]
