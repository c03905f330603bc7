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
import operator
import re
from collections.abc import Callable, Iterable, Mapping
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
        return self.add(Family(f"meshpacs_{name}", "gauge", help))

    def counter(self, name: str, help: str) -> Family:
        return self.add(Family(f"meshpacs_{name}_total", "counter", help))

    def add(self, family: Family) -> Family:
        self.all.append(family)
        return family


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _at(document: Mapping[str, Any], path: str) -> object:
    """The value at a dotted ``path`` into ``document``; None where a step is missing."""
    *steps, last = path.split(".")
    for step in steps:
        document = _dict(document.get(step))
    return document.get(last)


def _count(value: object) -> int | None:
    return len(value) if isinstance(value, list) else None


def _present(value: object) -> bool:
    return value is not None


_By = tuple[str, Mapping[str, str]]  # a label, and for each of its values the key read
_Then = Callable[[Any], object]


@dataclass(frozen=True)
class _Read:
    """A family read straight from a document: one sample, the value at the dotted
    ``path`` (through ``then``); or, with ``by`` (a label and, for each of its values, the
    key it is read from), one sample per label value from the mapping at ``path``."""

    name: str
    kind: str
    help: str
    path: str
    by: _By | None = None
    then: _Then | None = None


def _gauge(
    name: str, path: str, *, help: str, by: _By | None = None, then: _Then | None = None
) -> _Read:
    return _Read(f"meshpacs_{name}", "gauge", help, path, by, then)


def _counter(name: str, path: str, *, help: str, by: _By | None = None) -> _Read:
    return _Read(f"meshpacs_{name}_total", "counter", help, path, by)


def _each(label: str, *keys: str) -> _By:
    """``by`` for a label whose values are the keys they are read from."""
    return label, {key: key for key in keys}


def _fill(out: _Families, document: Mapping[str, Any], reads: Iterable[_Read]) -> None:
    for read in reads:
        family = out.add(Family(read.name, read.kind, read.help))
        found = _at(document, read.path)
        if read.by is None:
            family.add(found if read.then is None else read.then(found))
            continue
        label, keys = read.by
        for value, key in keys.items():
            family.add(_dict(found).get(key), **{label: value})


