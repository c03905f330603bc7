"""The node's configuration file, read into frozen dataclasses and checked as a whole.

The file is TOML, edited by a PACS administrator, so every mistake in it is reported as a
``ConfigError`` naming the file and the dotted key (``dicom.port``) and saying what is
allowed, never as a traceback. Keys this module does not know are refused, with the
nearest known key suggested: a misspelt ``max_instance_byte`` silently left at its default
would be a limit the administrator believes is set and is not.

Validation happens here, in ``parse_config``; the dataclasses trust their arguments, so
code and tests can build them directly. ``sample-config.toml`` next to this module is the
documented sample (``render_config`` fills it in for ``meshpacs init``); a test checks that
it documents every field of these dataclasses and that its values are their defaults.
A few sizes are written in the unit a person thinks in, under a key naming it
(``mesh.offer_gb``, ``backup.segment_kib``), and held in bytes (``offer_bytes``).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from meshpacs.erasure.layout import MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE
from meshpacs.errors import ConfigError
from meshpacs.federation.names import SITE_ID_MAX_LENGTH, validate_site_id
from meshpacs.federation.names import site_id_problem as _site_id_problem

__all__ = [
    "AE_TITLE_MAX_LENGTH",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "SITE_ID_MAX_LENGTH",
    "AuditTrailConfig",
    "BackupConfig",
    "CatalogConfig",
    "Destination",
    "DicomConfig",
    "LoggingConfig",
    "MaintenanceConfig",
    "MeshConfig",
    "NodeConfig",
    "Setting",
    "SiteConfig",
    "WebConfig",
    "load_config",
    "parse_config",
    "render_config",
    "sample_config",
    "validate_ae_title",
    "validate_port",
    "validate_site_id",
]

AE_TITLE_MAX_LENGTH = 16
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("kv", "json")

# Bounds that catch typos (a size in KiB where bytes were meant, a timeout in ms) while
# leaving room for every sane deployment; each is stated in the sample's comments.
_PORT_RANGE = (1, 65535)
_MAX_ASSOCIATIONS_RANGE = (1, 1000)
_MAX_PDU_RANGE = (4096, 16 * 1024 * 1024)
_MAX_INSTANCE_BYTES_RANGE = (1024 * 1024, 1024**4)
_MAX_TIMEOUT = 86400.0
_MAX_STABLE_AFTER = 7 * 86400.0
_MAX_DHT_TIMEOUT = 60.0
# [mesh] and [backup] sizes are written in the unit their key names (offer_gb is GiB).
_KIB, _MIB, _GIB = 1024, 1024**2, 1024**3
_MAX_GIB = 1024 * 1024  # 1 PiB
_MAX_SHARES = 256  # zfec's limit on n
_SEGMENT_KIB_RANGE = (MIN_SEGMENT_SIZE // _KIB, MAX_SEGMENT_SIZE // _KIB)
_MAX_BUNDLE_MB_RANGE = (1, 1024 * 1024)
_MAX_PASS_INTERVAL = 3600.0
_MAX_HISTORY_INTERVAL = 86400.0

_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SAMPLE_RESOURCE = "sample-config.toml"


class Destination(NamedTuple):
    """Where a C-MOVE destination AE listens: ``(host, port)``."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class SiteConfig:
    """``[site]``: who this site is in the federation and where its data lives."""

    id: str
    data_dir: Path

    @property
    def instances_dir(self) -> Path:
        """The exact bytes of every instance received from the PACS."""
        return self.data_dir / "instances"

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.sqlite"

    @property
    def key_file(self) -> Path:
        """The site secret (mode 0600), see ``meshpacs.node.site``."""
        return self.data_dir / "site.key"

    @property
    def fragments_dir(self) -> Path:
        """Fragments partner sites store with this node."""
        return self.data_dir / "fragments"

    @property
    def tmp_dir(self) -> Path:
        """Files being written, renamed into place when complete (same file system)."""
        return self.data_dir / "tmp"


def _no_destinations() -> Mapping[str, Destination]:
    return MappingProxyType({})


@dataclass(frozen=True)
class DicomConfig:
    """``[dicom]``: the node's DICOM AE. ``ae_title`` is stored without its outer spaces."""

    ae_title: str
    bind: str = "0.0.0.0"
    port: int = 11112
    max_associations: int = 10
    max_pdu: int = 65536
    allowed_calling_aets: tuple[str, ...] = ()
    network_timeout: float = 60.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    max_instance_bytes: int = 4 * 1024**3
    destinations: Mapping[str, Destination] = field(default_factory=_no_destinations, hash=False)

    def __post_init__(self) -> None:
        # Normalise, not validate: keep the frozen object immutable all the way down.
        object.__setattr__(self, "allowed_calling_aets", tuple(self.allowed_calling_aets))
        object.__setattr__(self, "destinations", MappingProxyType(dict(self.destinations)))


