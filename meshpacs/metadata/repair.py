"""The repair ledger: which bundles have too few good shares, and what repairs did.

A share counts as **good** when its placement's last audit verdict is ``unaudited`` or
``ok`` and its holder is not **lost**; each site counts once (see
:func:`~meshpacs.metadata.ledger.distinct_shares`). A site is lost once audits have found
it unreachable and it has not answered for ``grace`` seconds (counted from its last
answer, or from its first placement when it never answered one)::

    good shares           bundle state     what happens
    n                     stored           nothing
    threshold .. n-1      degraded         nothing yet (the study shows degraded)
    below threshold       degraded         repaired back to n
    below k               degraded         repaired when k come back; restore would fail

The repair **threshold** sits strictly between k and n where there is room
(:func:`repair_threshold`). A repair's new placements join ``placements``; the placements
they replace move to ``superseded`` until their holders delete the fragment, so a lost site
that comes back gives its space back instead of keeping a surplus copy for ever.

Plain functions over a ``sqlite3`` connection, as the rest of the ledger; rows are named
by row id, never by a UID.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from meshpacs.metadata.ledger import Placement, distinct_shares

__all__ = [
    "BundleShares",
    "RepairSummary",
    "Superseded",
    "bundle_shares",
    "bundles_below",
    "forget_superseded",
    "good_shares",
    "lost_sites",
    "reassess",
    "record_repair",
    "record_repaired_share",
    "repair_summary",
    "repair_threshold",
    "superseded_due",
]

_GOOD_VERDICTS = ("unaudited", "ok")
_SETTLED = ("stored", "degraded")
MAX_DETAIL = 300


def repair_threshold(k: int, n: int, configured: int | None = None) -> int:
    """Fewer good shares than this and a k-of-n bundle is repaired.

    The default is halfway between k and n, rounded up (4-of-7: 6; 3-of-5: 4), so one
    lost share waits for a second before the mesh spends traffic, and a repair still has
    spare shares to read from. A configured value is kept within k+1 .. n; where no
    integer lies strictly between k and n (n = k + 1) any loss is repaired.
    """
    if n - k < 2:
        return n
    wanted = k + (n - k + 1) // 2 if configured is None else configured
    return min(max(wanted, k + 1), n)


@dataclass(frozen=True)
class BundleShares:
    """A settled bundle, its good shares and the placements that no longer count."""

    bundle_ref: int
    bundle_id: bytes
    study_ref: int | None
    k: int
    n: int
    segment_size: int
    length: int
    set_hash: bytes
    state: str
    good: Mapping[int, Placement]  # share -> its good placement, one per site
    bad: tuple[Placement, ...]  # failed, missing, or on a lost site

    @property
    def missing_shares(self) -> list[int]:
        return [share for share in range(self.n) if share not in self.good]


@dataclass(frozen=True)
class Superseded:
    """A placement a repair replaced: its holder should delete the fragment."""

    bundle_ref: int
    share: int
    holder_site: str
    fragment_id: str
    superseded_at: float


@dataclass(frozen=True)
class RepairSummary:
    """What ``status`` shows of repair."""

    repairs: int = 0  # attempts that placed at least one share
    failed: int = 0  # attempts that placed none
    shares_placed: int = 0
    last_repair_at: float | None = None
    last_outcome: str | None = None
    below_n: int = 0  # settled bundles with fewer than n good shares
    superseded: int = 0  # replaced fragments still to delete at their holders


def lost_sites(db: sqlite3.Connection, now: float, grace: float) -> set[str]:
    """Sites audits found unreachable that have not answered for ``grace`` seconds."""
    rows = db.execute(
        "SELECT r.site_id FROM peer_reputation r WHERE r.unreachable_at IS NOT NULL"
        " AND COALESCE(r.last_seen_at, (SELECT MIN(p.stored_at) FROM placements p"
        "   WHERE p.holder_site = r.site_id), r.unreachable_at) < ?",
        (now - grace,),
    ).fetchall()
    return {str(row[0]) for row in rows}


def _settled_bundles(
    db: sqlite3.Connection, lost: set[str], refs: Sequence[int] | None = None
) -> list[BundleShares]:
    where = "state IN (?, ?) AND length IS NOT NULL AND set_hash IS NOT NULL"
    params: list[object] = list(_SETTLED)
    if refs is not None:
        where += f" AND id IN ({', '.join('?' for _ in refs)})"
        params += refs
    bundles = db.execute(
        "SELECT id, bundle_id, study_ref, k, n, segment_size, length, set_hash, state"
        f" FROM bundles WHERE {where} ORDER BY id",
        params,
    ).fetchall()
    by_bundle: dict[int, list[tuple[Placement, str]]] = {int(b[0]): [] for b in bundles}
    rows = db.execute(
        "SELECT p.bundle_ref, p.share, p.holder_site, p.fragment_id, p.stored_at, p.verdict"
        f" FROM placements p JOIN bundles b ON b.id = p.bundle_ref WHERE b.{where}"
        " ORDER BY p.bundle_ref, p.share, p.holder_site",
        params,
    ).fetchall()
    for r in rows:
        placement = Placement(int(r[1]), str(r[2]), str(r[3]), float(r[4]))
        if int(r[0]) in by_bundle:  # outside a transaction, a bundle may settle in between
            by_bundle[int(r[0])].append((placement, str(r[5])))
    return [_shares(b, by_bundle[int(b[0])], lost) for b in bundles]


def _shares(
    row: Sequence[object], placed: list[tuple[Placement, str]], lost: set[str]
) -> BundleShares:
    n = int(row[4])  # type: ignore[call-overload]
    good, bad = good_shares(placed, n, lost)
    return BundleShares(
        bundle_ref=int(row[0]),  # type: ignore[call-overload]
        bundle_id=bytes(row[1]),  # type: ignore[call-overload]
        study_ref=None if row[2] is None else int(row[2]),  # type: ignore[call-overload]
        k=int(row[3]),  # type: ignore[call-overload]
        n=n,
        segment_size=int(row[5]),  # type: ignore[call-overload]
        length=int(row[6]),  # type: ignore[call-overload]
        set_hash=bytes(row[7]),  # type: ignore[call-overload]
        state=str(row[8]),
        good=good,
        bad=bad,
    )


def good_shares(
    placed: Sequence[tuple[Placement, str]], n: int, lost: AbstractSet[str]
) -> tuple[dict[int, Placement], tuple[Placement, ...]]:
    """A bundle's good shares (share -> placement, one per site) and the placements that
    do not count, from its ``(placement, last verdict)`` pairs in ``placements`` order."""
    counted = [
        p
        for p, verdict in placed
        if verdict in _GOOD_VERDICTS and p.holder_site not in lost and 0 <= p.share < n
    ]
    chosen = distinct_shares(counted)
    good = {p.share: p for p in counted if chosen.get(p.share) == p.holder_site}
    bad = tuple(p for p, _ in placed if good.get(p.share) != p)
    return good, bad


def reassess(
    db: sqlite3.Connection, lost: set[str], now: float, refs: Sequence[int] | None = None
) -> list[BundleShares]:
    """Mark each settled bundle (or those listed) stored with n good shares, else degraded.

    A bundle going back to stored keeps the ``stored_at`` it had, so the retention
    setting does not count from its repair. Returns the bundles as they are now.
    """
    bundles = _settled_bundles(db, lost, refs)
    now_state = []
    for bundle in bundles:
        state = "stored" if len(bundle.good) >= bundle.n else "degraded"
        if state != bundle.state:
            db.execute(
                "UPDATE bundles SET state = ?, stored_at = COALESCE(stored_at, ?) WHERE id = ?",
                (state, now, bundle.bundle_ref),
            )
        now_state.append(dataclasses.replace(bundle, state=state))
    return now_state


def bundles_below(
    bundles: Iterable[BundleShares],
    threshold: int | None = None,
    limit: int = 100,
    urgent: AbstractSet[str] = frozenset(),
) -> list[BundleShares]:
    """Those of ``bundles`` with fewer good shares than their repair threshold, neediest first.

    Bundles with fewer than k good shares come last: nothing can repair them until shares
    come back, and they must not starve those that can be repaired now. A bundle with a
    share at an ``urgent`` site (one leaving the federation) is due whatever its count:
    that share is going.
    """
    below = [
        b
        for b in bundles
        if len(b.good) < repair_threshold(b.k, b.n, threshold)
        or (b.missing_shares and any(p.holder_site in urgent for p in b.bad))
    ]
    below.sort(key=lambda b: (len(b.good) < b.k, len(b.good) - b.k, b.bundle_ref))
    return below[:limit]


def bundle_shares(db: sqlite3.Connection, bundle_ref: int, lost: set[str]) -> BundleShares | None:
    """One settled bundle's shares now; None when it is not settled (or not there)."""
    found = _settled_bundles(db, lost, [bundle_ref])
    return found[0] if found else None


