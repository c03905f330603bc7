"""/metrics: strict text format 0.0.4, values exactly those of the status document."""

from __future__ import annotations

from pathlib import Path

from meshpacs.node.config import load_config
from meshpacs.node.site import create_site
from meshpacs.node.status import site_status
from meshpacs.web.metrics import CONTENT_TYPE, render_metrics

from .documents import full_figures, full_status
from .exposition import parse_exposition
from .test_dashboard import recovery_document


def test_every_line_parses_and_every_family_is_documented_and_named_meshpacs() -> None:
    families = parse_exposition(render_metrics(full_status(), full_figures()))
    assert len(families) > 30
    for name, family in families.items():
        assert name.startswith("meshpacs_"), name
        assert family.help and family.type in ("counter", "gauge"), name
        assert family.samples, name
        assert name.endswith("_total") == (family.type == "counter"), name
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_values_are_those_of_the_status_document() -> None:
    status, figures = full_status(), full_figures()
    m = parse_exposition(render_metrics(status, figures))
    assert m["meshpacs_info"].value(site="site-a") == 1
    assert m["meshpacs_mesh_enabled"].value() == 1
    for state in ("protected", "degraded", "unprotected"):
        assert m["meshpacs_studies"].value(state=state) == status["studies"][state]
    assert m["meshpacs_backlog_studies"].value() == 2
    assert m["meshpacs_backlog_oldest_age_seconds"].value() == 95.5
    assert m["meshpacs_catalog_studies"].value(state="queued") == 1
    for verdict, count in status["audits"]["placements"].items():
        assert m["meshpacs_shares_at_partners"].value(verdict=verdict) == count
    assert m["meshpacs_audits_total"].value(result="passed") == 40
    assert m["meshpacs_audits_total"].value(result="failed") == 3
    assert m["meshpacs_repairs_total"].value(outcome="repaired") == 5
    assert m["meshpacs_repairs_total"].value(outcome="failed") == 1
    assert m["meshpacs_repair_shares_placed_total"].value() == 6
    assert m["meshpacs_bundles_below_n"].value() == 1
    assert m["meshpacs_lost_sites"].value() == 1
    assert m["meshpacs_peers"].value(state="up") == 2
    assert m["meshpacs_peers"].value(state="down") == 1
    assert m["meshpacs_peer_up"].value(peer="site-d", trusted="true") == 0
    assert m["meshpacs_peer_up"].value(peer="site-c", trusted="false") == 1
    assert m["meshpacs_peer_reputation"].value(peer="site-b") == 0.91
    assert m["meshpacs_peer_audits_total"].value(peer="site-c", result="failed") == 3
    assert m["meshpacs_peer_audit_latency_seconds"].value(peer="site-b") == 0.0035
    assert m["meshpacs_scrub_last_pass_fragments"].value() == 11
    assert m["meshpacs_scrub_quarantined_held"].value() == 1
    assert m["meshpacs_delegate_shares_rebuilt_total"].value() == 3
    assert m["meshpacs_delegate_acting_for"].value() == 1
    assert m["meshpacs_lease_expired_removed_total"].value() == 4
    assert m["meshpacs_forget_requests"].value(state="done") == 2
    assert m["meshpacs_leaving"].value() == 0
    assert m["meshpacs_fragments_held"].value() == 8
    assert m["meshpacs_fragments_held_bytes"].value() == 800_000
    assert m["meshpacs_ingest_instances_total"].value() == 70
    assert m["meshpacs_ingest_bytes_total"].value() == 7_000_000
    assert m["meshpacs_bundles"].value(state="stored") == 4
    assert m["meshpacs_backup_n"].value() == 3
    assert m["meshpacs_restore_instances_total"].value(result="sent") == 12
    assert m["meshpacs_restore_instances_total"].value(result="failed") == 1
    assert m["meshpacs_restore_bytes_total"].value() == 1_200_000
    assert m["meshpacs_restore_mesh_bundles_total"].value(result="failed") == 1
    assert m["meshpacs_restore_mesh_instances_total"].value() == 9
    assert m["meshpacs_restore_mesh_bytes_total"].value() == 900_000
    assert m["meshpacs_warnings_active"].value() == 2
    assert m["meshpacs_warnings"].value(code="sites_lost") == 1
    assert {ls["code"] for ls, _ in m["meshpacs_warnings"].samples} == {
        "sites_lost",
        "peer_failing_audits",
    }
    assert m["meshpacs_peer_held_here_bytes"].value(peer="site-b") == 500_000
    assert m["meshpacs_peer_held_there_bytes"].value(peer="site-b") == 420_000
    # peer site-d was never audited: no reputation sample rather than a made-up one
    assert {ls["peer"] for ls, _ in m["meshpacs_peer_reputation"].samples} == {"site-b", "site-c"}


def test_label_values_and_help_are_escaped() -> None:
    status = full_status()
    awkward = 'we"ird\\site\nname'
    status["peers"] = [{"site_id": awkward, "online": True, "trusted": False, "audits": None}]
    text = render_metrics(status)
    assert 'peer="we\\"ird\\\\site\\nname"' in text
    m = parse_exposition(text)
    assert m["meshpacs_peer_up"].value(peer=awkward, trusted="false") == 1


def test_unknown_figures_are_left_out_not_reported_as_zero() -> None:
    m = parse_exposition(render_metrics({"site_id": "site-a", "mesh_enabled": False}))
    assert m["meshpacs_mesh_enabled"].value() == 0
    for absent in (
        "meshpacs_last_audit_timestamp_seconds",
        "meshpacs_backlog_oldest_age_seconds",
        "meshpacs_studies",
        "meshpacs_fragments_held",
    ):
        assert absent not in m


def test_a_new_sites_real_status_document_renders(tmp_path: Path) -> None:
    created = create_site(tmp_path / "site", "st-marys", "MESH_STMARYS", 11112)
    status = site_status(load_config(created.config_path))
    m = parse_exposition(render_metrics(status))
    assert m["meshpacs_info"].value(site="st-marys") == 1
    assert m["meshpacs_studies"].value(state="protected") == 0
    # a new site with the mesh off and no study has nothing to warn about
    assert m["meshpacs_warnings_active"].value() == 0 and "meshpacs_warnings" not in m


def test_a_recovery_shown_here_has_its_gauges() -> None:
    status = {**full_status(), "recovery": recovery_document()}
    m = parse_exposition(render_metrics(status, full_figures()))
    assert m["meshpacs_recovery_running"].value() == 1
    assert m["meshpacs_recovery_stalled"].value() == 0
    assert m["meshpacs_recovery_bundles"].value(state="done") == 3
    assert m["meshpacs_recovery_bundles"].value(state="unrecoverable") == 1
    assert m["meshpacs_recovery_instances"].value(state="delivered") == 120
    assert m["meshpacs_recovery_bytes"].value(state="total") == 4_000_000
    assert "meshpacs_recovery_running" not in parse_exposition(render_metrics(full_status()))
