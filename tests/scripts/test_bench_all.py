"""scripts/bench_all.py without running a benchmark: plans, results, the summary and figures.

The script results are fixtures in the shape each bench_*.py prints with --json (the keys
bench_all reads); the runs are made by a fake runner, except run_measured, which runs a
small real subprocess to check the memory it reports.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_all.py"
_spec = importlib.util.spec_from_file_location("bench_all", SCRIPT)
assert _spec is not None and _spec.loader is not None
bench_all = importlib.util.module_from_spec(_spec)
sys.modules["bench_all"] = bench_all  # dataclasses look their module up by name
_spec.loader.exec_module(bench_all)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HAND_WRITTEN = textwrap.dedent(
    """\
    # Benchmarks

    Figures here come from the scripts under `scripts/`.

    ## Bundle codec vs raw zfec + AES-256-GCM (issue 2)

    | | run 1 |
    |---|---|
    | codec | 470 MB/s |

    ## The catalog at scale (issue 8)

    Hand-written analysis, kept as it is.
    """
)


def codec_json(size: int, speed: float) -> dict[str, Any]:
    best = {
        "codec_encode": speed,
        "raw_pipeline_encode": 2 * speed,
        "codec_decode_worst": speed / 2,
        "raw_pipeline_decode_worst": speed,
    }
    return {
        "size_bytes": size,
        "mb_per_s_best": best,
        "mb_per_s_median": {k: v * 0.9 for k, v in best.items()},
        "ratio_encode": 0.5,
        "ratio_decode": 0.5,
        "target": 0.7,
    }


def ingest_json(size: int, speed: float) -> dict[str, Any]:
    rows = [
        {"receiver": r, "associations": a, "best_mb_s": speed * f * a, "median_s": 2.0 / a}
        for r, f in (("storescp", 4.0), ("orthanc", 1.0), ("meshpacs", 1.5))
        for a in (1, 4)
    ]
    ratios = {
        "1 association": {"meshpacs/orthanc best": 1.5, "meshpacs/storescp best": 0.38},
        "4 associations": {"meshpacs/orthanc best": 1.1, "meshpacs/storescp best": 0.3},
    }
    return {"results": rows, "ratios": ratios, "setup": {"bytes": size, "files": 19}}


def backup_json(size: int, speed: float, studies: int) -> dict[str, Any]:
    best = {"backup": speed, "codec": 3 * speed, "tls_copy": 2 * speed, "tls_copy_durable": speed}
    rounds = [{"bytes": size, "seconds": {"backup": size / speed / 1e6}}]
    return {
        "studies_per_round": studies,
        "rounds": rounds,
        "mb_per_s_best": best,
        "ratio": 0.5,
        "target": 0.6,
    }


def recover_json(size: int, speed: float, studies: int) -> dict[str, Any]:
    return {
        "bytes": size,
        "setup": {"studies": [{"number": i} for i in range(studies)]},
        "rounds": [{"mesh": {"seconds": size / speed / 1e6}}],
        "mesh": {"mb_per_s_best": speed, "first_study_seconds_worst": 1.7},
        "orthanc": {"mb_per_s_best": speed / 1.2},
        "ratio": 1.2,
        "ratio_target": 1.0,
        "first_study_target_seconds": 5.0,
    }


def retrieve_json(size: int, speed: float) -> dict[str, Any]:
    rows = [
        {"source": s, "operation": o, "best_mb_s": speed * f, "median_s": size / speed / f / 1e6}
        for s, f in (("orthanc", 3.0), ("meshpacs", 1.0))
        for o in ("move", "get")
    ]
    ratios = {
        "C-MOVE meshpacs/orthanc": {"best": 0.33, "median": 0.3},
        "C-GET meshpacs/orthanc": {"best": 0.34, "median": 0.31},
    }
    return {"results": rows, "ratios": ratios, "setup": {"bytes": size, "files": 19}}


def catalog_json(instances: int, smi_ms: float, full_over_empty: float) -> dict[str, Any]:
    """bench_catalog.py's --json: SMI* through pynetdicom misses 200 ms, the rest meet it."""

    def find(matches: int, ms: float) -> dict[str, float]:
        return {"matches": matches, "median_ms": ms, "worst_ms": ms * 1.2}

    def dicom(answers: int, ms: float) -> dict[str, float]:
        return {"answers": answers, "median_ms": ms, "worst_ms": ms * 1.2}

    return {
        "instances": instances,
        "catalog_bytes": instances * 232,
        "fill_per_second": 9300,
        "ingest_full_per_second": round(1300 * full_over_empty),
        "ingest_empty_per_second": 1300,
        "ingest_full_over_empty": full_over_empty,
        "find": {
            "study, PatientName=SMI*": find(1238, smi_ms),
            "study, PatientName=SMITH*": find(149, 12.0),
            "study, PatientID exact": find(1, 0.2),
            "patient, PatientName=SMI*": find(486, 3.0),
        },
        "find_through_dicom": {
            "direct": {"study, PatientName=SMI*": dicom(1238, 180.0),
                       "study, PatientID exact": dicom(1, 50.0)},
            "pynetdicom": {"study, PatientName=SMI*": dicom(1238, 1764.0),
                           "study, PatientID exact": dicom(1, 60.0)},
        },
    }  # fmt: skip


