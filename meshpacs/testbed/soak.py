"""The soak: random seeded faults on a running federation for a while, losing nothing.

:func:`run_soak` lays out a testbed with :data:`~meshpacs.testbed.layout.FAST_MAINTENANCE`
(audits, scrub and repair in seconds), starts every node as its own process, and then,
round after round until the time is spent:

1. **push** one small generated study to the owner (the first site) by C-STORE and note,
   for every instance the owner acknowledged, the SHA-256 of its dataset (the bytes after
   the file meta group): the manifest;
2. **protect**: wait until the owner's status says every study is protected and its
   trusted peers hold a catalog record of each (what a recovery reads back);
3. **fault**: one fault, drawn from :data:`FAULT_KINDS`, on a site holding some of the
   owner's fragments (never the owner): ``kill`` (SIGKILL, then the node started again
   with the same config), ``pause`` (SIGSTOP for a few seconds, then SIGCONT), or damage
   to fragment files behind the holder's back: ``corrupt`` (a byte flipped every KiB, so
   every audited or scrubbed range sees it), ``delete``, ``truncate``, ``zero`` (same
   length, all zeros), ``swap`` (two of the holder's fragments exchange contents);
4. **heal**: wait, bounded, until the owner's status shows every study protected, no
   bundle below n, no site counted lost, no replaced copy left to delete, the victim
   running, and no damaged file still counted as a good share (the owner stopped counting
   it, or it holds its old bytes again);
5. every ``recover_every`` rounds, and always at the end: ``meshpacs recover`` (a
   subprocess, as an operator runs it, options from ``testbed.json``) of the owner's whole
   archive into a fresh folder, every file compared with the manifest: nothing missing,
   nothing extra, no digest different, nothing twice.

Faults come one at a time and each heals before the next, so at most one site is faulty
at once, within the n-k a bundle survives. The owner's node runs throughout: the
recovery is a drill beside a live site, not after its loss (the disaster drill does that).

Every choice (fault kinds, victims, fragments, pause and downtime lengths, truncation
points) comes from one ``random.Random(seed)``. The testbed's site keys are new every run,
so placements differ between runs; the same seed makes the same choices by rank among
what is there (the third holder in site order, the second of its fragments).

A round that does not heal in time, a push the owner refuses, a study that is not
protected in time or a recovery that is not exact ends the soak: the report names the
seed, the round and the fault (after one last recovery, to count what was lost). Every
node is stopped at the end, on errors and on Ctrl-C too. What is printed names site IDs
and counts, never a patient or a UID; the working files stay under ``root``::

    root/
      testbed/                the federation (testbed.json, sites/, logs/<site>.log)
      soak/pacs/round-NNNN/   each round's generated study, as pushed
      soak/recover-NN/        a recovery's journal; its output in restored/, report.json, log
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshpacs.dicom.scu import Outgoing, Target, send_instances
from meshpacs.errors import ConfigError, MeshError
from meshpacs.node.config import NodeConfig, load_config
from meshpacs.node.status import site_status
from meshpacs.store.names import fragment_path
from meshpacs.testbed.drill import (
    SMALL_MIX,
    HeldInstance,
    compare,
    held_instance,
    wait_protected,
)
from meshpacs.testbed.layout import FAST_MAINTENANCE, TestbedPlan, TestbedSite, create_testbed
from meshpacs.testbed.processes import is_our_process, start_nodes, stop_testbed
from meshpacs.testing.synth import StudySpec, generate_study, write_study

__all__ = [
    "FAULT_KINDS",
    "SoakFailure",
    "SoakReport",
    "run_soak",
]

FAULT_KINDS: tuple[str, ...] = ("kill", "pause", "corrupt", "delete", "truncate", "zero", "swap")
"""The fault menu: process faults first, then damage to held fragment files."""

_PROCESS_FAULTS = frozenset({"kill", "pause"})
_CALLING_AE = "SOAK_PACS"
_POLL = 0.5
_PAUSE_SECONDS = (2.0, 8.0)  # around the 5 s audit timeout: some pauses outlast it
_DOWNTIME_SECONDS = (0.5, 5.0)  # around the 3.6 s after which a silent site counts lost
_FLIP_EVERY = 1024


# ----------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoakFailure:
    """What ended the soak: the round, the fault (or step), the site, and why."""

    round: int
    fault: str
    site: str
    reason: str


@dataclass(frozen=True)
class SoakReport:
    """The soak's figures. ``ok`` only when every round healed, every recovery was exact,
    and at least one recovery ran."""

    seed: int
    minutes: float
    seconds: float
    sites: int
    k: int
    n: int
    rounds: int
    rounds_healed: int
    studies: int
    instances_acknowledged: int
    faults: Mapping[str, int]
    recoveries: int
    instances_checked: int
    losses: int  # acknowledged instances a recovery did not give back exactly
    extra: int  # instances a recovery gave that were never acknowledged, or gave twice
    heal_seconds_max: float
    failure: SoakFailure | None
    root: str

    @property
    def faults_injected(self) -> int:
        return sum(self.faults.values())

    @property
    def ok(self) -> bool:
        return (
            self.failure is None
            and self.losses == 0
            and self.extra == 0
            and self.recoveries > 0
            and self.rounds_healed == self.rounds
        )

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["faults"] = dict(self.faults)
        return {"ok": self.ok, "faults_injected": self.faults_injected, **document}

    def summary(self) -> str:
        """A few lines: counts and site IDs only."""
        kinds = ", ".join(
            f"{kind} {self.faults[kind]}" for kind in FAULT_KINDS if kind in self.faults
        )
        lines = [
            f"soak seed {self.seed}: {'PASSED' if self.ok else 'FAILED'}",
            f"  {self.minutes:g} min asked, {self.seconds / 60:.1f} min ran; {self.sites} sites,"
            f" k={self.k} n={self.n}",
            f"  rounds: {self.rounds}, healed: {self.rounds_healed}, slowest heal"
            f" {self.heal_seconds_max:.1f} s",
            f"  faults injected: {self.faults_injected}" + (f" ({kinds})" if kinds else ""),
            f"  studies: {self.studies}, instances acknowledged: {self.instances_acknowledged}",
            f"  recoveries: {self.recoveries}, instances checked: {self.instances_checked},"
            f" losses: {self.losses}, extra: {self.extra}",
        ]
        if self.failure is not None:
            f = self.failure
            lines.append(
                f"  failure: round {f.round}, {f.fault} at {f.site or '-'}: {f.reason}"
                f" (seed {self.seed})"
            )
        return "\n".join(lines)


@dataclass
class _Tally:
    """The report's figures while the soak runs."""

    rounds: int = 0
    rounds_healed: int = 0
    studies: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    recoveries: int = 0
    instances_checked: int = 0
    losses: int = 0
    extra: int = 0
    heal_seconds_max: float = 0.0
    failure: SoakFailure | None = None


