"""The dashboard page: one server-rendered HTML document, sans I/O.

:func:`render_dashboard` draws the status document (``site_status``), the node's extra
figures (:mod:`meshpacs.web.figures`) and the protection history
(:mod:`meshpacs.web.history`) as a page an administrator leaves open: the site's studies
by protection and over time, the backlog, the federation's sites and how their audits
went, repair, scrub, leases, and a recovery's progress when the document has one. It
reloads itself every 10 seconds (a meta refresh, no script).

Everything is inline: CSS in a ``<style>``, the chart as SVG, no script, no font, no
image or stylesheet from anywhere else, so the page works on an isolated hospital network
and the server can forbid every outside resource (its Content-Security-Policy). Every
value from the document goes through :func:`html.escape`, peers' site IDs included (they
come from the node's files, which a partner's records fed).
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from typing import Any

from meshpacs.web.history import Snapshot

__all__ = ["REFRESH_SECONDS", "render_dashboard"]

REFRESH_SECONDS = 10
_CHART_BARS = 144  # half a day at one snapshot every five minutes
_CHART_WIDTH, _CHART_HEIGHT = 720, 110
_COLOURS = {"protected": "#2e7d32", "degraded": "#f9a825", "unprotected": "#c62828"}

_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
background:#f4f6f8;color:#1c2430}
header{background:#1f3a5f;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px;font-weight:600}
header p{margin:4px 0 0;opacity:.85;font-size:13px}
main{padding:16px 24px;display:grid;grid-template-columns:1fr 1fr;gap:16px}
section{background:#fff;border-radius:8px;padding:12px 16px;box-shadow:0 1px 2px #0002}
section.wide{grid-column:1/-1}
h2{font-size:15px;margin:0 0 8px;color:#1f3a5f}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{flex:1;min-width:120px;border-radius:6px;padding:8px 12px;background:#eef1f5}
.card .figure{font-size:28px;font-weight:700}
.card.protected{border-left:6px solid #2e7d32}.card.degraded{border-left:6px solid #f9a825}
.card.unprotected{border-left:6px solid #c62828}.card.total{border-left:6px solid #1f3a5f}
.card.age{border-left:6px solid #6a1b9a}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e3e7ec;font-size:13px}
th{color:#556}
.up{color:#2e7d32;font-weight:600}.down{color:#c62828;font-weight:600}
.warn{background:#fff4e5;border-left:6px solid #f9a825;padding:8px 12px;margin:0 0 6px}
.quiet{color:#667}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0}
dt{color:#556}dd{margin:0}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _when(at: object, now: float) -> str:
    """``12 s ago (2024-05-01 10:22:03 UTC)``, or ``never``."""
    if not isinstance(at, int | float) or isinstance(at, bool):
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
    return f"{_duration(max(0.0, now - at))} ago ({stamp})"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _size(count: object) -> str:
    value = float(_int(count))
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # pragma: no cover


def render_dashboard(
    status: Mapping[str, Any],
    figures: Mapping[str, Any] | None = None,
    history: Sequence[Snapshot] = (),
    *,
    now: float | None = None,
) -> str:
    """The whole page for ``status`` (and the node's ``figures`` and ``history``)."""
    now = time.time() if now is None else now
    figures = _dict(figures)
    site = _e(status.get("site_id", "?"))
    mesh = "mesh on" if status.get("mesh_enabled") else "mesh off: studies are kept here only"
    updated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>meshpacs · {site}</title><style>{_STYLE}</style></head><body>",
        f'<header><h1>meshpacs · site <span id="site-id">{site}</span></h1>',
        f"<p>{_e(mesh)} · page drawn {_e(updated)} · reloads every {REFRESH_SECONDS} s"
        " · read-only</p></header><main>",
        _warnings(status),
        _studies(status, figures),
        _chart(history),
        _peers(status, now),
        _audits(status, now),
        _upkeep(status, figures, now),
        _recovery(status, now),
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def _warnings(status: Mapping[str, Any]) -> str:
    """The status document's warnings, first on the page (they are PHI-free sentences)."""
    found = [w for w in status.get("warnings") or [] if isinstance(w, Mapping)]
    if not found:
        return ""
    items = "".join(
        f'<p class="warn" data-code="{_e(w.get("code", ""))}">{_e(w.get("message", ""))}'
        f' <span class="quiet">[{_e(w.get("code", ""))}]</span></p>'
        for w in found
    )
    return f'<section class="wide" id="warnings"><h2>Warnings ({len(found)})</h2>{items}</section>'


def _card(kind: str, figure: str, label: str) -> str:
    return (
        f'<div class="card {kind}" id="studies-{kind}"><div class="figure">{_e(figure)}</div>'
        f"<div>{_e(label)}</div></div>"
    )


def _studies(status: Mapping[str, Any], figures: Mapping[str, Any]) -> str:
    studies = _dict(status.get("studies"))
    age = figures.get("backlog_oldest_age_seconds")
    waiting = _int(studies.get("unprotected"))
    age_text, age_label = "—", "oldest in the backlog (none waiting)"
    if waiting:
        age_label = "oldest in the backlog"
        age_text = _duration(float(age)) if isinstance(age, int | float) else "unknown"
    by_state = _dict(figures.get("studies_by_state"))
    detail = ""
    if by_state:
        shown = ", ".join(f"{_int(v)} {k}" for k, v in by_state.items())
        detail = f'<p class="quiet">In the catalog: {_e(shown)}.</p>'
    return (
        '<section class="wide"><h2>This site\'s studies</h2><div class="cards">'
        + _card("total", str(_int(studies.get("total"))), "studies")
        + _card("protected", str(_int(studies.get("protected"))), "protected")
        + _card("degraded", str(_int(studies.get("degraded"))), "degraded (a bundle below n)")
        + _card("unprotected", str(waiting), "not yet protected (backlog)")
        + _card("age", age_text, age_label)
        + f"</div>{detail}</section>"
    )


def _chart(history: Sequence[Snapshot]) -> str:
    title = "<h2>Protection over time</h2>"
    shown = list(history)[-_CHART_BARS:]
    if not shown:
        return (
            f'<section class="wide" id="history">{title}'
            '<p class="quiet">No history yet: the node records the counts every few minutes.'
            "</p></section>"
        )
    top = max(1, *(s.total for s in shown))
    step = _CHART_WIDTH / max(len(shown), 24)
    bar = max(1.0, step * 0.8)
    rects: list[str] = []
    for index, entry in enumerate(shown):
        x = index * step
        base = float(_CHART_HEIGHT)
        for state in ("protected", "degraded", "unprotected"):
            count = getattr(entry, state)
            if not count:
                continue
            height = _CHART_HEIGHT * count / top
            base -= height
            rects.append(
                f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar:.1f}" height="{height:.1f}"'
                f' fill="{_COLOURS[state]}"><title>{_e(count)} {state}</title></rect>'
            )
    first, last = shown[0], shown[-1]
    span = time.strftime("%Y-%m-%d %H:%M", time.gmtime(first.at))
    end = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(last.at))
    share = f"{100 * last.protected / last.total:.0f}%" if last.total else "no studies"
    legend = "".join(
        f'<span style="background:{colour}"></span>{state}' for state, colour in _COLOURS.items()
    )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="100%"'
        f' viewBox="0 0 {_CHART_WIDTH} {_CHART_HEIGHT}" preserveAspectRatio="none"'
        f' style="height:{_CHART_HEIGHT}px;background:#f7f9fb">'
        f"<title>studies by protection, {len(shown)} snapshots</title>{''.join(rects)}</svg>"
    )
    return (
        f'<section class="wide" id="history">{title}{svg}'
        f'<p class="legend quiet">{_e(span)} to {_e(end)}, {len(shown)} snapshots;'
        f" protected now: {_e(share)}{legend}</p></section>"
    )


