"""A site rebuilt from its recovery phrase gets its catalog back from its trusted peers.

The catalog leaves a site only as sealed study records (:mod:`meshpacs.metadata.replica`),
kept by its trusted peers and readable with the site's catalog key alone. So this is
for the site's own node, set up again on a fresh machine::

    meshpacs init --phrase-file PHRASE ...        same site ID, same keys, same identity
    meshpacs federation install ...               the CA, a copy of its certificate, the CRL
    (config: [mesh] enabled, bootstrap, trusted_peers as before)
    meshpacs node restore-catalog --config ...    this module
    meshpacs node run --config ...

:func:`restore_catalog` joins the federation's DHT with the site's identity (a session of
its own, as ``meshpacs recover`` does; run it before starting the node), asks the site's
trusted peers (``[mesh] trusted_peers``, or the peers given) for every sealed record they
keep for it, opens them with the catalog key, and imports their rows and bundle ledger
(:func:`~meshpacs.metadata.adopt.adopt_documents`), every instance marked pruned: its
bytes are in the mesh. Running it again adds nothing twice. Afterwards the node answers
C-FIND over the whole archive, and a C-MOVE or C-GET gathers the instances it names from
the mesh (:mod:`meshpacs.node.mesh_retrieve`).

A trusted peer holds the records and cannot read them; nobody but the site can answer
queries about its studies.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from meshpacs.dicom.storage import InstanceStore
from meshpacs.durable import read_bounded
from meshpacs.errors import ConfigError, MeshError
from meshpacs.federation import SiteFederationFiles
from meshpacs.federation.certs import MAX_CERT_BYTES, MAX_CRL_BYTES
from meshpacs.keys import SiteKeys
from meshpacs.metadata import Catalog
from meshpacs.metadata.adopt import AdoptCounts, adopt_documents
from meshpacs.node.config import NodeConfig
from meshpacs.node.site import load_site_secret
from meshpacs.recovery.catalog import open_records
from meshpacs.recovery.session import RecoveryCredentials, collect_records, open_session

__all__ = ["RESTORE_DIR", "CatalogRestoreReport", "restore_catalog"]

RESTORE_DIR = "restore-catalog"  # under the node's tmp directory: DHT store, certificates
# Records imported per transaction: one fsync per batch, and a batch stays small in memory.
_BATCH = 100


@dataclass(frozen=True)
class CatalogRestoreReport:
    """What the peers returned and what the catalog took in."""

    site_id: str
    peers_asked: tuple[str, ...]
    peers_failed: Mapping[str, str]
    records_received: int  # every copy, from every peer
    records_refused: int  # did not open with this site's catalog key
    imported: AdoptCounts = field(default_factory=AdoptCounts)

    @property
    def ok(self) -> bool:
        """At least one peer answered, every record it sent opened and was imported."""
        answered = len(self.peers_asked) > len(self.peers_failed)
        return answered and not self.records_refused and not self.imported.malformed

    def as_json(self) -> dict[str, Any]:
        return {
            "site_id": self.site_id,
            "ok": self.ok,
            "peers_asked": list(self.peers_asked),
            "peers_failed": dict(self.peers_failed),
            "records_received": self.records_received,
            "records_refused": self.records_refused,
            "imported": asdict(self.imported),
        }


def _credentials(config: NodeConfig) -> RecoveryCredentials:
    """The federation files this site installed, and where its DHT is."""
    files = SiteFederationFiles.for_site(config.data_dir)
    if not files.installed():
        raise ConfigError(
            f"site {config.site.id} has no federation files in {files.directory}: install the"
            " CA certificate, a copy of the site's node certificate and the CRL first"
            " (meshpacs federation install)"
        )
    bootstrap = tuple((d.host, d.port) for d in config.mesh.bootstrap)
    if not bootstrap:
        raise ConfigError(
            f"{config.site.id}: [mesh] bootstrap names no partner to join the federation through"
        )
    return RecoveryCredentials(
        site_id=config.site.id,
        ca_pem=read_bounded(files.ca, MAX_CERT_BYTES, "federation CA certificate"),
        cert_pem=files.node_certificate_pem(),
        crl_pem=read_bounded(files.crl, MAX_CRL_BYTES, "revocation list"),
        bootstrap=bootstrap,
        bind=config.mesh.bind,
    )


async def restore_catalog(
    config: NodeConfig,
    *,
    peers: Sequence[str] = (),
    say: Callable[[str], None] = lambda _: None,
    clock: Callable[[], float] = time.time,
) -> CatalogRestoreReport:
    """Import this site's sealed catalog records from its trusted peers (see the module)."""
    secret = load_site_secret(config.key_file)
    keys = SiteKeys.derive(secret)
    credentials = _credentials(config)
    workdir = config.tmp_dir / RESTORE_DIR
    shutil.rmtree(workdir, ignore_errors=True)
    try:
        async with open_session(secret, credentials, workdir) as session:
            asked = list(peers) or list(config.mesh.trusted_peers) or await session.members()
            say(f"asking {len(asked)} sites for this site's catalog records")
            sealed, failed = await collect_records(session, asked)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for peer, why in sorted(failed.items()):
        say(f"  site {peer} did not answer: {why}")
    opened = open_records(keys, config.site.id, sealed)
    if opened.refused:
        say(f"  {opened.refused} records did not open with this site's key: ignored")
    imported = await _import(config, [record.document for record in opened.records], clock)
    say(
        f"imported {imported.studies} studies, {imported.instances} instances and"
        f" {imported.bundles} bundles from {len(sealed)} records"
    )
    return CatalogRestoreReport(
        site_id=config.site.id,
        peers_asked=tuple(asked),
        peers_failed=dict(failed),
        records_received=len(sealed),
        records_refused=opened.refused,
        imported=imported,
    )


async def _import(
    config: NodeConfig, documents: list[dict[str, Any]], clock: Callable[[], float]
) -> AdoptCounts:
    store = InstanceStore(config.instances_dir, config.tmp_dir)

    def present(sha256: bytes) -> bool:
        return store.path_for(sha256).exists()

    total = AdoptCounts()
    try:
        catalog = await Catalog.open(config.catalog_path)
    except MeshError as error:
        raise ConfigError(f"cannot open the catalog {config.catalog_path}: {error}") from None
    async with catalog:
        for start in range(0, len(documents), _BATCH):
            batch = documents[start : start + _BATCH]
            adopt = partial(adopt_documents, documents=batch, now=clock(), present=present)
            total.add(await catalog.write(adopt))
    return total
