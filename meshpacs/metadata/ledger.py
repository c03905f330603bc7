"""The backup ledger: which instances went into which bundle, and where its shares are.

A study is backed up as one or more bundles. The ledger walks each bundle through::

    planned  --encode-->  encoded  --n shares placed-->  stored
                                   --happy..n-1 placed-->  degraded (stored, repair wanted)

and a study is PROTECTED once every instance it holds is in a bundle that is stored or
degraded. Each step is one transaction, so a node that stops anywhere resumes from the
ledger without losing or repeating work:

* ``planned``: the bundle's members, random bundle ID and wrapped data key are recorded
  *before* anything is encoded, so a re-run encodes the same bytes with the same key
  (the codec is deterministic given both) and gets the same fragments and set hash.
* ``encoded``: length and set hash are known; placements may be recorded one by one as
  partners acknowledge their fragment, so a restart uploads only the missing shares.

Every function here takes a plain ``sqlite3.Connection`` (the catalog runs them in its
own thread, see :meth:`~meshpacs.metadata.catalog.Catalog.write`) and is synchronous: one
function, one transaction, no event loop.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshpacs.metadata.records import StudyState

__all__ = [
    "BundleMember",
    "BundlePlan",
    "BundleRow",
    "Placement",
    "ProtectionCounts",
    "bundle",
    "bundle_members",
    "distinct_shares",
    "encoded_bundles",
    "leased_fragments",
    "mark_pruned",
    "next_queued_study",
    "placements",
    "plan_bundles",
    "plan_unplaced",
    "planned_bundles",
    "protection_counts",
    "prunable_instances",
    "queued_studies",
    "record_encoded",
    "record_placement",
    "settle_bundle",
    "settle_study",
]

_STORED_STATES = ("stored", "degraded")


@dataclass(frozen=True)
class BundlePlan:
    """How to cut a study into bundles: coding parameters and the size of one bundle."""

    k: int
    n: int
    segment_size: int
    max_bundle_bytes: int
    max_bundle_instances: int = 10_000

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n <= 256:
            raise ValueError(f"need 1 <= k <= n <= 256, got k={self.k} n={self.n}")
        if self.max_bundle_bytes <= 0 or self.max_bundle_instances <= 0:
            raise ValueError("bundle caps must be positive")


@dataclass(frozen=True)
class BundleRow:
    """A bundle as the ledger holds it (``length``/``set_hash`` are None until encoded)."""

    ref: int
    bundle_id: bytes
    study_ref: int | None
    k: int
    n: int
    segment_size: int
    length: int | None
    set_hash: bytes | None
    wrapped_key: bytes
    state: str


@dataclass(frozen=True)
class BundleMember:
    """One instance of a bundle, at its position in the bundle's index."""

    position: int
    instance_ref: int
    sop_instance_uid: str
    size: int
    sha256: bytes


@dataclass(frozen=True)
class Placement:
    """Share ``share`` of a bundle is held by ``holder_site`` under ``fragment_id``."""

    share: int
    holder_site: str
    fragment_id: str
    stored_at: float


@dataclass(frozen=True)
class ProtectionCounts:
    """Studies by backup outcome, as ``meshpacs status`` reports them."""

    total: int
    protected: int
    degraded: int
    unprotected: int


_BUNDLE_COLUMNS = (
    "id, bundle_id, study_ref, k, n, segment_size, length, set_hash, wrapped_key, state"
)


def _bundle(row: Sequence[object]) -> BundleRow:
    return BundleRow(
        ref=int(row[0]),  # type: ignore[call-overload]
        bundle_id=bytes(row[1]),  # type: ignore[call-overload]
        study_ref=None if row[2] is None else int(row[2]),  # type: ignore[call-overload]
        k=int(row[3]),  # type: ignore[call-overload]
        n=int(row[4]),  # type: ignore[call-overload]
        segment_size=int(row[5]),  # type: ignore[call-overload]
        length=None if row[6] is None else int(row[6]),  # type: ignore[call-overload]
        set_hash=None if row[7] is None else bytes(row[7]),  # type: ignore[call-overload]
        wrapped_key=bytes(row[8]),  # type: ignore[call-overload]
        state=str(row[9]),
    )


