"""Leases over the real transport: an owner that runs keeps its shares at the holders;
one that stops renewing has them removed after lease plus grace; status shows both sides.

Leases are shortened to seconds (4.3 s, renewed every 0.9 s, 2.2 s of grace) so one test sees
a share outlive several of its leases and then expire.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from meshpacs.node.status import site_status
from meshpacs.store.names import fragment_path

from .conftest import FederationFactory, RunningSite
from .helpers import eventually, push, study, wait_protected
from .test_audits import fragment_ids

LEASE_DAYS = 0.00005  # 4.3 s
RENEW_HOURS = 0.00025  # 0.9 s
GRACE_DAYS = 0.000025  # 2.2 s
SHORT_LEASES = {
    "lease_days": LEASE_DAYS,
    "lease_renew_hours": RENEW_HOURS,
    "expired_grace_days": GRACE_DAYS,
}


def held_by(holders: dict[str, RunningSite], ids: dict[str, str]) -> dict[str, bool]:
    return {
        site: fragment_path(holders[site].data_dir / "fragments", ids[site]).exists()
        for site in ids
    }


async def test_renewed_shares_outlive_their_lease_and_unrenewed_ones_expire(
    federation: FederationFactory, tmp_path: Path
) -> None:
    fed = await federation(5, k=2, n=3, maintenance=SHORT_LEASES)
    owner = fed.site("site-a")
    instances = study(seed=41)
    await push(owner, instances, tmp_path / "pacs")
    await wait_protected(owner, {instances[0].study_instance_uid})
    ids = fragment_ids(owner)
    holders = {s: fed.site(s) for s in ids}
    assert len(ids) == 3 and all(held_by(holders, ids).values())

    lifetime = (LEASE_DAYS + GRACE_DAYS) * 86400
    await asyncio.sleep(lifetime + 3)  # past what a put alone leases, grace included
    assert all(held_by(holders, ids).values()), "a renewed share expired"
    renewal = site_status(owner.config)["leases"]["renewal"]
    assert renewal is not None and renewal["fragments"] == 3, renewal
    assert renewal["renewed"] == 3 and renewal["unreachable"] == [], renewal
    # Renewed within one lease: what keeps a share alive. (Three renewal intervals, 2.7 s,
    # was missed by 0.2 s on a loaded two-worker CI run.)
    assert time.time() - renewal["renewed_at"] < LEASE_DAYS * 86400

    await owner.halt()  # stops renewing; its partners must not keep its shares for ever
    await eventually(
        lambda: not any(held_by(holders, ids).values()),
        lifetime + 20,
        "every share of the stopped owner removed at its holder",
    )

    # A pass removes the files first and then writes its tally: the report follows shortly.
    def removed_total(holder: RunningSite) -> int:
        expiry = site_status(holder.config)["leases"]["expiry"]
        return 0 if expiry is None else int(expiry["removed_total"])

    await eventually(
        lambda: all(removed_total(h) >= 1 for h in holders.values()),
        10,
        "every holder's status counts the share its expiry removed",
    )
