"""What in the status document an administrator should act on, as ready-made sentences.

:func:`site_warnings` reads the document ``site_status`` built (and the config) and gives
one entry per problem, ``{"code": ..., "message": ...}``. The code is stable, for scripts
and alerts (``meshpacs_warnings{code="..."}`` on ``/metrics``); the message says what is
wrong and what to do, in counts, site IDs and config keys only: never a DICOM value, so
it may be shown, logged or mailed anywhere. Only what the document really knows is
warned about: an unknown figure (no catalog yet, a disk that could not be read) gives no
warning rather than a guessed one.

Codes, most urgent first:

    audit_trail_unavailable  the node cannot write its ATNA audit trail
    mesh_disabled            studies are kept on this node only
    node_not_reporting       the running node has not written its peer list lately
    too_few_partners         fewer partner sites online than n
    no_trusted_peer          no escrow of the site key: a lost phrase loses the archive
    one_trusted_peer         escrow is 1-of-1: one site holds the whole site key
    recovery_stalled         a recovery shown here has not reported for 5 minutes
    recovery_incomplete      a recovery shown here ended without everything back
    backlog_old              a study has waited more than an hour to be protected
    studies_degraded         bundles with fewer than n good shares at partners
    shares_failed_audit      shares at partners that failed their audit or are missing
    peer_failing_audits      peers scored below the reputation floor (shunned)
    sites_lost               partners unreachable for longer than lost_after_hours
    repair_failed            the last repair of a bundle placed nothing
    disk_nearly_full         the data directory's file system is almost full
    offer_nearly_full        partners' shares fill almost all of [mesh] offer_gb
    leaving                  this node is leaving the federation
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from meshpacs.node.config import NodeConfig
from meshpacs.trail import trail_dir
from meshpacs.trail.log import HEAD_FILE, LOG_FILE

__all__ = [
    "BACKLOG_WARN_SECONDS",
    "DISK_FREE_FRACTION",
    "OFFER_FULL_FRACTION",
    "STALE_AFTER_SECONDS",
    "site_warnings",
    "trail_problem",
]

BACKLOG_WARN_SECONDS = 3600.0
DISK_FREE_FRACTION = 0.10  # warn when less than this share of the disk is free
OFFER_FULL_FRACTION = 0.90  # warn when partners' shares fill this share of the offer
# A peer list older than this is old news: the node rewrites it every half minute.
STALE_AFTER_SECONDS = 120.0


def trail_problem(config: NodeConfig) -> str | None:
    """Why the node could not open its audit trail now, or None.

    The node opens the trail with the site key and appends to two files in
    ``<data_dir>/trail``: a key it cannot read, or a trail it cannot write, turns the
    trail off (the daemon logs it once, at start); this says so on every status.
    """
    key = config.key_file
    if not os.access(key, os.R_OK):
        return f"the site key {key} cannot be read"
    directory = trail_dir(config.data_dir)
    if not directory.exists():
        return None  # made at the node's first start
    if not directory.is_dir():
        return f"{directory} is not a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{directory} cannot be written"
    for name in (LOG_FILE, HEAD_FILE):
        path = directory / name
        if path.exists() and (not path.is_file() or not os.access(path, os.R_OK | os.W_OK)):
            return f"{path} cannot be written"
    return None


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _duration(seconds: float) -> str:
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} hours"
    return f"{seconds / 86400:.0f} days"


def _gb(count: float) -> str:
    return f"{count / 1000**3:.1f} GB"


def _sites(sites: Sequence[str]) -> str:
    return ", ".join(sites)


class _Found:
    def __init__(self) -> None:
        self.entries: list[dict[str, str]] = []

    def add(self, code: str, message: str) -> None:
        self.entries.append({"code": code, "message": message})


def site_warnings(
    document: Mapping[str, Any],
    config: NodeConfig,
    now: float,
    trail: str | None = None,
) -> list[dict[str, str]]:
    """The warnings for ``document`` (see the module); ``trail`` is :func:`trail_problem`."""
    found = _Found()
    if trail is not None:
        found.add(
            "audit_trail_unavailable",
            f"The audit trail cannot be written: {trail}. Security events are not being"
            " recorded; fix the file's owner and permissions, then restart the node.",
        )
    studies = _dict(document.get("studies"))
    if config.mesh.enabled:
        _mesh(found, document, config, now)
    elif studies.get("total"):
        found.add(
            "mesh_disabled",
            f"The mesh is off ([mesh] enabled = false): {studies['total']} studies are kept"
            " on this node only, and a lost disk loses them.",
        )
    _recovery(found, _dict(document.get("recovery")), now)
    _protection(found, document, config)
    _audits(found, document, config)
    _storage(found, document, config)
    if document.get("leaving") is not None:
        found.add(
            "leaving",
            "This node is leaving the federation (meshpacs node leave): it takes no new"
            " shares and hands back what it holds.",
        )
    return found.entries


def _mesh(found: _Found, document: Mapping[str, Any], config: NodeConfig, now: float) -> None:
    as_of = _number(document.get("peers_as_of"))
    peers = [p for p in document.get("peers") or [] if isinstance(p, Mapping)]
    if as_of is None or now - as_of > STALE_AFTER_SECONDS:
        since = "never" if as_of is None else f"not for {_duration(now - as_of)}"
        found.add(
            "node_not_reporting",
            f"The node has reported the partner sites it sees {since}: check that it is"
            " running (meshpacs node run, or its systemd unit) and read its log.",
        )
    else:
        online = sum(1 for p in peers if p.get("online"))
        n = config.backup.n
        if online < n:
            found.add(
                "too_few_partners",
                f"Only {online} partner site(s) online, fewer than n = {n}: new studies"
                " cannot be fully protected until more partners are reachable.",
            )
    trusted = len(config.mesh.trusted_peers)
    if trusted == 0:
        found.add(
            "no_trusted_peer",
            "No trusted peer ([mesh] trusted_peers is empty): the site key is escrowed"
            " nowhere, so if the recovery phrase is lost the archive cannot be recovered."
            " Name three trusted sites.",
        )
    elif trusted == 1:
        found.add(
            "one_trusted_peer",
            f"Only one trusted peer ({config.mesh.trusted_peers[0]}): escrow is 1-of-1, that"
            " site alone holds the whole site key, and losing it loses the escrow. Name"
            " three trusted sites.",
        )


_RERUN = (
    "run the same meshpacs recover command again: its --workdir journal resumes it, and"
    " nothing is delivered twice"
)


def _recovery(found: _Found, recovery: Mapping[str, Any], now: float) -> None:
    """A ``meshpacs recover --show-on-dashboard`` run that stopped short (status shows a
    finished one for a day only, so the warning goes with it)."""
    if not recovery:
        return
    site = str(recovery.get("site_id") or "?")
    updated = _number(recovery.get("updated_at"))
    if recovery.get("stalled"):
        silent = f"for {_duration(now - updated)}" if updated is not None else "at all"
        found.add(
            "recovery_stalled",
            f"The recovery of site {site} shown here has not reported progress {silent}"
            f" ({recovery.get('phase') or 'unknown phase'}): check that its meshpacs recover"
            f" still runs; if it stopped, {_RERUN}.",
        )
        return
    outcome = recovery.get("outcome")
    if not recovery.get("finished") or outcome not in ("incomplete", "failed", "interrupted"):
        return
    studies = _dict(recovery.get("studies"))
    done = f"{studies.get('done', 0)} of {studies.get('total', 0)} studies delivered"
    if outcome == "incomplete":
        bundles, instances = _dict(recovery.get("bundles")), _dict(recovery.get("instances"))
        why = (
            f"finished incomplete: {done}, {bundles.get('unrecoverable', 0)} bundles"
            f" unrecoverable and {instances.get('failed', 0)} instances failed. Bring the"
            " partner sites holding its shares and the target back online, then"
        )
    elif outcome == "failed":
        why = f"failed ({done}): read the command's output for the error, fix it, then"
    else:
        why = f"was interrupted ({done}):"
    found.add("recovery_incomplete", f"The recovery of site {site} {why} {_RERUN}.")


def _protection(found: _Found, document: Mapping[str, Any], config: NodeConfig) -> None:
    backlog = _dict(document.get("backlog"))
    age = _number(backlog.get("oldest_age_seconds"))
    if config.mesh.enabled and age is not None and age > BACKLOG_WARN_SECONDS:
        found.add(
            "backlog_old",
            f"{backlog.get('studies', 0)} studies wait to be protected, the oldest for"
            f" {_duration(age)}: check that partners are online and the node's log for"
            " backup errors.",
        )
    degraded = int(_dict(document.get("studies")).get("degraded") or 0)
    repairs = _dict(_dict(document.get("audits")).get("repairs"))
    below = int(repairs.get("bundles_below_n") or 0)
    if degraded or below:
        found.add(
            "studies_degraded",
            f"{below} bundles have fewer than n = {config.backup.n} good shares at partner"
            f" sites ({degraded} studies degraded): repair rebuilds them while enough"
            " partners are online.",
        )
    if repairs.get("last_outcome") == "failed":
        found.add(
            "repair_failed",
            "The last repair placed no new share: too few partners could take one, or the"
            " bundle's shares could not be gathered. See the node's log.",
        )
    lost = [str(s) for s in repairs.get("lost_sites") or []]
    if lost:
        found.add(
            "sites_lost",
            f"Partner sites unreachable for longer than lost_after_hours: {_sites(lost)}."
            " Their shares are being rebuilt elsewhere; ask their administrators.",
        )


def _audits(found: _Found, document: Mapping[str, Any], config: NodeConfig) -> None:
    placements = _dict(_dict(document.get("audits")).get("placements"))
    failed, missing = int(placements.get("failed") or 0), int(placements.get("missing") or 0)
    if failed or missing:
        found.add(
            "shares_failed_audit",
            f"{failed} shares at partners failed their last audit and {missing} are"
            " missing: repair replaces them.",
        )
    peers = [p for p in document.get("peers") or [] if isinstance(p, Mapping)]
    shunned = [str(p.get("site_id")) for p in peers if _dict(p.get("audits")).get("shunned")]
    if shunned:
        found.add(
            "peer_failing_audits",
            f"Failing audits (reputation below {config.maintenance.reputation_floor:g},"
            f" given no new shares): {_sites(shunned)}. Ask their administrators.",
        )


def _storage(found: _Found, document: Mapping[str, Any], config: NodeConfig) -> None:
    storage = _dict(document.get("storage"))
    total, free = _number(storage.get("disk_total_bytes")), _number(storage.get("disk_free_bytes"))
    if total and free is not None and free < DISK_FREE_FRACTION * total:
        found.add(
            "disk_nearly_full",
            f"The disk of {config.data_dir} is nearly full: {_gb(free)} free of {_gb(total)}."
            " Free space or grow it before studies are refused.",
        )
    held, offer = _number(storage.get("held_for_partners_bytes")), config.mesh.offer_bytes
    if config.mesh.enabled and held is not None and held >= OFFER_FULL_FRACTION * offer:
        found.add(
            "offer_nearly_full",
            f"Partners' shares fill {_gb(held)} of the {_gb(offer)} offered ([mesh] offer_gb):"
            " raise the offer or partners will place their shares elsewhere.",
        )