def next_queued_study(db: sqlite3.Connection) -> int | None:
    """The row id of the study that has waited longest in the backup queue."""
    row = db.execute("SELECT study_ref FROM backup_queue ORDER BY queued_at, id LIMIT 1").fetchone()
    return None if row is None else int(row[0])


def queued_studies(db: sqlite3.Connection) -> list[int]:
    """Row ids of every study in the backup queue, longest waiting first."""
    rows = db.execute("SELECT study_ref FROM backup_queue ORDER BY queued_at, id").fetchall()
    return [int(r[0]) for r in rows]


def _unbundled(db: sqlite3.Connection, study_ref: int) -> list[tuple[int, int]]:
    """(instance row id, size) of the study's instances in no bundle yet, in study order."""
    rows = db.execute(
        "SELECT i.id, i.size FROM instances i JOIN series s ON i.series_ref = s.id"
        " WHERE s.study_ref = ? AND i.id NOT IN (SELECT instance_ref FROM bundle_members)"
        " ORDER BY s.number IS NULL, s.number, s.id, i.instance_number IS NULL,"
        " i.instance_number, i.id",
        (study_ref,),
    ).fetchall()
    return [(int(r[0]), int(r[1])) for r in rows]


def _cut(instances: Sequence[tuple[int, int]], plan: BundlePlan) -> list[list[int]]:
    """Consecutive groups under the caps; an instance over the byte cap gets a bundle alone."""
    groups: list[list[int]] = []
    current: list[int] = []
    size = 0
    for ref, length in instances:
        full = size + length > plan.max_bundle_bytes or len(current) >= plan.max_bundle_instances
        if current and full:
            groups.append(current)
            current, size = [], 0
        current.append(ref)
        size += length
    if current:
        groups.append(current)
    return groups


def plan_bundles(
    db: sqlite3.Connection,
    study_ref: int,
    plan: BundlePlan,
    new_bundle: Callable[[], tuple[bytes, bytes]],
    now: float,
) -> list[int]:
    """Record bundles for the study's unbundled instances; returns the new bundle row ids.

    ``new_bundle`` returns a fresh ``(bundle_id, wrapped_data_key)``: the key is made and
    wrapped by the caller, so no plain data key ever reaches the catalog.
    """
    created: list[int] = []
    for group in _cut(_unbundled(db, study_ref), plan):
        bundle_id, wrapped_key = new_bundle()
        cursor = db.execute(
            "INSERT INTO bundles (bundle_id, study_ref, k, n, segment_size, wrapped_key,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (bundle_id, study_ref, plan.k, plan.n, plan.segment_size, wrapped_key, now),
        )
        ref = cursor.lastrowid
        assert ref is not None  # an INSERT always sets it
        db.executemany(
            "INSERT INTO bundle_members (bundle_ref, position, instance_ref) VALUES (?, ?, ?)",
            [(ref, position, instance) for position, instance in enumerate(group)],
        )
        created.append(ref)
    return created


def plan_unplaced(
    db: sqlite3.Connection,
    plan: BundlePlan,
    new_bundle: Callable[[], tuple[bytes, bytes]],
    now: float,
    received_before: float,
) -> list[int]:
    """Bundles (of no study) for instances kept unparsed, received before ``received_before``.

    A dataset the node could not parse is still the PACS's data, kept byte for byte: it is
    backed up like any other, in bundles of its own, once nothing has arrived for a while.
    """
    rows = db.execute(
        "SELECT id, size FROM instances WHERE series_ref IS NULL AND received_at <= ?"
        " AND id NOT IN (SELECT instance_ref FROM bundle_members) ORDER BY id",
        (received_before,),
    ).fetchall()
    created: list[int] = []
    for group in _cut([(int(r[0]), int(r[1])) for r in rows], plan):
        bundle_id, wrapped_key = new_bundle()
        cursor = db.execute(
            "INSERT INTO bundles (bundle_id, study_ref, k, n, segment_size, wrapped_key,"
            " created_at) VALUES (?, NULL, ?, ?, ?, ?, ?)",
            (bundle_id, plan.k, plan.n, plan.segment_size, wrapped_key, now),
        )
        ref = cursor.lastrowid
        assert ref is not None
        db.executemany(
            "INSERT INTO bundle_members (bundle_ref, position, instance_ref) VALUES (?, ?, ?)",
            [(ref, position, instance) for position, instance in enumerate(group)],
        )
        created.append(ref)
    return created