def fixture_result(plan: Any) -> dict[str, Any]:
    size = bench_all.SIZES[plan.size]
    speed = {"small": 50.0, "medium": 80.0, "large": 90.0, "huge": 95.0}[plan.size]
    if plan.stage == "codec":
        return codec_json(size.bytes, speed * 5)
    if plan.stage == "ingest":
        return ingest_json(size.bytes, speed)
    if plan.stage == "retrieve":
        return retrieve_json(size.bytes, speed)
    if plan.stage == "backup":
        return backup_json(size.bytes, speed, size.studies)
    if plan.stage == "catalog":
        return catalog_json(size.instances, 82.0, 0.75)
    return recover_json(size.bytes, speed, size.studies)


def fake_run(plan: Any) -> dict[str, Any]:
    return {
        "stage": plan.stage,
        "size": plan.size,
        "command": plan.command(),
        "exit_code": 0,
        "wall_seconds": 12.0,
        "max_rss_bytes": 100_000_000 + bench_all.SIZES[plan.size].bytes // 10,
        "peak_tree_rss_bytes": 300_000_000 + bench_all.SIZES[plan.size].bytes // 5,
        "log": f"logs/{plan.stage}-{plan.size}.log",
        "error": None,
        "result": fixture_result(plan),
        "same_as": None,
    }


def results_of(runs: list[dict[str, Any]], quick: bool = False) -> dict[str, Any]:
    sizes = list(dict.fromkeys(r["size"] for r in runs))
    return {
        "command": "scripts/bench_all --sizes " + ",".join(sizes),
        "quick": quick,
        "sizes": sizes,
        "stages": list(bench_all.STAGES),
        "started": "2026-12-07T15:00:00+00:00",
        "elapsed_seconds": 3600.0,
        "machine": {"cpus": 2, "platform": "Linux", "python": "3.11.7"},
        "runs": runs,
    }


@pytest.fixture
def all_runs() -> list[dict[str, Any]]:
    plans = bench_all.plan_runs(list(bench_all.SIZES), bench_all.STAGES, None)
    return list(bench_all.run_plans(plans, fake_run, lambda runs: None))


# -- plans ----------------------------------------------------------------------------------


def test_each_size_sets_the_data_size_of_each_script() -> None:
    plans = {
        (p.stage, p.size): p for p in bench_all.plan_runs(["small", "huge"], bench_all.STAGES, None)
    }
    assert plans["codec", "small"].args == ("--size-mib", "10", "--json")
    assert plans["ingest", "small"].args == ("--count", "19", "--json")
    assert plans["backup", "small"].args == ("--gb", "0.01", "--studies", "2", "--json")
    assert plans["retrieve", "small"].args == ("--count", "19", "--json")
    assert plans["catalog", "small"].args == ("--instances", "100000", "--json")
    assert plans["catalog", "huge"].args == ("--instances", "1000000", "--json")
    assert plans["recover", "huge"].args == ("--gb", "1", "--studies", "1", "--json")
    assert plans["recover", "huge"].command() == (
        ".venv/bin/python scripts/bench_recover.py --gb 1 --studies 1 --json"
    )


