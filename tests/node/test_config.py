"""The node config file: defaults, and a clear ConfigError naming file and key for every mistake."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from meshpacs.errors import ConfigError, MeshError
from meshpacs.node.config import (
    AuditTrailConfig,
    BackupConfig,
    CatalogConfig,
    Destination,
    DicomConfig,
    LoggingConfig,
    MeshConfig,
    NodeConfig,
    load_config,
    parse_config,
)

SOURCE = "/etc/meshpacs/config.toml"
BASE = Path("/etc/meshpacs")

MINIMAL = """
[site]
id = "st-marys"
data_dir = "/var/lib/meshpacs"
[dicom]
ae_title = "MESHPACS"
"""


def parse(text: str) -> NodeConfig:
    return parse_config(text, BASE, SOURCE)


def with_dicom(lines: str) -> str:
    return MINIMAL + lines + "\n"


def refused(text: str, key: str, *words: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    message = str(caught.value)
    assert SOURCE in message
    assert key in message, message
    for word in words:
        assert word in message, message
    assert "Traceback" not in message
    return caught.value


def test_minimal_config_takes_every_default() -> None:
    config = parse(MINIMAL)
    assert config.site.id == "st-marys"
    assert config.site.data_dir == Path("/var/lib/meshpacs")
    assert config.dicom == DicomConfig(ae_title="MESHPACS")
    assert config.dicom.bind == "0.0.0.0"
    assert config.dicom.port == 11112
    assert config.dicom.max_associations == 10
    assert config.dicom.max_pdu == 65536
    assert config.dicom.allowed_calling_aets == ()
    assert (config.dicom.network_timeout, config.dicom.acse_timeout) == (60, 30)
    assert config.dicom.dimse_timeout == 30
    assert config.dicom.max_instance_bytes == 4294967296
    assert dict(config.dicom.destinations) == {}
    assert config.catalog == CatalogConfig(stable_after_seconds=60)
    assert config.logging == LoggingConfig(level="INFO", log_phi=False)


def test_full_config_is_read() -> None:
    config = parse(
        """
