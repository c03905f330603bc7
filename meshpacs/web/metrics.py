"""The status document as Prometheus metrics: text exposition format 0.0.4, sans I/O.

:func:`render_metrics` turns what ``meshpacs status --json`` prints (``site_status``) and
the few figures the node adds (:mod:`meshpacs.web.figures`) into the text a Prometheus
server scrapes from ``/metrics``. Every figure here is a count, a size, a time or a site
ID; nothing names a study, a patient or a fragment, so the page may go to a monitoring
system outside the trusted circle.

A figure the document does not have (a node that never audited, a status read while the
catalog did not exist yet) is left out rather than reported as 0: an alert on
``meshpacs_backlog_oldest_age_seconds`` must not see "no backlog" when the truth is
"unknown". Counters are the catalog's lifetime counts (or, where the document says
``since_start``, the running node's); gauges are the state now.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CONTENT_TYPE", "Family", "escape_help", "escape_label", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TYPES = ("counter", "gauge")
_VERDICTS = ("ok", "failed", "missing", "unaudited", "out_of_challenges")


def escape_label(value: str) -> str:
    """A label value as the format wants it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """HELP text escapes only backslash and newline (quotes stay as they are)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _value(number: float) -> str:
    if isinstance(number, bool):
        return "1" if number else "0"
    if isinstance(number, int):
        return str(number)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    return repr(float(number))


@dataclass
class Family:
    """One metric name: its HELP, TYPE and samples (labels, value)."""

    name: str
    kind: str
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Names are this module's own constants: a bad one is a bug, not an input.
        if not _NAME.fullmatch(self.name) or self.kind not in _TYPES:
            raise ValueError(f"bad metric family {self.name!r} ({self.kind})")

    def add(self, value: object, **labels: str) -> None:
        """Add a sample if ``value`` is a number; None (unknown) and anything else is skipped."""
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int | float):
            return
        for label in labels:
            if not _LABEL.fullmatch(label):
                raise ValueError(f"bad label name {label!r}")
        self.samples.append((labels, value))

    def lines(self) -> Iterable[str]:
        if not self.samples:
            return
        yield f"# HELP {self.name} {escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples:
            text = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
            name = f"{self.name}{{{text}}}" if text else self.name
            yield f"{name} {_value(value)}"


class _Families:
    def __init__(self) -> None:
        self.all: list[Family] = []

    def gauge(self, name: str, help: str) -> Family:
        return self._add(Family(f"meshpacs_{name}", "gauge", help))

    def counter(self, name: str, help: str) -> Family:
        return self._add(Family(f"meshpacs_{name}_total", "counter", help))

    def _add(self, family: Family) -> Family:
        self.all.append(family)
        return family


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def render_metrics(status: Mapping[str, Any], figures: Mapping[str, Any] | None = None) -> str:
    """The exposition text for ``status`` (``site_status``) and the node's ``figures``."""
    out = _Families()
    site = str(status.get("site_id", ""))
    out.gauge("info", "This node; the site label is its site ID.").add(1, site=site)
    out.gauge("mesh_enabled", "1 if the node takes part in the backup mesh.").add(
        status.get("mesh_enabled")
    )
    _warnings(out, status)
    _studies(out, status, _dict(figures))
    _audits(out, _dict(status.get("audits")))
    _peers(out, status)
    _upkeep(out, status)
    _node_figures(out, _dict(figures))
    _recovery(out, _dict(status.get("recovery")))
    lines = [line for family in out.all for line in family.lines()]
    return "\n".join(lines) + "\n"


def _warnings(out: _Families, status: Mapping[str, Any]) -> None:
    warnings = status.get("warnings")
    if not isinstance(warnings, list):
        return  # a document from before warnings: unknown, not "none"
    codes = sorted({str(w.get("code")) for w in warnings if isinstance(w, Mapping)})
    out.gauge("warnings_active", "Warnings meshpacs status shows now (0 when all is well).").add(
        len(codes)
    )
    by_code = out.gauge("warnings", "1 for each warning meshpacs status shows now, by code.")
    for code in codes:
        by_code.add(1, code=code)


def _studies(out: _Families, status: Mapping[str, Any], figures: Mapping[str, Any]) -> None:
    studies = _dict(status.get("studies"))
    by_protection = out.gauge(
        "studies",
        "Studies of this site by protection: protected (every bundle at n partners),"
        " degraded (protected, some bundle below n), unprotected (not yet backed up).",
    )
    for state in ("protected", "degraded", "unprotected"):
        by_protection.add(studies.get(state), state=state)
    out.gauge("backlog_studies", "Studies not yet protected (the backup backlog).").add(
        studies.get("unprotected")
    )
    out.gauge(
        "backlog_oldest_age_seconds",
        "Seconds since the first instance of the oldest study not yet protected arrived"
        " (0 when nothing waits).",
    ).add(figures.get("backlog_oldest_age_seconds"))
    by_state = out.gauge(
        "catalog_studies",
        "Studies in the catalog by their backup state (receiving, stable, queued, protected).",
    )
    for state, count in sorted(_dict(figures.get("studies_by_state")).items()):
        by_state.add(count, state=str(state))


