"""The disaster drill: a hospital loses its PACS and its node, and gets its archive back.

Runs against a testbed started with ``meshpacs testbed up --with-orthanc``, site A being
the first site, as the recovery issue's drill lists the steps:

2. **push** generated studies (CT and MR, from a few images of 64x64 to 512x512 series,
   some RLE-compressed) and a few of pydicom's own test files (other SOP classes and
   transfer syntaxes) into Orthanc A with dcmtk ``storescu``, and record what Orthanc A
   then holds, from its REST API: per SOP Instance UID the transfer syntax and a SHA-256
   of the dataset after the file meta group;
3. **protect**: wait until site A's status says every study is protected, having
   received every instance Orthanc A holds, and its trusted peers hold a catalog record
   per study (what recovery will read);
4. **disaster**: kill A's node and A's Orthanc, delete A's data directory and Orthanc A's
   storage, start an empty Orthanc A (same config and ports);
5. **recover**: ``meshpacs recover`` (a subprocess, options from ``testbed.json``'s
   ``recover_args``) from the phrase into Orthanc A; download every instance and compare
   with step 2's record: nothing missing, nothing extra, same transfer syntax, same
   dataset bytes;
6. the same into an emptied Orthanc A with **n-k** other sites stopped: still exact;
7. with **n-k+1** sites stopped, all holders of one bundle: the dry run, the report and
   the drill's own expectation name the same lost bundles; the exit code is non-zero;
   every instance delivered is exact and the ones missing are exactly the lost bundles';
8. the stopped sites come back, and the same command with the same journal delivers
   exactly what was missing: the archive is whole again.

Why compare with what Orthanc A held, not with the files pushed: storescu and Orthanc
convert some objects on the way in (big endian and deflated files arrive as explicit
little endian). The mesh promises back exactly what the PACS handed it.

Which sites stop in steps 6 and 7 comes from notes the drill takes from A's ledger right
after killing A's node and before deleting it (each bundle's holders and instances).
Recovery never sees these notes; they let the drill say in advance what must be lost.
The stopped sites are holders of one bundle, A's trusted peers last, so that one trusted
peer still answers with A's catalog.

Afterwards site A's node stays gone (its directory no longer exists), Orthanc A holds the
recovered archive, and every other node runs again: ``meshpacs testbed down`` stops them.
The verdict names no patient, study or instance; the working files stay for a look::

    <root>/drill/
      pacs/<syntax>/study-NNNN/...      the generated studies as pushed (counters, no UIDs)
      recover-5/, .json, .log           a recovery's workdir (journal), --json report, output
      recover-6/, .json, .log
      recover-7-dry-run/, .log          the dry run's plan is in its log
      recover-7/, .json, .log
      recover-8.json, .log              step 8: recover-7's journal again, resumed
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from meshpacs.dicom.part10 import dataset_offset
from meshpacs.errors import ConfigError, MeshError
from meshpacs.metadata import ledger
from meshpacs.node.config import load_config
from meshpacs.node.status import site_status
from meshpacs.store.records import owner_directory
from meshpacs.testbed.layout import TestbedPlan, TestbedSite
from meshpacs.testbed.orthanc import orthanc_rest, start_site_orthanc
from meshpacs.testbed.processes import is_our_orthanc, is_our_process, orthanc_pid, start_nodes
from meshpacs.testbed.push import STORESCU_OPTION, last_line, push_generated, storescu
from meshpacs.testing.dcmtk import dcmtk_tool
from meshpacs.testing.synth import (
    SeriesSpec,
    StudySpec,
)
from meshpacs.transport.frames import RecordKind

__all__ = [
    "DRILL_MIX",
    "SMALL_MIX",
    "BundleNote",
    "Comparison",
    "DrillReport",
    "HeldInstance",
    "SampleFile",
    "StepResult",
    "choose_stopped",
    "compare",
    "held_instance",
    "holdings",
    "lost_bundles",
    "pick_sample_files",
    "pydicom_test_files",
    "read_notes",
    "recover_argv",
    "run_drill",
    "wait_protected",
]

DRILL_MIX: tuple[StudySpec, ...] = (
    StudySpec((SeriesSpec("CT", 24),)),
    StudySpec((SeriesSpec("MR", 20), SeriesSpec("MR", 20, 192, 192)), "rle"),
    StudySpec((SeriesSpec("CT", 8, 256, 256), SeriesSpec("MR", 6, 128, 128))),
    StudySpec((SeriesSpec("CT", 40, 256, 256),), "rle"),
    StudySpec((SeriesSpec("MR", 12),)),
    StudySpec((SeriesSpec("CT", 3, 64, 64),)),
)
"""The generated studies' shapes, used in turn: 0.03 to 12.6 MB, a third of them RLE."""

