"""A status document as ``site_status`` makes it, with every part filled in, for the
renderers' tests (the end-to-end tests use a real node's)."""

from __future__ import annotations

from typing import Any

NOW = 1_700_000_000.0


def full_status() -> dict[str, Any]:
    return {
        "site_id": "site-a",
        "mesh_enabled": True,
        "warnings": [
            {"code": "sites_lost", "message": "Partner sites unreachable for long: site-d."},
            {"code": "peer_failing_audits", "message": "Failing audits: site-c."},
        ],
        "studies": {"total": 7, "protected": 4, "degraded": 1, "unprotected": 2},
        "backlog": {
            "studies": 2,
            "oldest_received_at": NOW - 95.5,
            "oldest_age_seconds": 95.5,
        },
        "audits": {
            "placements": {
                "unaudited": 3,
                "ok": 9,
                "failed": 1,
                "missing": 2,
                "out_of_challenges": 0,
            },
            "passed": 40,
            "failed": 3,
            "last_audit_at": NOW - 12,
            "repairs": {
                "repaired": 5,
                "failed": 1,
                "shares_placed": 6,
                "last_repair_at": NOW - 300,
                "last_outcome": "repaired",
                "bundles_below_n": 1,
                "replaced_copies_to_delete": 2,
                "lost_sites": ["site-d"],
            },
        },
        "scrub": {
            "finished_at": NOW - 60,
            "fragments": 11,
            "bytes": 123456,
            "quarantined": 1,
            "quarantined_held": 1,
            "seconds": 0.5,
        },
        "delegate": {
            "delegations": 2,
            "acting_for": ["site-d"],
            "since_start": {"repaired": 1, "shares_placed": 3, "last_repair_at": NOW - 30},
        },
        "forgets": {
            "pending": 0,
            "deleting": 1,
            "done": 2,
            "deletions_waiting": 1,
            "last_forgotten_at": NOW - 900,
        },
        "leaving": None,
        "leases": {
            "renewal": {
                "renewed_at": NOW - 3600,
                "fragments": 12,
                "renewed": 11,
                "not_held": 1,
                "unreachable": [],
                "lease_seconds": 30 * 86400.0,
            },
            "expiry": {"removed_total": 4, "last_removed_at": NOW - 7200},
        },
        "peers": [
            {
                "site_id": "site-b",
                "online": True,
                "trusted": True,
                "audits": {
                    "reputation": 0.91,
                    "shunned": False,
                    "leaving": False,
                    "audits_passed": 30,
                    "audits_failed": 0,
                    "last_audit_at": NOW - 12,
                    "last_failure_at": None,
                    "latency_ms": 3.5,
                },
                "space": {
                    "held_for_them": {"fragments": 5, "bytes": 500_000},
                    "held_by_them": {"shares": 4, "bytes": 420_000},
                },
            },
            {
                "site_id": "site-c",
                "online": True,
                "trusted": False,
                "audits": {
                    "reputation": 0.2,
                    "shunned": True,
                    "leaving": False,
                    "audits_passed": 10,
                    "audits_failed": 3,
                    "last_audit_at": NOW - 40,
                    "last_failure_at": NOW - 40,
                    "latency_ms": 7.0,
                },
            },
            {"site_id": "site-d", "online": False, "trusted": True, "audits": None},
        ],
        "storage": {
            "held_for_partners_bytes": 800_000,
            "offer_bytes": 10**9,
            "disk_total_bytes": 10**11,
            "disk_free_bytes": 6 * 10**10,
        },
        "peers_as_of": NOW - 5,
    }


def full_figures() -> dict[str, Any]:
    return {
        "studies_by_state": {"receiving": 1, "stable": 0, "queued": 1, "protected": 5},
        "backlog_oldest_age_seconds": 95.5,
        "backlog_oldest_since": NOW - 95.5,
        "ingest": {"instances": 70, "bytes": 7_000_000, "local_instances": 60},
        "bundles": {
            "stored": {"count": 4, "bytes": 4_000_000},
            "degraded": {"count": 1, "bytes": 9},
        },
        "held": {"fragments": 8, "bytes": 800_000, "owners": 3},
        "backup": {"k": 2, "n": 3, "happy": 3},
        "restores": {
            "instances": 12,
            "bytes": 1_200_000,
            "failed": 1,
            "mesh_bundles": 2,
            "mesh_bundles_failed": 1,
            "mesh_instances": 9,
            "mesh_bytes": 900_000,
        },
    }


def full_recovery(**changes: object) -> dict[str, Any]:
    """A ``meshpacs recover --show-on-dashboard`` run this node shows, still running and
    stalled (it stopped writing its progress), with ``changes`` made."""
    document = {
        "version": 1,
        "site_id": "site-a",
        "phase": "recovering",
        "finished": False,
        "outcome": None,
        "started_at": NOW - 4000,
        "updated_at": NOW - 700,
        "target": "ORTHANC@10.1.2.20:4242",
        "bundles": {"total": 12, "done": 5, "unrecoverable": 1},
        "studies": {"total": 9, "done": 3},
        "instances": {"total": 480, "delivered": 150, "failed": 2},
        "bytes": {"total": 4_800_000, "delivered": 1_500_000},
        "stalled": True,
    }
    return {**document, **changes}
