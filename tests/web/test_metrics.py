"""/metrics: strict text format 0.0.4, values exactly those of the status document."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshpacs.node.config import load_config
from meshpacs.node.site import create_site
from meshpacs.node.status import site_status
from meshpacs.web import metrics
from meshpacs.web.metrics import CONTENT_TYPE, render_metrics

from .documents import full_figures, full_recovery, full_status
from .exposition import parse_exposition


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
    status = {**full_status(), "recovery": full_recovery(stalled=False)}
    m = parse_exposition(render_metrics(status, full_figures()))
    assert m["meshpacs_recovery_running"].value() == 1
    assert m["meshpacs_recovery_stalled"].value() == 0
    assert m["meshpacs_recovery_bundles"].value(state="done") == 5
    assert m["meshpacs_recovery_bundles"].value(state="unrecoverable") == 1
    assert m["meshpacs_recovery_instances"].value(state="delivered") == 150
    assert m["meshpacs_recovery_bytes"].value(state="total") == 4_800_000
    assert "meshpacs_recovery_running" not in parse_exposition(render_metrics(full_status()))


# -- pinned text -----------------------------------------------------------------------
# The whole page for the full document with a recovery shown, written once from the renderer
# and read through by hand: a refactor of the families must leave every byte as it was
# (order, HELP text, label order, number formatting).
PINNED = """\
# HELP meshpacs_info This node; the site label is its site ID.
# TYPE meshpacs_info gauge
meshpacs_info{site="site-a"} 1
# HELP meshpacs_mesh_enabled 1 if the node takes part in the backup mesh.
# TYPE meshpacs_mesh_enabled gauge
meshpacs_mesh_enabled 1
# HELP meshpacs_warnings_active Warnings meshpacs status shows now (0 when all is well).
# TYPE meshpacs_warnings_active gauge
meshpacs_warnings_active 2
# HELP meshpacs_warnings 1 for each warning meshpacs status shows now, by code.
# TYPE meshpacs_warnings gauge
meshpacs_warnings{code="peer_failing_audits"} 1
meshpacs_warnings{code="sites_lost"} 1
# HELP meshpacs_studies Studies of this site by protection: protected (every bundle at n partners), degraded (protected, some bundle below n), unprotected (not yet backed up).
# TYPE meshpacs_studies gauge
meshpacs_studies{state="protected"} 4
meshpacs_studies{state="degraded"} 1
meshpacs_studies{state="unprotected"} 2
# HELP meshpacs_backlog_studies Studies not yet protected (the backup backlog).
# TYPE meshpacs_backlog_studies gauge
meshpacs_backlog_studies 2
# HELP meshpacs_backlog_oldest_age_seconds Seconds since the first instance of the oldest study not yet protected arrived (0 when nothing waits).
# TYPE meshpacs_backlog_oldest_age_seconds gauge
meshpacs_backlog_oldest_age_seconds 95.5
# HELP meshpacs_catalog_studies Studies in the catalog by their backup state (receiving, stable, queued, protected).
# TYPE meshpacs_catalog_studies gauge
meshpacs_catalog_studies{state="protected"} 5
meshpacs_catalog_studies{state="queued"} 1
meshpacs_catalog_studies{state="receiving"} 1
meshpacs_catalog_studies{state="stable"} 0
# HELP meshpacs_shares_at_partners This site's shares stored at partners, by the verdict of their last audit.
# TYPE meshpacs_shares_at_partners gauge
meshpacs_shares_at_partners{verdict="ok"} 9
meshpacs_shares_at_partners{verdict="failed"} 1
meshpacs_shares_at_partners{verdict="missing"} 2
meshpacs_shares_at_partners{verdict="unaudited"} 3
meshpacs_shares_at_partners{verdict="out_of_challenges"} 0
# HELP meshpacs_audits_total Audits of partners holding this site's shares, by result.
# TYPE meshpacs_audits_total counter
meshpacs_audits_total{result="passed"} 40
meshpacs_audits_total{result="failed"} 3
# HELP meshpacs_last_audit_timestamp_seconds When the last audit answered (Unix time).
# TYPE meshpacs_last_audit_timestamp_seconds gauge
meshpacs_last_audit_timestamp_seconds 1699999988.0
# HELP meshpacs_repairs_total Repairs of this site's bundles, by outcome.
# TYPE meshpacs_repairs_total counter
meshpacs_repairs_total{outcome="repaired"} 5
meshpacs_repairs_total{outcome="failed"} 1
# HELP meshpacs_repair_shares_placed_total Shares rebuilt by repair and placed at partners.
# TYPE meshpacs_repair_shares_placed_total counter
meshpacs_repair_shares_placed_total 6
# HELP meshpacs_bundles_below_n Bundles of this site with fewer than n good shares.
# TYPE meshpacs_bundles_below_n gauge
meshpacs_bundles_below_n 1
# HELP meshpacs_replaced_copies_to_delete Shares replaced by repair still to be deleted at sites that came back.
# TYPE meshpacs_replaced_copies_to_delete gauge
meshpacs_replaced_copies_to_delete 2
# HELP meshpacs_lost_sites Partner sites unreachable for longer than lost_after_hours.
# TYPE meshpacs_lost_sites gauge
meshpacs_lost_sites 1
# HELP meshpacs_last_repair_timestamp_seconds When the last repair ran (Unix time).
# TYPE meshpacs_last_repair_timestamp_seconds gauge
meshpacs_last_repair_timestamp_seconds 1699999700.0
# HELP meshpacs_peers Partner sites by state: up (seen online) or down.
# TYPE meshpacs_peers gauge
meshpacs_peers{state="up"} 2
meshpacs_peers{state="down"} 1
# HELP meshpacs_peer_up 1 if the partner site is online, by site ID.
# TYPE meshpacs_peer_up gauge
meshpacs_peer_up{peer="site-b",trusted="true"} 1
meshpacs_peer_up{peer="site-c",trusted="false"} 1
meshpacs_peer_up{peer="site-d",trusted="true"} 0
# HELP meshpacs_peer_reputation This site's audit score of the partner, 0 to 1.
# TYPE meshpacs_peer_reputation gauge
meshpacs_peer_reputation{peer="site-b"} 0.91
meshpacs_peer_reputation{peer="site-c"} 0.2
# HELP meshpacs_peer_audits_total Audits of the partner by this site, by result.
# TYPE meshpacs_peer_audits_total counter
meshpacs_peer_audits_total{peer="site-b",result="passed"} 30
meshpacs_peer_audits_total{peer="site-b",result="failed"} 0
meshpacs_peer_audits_total{peer="site-c",result="passed"} 10
meshpacs_peer_audits_total{peer="site-c",result="failed"} 3
# HELP meshpacs_peer_audit_latency_seconds The partner's typical audit answer time.
# TYPE meshpacs_peer_audit_latency_seconds gauge
meshpacs_peer_audit_latency_seconds{peer="site-b"} 0.0035
meshpacs_peer_audit_latency_seconds{peer="site-c"} 0.007
# HELP meshpacs_peer_held_here_bytes Bytes of the partner's shares this node keeps for it.
# TYPE meshpacs_peer_held_here_bytes gauge
meshpacs_peer_held_here_bytes{peer="site-b"} 500000
# HELP meshpacs_peer_held_there_bytes Bytes of this site's shares the partner keeps.
# TYPE meshpacs_peer_held_there_bytes gauge
meshpacs_peer_held_there_bytes{peer="site-b"} 420000
# HELP meshpacs_peers_as_of_timestamp_seconds When the node last wrote its peer list.
# TYPE meshpacs_peers_as_of_timestamp_seconds gauge
meshpacs_peers_as_of_timestamp_seconds 1699999995.0
# HELP meshpacs_scrub_last_pass_fragments Partners' shares checked by the last scrub pass.
# TYPE meshpacs_scrub_last_pass_fragments gauge
meshpacs_scrub_last_pass_fragments 11
# HELP meshpacs_scrub_last_pass_bytes Bytes read by the last scrub pass.
# TYPE meshpacs_scrub_last_pass_bytes gauge
meshpacs_scrub_last_pass_bytes 123456
# HELP meshpacs_scrub_last_pass_quarantined Shares the last scrub pass found rotten.
# TYPE meshpacs_scrub_last_pass_quarantined gauge
meshpacs_scrub_last_pass_quarantined 1
# HELP meshpacs_scrub_quarantined_held Rotten shares kept as evidence, not yet replaced.
# TYPE meshpacs_scrub_quarantined_held gauge
meshpacs_scrub_quarantined_held 1
# HELP meshpacs_scrub_last_pass_timestamp_seconds When the last scrub pass ended.
# TYPE meshpacs_scrub_last_pass_timestamp_seconds gauge
meshpacs_scrub_last_pass_timestamp_seconds 1699999940.0
# HELP meshpacs_delegations Trusted sites that let this node repair for them while down.
# TYPE meshpacs_delegations gauge
meshpacs_delegations 2
# HELP meshpacs_delegate_acting_for Down sites this node currently repairs for.
# TYPE meshpacs_delegate_acting_for gauge
meshpacs_delegate_acting_for 1
# HELP meshpacs_delegate_shares_rebuilt_total Shares of down sites rebuilt as their delegate, since start.
# TYPE meshpacs_delegate_shares_rebuilt_total counter
meshpacs_delegate_shares_rebuilt_total 3
# HELP meshpacs_lease_renewed_shares Shares whose lease the last renewal extended.
# TYPE meshpacs_lease_renewed_shares gauge
meshpacs_lease_renewed_shares 11
# HELP meshpacs_lease_shares Shares the last lease renewal covered.
# TYPE meshpacs_lease_shares gauge
meshpacs_lease_shares 12
# HELP meshpacs_lease_renewal_timestamp_seconds When the leases were last renewed.
# TYPE meshpacs_lease_renewal_timestamp_seconds gauge
meshpacs_lease_renewal_timestamp_seconds 1699996400.0
# HELP meshpacs_lease_expired_removed_total Partners' shares removed here out of lease.
# TYPE meshpacs_lease_expired_removed_total counter
meshpacs_lease_expired_removed_total 4
# HELP meshpacs_forget_requests Forget requests (meshpacs forget) by state.
# TYPE meshpacs_forget_requests gauge
meshpacs_forget_requests{state="pending"} 0
meshpacs_forget_requests{state="deleting"} 1
meshpacs_forget_requests{state="done"} 2
# HELP meshpacs_leaving 1 while the node hands back what it holds (meshpacs node leave).
# TYPE meshpacs_leaving gauge
meshpacs_leaving 0
# HELP meshpacs_fragments_held Fragments this node stores for partner sites.
# TYPE meshpacs_fragments_held gauge
meshpacs_fragments_held 8
# HELP meshpacs_fragments_held_bytes Bytes of fragments stored here for partner sites.
# TYPE meshpacs_fragments_held_bytes gauge
meshpacs_fragments_held_bytes 800000
# HELP meshpacs_fragment_owners Partner sites with fragments stored here.
# TYPE meshpacs_fragment_owners gauge
meshpacs_fragment_owners 3
# HELP meshpacs_ingest_instances_total Instances received from the PACS and catalogued.
# TYPE meshpacs_ingest_instances_total counter
meshpacs_ingest_instances_total 70
# HELP meshpacs_ingest_bytes_total Bytes of instances received from the PACS.
# TYPE meshpacs_ingest_bytes_total counter
meshpacs_ingest_bytes_total 7000000
# HELP meshpacs_local_instances Instances whose file is kept on this node's disk.
# TYPE meshpacs_local_instances gauge
meshpacs_local_instances 60
# HELP meshpacs_bundles This site's bundles by state (planned, encoded, stored, ...).
# TYPE meshpacs_bundles gauge
meshpacs_bundles{state="degraded"} 1
meshpacs_bundles{state="stored"} 4
# HELP meshpacs_bundle_bytes Bytes of this site's bundles by state.
# TYPE meshpacs_bundle_bytes gauge
meshpacs_bundle_bytes{state="degraded"} 9
meshpacs_bundle_bytes{state="stored"} 4000000
# HELP meshpacs_restore_instances_total Instances this node's C-MOVE/C-GET delivered (sent: stored by the peer) or failed, since start.
# TYPE meshpacs_restore_instances_total counter
meshpacs_restore_instances_total{result="sent"} 12
meshpacs_restore_instances_total{result="failed"} 1
# HELP meshpacs_restore_bytes_total Bytes of instances C-MOVE/C-GET delivered, since start.
# TYPE meshpacs_restore_bytes_total counter
meshpacs_restore_bytes_total 1200000
# HELP meshpacs_restore_mesh_bundles_total Bundles a retrieve gathered from the mesh (or not), since start.
# TYPE meshpacs_restore_mesh_bundles_total counter
meshpacs_restore_mesh_bundles_total{result="gathered"} 2
meshpacs_restore_mesh_bundles_total{result="failed"} 1
# HELP meshpacs_restore_mesh_instances_total Instances a retrieve brought back from the mesh, since start.
# TYPE meshpacs_restore_mesh_instances_total counter
meshpacs_restore_mesh_instances_total 9
# HELP meshpacs_restore_mesh_bytes_total Bytes of instances brought back from the mesh, since start.
# TYPE meshpacs_restore_mesh_bytes_total counter
meshpacs_restore_mesh_bytes_total 900000
# HELP meshpacs_backup_k Shares needed to rebuild a bundle ([backup] k).
# TYPE meshpacs_backup_k gauge
meshpacs_backup_k 2
# HELP meshpacs_backup_n Shares made of each bundle ([backup] n).
# TYPE meshpacs_backup_n gauge
meshpacs_backup_n 3
# HELP meshpacs_recovery_running 1 while a recovery shown here runs (0: finished).
# TYPE meshpacs_recovery_running gauge
meshpacs_recovery_running 1
# HELP meshpacs_recovery_stalled 1 if the running recovery stopped writing its progress.
# TYPE meshpacs_recovery_stalled gauge
meshpacs_recovery_stalled 1
# HELP meshpacs_recovery_bundles The recovery's bundles: total, done, unrecoverable.
# TYPE meshpacs_recovery_bundles gauge
meshpacs_recovery_bundles{state="total"} 12
meshpacs_recovery_bundles{state="done"} 5
meshpacs_recovery_bundles{state="unrecoverable"} 1
# HELP meshpacs_recovery_instances The recovery's instances: total, delivered, failed.
# TYPE meshpacs_recovery_instances gauge
meshpacs_recovery_instances{state="total"} 480
meshpacs_recovery_instances{state="delivered"} 150
meshpacs_recovery_instances{state="failed"} 2
# HELP meshpacs_recovery_bytes Bytes of the recovery's instances: total, delivered.
# TYPE meshpacs_recovery_bytes gauge
meshpacs_recovery_bytes{state="total"} 4800000
meshpacs_recovery_bytes{state="delivered"} 1500000
# HELP meshpacs_recovery_updated_timestamp_seconds When the recovery last wrote progress.
# TYPE meshpacs_recovery_updated_timestamp_seconds gauge
meshpacs_recovery_updated_timestamp_seconds 1699999300.0
"""  # noqa: E501


def pinned_status() -> dict[str, object]:
    return {**full_status(), "recovery": full_recovery()}


def test_the_full_page_is_byte_for_byte_the_pinned_one() -> None:
    parse_exposition(PINNED)  # the pin itself is strict 0.0.4
    assert render_metrics(pinned_status(), full_figures()) == PINNED


def test_the_pinned_document_gives_every_family_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[metrics.Family] = []

    class Recorded(metrics.Family):
        def __post_init__(self) -> None:
            super().__post_init__()
            made.append(self)

    monkeypatch.setattr(metrics, "Family", Recorded)
    text = render_metrics(pinned_status(), full_figures())
    assert made and len(made) == len(parse_exposition(text))
    assert [family.name for family in made if not family.samples] == []