SMALL_MIX: tuple[StudySpec, ...] = (
    StudySpec((SeriesSpec("CT", 3, 64, 64), SeriesSpec("MR", 2, 32, 32))),
    StudySpec((SeriesSpec("MR", 3, 64, 64),), "rle"),
)
"""Tiny studies, for a drill that must take seconds (tests)."""

_DEFLATED = "1.2.840.10008.1.2.1.99"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_STEP_TITLES = {
    2: "push into Orthanc A",
    3: "every study protected",
    4: "site A destroyed",
    5: "recover: exact",
    6: "recover with n-k sites down: exact",
    7: "n-k+1 down: exactly the lost bundles reported",
    8: "sites back: the rerun completes the archive",
}


# ----------------------------------------------------------------------------------------
# What a PACS holds, and comparing two holdings (pure)
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldInstance:
    """One instance a PACS holds, as far as the drill compares it."""

    study_uid: str
    transfer_syntax: str
    size: int  # the whole file's, as the PACS hands it out
    dataset_sha256: bytes  # of the bytes after the file meta group


def held_instance(data: bytes) -> tuple[str, HeldInstance]:
    """(SOP Instance UID, what to compare) of one Part 10 file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(
            io.BytesIO(data),
            stop_before_pixels=True,
            specific_tags=["SOPInstanceUID", "StudyInstanceUID"],
        )
    dataset_bytes = memoryview(data)[dataset_offset(data) :]
    return str(dataset.SOPInstanceUID), HeldInstance(
        study_uid=str(dataset.get("StudyInstanceUID", "")),
        transfer_syntax=str(dataset.file_meta.TransferSyntaxUID),
        size=len(data),
        dataset_sha256=hashlib.sha256(dataset_bytes).digest(),
    )


@dataclass(frozen=True)
class Comparison:
    """Instances (by SOP Instance UID) missing, extra, or held with other syntax or bytes."""

    missing: frozenset[str]
    extra: frozenset[str]
    different: frozenset[str]

    @property
    def exact(self) -> bool:
        return not (self.missing or self.extra or self.different)

    @property
    def mismatches(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.different)

    def describe(self) -> str:
        return (
            f"{len(self.missing)} missing, {len(self.extra)} extra,"
            f" {len(self.different)} with another syntax or other bytes"
        )


def compare(before: dict[str, HeldInstance], after: dict[str, HeldInstance]) -> Comparison:
    """What ``after`` lacks, adds, or holds differently (syntax or dataset bytes)."""
    different = {
        uid
        for uid in before.keys() & after.keys()
        if (before[uid].transfer_syntax, before[uid].dataset_sha256)
        != (after[uid].transfer_syntax, after[uid].dataset_sha256)
    }
    return Comparison(
        frozenset(before.keys() - after.keys()),
        frozenset(after.keys() - before.keys()),
        frozenset(different),
    )


# ----------------------------------------------------------------------------------------
# The drill's notes on where bundles live, and which sites to stop (pure)
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleNote:
    """One of site A's bundles, as its ledger had it: share holders and instances."""

    bundle_id: str  # hex, as recovery reports name bundles
    k: int
    holders: tuple[tuple[int, str], ...]  # (share, site)
    instances: frozenset[str]  # SOP Instance UIDs

    def shares_up(self, stopped: Iterable[str]) -> int:
        """Distinct shares on sites not in ``stopped``."""
        down = set(stopped)
        return len({share for share, site in self.holders if site not in down})


def lost_bundles(notes: Sequence[BundleNote], stopped: Iterable[str]) -> set[str]:
    """The bundles left with fewer than k shares on running sites."""
    down = set(stopped)
    return {note.bundle_id for note in notes if note.shares_up(down) < note.k}


