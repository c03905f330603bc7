"""The backup pipeline's order over a real catalog, real files and the real codec.

Partners here are directories on this machine (the transport has its own tests); what
is checked is the pipeline: what gets bundled, where shares go, what the ledger says,
and that any k of the fragments placed give back the exact instance bytes.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshpacs.audit.challenge import Challenge, ExpectedAnswer, answer, parse_challenge_set
from meshpacs.audit.reputation import Outcome
from meshpacs.audit.tap import DEFAULT_CHALLENGES
from meshpacs.backup.service import BackupService, BackupSettings
from meshpacs.metadata import StudyState, health, ledger
from meshpacs.metadata.ledger import BundlePlan

from ..metadata.helpers import make_record
from .helpers import Site, decode_all, open_site


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with open_site(tmp_path) as opened:
        yield opened


async def test_a_stable_study_ends_protected_on_n_distinct_partners(site: Site) -> None:
    sent = await site.receive(5)
    report = await site.service().run_once()
    assert (report.queued, report.planned, report.encoded, report.stored) == (1, 1, 1, 1)
    assert report.protected == 1
    assert await site.catalog.study_state("1.2.3.1") is StudyState.PROTECTED
    held = site.partners.held()
    assert "owner" not in held
    assert len(held) == 4 and all(len(files) == 1 for files in held.values())
    assert await decode_all(site, k=2) == sent
    # The shares streamed as they were encoded: no file upload, no work file ever.
    assert (site.partners.streams, site.partners.puts) == (4, 0)
    assert not site.work.exists()


async def test_nothing_is_bundled_before_the_study_is_quiet(site: Site) -> None:
    await site.receive(2)
    site.clock.advance(-30)  # only 31 s quiet
    report = await site.service().run_once()
    assert (report.queued, report.planned) == (0, 0)
    assert site.partners.puts == 0


async def test_a_down_partner_is_replaced_by_a_spare(site: Site) -> None:
    site.partners.down = {"partner-0", "partner-3"}
    await site.receive(3)
    report = await site.service().run_once()
    assert report.stored == 1
    assert set(site.partners.held()).isdisjoint({"partner-0", "partner-3", "owner"})


async def test_a_partner_failing_mid_stream_keeps_nothing_and_a_spare_gets_the_share(
    site: Site,
) -> None:
    site.partners.fault_first = "broken"
    sent = await site.receive(4, size=1_000_000)  # two 1 MiB chunks per share
    report = await site.service(cap=10**7).run_once()
    assert (report.stored, report.protected) == (1, 1)
    held = site.partners.held()
    assert site.partners.faulty not in held and "owner" not in held and len(held) == 4
    assert not list(site.partners.root.rglob("*.part"))
    assert site.partners.puts == 2  # refused again by the broken site, then on a spare
    assert await decode_all(site, k=2) == sent
    assert not (site.work.exists() and any(site.work.iterdir()))


async def test_a_stalled_partner_is_detached_and_does_not_hold_the_others(site: Site) -> None:
    # A share is a quarter of the study (k=2 of 40 KB instances): several 1 MiB chunks
    # per share, so the stalled partner's queue fills and the codec would wait on it.
    site.partners.fault_first = "stalled"
    sent = await site.receive(30, size=400_000)
    report = await site.service(stall=0.5, cap=10**8).run_once()
    assert (report.stored, report.protected) == (1, 1)
    held = site.partners.held()
    assert site.partners.faulty not in held and len(held) == 4
    assert site.partners.puts == 2  # refused by the stalled site, then on a spare
    assert await decode_all(site, k=2) == sent


async def test_a_restart_mid_stream_sends_only_the_shares_not_acknowledged(site: Site) -> None:
    sent = await site.receive(4)
    site.partners.down = {"partner-0", "partner-1", "partner-2", "partner-3", "partner-4"}
    service = site.service()
    await service.run_once()  # one share streamed (partner-5); the rest wait for partners
    [row] = await site.catalog.read(
        lambda db: [ledger.bundle(db, r[0]) for r in db.execute("SELECT id FROM bundles")]
    )
    # As if the node stopped after the ack and before recording the bundle encoded.
    await site.catalog.write(
        lambda db: db.execute(
            "UPDATE bundles SET state = 'planned', length = NULL, set_hash = NULL WHERE id = ?",
            (row.ref,),
        )
    )
    shutil.rmtree(site.work, ignore_errors=True)
    site.partners.down = set()
    before = site.partners.streams
    report = await site.service().run_once()
    assert (report.stored, report.protected) == (1, 1)
    assert site.partners.streams - before == 3  # share on partner-5 was not sent again
    assert len(site.partners.held()) == 4
    assert await decode_all(site, k=2) == sent


async def test_below_happy_waits_then_completes_when_partners_return(site: Site) -> None:
    site.partners.down = {f"partner-{i}" for i in range(4)}  # 2 of 6 up, happy is 3
    sent = await site.receive(3)
    service = site.service()
    report = await service.run_once()
    assert (report.encoded, report.waiting, report.protected) == (1, 1, 0)
    assert await site.catalog.study_state("1.2.3.1") is StudyState.QUEUED
    placed_before = len(site.partners.held())
    assert placed_before == 2
    site.partners.down = set()
    report = await service.run_once()
    assert (report.stored, report.protected) == (1, 1)
    assert len(site.partners.held()) == 4  # the two placed earlier were not sent again
    assert await decode_all(site, k=2) == sent


async def test_degraded_when_only_happy_sites_take_shares(site: Site) -> None:
    site.partners.down = {f"partner-{i}" for i in range(3)}  # 3 of 6 up; n 4, happy 3
    await site.receive(2)
    report = await site.service().run_once()
    assert (report.degraded, report.protected) == (1, 1)
    counts = await site.catalog.read(ledger.protection_counts)
    assert (counts.degraded, counts.protected, counts.unprotected) == (1, 0, 0)


async def test_a_restart_after_encoding_uploads_the_same_fragments(site: Site) -> None:
    sent = await site.receive(4)
    site.partners.down = set(site.partners.sites)  # everything down: encoded, nothing placed
    await site.service().run_once()
    [row] = await site.catalog.read(ledger.encoded_bundles)
    shutil.rmtree(site.work)  # the work files are lost too: encoded again, same set hash
    site.partners.down = set()
    report = await site.service().run_once()  # a new service object: a restarted node
    assert (report.stored, report.protected) == (1, 1)
    [again] = await site.catalog.read(
        lambda db: [ledger.bundle(db, r[0]) for r in db.execute("SELECT id FROM bundles")]
    )
    assert again.set_hash == row.set_hash
    assert await decode_all(site, k=2) == sent


async def test_a_changed_instance_file_is_never_placed(site: Site) -> None:
    await site.receive(2)
    victim = next(site.store.instances_dir.rglob("*.dcm"))
    victim.chmod(0o600)
    victim.write_bytes(b"tampered")
    report = await site.service().run_once()
    assert (report.encoded, report.failed, report.protected) == (0, 1, 0)
    assert site.partners.puts == 0
    assert site.partners.held() == {}  # streams were started, but no partner kept a byte
    assert not list(site.partners.root.rglob("*.part"))


async def test_a_late_instance_is_backed_up_in_a_second_bundle(site: Site) -> None:
    first = await site.receive(2)
    service = site.service()
    await service.run_once()
    late = await site.receive(1, start=50)
    report = await service.run_once()
    assert (report.planned, report.stored, report.protected) == (1, 1, 1)
    assert await decode_all(site, k=2) == first | late


async def test_a_large_study_is_cut_into_several_bundles(site: Site) -> None:
    sent = await site.receive(6, size=3000)
    report = await site.service(cap=7000).run_once()
    assert report.planned == 3 and report.protected == 1
    assert await decode_all(site, k=2) == sent


async def test_retention_removes_local_copies_only_once_stored_at_n(site: Site) -> None:
    sent = await site.receive(3)
    service = BackupService(
        site_id="owner",
        keys=site.keys,
        catalog=site.catalog,
        instance_path=site.store.path_for,
        partners=site.partners,
        settings=BackupSettings(
            plan=BundlePlan(k=2, n=4, segment_size=4096, max_bundle_bytes=10**6),
            happy=3,
            stable_seconds=60,
            keep_local_seconds=3600,
        ),
        work_dir=site.work,
        clock=site.clock,
    )
    site.partners.down = {"partner-0", "partner-1", "partner-2"}  # degraded: 3 of 4
    report = await service.run_once()
    assert (report.degraded, report.pruned) == (1, 0)
    site.clock.advance(7200)
    assert (await service.run_once()).pruned == 0  # degraded: the local copy still counts
    assert len(list(site.store.instances_dir.rglob("*.dcm"))) == 3

    site.partners.down = set()
    rows = await site.catalog.read(lambda db: [r[0] for r in db.execute("SELECT id FROM bundles")])
    await site.catalog.write(
        lambda db: db.execute("UPDATE bundles SET state = 'encoded' WHERE id = ?", (rows[0],))
    )
    await service.run_once()  # tops up to n: stored
    assert (await service.run_once()).pruned == 0  # stored just now: kept for an hour
    site.clock.advance(3601)
    assert (await service.run_once()).pruned == 3
    assert list(site.store.instances_dir.rglob("*.dcm")) == []
    assert await decode_all(site, k=2) == sent  # the mesh still has every byte
    # The rows stay, marked, and are not mistaken for files lost in a crash.
    assert await site.catalog.latest_instances(10) == []
    assert (await site.catalog.counts())["instances"] == 3


async def test_unparsed_instances_are_backed_up_in_bundles_of_their_own(site: Site) -> None:
    data = b"not DICOM at all, kept byte for byte" * 50
    site.store.write(data)
    await site.catalog.add_instances(
        [make_record("1.2.3.9.1", data=data, placed=False, parse_error="no header")]
    )
    site.clock.advance(61)
    published: list[int] = []

    class Publisher:
        async def study_protected(self, study_ref: int) -> None:
            raise AssertionError("no study here")

        async def unplaced_protected(self, bundle_ref: int) -> None:
            published.append(bundle_ref)

    service = site.service()
    service._publisher = Publisher()
    report = await service.run_once()
    assert (report.planned, report.stored, report.protected) == (1, 1, 0)
    assert len(published) == 1
    assert await decode_all(site, k=2) == {"1.2.3.9.1": data}
    assert (await service.run_once()).planned == 0  # bundled once only


async def audit_sets(site: Site) -> dict[tuple[int, int], tuple[ExpectedAnswer, ...]]:
    rows = await site.catalog.read(
        lambda db: db.execute("SELECT bundle_ref, share, challenges FROM audit_sets").fetchall()
    )
    return {(int(b), int(s)): parse_challenge_set(bytes(blob)) for b, s, blob in rows}


async def test_each_share_gets_challenges_answered_from_the_bytes_its_holder_stores(
    site: Site,
) -> None:
    await site.receive(3, size=20_000)
    await site.service().run_once()
    sets = await audit_sets(site)
    [bundle_ref] = {b for b, _ in sets}
    assert sorted(s for _, s in sets) == [0, 1, 2, 3]  # all n shares
    placed = await site.catalog.read(lambda db: ledger.placements(db, bundle_ref))
    assert len(placed) == 4
    for placement in placed:
        stored = (site.partners.root / placement.holder_site / placement.fragment_id).read_bytes()
        expected = sets[(bundle_ref, placement.share)]
        assert len(expected) == DEFAULT_CHALLENGES
        for item in expected:
            c = item.challenge
            assert c.end <= len(stored)
            assert answer(c.nonce, c.offset, stored[c.offset : c.end]) == item.answer
        # Kept in a random order, so spending them in turn says nothing of what comes next.
        offsets = [item.challenge.offset for item in expected]
        assert offsets != sorted(offsets)
    nonces = [item.challenge.nonce for chosen in sets.values() for item in chosen]
    assert len(set(nonces)) == len(nonces)


async def test_shares_encoded_again_from_files_get_challenges_too(site: Site) -> None:
    await site.receive(2)
    site.partners.down = set(site.partners.sites)
    await site.service().run_once()  # encoded, nothing placed: challenges from the stream
    first = await audit_sets(site)
    shutil.rmtree(site.work)
    site.partners.down = set()
    await site.service().run_once()  # encoded again into files: the first sets are kept
    assert await audit_sets(site) == first and len(first) == 4


async def test_a_peer_that_failed_its_audits_gets_no_new_shares(site: Site) -> None:
    shunned = "partner-1"

    def failed_twice(db: sqlite3.Connection) -> None:
        for _ in range(2):
            health.record_audit(db, _target(shunned), Outcome.FAILED, site.clock())

    await site.catalog.write(failed_twice)
    sent = await site.receive(3)
    report = await site.service().run_once()
    assert report.stored == 1
    assert shunned not in site.partners.held() and len(site.partners.held()) == 4
    assert await decode_all(site, k=2) == sent


def _target(site_id: str) -> health.AuditTarget:
    challenge = Challenge(bytes(32), 0, 1)
    return health.AuditTarget(0, 0, site_id, "0" * 64, ExpectedAnswer(challenge, bytes(32)), 0)
