"""What a PACS gets wrong: an instance sent twice, a changed instance under the same SOP
Instance UID, malformed DICOM in the middle of a normal stream.

The node's designed answers (``docs/conformance.md`` 2.3, ``meshpacs/dicom/ingest.py``):
the same bytes again are Success and nothing new; the same UID with other bytes is Success
and both versions are kept (never overwritten) and flagged; an invalid UID in the request
is 0xC000 and an instance over ``max_instance_bytes`` 0xA700, nothing kept; a dataset the
catalog cannot read (or that lacks a valid Study UID) is kept with Success and flagged.
Whatever was acknowledged must come back from the mesh, exactly: so a restore holds each
instance once, both versions of the changed one, and the unreadable ones too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import random
import sqlite3
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from meshpacs.dicom.ingest import STATUS
from meshpacs.dicom.part10 import dataset_offset
from meshpacs.dicom.scu import Outgoing, Target, echo, send_instances
from meshpacs.testing.synth import SynthInstance
from tests.dicom.conftest import AE_TITLE, running_node
from tests.dicom.test_bad_input import CT, EXPLICIT, part10
from tests.mesh.conftest import Federation, FederationFactory, RunningSite
from tests.mesh.helpers import eventually, files_containing, phi_strings, push, study, study_states

from .helpers import held_records, lose_owner, outgoing, recover, send, target, wait_backed_up
from .oracle import Manifest, assert_no_phi_on_untrusted, assert_restored, digest


async def recover_exactly(
    fed: Federation, owner: RunningSite, manifest: Manifest, tmp: Path
) -> None:
    kept = await lose_owner(fed, owner, tmp)
    report, restored = await recover(kept, tmp)
    assert report.exit_code == 0, report.summary()
    assert_restored(manifest, restored)


async def test_the_same_instances_pushed_again_are_restored_once(
    federation: FederationFactory, tmp_path: Path
) -> None:
    fed = await federation(5, k=2, n=3)
    owner = fed.site("site-a")
    instances = study(seed=1001)
    uid = instances[0].study_instance_uid
    await push(owner, instances, tmp_path / "pacs")
    await push(owner, instances, tmp_path / "pacs-again")  # at once: the study still arriving
    await wait_backed_up(fed, owner, {uid}, records=1)
    await push(owner, instances, tmp_path / "pacs-third")  # and once it is protected
    assert study_states(owner)[uid] == "protected", "the same bytes again changed the study"
    manifest = Manifest.of_instances(instances * 3)  # acknowledged three times each
    assert len(manifest) == len(instances)

    await recover_exactly(fed, owner, manifest, tmp_path)
    assert_no_phi_on_untrusted(fed, owner, phi_strings(instances))


def changed(instance: SynthInstance) -> SynthInstance:
    """The same SOP Instance UID, one pixel byte different (a PACS that edited it)."""
    data = bytearray(instance.data)
    data[-1] ^= 0xFF
    return dataclasses.replace(instance, data=bytes(data))


async def test_the_same_uid_with_other_bytes_restores_both_versions_acknowledged(
    federation: FederationFactory, tmp_path: Path
) -> None:
    fed = await federation(5, k=2, n=3)
    owner = fed.site("site-a")
    instances = study(seed=1002)
    uid = instances[0].study_instance_uid
    await push(owner, instances, tmp_path / "pacs")
    await wait_backed_up(fed, owner, {uid}, records=1)
    before = held_records(fed, owner)
    edited = changed(instances[2])
    await push(owner, [edited], tmp_path / "pacs-edited")  # Success: both versions kept
    with sqlite3.connect(f"file:{owner.data_dir / 'catalog.sqlite'}?mode=ro", uri=True) as db:
        flagged = db.execute(
            "SELECT count(*), sum(conflict) FROM instances WHERE sop_instance_uid = ?",
            (edited.sop_instance_uid,),
        ).fetchone()
    assert tuple(flagged) == (2, 2), "both versions kept and flagged"
    # The study takes the new version into a bundle of its own and is protected again.
    await wait_backed_up(fed, owner, {uid}, records=1, changed_since=before)
    manifest = Manifest.of_instances([*instances, edited])
    assert manifest.digests[edited.sop_instance_uid] == {
        digest(instances[2].data),
        digest(edited.data),
    }

    await recover_exactly(fed, owner, manifest, tmp_path)
    assert_no_phi_on_untrusted(fed, owner, phi_strings(instances))


# -- malformed DICOM mixed into a normal stream ----------------------------------------------

CAP = 1024 * 1024  # the owner's max_instance_bytes for this test (the config's minimum)
INVALID_UIDS = {
    "path": "1.2.826.0.1.3680043.8.498/../../etc/passwd",
    "letters": "1.2.826.0.1.3680043.8.498.abc",
    "NUL inside": "1.2.826.0.1.3680043.8.498\x00.1",
}
UNREADABLE_SEQUENCE = (  # (0008,1115) SQ of undefined length whose first item tag is junk
    b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\x01\x02\x03\x04\x10\x00\x00\x00" + b"j" * 16
)


def variant(instance: SynthInstance, sop_uid: str, **values: str | None) -> bytes:
    """The instance under another SOP Instance UID, with ``values`` set (None: removed)."""
    ds = pydicom.dcmread(io.BytesIO(instance.data))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    for keyword, value in values.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def malformed(workdir: Path, good: SynthInstance, rng: random.Random) -> dict[str, Outgoing]:
    """The bad-input list's C-STORE cases (issue 3), as files: name -> what to send."""
    workdir.mkdir(parents=True)
    made: dict[str, Outgoing] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom warns of the invalid UIDs
        for name, uid in INVALID_UIDS.items():
            path = part10(workdir / f"uid-{len(made)}.dcm", uid)
            made[f"invalid UID ({name})"] = Outgoing(path, CT, uid, EXPLICIT)
        seed = str(rng.random())
        big_uid = generate_uid(entropy_srcs=[seed, "big"])
        big = part10(workdir / "big.dcm", big_uid, pixels=CAP + 200_000)
        made["over the size cap"] = Outgoing(big, CT, big_uid, EXPLICIT)
        # Kept by design, flagged: they are the PACS's data even if the catalog cannot
        # place them.
        unread_uid = generate_uid(entropy_srcs=[seed, "unreadable"])
        unread = part10(workdir / "unreadable.dcm", unread_uid)
        data = unread.read_bytes()
        unread.write_bytes(data[: dataset_offset(data)] + UNREADABLE_SEQUENCE)
        made["unreadable dataset"] = Outgoing(unread, CT, unread_uid, EXPLICIT)
        for name, value in (("no Study UID", None), ("Study UID with a path", "1.2.3/../x")):
            uid = generate_uid(entropy_srcs=[seed, name])
            path = workdir / f"flagged-{len(made)}.dcm"
            path.write_bytes(variant(good, uid, StudyInstanceUID=value))
            made[name] = Outgoing(path, good.sop_class_uid, uid, good.transfer_syntax_uid)
    return made