def choose_stopped(
    notes: Sequence[BundleNote], trusted: Sequence[str], *, n: int, k: int, seed: int
) -> list[str]:
    """n-k+1 holders of one bundle to stop (the first n-k are step 6's), so that one of
    ``trusted`` keeps running and with the first n-k alone nothing is lost.

    Untrusted holders come first. Of the bundles that allow it, the choice losing the
    fewest bundles wins (so that step 7 delivers some and shows them exact); ties go by
    a seeded order. Raises ConfigError when no bundle allows it (too few holders, or
    only trusted peers among them).
    """
    count = n - k + 1
    order = list(notes)
    random.Random(seed).shuffle(order)
    options = []
    for note in order:
        holders = sorted({site for _, site in note.holders}, key=lambda s: (s in trusted, s))
        chosen = holders[:count]
        if (
            len(chosen) == count
            and any(peer not in chosen for peer in trusted)
            and not lost_bundles(notes, chosen[: count - 1])
        ):
            options.append(chosen)
    if not options:
        raise ConfigError(
            f"no bundle has {count} holders that leave one of site A's trusted peers"
            f" ({', '.join(trusted) or 'none'}) running"
        )
    return min(options, key=lambda chosen: len(lost_bundles(notes, chosen)))


def read_notes(catalog_path: Path) -> list[BundleNote]:
    """Every bundle of the site's ledger with its placements and instances."""
    with contextlib.closing(sqlite3.connect(catalog_path, timeout=10)) as db:
        refs = [int(row[0]) for row in db.execute("SELECT id FROM bundles ORDER BY id")]
        notes = []
        for ref in refs:
            row = ledger.bundle(db, ref)
            notes.append(
                BundleNote(
                    bundle_id=row.bundle_id.hex(),
                    k=row.k,
                    holders=tuple((p.share, p.holder_site) for p in ledger.placements(db, ref)),
                    instances=frozenset(m.sop_instance_uid for m in ledger.bundle_members(db, ref)),
                )
            )
    return notes


# ----------------------------------------------------------------------------------------
# pydicom's own test files
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleFile:
    """A pydicom test file fit to push: its transfer syntax and UIDs (for de-duplication)."""

    path: Path
    transfer_syntax: str
    sop_uid: str
    study_uid: str


def pydicom_test_files() -> list[Path]:
    """The ``*.dcm`` files shipped inside the installed pydicom (found without network)."""
    directory = Path(pydicom.__file__).parent / "data" / "test_files"
    return sorted(directory.glob("*.dcm"))


