"""The disaster drill: its comparisons and choices on their own, and the whole drill on a
real federation with a real Orthanc per site (the short form; MESHPACS_FULL=1 runs the
issue's 20 studies).

The federation is started through the library, as ``meshpacs testbed up --with-orthanc``
does; the drill itself runs ``meshpacs recover`` as a subprocess, as an operator would.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meshpacs.cli import app
from meshpacs.dicom.part10 import dataset_offset
from meshpacs.errors import ConfigError
from meshpacs.testbed import create_testbed, load_testbed
from meshpacs.testbed.drill import (
    DRILL_MIX,
    SMALL_MIX,
    BundleNote,
    HeldInstance,
    choose_stopped,
    compare,
    held_instance,
    lost_bundles,
    pick_sample_files,
    pydicom_test_files,
    run_drill,
)
from meshpacs.testbed.orthanc import orthanc_rest, start_orthancs
from meshpacs.testbed.processes import (
    StoppedProcesses,
    is_our_orthanc,
    is_our_process,
    start_nodes,
    stop_testbed,
)
from meshpacs.testing.dcmtk import dcmtk_tool
from meshpacs.testing.orthanc import orthanc_available
from meshpacs.testing.synth import SeriesSpec, StudySpec, generate_study

FULL = os.environ.get("MESHPACS_FULL") == "1"


def held(syntax: str = "1.2.840.10008.1.2.1", data: bytes = b"x") -> HeldInstance:
    return HeldInstance("1.2.3", syntax, len(data), hashlib.sha256(data).digest())


# -- comparing what a PACS holds ---------------------------------------------------------


def test_compare_names_missing_extra_and_different_instances() -> None:
    before = {"a": held(), "b": held(), "c": held(), "d": held()}
    after = {
        "a": held(),
        "c": held(syntax="1.2.840.10008.1.2"),  # same bytes, other syntax
        "d": held(data=b"y"),  # same syntax, other bytes
        "e": held(),
    }
    found = compare(before, after)
    assert (found.missing, found.extra, found.different) == ({"b"}, {"e"}, {"c", "d"})
    assert found.mismatches == 4 and not found.exact
    assert compare(before, dict(before)).exact


def test_a_held_instance_is_keyed_by_its_uid_and_hashes_the_dataset_only() -> None:
    instance = next(iter(generate_study(3, StudySpec((SeriesSpec("MR", 1, 16, 16),), "rle"))))
    uid, got = held_instance(instance.data)
    assert uid == instance.sop_instance_uid
    assert got.study_uid == instance.study_instance_uid
    assert got.transfer_syntax == "1.2.840.10008.1.2.5"
    dataset = instance.data[dataset_offset(instance.data) :]
    assert got.dataset_sha256 == hashlib.sha256(dataset).digest()
    assert got.size == len(instance.data)


# -- which sites to stop, and what must be lost then -------------------------------------


def note(bundle: str, *holders: str, k: int = 2) -> BundleNote:
    return BundleNote(bundle, k, tuple(enumerate(holders)), frozenset({f"sop-{bundle}"}))


NOTES = [
    note("b1", "site-b", "site-c", "site-d"),
    note("b2", "site-c", "site-d", "site-e"),
    note("b3", "site-b", "site-d", "site-e"),
]


def test_lost_bundles_are_those_with_fewer_than_k_shares_up() -> None:
    assert lost_bundles(NOTES, ["site-d"]) == set()
    assert lost_bundles(NOTES, ["site-d", "site-e"]) == {"b2", "b3"}
    assert lost_bundles(NOTES, ["site-b", "site-c"]) == {"b1"}
    # two copies of one share on two sites count once
    twice = BundleNote("b4", 2, ((0, "site-b"), (0, "site-c"), (1, "site-d")), frozenset())
    assert lost_bundles([twice], ["site-d"]) == {"b4"}


@pytest.mark.parametrize("seed", range(6))
def test_stopped_sites_hold_one_bundle_and_spare_a_trusted_peer(seed: int) -> None:
    trusted = ["site-b", "site-c"]
    chosen = choose_stopped(NOTES, trusted, n=3, k=2, seed=seed)
    assert len(chosen) == 2 and any(peer not in chosen for peer in trusted)
    assert any(set(chosen) <= {site for _, site in n.holders} for n in NOTES)
    assert lost_bundles(NOTES, chosen) and not lost_bundles(NOTES, chosen[:1])
    assert chosen[0] not in trusted  # the untrusted holder goes first


@pytest.mark.parametrize("seed", range(4))
def test_the_stopped_sites_lose_as_few_bundles_as_they_can(seed: int) -> None:
    notes = [
        note("x1", "site-d", "site-e", "site-f"),
        note("x2", "site-d", "site-e", "site-g"),
        note("x3", "site-d", "site-e", "site-h"),
        note("y", "site-d", "site-f", "site-g"),
    ]
    chosen = choose_stopped(notes, ["site-b"], n=3, k=2, seed=seed)
    assert chosen == ["site-d", "site-f"]  # [d, e] would lose 3 bundles, this loses 2
    assert lost_bundles(notes, chosen) == {"x1", "y"}


def test_no_bundle_to_stop_is_a_clear_error() -> None:
    # stopping 2 holders of the one bundle would stop site A's only trusted peer
    notes = [note("b1", "site-b", "site-c")]
    with pytest.raises(ConfigError, match="trusted peers"):
        choose_stopped(notes, ["site-b"], n=3, k=2, seed=1)


# -- pydicom's test files ----------------------------------------------------------------


def test_sample_files_are_distinct_objects_with_many_syntaxes_first() -> None:
    paths = pydicom_test_files()
    fit, unfit = pick_sample_files(paths, seed=4)
    assert len(fit) + len(unfit) == len(paths) and len(fit) >= 6
    assert len({s.sop_uid for s in fit}) == len(fit)
    assert len({s.study_uid for s in fit}) == len(fit)
    assert "deflated" in unfit["image_dfl.dcm"]
    assert unfit["no_meta.dcm"].startswith("unreadable")
    syntaxes = [s.transfer_syntax for s in fit]
    distinct = len(set(syntaxes))
    assert len(set(syntaxes[:distinct])) == distinct  # one of each syntax before repeats
    assert [s.path for s in pick_sample_files(paths, seed=4)[0]] == [s.path for s in fit]


# -- refusals ----------------------------------------------------------------------------


def test_push_names_a_missing_site_and_a_pacs_that_does_not_answer(tmp_path: Path) -> None:
    create_testbed(tmp_path / "tb", 4, k=2, n=3)  # laid out, nothing started
    runner = CliRunner()
    wrong = runner.invoke(app, ["testbed", "push", "--root", str(tmp_path / "tb"), "--site", "x"])
    assert wrong.exit_code == 2 and "has no site 'x'" in wrong.stderr
    if dcmtk_tool("storescu") is None:
        pytest.skip("dcmtk's storescu is not installed")
    down = runner.invoke(app, ["testbed", "push", "--root", str(tmp_path / "tb"), "--studies", "1"])
    assert down.exit_code == 2 and "storescu failed to push" in down.stderr


def test_a_testbed_without_orthanc_is_refused_before_anything_happens(tmp_path: Path) -> None:
    plan = create_testbed(tmp_path / "tb", 4, k=2, n=3)
    with pytest.raises(ConfigError, match="--with-orthanc"):
        run_drill(plan, studies=1)
    result = CliRunner().invoke(app, ["testbed", "drill", "--root", str(tmp_path / "tb")])
    assert result.exit_code == 2
    assert "without --with-orthanc" in result.stderr
    assert Path(plan.sites[0].data_dir).is_dir()  # nothing was destroyed


# -- the whole drill ---------------------------------------------------------------------

needs_tools = pytest.mark.skipif(
    not orthanc_available() or dcmtk_tool("storescu") is None,
    reason="Orthanc (/usr/sbin/Orthanc) or dcmtk's storescu not installed",
)


@pytest.fixture
def testbed(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "testbed"
    plan = create_testbed(root, 5, k=2, n=3, stable_seconds=1.0, pass_interval=0.5)
    try:
        start_nodes(plan)
        start_orthancs(plan, stable_age=1)
        yield root
    finally:
        stop_testbed(load_testbed(root), grace=10.0)


@pytest.mark.slow
@needs_tools
def test_the_disaster_drill_recovers_site_a_exactly_and_names_what_is_lost(
    testbed: Path,
) -> None:
    studies, samples = (20, 6) if FULL else (4, 2)
    plan = load_testbed(testbed)
    owner = plan.sites[0]
    for site in plan.sites:  # what the drill runs `meshpacs recover` with
        assert not any(
            Path(str(v)).is_relative_to(site.data_dir)
            for value in site.recover_args.values()
            for v in (value if isinstance(value, list) else [value])
        )
    # A study pushed before the drill, as the README's walk-through does: recovered too.
    pushed = CliRunner().invoke(
        app, ["testbed", "push", "--root", str(testbed), "--studies", "1", "--seed", "99", "--json"]
    )
    assert pushed.exit_code == 0, pushed.output
    early = json.loads(pushed.stdout)
    assert early["site"] == owner.site_id and early["target"].startswith("Orthanc ")
    assert (early["studies"], early["seed"]) == (1, 99) and early["instances"] > 0
    assert early["dashboard_url"] == owner.dashboard_url
    messages: list[str] = []
    report = run_drill(
        plan,
        studies=studies,
        pydicom_files=samples,
        seed=7,
        mix=DRILL_MIX if FULL else SMALL_MIX,
        timeout=120.0,
        say=messages.append,
    )
    assert report.ok, json.dumps(report.to_json()["steps"], indent=1)
    assert [s.step for s in report.steps] == [2, 3, 4, 5, 6, 7, 8]
    assert report.generated_studies == studies and len(report.pydicom_files) == samples
    assert report.studies == studies + samples + 1
    assert report.instances > studies and report.bytes > 0
    assert "1.2.840.10008.1.2.5" in report.transfer_syntaxes  # some RLE came back as RLE
    assert report.mismatches == 0
    assert report.seconds_to_protect > 0 and report.seconds_to_recover > 0
    assert len(report.stopped_in_step_6) == 1 and len(report.stopped_in_step_7) == 2
    assert report.lost_bundles and 0 < report.lost_instances <= report.instances

    after = load_testbed(testbed)
    assert not Path(owner.data_dir).exists()  # site A's node is gone for good
    assert after.sites[0].pid is None
    assert all(is_our_process(site) for site in after.sites[1:])  # the others run again
    assert is_our_orthanc(after.sites[0])
    assert len(json.loads(orthanc_rest(after.sites[0], "GET", "/instances"))) == report.instances
    reports = sorted(p.name for p in (testbed / "drill").glob("recover-*.json"))
    assert reports == ["recover-5.json", "recover-6.json", "recover-7.json", "recover-8.json"]
    assert not any("SYNTH^" in m or "1.2.826.0.1.3680043.8.498." in m for m in messages)

    # The recoveries were shown on the dashboard of site A's first trusted peer; the last
    # one (step 8, the rerun) finished complete.
    shown = json.loads(
        (Path(after.site(owner.trusted[0]).data_dir) / "state" / "recovery.json").read_text()
    )
    assert (shown["site_id"], shown["phase"], shown["outcome"]) == (
        owner.site_id,
        "finished",
        "complete",
    )

    stopped = stop_testbed(after, grace=15.0)
    ids = [site.site_id for site in after.sites]
    assert stopped == StoppedProcesses(nodes=ids[1:], orthancs=ids)