@dataclass(frozen=True)
class CatalogConfig:
    """``[catalog]``: when a study counts as complete."""

    stable_after_seconds: float = 60.0


@dataclass(frozen=True)
class MeshConfig:
    """``[mesh]``: this node's place in the federation (DHT, fragment transport, peers).

    Off until the site is enrolled (``meshpacs federation enroll``) and ``enabled`` is
    set: a node that only receives from its PACS needs none of it.
    """

    enabled: bool = False
    bind: str = "0.0.0.0"
    # The IP address partners reach this node at (the DHT needs an IP, not a name).
    advertise_host: str = ""
    dht_port: int = 11120
    transport_port: int = 11121
    bootstrap: tuple[Destination, ...] = ()
    trusted_peers: tuple[str, ...] = ()
    offer_bytes: int = 100 * 1024**3
    partner_quota_bytes: int = 20 * 1024**3
    dht_timeout_seconds: float = 5.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "bootstrap", tuple(self.bootstrap))
        object.__setattr__(self, "trusted_peers", tuple(self.trusted_peers))


@dataclass(frozen=True)
class BackupConfig:
    """``[backup]``: how studies are cut, coded and spread."""

    k: int = 4
    n: int = 7
    happy: int = 5
    segment_bytes: int = 1024 * 1024
    max_bundle_bytes: int = 1024**3
    pass_interval_seconds: float = 10.0
    # None: keep every instance here for ever; 0: remove it once its study is protected at
    # n sites; N: remove it N seconds after that.
    keep_local_seconds: float | None = None


@dataclass(frozen=True)
class MaintenanceConfig:
    """``[maintenance]``: how the node checks its backups and what it holds for partners."""

    audits_per_hour: float = 120.0
    audit_challenges: int = 16
    # Each share's challenges are spent at most one per spread/challenges: a small site's
    # budget would otherwise use them all up in days and then never audit again.
    audit_spread_seconds: float = 365 * 86400.0
    audit_timeout_seconds: float = 30.0
    reputation_floor: float = 0.3
    reputation_half_life_seconds: float = 7 * 86400.0
    scrub_bytes_per_second: int = 20 * 1000 * 1000
    scrub_interval_seconds: float = 7 * 86400.0
    repair_threshold: int | None = None  # None: halfway between k and n
    lost_after_seconds: float = 3 * 86400.0
    repair_interval_seconds: float = 600.0
    lease_seconds: float = 30 * 86400.0
    lease_renew_seconds: float = 86400.0
    expired_grace_seconds: float = 30 * 86400.0


@dataclass(frozen=True)
class WebConfig:
    """``[web]``: the read-only dashboard, ``/metrics`` and ``/status.json``.

    ``port = 0`` lets the system pick a free port (tests; the node logs the one bound).
    """

    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = 8480
    history_interval_seconds: float = 300.0


@dataclass(frozen=True)
class LoggingConfig:
    """``[logging]``. ``log_phi`` is a debug switch the node warns about at start.

    ``format``: ``"kv"`` writes one ``key=value`` line per event, ``"json"`` one JSON object.
    """

    level: str = "INFO"
    log_phi: bool = False
    format: str = "kv"


@dataclass(frozen=True)
class AuditTrailConfig:
    """``[audit_trail]``: what the ATNA trail records and where it forwards a copy.

    ``syslog_host = ""`` forwards nothing. ``syslog_ca`` is a CA bundle for the collector's
    certificate (None: the system's trusted CAs); ``syslog_server_name`` is the name in that
    certificate ("" : ``syslog_host``).
    """

    include_uids: bool = False
    syslog_host: str = ""
    syslog_port: int = 6514
    syslog_ca: Path | None = None
    syslog_server_name: str = ""


@dataclass(frozen=True)
class NodeConfig:
    """The whole config file. The path properties are those of ``site``."""

    site: SiteConfig
    dicom: DicomConfig
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    maintenance: MaintenanceConfig = field(default_factory=MaintenanceConfig)
    web: WebConfig = field(default_factory=WebConfig)
    audit_trail: AuditTrailConfig = field(default_factory=AuditTrailConfig)

    @property
    def data_dir(self) -> Path:
        return self.site.data_dir

    @property
    def instances_dir(self) -> Path:
        return self.site.instances_dir

    @property
    def catalog_path(self) -> Path:
        return self.site.catalog_path

    @property
    def key_file(self) -> Path:
        return self.site.key_file

    @property
    def fragments_dir(self) -> Path:
        return self.site.fragments_dir

    @property
    def tmp_dir(self) -> Path:
        return self.site.tmp_dir

    @property
    def records_dir(self) -> Path:
        """Sealed catalog records and escrow shares kept for partner sites."""
        return self.site.data_dir / "records"

    @property
    def dht_path(self) -> Path:
        """The DHT records this node holds, kept across restarts."""
        return self.site.data_dir / "dht.sqlite"

    @property
    def backup_work_dir(self) -> Path:
        """Fragments of bundles being placed (ciphertext), removed once partners hold them."""
        return self.site.data_dir / "tmp" / "backup"

    @property
    def state_dir(self) -> Path:
        """What the running node reports to ``meshpacs status`` (peers seen)."""
        return self.site.data_dir / "state"