def _sample(path: Path) -> SampleFile | str:
    """The file as a :class:`SampleFile`, or why it does not fit the drill."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as error:  # pydicom raises many types for its deliberately broken files
        return f"unreadable ({type(error).__name__})"
    syntax = str(dataset.file_meta.get("TransferSyntaxUID", ""))
    if syntax == _DEFLATED:
        return "deflated: the node refuses deflated syntaxes by design"
    if syntax not in STORESCU_OPTION:
        return f"transfer syntax {syntax or 'missing'} not in the drill's list"
    uids = [str(dataset.get(name, "")) for name in ("SOPInstanceUID", "StudyInstanceUID")]
    if not all(uids) or not dataset.get("SeriesInstanceUID") or "PatientID" not in dataset:
        return "lacks a UID or PatientID a PACS needs"
    return SampleFile(path, syntax, uids[0], uids[1])


def pick_sample_files(paths: Sequence[Path], seed: int) -> tuple[list[SampleFile], dict[str, str]]:
    """Every fit file in a seeded order, other transfer syntaxes first; and the unfit ones
    (name -> why). Files repeating a SOP Instance or Study Instance UID of an earlier one
    are unfit: pydicom ships several encodings of one object."""
    fit: list[SampleFile] = []
    unfit: dict[str, str] = {}
    seen_sops: set[str] = set()
    seen_studies: set[str] = set()
    for path in paths:
        sample = _sample(path)
        if isinstance(sample, str):
            unfit[path.name] = sample
        elif sample.sop_uid in seen_sops or sample.study_uid in seen_studies:
            unfit[path.name] = "repeats the UIDs of another test file"
        else:
            seen_sops.add(sample.sop_uid)
            seen_studies.add(sample.study_uid)
            fit.append(sample)
    random.Random(seed).shuffle(fit)
    syntaxes: set[str] = set()
    first: list[SampleFile] = []
    later: list[SampleFile] = []
    for sample in fit:
        (later if sample.transfer_syntax in syntaxes else first).append(sample)
        syntaxes.add(sample.transfer_syntax)
    return first + later, unfit


# ----------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------


@dataclass
class StepResult:
    step: int
    title: str
    ok: bool
    detail: str
    seconds: float = 0.0


@dataclass
class DrillReport:
    """The verdict and its figures; ``ok`` only when every step ran and passed."""

    sites: int
    k: int
    n: int
    studies: int = 0
    instances: int = 0
    bytes: int = 0
    generated_studies: int = 0
    pydicom_files: list[str] = field(default_factory=list)
    pydicom_refused: dict[str, str] = field(default_factory=dict)
    pydicom_unfit: dict[str, str] = field(default_factory=dict)
    transfer_syntaxes: dict[str, int] = field(default_factory=dict)
    seconds_to_protect: float = 0.0
    seconds_to_recover: float = 0.0
    seconds_to_recover_degraded: float = 0.0
    mismatches: int = 0
    stopped_in_step_6: list[str] = field(default_factory=list)
    stopped_in_step_7: list[str] = field(default_factory=list)
    lost_bundles: list[str] = field(default_factory=list)
    lost_instances: int = 0
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        passed = {s.step for s in self.steps if s.ok}
        return passed == set(_STEP_TITLES) and self.mismatches == 0

    def add(self, step: int, ok: bool, detail: str, seconds: float = 0.0) -> StepResult:
        result = StepResult(step, _STEP_TITLES[step], ok, detail, round(seconds, 2))
        self.steps.append(result)
        return result

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


# ----------------------------------------------------------------------------------------
# Processes: stopping by PID, starting a node again
# ----------------------------------------------------------------------------------------


def _stop(pid: int | None, ours: Callable[[], bool], *, kill: bool, grace: float = 20.0) -> None:
    """Signal ``pid`` while it is still ours (SIGKILL at once for a disaster, else SIGTERM
    and SIGKILL after ``grace``), and wait until it is not."""
    if pid is None:
        return
    for sig in [signal.SIGKILL] if kill else [signal.SIGTERM, signal.SIGKILL]:
        if not ours():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while ours() and time.monotonic() < deadline:
            time.sleep(0.1)
    if ours():
        raise MeshError(f"process {pid} does not stop, even on SIGKILL")


def _stop_node(plan: TestbedPlan, site: TestbedSite, *, kill: bool = False) -> None:
    _stop(site.pid, lambda: is_our_process(site), kill=kill)
    site.pid = None
    plan.save()


def _stop_orthanc(plan: TestbedPlan, site: TestbedSite, *, kill: bool = False) -> None:
    _stop(orthanc_pid(site), lambda: is_our_orthanc(site), kill=kill)
    assert site.orthanc is not None
    site.orthanc["pid"] = None
    plan.save()


def _start_node(plan: TestbedPlan, site: TestbedSite, timeout: float = 60.0) -> None:
    """Start a stopped site's node as ``testbed up`` does, and wait for its C-ECHO."""
    start_nodes(plan, sites=[site], timeout=timeout)


def _empty_orthanc(plan: TestbedPlan, site: TestbedSite, *, kill: bool = False) -> None:
    """Stop the site's Orthanc, delete its storage, start it again: an empty PACS."""
    _stop_orthanc(plan, site, kill=kill)
    assert site.orthanc is not None
    shutil.rmtree(str(site.orthanc["storage_dir"]), ignore_errors=True)
    start_site_orthanc(plan, site)
    if _instance_ids(site):
        raise MeshError(f"the Orthanc of {site.site_id} is not empty after its storage went")


# ----------------------------------------------------------------------------------------
# Orthanc A: pushing into it, reading what it holds
# ----------------------------------------------------------------------------------------


def _instance_ids(site: TestbedSite) -> list[str]:
    ids = json.loads(orthanc_rest(site, "GET", "/instances"))
    return [str(i) for i in ids]


def holdings(site: TestbedSite) -> dict[str, HeldInstance]:
    """Every instance the site's Orthanc holds, downloaded from its REST API."""
    held: dict[str, HeldInstance] = {}
    for orthanc_id in _instance_ids(site):
        uid, instance = held_instance(orthanc_rest(site, "GET", f"/instances/{orthanc_id}/file"))
        held[uid] = instance
    return held


