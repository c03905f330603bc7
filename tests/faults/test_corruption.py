"""Stored fragments damaged at their holders: every kind is found (by the holder's scrub or
the owner's audit), repaired onto another site, and the archive still restores exactly.

One case per field of the fragment header (ranges read from the layout drawn in
:mod:`meshpacs.erasure.layout`, so a new field gets a case of its own), a byte of a share's
blocks, a byte of the trailer's hashes, truncation, a zero-filled file, and two fragments
swapped (between two holders of one bundle, and between two bundles on one holder). CI's
short form takes three of the header fields; ``MESHPACS_FULL=1`` takes them all.
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import pytest

from meshpacs.erasure import layout
from meshpacs.erasure.layout import BUNDLE_ID_SIZE, HEADER_SIZE, FragmentHeader, parse_header
from meshpacs.node.status import site_status
from meshpacs.store.names import fragment_path
from meshpacs.testbed.layout import FAST_MAINTENANCE
from meshpacs.testing.synth import SynthInstance
from tests.mesh.conftest import Federation, FederationFactory, RunningSite
from tests.mesh.helpers import eventually, phi_strings, push, study

from .helpers import lose_owner, recover, wait_backed_up
from .oracle import Manifest, assert_no_phi_on_untrusted, assert_restored

# A scrub pass every 1.8 s instead of FAST_MAINTENANCE's 18 s: a pass over a few small
# fragments costs nothing, and it keeps each case well under the file's time budget.
MAINTENANCE = {**FAST_MAINTENANCE, "scrub_interval_hours": 0.0005}
HEAL_WAIT = 60.0  # s; detection (scrub 1.8 s, audits ~1/s), then repair passes of 1.2 s


# -- the header layout, as drawn in the module docstring ---------------------------------------


def header_fields() -> dict[str, range]:
    """Field name -> its byte range, from the rows of the layout table that have a fixed
    offset and size (``0  1  version``, ...): everything before the blocks."""
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\w+)\b", layout.__doc__ or "", re.MULTILINE)
    return {name: range(int(at), int(at) + int(size)) for at, size, name in rows}


def test_header_cases_cover_every_header_byte() -> None:
    """The table the cases come from tiles the header exactly and agrees with the packer,
    so no header byte goes untested and no case flips bytes of the wrong field."""
    spans = header_fields()
    assert [s.start for s in spans.values()] == [0, *(s.stop for s in spans.values())][:-1]
    assert max(s.stop for s in spans.values()) == HEADER_SIZE
    assert len(spans["bundle_id"]) == BUNDLE_ID_SIZE
    base = FragmentHeader(k=2, n=3, share=1, segment_size=65536, length=40000, bundle_id=bytes(16))
    packed = layout.pack_header(base)
    assert packed[spans["magic"].start : spans["magic"].stop] == layout.MAGIC
    # A value differing from base's in every byte of its field (the packer checks nothing).
    others: dict[str, Any] = {
        "k": 0x0103,
        "n": 0x0104,
        "share": 0x0202,
        "segment_size": 0x01020304,
        "length": 0x0102030405060708,
        "bundle_id": bytes(range(1, 17)),
        "version": 7,
    }
    for field in fields(FragmentHeader):
        changed = layout.pack_header(replace(base, **{field.name: others[field.name]}))
        moved = {i for i in range(HEADER_SIZE) if changed[i] != packed[i]}
        assert moved == set(spans[field.name]), (field.name, sorted(moved))


# -- the scene: a protected study and the owner's ledger ---------------------------------------


@dataclass(frozen=True)
class Placed:
    bundle: str  # bundle ID, hex
    share: int
    holder: str
    fragment_id: str


def ledger(owner: RunningSite) -> list[Placed]:
    """The owner's placements: every share it counts, where, under which fragment ID."""
    path = owner.data_dir / "catalog.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT b.bundle_id, p.share, p.holder_site, p.fragment_id FROM placements p"
            " JOIN bundles b ON b.id = p.bundle_ref ORDER BY b.bundle_id, p.share"
        ).fetchall()
    return [Placed(bytes(b).hex(), int(s), str(h), str(f)) for b, s, h, f in rows]