def _peers(status: Mapping[str, Any], now: float) -> str:
    peers = [p for p in status.get("peers") or [] if isinstance(p, Mapping)]
    as_of = _when(status.get("peers_as_of"), now)
    rows = []
    for peer in peers:
        audits = _dict(peer.get("audits"))
        online = '<span class="up">online</span>' if peer.get("online") else (
            '<span class="down">offline</span>'
        )  # fmt: skip
        reputation = audits.get("reputation")
        rep = f"{reputation:.2f}" if isinstance(reputation, int | float) else "—"
        if audits.get("shunned"):
            rep += " (shunned)"
        latency = audits.get("latency_ms")
        space = _dict(peer.get("space"))
        held_for = _dict(space.get("held_for_them"))
        held_by = _dict(space.get("held_by_them"))
        rows.append(
            "<tr>"
            f"<td>{_e(peer.get('site_id', '?'))}</td><td>{online}</td>"
            f"<td>{'yes' if peer.get('trusted') else 'no'}</td><td>{_e(rep)}</td>"
            f"<td>{_e(_int(audits.get('audits_passed')))} / "
            f"{_e(_int(audits.get('audits_failed')))}</td>"
            f"<td>{_e('—' if latency is None else f'{latency} ms')}</td>"
            f"<td>{_e(_when(audits.get('last_audit_at'), now))}</td>"
            f"<td>{_e(_int(held_for.get('fragments')))} ({_e(_size(held_for.get('bytes')))})</td>"
            f"<td>{_e(_int(held_by.get('shares')))} ({_e(_size(held_by.get('bytes')))})</td></tr>"
        )
    online_count = sum(1 for p in peers if p.get("online"))
    body = (
        "<table><tr><th>site</th><th>state</th><th>trusted</th><th>reputation</th>"
        "<th>audits passed / failed</th><th>latency</th><th>last audit</th>"
        "<th>its shares held here</th><th>our shares held there</th></tr>"
        + "".join(rows)
        + "</table>"
        if rows
        else '<p class="quiet">No partner sites known yet.</p>'
    )
    return (
        f'<section class="wide" id="peers"><h2>Federation: {online_count} of {len(peers)}'
        f" partner sites online</h2>{body}"
        f'<p class="quiet">Peers as the node last saw them: {_e(as_of)}.</p></section>'
    )


