"""The C-FIND SCU recovery asks "do you hold these?" with: a real Orthanc, a C-STORE-only
dcmtk storescp, and a port nobody listens on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshpacs.dicom.find_scu import HeldInstances, find_held_instances
from meshpacs.dicom.scu import Outgoing, Target, send_instances
from meshpacs.errors import LimitExceeded
from meshpacs.testing.loopback import free_port
from meshpacs.testing.synth import SeriesSpec, StudySpec

from .counting import CountingOrthanc, needs_orthanc
from .test_deliver import Storescp, needs_dcmtk, restored_study

SPEC = StudySpec(series=(SeriesSpec("CT", 9, 16, 16),))


def store(target: Target, items: list[Outgoing]) -> None:
    assert all(d.ok for d in send_instances(items, target))


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CountingOrthanc]:
    """One Orthanc for the module (it takes seconds to stop); each test its own seed."""
    with CountingOrthanc(tmp_path_factory.mktemp("orthanc")) as running:
        yield running


@needs_orthanc
async def test_orthanc_says_which_it_holds_in_bounded_queries(
    tmp_path: Path, orthanc: CountingOrthanc
) -> None:
    _, first = restored_study(tmp_path, spec=SPEC, seed=31, number=0)
    _, second = restored_study(tmp_path, spec=SPEC, seed=31, number=1)
    outgoing = [
        Outgoing(r.path, r.instance.sop_class_uid, r.instance.sop_instance_uid,
                 r.instance.transfer_syntax_uid)
        for r in first + second
    ]  # fmt: skip
    target = orthanc.target()
    await asyncio.to_thread(store, target, outgoing[:4] + outgoing[9:11])
    wanted = {
        first[0].study_uid: [r.instance.sop_instance_uid for r in first],
        # an unknown study: universal match on StudyInstanceUID
        "": [r.instance.sop_instance_uid for r in second],
    }
    answer = await asyncio.to_thread(find_held_instances, target, wanted, per_query=2)
    uids = [r.instance.sop_instance_uid for r in first + second]
    assert answer.held == {*uids[:4], *uids[9:11]}
    assert answer.absent == set(uids) - answer.held
    assert answer.detail == "" and answer.unknown(uids) == []


@needs_orthanc
async def test_a_malformed_uid_is_never_put_in_a_query_and_stays_unknown(
    tmp_path: Path, orthanc: CountingOrthanc
) -> None:
    _, items = restored_study(tmp_path, spec=SPEC, seed=32)
    good = items[0].instance.sop_instance_uid
    wanted = {items[0].study_uid: [good, "1.2.3\\1.2.4", "x" * 65]}
    answer = await asyncio.to_thread(find_held_instances, orthanc.target(), wanted)
    assert answer.absent == {good} and not answer.held
    assert answer.unknown(wanted[items[0].study_uid]) == ["1.2.3\\1.2.4", "x" * 65]
    assert answer.detail == "2 UID(s) not well-formed, not asked"


@needs_orthanc
async def test_an_orthanc_that_refuses_c_find_gives_no_answer_but_a_reason(tmp_path: Path) -> None:
    _, items = restored_study(tmp_path, spec=SPEC)
    uids = [r.instance.sop_instance_uid for r in items]
    with CountingOrthanc(tmp_path / "orthanc", allow_find=False) as orthanc:
        # Orthanc aborts the association of an AE it does not know when it asks C-FIND.
        answer = await asyncio.to_thread(
            find_held_instances, orthanc.target(), {items[0].study_uid: uids}, timeout=5
        )
    assert not answer.held and not answer.absent and not answer.unreachable
    assert answer.unknown(uids) == uids
    assert "association was lost" in answer.detail


@needs_dcmtk
async def test_a_store_only_pacs_and_a_closed_port_give_reasons(tmp_path: Path) -> None:
    _, items = restored_study(tmp_path, spec=SPEC)
    uids = [r.instance.sop_instance_uid for r in items]
    scp = Storescp(tmp_path / "received")
    scp.start()
    try:
        answer = await asyncio.to_thread(find_held_instances, scp.target, {"": uids}, timeout=5)
    finally:
        scp.kill()
    assert answer == HeldInstances(detail=answer.detail)
    assert answer.detail.endswith("accepts no Study Root C-FIND")

    nobody = Target("NOBODY", "127.0.0.1", free_port(), "MESHRECOVER")
    answer = await asyncio.to_thread(find_held_instances, nobody, {"": uids}, timeout=5)
    assert answer.unreachable and answer.unknown(uids) == uids
    assert "no association with NOBODY" in answer.detail


def test_the_question_is_bounded() -> None:
    target = Target("PACS", "127.0.0.1", 104, "MESHRECOVER")
    with pytest.raises(LimitExceeded, match="at most 100000"):
        find_held_instances(target, {"": [f"1.2.{n}" for n in range(100_001)]})
    with pytest.raises(ValueError, match="per_query"):
        find_held_instances(target, {"": ["1.2"]}, per_query=201)
    assert find_held_instances(target, {}) == HeldInstances()  # nothing asked, no association