# The families read straight from a document, in the order the page shows them. Paths are
# into the status document (meshpacs status --json), or into the node's figures for the
# _FIGURES_ tables.
# fmt: off
_AUDITS = (
    _gauge("shares_at_partners", "audits.placements", by=_each("verdict", *_VERDICTS),
           help="This site's shares stored at partners, by the verdict of their last audit."),
    _counter("audits", "audits", by=_each("result", "passed", "failed"),
             help="Audits of partners holding this site's shares, by result."),
    _gauge("last_audit_timestamp_seconds", "audits.last_audit_at",
           help="When the last audit answered (Unix time)."),
    _counter("repairs", "audits.repairs", by=_each("outcome", "repaired", "failed"),
             help="Repairs of this site's bundles, by outcome."),
    _counter("repair_shares_placed", "audits.repairs.shares_placed",
             help="Shares rebuilt by repair and placed at partners."),
    _gauge("bundles_below_n", "audits.repairs.bundles_below_n",
           help="Bundles of this site with fewer than n good shares."),
    _gauge("replaced_copies_to_delete", "audits.repairs.replaced_copies_to_delete",
           help="Shares replaced by repair still to be deleted at sites that came back."),
    _gauge("lost_sites", "audits.repairs.lost_sites", then=_count,
           help="Partner sites unreachable for longer than lost_after_hours."),
    _gauge("last_repair_timestamp_seconds", "audits.repairs.last_repair_at",
           help="When the last repair ran (Unix time)."),
)
_UPKEEP = (
    _gauge("scrub_last_pass_fragments", "scrub.fragments",
           help="Partners' shares checked by the last scrub pass."),
    _gauge("scrub_last_pass_bytes", "scrub.bytes",
           help="Bytes read by the last scrub pass."),
    _gauge("scrub_last_pass_quarantined", "scrub.quarantined",
           help="Shares the last scrub pass found rotten."),
    _gauge("scrub_quarantined_held", "scrub.quarantined_held",
           help="Rotten shares kept as evidence, not yet replaced."),
    _gauge("scrub_last_pass_timestamp_seconds", "scrub.finished_at",
           help="When the last scrub pass ended."),
    _gauge("delegations", "delegate.delegations",
           help="Trusted sites that let this node repair for them while down."),
    _gauge("delegate_acting_for", "delegate.acting_for", then=_count,
           help="Down sites this node currently repairs for."),
    _counter("delegate_shares_rebuilt", "delegate.since_start.shares_placed",
             help="Shares of down sites rebuilt as their delegate, since start."),
    _gauge("lease_renewed_shares", "leases.renewal.renewed",
           help="Shares whose lease the last renewal extended."),
    _gauge("lease_shares", "leases.renewal.fragments",
           help="Shares the last lease renewal covered."),
    _gauge("lease_renewal_timestamp_seconds", "leases.renewal.renewed_at",
           help="When the leases were last renewed."),
    _counter("lease_expired_removed", "leases.expiry.removed_total",
             help="Partners' shares removed here out of lease."),
    _gauge("forget_requests", "forgets", by=_each("state", "pending", "deleting", "done"),
           help="Forget requests (meshpacs forget) by state."),
    _gauge("leaving", "leaving", then=_present,
           help="1 while the node hands back what it holds (meshpacs node leave)."),
)
_FIGURES_HELD = (
    _gauge("fragments_held", "held.fragments",
           help="Fragments this node stores for partner sites."),
    _gauge("fragments_held_bytes", "held.bytes",
           help="Bytes of fragments stored here for partner sites."),
    _gauge("fragment_owners", "held.owners",
           help="Partner sites with fragments stored here."),
    _counter("ingest_instances", "ingest.instances",
             help="Instances received from the PACS and catalogued."),
    _counter("ingest_bytes", "ingest.bytes",
             help="Bytes of instances received from the PACS."),
    _gauge("local_instances", "ingest.local_instances",
           help="Instances whose file is kept on this node's disk."),
)
_FIGURES_RESTORES = (
    _counter("restore_instances", "restores",
             by=("result", {"sent": "instances", "failed": "failed"}),
             help="Instances this node's C-MOVE/C-GET delivered (sent: stored by the peer)"
                  " or failed, since start."),
    _counter("restore_bytes", "restores.bytes",
             help="Bytes of instances C-MOVE/C-GET delivered, since start."),
    _counter("restore_mesh_bundles", "restores",
             by=("result", {"gathered": "mesh_bundles", "failed": "mesh_bundles_failed"}),
             help="Bundles a retrieve gathered from the mesh (or not), since start."),
    _counter("restore_mesh_instances", "restores.mesh_instances",
             help="Instances a retrieve brought back from the mesh, since start."),
    _counter("restore_mesh_bytes", "restores.mesh_bytes",
             help="Bytes of instances brought back from the mesh, since start."),
    _gauge("backup_k", "backup.k",
           help="Shares needed to rebuild a bundle ([backup] k)."),
    _gauge("backup_n", "backup.n",
           help="Shares made of each bundle ([backup] n)."),
)
# A meshpacs recover --show-on-dashboard run shown by this node, only while there is one.
_RECOVERY = (
    _gauge("recovery_running", "recovery.finished", then=operator.not_,
           help="1 while a recovery shown here runs (0: finished)."),
    _gauge("recovery_stalled", "recovery.stalled", then=bool,
           help="1 if the running recovery stopped writing its progress."),
    _gauge("recovery_bundles", "recovery.bundles",
           by=_each("state", "total", "done", "unrecoverable"),
           help="The recovery's bundles: total, done, unrecoverable."),
    _gauge("recovery_instances", "recovery.instances",
           by=_each("state", "total", "delivered", "failed"),
           help="The recovery's instances: total, delivered, failed."),
    _gauge("recovery_bytes", "recovery.bytes", by=_each("state", "total", "delivered"),
           help="Bytes of the recovery's instances: total, delivered."),
    _gauge("recovery_updated_timestamp_seconds", "recovery.updated_at",
           help="When the recovery last wrote progress."),
)
# fmt: on


def render_metrics(status: Mapping[str, Any], figures: Mapping[str, Any] | None = None) -> str:
    """The exposition text for ``status`` (``site_status``) and the node's ``figures``."""
    out = _Families()
    site = str(status.get("site_id", ""))
    out.gauge("info", "This node; the site label is its site ID.").add(1, site=site)
    out.gauge("mesh_enabled", "1 if the node takes part in the backup mesh.").add(
        status.get("mesh_enabled")
    )
    node_figures = _dict(figures)
    _warnings(out, status)
    _studies(out, status, node_figures)
    _fill(out, status, _AUDITS)
    _peers(out, status)
    _fill(out, status, _UPKEEP)
    _fill(out, node_figures, _FIGURES_HELD)
    _bundles(out, _dict(node_figures.get("bundles")))
    _fill(out, node_figures, _FIGURES_RESTORES)
    if _dict(status.get("recovery")):
        _fill(out, status, _RECOVERY)
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


def _bundles(out: _Families, bundles: Mapping[str, Any]) -> None:
    count = out.gauge("bundles", "This site's bundles by state (planned, encoded, stored, ...).")
    size = out.gauge("bundle_bytes", "Bytes of this site's bundles by state.")
    for state, entry in sorted(bundles.items()):
        count.add(_dict(entry).get("count"), state=str(state))
        size.add(_dict(entry).get("bytes"), state=str(state))