# --- single values: each returns the problem in words, or None ------------------------


def _ae_title_problem(value: str) -> str | None:
    """PS3.5 VR AE: 1-16 default-repertoire characters, no backslash, not only spaces."""
    title = value.strip(" ")
    if not title:
        return "must not be empty or only spaces"
    if len(title) > AE_TITLE_MAX_LENGTH:
        return (
            f"must be at most {AE_TITLE_MAX_LENGTH} characters (spaces at the ends do not"
            f" count), not {len(title)}"
        )
    if "\\" in title:
        return "must not contain a backslash"
    if any(not " " <= char <= "~" for char in title):
        return (
            "may contain only printable ASCII characters"
            " (no tabs, line breaks, control or accented characters)"
        )
    return None


def _port_problem(value: int) -> str | None:
    low, high = _PORT_RANGE
    if not low <= value <= high:
        return f"must be a TCP port from {low} to {high}, not {value}"
    return None


def _host_problem(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return None
    if _HOST_NAME.fullmatch(value):
        return None
    return f"{_shown(value)} is neither an IP address nor a host name"


def _shown(value: str) -> str:
    """A user's value quoted for a message, cut short so a pasted blob stays readable."""
    text = value if len(value) <= 60 else value[:57] + "..."
    return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'


def validate_ae_title(value: str) -> str:
    """Return the AE title without its (insignificant) outer spaces, or raise ``ConfigError``."""
    problem = _ae_title_problem(value)
    if problem is not None:
        raise ConfigError(f"AE title {_shown(value)}: {problem}")
    return value.strip(" ")


def validate_port(value: int) -> int:
    """Return ``value`` if it is a usable TCP port (1-65535), else raise ``ConfigError``."""
    problem = _port_problem(value)
    if problem is not None:
        raise ConfigError(f"DICOM port: {problem}")
    return value


# --- reading the TOML document ---------------------------------------------------------

_REQUIRED: Any = object()

_TOML_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "true or false"),
    (int, "a whole number"),
    (float, "a decimal number"),
    (str, "text in quotes"),
    (list, "a list"),
    (dict, "a table"),
)


def _describe(value: object) -> str:
    for kind, words in _TOML_TYPES:
        if isinstance(value, kind):
            return words
    return "a date or time"