def _push_samples(
    site: TestbedSite, samples: Sequence[SampleFile], count: int, report: DrillReport
) -> None:
    """Push pydicom test files one by one until ``count`` are accepted by Orthanc."""
    held = set(_instance_ids(site))
    for sample in samples:
        if len(report.pydicom_files) >= count:
            return
        done = storescu(site, sample.path, sample.transfer_syntax)
        now = set(_instance_ids(site))
        if done.returncode == 0 and now - held:
            report.pydicom_files.append(sample.path.name)
        else:
            report.pydicom_refused[sample.path.name] = last_line(done)
        held = now


# ----------------------------------------------------------------------------------------
# Site A's node: protection
# ----------------------------------------------------------------------------------------


def _instances_received(catalog: Path) -> int:
    if not catalog.exists():
        return 0
    uri = f"{catalog.absolute().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        return int(db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])


def _records_held(peer: TestbedSite, owner: TestbedSite) -> int:
    """Catalog records ``peer`` keeps for ``owner``."""
    folder = owner_directory(Path(peer.data_dir) / "records", RecordKind.CATALOG, owner.site_id)
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if _HEX64.fullmatch(p.name))


def wait_protected(
    plan: TestbedPlan, owner: TestbedSite, studies: int, instances: int, timeout: float
) -> tuple[bool, str]:
    """Wait until the owner has received ``instances``, protected ``studies`` and every
    trusted peer holds a catalog record of each; (done, what the wait saw)."""
    config = load_config(Path(owner.config))
    peers = [plan.site(peer) for peer in owner.trusted]
    deadline = time.monotonic() + timeout
    while True:
        counts = site_status(config)["studies"]
        received = _instances_received(config.catalog_path)
        records = min((_records_held(peer, owner) for peer in peers), default=studies)
        done = (counts["total"], counts["protected"], received) == (studies, studies, instances)
        if done and records >= studies:
            return True, f"{studies} studies protected, records at {', '.join(owner.trusted)}"
        state = (
            f"{counts['protected']} of {studies} studies protected ({counts['degraded']}"
            f" degraded), {received} of {instances} instances received, {records} records"
            " at the trusted peers"
        )
        if not is_our_process(owner):
            return False, f"the node of {owner.site_id} stopped: {state}"
        if time.monotonic() > deadline:
            return False, f"not within {timeout:.0f} s: {state}"
        time.sleep(0.5)


# ----------------------------------------------------------------------------------------
# meshpacs recover, as the operator runs it
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Recovery:
    exit_code: int
    seconds: float
    report: dict[str, Any] | None  # the --json report (or the dry run's plan)
    log: Path


def recover_argv(owner: TestbedSite, workdir: Path, to_ae: str, peers: Sequence[str]) -> list[str]:
    """``meshpacs recover`` for ``owner`` as its operator runs it: its ``recover_args``
    (``--workdir`` replaced by ``workdir``), its phrase file, the target and the peers."""
    argv = [sys.executable, "-m", "meshpacs", "recover"]
    for name, value in owner.recover_args.items():
        values = value if isinstance(value, list) else [value]
        if name == "workdir":
            values = [workdir]
        for item in values:
            argv += [f"--{name}", str(item)]
    argv += ["--phrase-file", owner.phrase_file, "--to-ae", to_ae]
    for peer in peers:
        argv += ["--peer", peer]
    return argv


def _recover(
    owner: TestbedSite,
    workdir: Path,
    output: Path,
    peers: Sequence[str],
    *,
    dry: bool = False,
    timeout: float,
    shown_on: str | None = None,
) -> _Recovery:
    """Run ``meshpacs recover`` for ``owner`` into its Orthanc, journal in ``workdir``;
    its report in ``output``.json and what it printed in ``output``.log. ``shown_on``: the
    config of a site whose dashboard shows the recovery's progress (site A's is gone)."""
    assert owner.orthanc is not None
    to_ae = f"{owner.orthanc['ae_title']}@{owner.host}:{owner.orthanc['dicom_port']}"
    argv = recover_argv(owner, workdir, to_ae, peers)
    report_file = output.with_suffix(".json")
    argv += ["--dry-run"] if dry else ["--json", str(report_file)]
    if shown_on is not None:
        argv += ["--show-on-dashboard", shown_on]
    report_file.unlink(missing_ok=True)
    log = output.with_suffix(".log")
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        log.write_text(f"$ {' '.join(argv)}\ntimed out after {timeout:.0f} s\n", encoding="utf-8")
        return _Recovery(-1, timeout, None, log)
    seconds = time.monotonic() - started
    log.write_text(f"$ {' '.join(argv)}\n{done.stderr}\n{done.stdout}", encoding="utf-8")
    report: dict[str, Any] | None = None
    with contextlib.suppress(OSError, ValueError):
        text = done.stdout if dry else report_file.read_text(encoding="utf-8")
        report = json.loads(text)
    return _Recovery(done.returncode, seconds, report, log)