def test_rounds_reach_every_script_and_the_codec_keeps_three_repeats() -> None:
    plans = {p.stage: p for p in bench_all.plan_runs(["small"], bench_all.STAGES, 1)}
    assert plans["codec"].args[-3:] == ("--repeat", "3", "--json")
    for stage in ("ingest", "retrieve", "backup", "recover"):
        assert plans[stage].args[-3:] == ("--rounds", "1", "--json")
    # The catalog's rounds are its ingest probes; its C-FINDs keep a median of three.
    assert plans["catalog"].args[-5:] == ("--rounds", "1", "--repeat", "3", "--json")


def test_the_catalog_runs_once_at_a_million_instances_in_a_full_run() -> None:
    plans = bench_all.plan_runs(list(bench_all.SIZES), ["catalog"], None)
    runs = bench_all.run_plans(plans, fake_run, lambda r: None)
    ran = [r for r in runs if r["same_as"] is None]
    assert [(r["size"], r["result"]["instances"]) for r in ran] == [
        ("small", 100_000),
        ("medium", 1_000_000),
    ]
    assert [r["same_as"] for r in runs if r["size"] in ("large", "huge")] == ["medium"] * 2


def test_a_command_repeated_at_another_size_runs_once_and_shows_at_both() -> None:
    plans = bench_all.plan_runs(["large", "huge"], bench_all.STAGES, None)
    ran: list[tuple[str, str]] = []
    saves: list[int] = []

    def runner(plan: Any) -> dict[str, Any]:
        ran.append((plan.stage, plan.size))
        return fake_run(plan)

    runs = bench_all.run_plans(plans, runner, lambda r: saves.append(len(r)))
    for stage in ("codec", "ingest", "retrieve", "catalog"):  # one series, or 1M instances
        assert (stage, "huge") not in ran
    assert ("backup", "huge") in ran and ("recover", "huge") in ran
    codec_huge = next(r for r in runs if r["stage"] == "codec" and r["size"] == "huge")
    assert codec_huge["same_as"] == "large"
    assert saves == list(range(1, len(plans) + 1))  # saved after every run


# -- what a result says ---------------------------------------------------------------------


def test_series_put_the_stage_first_and_its_anchors_beside_it() -> None:
    backup = bench_all.series("backup", backup_json(10_000_000, 40.0, 2))
    assert list(backup)[:2] == ["backup", "plain TLS copy"] and backup["plain TLS copy"] == 80.0
    recover = bench_all.series("recover", recover_json(10_000_000, 60.0, 2))
    assert recover == {"mesh recovery": 60.0, "Orthanc C-MOVE": 50.0}
    ingest = bench_all.series("ingest", ingest_json(10_000_000, 10.0))
    assert ingest["meshpacs, 1 assoc."] == 15.0 and ingest["storescp, 4 assoc."] == 160.0
    retrieve = bench_all.series("retrieve", retrieve_json(10_000_000, 20.0))
    assert list(retrieve.items()) == [  # ours first (hatched), each beside its anchor
        ("meshpacs C-MOVE", 20.0),
        ("Orthanc C-MOVE", 60.0),
        ("meshpacs C-GET", 20.0),
        ("Orthanc C-GET", 60.0),
    ]
    assert next(iter(retrieve)).startswith(bench_all.SUBJECT["retrieve"])