class _Section:
    """One table of the document: typed reads that raise ``ConfigError`` naming the key."""

    def __init__(
        self, source: str, name: str, values: Mapping[str, object], known: Collection[str]
    ) -> None:
        self.source = source
        self.name = name
        self.values = values
        for key in values:
            if key not in known:
                raise self._unknown(key, known)

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.key_name(key)}: {problem}")

    def key_name(self, key: str) -> str:
        shown = key if _BARE_KEY.fullmatch(key) else _shown(key)
        return f"{self.name}.{shown}" if self.name else shown

    def _unknown(self, key: str, known: Collection[str]) -> ConfigError:
        hint = ""
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        if close:
            hint = f" (did you mean {self.key_name(close[0])}?)"
        elif self.name == "":
            home = [t for t, keys in _SECTION_KEYS.items() if key in keys]
            if home:
                hint = f" (it belongs in the [{home[0]}] table)"
        what = "table" if isinstance(self.values[key], dict) else "setting"
        return ConfigError(
            f"{self.source}: unknown {what} {self.key_name(key)}{hint};"
            " fix the spelling or remove it"
        )

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if key not in self.values:
            if default is _REQUIRED:
                raise self.error(key, "missing; this setting is required")
            return default
        value = self.values[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python, never in TOML: `port = true` is a mistake.
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            wanted = " or ".join(words for k, words in _TOML_TYPES if k in kinds)
            shown = f" ({_shown(value)})" if isinstance(value, str) else ""
            raise self.error(key, f"must be {wanted}, not {_describe(value)}{shown}")
        return value

    def table(self, key: str, known: Collection[str] | None, required: bool) -> _Section:
        values = self.get(key, dict, _REQUIRED if required else {})
        name = self.key_name(key)
        return _Section(self.source, name, values, values.keys() if known is None else known)

    def string(self, key: str, default: Any = _REQUIRED) -> str:
        value: str = self.get(key, str, default)
        return value

    def integer(self, key: str, bounds: tuple[int, int], default: int) -> int:
        value: int = self.get(key, int, default)
        low, high = bounds
        if not low <= value <= high:
            raise self.error(key, f"must be from {low} to {high}, not {value}")
        return value

    def seconds(self, key: str, maximum: float, default: float) -> float:
        value = float(self.get(key, (int, float), default))
        if not 0 < value <= maximum:
            raise self.error(key, f"must be more than 0 and at most {maximum:g} seconds")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value: bool = self.get(key, bool, default)
        return value

    def gibibytes(self, key: str, default_bytes: int) -> int:
        """A size written in GiB (decimals allowed), returned in bytes."""
        if key not in self.values:
            return default_bytes
        value = float(self.get(key, (int, float), None))
        # Compared before converting: NaN fails every comparison, inf is over the bound.
        if not 0 < value <= _MAX_GIB or value * _GIB < 1:
            raise self.error(
                key, f"must be more than 0 and at most {_MAX_GIB} (GiB), not {value:g}"
            )
        return int(value * _GIB)


def _names(cls: type, **renamed: str) -> frozenset[str]:
    """The keys of ``cls``'s table: its field names, except those ``renamed`` to a key."""
    return frozenset(renamed.get(f.name, f.name) for f in fields(cls))


# The file gives sizes in the unit a person thinks in, under a key naming that unit
# (offer_gb = 100), while the dataclasses hold bytes; those fields are renamed here so the
# unknown-key check knows the file's spelling (and suggests it for ``offer_bytes``).
_SECTION_KEYS: dict[str, frozenset[str]] = {
    "site": _names(SiteConfig),
    "dicom": _names(DicomConfig),
    "catalog": _names(CatalogConfig),
    "logging": _names(LoggingConfig),
    "mesh": _names(MeshConfig, offer_bytes="offer_gb", partner_quota_bytes="partner_quota_gb"),
    "backup": _names(
        BackupConfig,
        segment_bytes="segment_kib",
        max_bundle_bytes="max_bundle_mb",
        keep_local_seconds="keep_local",
    ),
    "maintenance": _names(
        MaintenanceConfig,
        reputation_half_life_seconds="reputation_half_life_days",
        audit_spread_seconds="audit_spread_days",
        scrub_bytes_per_second="scrub_mb_per_second",
        scrub_interval_seconds="scrub_interval_hours",
        lost_after_seconds="lost_after_hours",
        repair_interval_seconds="repair_interval_minutes",
        lease_seconds="lease_days",
        lease_renew_seconds="lease_renew_hours",
        expired_grace_seconds="expired_grace_days",
    ),
    "web": _names(WebConfig),
    "audit_trail": _names(AuditTrailConfig),
}


def load_config(path: Path) -> NodeConfig:
    """Read and check the config file at ``path``; ``ConfigError`` says what is wrong."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    return parse_config(text, path.absolute().parent, str(path))


def parse_config(text: str, base_dir: Path, source: str) -> NodeConfig:
    """Parse a config document. ``base_dir`` anchors a relative ``site.data_dir``;
    ``source`` names the document in every message (normally the file's path)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    root = _Section(source, "", document, _SECTION_KEYS)
    site = _site(root.table("site", _SECTION_KEYS["site"], required=True), base_dir)
    dicom = _dicom(root.table("dicom", _SECTION_KEYS["dicom"], required=True))
    mesh = _mesh(root.table("mesh", _SECTION_KEYS["mesh"], required=False), site, dicom)
    return NodeConfig(
        site=site,
        dicom=dicom,
        catalog=_catalog(root.table("catalog", _SECTION_KEYS["catalog"], required=False)),
        logging=_logging(root.table("logging", _SECTION_KEYS["logging"], required=False)),
        mesh=mesh,
        backup=_backup(root.table("backup", _SECTION_KEYS["backup"], required=False)),
        maintenance=_maintenance(
            root.table("maintenance", _SECTION_KEYS["maintenance"], required=False)
        ),
        web=_web(root.table("web", _SECTION_KEYS["web"], required=False), dicom, mesh),
        audit_trail=_audit_trail(
            root.table("audit_trail", _SECTION_KEYS["audit_trail"], required=False), base_dir
        ),
    )


def _site(section: _Section, base_dir: Path) -> SiteConfig:
    site_id = section.string("id")
    problem = _site_id_problem(site_id)
    if problem is not None:
        raise section.error("id", problem)
    raw = section.string("data_dir")
    if not raw.strip():
        raise section.error("data_dir", 'must not be empty; use "." for this file\'s directory')
    if "\0" in raw:
        raise section.error("data_dir", "must not contain a NUL character")
    if raw.startswith("~"):
        raise section.error("data_dir", '"~" is not expanded; write the full path')
    # Lexical normalisation of "." and "..": symlinks the administrator chose stay as they are.
    data_dir = Path(os.path.normpath(base_dir.absolute() / raw))
    return SiteConfig(id=site_id, data_dir=data_dir)


def _dicom(section: _Section) -> DicomConfig:
    defaults = DicomConfig(ae_title="DEFAULTS")
    ae_title = _ae_title(section, "ae_title", section.string("ae_title"))
    bind = section.string("bind", defaults.bind)
    problem = _host_problem(bind)
    if problem is not None:
        raise section.error("bind", f'{problem}; use an address of this machine or "0.0.0.0"')
    raw_callers = section.get("allowed_calling_aets", list, [])
    callers = []
    for index, caller in enumerate(raw_callers, start=1):
        if not isinstance(caller, str):
            raise section.error(
                "allowed_calling_aets",
                f"entry {index} must be an AE title in quotes, not {_describe(caller)}",
            )
        problem = _ae_title_problem(caller)
        if problem is not None:
            raise section.error(
                "allowed_calling_aets", f"entry {index} ({_shown(caller)}) {problem}"
            )
        callers.append(caller.strip(" "))
    return DicomConfig(
        ae_title=ae_title,
        bind=bind,
        port=section.integer("port", _PORT_RANGE, defaults.port),
        max_associations=section.integer(
            "max_associations", _MAX_ASSOCIATIONS_RANGE, defaults.max_associations
        ),
        max_pdu=section.integer("max_pdu", _MAX_PDU_RANGE, defaults.max_pdu),
        allowed_calling_aets=tuple(callers),
        network_timeout=section.seconds("network_timeout", _MAX_TIMEOUT, defaults.network_timeout),
        acse_timeout=section.seconds("acse_timeout", _MAX_TIMEOUT, defaults.acse_timeout),
        dimse_timeout=section.seconds("dimse_timeout", _MAX_TIMEOUT, defaults.dimse_timeout),
        max_instance_bytes=section.integer(
            "max_instance_bytes", _MAX_INSTANCE_BYTES_RANGE, defaults.max_instance_bytes
        ),
        destinations=_destinations(section.table("destinations", None, required=False)),
    )


def _ae_title(section: _Section, key: str, value: str) -> str:
    problem = _ae_title_problem(value)
    if problem is not None:
        raise section.error(key, problem)
    return value.strip(" ")


def _destinations(section: _Section) -> dict[str, Destination]:
    found: dict[str, Destination] = {}
    for key in section.values:
        title = _ae_title(section, key, key)
        if title in found:
            raise section.error(key, f"AE title {title} is listed twice")
        problem, destination = _parse_destination(section.string(key))
        if destination is None:
            raise section.error(key, problem)
        found[title] = destination
    return found


def _parse_destination(text: str) -> tuple[str, Destination | None]:
    usage = 'must be "host:port", e.g. "10.1.2.20:104" or "[fd00::5]:104"'
    bracketed = re.fullmatch(r"\[([^\]]*)\]:([^:]*)", text)
    if bracketed:
        host, port_text = bracketed.groups()
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{_shown(host)} in brackets is not an IPv6 address", None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            return f"{usage}, not {_shown(text)}", None
        if ":" in host:
            return (
                f'put an IPv6 address in brackets, as in "[fd00::5]:104", not {_shown(text)}',
                None,
            )
        problem = _host_problem(host)
        if problem is not None:
            return problem, None
    if not port_text.isascii() or not port_text.isdigit():
        return f"{usage}; the port {_shown(port_text)} is not a number", None
    port = int(port_text)
    problem = _port_problem(port)
    if problem is not None:
        return f"the port {problem}", None
    return "", Destination(host, port)


def _catalog(section: _Section) -> CatalogConfig:
    default = CatalogConfig().stable_after_seconds
    return CatalogConfig(
        stable_after_seconds=section.seconds("stable_after_seconds", _MAX_STABLE_AFTER, default)
    )


def _logging(section: _Section) -> LoggingConfig:
    defaults = LoggingConfig()
    level = section.string("level", defaults.level)
    if level.upper() not in LOG_LEVELS:
        raise section.error("level", f"must be one of {', '.join(LOG_LEVELS)}, not {_shown(level)}")
    form = section.string("format", defaults.format)
    if form not in LOG_FORMATS:
        raise section.error("format", f'must be "kv" or "json", not {_shown(form)}')
    return LoggingConfig(
        level=level.upper(), log_phi=section.boolean("log_phi", defaults.log_phi), format=form
    )


def _mesh(section: _Section, site: SiteConfig, dicom: DicomConfig) -> MeshConfig:
    defaults = MeshConfig()
    enabled = section.boolean("enabled", defaults.enabled)
    bind = section.string("bind", defaults.bind)
    problem = _host_problem(bind)
    if problem is not None:
        raise section.error("bind", f'{problem}; use an address of this machine or "0.0.0.0"')
    dht_port, transport_port = _mesh_ports(section, dicom.port)
    return MeshConfig(
        enabled=enabled,
        bind=bind,
        advertise_host=_advertise_host(section, enabled),
        dht_port=dht_port,
        transport_port=transport_port,
        bootstrap=_bootstrap(section),
        trusted_peers=_trusted_peers(section, site.id),
        offer_bytes=section.gibibytes("offer_gb", defaults.offer_bytes),
        partner_quota_bytes=section.gibibytes("partner_quota_gb", defaults.partner_quota_bytes),
        dht_timeout_seconds=section.seconds(
            "dht_timeout_seconds", _MAX_DHT_TIMEOUT, defaults.dht_timeout_seconds
        ),
    )


def _mesh_ports(section: _Section, dicom_port: int) -> tuple[int, int]:
    """``(dht_port, transport_port)``, each a number no other port of the node uses.

    UDP and TCP could share a number, and two binds on different addresses could too, but
    one number per service is simpler to open in firewalls and to reason about. Checked
    even while the mesh is off, so that turning it on later cannot be what breaks the node.
    """
    defaults = MeshConfig()
    dht_port = section.integer("dht_port", _PORT_RANGE, defaults.dht_port)
    transport_port = section.integer("transport_port", _PORT_RANGE, defaults.transport_port)
    own_number = "give each of the node's ports a number of its own"
    if dht_port == dicom_port:
        raise section.error("dht_port", f"{dht_port} is also dicom.port; {own_number}")
    if transport_port in (dicom_port, dht_port):
        other = "dicom.port" if transport_port == dicom_port else section.key_name("dht_port")
        raise section.error("transport_port", f"{transport_port} is also {other}; {own_number}")
    return dht_port, transport_port


def _advertise_host(section: _Section, enabled: bool) -> str:
    value = section.string("advertise_host", MeshConfig().advertise_host)
    what = (
        'write the IP address partner sites reach this node at, e.g. "203.0.113.10" or'
        ' "2001:db8::10" (partners learn it through the DHT, which cannot use host names)'
    )
    if not value:
        if not enabled:
            return value
        raise section.error(
            "advertise_host", f"is required when {section.key_name('enabled')} = true; {what}"
        )
    if "%" in value:
        raise section.error(
            "advertise_host", f"{_shown(value)}: a zone (%...) means nothing to partners; {what}"
        )
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise section.error(
            "advertise_host", f"{_shown(value)} is not an IP address; {what}"
        ) from None
    if address.is_unspecified:
        raise section.error(
            "advertise_host", f"{value} means every address of this machine, not one; {what}"
        )
    return str(address)


def _bootstrap(section: _Section) -> tuple[Destination, ...]:
    peers: list[Destination] = []
    for index, entry in enumerate(section.get("bootstrap", list, []), start=1):
        if not isinstance(entry, str):
            raise section.error(
                "bootstrap",
                f'entry {index} must be "IP address:port" in quotes, not {_describe(entry)}',
            )
        problem, peer = _parse_peer_address(entry)
        if peer is None:
            raise section.error("bootstrap", f"entry {index} ({_shown(entry)}): {problem}")
        if peer in peers:
            raise section.error("bootstrap", f"{peer} is listed twice")
        peers.append(peer)
    return tuple(peers)


def _parse_peer_address(text: str) -> tuple[str, Destination | None]:
    """Like a C-MOVE destination, but the host must be an IP address a partner can reach."""
    problem, destination = _parse_destination(text)
    if destination is None:
        return problem, None
    try:
        address = ipaddress.ip_address(destination.host)
    except ValueError:
        return (
            f"{_shown(destination.host)} is not an IP address; the DHT (kademlia) cannot look"
            ' up host names, so write the partner\'s IP address, e.g. "203.0.113.7:11120"',
            None,
        )
    if address.is_unspecified:
        return f"{destination.host} is not the address of a partner; write its IP address", None
    return "", destination


def _trusted_peers(section: _Section, own_site_id: str) -> tuple[str, ...]:
    peers: list[str] = []
    for index, peer in enumerate(section.get("trusted_peers", list, []), start=1):
        if not isinstance(peer, str):
            raise section.error(
                "trusted_peers", f"entry {index} must be a site ID in quotes, not {_describe(peer)}"
            )
        problem = _site_id_problem(peer)
        if problem is not None:
            raise section.error("trusted_peers", f"entry {index} ({_shown(peer)}) {problem}")
        if peer == own_site_id:
            raise section.error(
                "trusted_peers",
                f"entry {index} ({peer}) is this site's own site.id; list only partner sites",
            )
        if peer in peers:
            raise section.error("trusted_peers", f"{peer} is listed twice")
        peers.append(peer)
    return tuple(peers)


def _backup(section: _Section) -> BackupConfig:
    defaults = BackupConfig()
    k = section.integer("k", (1, _MAX_SHARES - 1), defaults.k)
    n: int = section.get("n", int, defaults.n)
    k_name, n_name = section.key_name("k"), section.key_name("n")
    if not k < n <= _MAX_SHARES:
        raise section.error(
            "n",
            f"must be more than {k_name} ({k}) and at most {_MAX_SHARES}, not {n};"
            f" raise {n_name} or lower {k_name}",
        )
    happy: int = section.get("happy", int, defaults.happy)
    if not k <= happy <= n:
        raise section.error("happy", f"must be from {k_name} ({k}) to {n_name} ({n}), not {happy}")
    segment_kib = section.integer("segment_kib", _SEGMENT_KIB_RANGE, defaults.segment_bytes // _KIB)
    max_bundle_mb = section.integer(
        "max_bundle_mb", _MAX_BUNDLE_MB_RANGE, defaults.max_bundle_bytes // _MIB
    )
    return BackupConfig(
        k=k,
        n=n,
        happy=happy,
        segment_bytes=segment_kib * _KIB,
        max_bundle_bytes=max_bundle_mb * _MIB,
        pass_interval_seconds=section.seconds(
            "pass_interval_seconds", _MAX_PASS_INTERVAL, defaults.pass_interval_seconds
        ),
        keep_local_seconds=_keep_local(section),
    )


_KEEP_LOCAL = re.compile(r"([0-9]{1,5}) days?")


def _keep_local(section: _Section) -> float | None:
    """``"forever"``, ``"protected"`` or ``"<N> days"`` (N from 1 to 36500)."""
    value = section.string("keep_local", "forever").strip().lower()
    if value == "forever":
        return None
    if value == "protected":
        return 0.0
    days = _KEEP_LOCAL.fullmatch(value)
    if days and 1 <= int(days.group(1)) <= 36500:
        return int(days.group(1)) * 86400.0
    raise section.error(
        "keep_local",
        f'must be "forever", "protected" or a number of days such as "30 days",'
        f" not {_shown(value)}",
    )


def _maintenance(section: _Section) -> MaintenanceConfig:
    defaults = MaintenanceConfig()
    floor = float(section.get("reputation_floor", (int, float), defaults.reputation_floor))
    if not 0 <= floor < 1:
        raise section.error("reputation_floor", f"must be from 0 to less than 1, not {floor:g}")
    half_life_days = section.seconds(
        "reputation_half_life_days", 3650, defaults.reputation_half_life_seconds / 86400
    )
    scrub_mb = section.seconds("scrub_mb_per_second", 10_000, defaults.scrub_bytes_per_second / 1e6)
    scrub_hours = section.seconds(
        "scrub_interval_hours", 24 * 365, defaults.scrub_interval_seconds / 3600
    )
    lease_days = section.seconds("lease_days", 3650, defaults.lease_seconds / 86400)
    renew_hours = section.seconds(
        "lease_renew_hours", 24 * 3650, defaults.lease_renew_seconds / 3600
    )
    if renew_hours * 3600 >= lease_days * 86400:
        raise section.error(
            "lease_renew_hours", f"must be shorter than the lease ({lease_days:g} days)"
        )
    spread_days = float(
        section.get("audit_spread_days", (int, float), defaults.audit_spread_seconds / 86400)
    )
    if not 0 <= spread_days <= 3650:
        raise section.error("audit_spread_days", "must be from 0 (no spreading) to 3650 days")
    return MaintenanceConfig(
        audits_per_hour=section.seconds("audits_per_hour", 360_000, defaults.audits_per_hour),
        audit_spread_seconds=spread_days * 86400,
        audit_challenges=section.integer("audit_challenges", (0, 1024), defaults.audit_challenges),
        audit_timeout_seconds=section.seconds(
            "audit_timeout_seconds", 3600, defaults.audit_timeout_seconds
        ),
        reputation_floor=floor,
        reputation_half_life_seconds=half_life_days * 86400,
        scrub_bytes_per_second=max(1, int(scrub_mb * 1e6)),
        scrub_interval_seconds=scrub_hours * 3600,
        repair_threshold=section.integer("repair_threshold", (0, 256), 0) or None,
        lost_after_seconds=3600
        * section.seconds("lost_after_hours", 24 * 365, defaults.lost_after_seconds / 3600),
        repair_interval_seconds=60
        * section.seconds(
            "repair_interval_minutes", 7 * 24 * 60, defaults.repair_interval_seconds / 60
        ),
        lease_seconds=lease_days * 86400,
        lease_renew_seconds=renew_hours * 3600,
        expired_grace_seconds=86400
        * section.seconds("expired_grace_days", 3650, defaults.expired_grace_seconds / 86400),
    )


def _web(section: _Section, dicom: DicomConfig, mesh: MeshConfig) -> WebConfig:
    defaults = WebConfig()
    bind = section.string("bind", defaults.bind)
    problem = _host_problem(bind)
    if problem is not None:
        raise section.error("bind", f'{problem}; use an address of this machine, e.g. "127.0.0.1"')
    # 0: any free port, which the node logs; for tests and throwaway testbeds.
    port = section.integer("port", (0, _PORT_RANGE[1]), defaults.port)
    others = {dicom.port: "dicom.port", mesh.dht_port: "mesh.dht_port"}
    others[mesh.transport_port] = "mesh.transport_port"
    if port in others:
        raise section.error(
            "port",
            f"{port} is also {others[port]}; give each of the node's ports a number of its own",
        )
    interval = section.seconds(
        "history_interval_seconds", _MAX_HISTORY_INTERVAL, defaults.history_interval_seconds
    )
    return WebConfig(
        enabled=section.boolean("enabled", defaults.enabled),
        bind=bind,
        port=port,
        history_interval_seconds=interval,
    )


def _audit_trail(section: _Section, base_dir: Path) -> AuditTrailConfig:
    defaults = AuditTrailConfig()
    host = section.string("syslog_host", defaults.syslog_host)
    if host:
        problem = _host_problem(host)
        if problem is not None:
            raise section.error("syslog_host", f"{problem}; give the collector's address or name")
    name = section.string("syslog_server_name", defaults.syslog_server_name)
    if name and _host_problem(name) is not None:
        raise section.error("syslog_server_name", f"{_shown(name)} is not a host name")
    raw_ca = section.string("syslog_ca", "")
    ca = Path(os.path.normpath(base_dir.absolute() / raw_ca)) if raw_ca.strip() else None
    return AuditTrailConfig(
        include_uids=section.boolean("include_uids", defaults.include_uids),
        syslog_host=host,
        syslog_port=section.integer("syslog_port", _PORT_RANGE, defaults.syslog_port),
        syslog_ca=ca,
        syslog_server_name=name,
    )


# --- the sample ------------------------------------------------------------------------


def sample_config() -> str:
    """The documented sample config shipped with meshpacs, as text."""
    return resources.files("meshpacs.node").joinpath(_SAMPLE_RESOURCE).read_text("utf-8")


Setting = bool | int | float | str | list[str]


def render_config(
    site_id: str,
    ae_title: str,
    data_dir: str | Path,
    dicom_port: int,
    settings: Mapping[tuple[str, str], Setting] | None = None,
) -> str:
    """The sample config, comments kept, with this site's values filled in.

    ``settings`` sets more of the sample's keys, by ``(table, key)``, to plain values
    (the testbed turns the mesh on this way). Raises ``ConfigError`` for a site ID, AE
    title or port that would not load.
    """
    validate_site_id(site_id)
    title = validate_ae_title(ae_title)
    validate_port(dicom_port)
    data_dir_text = str(data_dir)
    if not data_dir_text:
        raise ConfigError("data directory must not be empty")
    values = {
        ("site", "id"): _toml_string(site_id),
        ("site", "data_dir"): _toml_string(data_dir_text),
        ("dicom", "ae_title"): _toml_string(title),
        ("dicom", "port"): str(dicom_port),
    }
    for place, value in (settings or {}).items():
        values[place] = _toml_value(value)
    lines = sample_config().splitlines(keepends=True)
    table = ""
    done: set[tuple[str, str]] = set()
    for index, line in enumerate(lines):
        header = re.match(r"\[([^\]]+)\]\s*$", line)
        if header:
            table = header.group(1).strip()
            continue
        setting = re.match(r"([A-Za-z0-9_]+) = ", line)
        if setting and (table, setting.group(1)) in values:
            place = (table, setting.group(1))
            lines[index] = f"{place[1]} = {values[place]}\n"
            done.add(place)
    missing = set(values) - done
    if missing:
        raise ConfigError(f"the sample config has no setting {sorted(missing)}")
    return "".join(lines)


def _toml_value(value: Setting) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    return "[" + ", ".join(_toml_string(item) for item in value) + "]"


def _toml_string(value: str) -> str:
    """A TOML basic string: escape quotes, backslashes and every control character."""
    out = ['"']
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif char < " " or char == "\x7f":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)