def _audits(status: Mapping[str, Any], now: float) -> str:
    audits = _dict(status.get("audits"))
    placements = _dict(audits.get("placements"))
    repairs = audits.get("repairs")
    shares = ", ".join(f"{_int(v)} {k}" for k, v in placements.items()) or "none"
    rows = [
        ("shares at partners", shares),
        ("audits", f"{_int(audits.get('passed'))} passed, {_int(audits.get('failed'))} failed"),
        ("last audit", _when(audits.get("last_audit_at"), now)),
    ]
    if isinstance(repairs, Mapping):
        lost = ", ".join(str(s) for s in repairs.get("lost_sites") or []) or "none"
        rows += [
            (
                "repairs",
                f"{_int(repairs.get('repaired'))} repaired, {_int(repairs.get('failed'))} failed,"
                f" {_int(repairs.get('shares_placed'))} shares placed",
            ),
            ("bundles below n", str(_int(repairs.get("bundles_below_n")))),
            ("last repair", _when(repairs.get("last_repair_at"), now)),
            ("lost sites", lost),
        ]
    else:
        rows.append(("repairs", "none recorded"))
    return f'<section id="audits"><h2>Audits and repair</h2>{_list(rows)}</section>'


def _upkeep(status: Mapping[str, Any], figures: Mapping[str, Any], now: float) -> str:
    rows: list[tuple[str, str]] = []
    held = _dict(figures.get("held"))
    if held:
        rows.append(
            (
                "held for partners",
                f"{_int(held.get('fragments'))} fragments, {_size(held.get('bytes'))},"
                f" {_int(held.get('owners'))} owner sites",
            )
        )
    ingest = _dict(figures.get("ingest"))
    if ingest:
        rows.append(
            (
                "received from the PACS",
                f"{_int(ingest.get('instances'))} instances, {_size(ingest.get('bytes'))}",
            )
        )
    scrub = status.get("scrub")
    if isinstance(scrub, Mapping):
        rows.append(
            (
                "last scrub",
                f"{_int(scrub.get('fragments'))} checked, {_int(scrub.get('quarantined'))}"
                f" quarantined, {_when(scrub.get('finished_at'), now)}",
            )
        )
    else:
        rows.append(("last scrub", "none yet"))
    renewal = _dict(_dict(status.get("leases")).get("renewal"))
    if renewal:
        rows.append(
            (
                "leases",
                f"{_int(renewal.get('renewed'))} of {_int(renewal.get('fragments'))} renewed,"
                f" {_when(renewal.get('renewed_at'), now)}",
            )
        )
    delegate = _dict(status.get("delegate"))
    if delegate.get("delegations"):
        acting = ", ".join(str(s) for s in delegate.get("acting_for") or []) or "none"
        rebuilt = _int(_dict(delegate.get("since_start")).get("shares_placed"))
        rows.append(
            (
                "delegate",
                f"for {_int(delegate.get('delegations'))} sites; acting for {acting};"
                f" {rebuilt} shares rebuilt since start",
            )
        )
    forgets = _dict(status.get("forgets"))
    if forgets and (forgets.get("pending") or forgets.get("deleting") or forgets.get("done")):
        rows.append(
            (
                "forgotten studies",
                f"{_int(forgets.get('done'))} done, {_int(forgets.get('deleting'))} deleting,"
                f" {_int(forgets.get('pending'))} pending",
            )
        )
    return f'<section id="upkeep"><h2>Storage and upkeep</h2>{_list(rows)}</section>'


