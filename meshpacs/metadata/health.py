"""The owner's audit ledger: challenges kept per share, verdicts per placement, peer records.

At upload the owner records, per share of each bundle, a challenge set (its answers
computed from the bytes as they streamed, :mod:`meshpacs.audit.tap`), shuffled. An audit
then takes the placement audited longest ago (never audited first) whose share has an
unspent challenge, **spends** that challenge in the same transaction (a nonce is shown to
a holder at most once, even if the node stops right after asking), asks the holder, and
records the verdict and the peer's new reputation together::

    next_audit      ->  AuditTarget (challenge spent)
    record_audit    ->  placement verdict + audited_at, peer_reputation updated

A share whose challenges are all spent is no longer audited until repair re-encodes it
(its placements keep their last verdict). Placements with a failed or missing verdict
are not audited again: the repair that replaces them is what they wait for.

Every function takes a plain ``sqlite3.Connection`` and is one transaction, as in
:mod:`meshpacs.metadata.ledger`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meshpacs.audit.challenge import ExpectedAnswer, parse_challenge_set
from meshpacs.audit.reputation import DEFAULT_HALF_LIFE, Outcome, Reputation

__all__ = [
    "AuditTarget",
    "PeerRecord",
    "VerdictCounts",
    "leaving_sites",
    "next_audit",
    "peer_records",
    "record_audit",
    "record_challenges",
    "record_corrupt_report",
    "record_leaving",
    "record_seen",
    "shunned_sites",
    "verdict_counts",
]


@dataclass(frozen=True)
class AuditTarget:
    """One placement to audit now, with the challenge spent on it."""

    bundle_ref: int
    share: int
    holder_site: str
    fragment_id: str
    expected: ExpectedAnswer
    remaining: int  # challenges left for this share after this one


@dataclass(frozen=True)
class PeerRecord:
    """A peer as this site's audits have found it."""

    site_id: str
    reputation: Reputation
    passed: int
    failed: int
    last_audit_at: float | None
    last_failure_at: float | None
    last_seen_at: float | None
    unreachable_at: float | None
    leaving_at: float | None = None


@dataclass(frozen=True)
class VerdictCounts:
    """Placements by their last audit verdict, for ``meshpacs status``."""

    unaudited: int = 0
    ok: int = 0
    failed: int = 0
    missing: int = 0
    exhausted: int = 0  # placements whose share has no challenge left


def record_challenges(db: sqlite3.Connection, bundle_ref: int, sets: Mapping[int, bytes]) -> None:
    """Keep each share's challenge set; a share that already has one keeps it."""
    db.executemany(
        "INSERT INTO audit_sets (bundle_ref, share, challenges, total) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        [(bundle_ref, share, blob, _count(blob)) for share, blob in sets.items()],
    )


def next_audit(
    db: sqlite3.Connection, *, unreachable_since: float, audited_before: float | None = None
) -> AuditTarget | None:
    """The placement audited longest ago with a challenge left; spends that challenge.

    Holders found unreachable after ``unreachable_since`` are left out: asking again so
    soon would only spend a challenge on a timeout. With ``audited_before``, so is every
    placement audited since then (never audited ones always qualify): a share's
    challenges are spread over time instead of spent as fast as the budget allows.
    """
    row = db.execute(
        "SELECT p.bundle_ref, p.share, p.holder_site, p.fragment_id, a.challenges, a.spent,"
        " a.total FROM placements p JOIN audit_sets a"
        " ON a.bundle_ref = p.bundle_ref AND a.share = p.share"
        " JOIN bundles b ON b.id = p.bundle_ref"
        " WHERE p.verdict IN ('unaudited', 'ok') AND a.spent < a.total"
        " AND b.state IN ('encoded', 'stored', 'degraded')"
        " AND p.holder_site NOT IN (SELECT site_id FROM peer_reputation"
        "   WHERE unreachable_at > ? OR leaving_at IS NOT NULL)"
        " AND (p.audited_at IS NULL OR p.audited_at < ?)"
        " ORDER BY p.audited_at, p.bundle_ref, p.share LIMIT 1",  # NULL (never) sorts first
        (unreachable_since, float("inf") if audited_before is None else audited_before),
    ).fetchone()
    if row is None:
        return None
    bundle_ref, share, site, fragment, blob, spent, total = row
    expected = parse_challenge_set(bytes(blob))[int(spent)]
    db.execute(
        "UPDATE audit_sets SET spent = spent + 1 WHERE bundle_ref = ? AND share = ?",
        (bundle_ref, share),
    )
    return AuditTarget(
        int(bundle_ref), int(share), str(site), str(fragment), expected, int(total) - int(spent) - 1
    )


