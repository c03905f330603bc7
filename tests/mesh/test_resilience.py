"""Restarts mid-backup, strangers and revoked members: the mesh still ends right."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from meshpacs.federation import FederationCA

from .conftest import FederationFactory, RunningSite
from .helpers import (
    eventually,
    held_fragments,
    push,
    study,
    study_states,
    wait_protected,
)


def placements(site: RunningSite) -> list[tuple[int, int, str]]:
    with sqlite3.connect(f"file:{site.data_dir / 'catalog.sqlite'}?mode=ro", uri=True) as db:
        return [
            (int(b), int(s), str(h))
            for b, s, h in db.execute("SELECT bundle_ref, share, holder_site FROM placements")
        ]


async def test_an_owner_restarted_mid_backup_ends_protected_without_duplicates(
    federation: FederationFactory, tmp_path: Path
) -> None:
    fed = await federation(5, k=2, n=3, happy=3)
    owner = fed.site("site-a")
    resting = [fed.site(s) for s in ("site-c", "site-d", "site-e")]
    for site in resting:
        await site.halt()
    instances = study(seed=21)
    await push(owner, instances, tmp_path / "pacs")
    # One partner up, happy is 3: the bundle is encoded, one share placed, the rest waits.
    await eventually(lambda: len(placements(owner)) == 1, 60, "first share placed")
    assert study_states(owner)[instances[0].study_instance_uid] == "queued"
    await owner.halt()
    for site in resting:
        await site.start()
    await owner.start()
    await wait_protected(owner, {instances[0].study_instance_uid})

    placed = placements(owner)
    assert len(placed) == 3 and len({s for _, s, _ in placed}) == 3
    assert len({h for _, _, h in placed}) == 3
    counts = {site.site_id: len(held_fragments(site)) for site in fed.sites}
    assert counts["site-a"] == 0
    assert sum(counts.values()) == 3 and max(counts.values()) == 1, counts  # no duplicates


async def test_a_revoked_member_gets_no_more_shares(
    federation: FederationFactory, tmp_path: Path
) -> None:
    fed = await federation(5, k=2, n=3, happy=3)
    owner = fed.site("site-a")
    ca = FederationCA(Path(fed.plan.ca_dir))
    ca.revoke(site_id="site-e")
    for site in fed.sites:
        if site.site_id != "site-e":  # the revoked site would not install it
            (site.data_dir / "federation" / "crl.pem").write_bytes(ca.crl_pem())
    for number in range(3):
        instances = study(seed=30 + number, patient=number)
        await push(owner, instances, tmp_path / f"pacs-{number}")
        await wait_protected(owner, {instances[0].study_instance_uid})
    assert held_fragments(fed.site("site-e")) == []
    assert {h for _, _, h in placements(owner)} <= {"site-b", "site-c", "site-d"}


async def test_a_node_of_another_federation_cannot_join_store_or_be_used(
    federation: FederationFactory, tmp_path: Path
) -> None:
    fed = await federation(4, k=2, n=3, happy=3)
    rogue_fed = await federation(4, k=2, n=3, happy=3)
    # Point one rogue node's DHT at the real federation: it is answered, but none of its
    # records is believed, and no TLS channel to or from it is accepted.
    rogue = rogue_fed.sites[0]
    await rogue.halt()
    for site in rogue_fed.sites[1:]:
        await site.halt()
    config_text = Path(rogue.plan.config).read_text()
    real_dht = fed.sites[0].plan.dht_port
    patched = re.sub(
        r"^bootstrap = .*$", f'bootstrap = ["127.0.0.1:{real_dht}"]', config_text, flags=re.M
    )
    assert patched != config_text
    Path(rogue.plan.config).write_text(patched)
    from meshpacs.node.config import load_config

    rogue.config = load_config(Path(rogue.plan.config))
    await rogue.start()
    instances = study(seed=41)
    await push(rogue, instances, tmp_path / "rogue-pacs")
    owner = fed.site("site-a")
    mine = study(seed=42)
    await push(owner, mine, tmp_path / "pacs")
    await wait_protected(owner, {mine[0].study_instance_uid})
    assert study_states(rogue)[instances[0].study_instance_uid] != "protected"
    assert all(len(held_fragments(site)) <= 1 for site in fed.sites)
    assert sum(len(held_fragments(site)) for site in fed.sites) == 3  # only site-a's bundle
    assert held_fragments(rogue) == []
