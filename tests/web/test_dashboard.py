"""The dashboard page: what it shows, every value escaped, nothing from outside."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from meshpacs.web.dashboard import render_dashboard
from meshpacs.web.history import Snapshot

from .documents import NOW, full_figures, full_recovery, full_status


def card(page: str, kind: str) -> str:
    found = re.search(rf'id="studies-{kind}"><div class="figure">([^<]*)</div>', page)
    assert found, kind
    return found.group(1)


class _Checker(HTMLParser):
    """Collects tags and attributes, so a test can look for outside resources and scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_the_page_shows_the_studies_the_peers_and_the_figures() -> None:
    history = [Snapshot(NOW - 600 + 60 * i, 7, i % 5, 1, 6 - i % 5) for i in range(10)]
    page = render_dashboard(full_status(), full_figures(), history, now=NOW)
    assert '<span id="site-id">site-a</span>' in page
    assert card(page, "protected") == "4"
    assert card(page, "degraded") == "1"
    assert card(page, "unprotected") == "2"
    assert card(page, "total") == "7"
    assert card(page, "age") == "2 min"
    assert '<meta http-equiv="refresh" content="10">' in page
    assert "2 of 3 partner sites online" in page
    assert "site-c" in page and "(shunned)" in page
    assert "5 repaired, 1 failed, 6 shares placed" in page
    assert "Partner sites unreachable for long: site-d." in page
    assert page.index('id="warnings"') < page.index('id="studies-total"')  # warnings first
    assert '<p class="warn" data-code="peer_failing_audits">Failing audits: site-c.' in page
    assert "<td>5 (500.0 KB)</td><td>4 (420.0 KB)</td>" in page  # site-b's space
    assert "No recovery running." in page
    assert page.count("<rect ") >= 10  # the chart, one bar (of up to 3 parts) per snapshot


def test_every_value_is_escaped() -> None:
    status = full_status()
    evil = '<script>alert("x")</script>'
    status["peers"][0]["site_id"] = evil
    status["audits"]["repairs"]["lost_sites"] = [evil]
    status["warnings"] = [{"code": evil, "message": evil}]
    page = render_dashboard(status, full_figures(), now=NOW)
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


def test_nothing_is_loaded_from_anywhere_and_no_script_runs() -> None:
    checker = _Checker()
    checker.feed(render_dashboard(full_status(), full_figures(), [Snapshot(NOW, 1, 1, 0, 0)]))
    tags = {tag for tag, _ in checker.tags}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed"}
    for tag, attrs in checker.tags:
        for name in ("src", "href"):
            assert name not in attrs, (tag, attrs)


def test_a_new_site_says_what_is_missing_rather_than_inventing_figures() -> None:
    status = {"site_id": "st-marys", "mesh_enabled": False, "studies": {}, "peers": []}
    page = render_dashboard(status, {}, [], now=NOW)
    assert card(page, "protected") == "0"
    assert card(page, "age") == "—" and "(none waiting)" in page
    assert "No history yet" in page
    assert "No partner sites known yet." in page
    assert "mesh off" in page
    assert 'id="warnings"' not in page  # no warnings in the document: no section


def test_a_recovery_in_the_document_is_shown() -> None:
    status = {**full_status(), "recovery": full_recovery(stalled=False)}
    page = render_dashboard(status, full_figures(), now=NOW)
    assert "No recovery running." not in page
    assert "<dt>bundles</dt><dd>5 of 12 done, 1 unrecoverable</dd>" in page
    assert "<dt>instances</dt><dd>150 of 480 delivered, 2 failed</dd>" in page
    assert "<dt>bytes</dt><dd>1.5 MB of 4.8 MB</dd>" in page
    assert "<dt>state</dt><dd>recovering</dd>" in page
    assert "<dt>started</dt><dd>67 min ago" in page
    stalled = {**full_status(), "recovery": full_recovery()}
    assert "is meshpacs recover still running?" in render_dashboard(stalled, now=NOW)
    done = full_recovery(finished=True, outcome="complete", phase="finished", stalled=False)
    page = render_dashboard({**full_status(), "recovery": done}, now=NOW)
    assert "<dt>state</dt><dd>finished: complete</dd>" in page