def test_ratios_carry_their_targets_and_verdicts() -> None:
    (backup,) = bench_all.checks("backup", backup_json(10_000_000, 40.0, 2))
    assert (backup.value, backup.target, backup.met()) == (0.5, 0.6, False)
    assert backup.gap() == pytest.approx(0.1)
    ingest = bench_all.checks("ingest", ingest_json(10_000_000, 10.0))
    one = next(r for r in ingest if r.name == "meshpacs / Orthanc, 1 association")
    assert one.met() is True and one.target == 1.3 and one.gap() is None
    assert all(r.met() is None for r in ingest if "storescp" in r.name)
    retrieve = bench_all.checks("retrieve", retrieve_json(10_000_000, 10.0))
    assert [(r.name, r.value, r.met()) for r in retrieve] == [
        ("C-MOVE meshpacs / Orthanc", 0.33, None),  # issue 3 set no target for it
        ("C-GET meshpacs / Orthanc", 0.34, None),
    ]


def test_the_catalog_targets_are_a_ceiling_on_find_and_a_floor_on_ingest() -> None:
    checks = {c.name: c for c in bench_all.checks("catalog", catalog_json(1_000_000, 82.0, 0.75))}
    ingest = checks["ingest full / empty"]
    assert (ingest.target, ingest.met(), ingest.gap()) == (0.8, False, pytest.approx(0.05))
    inside = checks["C-FIND PatientName=SMI*, in the catalog"]
    assert (inside.target, inside.at_most, inside.met()) == (200.0, True, True)
    slow = checks["findscu PatientName=SMI*, pynetdicom path"]
    assert (slow.met(), slow.gap()) == (False, pytest.approx(1564.0))
    assert checks["findscu PatientName=SMI*, direct path"].met() is True
    # Only study-level name wildcards are the target's case: not an exact ID, not patients.
    assert not any("PatientID" in name or "patient level" in name for name in checks)
    assert bench_all._check(slow) == "1,764 ms, target ≤ 200 ms (**not met**: 1,564 ms over)"
    assert bench_all._check(ingest) == "0.75, target ≥ 0.80 (**not met**: 0.05 short)"


def test_a_catalog_below_a_million_instances_gets_no_verdict() -> None:
    checks = bench_all.checks("catalog", catalog_json(100_000, 500.0, 0.5))
    assert checks and all(c.target is None and c.met() is None for c in checks)


def test_stage_time_is_the_stage_not_the_whole_run() -> None:
    assert bench_all.stage_seconds("backup", backup_json(20_000_000, 40.0, 2)) == 0.5
    assert bench_all.stage_seconds("ingest", ingest_json(10_000_000, 10.0)) == 2.0
    codec = bench_all.stage_seconds("codec", codec_json(90_000_000, 100.0))
    assert codec == pytest.approx(1.0)
    retrieve = bench_all.stage_seconds("retrieve", retrieve_json(10_000_000, 20.0))
    assert retrieve == pytest.approx(0.5)  # the node's C-MOVE, not Orthanc's nor C-GET


# -- the summary ----------------------------------------------------------------------------


def test_the_section_goes_before_the_first_hand_written_section(
    all_runs: list[dict[str, Any]],
) -> None:
    section = bench_all.render_section(results_of(all_runs), "bench")
    text = bench_all.replace_section(HAND_WRITTEN, section)
    intro, rest = HAND_WRITTEN.split("## Bundle codec", 1)
    assert text.startswith(intro + bench_all.BEGIN)
    assert text.endswith(bench_all.END + "\n\n## Bundle codec" + rest)


def test_rewriting_the_section_is_idempotent_and_touches_nothing_else(
    all_runs: list[dict[str, Any]],
) -> None:
    first = bench_all.render_section(results_of(all_runs), "bench")
    once = bench_all.replace_section(HAND_WRITTEN, first)
    assert bench_all.replace_section(once, first) == once
    fewer = [r for r in all_runs if r["size"] == "small"]
    second = bench_all.render_section(results_of(fewer), "bench")
    assert second != first
    again = bench_all.replace_section(once, second)
    outside = once.split(bench_all.BEGIN)[0], once.split(bench_all.END)[1]
    assert (again.split(bench_all.BEGIN)[0], again.split(bench_all.END)[1]) == outside
    assert again.count(bench_all.BEGIN) == 1 and again.count(bench_all.END) == 1
    assert "| medium |" not in again and "| medium |" in once


def test_a_lone_marker_is_refused() -> None:
    with pytest.raises(ValueError, match="only one"):
        bench_all.replace_section(HAND_WRITTEN + bench_all.BEGIN + "\n", "x")


