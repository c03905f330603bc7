"""A study pushed to one site ends protected across the federation, and leaks nothing."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from meshpacs.dht import ProviderRecord, decode_record, provider_key

from .conftest import FederationFactory, RunningSite
from .helpers import (
    eventually,
    files_containing,
    held_catalog_records,
    held_fragments,
    phi_strings,
    push,
    study,
    wait_protected,
)


async def test_a_pushed_study_is_protected_on_n_distinct_partners_and_leaks_no_phi(
    federation: FederationFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fed = await federation(5, k=2, n=3)
    owner = fed.site("site-a")
    instances = study(seed=11)
    await push(owner, instances, tmp_path / "pacs")
    await wait_protected(owner, {instances[0].study_instance_uid})

    holders = {s.site_id: held_fragments(s) for s in fed.sites}
    assert holders["site-a"] == []  # never the owner
    with_fragments = {site for site, files in holders.items() if files}
    assert len(with_fragments) == 3, holders  # n distinct partner sites
    assert all(len(files) == 1 for files in holders.values() if files)

    # The catalog record went to site-a's trusted peers (site-b, site-c) and nowhere else.
    def record_holders() -> set[str]:
        return {s.site_id for s in fed.sites if held_catalog_records(s)}

    await eventually(lambda: record_holders() == {"site-b", "site-c"}, what="records sent")
    await asyncio.sleep(1.0)  # a pass later, still nobody else
    assert record_holders() == {"site-b", "site-c"}

    # Each holder announced its fragment in the DHT: a signed provider record naming it
    # is stored under the fragment's key at the other sites.
    for site_id, files in holders.items():
        for fragment in files:
            found = provider_records(fed.sites, fragment.name)
            assert site_id in {record.holder_site_id for record in found}, (site_id, found)

    # PHI containment: no partner's directory (fragments, DHT values, records), and no log
    # line of any node, holds a name, ID, UID or accession number of the study.
    needles = phi_strings(instances)
    assert len(needles) > 10
    for site in fed.sites[1:]:
        assert files_containing(site.data_dir, needles) == {}, site.site_id
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert [n.decode() for n in needles if n.decode() in logged] == []
    # ... while the owner itself does hold them (the search can find what is there).
    assert files_containing(owner.data_dir, needles)


def provider_records(sites: list[RunningSite], fragment_id: str) -> list[ProviderRecord]:
    """Provider records for ``fragment_id`` in every site's DHT store (their SQLite files)."""
    found = []
    for site in sites:
        path = site.data_dir / "dht.sqlite"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows = db.execute(
                "SELECT value FROM records WHERE dht_key = ?", (provider_key(fragment_id),)
            ).fetchall()
        for (value,) in rows:
            record = decode_record(bytes(value)).record
            assert isinstance(record, ProviderRecord)
            found.append(record)
    return found