EXPECTED = {
    **{f"invalid UID ({name})": STATUS.CANNOT_UNDERSTAND for name in INVALID_UIDS},
    "over the size cap": STATUS.OUT_OF_RESOURCES,
    "unreadable dataset": STATUS.SUCCESS,
    "no Study UID": STATUS.SUCCESS,
    "Study UID with a path": STATUS.SUCCESS,
}


def unparsed_backed_up(site: RunningSite) -> int | None:
    """How many bundles of unparsed instances are stored, once every unparsed instance is
    in one; None before."""
    with sqlite3.connect(f"file:{site.data_dir / 'catalog.sqlite'}?mode=ro", uri=True) as db:
        waiting = db.execute(
            "SELECT count(*) FROM instances i WHERE i.series_ref IS NULL AND NOT EXISTS"
            " (SELECT 1 FROM bundle_members m JOIN bundles b ON b.id = m.bundle_ref"
            "  WHERE m.instance_ref = i.id AND b.state IN ('stored', 'degraded'))"
        ).fetchone()[0]
        stored = db.execute(
            "SELECT count(*) FROM bundles WHERE study_ref IS NULL"
            " AND state IN ('stored', 'degraded')"
        ).fetchone()[0]
    return None if waiting else int(stored)


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom.valuerep")  # invalid UIDs, on purpose
async def test_malformed_dicom_in_a_stream_is_refused_and_every_acknowledged_one_restored(
    federation: FederationFactory, fault_rng: random.Random, tmp_path: Path
) -> None:
    fed = await federation(5, k=2, n=3)
    owner = fed.site("site-a")
    await owner.halt()  # the owner again, with a size cap an instance can be sent over
    owner.config = dataclasses.replace(
        owner.config, dicom=dataclasses.replace(owner.config.dicom, max_instance_bytes=CAP)
    )
    await owner.start()

    good = study(seed=1003) + study(seed=1004, patient=1)
    items = outgoing(good, tmp_path / "pacs")
    bad = malformed(tmp_path / "bad", good[0], fault_rng)
    stream: list[tuple[str, Outgoing]] = [("good", item) for item in items]
    for name, item in bad.items():
        stream.insert(fault_rng.randrange(len(stream) + 1), (name, item))
    print("stream:", [name for name, _ in stream])

    deliveries = await send(owner, [item for _, item in stream])  # one association
    answered = {name: d.status for (name, _), d in zip(stream, deliveries, strict=True)}
    good_answers = {d.status for (n, _), d in zip(stream, deliveries, strict=True) if n == "good"}
    assert good_answers == {STATUS.SUCCESS}
    assert {n: s for n, s in answered.items() if n != "good"} == EXPECTED, deliveries
    assert await asyncio.to_thread(echo, target(owner)), "the node stopped answering"
    # Nothing of a refused instance was kept (every one made by part10: PatientID BAD-INPUT,
    # but for the unreadable one, which has no patient).
    assert files_containing(owner.data_dir / "instances", {b"BAD-INPUT"}) == {}
    assert [p for p in (owner.data_dir / "tmp").rglob("*") if p.is_file()] == []

    manifest = Manifest()
    studies = {i.sop_instance_uid: i.study_instance_uid for i in good}
    acknowledged = manifest.add_acknowledged(deliveries, studies)
    assert acknowledged == len(good) + 3
    await wait_protected_and_unparsed(fed, owner, {i.study_instance_uid for i in good})

    await recover_exactly(fed, owner, manifest, tmp_path)
    needles = phi_strings(good) | {uid.encode() for uid in manifest.digests}
    assert_no_phi_on_untrusted(fed, owner, needles)