# ----------------------------------------------------------------------------------------
# Faults
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Damaged:
    """A fragment file a fault changed behind its holder's back, and what it held."""

    site: str
    fragment_id: str
    path: Path
    sha256: bytes


@dataclass(frozen=True)
class _Fault:
    kind: str
    site: str
    ended_at: float  # wall clock (as the owner's ledger): the node back, or the files damaged
    damaged: tuple[_Damaged, ...] = ()


def _sha256(path: Path) -> bytes | None:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except FileNotFoundError:
        return None


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for at in range(0, len(data), _FLIP_EVERY):
        data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path, rng: random.Random) -> None:
    os.truncate(path, rng.randrange(path.stat().st_size))


def _zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def _swap(first: Path, second: Path) -> None:
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)


def _damage(kind: str, paths: Sequence[Path], rng: random.Random) -> None:
    if kind == "swap":
        _swap(paths[0], paths[1])
    elif kind == "corrupt":
        _corrupt(paths[0])
    elif kind == "delete":
        paths[0].unlink()
    elif kind == "truncate":
        _truncate(paths[0], rng)
    elif kind == "zero":
        _zero(paths[0])
    else:
        raise ValueError(f"not a damage fault: {kind}")


def _signal(site: TestbedSite, sig: signal.Signals) -> None:
    """Signal the site's node, only while its PID still runs that node."""
    if site.pid is not None and is_our_process(site):
        with contextlib.suppress(ProcessLookupError):
            os.kill(site.pid, sig)


