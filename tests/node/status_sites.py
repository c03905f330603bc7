"""Real site directories in a given state, for the status and warning tests.

Each helper writes what the node itself would: the catalog through the ledger's own
functions, partners' fragments through the fragment store, the peer list as the mesh
writes it. Bundles are encoded by the real codec, so share sizes are the real ones.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from meshpacs.metadata import Catalog, ledger
from meshpacs.metadata.ledger import BundlePlan
from meshpacs.node.config import NodeConfig, load_config
from meshpacs.node.site import create_site
from meshpacs.store import FragmentStore, QuotaPolicy
from tests.metadata.helpers import make_record
from tests.store.helpers import SEGMENT, Fragment, make_bundle, put

K, N = 2, 3
PLAN = BundlePlan(k=K, n=N, segment_size=SEGMENT, max_bundle_bytes=10**9)


def make_site(
    directory: Path,
    *,
    mesh: bool = True,
    trusted: Sequence[str] = ("county", "general", "city"),
    **settings: object,
) -> NodeConfig:
    """A new site ``st-marys`` with k = 2, n = 3; ``settings`` as ``section__key=value``."""
    chosen: dict[tuple[str, str], object] = {
        ("mesh", "trusted_peers"): list(trusted),
        ("backup", "k"): K,
        ("backup", "n"): N,
        ("backup", "happy"): K,
    }
    if mesh:
        chosen[("mesh", "enabled")] = True
        chosen[("mesh", "advertise_host")] = "127.0.0.1"
    for name, value in settings.items():
        section, key = name.split("__")
        chosen[(section, key)] = value
    created = create_site(directory, "st-marys", "MESH_STM", 11112, chosen)  # type: ignore[arg-type]
    return load_config(created.config_path)


def peers_seen(config: NodeConfig, at: float, online: Sequence[str]) -> None:
    """``state/peers.json`` as the running node writes it, seeing ``online``."""
    config.state_dir.mkdir(exist_ok=True)
    trusted = set(config.mesh.trusted_peers)
    peers = [{"site_id": s, "online": True, "trusted": s in trusted} for s in online]
    document = {"updated_at": at, "peers": peers}
    (config.state_dir / "peers.json").write_text(json.dumps(document))


@dataclass(frozen=True)
class Stored:
    bundle_ref: int
    fragments: list[Fragment]


async def add_study(
    config: NodeConfig,
    uid: str,
    received_at: float,
    holders: Sequence[str] = (),
    seed: int = 1,
) -> Stored | None:
    """A study received at ``received_at``; with ``holders``, one bundle whose share i is
    placed at ``holders[i]`` and settled (stored at n holders, degraded at fewer)."""
    async with await Catalog.open(config.catalog_path, clock=lambda: received_at) as catalog:
        record = make_record(
            f"{uid}.1", data=uid.encode() * 10, study_uid=uid, series_uid=f"{uid}.2"
        )
        await catalog.add_instances([record])
        if not holders:
            return None
        await catalog.mark_stable(0)

        def study_ref(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT id FROM studies WHERE study_uid = ?", (uid,)).fetchone()
            return int(row[0])

        ref = await catalog.read(study_ref)
        fragments = make_bundle(seed, k=K, n=N)
        bundle = fragments[0].bundle.ref

        def place(db: sqlite3.Connection) -> int:
            made = ledger.plan_bundles(
                db, ref, PLAN, lambda: (bundle.bundle_id, b"wrapped"), received_at
            )
            ledger.record_encoded(db, made[0], bundle.length, bundle.set_hash)
            for share, holder in enumerate(holders):
                ledger.record_placement(
                    db, made[0], share, holder, fragments[share].fid, received_at
                )
            ledger.settle_bundle(db, made[0], K, received_at)
            ledger.settle_study(db, ref)
            return made[0]

        return Stored(await catalog.write(place), fragments)


def hold_for(config: NodeConfig, owner: str, seed: int, shares: Sequence[int]) -> int:
    """Partner ``owner``'s fragments kept here, by the fragment store; their bytes."""
    fragments = make_bundle(seed, k=K, n=N)
    with FragmentStore(config.fragments_dir, QuotaPolicy(10**9)) as store:
        for share in shares:
            put(store, fragments[share], owner)
    return sum(len(fragments[s].data) for s in shares)