async def wait_protected_and_unparsed(
    fed: Federation, owner: RunningSite, study_uids: set[str]
) -> None:
    """The studies protected, the unparsed instances in stored bundles, every record of
    both on the trusted peers."""
    await eventually(lambda: unparsed_backed_up(owner) is not None, 60, "unparsed backed up")
    unplaced = unparsed_backed_up(owner)
    assert unplaced
    await wait_backed_up(fed, owner, study_uids, records=len(study_uids) + unplaced)


OVER_LONG_UID = "1." + "2" * 70  # 72 characters; UIDs have at most 64


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom.valuerep")
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "pynetdicom"])
async def test_an_over_long_sop_instance_uid_is_refused_and_never_acknowledged(
    direct: bool, tmp_path: Path
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        path = part10(tmp_path / "long.dcm", OVER_LONG_UID)
    async with running_node(tmp_path / "node", direct_storage=direct) as node:
        to = Target(AE_TITLE, "127.0.0.1", node.port, "TESTPACS")
        item = Outgoing(path, CT, OVER_LONG_UID, EXPLICIT)
        [delivery] = await asyncio.to_thread(
            send_instances, [item], to, max_retries=0, dimse_timeout=3, network_timeout=3
        )
        assert list(node.store.instances_dir.rglob("*.dcm")) == []  # refused, nothing kept
    if direct:
        # Our receiver leaves the invalid UID out of its refusal, so the SCU can read it.
        assert delivery.status == STATUS.CANNOT_UNDERSTAND, delivery.detail
    else:
        # pynetdicom cannot decode such a request at all and drops the association:
        # the SCU learns of a failure (no status), never of a success.
        assert delivery.status is None and not delivery.ok, delivery