def _kill9(site: TestbedSite, timeout: float = 10.0) -> None:
    """SIGKILL the node (no handler runs, nothing is flushed) and wait until it is gone."""
    _signal(site, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while is_our_process(site):
        if time.monotonic() > deadline:
            raise MeshError(f"the node of {site.site_id} survives SIGKILL")
        time.sleep(0.01)


# ----------------------------------------------------------------------------------------
# The owner's view: what it counts on, and whether it is whole
# ----------------------------------------------------------------------------------------


def _read_only(catalog: Path) -> sqlite3.Connection:
    """The owner's catalog beside its running node (WAL lets a reader in)."""
    return sqlite3.connect(f"{catalog.absolute().as_uri()}?mode=ro", uri=True, timeout=10)


def _counted_placements(catalog: Path) -> list[tuple[str, str]]:
    """(holder site, fragment ID) of every placement the owner counts as a good share."""
    with contextlib.closing(_read_only(catalog)) as db:
        rows = db.execute(
            "SELECT holder_site, fragment_id FROM placements"
            " WHERE verdict IN ('unaudited', 'ok') ORDER BY holder_site, fragment_id"
        ).fetchall()
    return [(str(site), str(fragment)) for site, fragment in rows]


def _heard_from(catalog: Path, site: str) -> tuple[float | None, bool]:
    """When the owner's audits last reached ``site``, and whether its latest attempt
    found it unreachable (a mark only a later audit that reaches it clears)."""
    with contextlib.closing(_read_only(catalog)) as db:
        row = db.execute(
            "SELECT last_seen_at, unreachable_at FROM peer_reputation WHERE site_id = ?",
            (site,),
        ).fetchone()
    if row is None:
        return None, False
    return (None if row[0] is None else float(row[0])), row[1] is not None


def _status_problems(status: Mapping[str, Any], studies: int) -> list[str]:
    """What the owner's status shows short of whole: every study protected, every bundle
    at n, no site counted lost, no replaced copy left to delete."""
    counts = status["studies"]
    repairs = (status["audits"] or {}).get("repairs") or {}
    problems = []
    if (counts["total"], counts["protected"]) != (studies, studies):
        problems.append(f"{counts['protected']} of {studies} studies protected")
    if repairs.get("bundles_below_n", 0):
        problems.append(f"{repairs['bundles_below_n']} bundles below n")
    if repairs.get("lost_sites"):
        problems.append(f"lost: {', '.join(repairs['lost_sites'])}")
    if repairs.get("replaced_copies_to_delete", 0):
        problems.append(f"{repairs['replaced_copies_to_delete']} replaced copies to delete")
    return problems


def _process_problems(
    catalog: Path, fault: _Fault, victim: TestbedSite, counted: set[tuple[str, str]]
) -> list[str]:
    """A killed or frozen node counts as healed once it runs and the owner has no
    unreachable mark on it, and has audited it since, if it holds shares: a fault nobody
    noticed yet would still be one when the next fault comes."""
    if not is_our_process(victim):
        return [f"the node of {victim.site_id} is not running"]
    seen, unreachable = _heard_from(catalog, victim.site_id)
    if unreachable:
        return [f"{victim.site_id} marked unreachable by the owner's audits"]
    holds = any(site == victim.site_id for site, _ in counted)
    if holds and (seen is None or seen < fault.ended_at):
        return [f"{victim.site_id} not audited since the {fault.kind}"]
    return []


def _damage_problems(fault: _Fault, counted: set[tuple[str, str]]) -> list[str]:
    """A damaged file is healed once the owner no longer counts it as a good share (a
    repair replaced it), or it holds its old bytes again."""
    still = [
        d
        for d in fault.damaged
        if (d.site, d.fragment_id) in counted and _sha256(d.path) != d.sha256
    ]
    return [f"{len(still)} damaged fragments at {fault.site} still counted good"] if still else []


def _unhealed(owner: NodeConfig, studies: int, fault: _Fault, victim: TestbedSite) -> list[str]:
    """What still differs from a whole federation after ``fault``; empty once healed."""
    problems = _status_problems(site_status(owner), studies)
    counted = set(_counted_placements(owner.catalog_path))
    if fault.kind in _PROCESS_FAULTS:
        problems += _process_problems(owner.catalog_path, fault, victim, counted)
    return problems + _damage_problems(fault, counted)


# ----------------------------------------------------------------------------------------
# The soak
# ----------------------------------------------------------------------------------------


@dataclass
class _Soak:
    plan: TestbedPlan
    owner: TestbedSite
    rng: random.Random
    seed: int
    work: Path
    say: Callable[[str], None]
    heal_timeout: float
    mix: Sequence[StudySpec]
    tally: _Tally = field(default_factory=_Tally)
    manifest: dict[str, HeldInstance] = field(default_factory=dict)
    paused: TestbedSite | None = None
    current: tuple[str, str] = ("", "")  # the step or fault under way, and its site

    @property
    def owner_config(self) -> NodeConfig:
        return load_config(Path(self.owner.config))

    def fail(self, round_no: int, fault: str, site: str, reason: str) -> None:
        self.tally.failure = SoakFailure(round_no, fault, site, reason)
        self.say(f"round {round_no}: FAILED ({fault} at {site or '-'}): {reason}")

    # -- push and protect ------------------------------------------------------------------

    def push(self, round_no: int) -> bool:
        """One generated study to the owner; every acknowledged instance into the manifest."""
        spec = self.mix[self.rng.randrange(len(self.mix))]
        instances = list(generate_study(self.seed, spec, patient=round_no))
        paths = write_study(self.work / "pacs" / f"round-{round_no:04d}", instances)
        items = [
            Outgoing(path, i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid)
            for path, i in zip(paths, instances, strict=True)
        ]
        target = Target(self.owner.ae_title, self.owner.host, self.owner.dicom_port, _CALLING_AE)
        deliveries = send_instances(items, target)
        for delivery in deliveries:
            if delivery.ok:
                uid, held = held_instance(delivery.item.path.read_bytes())
                self.manifest[uid] = held
        refused = sum(1 for d in deliveries if not d.ok)
        self.tally.studies += 1
        if refused:
            self.fail(round_no, "push", self.owner.site_id, f"{refused} instances not acknowledged")
            return False
        return True

    def protect(self, round_no: int) -> bool:
        studies = len({i.study_uid for i in self.manifest.values()})
        ok, detail = wait_protected(
            self.plan, self.owner, studies, len(self.manifest), self.heal_timeout
        )
        if not ok:
            self.fail(round_no, "protect", self.owner.site_id, detail)
        return ok

    # -- faults ------------------------------------------------------------------------------

    def holders(self) -> dict[str, list[tuple[str, Path]]]:
        """Non-owner site -> (fragment ID, file) of each share the owner counts on there."""
        found: dict[str, list[tuple[str, Path]]] = {}
        for site_id, fragment in _counted_placements(self.owner_config.catalog_path):
            if site_id == self.owner.site_id:
                continue
            site = self.plan.site(site_id)
            path = fragment_path(load_config(Path(site.config)).fragments_dir, fragment)
            if path.is_file():
                found.setdefault(site_id, []).append((fragment, path))
        return found

    def choose(self, round_no: int, kinds: Sequence[str] | None) -> str:
        if kinds:
            return kinds[(round_no - 1) % len(kinds)]
        return self.rng.choice(FAULT_KINDS)

    def inject(self, kind: str) -> _Fault:
        """Inject one fault of ``kind`` (``swap`` becomes ``corrupt`` while no holder has
        two fragments yet) on a holder of the owner's fragments."""
        holders = self.holders()
        if not holders:
            raise MeshError("no site holds a fragment of the owner's to inject a fault at")
        if kind == "swap" and not any(len(held) >= 2 for held in holders.values()):
            kind = "corrupt"
        eligible = sorted(s for s, held in holders.items() if kind != "swap" or len(held) >= 2)
        victim = self.plan.site(self.rng.choice(eligible))
        self.current = (kind, victim.site_id)
        if kind == "kill":
            self.kill_and_restart(victim)
            return _Fault(kind, victim.site_id, time.time())
        if kind == "pause":
            self.pause(victim)
            return _Fault(kind, victim.site_id, time.time())
        chosen = self.rng.sample(holders[victim.site_id], 2 if kind == "swap" else 1)
        damaged = []
        for fragment, path in chosen:
            digest = _sha256(path)
            assert digest is not None
            damaged.append(_Damaged(victim.site_id, fragment, path, digest))
        _damage(kind, [path for _, path in chosen], self.rng)
        return _Fault(kind, victim.site_id, time.time(), tuple(damaged))

    def kill_and_restart(self, site: TestbedSite) -> None:
        _kill9(site)
        time.sleep(self.rng.uniform(*_DOWNTIME_SECONDS))
        start_nodes(self.plan, sites=[site])  # same config, ports and data, as testbed up

    def pause(self, site: TestbedSite) -> None:
        self.paused = site
        _signal(site, signal.SIGSTOP)
        try:
            time.sleep(self.rng.uniform(*_PAUSE_SECONDS))
        finally:
            _signal(site, signal.SIGCONT)
            self.paused = None

    def heal_allowance(self) -> float:
        """``heal_timeout`` plus one audit of every placement: a damaged fragment is noticed
        by the owner's next audit of it (the holder's scrub quarantines it but does not tell
        the owner), and audits go round the placements oldest first, at a fixed rate."""
        config = self.owner_config
        placements = len(_counted_placements(config.catalog_path))
        rate = config.maintenance.audits_per_hour
        return self.heal_timeout + (placements * 3600.0 / rate if rate > 0 else 0.0)

    def heal(self, round_no: int, fault: _Fault) -> bool:
        started = time.monotonic()
        allowed = self.heal_allowance()
        studies = len({i.study_uid for i in self.manifest.values()})
        victim = self.plan.site(fault.site)
        while problems := _unhealed(self.owner_config, studies, fault, victim):
            if time.monotonic() - started > allowed:
                reason = f"not healed within {allowed:.0f} s: {'; '.join(problems)}"
                self.fail(round_no, fault.kind, fault.site, reason)
                return False
            time.sleep(_POLL)
        seconds = time.monotonic() - started
        self.tally.heal_seconds_max = max(self.tally.heal_seconds_max, seconds)
        self.tally.rounds_healed += 1
        self.say(f"round {round_no}: {fault.kind} at {fault.site} healed in {seconds:.1f} s")
        return True

    # -- recovery -----------------------------------------------------------------------------

    def recover(self, round_no: int) -> bool:
        """``meshpacs recover`` of the owner's archive into a new folder, compared with the
        manifest; every difference counts as a loss (or an extra)."""
        self.tally.recoveries += 1
        out = self.work / f"recover-{self.tally.recoveries:02d}"
        restored = out / "restored"
        argv = _recover_argv(self.owner, out / "journal", restored, out / "report.json")
        started = time.monotonic()
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=self.heal_timeout, check=False
            )
            code, log = done.returncode, f"{done.stderr}\n{done.stdout}"
        except subprocess.TimeoutExpired:
            code, log = -1, f"timed out after {self.heal_timeout:g} s"
        (out / "log").write_text(f"$ {' '.join(argv)}\n{log}", encoding="utf-8")
        got, twice = _restored(restored)
        found = compare(self.manifest, got)
        losses = len(found.missing) + len(found.different)
        extra = len(found.extra) + twice
        self.tally.instances_checked += len(self.manifest)
        self.tally.losses = max(self.tally.losses, losses)  # each check sees the whole archive
        self.tally.extra = max(self.tally.extra, extra)
        seconds = time.monotonic() - started
        detail = (
            f"exit code {code}, {len(got)} of {len(self.manifest)} instances back in"
            f" {seconds:.1f} s; {found.describe()}, {twice} twice"
        )
        self.say(f"round {round_no}: recovery {self.tally.recoveries}: {detail}")
        if code != 0 or losses or extra:
            self.fail(round_no, "recovery", self.owner.site_id, f"{detail}; see {out / 'log'}")
            return False
        return True

    # -- rounds ---------------------------------------------------------------------------------

    def round(self, round_no: int, kinds: Sequence[str] | None) -> bool:
        started = time.monotonic()
        self.current = ("push", self.owner.site_id)
        if not self.push(round_no) or not self.protect(round_no):
            return False
        protected = time.monotonic() - started
        kind = self.choose(round_no, kinds)
        self.current = (kind, "")
        fault = self.inject(kind)
        self.current = (fault.kind, fault.site)
        self.tally.faults[fault.kind] += 1
        self.tally.rounds += 1
        self.say(
            f"round {round_no}: {len(self.manifest)} instances acknowledged, protected in"
            f" {protected:.1f} s; {fault.kind} at {fault.site}"
            + (f" ({len(fault.damaged)} fragments)" if fault.damaged else "")
        )
        return self.heal(round_no, fault)

    def stop_paused(self) -> None:
        """A frozen node must be thawed to wind down on SIGTERM."""
        if self.paused is not None:
            _signal(self.paused, signal.SIGCONT)