def planned_bundles(db: sqlite3.Connection) -> list[BundleRow]:
    """Bundles recorded but not yet encoded, oldest first (work left by a stop)."""
    rows = db.execute(
        f"SELECT {_BUNDLE_COLUMNS} FROM bundles WHERE state = 'planned' ORDER BY id"
    ).fetchall()
    return [_bundle(r) for r in rows]


def encoded_bundles(db: sqlite3.Connection) -> list[BundleRow]:
    """Bundles encoded but not yet stored at enough sites, oldest first."""
    rows = db.execute(
        f"SELECT {_BUNDLE_COLUMNS} FROM bundles WHERE state = 'encoded' ORDER BY id"
    ).fetchall()
    return [_bundle(r) for r in rows]


def bundle(db: sqlite3.Connection, ref: int) -> BundleRow:
    row = db.execute(f"SELECT {_BUNDLE_COLUMNS} FROM bundles WHERE id = ?", (ref,)).fetchone()
    if row is None:
        raise KeyError(f"no bundle row {ref}")
    return _bundle(row)


def bundle_members(db: sqlite3.Connection, bundle_ref: int) -> list[BundleMember]:
    """The bundle's instances in index order."""
    rows = db.execute(
        "SELECT m.position, i.id, i.sop_instance_uid, i.size, i.sha256 FROM bundle_members m"
        " JOIN instances i ON m.instance_ref = i.id WHERE m.bundle_ref = ? ORDER BY m.position",
        (bundle_ref,),
    ).fetchall()
    return [BundleMember(int(r[0]), int(r[1]), str(r[2]), int(r[3]), bytes(r[4])) for r in rows]


def record_encoded(db: sqlite3.Connection, bundle_ref: int, length: int, set_hash: bytes) -> None:
    """The bundle was encoded: it now has a length and a set hash to check fragments by."""
    cursor = db.execute(
        "UPDATE bundles SET length = ?, set_hash = ?, state = 'encoded'"
        " WHERE id = ? AND state = 'planned'",
        (length, set_hash, bundle_ref),
    )
    if cursor.rowcount != 1:
        raise KeyError(f"bundle row {bundle_ref} is not waiting to be encoded")


def record_placement(
    db: sqlite3.Connection,
    bundle_ref: int,
    share: int,
    holder_site: str,
    fragment_id: str,
    now: float,
) -> None:
    """A partner acknowledged (durably) share ``share``; recording it twice is harmless."""
    db.execute(
        "INSERT INTO placements (bundle_ref, share, holder_site, fragment_id, stored_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (bundle_ref, share, holder_site, fragment_id, now),
    )