def record_repaired_share(
    db: sqlite3.Connection,
    bundle_ref: int,
    share: int,
    site: str,
    fragment: str,
    *,
    lost: set[str],
    now: float,
) -> None:
    """A repair placed ``share`` at ``site``: it counts from now, what it replaces does not.

    Every placement of the share that is not good moves to ``superseded``. Recorded share
    by share as holders acknowledge, so a stop mid-repair forgets nothing placed.
    """
    before = bundle_shares(db, bundle_ref, lost)
    if before is None:
        raise KeyError(f"bundle row {bundle_ref} is not settled")
    for old in before.bad:
        if old.share == share and old.holder_site != site:
            _supersede(db, bundle_ref, old, now)
    db.execute(
        "INSERT INTO placements (bundle_ref, share, holder_site, fragment_id, stored_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (bundle_ref, share, holder_site)"
        " DO UPDATE SET fragment_id = excluded.fragment_id,"
        " stored_at = excluded.stored_at, verdict = 'unaudited', audited_at = NULL",
        (bundle_ref, share, site, fragment, now),
    )
    # A site that takes a share again no longer has a copy to delete.
    db.execute(
        "DELETE FROM superseded WHERE bundle_ref = ? AND share = ? AND holder_site = ?",
        (bundle_ref, share, site),
    )


