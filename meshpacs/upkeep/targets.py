"""Which sites may take a repaired share, in what order: the repairer's pure choice.

Taken out of :meth:`meshpacs.upkeep.repair.Repairer._sites` unchanged, so that the
many-site simulation (:mod:`meshpacs.sim`) decides as the repairer does without a catalog
or a mesh: sites new to the bundle come first, closest to its key; sites whose copy went
bad (not lost, not shunned) come last, their bad copy deleted before they take a share.
A small federation would otherwise leave the bundle degraded once every other site holds
a share or is shunned.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from meshpacs.backup.placement import Candidate, rank_candidates
from meshpacs.metadata.repair import BundleShares

__all__ = ["RepairTargets", "repair_sites", "repair_targets"]


@dataclass(frozen=True)
class RepairTargets:
    """Who may not take a missing share, who takes one only last, how many to ask for."""

    exclude: frozenset[str]
    spoilt: frozenset[str]
    wanted: int


def repair_targets(
    bundle: BundleShares,
    *,
    lost: AbstractSet[str],
    shunned: AbstractSet[str],
    spare_sites: int,
    taken: AbstractSet[str] = frozenset(),
) -> RepairTargets:
    """The good holders, ``taken`` (just given an adopted share), lost and shunned sites
    are excluded; enough candidates are wanted to leave n plus spares after them."""
    good = {p.holder_site for p in bundle.good.values()} | set(taken)
    spoilt = {p.holder_site for p in bundle.bad} - good - set(lost) - set(shunned)
    exclude = good | set(lost) | set(shunned)
    wanted = bundle.n + spare_sites + len(exclude) + len(spoilt) + 1
    return RepairTargets(frozenset(exclude), frozenset(spoilt), wanted)


def repair_sites(
    key: bytes,
    candidates: Iterable[Candidate],
    targets: RepairTargets,
    *,
    owner_site: str,
    fragment_size: int,
) -> list[str]:
    """Site IDs for the missing shares in placement order, spoilt ones last."""
    ranked = rank_candidates(
        key,
        candidates,
        owner_site=owner_site,
        fragment_size=fragment_size,
        exclude=sorted(targets.exclude),
    )
    sites = [candidate.site_id for candidate in ranked]
    spoilt = targets.spoilt
    return [x for x in sites if x not in spoilt] + [x for x in sites if x in spoilt]