[site]
id = "st-marys-2"
data_dir = "/srv/mesh"
[dicom]
ae_title = "  MESH_STM  "
bind = "::"
port = 104
max_associations = 4
max_pdu = 131072
allowed_calling_aets = ["PACS01", " PACS02 "]
network_timeout = 120
acse_timeout = 12.5
dimse_timeout = 45
max_instance_bytes = 1073741824
[dicom.destinations]
ORTHANC = "127.0.0.1:4242"
"VIEWER 3" = "viewer3.hospital.example:11112"
V6 = "[fd00::5]:104"
[catalog]
stable_after_seconds = 300
[logging]
level = "debug"
log_phi = true
"""
    )
    dicom = config.dicom
    assert dicom.ae_title == "MESH_STM"
    assert (dicom.bind, dicom.port, dicom.max_associations, dicom.max_pdu) == ("::", 104, 4, 131072)
    assert dicom.allowed_calling_aets == ("PACS01", "PACS02")
    assert (dicom.network_timeout, dicom.acse_timeout, dicom.dimse_timeout) == (120, 12.5, 45)
    assert dicom.max_instance_bytes == 1 << 30
    assert dicom.destinations == {
        "ORTHANC": ("127.0.0.1", 4242),
        "VIEWER 3": ("viewer3.hospital.example", 11112),
        "V6": ("fd00::5", 104),
    }
    assert isinstance(dicom.destinations["ORTHANC"], Destination)
    assert str(dicom.destinations["V6"]) == "[fd00::5]:104"
    assert config.catalog.stable_after_seconds == 300
    assert config.logging == LoggingConfig(level="DEBUG", log_phi=True)


def test_config_objects_are_frozen_all_the_way_down() -> None:
    config = parse(with_dicom('[dicom.destinations]\nA = "h:1"'))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dicom.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.dicom.destinations["B"] = Destination("h", 2)  # type: ignore[index]
    assert hash(config) == hash(parse(with_dicom('[dicom.destinations]\nA = "h:1"')))


def test_paths_derive_from_data_dir() -> None:
    config = parse(MINIMAL)
    root = Path("/var/lib/meshpacs")
    for holder in (config, config.site):
        assert holder.instances_dir == root / "instances"
        assert holder.catalog_path == root / "catalog.sqlite"
        assert holder.key_file == root / "site.key"
        assert holder.fragments_dir == root / "fragments"
        assert holder.tmp_dir == root / "tmp"


@pytest.mark.parametrize(
    ("data_dir", "expected"),
    [
        (".", "/etc/meshpacs"),
        ("data", "/etc/meshpacs/data"),
        ("./data/../store", "/etc/meshpacs/store"),
        ("../var/mesh", "/etc/var/mesh"),
        ("/abs/olute", "/abs/olute"),
    ],
)
def test_relative_data_dir_is_taken_from_the_config_files_directory(
    data_dir: str, expected: str
) -> None:
    text = MINIMAL.replace('"/var/lib/meshpacs"', f'"{data_dir}"')
    assert parse(text).site.data_dir == Path(expected)


def test_load_config_reads_the_file_and_resolves_relative_to_it(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "node.toml"
    path.parent.mkdir()
    path.write_text(MINIMAL.replace('"/var/lib/meshpacs"', '"data"'))
    config = load_config(path)
    assert config.site.data_dir == tmp_path / "conf" / "data"


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as caught:
        load_config(missing)
    assert str(missing) in str(caught.value)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(MINIMAL.replace("st-marys", "st-mary\xe9s").encode("latin-1"))
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(latin1)


def test_config_error_is_a_mesh_error() -> None:
    assert issubclass(ConfigError, MeshError)


def test_invalid_toml_names_the_file_and_line() -> None:
    refused(MINIMAL + "port = \n", "not valid TOML", "line")


# --- unknown and missing keys ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        (with_dicom("aetitle = 'X'"), "dicom.aetitle", "dicom.ae_title"),
        (with_dicom("max_instance_byte = 5"), "dicom.max_instance_byte", "max_instance_bytes"),
        (MINIMAL + "[logging]\nlog_phy = true\n", "logging.log_phy", "logging.log_phi"),
        (MINIMAL + "[catalog]\nstable_after = 5\n", "catalog.stable_after", "stable_after"),
        (MINIMAL + "[loging]\nlevel = 'INFO'\n", "loging", "logging"),
        ("port = 104\n" + MINIMAL, "port", "[dicom]"),
        (MINIMAL + "[replication]\nk = 4\n", "replication", "unknown table"),
        (MINIMAL.replace("[dicom]", 'colour = "blue"\n[dicom]'), "site.colour", "unknown"),
    ],
)
def test_unknown_keys_are_refused_with_a_suggestion(text: str, key: str, hint: str) -> None:
    error = refused(text, key, "unknown", hint)
    assert "fix the spelling or remove it" in str(error)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (MINIMAL.replace('id = "st-marys"\n', ""), "site.id"),
        (MINIMAL.replace('data_dir = "/var/lib/meshpacs"\n', ""), "site.data_dir"),
        (MINIMAL.replace('ae_title = "MESHPACS"\n', ""), "dicom.ae_title"),
        ('[dicom]\nae_title = "A"\n', "site"),
        ('[site]\nid = "a"\ndata_dir = "."\n', "dicom"),
    ],
)
def test_required_keys_are_named_when_missing(text: str, key: str) -> None:
    refused(text, key, "required")


# --- types and ranges -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "key", "words"),
    [
        ('port = "11112"', "dicom.port", ("whole number", "text in quotes", '"11112"')),
        ("port = 11112.0", "dicom.port", ("whole number", "decimal number")),
        ("port = true", "dicom.port", ("whole number", "true or false")),
        ("port = 0", "dicom.port", ("from 1 to 65535",)),
        ("port = 65536", "dicom.port", ("65536",)),
        ("max_associations = 0", "dicom.max_associations", ("from 1",)),
        ("max_pdu = 0", "dicom.max_pdu", ("from 4096",)),
        ("max_pdu = 1073741824", "dicom.max_pdu", ("16777216",)),
        ("max_instance_bytes = 4096", "dicom.max_instance_bytes", ("1048576",)),
        ("max_instance_bytes = -1", "dicom.max_instance_bytes", ("from",)),
        ("network_timeout = 0", "dicom.network_timeout", ("more than 0",)),
        ("acse_timeout = -1.5", "dicom.acse_timeout", ("more than 0",)),
        ("dimse_timeout = 100000", "dicom.dimse_timeout", ("86400",)),
        ("dimse_timeout = nan", "dicom.dimse_timeout", ("more than 0",)),
        ("network_timeout = '60'", "dicom.network_timeout", ("a whole number or a decimal",)),
        ('bind = "not a host!"', "dicom.bind", ("neither an IP address nor a host name",)),
        ('bind = ""', "dicom.bind", ("neither",)),
        ('allowed_calling_aets = "PACS"', "dicom.allowed_calling_aets", ("a list",)),
        ("allowed_calling_aets = [1]", "dicom.allowed_calling_aets", ("entry 1",)),
        ('allowed_calling_aets = ["OK", "  "]', "dicom.allowed_calling_aets", ("entry 2",)),
        (
            'allowed_calling_aets = ["SEVENTEEN_CHARS__"]',
            "dicom.allowed_calling_aets",
            ("at most 16",),
        ),
        ('destinations = "A=h:1"', "dicom.destinations", ("a table",)),
    ],
)
def test_dicom_values_are_checked(line: str, key: str, words: tuple[str, ...]) -> None:
    refused(with_dicom(line), key, *words)


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (MINIMAL.replace("st-marys", "St-Marys"), "site.id", ("lower-case",)),
        (MINIMAL.replace("st-marys", "st marys"), "site.id", ("lower-case",)),
        (MINIMAL.replace("st-marys", "st_marys"), "site.id", ("lower-case",)),
        (MINIMAL.replace('"st-marys"', '""'), "site.id", ("empty",)),
        (MINIMAL.replace("st-marys", "a" * 65), "site.id", ("at most 64",)),
        (MINIMAL.replace('"st-marys"', "7"), "site.id", ("text in quotes",)),
        (MINIMAL.replace('"/var/lib/meshpacs"', '""'), "site.data_dir", ("empty",)),
        (MINIMAL.replace('"/var/lib/meshpacs"', '"~/mesh"'), "site.data_dir", ("~",)),
        (MINIMAL.replace('"/var/lib/meshpacs"', '"a\\u0000b"'), "site.data_dir", ("NUL",)),
        (MINIMAL + "[catalog]\nstable_after_seconds = 0\n", "catalog.stable_after_seconds", ()),
        (MINIMAL + "[catalog]\nstable_after_seconds = 1e9\n", "catalog.stable_after_seconds", ()),
        (MINIMAL + "[logging]\nlevel = 'LOUD'\n", "logging.level", ("DEBUG, INFO",)),
        (MINIMAL + "[logging]\nlog_phi = 'no'\n", "logging.log_phi", ("true or false",)),
        (MINIMAL + "[logging]\nlog_phi = 0\n", "logging.log_phi", ("true or false",)),
        (MINIMAL + "logging = 'INFO'\n", "dicom.logging", ("unknown",)),
        ('site = "x"\n[dicom]\nae_title = "A"\n', "site", ("a table",)),
    ],
)
def test_other_values_are_checked(text: str, key: str, words: tuple[str, ...]) -> None:
    refused(text, key, *words)


def test_a_size_over_its_bound_is_refused_not_clamped() -> None:
    refused(with_dicom("max_instance_bytes = 2199023255552"), "dicom.max_instance_bytes")
    config = parse(with_dicom("max_instance_bytes = 1099511627776"))
    assert config.dicom.max_instance_bytes == 1 << 40


# --- AE titles (PS3.5 VR AE) --------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "words"),
    [
        ("", ("empty",)),
        ("   ", ("only spaces",)),
        ("A" * 17, ("at most 16", "17")),
        ("MESH\\\\PACS", ("backslash",)),
        ("MESH\\tPACS", ("printable ASCII",)),
        ("MESH\\nPACS", ("printable ASCII",)),
        ("MESH\\u001bPACS", ("printable ASCII",)),
        ("MÉSH", ("printable ASCII",)),
        ("\\tMESH", ("printable ASCII",)),
    ],
)
def test_bad_ae_titles_are_refused(title: str, words: tuple[str, ...]) -> None:
    refused(MINIMAL.replace('"MESHPACS"', f'"{title}"'), "dicom.ae_title", *words)


@pytest.mark.parametrize(
    ("title", "stored"),
    [
        ("A", "A"),
        ("A" * 16, "A" * 16),
        ("  " + "A" * 16 + "  ", "A" * 16),  # outer spaces are not significant
        (" MESH PACS ", "MESH PACS"),  # inner spaces are allowed
        ("mesh-pacs_1", "mesh-pacs_1"),
        ("!#$%&'()*+,./:;<", "!#$%&'()*+,./:;<"),
        ('=>?@[]^`{|}~"', '=>?@[]^`{|}~"'),
    ],
)
def test_good_ae_titles_are_kept_without_outer_spaces(title: str, stored: str) -> None:
    escaped = title.replace("\\", "\\\\").replace('"', '\\"')
    assert parse(MINIMAL.replace('"MESHPACS"', f'"{escaped}"')).dicom.ae_title == stored


# --- destinations ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('ORTHANC = "127.0.0.1:4242"', ("127.0.0.1", 4242)),
        ('ORTHANC = "pacs.hospital.example:104"', ("pacs.hospital.example", 104)),
        ('ORTHANC = "[::1]:11112"', ("::1", 11112)),
        ('"  ORTHANC " = "localhost:1"', ("localhost", 1)),
    ],
)
def test_destinations_parse_into_host_and_port(entry: str, expected: tuple[str, int]) -> None:
    config = parse(with_dicom(f"[dicom.destinations]\n{entry}"))
    assert config.dicom.destinations == {"ORTHANC": expected}


@pytest.mark.parametrize(
    ("entry", "key", "words"),
    [
        ('ORTHANC = "127.0.0.1"', "dicom.destinations.ORTHANC", ("host:port",)),
        ('ORTHANC = ":4242"', "dicom.destinations.ORTHANC", ("host:port",)),
        ('ORTHANC = "host:"', "dicom.destinations.ORTHANC", ("not a number",)),
        ('ORTHANC = "host:http"', "dicom.destinations.ORTHANC", ("not a number",)),
        ('ORTHANC = "host:-1"', "dicom.destinations.ORTHANC", ("not a number",)),
        ('ORTHANC = "host:0"', "dicom.destinations.ORTHANC", ("1 to 65535",)),
        ('ORTHANC = "host:70000"', "dicom.destinations.ORTHANC", ("1 to 65535",)),
        ('ORTHANC = "::1:104"', "dicom.destinations.ORTHANC", ("brackets",)),
        ('ORTHANC = "[pacs]:104"', "dicom.destinations.ORTHANC", ("not an IPv6 address",)),
        ('ORTHANC = "bad host:104"', "dicom.destinations.ORTHANC", ("neither",)),
        ("ORTHANC = 4242", "dicom.destinations.ORTHANC", ("text in quotes",)),
        ('SEVENTEEN_CHARS__ = "h:1"', "dicom.destinations.SEVENTEEN_CHARS__", ("at most 16",)),
        ('"" = "h:1"', 'dicom.destinations.""', ("empty",)),
        ('"A\\\\B" = "h:1"', "dicom.destinations.", ("backslash",)),
        ('A = "h:1"\n" A" = "h:2"', "dicom.destinations", ("listed twice",)),
    ],
)
def test_bad_destinations_are_refused(entry: str, key: str, words: tuple[str, ...]) -> None:
    refused(with_dicom(f"[dicom.destinations]\n{entry}"), key, *words)


def test_messages_about_long_values_stay_short() -> None:
    error = refused(MINIMAL.replace("st-marys", "x" * 5000), "site.id")
    assert len(str(error)) < 300


# --- [mesh] and [backup] --------------------------------------------------------------

GIB = 1024**3


def with_mesh(lines: str) -> str:
    return MINIMAL + "[mesh]\n" + lines + "\n"


def with_backup(lines: str) -> str:
    return MINIMAL + "[backup]\n" + lines + "\n"


def test_mesh_and_backup_take_their_defaults_when_absent_or_empty() -> None:
    for text in (MINIMAL, MINIMAL + "[mesh]\n[backup]\n"):
        config = parse(text)
        assert config.mesh == MeshConfig()
        assert config.backup == BackupConfig()
    mesh, backup = parse(MINIMAL).mesh, parse(MINIMAL).backup
    assert (mesh.enabled, mesh.bind, mesh.advertise_host) == (False, "0.0.0.0", "")
    assert (mesh.dht_port, mesh.transport_port) == (11120, 11121)
    assert (mesh.bootstrap, mesh.trusted_peers) == ((), ())
    assert (mesh.offer_bytes, mesh.partner_quota_bytes) == (100 * GIB, 20 * GIB)
    assert (backup.k, backup.n, backup.happy) == (4, 7, 5)
    assert (backup.segment_bytes, backup.max_bundle_bytes) == (1024 * 1024, GIB)
    assert backup.pass_interval_seconds == 10


def test_full_mesh_and_backup_tables_are_read() -> None:
    config = parse(
        MINIMAL
        + """