@dataclass
class Scene:
    fed: Federation
    owner: RunningSite
    sent: list[SynthInstance]
    placed: list[Placed]

    def file(self, p: Placed) -> Path:
        return fragment_path(self.fed.site(p.holder).data_dir / "fragments", p.fragment_id)


# -- the kinds of damage: each returns the placements it spoiled -------------------------------

Damage = Callable[[Scene, random.Random], list[Placed]]


def _one(scene: Scene, rng: random.Random) -> tuple[Placed, Path, bytearray]:
    victim = rng.choice(scene.placed)
    path = scene.file(victim)
    return victim, path, bytearray(path.read_bytes())


def _flip(data: bytearray, span: range, rng: random.Random) -> None:
    """XOR a random non-empty subset of ``span``'s bytes with non-zero values: every byte
    chosen changes, so the field is certainly different."""
    for i in rng.sample(span, rng.randint(1, len(span))):
        data[i] ^= rng.randrange(1, 256)


def flip_field(name: str) -> Damage:
    def damage(scene: Scene, rng: random.Random) -> list[Placed]:
        victim, path, data = _one(scene, rng)
        _flip(data, header_fields()[name], rng)
        path.write_bytes(bytes(data))
        return [victim]

    return damage


def flip_share_byte(scene: Scene, rng: random.Random) -> list[Placed]:
    """One byte of one block: only that block's hash can notice."""
    victim, path, data = _one(scene, rng)
    header = parse_header(bytes(data[:HEADER_SIZE]))
    at = rng.randrange(HEADER_SIZE, header.trailer_offset)
    _flip(data, range(at, at + 1), rng)
    path.write_bytes(bytes(data))
    return [victim]


def flip_trailer_byte(scene: Scene, rng: random.Random) -> list[Placed]:
    """One byte of the block hashes or share roots."""
    victim, path, data = _one(scene, rng)
    header = parse_header(bytes(data[:HEADER_SIZE]))
    at = rng.randrange(header.trailer_offset, header.fragment_size)
    _flip(data, range(at, at + 1), rng)
    path.write_bytes(bytes(data))
    return [victim]


def truncate(scene: Scene, rng: random.Random) -> list[Placed]:
    victim, path, data = _one(scene, rng)
    path.write_bytes(bytes(data[: rng.randrange(0, len(data))]))
    return [victim]


def zero_fill(scene: Scene, rng: random.Random) -> list[Placed]:
    victim, path, data = _one(scene, rng)
    path.write_bytes(bytes(len(data)))
    return [victim]


def swap_between_holders(scene: Scene, rng: random.Random) -> list[Placed]:
    """Two holders of one bundle exchange their files: each still holds an authentic
    fragment of the right bundle (same size, same set hash), only the wrong share."""
    bundle = rng.choice(sorted({p.bundle for p in scene.placed}))
    a, b = rng.sample([p for p in scene.placed if p.bundle == bundle], 2)
    first, second = scene.file(a).read_bytes(), scene.file(b).read_bytes()
    scene.file(a).write_bytes(second)
    scene.file(b).write_bytes(first)
    return [a, b]


def swap_on_one_holder(scene: Scene, rng: random.Random) -> list[Placed]:
    """One holder's fragments of two different bundles exchange names."""
    by_holder: dict[str, list[Placed]] = {}
    for p in scene.placed:
        by_holder.setdefault(p.holder, []).append(p)
    holder = rng.choice(sorted(h for h, ps in by_holder.items() if len(ps) >= 2))
    a, b = rng.sample(by_holder[holder], 2)
    assert a.bundle != b.bundle  # one share of a bundle per site
    first, second = scene.file(a).read_bytes(), scene.file(b).read_bytes()
    scene.file(a).write_bytes(second)
    scene.file(b).write_bytes(first)
    return [a, b]


@dataclass(frozen=True)
class Case:
    damage: Damage
    sites: int = 5
    k: int = 2
    n: int = 3
    studies: int = 1