def _short_bundles(plan_json: dict[str, Any]) -> set[str]:
    """Bundles the dry run found with fewer than k good fragments reachable."""
    return {
        str(bundle["bundle"])
        for study in plan_json.get("studies", [])
        for bundle in study.get("bundles", [])
        if int(bundle["reachable"]) < int(bundle["k"])
    }


def _reported_lost(report_json: dict[str, Any]) -> set[str]:
    return {str(entry["bundle"]) for entry in report_json.get("unrecoverable", [])}


# ----------------------------------------------------------------------------------------
# The drill
# ----------------------------------------------------------------------------------------


@dataclass
class _Drill:
    plan: TestbedPlan
    owner: TestbedSite
    workdir: Path
    report: DrillReport
    timeout: float
    say: Callable[[str], None]
    held: dict[str, HeldInstance] = field(default_factory=dict)
    notes: list[BundleNote] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)

    def running_trusted(self) -> list[str]:
        return [peer for peer in self.owner.trusted if peer not in self.stopped]

    def stop_sites(self, site_ids: Iterable[str]) -> None:
        for site_id in site_ids:
            _stop_node(self.plan, self.plan.site(site_id))
            self.stopped.append(site_id)
        self.say(f"stopped: {', '.join(self.stopped)}")

    def start_stopped(self) -> None:
        while self.stopped:
            _start_node(self.plan, self.plan.site(self.stopped[0]))
            self.stopped.pop(0)

    def recover(self, name: str, *, journal: str = "", dry: bool = False) -> _Recovery:
        """Recover as ``name`` (outputs), in the workdir ``journal`` (default: ``name``)."""
        workdir = self.workdir / (journal or name)
        output = self.workdir / name
        peers = self.running_trusted()
        shown_on = None if dry else self.plan.site(self.owner.trusted[0]).config
        return _recover(
            self.owner, workdir, output, peers, dry=dry, timeout=self.timeout, shown_on=shown_on
        )

    def compare_now(self, lost: frozenset[str] = frozenset()) -> Comparison:
        """Compare Orthanc A with step 2's record; count as mismatches whatever differs
        from it, but for ``lost`` instances being missing (and only those)."""
        found = compare(self.held, holdings(self.owner))
        unexpected = len(found.extra) + len(found.different) + len(found.missing ^ lost)
        self.report.mismatches += unexpected
        return found


def _check_ready(plan: TestbedPlan) -> TestbedSite:
    if not plan.sites:
        raise ConfigError(f"{plan.root} lists no sites")
    owner = plan.sites[0]
    if owner.orthanc is None:
        raise ConfigError(
            f"the testbed at {plan.root} was started without --with-orthanc: the drill needs"
            f" a real Orthanc in front of {owner.site_id}"
        )
    if dcmtk_tool("storescu") is None:
        raise ConfigError("dcmtk's storescu is not installed (apt-get install dcmtk)")
    down = [site.site_id for site in plan.sites if not is_our_process(site)]
    if down:
        raise ConfigError(
            f"the nodes of {', '.join(down)} are not running; a drill needs a freshly started"
            " testbed (`meshpacs testbed up --with-orthanc`), and destroys its first site"
        )
    if not is_our_orthanc(owner):
        raise ConfigError(f"the Orthanc of {owner.site_id} is not running")
    # Studies pushed before the drill (`testbed push`) are welcome: they are recovered and
    # compared like the drill's own. What the node holds but Orthanc A does not (pushed to
    # the node directly) would come back as "extra" and fail the comparison.
    unknown = _node_sop_uids(load_config(Path(owner.config)).catalog_path) - _orthanc_sop_uids(
        owner
    )
    if unknown:
        raise ConfigError(
            f"the node of {owner.site_id} holds {len(unknown)} instances that its Orthanc"
            " does not; the drill compares what Orthanc A held with what comes back, so push"
            " into Orthanc A (`meshpacs testbed push`) or start a fresh testbed"
        )
    return owner