def _recover_argv(owner: TestbedSite, workdir: Path, to_dir: Path, report: Path) -> list[str]:
    """``meshpacs recover`` as the owner's operator runs it, into a folder (the drill's
    :func:`~meshpacs.testbed.drill.recover_argv` delivers to an AE)."""
    argv = [sys.executable, "-m", "meshpacs", "recover"]
    for name, value in owner.recover_args.items():
        for item in value if isinstance(value, list) else [value]:
            argv += [f"--{name}", str(workdir if name == "workdir" else item)]
    argv += ["--phrase-file", owner.phrase_file, "--to-dir", str(to_dir), "--json", str(report)]
    for peer in owner.trusted:
        argv += ["--peer", peer]
    return argv


def _restored(root: Path) -> tuple[dict[str, HeldInstance], int]:
    """What a folder recovery wrote, by SOP Instance UID; and how many files repeat one."""
    found: dict[str, HeldInstance] = {}
    twice = 0
    for path in sorted(root.rglob("*.dcm")):
        uid, held = held_instance(path.read_bytes())
        twice += uid in found
        found[uid] = held
    return found, twice


def _rounds(deadline: float) -> Iterator[int]:
    number = 1
    while time.monotonic() < deadline:
        yield number
        number += 1


def run_soak(
    root: Path,
    minutes: float,
    seed: int,
    sites: int = 6,
    k: int = 2,
    n: int = 4,
    progress: Callable[[str], None] | None = None,
    *,
    kinds: Sequence[str] | None = None,
    recover_every: int = 4,
    heal_timeout: float = 180.0,
    mix: Sequence[StudySpec] = SMALL_MIX,
) -> SoakReport:
    """Soak a new testbed under ``root`` (new or empty) with seeded faults for ``minutes``.

    ``kinds``, when given, is the faults' schedule, in turn (for a short run that must
    cover given kinds); otherwise each round draws from :data:`FAULT_KINDS`. A recovery
    runs every ``recover_every`` rounds and at the end; ``heal_timeout`` bounds each wait
    (protection, healing, a recovery run). Every node is stopped before this returns or
    raises (Ctrl-C included).
    """
    if n - k < 1:
        raise ConfigError(f"k={k} n={n} survives no faulty site: the soak needs n-k >= 1")
    if not 0 <= seed < 2**64:  # the study generator's seed range
        raise ValueError(f"the seed must be in [0, 2**64), not {seed}")
    unknown = set(kinds or ()) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    say = progress or (lambda _: None)
    started = time.monotonic()
    root = root.absolute()
    root.mkdir(parents=True, exist_ok=True)
    plan = create_testbed(
        root / "testbed", sites, k=k, n=n, stable_seconds=1.0, maintenance=FAST_MAINTENANCE
    )
    work = root / "soak"
    work.mkdir(mode=0o700)
    soak = _Soak(plan, plan.sites[0], random.Random(seed), seed, work, say, heal_timeout, mix)
    try:
        start_nodes(plan)
        say(f"{sites} nodes up (k={k}, n={n}); owner {soak.owner.site_id}; testbed {plan.root}")
        _loop(soak, started + minutes * 60, kinds, recover_every)
    finally:
        soak.stop_paused()
        stop_testbed(plan, grace=10.0)
    t = soak.tally
    return SoakReport(
        seed=seed,
        minutes=minutes,
        seconds=round(time.monotonic() - started, 1),
        sites=sites,
        k=k,
        n=n,
        rounds=t.rounds,
        rounds_healed=t.rounds_healed,
        studies=t.studies,
        instances_acknowledged=len(soak.manifest),
        faults=dict(t.faults),
        recoveries=t.recoveries,
        instances_checked=t.instances_checked,
        losses=t.losses,
        extra=t.extra,
        heal_seconds_max=round(t.heal_seconds_max, 1),
        failure=t.failure,
        root=str(root),
    )


def _loop(soak: _Soak, deadline: float, kinds: Sequence[str] | None, recover_every: int) -> None:
    """Rounds until ``deadline`` or a failure; then the last recovery, whatever happened
    (after a failure it counts what was lost)."""
    last_checked = 0
    number = 0
    for number in _rounds(deadline):
        try:
            healed = soak.round(number, kinds)
        except MeshError as error:  # e.g. a killed node that does not start again
            kind, site = soak.current
            soak.fail(number, kind, site, str(error).splitlines()[0])  # no log tail
            healed = False
        if not healed:
            break
        if number % recover_every == 0:
            last_checked = number
            if not soak.recover(number):
                return
    if soak.manifest and (last_checked != number or soak.tally.failure is not None):
        failure = soak.tally.failure
        soak.recover(number)
        if failure is not None:  # the first failure is what the report names
            soak.tally.failure = failure