CASES = {
    **{f"header-{name}": Case(flip_field(name)) for name in header_fields()},
    "share-byte": Case(flip_share_byte),
    "trailer-byte": Case(flip_trailer_byte),
    "truncated": Case(truncate),
    "zero-filled": Case(zero_fill),
    # Two shares of one bundle spoiled: n = 4 so that k good ones remain to repair from.
    "swapped-between-holders": Case(swap_between_holders, sites=6, n=4),
    # Two bundles, so that one holder holds a share of each.
    "swapped-on-one-holder": Case(swap_on_one_holder, studies=2),
}


# -- the scenario ------------------------------------------------------------------------------


def healed(scene: Scene, damaged: list[Placed]) -> bool:
    """Status shows a repair and no bundle below n; no spoiled copy is counted by the
    owner or still kept by its holder (the repairer had it deleted)."""
    repairs = site_status(scene.owner.config)["audits"]["repairs"] or {}
    if not (repairs.get("repaired", 0) >= 1 and repairs.get("bundles_below_n") == 0):
        return False
    if repairs.get("replaced_copies_to_delete") != 0:
        return False
    counted = {(p.holder, p.fragment_id) for p in ledger(scene.owner)}
    return all(
        (d.holder, d.fragment_id) not in counted and not scene.file(d).exists() for d in damaged
    )


# CI's short form damages one header field (the share number: read as another share, it
# would decode to wrong bytes) and swaps between holders only; MESHPACS_FULL=1 runs every
# field and both swaps (each case is a federation of its own, about 10 s).
FULL = os.environ.get("MESHPACS_FULL") == "1"
LONG_FORM_CASES = {"swapped-on-one-holder"}
SHORT_FORM_FIELDS = {"header-share"}
LONG_FORM_ONLY = pytest.mark.skipif(not FULL, reason="long form only (MESHPACS_FULL=1)")


def _long_form_only(name: str) -> bool:
    header = name.startswith("header-")
    return name in LONG_FORM_CASES or (header and name not in SHORT_FORM_FIELDS)


def _params() -> list[Any]:  # pytest.param objects
    return [
        pytest.param(
            case,
            id=name,
            marks=[LONG_FORM_ONLY] if _long_form_only(name) else [],
        )
        for name, case in CASES.items()
    ]


@pytest.mark.parametrize("case", _params())
async def test_damaged_fragment_is_found_repaired_and_restore_is_exact(
    case: Case, federation: FederationFactory, fault_rng: random.Random, tmp_path: Path
) -> None:
    fed = await federation(case.sites, k=case.k, n=case.n, maintenance=MAINTENANCE)
    owner = fed.site("site-a")
    sent: list[SynthInstance] = []
    for number in range(case.studies):
        instances = study(seed=fault_rng.randrange(10**6), patient=number)
        await push(owner, instances, tmp_path / f"pacs-{number}")
        sent += instances
    await wait_backed_up(fed, owner, {i.study_instance_uid for i in sent}, records=case.studies)
    scene = Scene(fed, owner, sent, ledger(owner))
    assert len(scene.placed) == case.n * case.studies, scene.placed

    damaged = case.damage(scene, fault_rng)
    print(f"damaged: {damaged}")
    started = time.monotonic()
    try:
        await eventually(lambda: healed(scene, damaged), HEAL_WAIT, "damage found and repaired")
    except AssertionError as error:
        status = site_status(owner.config)["audits"]
        raise AssertionError(f"{error}\n  ledger {ledger(owner)}\n  audits {status}") from None
    print(f"found, repaired and collected in {time.monotonic() - started:.1f} s")
    repairs = site_status(owner.config)["audits"]["repairs"]
    assert repairs["shares_placed"] >= len(damaged), repairs
    assert len(ledger(owner)) == case.n * case.studies  # back to n, nothing extra counted

    kept = await lose_owner(fed, owner, tmp_path)
    report, restored = await recover(kept, tmp_path, peers=tuple(owner.plan.trusted))
    assert report.exit_code == 0 and not report.unrecoverable, report.summary()
    assert_restored(Manifest.of_instances(sent), restored)
    assert_no_phi_on_untrusted(fed, owner, phi_strings(sent))
