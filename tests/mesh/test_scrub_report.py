"""A holder's scrub tells the owner of a rotten share directly, and the owner repairs it
without an audit having found it (audits are all but off here)."""

from __future__ import annotations

from pathlib import Path

from meshpacs.node.status import site_status
from meshpacs.store.names import fragment_path
from meshpacs.testbed.layout import FAST_MAINTENANCE

from .conftest import FederationFactory
from .helpers import eventually, push, study, wait_protected
from .test_audits import fragment_ids, verdicts

NO_AUDITS = {**FAST_MAINTENANCE, "audits_per_hour": 0.01, "scrub_interval_hours": 0.001}


async def test_rot_found_by_the_holders_scrub_is_reported_and_repaired(
    federation: FederationFactory, tmp_path: Path
) -> None:
    fed = await federation(5, k=2, n=3, maintenance=NO_AUDITS)
    owner = fed.site("site-a")
    instances = study(seed=71)
    await push(owner, instances, tmp_path / "pacs")
    await wait_protected(owner, {instances[0].study_instance_uid})
    ids = fragment_ids(owner)
    rotten_at = sorted(ids)[0]
    path = fragment_path(fed.site(rotten_at).data_dir / "fragments", ids[rotten_at])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the holder's scrub re-hashes all of it: one byte is enough
    path.write_bytes(bytes(data))

    await eventually(
        lambda: verdicts(owner).get(rotten_at) == "failed" or rotten_at not in verdicts(owner),
        30,
        "the owner told of the rotten share",
    )
    await eventually(
        lambda: rotten_at not in fragment_ids(owner) and len(fragment_ids(owner)) == 3,
        30,
        "the share rebuilt on another site",
    )
    # The repair records its attempt just after the new placement: wait for that too.
    await eventually(
        lambda: site_status(owner.config)["audits"]["repairs"]["repaired"] >= 1,
        30,
        "status counts the repair",
    )
    audits = site_status(owner.config)["audits"]
    assert audits["passed"] + audits["failed"] == 0  # no audit had a part in it