def placements(db: sqlite3.Connection, bundle_ref: int) -> list[Placement]:
    rows = db.execute(
        "SELECT share, holder_site, fragment_id, stored_at FROM placements"
        " WHERE bundle_ref = ? ORDER BY share, holder_site",
        (bundle_ref,),
    ).fetchall()
    return [Placement(int(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]


def leased_fragments(db: sqlite3.Connection) -> dict[str, list[str]]:
    """holder site -> the fragment IDs placed there that the site still counts on.

    Replaced placements (a repair's ``superseded`` rows) are not here: their leases are
    left to run out, so a holder the deletion never reached frees the room in the end.
    """
    held: dict[str, list[str]] = {}
    for site, fragment in db.execute(
        "SELECT holder_site, fragment_id FROM placements ORDER BY holder_site, fragment_id"
    ):
        held.setdefault(str(site), []).append(str(fragment))
    return held


def distinct_shares(placed: Sequence[Placement]) -> dict[int, str]:
    """share -> site, each share and each site counted once (a site holding two shares of
    one bundle is one loss away from losing both), in ``placements`` order."""
    chosen: dict[int, str] = {}
    for placement in placed:
        if placement.share not in chosen and placement.holder_site not in chosen.values():
            chosen[placement.share] = placement.holder_site
    return chosen


def _placed_shares(db: sqlite3.Connection, bundle_ref: int) -> int:
    return len(distinct_shares(placements(db, bundle_ref)))


def settle_bundle(db: sqlite3.Connection, bundle_ref: int, happy: int, now: float) -> str:
    """Mark an encoded bundle stored (n shares placed) or degraded (at least ``happy``).

    Returns the bundle's state afterwards; below ``happy`` it stays ``encoded`` and the
    pipeline places the missing shares elsewhere.
    """
    row = bundle(db, bundle_ref)
    placed = _placed_shares(db, bundle_ref)
    if placed >= row.n:
        state = "stored"
    elif placed >= happy and row.state != "planned":
        state = "degraded"
    else:
        return row.state
    if state != row.state:
        # stored_at: when the bundle reached this state (retention counts from "stored").
        db.execute(
            "UPDATE bundles SET state = ?, stored_at = ? WHERE id = ?", (state, now, bundle_ref)
        )
    return state


def settle_study(db: sqlite3.Connection, study_ref: int) -> bool:
    """PROTECTED, and out of the queue, once every instance is in a stored bundle.

    Leaves a study alone when it went back to RECEIVING meanwhile (a late instance):
    it will be queued again once quiet, and only the new instances bundled.
    """
    if _unbundled(db, study_ref):
        return False
    waiting = db.execute(
        "SELECT COUNT(*) FROM bundles WHERE study_ref = ? AND state NOT IN (?, ?)",
        (study_ref, *_STORED_STATES),
    ).fetchone()
    if int(waiting[0]):
        return False
    cursor = db.execute(
        "UPDATE studies SET state = ? WHERE id = ? AND state IN (?, ?)",
        (StudyState.PROTECTED.value, study_ref, StudyState.STABLE.value, StudyState.QUEUED.value),
    )
    db.execute("DELETE FROM backup_queue WHERE study_ref = ?", (study_ref,))
    return cursor.rowcount == 1


def protection_counts(db: sqlite3.Connection) -> ProtectionCounts:
    """Studies protected, degraded (protected, but some bundle below n) and unprotected."""
    row = db.execute(
        "SELECT COUNT(*),"
        " COALESCE(SUM(state = ?), 0),"
        " COALESCE(SUM(state = ? AND EXISTS (SELECT 1 FROM bundles b"
        "   WHERE b.study_ref = studies.id AND b.state = 'degraded')), 0)"
        " FROM studies",
        (StudyState.PROTECTED.value, StudyState.PROTECTED.value),
    ).fetchone()
    total, protected, degraded = int(row[0]), int(row[1]), int(row[2])
    return ProtectionCounts(total, protected - degraded, degraded, total - protected)


def prunable_instances(
    db: sqlite3.Connection, protected_before: float, limit: int = 1000
) -> list[tuple[int, bytes]]:
    """(row id, sha256) of local instances the retention setting lets go.

    Only instances in a bundle stored at all n sites (not merely degraded) of a study that
    is PROTECTED and received nothing since ``protected_before``: a local copy is the one
    thing that still covers a bundle below n.
    """
    rows = db.execute(
        "SELECT i.id, i.sha256 FROM instances i"
        " JOIN bundle_members m ON m.instance_ref = i.id"
        " JOIN bundles b ON b.id = m.bundle_ref"
        " JOIN studies s ON s.id = b.study_ref"
        " WHERE i.pruned_at IS NULL AND b.state = 'stored' AND s.state = ?"
        " AND s.last_received <= ? AND b.stored_at <= ?"
        " ORDER BY i.id LIMIT ?",
        (StudyState.PROTECTED.value, protected_before, protected_before, limit),
    ).fetchall()
    return [(int(r[0]), bytes(r[1])) for r in rows]


def mark_pruned(db: sqlite3.Connection, row_ids: Sequence[int], now: float) -> None:
    """Record that these instances' files are about to go (before they go: a crash in
    between leaves a file nobody needs, never a row that looks lost)."""
    db.executemany(
        "UPDATE instances SET pruned_at = ? WHERE id = ? AND pruned_at IS NULL",
        [(now, row) for row in row_ids],
    )