[mesh]
enabled = true
bind = "10.1.2.3"
advertise_host = "2001:db8:0:0::10"
dht_port = 4000
transport_port = 4001
bootstrap = ["203.0.113.7:11120", "[2001:db8::7]:11121"]
trusted_peers = ["general-7", "north-3"]
offer_gb = 2.5
partner_quota_gb = 1048576
[backup]
k = 10
n = 16
happy = 12
segment_kib = 4
max_bundle_mb = 256
pass_interval_seconds = 0.5
"""
    )
    assert config.mesh == MeshConfig(
        enabled=True,
        bind="10.1.2.3",
        advertise_host="2001:db8::10",  # written the one way partners compare it
        dht_port=4000,
        transport_port=4001,
        bootstrap=(Destination("203.0.113.7", 11120), Destination("2001:db8::7", 11121)),
        trusted_peers=("general-7", "north-3"),
        offer_bytes=5 * GIB // 2,
        partner_quota_bytes=1 << 50,
    )
    assert all(isinstance(peer, Destination) for peer in config.mesh.bootstrap)
    assert config.backup == BackupConfig(
        k=10,
        n=16,
        happy=12,
        segment_bytes=4096,
        max_bundle_bytes=256 * 1024 * 1024,
        pass_interval_seconds=0.5,
    )


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ('enabled = true\nadvertise_host = "127.0.0.1"', ("127.0.0.1", (11120, 11121))),
        (
            'advertise_host = "192.0.2.1"\ndht_port = 1\ntransport_port = 65535',
            ("192.0.2.1", (1, 65535)),
        ),
        ("dht_port = 11121\ntransport_port = 11120", ("", (11121, 11120))),
    ],
)
def test_mesh_hosts_and_ports_at_their_limits(
    lines: str, expected: tuple[str, tuple[int, int]]
) -> None:
    mesh = parse(with_mesh(lines)).mesh
    assert (mesh.advertise_host, (mesh.dht_port, mesh.transport_port)) == expected


def test_enabled_mesh_without_advertise_host_says_what_to_write() -> None:
    error = refused(
        with_mesh("enabled = true"), "mesh.advertise_host", "required", "mesh.enabled = true"
    )
    assert "IP address" in str(error) and "203.0.113.10" in str(error)
    refused(with_mesh('enabled = true\nadvertise_host = ""'), "mesh.advertise_host", "required")


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::", "0:0::0"])
@pytest.mark.parametrize("enabled", ["true", "false"])
def test_advertise_host_must_not_be_a_wildcard(wildcard: str, enabled: str) -> None:
    text = with_mesh(f'enabled = {enabled}\nadvertise_host = "{wildcard}"')
    refused(text, "mesh.advertise_host", "every address", "IP address partner sites reach")


@pytest.mark.parametrize(
    ("line", "key", "words"),
    [
        ('enabled = "yes"', "mesh.enabled", ("true or false",)),
        ('bind = "not a host!"', "mesh.bind", ("neither an IP address nor a host name",)),
        ('advertise_host = "mesh.hospital.example"', "mesh.advertise_host", ("not an IP",)),
        ('advertise_host = "10.0.0.256"', "mesh.advertise_host", ("not an IP", "host names")),
        ('advertise_host = " 10.0.0.1"', "mesh.advertise_host", ("not an IP",)),
        ('advertise_host = "fe80::1%eth0"', "mesh.advertise_host", ("zone",)),
        ("advertise_host = 10", "mesh.advertise_host", ("text in quotes",)),
        ("dht_port = 0", "mesh.dht_port", ("from 1 to 65535",)),
        ("dht_port = 65536", "mesh.dht_port", ("65535",)),
        ("transport_port = 0", "mesh.transport_port", ("from 1",)),
        ('transport_port = "11121"', "mesh.transport_port", ("whole number",)),
        ("dht_port = 11112", "mesh.dht_port", ("dicom.port", "number of its own")),
        ("transport_port = 11112", "mesh.transport_port", ("dicom.port", "number of its own")),
        ("transport_port = 11120", "mesh.transport_port", ("mesh.dht_port", "of its own")),
        ("dht_port = 5\ntransport_port = 5", "mesh.transport_port", ("mesh.dht_port",)),
        ('bootstrap = "203.0.113.7:11120"', "mesh.bootstrap", ("a list",)),
        ("bootstrap = [11120]", "mesh.bootstrap", ("entry 1", "IP address:port")),
        ('bootstrap = ["peer.example:11120"]', "mesh.bootstrap", ("not an IP", "host names")),
        ('bootstrap = ["localhost:11120"]', "mesh.bootstrap", ("entry 1", "host names")),
        ('bootstrap = ["203.0.113.7"]', "mesh.bootstrap", ("host:port",)),
        ('bootstrap = ["203.0.113.7:0"]', "mesh.bootstrap", ("1 to 65535",)),
        (
            'bootstrap = ["1.2.3.4:1", "2001:db8::7:11120"]',
            "mesh.bootstrap",
            ("entry 2", "brackets"),
        ),
        ('bootstrap = ["[peer]:11120"]', "mesh.bootstrap", ("not an IPv6 address",)),
        ('bootstrap = ["0.0.0.0:11120"]', "mesh.bootstrap", ("not the address of a partner",)),
        ('bootstrap = ["1.2.3.4:1", "1.2.3.4:1"]', "mesh.bootstrap", ("listed twice",)),
        ('trusted_peers = "general-7"', "mesh.trusted_peers", ("a list",)),
        ("trusted_peers = [7]", "mesh.trusted_peers", ("entry 1", "site ID")),
        ('trusted_peers = ["General-7"]', "mesh.trusted_peers", ("entry 1", "lower-case")),
        ('trusted_peers = ["a", ""]', "mesh.trusted_peers", ("entry 2", "empty")),
        (f'trusted_peers = ["{"a" * 65}"]', "mesh.trusted_peers", ("at most 64",)),
        ('trusted_peers = ["st-marys"]', "mesh.trusted_peers", ("own site.id",)),
        ('trusted_peers = ["a", "b", "a"]', "mesh.trusted_peers", ("a is listed twice",)),
        ("offer_gb = 0", "mesh.offer_gb", ("more than 0",)),
        ("offer_gb = -1", "mesh.offer_gb", ("more than 0",)),
        ("offer_gb = 1e-12", "mesh.offer_gb", ("more than 0",)),
        ("offer_gb = 1048577", "mesh.offer_gb", ("at most 1048576",)),
        ("offer_gb = nan", "mesh.offer_gb", ("more than 0",)),
        ("offer_gb = inf", "mesh.offer_gb", ("at most 1048576",)),
        ('offer_gb = "100"', "mesh.offer_gb", ("a whole number or a decimal",)),
        ("partner_quota_gb = 0.0", "mesh.partner_quota_gb", ("more than 0",)),
        ("partner_quota_gb = true", "mesh.partner_quota_gb", ("true or false",)),
        ("offer_bytes = 1", "mesh.offer_bytes", ("unknown", "did you mean mesh.offer_gb")),
        ("advertise = '1.2.3.4'", "mesh.advertise", ("did you mean mesh.advertise_host",)),
    ],
)
def test_mesh_values_are_checked(line: str, key: str, words: tuple[str, ...]) -> None:
    refused(with_mesh(line), key, *words)


@pytest.mark.parametrize(
    ("line", "key", "words"),
    [
        ("k = 0", "backup.k", ("from 1 to 255",)),
        ("k = 256\nn = 256", "backup.k", ("from 1 to 255",)),
        ("k = 4.0", "backup.k", ("whole number",)),
        ("n = 4", "backup.n", ("more than backup.k (4)", "raise backup.n or lower backup.k")),
        ("k = 8", "backup.n", ("more than backup.k (8)", "not 7")),
        ("k = 200\nn = 257\nhappy = 200", "backup.n", ("at most 256",)),
        ("n = '7'", "backup.n", ("whole number",)),
        ("happy = 3", "backup.happy", ("from backup.k (4) to backup.n (7)", "not 3")),
        ("happy = 8", "backup.happy", ("from backup.k (4) to backup.n (7)",)),
        ("n = 5\nhappy = 6", "backup.happy", ("backup.n (5)",)),
        ("happy = 5.5", "backup.happy", ("whole number",)),
        ("segment_kib = 3", "backup.segment_kib", ("from 4 to 65536",)),
        ("segment_kib = 65537", "backup.segment_kib", ("65536",)),
        ("segment_kib = 1.5", "backup.segment_kib", ("whole number",)),
        ("max_bundle_mb = 0", "backup.max_bundle_mb", ("from 1 to 1048576",)),
        ("max_bundle_mb = 1048577", "backup.max_bundle_mb", ("1048576",)),
        ("pass_interval_seconds = 0", "backup.pass_interval_seconds", ("more than 0",)),
        ("pass_interval_seconds = 3601", "backup.pass_interval_seconds", ("3600",)),
        ("pass_interval_seconds = nan", "backup.pass_interval_seconds", ("more than 0",)),
        ("segment_bytes = 4096", "backup.segment_bytes", ("did you mean backup.segment_kib",)),
        ("max_bundle_bytes = 1", "backup.max_bundle_bytes", ("backup.max_bundle_mb",)),
    ],
)
def test_backup_values_are_checked(line: str, key: str, words: tuple[str, ...]) -> None:
    refused(with_backup(line), key, *words)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("k = 1\nn = 2\nhappy = 1", (1, 2, 1)),
        ("k = 255\nn = 256\nhappy = 256", (255, 256, 256)),
        ("k = 6\nn = 8\nhappy = 6", (6, 8, 6)),
    ],
)
def test_backup_coding_at_its_limits(lines: str, expected: tuple[int, int, int]) -> None:
    backup = parse(with_backup(lines)).backup
    assert (backup.k, backup.n, backup.happy) == expected


def test_backup_sizes_are_converted_to_bytes_at_their_limits() -> None:
    low = parse(with_backup("segment_kib = 4\nmax_bundle_mb = 1")).backup
    assert (low.segment_bytes, low.max_bundle_bytes) == (4096, 1 << 20)
    high = parse(with_backup("segment_kib = 65536\nmax_bundle_mb = 1048576")).backup
    assert (high.segment_bytes, high.max_bundle_bytes) == (64 << 20, 1 << 40)


def test_mesh_settings_outside_their_table_are_pointed_to_it() -> None:
    refused("enabled = true\n" + MINIMAL, "enabled", "unknown", "[mesh]")
    refused("happy = 5\n" + MINIMAL, "happy", "unknown", "[backup]")
    refused(with_dicom("trusted_peers = []"), "dicom.trusted_peers", "unknown")


def test_mesh_lists_are_frozen() -> None:
    mesh = parse(with_mesh('bootstrap = ["1.2.3.4:5"]\ntrusted_peers = ["a"]')).mesh
    assert isinstance(mesh.bootstrap, tuple) and isinstance(mesh.trusted_peers, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        mesh.enabled = True  # type: ignore[misc]
    assert hash(parse(MINIMAL).mesh) == hash(MeshConfig())


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ('"forever"', None),
        ('"protected"', 0.0),
        ('"30 days"', 30 * 86400.0),
        ('"1 day"', 86400.0),
        ('"Protected"', 0.0),
    ],
)
def test_keep_local_reads_forever_protected_or_days(text: str, seconds: float | None) -> None:
    assert parse(with_backup(f"keep_local = {text}")).backup.keep_local_seconds == seconds


@pytest.mark.parametrize("text", ['"30"', '"0 days"', '"-3 days"', '"a week"', "30", '""'])
def test_keep_local_refuses_anything_else(text: str) -> None:
    with pytest.raises(ConfigError, match=r"backup\.keep_local"):
        parse(with_backup(f"keep_local = {text}"))


def test_leases_are_read_in_days_and_hours() -> None:
    text = (
        MINIMAL + "[maintenance]\nlease_days = 10\nlease_renew_hours = 12\nexpired_grace_days = 2\n"
    )
    maintenance = parse(text).maintenance
    assert maintenance.lease_seconds == 10 * 86400
    assert maintenance.lease_renew_seconds == 12 * 3600
    assert maintenance.expired_grace_seconds == 2 * 86400


@pytest.mark.parametrize(
    ("lines", "key", "words"),
    [
        ("lease_days = 1\nlease_renew_hours = 24", "maintenance.lease_renew_hours",
         ("shorter than the lease (1 days)",)),
        ("lease_days = 0", "maintenance.lease_days", ("more than 0",)),
        ("expired_grace_days = 3651", "maintenance.expired_grace_days", ("at most 3650",)),
    ],
)  # fmt: skip
def test_lease_values_are_checked(lines: str, key: str, words: tuple[str, ...]) -> None:
    refused(MINIMAL + "[maintenance]\n" + lines + "\n", key, *words)


def test_audit_spread_is_read_in_days_and_zero_turns_it_off() -> None:
    assert parse(MINIMAL).maintenance.audit_spread_seconds == 365 * 86400
    spread = parse(MINIMAL + "[maintenance]\naudit_spread_days = 30\n").maintenance
    assert spread.audit_spread_seconds == 30 * 86400
    assert (
        parse(MINIMAL + "[maintenance]\naudit_spread_days = 0\n").maintenance.audit_spread_seconds
        == 0
    )
    for bad in ("-1", "3651"):
        refused(MINIMAL + f"[maintenance]\naudit_spread_days = {bad}\n",
                "maintenance.audit_spread_days", "0 (no spreading) to 3650")  # fmt: skip


def test_logging_format_and_audit_trail_defaults() -> None:
    config = parse(MINIMAL)
    assert config.logging.format == "kv"
    assert config.audit_trail == AuditTrailConfig()
    assert not config.audit_trail.include_uids and config.audit_trail.syslog_host == ""


def test_audit_trail_table_is_read_with_the_ca_relative_to_the_file() -> None:
    config = parse(
        MINIMAL
        + """