def record_audit(
    db: sqlite3.Connection,
    target: AuditTarget,
    outcome: str,
    now: float,
    *,
    latency: float | None = None,
    half_life: float = DEFAULT_HALF_LIFE,
) -> Reputation:
    """The audit's verdict on its placement and on the peer; returns the peer's record.

    An unreachable holder says nothing about the fragment: the placement keeps its verdict
    (its audit time moves on, so the others' turn comes first) and only the peer's
    reputation and ``unreachable_at`` change.
    """
    if outcome == Outcome.UNREACHABLE:
        db.execute(
            "UPDATE placements SET audited_at = ?"
            " WHERE bundle_ref = ? AND share = ? AND holder_site = ?",
            (now, target.bundle_ref, target.share, target.holder_site),
        )
    else:
        db.execute(
            "UPDATE placements SET verdict = ?, audited_at = ?"
            " WHERE bundle_ref = ? AND share = ? AND holder_site = ?",
            (outcome, now, target.bundle_ref, target.share, target.holder_site),
        )
    return _update_peer(db, target.holder_site, outcome, now, latency, half_life)


def _update_peer(
    db: sqlite3.Connection,
    site: str,
    outcome: str,
    now: float,
    latency: float | None,
    half_life: float,
) -> Reputation:
    record = _peer(db, site)
    before = record.reputation if record else Reputation(updated_at=now)
    after = before.recorded(outcome, now, latency=latency, half_life=half_life)
    passed = outcome == Outcome.PASSED
    failed = outcome in (Outcome.FAILED, Outcome.MISSING)
    reached = outcome != Outcome.UNREACHABLE
    db.execute(
        "INSERT INTO peer_reputation (site_id, successes, failures, latency_seconds,"
        " updated_at, passed, failed, last_audit_at, last_failure_at, last_seen_at,"
        " unreachable_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (site_id) DO UPDATE SET successes = excluded.successes,"
        " failures = excluded.failures, latency_seconds = excluded.latency_seconds,"
        " updated_at = excluded.updated_at, passed = passed + excluded.passed,"
        " failed = failed + excluded.failed,"
        " last_audit_at = COALESCE(excluded.last_audit_at, last_audit_at),"
        " last_failure_at = COALESCE(excluded.last_failure_at, last_failure_at),"
        " last_seen_at = COALESCE(excluded.last_seen_at, last_seen_at),"
        " unreachable_at = excluded.unreachable_at",
        (
            site,
            after.successes,
            after.failures,
            after.latency_seconds,
            after.updated_at,
            int(passed),
            int(failed),
            now if reached else None,
            now if failed else None,
            now if reached else None,
            None if reached else now,
        ),
    )
    return after


_PEER_COLUMNS = (
    "site_id, successes, failures, latency_seconds, updated_at, passed, failed,"
    " last_audit_at, last_failure_at, last_seen_at, unreachable_at, leaving_at"
)


def _peer_record(row: Sequence[object]) -> PeerRecord:
    def when(value: object) -> float | None:
        return None if value is None else float(value)  # type: ignore[arg-type]

    reputation = Reputation(
        float(row[1]),  # type: ignore[arg-type]
        float(row[2]),  # type: ignore[arg-type]
        when(row[3]),
        float(row[4]),  # type: ignore[arg-type]
    )
    return PeerRecord(
        str(row[0]),
        reputation,
        int(row[5]),  # type: ignore[call-overload]
        int(row[6]),  # type: ignore[call-overload]
        when(row[7]),
        when(row[8]),
        when(row[9]),
        when(row[10]),
        when(row[11]),
    )