def _node_sop_uids(catalog: Path) -> set[str]:
    if not catalog.exists():
        return set()
    uri = f"{catalog.absolute().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        return {row[0] for row in db.execute("SELECT sop_instance_uid FROM instances")}


def _orthanc_sop_uids(site: TestbedSite) -> set[str]:
    listed = json.loads(orthanc_rest(site, "GET", "/instances?expand"))
    return {str(entry["MainDicomTags"]["SOPInstanceUID"]) for entry in listed}


def _step_push(
    drill: _Drill, studies: int, samples: int, mix: Sequence[StudySpec], seed: int
) -> bool:
    report, owner = drill.report, drill.owner
    started = time.monotonic()
    generated = push_generated(owner, drill.workdir / "pacs", studies, mix, seed).sop_uids
    fit, report.pydicom_unfit = pick_sample_files(pydicom_test_files(), seed)
    _push_samples(owner, fit, samples, report)
    drill.held = holdings(owner)
    report.generated_studies = studies
    report.studies = len({i.study_uid for i in drill.held.values()})
    report.instances = len(drill.held)
    report.bytes = sum(i.size for i in drill.held.values())
    for instance in drill.held.values():
        syntax = instance.transfer_syntax
        report.transfer_syntaxes[syntax] = report.transfer_syntaxes.get(syntax, 0) + 1
    lacking = generated - drill.held.keys()
    detail = (
        f"{studies} generated studies and {len(report.pydicom_files)} pydicom test files;"
        f" Orthanc A holds {report.studies} studies, {report.instances} instances,"
        f" {report.bytes / 1e6:.1f} MB in {len(report.transfer_syntaxes)} transfer syntaxes"
    )
    if report.pydicom_refused:
        detail += f"; refused: {', '.join(sorted(report.pydicom_refused))}"
    if lacking:
        detail += f"; {len(lacking)} generated instances missing from Orthanc A"
    drill.say(f"step 2: {detail}")
    enough = len(report.pydicom_files) == min(samples, len(fit))
    report.add(2, not lacking and enough, detail, time.monotonic() - started)
    return report.steps[-1].ok


def _step_protect(drill: _Drill) -> bool:
    report = drill.report
    started = time.monotonic()
    ok, detail = wait_protected(
        drill.plan, drill.owner, report.studies, report.instances, drill.timeout
    )
    report.seconds_to_protect = round(time.monotonic() - started, 2)
    drill.say(f"step 3: {detail} ({report.seconds_to_protect:.1f} s)")
    report.add(3, ok, detail, report.seconds_to_protect)
    return ok


def _step_disaster(drill: _Drill) -> None:
    plan, owner = drill.plan, drill.owner
    _stop_node(plan, owner, kill=True)
    drill.notes = read_notes(load_config(Path(owner.config)).catalog_path)
    _stop_orthanc(plan, owner, kill=True)
    shutil.rmtree(owner.data_dir)
    _empty_orthanc(plan, owner)
    gone = not Path(owner.data_dir).exists()
    detail = (
        f"node and Orthanc killed; {owner.data_dir} and Orthanc's storage deleted; an empty"
        f" Orthanc A answers ({len(drill.notes)} bundles noted from the ledger first)"
    )
    drill.say(f"step 4: {detail}")
    drill.report.add(4, gone, detail)


def _step_recover(drill: _Drill, step: int, name: str) -> float:
    run = drill.recover(name)
    found = drill.compare_now()
    ok = run.exit_code == 0 and found.exact
    detail = (
        f"exit code {run.exit_code}, {(run.report or {}).get('instances_delivered', 0)} instances"
        f" delivered in {run.seconds:.1f} s; {found.describe()}; log {run.log}"
    )
    drill.say(f"step {step}: {detail}")
    drill.report.add(step, ok, detail, run.seconds)
    return run.seconds