[logging]
format = "json"
[audit_trail]
include_uids = true
syslog_host = "10.1.2.3"
syslog_port = 6515
syslog_ca = "certs/arr-ca.pem"
syslog_server_name = "arr.hospital.example"
"""
    )
    assert config.logging.format == "json"
    trail = config.audit_trail
    assert trail.include_uids and trail.syslog_host == "10.1.2.3" and trail.syslog_port == 6515
    assert trail.syslog_ca is not None and trail.syslog_ca.is_absolute()
    assert trail.syslog_ca.parts[-2:] == ("certs", "arr-ca.pem")
    assert trail.syslog_server_name == "arr.hospital.example"


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('[logging]\nformat = "text"\n', "logging.format", ('"kv" or "json"',)),
        ('[audit_trail]\nsyslog_host = "not a host"\n', "audit_trail.syslog_host", ("neither",)),
        ("[audit_trail]\nsyslog_port = 0\n", "audit_trail.syslog_port", ("from 1 to 65535",)),
        ('[audit_trail]\nsyslog_server_name = "a b"\n', "audit_trail.syslog_server_name", ()),
        ('[audit_trail]\ninclude_uids = "yes"\n', "audit_trail.include_uids", ("true or false",)),
    ],
)
def test_logging_and_audit_trail_values_are_checked(
    text: str, key: str, words: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(MINIMAL + text)
    message = str(caught.value)
    assert key in message
    for word in words:
        assert word in message