def _recovery(status: Mapping[str, Any], now: float) -> str:
    recovery = status.get("recovery")
    if not isinstance(recovery, Mapping) or not recovery:
        body = '<p class="quiet" id="recovery-state">No recovery running.</p>'
        return f'<section class="wide" id="recovery"><h2>Recovery</h2>{body}</section>'
    outcome = recovery.get("outcome")
    state = f"finished: {outcome}" if recovery.get("finished") else str(recovery.get("phase"))
    if recovery.get("stalled"):
        state += " (no news for a while: is meshpacs recover still running?)"
    rows = [
        ("site", str(recovery.get("site_id", "?"))),
        ("state", state),
        ("started", _when(recovery.get("started_at"), now)),
        ("last update", _when(recovery.get("updated_at"), now)),
    ]
    bundles = _dict(recovery.get("bundles"))
    if bundles:
        rows.append(
            (
                "bundles",
                f"{_int(bundles.get('done'))} of {_int(bundles.get('total'))} done,"
                f" {_int(bundles.get('unrecoverable'))} unrecoverable",
            )
        )
    studies, instances = _dict(recovery.get("studies")), _dict(recovery.get("instances"))
    if studies:
        rows.append(("studies", f"{_int(studies.get('done'))} of {_int(studies.get('total'))}"))
    if instances:
        rows.append(
            (
                "instances",
                f"{_int(instances.get('delivered'))} of {_int(instances.get('total'))}"
                f" delivered, {_int(instances.get('failed'))} failed",
            )
        )
    size = _dict(recovery.get("bytes"))
    if size:
        rows.append(("bytes", f"{_size(size.get('delivered'))} of {_size(size.get('total'))}"))
    if recovery.get("target"):
        rows.append(("into", str(recovery.get("target"))))
    body = f'<div id="recovery-state">{_list(rows)}</div>'
    return f'<section class="wide" id="recovery"><h2>Recovery</h2>{body}</section>'


def _list(rows: Sequence[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows) + "</dl>"