def _step_lost(drill: _Drill) -> Comparison:
    """Step 7; returns the comparison (what is missing) for step 8."""
    report = drill.report
    expected = lost_bundles(drill.notes, drill.stopped)
    dry = drill.recover("recover-7-dry-run", dry=True)
    short = _short_bundles(dry.report or {})
    lost_sops = frozenset(s for n in drill.notes if n.bundle_id in expected for s in n.instances)
    run = drill.recover("recover-7")
    found = drill.compare_now(lost_sops)
    reported = _reported_lost(run.report or {})
    report.lost_bundles = sorted(expected)
    report.lost_instances = len(lost_sops)
    problems = []
    if not expected:
        problems.append("the stopped sites hold no bundle's last shares")
    if not reported == short == expected:
        problems.append(
            f"lost bundles: report {len(reported)}, dry run {len(short)}, expected"
            f" {len(expected)}, not the same"
        )
    if run.exit_code == 0 or run.report is None:
        problems.append(f"exit code {run.exit_code}")
    if found.extra or found.different:
        problems.append(f"wrong deliveries: {found.describe()}")
    if found.missing != lost_sops:
        problems.append(f"{len(found.missing)} missing, not the {len(lost_sops)} lost")
    detail = (
        f"{len(expected)} bundles ({len(lost_sops)} instances) lost as expected and as the"
        f" dry run said; exit code {run.exit_code}; {found.describe()}; log {run.log}"
    )
    if problems:
        detail = "; ".join(problems) + f"; log {run.log}"
    drill.say(f"step 7: {detail}")
    report.add(7, not problems, detail, run.seconds)
    return found


def _step_resume(drill: _Drill, missing: int) -> None:
    drill.start_stopped()
    run = drill.recover("recover-8", journal="recover-7")
    found = drill.compare_now()
    this_run = int((run.report or {}).get("instances_this_run", -1))
    ok = run.exit_code == 0 and found.exact and this_run == missing
    detail = (
        f"exit code {run.exit_code}, {this_run} instances delivered by the rerun"
        f" ({missing} were missing); {found.describe()}"
    )
    drill.say(f"step 8: {detail}")
    drill.report.add(8, ok, detail, run.seconds)


def _steps_degraded(drill: _Drill, seed: int) -> None:
    """Steps 6 to 8: recovery with sites down, then back."""
    plan, report = drill.plan, drill.report
    try:
        chosen = choose_stopped(drill.notes, drill.owner.trusted, n=plan.n, k=plan.k, seed=seed)
    except ConfigError as error:
        report.add(6, False, str(error))
        return
    report.stopped_in_step_6 = chosen[:-1]
    report.stopped_in_step_7 = chosen
    try:
        _empty_orthanc(plan, drill.owner)
        drill.stop_sites(chosen[:-1])
        report.seconds_to_recover_degraded = round(_step_recover(drill, 6, "recover-6"), 2)
        _empty_orthanc(plan, drill.owner)
        drill.stop_sites(chosen[-1:])
        found = _step_lost(drill)
        _step_resume(drill, len(found.missing))
    finally:
        drill.start_stopped()


def run_drill(
    plan: TestbedPlan,
    *,
    studies: int = 20,
    pydicom_files: int = 6,
    seed: int = 1,
    mix: Sequence[StudySpec] = DRILL_MIX,
    timeout: float = 900.0,
    say: Callable[[str], None] = print,
) -> DrillReport:
    """Steps 2 to 7 (and 8) of the disaster drill against a running testbed with Orthanc.

    Raises :class:`ConfigError` before touching anything when the testbed is not one the
    drill can use (no Orthanc, a node down, site A not fresh, no dcmtk). A step that fails
    is in the report; after a failed step 3 the drill stops (it does not destroy a site
    whose studies are not protected). ``timeout`` bounds each wait and each recovery run.
    """
    if studies < 1 or pydicom_files < 0 or not mix:
        raise ValueError("the drill needs at least one generated study and a mix")
    owner = _check_ready(plan)
    workdir = Path(plan.root) / "drill"
    workdir.mkdir(mode=0o700, exist_ok=True)
    report = DrillReport(len(plan.sites), plan.k, plan.n)
    drill = _Drill(plan, owner, workdir, report, timeout, say)
    say(f"drill on {len(plan.sites)} sites (k={plan.k}, n={plan.n}); site A is {owner.site_id}")
    if not _step_push(drill, studies, pydicom_files, mix, seed) or not _step_protect(drill):
        return report
    _step_disaster(drill)
    report.seconds_to_recover = round(_step_recover(drill, 5, "recover-5"), 2)
    _steps_degraded(drill, seed)
    return report