def _audits(out: _Families, audits: Mapping[str, Any]) -> None:
    placements = _dict(audits.get("placements"))
    shares = out.gauge(
        "shares_at_partners",
        "This site's shares stored at partners, by the verdict of their last audit.",
    )
    for verdict in _VERDICTS:
        shares.add(placements.get(verdict), verdict=verdict)
    results = out.counter("audits", "Audits of partners holding this site's shares, by result.")
    results.add(audits.get("passed"), result="passed")
    results.add(audits.get("failed"), result="failed")
    out.gauge("last_audit_timestamp_seconds", "When the last audit answered (Unix time).").add(
        audits.get("last_audit_at")
    )
    repairs = _dict(audits.get("repairs"))
    done = out.counter("repairs", "Repairs of this site's bundles, by outcome.")
    done.add(repairs.get("repaired"), outcome="repaired")
    done.add(repairs.get("failed"), outcome="failed")
    out.counter("repair_shares_placed", "Shares rebuilt by repair and placed at partners.").add(
        repairs.get("shares_placed")
    )
    out.gauge("bundles_below_n", "Bundles of this site with fewer than n good shares.").add(
        repairs.get("bundles_below_n")
    )
    out.gauge(
        "replaced_copies_to_delete",
        "Shares replaced by repair still to be deleted at sites that came back.",
    ).add(repairs.get("replaced_copies_to_delete"))
    lost = repairs.get("lost_sites")
    out.gauge("lost_sites", "Partner sites unreachable for longer than lost_after_hours.").add(
        len(lost) if isinstance(lost, list) else None
    )
    out.gauge("last_repair_timestamp_seconds", "When the last repair ran (Unix time).").add(
        repairs.get("last_repair_at")
    )


def _peers(out: _Families, status: Mapping[str, Any]) -> None:
    peers = [p for p in status.get("peers") or [] if isinstance(p, Mapping)]
    counts = out.gauge("peers", "Partner sites by state: up (seen online) or down.")
    up = sum(1 for p in peers if p.get("online"))
    counts.add(up, state="up")
    counts.add(len(peers) - up, state="down")
    peer_up = out.gauge("peer_up", "1 if the partner site is online, by site ID.")
    reputation = out.gauge("peer_reputation", "This site's audit score of the partner, 0 to 1.")
    audits = out.counter("peer_audits", "Audits of the partner by this site, by result.")
    latency = out.gauge("peer_audit_latency_seconds", "The partner's typical audit answer time.")
    held_here = out.gauge(
        "peer_held_here_bytes", "Bytes of the partner's shares this node keeps for it."
    )
    held_there = out.gauge(
        "peer_held_there_bytes", "Bytes of this site's shares the partner keeps."
    )
    for peer in peers:
        name = str(peer.get("site_id", ""))
        trusted = "true" if peer.get("trusted") else "false"
        peer_up.add(bool(peer.get("online")), peer=name, trusted=trusted)
        record = _dict(peer.get("audits"))
        reputation.add(record.get("reputation"), peer=name)
        audits.add(record.get("audits_passed"), peer=name, result="passed")
        audits.add(record.get("audits_failed"), peer=name, result="failed")
        ms = record.get("latency_ms")
        latency.add(ms / 1000 if isinstance(ms, int | float) else None, peer=name)
        space = _dict(peer.get("space"))
        held_here.add(_dict(space.get("held_for_them")).get("bytes"), peer=name)
        held_there.add(_dict(space.get("held_by_them")).get("bytes"), peer=name)
    out.gauge("peers_as_of_timestamp_seconds", "When the node last wrote its peer list.").add(
        status.get("peers_as_of")
    )


def _upkeep(out: _Families, status: Mapping[str, Any]) -> None:
    scrub = _dict(status.get("scrub"))
    out.gauge("scrub_last_pass_fragments", "Partners' shares checked by the last scrub pass.").add(
        scrub.get("fragments")
    )
    out.gauge("scrub_last_pass_bytes", "Bytes read by the last scrub pass.").add(scrub.get("bytes"))
    out.gauge("scrub_last_pass_quarantined", "Shares the last scrub pass found rotten.").add(
        scrub.get("quarantined")
    )
    out.gauge("scrub_quarantined_held", "Rotten shares kept as evidence, not yet replaced.").add(
        scrub.get("quarantined_held")
    )
    out.gauge("scrub_last_pass_timestamp_seconds", "When the last scrub pass ended.").add(
        scrub.get("finished_at")
    )
    delegate = _dict(status.get("delegate"))
    out.gauge("delegations", "Trusted sites that let this node repair for them while down.").add(
        delegate.get("delegations")
    )
    acting = delegate.get("acting_for")
    out.gauge("delegate_acting_for", "Down sites this node currently repairs for.").add(
        len(acting) if isinstance(acting, list) else None
    )
    since = _dict(delegate.get("since_start"))
    out.counter(
        "delegate_shares_rebuilt", "Shares of down sites rebuilt as their delegate, since start."
    ).add(since.get("shares_placed"))
    leases = _dict(status.get("leases"))
    renewal = _dict(leases.get("renewal"))
    out.gauge("lease_renewed_shares", "Shares whose lease the last renewal extended.").add(
        renewal.get("renewed")
    )
    out.gauge("lease_shares", "Shares the last lease renewal covered.").add(
        renewal.get("fragments")
    )
    out.gauge("lease_renewal_timestamp_seconds", "When the leases were last renewed.").add(
        renewal.get("renewed_at")
    )
    expiry = _dict(leases.get("expiry"))
    out.counter("lease_expired_removed", "Partners' shares removed here out of lease.").add(
        expiry.get("removed_total")
    )
    forgets = _dict(status.get("forgets"))
    forgotten = out.gauge("forget_requests", "Forget requests (meshpacs forget) by state.")
    for state in ("pending", "deleting", "done"):
        forgotten.add(forgets.get(state), state=state)
    out.gauge("leaving", "1 while the node hands back what it holds (meshpacs node leave).").add(
        status.get("leaving") is not None
    )