def test_every_table_and_figure_names_its_command(all_runs: list[dict[str, Any]]) -> None:
    results = results_of(all_runs)
    section = bench_all.render_section(results, "bench")
    lines = section.splitlines()
    images = [i for i, line in enumerate(lines) if line.startswith("![")]
    assert len(images) == len(bench_all.STAGES) + 1
    for i in images:
        assert lines[i + 2] == f"Figure: `{results['command']}`, from the runs above."
    for run in all_runs:
        if not run["same_as"]:
            assert f"`{run['command']}`" in section
    assert section.count("Commands (each a run") == len(bench_all.DATA_STAGES)
    assert "- medium, large, huge: `.venv/bin/python scripts/bench_catalog.py" in section
    assert "quick run" not in section
    assert "quick run, not the reference figures" in bench_all.render_section(
        results_of(all_runs, quick=True), "bench"
    )


def test_the_summary_shows_each_target_met_or_by_how_much_not(
    all_runs: list[dict[str, Any]],
) -> None:
    section = bench_all.render_section(results_of(all_runs), "bench")
    targets = section.split("### Against the targets")[1].split("\n### ")[0]
    assert "| backup | small | backup / min(codec, TLS copy) | 0.50 | ≥ 0.60 |" in targets
    assert "**not met**: 0.10 short |" in targets
    assert (
        "| catalog | medium, large, huge | findscu PatientName=SMI*, pynetdicom path"
        " | 1,764 ms | ≤ 200 ms | **not met**: 1,564 ms over |"
    ) in targets
    assert "| catalog | medium, large, huge | C-FIND PatientName=SMI*, in the catalog" in targets
    assert "| recover | small | first study complete, worst round | 1.70 s | ≤ 5.00 s | met |" in (
        targets
    )  # issue 5's other target
    assert "| catalog | small |" not in targets  # 100,000 instances: no verdict
    assert "| retrieve |" not in targets  # no target set
    catalog = section.split("### The catalog at scale")[1]
    assert "| medium, large, huge | 1,000,000 | PatientName=SMI* | 1,238 | 82 ms (met)" in catalog
    assert "| small | 100,000 | PatientName=SMI* | 1,238 | 82 ms | 180 ms | 1,764 ms |" in catalog
    assert "0.75, target ≥ 0.80 (**not met**: 0.05 short)" in catalog
    retrieve = section.split("### C-MOVE and C-GET")[1].split("\n### ")[0]
    assert "the Orthanc-to-Orthanc C-MOVE is the recovery stage's anchor" in retrieve
    assert "| 0.33 | 0.34 | ok |" in retrieve


def test_a_missed_target_has_its_cause_under_its_table_and_a_met_one_none(
    all_runs: list[dict[str, Any]],
) -> None:
    section = bench_all.render_section(results_of(all_runs), "bench")

    def stage(title: str) -> str:
        return section.split(f"### {title}")[1].split("\n### ")[0]

    for missed, title in [
        ("backup", "Backup across"),  # 0.5 of 0.6
        ("codec", "Bundle codec"),  # 0.5 of 0.7
        ("catalog", "The catalog at scale"),  # SMI* through pynetdicom, 0.75 full / empty
    ]:
        text = stage(title)
        note = f"**Why the target is missed.** {bench_all.GAPS[missed]}"
        assert note in text, missed
        assert text.index(note) < text.index("Commands"), f"{missed}: the cause is under its table"
    for met, title in [("recover", "Recovery through"), ("ingest", "C-STORE ingest")]:
        assert "Why the target is missed" not in stage(title), met  # 1.2 of 1.0, 1.5 of 1.3
    assert bench_all.MEMORY_NOTE in stage("Time and memory")


def test_a_failed_catalog_run_is_reported_and_draws_no_figure(
    all_runs: list[dict[str, Any]],
) -> None:
    runs = [r for r in all_runs if r["size"] == "small"]
    broken = next(r for r in runs if r["stage"] == "catalog")
    broken.update(result=None, exit_code=1, error="no JSON on stdout (exit 1)")
    section = bench_all.render_section(results_of(runs), "bench")
    assert "| small | - | - | - | - | - | - | 12 s | - | - | failed: no JSON on stdout" in section
    assert "![catalog]" not in section and bench_all.figure_names(runs)["catalog"] is None