def record_repair(
    db: sqlite3.Connection,
    bundle_ref: int,
    *,
    regenerated: int,
    placed: int,
    lost: set[str],
    now: float,
    detail: str = "",
) -> BundleShares:
    """Log one repair attempt and mark the bundle stored or degraded by its good shares."""
    after = reassess(db, lost, now, [bundle_ref])
    if not after:
        raise KeyError(f"bundle row {bundle_ref} is not settled")
    if not placed:
        outcome = "failed"
    elif len(after[0].good) >= after[0].n:
        outcome = "repaired"
    else:
        outcome = "partial"
    db.execute(
        "INSERT INTO repairs (bundle_ref, at, regenerated, placed, outcome, detail)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (bundle_ref, now, regenerated, placed, outcome, detail[:MAX_DETAIL]),
    )
    return after[0]


def _supersede(db: sqlite3.Connection, bundle_ref: int, old: Placement, now: float) -> None:
    db.execute(
        "INSERT INTO superseded (bundle_ref, share, holder_site, fragment_id, superseded_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (bundle_ref, old.share, old.holder_site, old.fragment_id, now),
    )
    db.execute(
        "DELETE FROM placements WHERE bundle_ref = ? AND share = ? AND holder_site = ?",
        (bundle_ref, old.share, old.holder_site),
    )


def superseded_due(db: sqlite3.Connection, limit: int = 100) -> list[Superseded]:
    """Replaced fragments to delete at their holders, oldest first.

    Lost sites are included: a site that comes back is noticed by its answer to the
    deletion (audits no longer reach a site whose placements were all replaced).
    """
    rows = db.execute(
        "SELECT bundle_ref, share, holder_site, fragment_id, superseded_at FROM superseded"
        " ORDER BY superseded_at, bundle_ref, share LIMIT ?",
        (limit,),
    ).fetchall()
    return [Superseded(int(r[0]), int(r[1]), str(r[2]), str(r[3]), float(r[4])) for r in rows]


def forget_superseded(db: sqlite3.Connection, item: Superseded) -> None:
    """Its holder deleted the fragment (or holds none): nothing left to clean up."""
    db.execute(
        "DELETE FROM superseded WHERE bundle_ref = ? AND share = ? AND holder_site = ?",
        (item.bundle_ref, item.share, item.holder_site),
    )


def repair_summary(db: sqlite3.Connection, lost: set[str]) -> RepairSummary:
    totals = db.execute(
        "SELECT COALESCE(SUM(outcome != 'failed'), 0), COALESCE(SUM(outcome = 'failed'), 0),"
        " COALESCE(SUM(placed), 0) FROM repairs"
    ).fetchone()
    last = db.execute(
        "SELECT at, outcome FROM repairs ORDER BY at DESC, id DESC LIMIT 1"
    ).fetchone()
    below_n = sum(1 for b in _settled_bundles(db, lost) if len(b.good) < b.n)
    superseded = int(db.execute("SELECT COUNT(*) FROM superseded").fetchone()[0])
    return RepairSummary(
        repairs=int(totals[0]),
        failed=int(totals[1]),
        shares_placed=int(totals[2]),
        last_repair_at=None if last is None else float(last[0]),
        last_outcome=None if last is None else str(last[1]),
        below_n=below_n,
        superseded=superseded,
    )
