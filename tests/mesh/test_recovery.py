"""A site loses everything but its phrase and comes back, byte for byte, from the federation."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import urllib.request
from pathlib import Path

from meshpacs.dicom.part10 import dataset_offset
from meshpacs.keys import SiteSecret
from meshpacs.recovery.command import RecoverRequest, dry_run, run_recovery
from meshpacs.recovery.session import RecoveryCredentials
from meshpacs.testing.synth import SynthInstance

from .conftest import Federation, FederationFactory
from .helpers import eventually, held_catalog_records, push, study, wait_protected


def dataset_part(data: bytes) -> bytes:
    return data[dataset_offset(data) :]


def lose_site(fed: Federation, site_id: str, safe: Path) -> tuple[SiteSecret, RecoveryCredentials]:
    """What a drill keeps outside the site (phrase, public certificates), then the site goes."""
    site = fed.site(site_id)
    phrase = Path(site.plan.phrase_file).read_text().strip()
    federation_dir = site.data_dir / "federation"
    safe.mkdir(parents=True)
    credentials = RecoveryCredentials(
        site_id=site_id,
        ca_pem=(Path(fed.plan.ca_dir) / "ca.pem").read_bytes(),
        cert_pem=(federation_dir / "node.pem").read_bytes(),
        crl_pem=(Path(fed.plan.ca_dir) / "crl.pem").read_bytes(),
        bootstrap=tuple((s.plan.host, s.plan.dht_port) for s in fed.sites if s.site_id != site_id),
    )
    shutil.rmtree(site.data_dir)
    return SiteSecret.from_phrase(phrase), credentials


def restored(root: Path) -> dict[str, bytes]:
    import pydicom

    out = {}
    for path in root.rglob("*.dcm"):
        data = path.read_bytes()
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        out[uid] = dataset_part(data)
    return out


def dashboard_page(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


def originals(instances: list[SynthInstance]) -> dict[str, bytes]:
    return {i.sop_instance_uid: dataset_part(i.data) for i in instances}


async def test_a_lost_site_is_recovered_exactly_and_a_rerun_delivers_nothing_twice(
    federation: FederationFactory, tmp_path: Path
) -> None:
    fed = await federation(5, k=2, n=3)
    owner = fed.site("site-a")
    sent: list[SynthInstance] = []
    for number in range(3):
        instances = study(seed=50 + number, patient=number)
        await push(owner, instances, tmp_path / f"pacs-{number}")
        sent += instances
    await wait_protected(owner, {i.study_instance_uid for i in sent})
    trusted = [fed.site("site-b"), fed.site("site-c")]
    await eventually(lambda: all(len(held_catalog_records(p)) == 3 for p in trusted), 30)
    await owner.halt()
    secret, credentials = lose_site(fed, "site-a", tmp_path / "kept")

    shown_on = fed.site("site-b")  # a running node whose dashboard shows the progress
    request = RecoverRequest(
        secret=secret,
        credentials=credentials,
        workdir=tmp_path / "recovery",
        to_dir=tmp_path / "restored",
        show_on=shown_on.data_dir / "state",
    )
    plan = await dry_run(request)
    assert plan["studies_planned"] == 3 and plan["recoverable"] == 3

    report = await run_recovery(request)
    assert report.exit_code == 0, report.summary()
    assert report.studies_delivered == 3 and report.instances_delivered == len(sent)
    assert restored(tmp_path / "restored") == originals(sent)

    # The progress document, in the work directory and on site B, has the report's figures.
    progress = json.loads((tmp_path / "recovery" / "progress.json").read_text())
    assert progress == json.loads((shown_on.data_dir / "state" / "recovery.json").read_text())
    assert progress["finished"] and progress["outcome"] == "complete"
    assert progress["bundles"] == {
        "total": report.bundles_planned,
        "done": report.bundles_planned,
        "unrecoverable": 0,
    }
    assert report.bundles_planned >= 3
    assert progress["instances"] == {"total": len(sent), "delivered": len(sent), "failed": 0}
    assert progress["bytes"] == {"total": report.bytes_planned, "delivered": report.bytes_planned}
    assert progress["studies"] == {"total": 3, "done": 3}
    page = await asyncio.to_thread(dashboard_page, shown_on.plan.dashboard_url)
    assert "<dt>state</dt><dd>finished: complete</dd>" in page
    assert f"<dt>bundles</dt><dd>{report.bundles_planned} of {report.bundles_planned} done," in page
    assert f"<dt>instances</dt><dd>{len(sent)} of {len(sent)} delivered, 0 failed</dd>" in page
    assert not [i for i in sent if i.study_instance_uid in page or i.sop_instance_uid in page]

    again = await run_recovery(request)
    assert again.exit_code == 0 and again.instances_this_run == 0


async def test_with_too_many_holders_gone_the_report_names_exactly_the_lost_bundles(
    federation: FederationFactory, tmp_path: Path
) -> None:
    fed = await federation(5, k=2, n=3)
    owner = fed.site("site-a")
    sent: list[SynthInstance] = []
    for number in range(4):
        instances = study(seed=70 + number, patient=number)
        await push(owner, instances, tmp_path / f"pacs-{number}")
        sent += instances
    await wait_protected(owner, {i.study_instance_uid for i in sent})
    trusted = [fed.site("site-b"), fed.site("site-c")]
    await eventually(lambda: all(len(held_catalog_records(p)) == 4 for p in trusted), 30)
    await owner.halt()
    # n-k+1 = 2 holders of the first bundle go down (at most one trusted peer among them,
    # so that the catalog records can still be read): that bundle at least is lost.
    with sqlite3.connect(owner.data_dir / "catalog.sqlite") as db:
        holders = [str(r[0]) for r in db.execute(
            "SELECT holder_site FROM placements WHERE bundle_ref = 1 ORDER BY holder_site DESC"
        )]  # fmt: skip
    gone = holders[:2]
    assert not {"site-b", "site-c"} <= set(gone)
    secret, credentials = lose_site(fed, "site-a", tmp_path / "kept")
    for site_id in gone:
        await fed.site(site_id).halt()

    request = RecoverRequest(
        secret=secret,
        credentials=credentials,
        workdir=tmp_path / "recovery",
        to_dir=tmp_path / "restored",
        peers=tuple(p for p in ("site-b", "site-c") if p not in gone),
    )
    plan = await dry_run(request)
    lost = {b["bundle"] for s in plan["studies"] for b in s["bundles"] if b["reachable"] < b["k"]}
    assert lost
    report = await run_recovery(request)
    assert {u.bundle_id.hex() for u in report.unrecoverable} == lost
    assert report.exit_code != 0
    # Whatever was delivered is exact; nothing wrong was delivered.
    got = restored(tmp_path / "restored")
    want = originals(sent)
    assert all(want[uid] == data for uid, data in got.items())
    assert len(got) == report.instances_delivered