def test_a_failed_run_is_reported_and_left_out_of_the_figures(
    all_runs: list[dict[str, Any]],
) -> None:
    runs = [r for r in all_runs if r["size"] == "small"]
    broken = next(r for r in runs if r["stage"] == "recover")
    broken.update(result=None, exit_code=1, error="no JSON on stdout (exit 1)")
    section = bench_all.render_section(results_of(runs), "bench")
    assert "| small | - | failed: no JSON on stdout (exit 1) |" in section
    assert "![recover]" not in section
    assert bench_all.figure_names(runs)["recover"] is None


# -- the figures ----------------------------------------------------------------------------


def test_every_figure_carries_the_command(all_runs: list[dict[str, Any]]) -> None:
    import matplotlib.pyplot as plt

    command = "scripts/bench_all --sizes small,medium,large,huge"
    figures = [bench_all.plot(all_runs, s, command) for s in [*bench_all.STAGES, "scaling"]]
    for figure in figures:
        assert command in [t.get_text() for t in figure.texts]
        plt.close(figure)


def test_plots_render_valid_pngs(all_runs: list[dict[str, Any]], tmp_path: Path) -> None:
    import matplotlib.image

    written = bench_all.write_plots(all_runs, "scripts/bench_all", tmp_path / "bench")
    assert sorted(p.name for p in written) == sorted(
        [f"{s}.png" for s in bench_all.STAGES] + ["scaling.png"]
    )
    for path in written:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        height, width = matplotlib.image.imread(path).shape[:2]
        assert height > 300 and width > 600


def test_from_results_redraws_without_running(
    all_runs: list[dict[str, Any]], tmp_path: Path
) -> None:
    out = tmp_path / "bench"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(results_of(all_runs)))
    doc = tmp_path / "benchmarks.md"
    doc.write_text(HAND_WRITTEN)
    code = bench_all.main(["--from-results", str(out / "results.json"), "--doc", str(doc)])
    assert code == 0
    text = doc.read_text()
    assert "![time and memory](bench/scaling.png)" in text and (out / "scaling.png").exists()
    assert "bench/results.json" in text
    assert text.endswith(
        bench_all.END + "\n\n## Bundle codec" + HAND_WRITTEN.split("## Bundle codec")[1]
    )


# -- measuring a run ------------------------------------------------------------------------


def test_run_measured_keeps_stdout_and_the_memory_of_its_descendants(tmp_path: Path) -> None:
    # The parent stays small; its child holds 80 MB for a second: the largest process and
    # the sampled sum both see the child, and stdout is the parent's alone.
    child = "import time; b = bytearray(80_000_000); b[::4096] = b'x' * 19532; time.sleep(1.2)"
    parent = (
        f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}]);"
        " print('{\"ok\": 1}'); sys.exit(3)"
    )
    measured = bench_all.run_measured([sys.executable, "-c", parent], tmp_path / "log")
    assert measured.exit_code == 3
    assert json.loads(measured.stdout) == {"ok": 1}
    assert measured.max_rss_bytes > 80_000_000
    assert measured.peak_tree_rss_bytes > 80_000_000
    assert measured.wall_seconds >= 1.2


def test_the_real_document_has_one_section_to_rewrite(all_runs: list[dict[str, Any]]) -> None:
    text = (SCRIPT.parents[1] / "docs" / "benchmarks.md").read_text()
    assert text.count(bench_all.BEGIN) == 1 and text.count(bench_all.END) == 1
    section = bench_all.render_section(results_of(all_runs), "bench")
    rewritten = bench_all.replace_section(text, section)
    assert rewritten.split(bench_all.BEGIN)[0] == text.split(bench_all.BEGIN)[0]
    assert rewritten.split(bench_all.END)[1] == text.split(bench_all.END)[1]
