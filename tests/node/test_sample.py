"""The shipped sample config: it parses, its values are the defaults, it documents everything."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from meshpacs.errors import ConfigError
from meshpacs.node.config import (
    AuditTrailConfig,
    BackupConfig,
    CatalogConfig,
    DicomConfig,
    LoggingConfig,
    MaintenanceConfig,
    MeshConfig,
    NodeConfig,
    SiteConfig,
    WebConfig,
    parse_config,
    render_config,
    sample_config,
)

SECTIONS: dict[str, type] = {
    "site": SiteConfig,
    "dicom": DicomConfig,
    "catalog": CatalogConfig,
    "logging": LoggingConfig,
    "mesh": MeshConfig,
    "backup": BackupConfig,
    "maintenance": MaintenanceConfig,
    "web": WebConfig,
    "audit_trail": AuditTrailConfig,
}
TABLES = {("dicom", "destinations")}  # options written as a [table] rather than key = value
# Sizes the file gives in the unit its key names (GiB, MiB, KiB), held in bytes by a field
# of another name: the key the sample must document for each such field. Spelt out here,
# not imported from config.py, so a renamed key is a deliberate change to both files.
SAMPLE_KEY_OF_FIELD = {
    ("mesh", "offer_bytes"): "offer_gb",
    ("mesh", "partner_quota_bytes"): "partner_quota_gb",
    ("backup", "segment_bytes"): "segment_kib",
    ("backup", "max_bundle_bytes"): "max_bundle_mb",
    ("backup", "keep_local_seconds"): "keep_local",
    ("maintenance", "reputation_half_life_seconds"): "reputation_half_life_days",
    ("maintenance", "audit_spread_seconds"): "audit_spread_days",
    ("maintenance", "scrub_bytes_per_second"): "scrub_mb_per_second",
    ("maintenance", "scrub_interval_seconds"): "scrub_interval_hours",
    ("maintenance", "lost_after_seconds"): "lost_after_hours",
    ("maintenance", "repair_interval_seconds"): "repair_interval_minutes",
    ("maintenance", "lease_seconds"): "lease_days",
    ("maintenance", "lease_renew_seconds"): "lease_renew_hours",
    ("maintenance", "expired_grace_seconds"): "expired_grace_days",
}


def sample_key(table: str, field: dataclasses.Field[object]) -> str:
    return SAMPLE_KEY_OF_FIELD.get((table, field.name), field.name)


def settings_by_table(text: str) -> dict[str, list[tuple[str, list[str]]]]:
    """Table -> [(key, the comment lines right above it)] for every active setting line."""
    found: dict[str, list[tuple[str, list[str]]]] = {}
    table = ""
    comments: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            comments.append(line)
            continue
        header = re.fullmatch(r"\[([a-z._]+)\]", line)
        setting = re.match(r"([a-z_]+) = ", line)
        if header:
            table = header.group(1)
            parent, _, leaf = table.rpartition(".")
            if parent:
                found.setdefault(parent, []).append((leaf, comments))
        elif setting:
            found.setdefault(table, []).append((setting.group(1), comments))
        comments = []
    return found


def test_sample_is_valid_and_its_values_are_the_defaults() -> None:
    config = parse_config(sample_config(), Path("/etc/meshpacs"), "sample")
    assert config == NodeConfig(
        site=SiteConfig(id="st-marys", data_dir=Path("/var/lib/meshpacs")),
        dicom=DicomConfig(ae_title="MESHPACS"),
    )


def test_sample_documents_every_option_with_a_comment_of_its_own() -> None:
    documented = settings_by_table(sample_config())
    assert set(documented) == set(SECTIONS)
    for table, cls in SECTIONS.items():
        names = [name for name, _ in documented[table]]
        keys = [sample_key(table, f) for f in dataclasses.fields(cls)]
        assert sorted(names) == sorted(keys), table
        for name, comments in documented[table]:
            assert len(comments) >= 2, f"{table}.{name} needs an explanation above it"


def test_sample_says_what_the_default_of_each_optional_setting_is() -> None:
    documented = settings_by_table(sample_config())
    for table, cls in SECTIONS.items():
        optional = {
            sample_key(table, f)
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        }
        for name, comments in documented[table]:
            explained = " ".join(comments).lower()
            assert ("default" in explained) == (name in optional), f"{table}.{name}"


def test_render_fills_in_the_site_and_keeps_every_comment(tmp_path: Path) -> None:
    text = render_config("general-7", "MESH_GEN7", ".", 4104)
    config = parse_config(text, tmp_path, "rendered")
    assert config.site == SiteConfig(id="general-7", data_dir=tmp_path)
    assert config.dicom == DicomConfig(ae_title="MESH_GEN7", port=4104)
    assert config.catalog == CatalogConfig() and config.logging == LoggingConfig()
    comments = [line for line in sample_config().splitlines() if line.startswith("#")]
    assert [line for line in text.splitlines() if line.startswith("#")] == comments
    assert settings_by_table(text) == settings_by_table(sample_config())
    tomllib.loads(text)


def test_render_writes_awkward_values_as_valid_toml(tmp_path: Path) -> None:
    data_dir = tmp_path / 'we"ird\\dir \x7f'
    text = render_config("a", " AE \"'` ", data_dir, 1)
    config = parse_config(text, tmp_path, "rendered")
    assert config.site.data_dir == data_dir
    assert config.dicom.ae_title == "AE \"'`"


@pytest.mark.parametrize(
    ("site_id", "ae_title", "port", "words"),
    [
        ("St-Marys", "MESH", 104, "site ID"),
        ("st-marys", "   ", 104, "AE title"),
        ("st-marys", "A" * 17, 104, "AE title"),
        ("st-marys", "MESH", 0, "port"),
        ("st-marys", "MESH", 70000, "port"),
    ],
)
def test_render_refuses_values_that_would_not_load(
    site_id: str, ae_title: str, port: int, words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        render_config(site_id, ae_title, ".", port)