def _node_figures(out: _Families, figures: Mapping[str, Any]) -> None:
    held = _dict(figures.get("held"))
    out.gauge("fragments_held", "Fragments this node stores for partner sites.").add(
        held.get("fragments")
    )
    out.gauge("fragments_held_bytes", "Bytes of fragments stored here for partner sites.").add(
        held.get("bytes")
    )
    out.gauge("fragment_owners", "Partner sites with fragments stored here.").add(
        held.get("owners")
    )
    ingest = _dict(figures.get("ingest"))
    out.counter("ingest_instances", "Instances received from the PACS and catalogued.").add(
        ingest.get("instances")
    )
    out.counter("ingest_bytes", "Bytes of instances received from the PACS.").add(
        ingest.get("bytes")
    )
    out.gauge("local_instances", "Instances whose file is kept on this node's disk.").add(
        ingest.get("local_instances")
    )
    bundles = _dict(figures.get("bundles"))
    count = out.gauge("bundles", "This site's bundles by state (planned, encoded, stored, ...).")
    size = out.gauge("bundle_bytes", "Bytes of this site's bundles by state.")
    for state, entry in sorted(bundles.items()):
        count.add(_dict(entry).get("count"), state=str(state))
        size.add(_dict(entry).get("bytes"), state=str(state))
    restores = _dict(figures.get("restores"))
    sent = out.counter(
        "restore_instances",
        "Instances this node's C-MOVE/C-GET delivered (sent: stored by the peer) or failed,"
        " since start.",
    )
    sent.add(restores.get("instances"), result="sent")
    sent.add(restores.get("failed"), result="failed")
    out.counter("restore_bytes", "Bytes of instances C-MOVE/C-GET delivered, since start.").add(
        restores.get("bytes")
    )
    gathered = out.counter(
        "restore_mesh_bundles", "Bundles a retrieve gathered from the mesh (or not), since start."
    )
    gathered.add(restores.get("mesh_bundles"), result="gathered")
    gathered.add(restores.get("mesh_bundles_failed"), result="failed")
    out.counter(
        "restore_mesh_instances", "Instances a retrieve brought back from the mesh, since start."
    ).add(restores.get("mesh_instances"))
    out.counter(
        "restore_mesh_bytes", "Bytes of instances brought back from the mesh, since start."
    ).add(restores.get("mesh_bytes"))
    backup = _dict(figures.get("backup"))
    out.gauge("backup_k", "Shares needed to rebuild a bundle ([backup] k).").add(backup.get("k"))
    out.gauge("backup_n", "Shares made of each bundle ([backup] n).").add(backup.get("n"))


def _recovery(out: _Families, recovery: Mapping[str, Any]) -> None:
    """A ``meshpacs recover --show-on-dashboard`` run shown by this node, if any."""
    if not recovery:
        return
    out.gauge("recovery_running", "1 while a recovery shown here runs (0: finished).").add(
        not recovery.get("finished")
    )
    out.gauge("recovery_stalled", "1 if the running recovery stopped writing its progress.").add(
        bool(recovery.get("stalled"))
    )
    bundles = _dict(recovery.get("bundles"))
    by_state = out.gauge("recovery_bundles", "The recovery's bundles: total, done, unrecoverable.")
    for state in ("total", "done", "unrecoverable"):
        by_state.add(bundles.get(state), state=state)
    instances = _dict(recovery.get("instances"))
    count = out.gauge("recovery_instances", "The recovery's instances: total, delivered, failed.")
    for state in ("total", "delivered", "failed"):
        count.add(instances.get(state), state=state)
    size = _dict(recovery.get("bytes"))
    sizes = out.gauge("recovery_bytes", "Bytes of the recovery's instances: total, delivered.")
    for state in ("total", "delivered"):
        sizes.add(size.get(state), state=state)
    out.gauge("recovery_updated_timestamp_seconds", "When the recovery last wrote progress.").add(
        recovery.get("updated_at")
    )