def _peer(db: sqlite3.Connection, site: str) -> PeerRecord | None:
    row = db.execute(
        f"SELECT {_PEER_COLUMNS} FROM peer_reputation WHERE site_id = ?", (site,)
    ).fetchone()
    return None if row is None else _peer_record(row)


def record_corrupt_report(
    db: sqlite3.Connection, holder_site: str, fragment_id: str, now: float
) -> bool:
    """The holder says its copy of our fragment failed its scrub: the placement fails now,
    without waiting for an audit to find it, so the repairer rebuilds the share.

    Whether such a placement exists, still counted good. An honest report of rot is no
    mark against the holder's reputation (audits judge the holder); a false one only
    costs the reporter its own share.
    """
    cursor = db.execute(
        "UPDATE placements SET verdict = 'failed', audited_at = ?"
        " WHERE holder_site = ? AND fragment_id = ?"
        " AND verdict IN ('unaudited', 'ok')",  # an audit's own finding stays as it said
        (now, holder_site, fragment_id),
    )
    return cursor.rowcount > 0


def record_seen(db: sqlite3.Connection, site: str, now: float) -> None:
    """The peer answered something other than an audit (a deletion, a renewal): it is
    reachable again, so it no longer counts as unreachable or lost.

    Without this a site whose every share was replaced while it was away would never be
    audited again, and stay lost for good, however well it answers.
    """
    db.execute(
        "UPDATE peer_reputation SET last_seen_at = ?, unreachable_at = NULL WHERE site_id = ?",
        (now, site),
    )


def record_leaving(db: sqlite3.Connection, site: str, now: float) -> Reputation:
    """The peer answered that it is leaving the federation: no more audits or new shares
    for it, and repair treats its shares as lost (see :func:`leaving_sites`)."""
    db.execute(
        "INSERT INTO peer_reputation (site_id, updated_at, last_seen_at, leaving_at)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (site_id) DO UPDATE SET"
        " leaving_at = COALESCE(leaving_at, excluded.leaving_at),"
        " last_seen_at = excluded.last_seen_at, unreachable_at = NULL",
        (site, now, now, now),
    )
    record = _peer(db, site)
    assert record is not None  # just written
    return record.reputation


def leaving_sites(db: sqlite3.Connection) -> set[str]:
    rows = db.execute("SELECT site_id FROM peer_reputation WHERE leaving_at IS NOT NULL")
    return {str(row[0]) for row in rows}


def peer_records(db: sqlite3.Connection) -> list[PeerRecord]:
    """Every peer this site has audited, by site ID."""
    rows = db.execute(f"SELECT {_PEER_COLUMNS} FROM peer_reputation ORDER BY site_id").fetchall()
    return [_peer_record(r) for r in rows]


def shunned_sites(
    db: sqlite3.Connection, floor: float, now: float, half_life: float = DEFAULT_HALF_LIFE
) -> set[str]:
    """Peers whose reputation is below ``floor``, and peers leaving the federation: they
    receive no new fragments."""
    return {
        record.site_id
        for record in peer_records(db)
        if record.leaving_at is not None or record.reputation.score(now, half_life) < floor
    }


def verdict_counts(db: sqlite3.Connection) -> VerdictCounts:
    row = db.execute(
        "SELECT COALESCE(SUM(p.verdict = 'unaudited'), 0), COALESCE(SUM(p.verdict = 'ok'), 0),"
        " COALESCE(SUM(p.verdict = 'failed'), 0), COALESCE(SUM(p.verdict = 'missing'), 0),"
        " COALESCE(SUM(a.spent >= a.total), 0)"
        " FROM placements p LEFT JOIN audit_sets a"
        " ON a.bundle_ref = p.bundle_ref AND a.share = p.share"
    ).fetchone()
    return VerdictCounts(*(int(value) for value in row))


def _count(blob: bytes) -> int:
    return len(parse_challenge_set(blob))
