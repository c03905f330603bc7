"""A whole federation laid out on one machine: CA, sites, configs, phrases, on loopback.

``create_testbed`` writes, under one root directory::

    root/
      ca/                       the federation CA (what the federation's administrator keeps)
      sites/<site id>/          each site's directory: config.toml, site.key, data
      phrases/<site id>.phrase  each site's recovery phrase (0600), OUTSIDE the site's
                                directory, because a disaster drill destroys that directory
      certs/<site id>.pem       a copy of each site's node certificate (public), ditto
      recovery/<site id>/       where `meshpacs recover` keeps its journal for that site
      logs/                     node logs, when the testbed runs nodes as processes
      testbed.json              what scripts read: sites, ports, paths (see ``TestbedPlan``)
                                and each site's ``dashboard_url``, token included

Every site gets the mesh turned on, bound to 127.0.0.1 with its own ports, bootstrapping
from two of the first three sites' DHTs (never its own), and trusting the next two
sites in a ring unless told otherwise. Timings can be made short for tests
(``stable_seconds``, ``pass_interval``). Each site's dashboard gets a port of its own on
the site's address and its token is made with the site, so ``testbed.json`` can give a
URL a browser or a script opens directly; its history is sampled every ``history_seconds``
so a trial sees the chart move.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from meshpacs.errors import ConfigError
from meshpacs.federation import SiteFederationFiles, create_federation_ca, enroll_site
from meshpacs.keys import NodeIdentity
from meshpacs.node.config import Setting
from meshpacs.node.site import create_site, load_site_secret
from meshpacs.testing.loopback import free_port
from meshpacs.web import TOKEN_FILE, ensure_token

__all__ = [
    "FAST_MAINTENANCE",
    "TESTBED_FILE",
    "TestbedPlan",
    "TestbedSite",
    "create_testbed",
    "load_testbed",
]

# Audits every second or so, a scrub pass every 18 seconds and a repair pass every second,
# so a trial sees the mesh notice a corrupted or missing fragment and heal it within a
# minute (``--fast-maintenance``).
FAST_MAINTENANCE: dict[str, Setting] = {
    "audits_per_hour": 3600.0,
    "audit_challenges": 1024,
    "audit_spread_days": 0,  # audit as fast as the budget allows
    "audit_timeout_seconds": 5.0,
    "scrub_interval_hours": 0.005,
    "repair_threshold": 256,  # at most n: any lost share is rebuilt
    "lost_after_hours": 0.001,  # 3.6 s
    "repair_interval_minutes": 0.02,  # 1.2 s
}

TESTBED_FILE = "testbed.json"
HOST = "127.0.0.1"


@dataclass
class TestbedSite:
    """One site of the testbed, as ``testbed.json`` lists it."""

    site_id: str
    ae_title: str
    host: str
    dicom_port: int
    dht_port: int
    transport_port: int
    config: str
    data_dir: str
    phrase_file: str
    trusted: list[str]
    pid: int | None = None
    orthanc: dict[str, object] | None = None
    # What `meshpacs recover` needs besides --phrase-file, --to-ae and --json, all outside
    # data_dir (option name without dashes -> value; lists repeat the option).
    recover_args: dict[str, object] = field(default_factory=dict)
    # The read-only dashboard (and /metrics, /status.json) with its token: a secret of this
    # testbed, like the phrases. Empty in a testbed.json written before dashboards existed.
    web_port: int = 0
    dashboard_url: str = ""


@dataclass
class TestbedPlan:
    """The whole testbed; ``save``/``load_testbed`` round-trip it through ``testbed.json``."""

    root: str
    k: int
    n: int
    happy: int
    ca_dir: str
    sites: list[TestbedSite] = field(default_factory=list)

    def site(self, site_id: str) -> TestbedSite:
        for site in self.sites:
            if site.site_id == site_id:
                return site
        raise KeyError(site_id)

    def save(self) -> None:
        path = Path(self.root) / TESTBED_FILE
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        os.replace(temp, path)


def load_testbed(root: Path) -> TestbedPlan:
    try:
        document = json.loads((root / TESTBED_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{root} holds no testbed ({TESTBED_FILE} is missing)") from None
    except ValueError as error:
        raise ConfigError(f"{root / TESTBED_FILE} is not valid JSON: {error}") from None
    sites = [TestbedSite(**site) for site in document.pop("sites")]
    return TestbedPlan(**document, sites=sites)


def create_testbed(
    root: Path,
    sites: int,
    *,
    k: int = 2,
    n: int = 3,
    happy: int | None = None,
    trust: int = 2,
    stable_seconds: float = 2.0,
    pass_interval: float = 1.0,
    segment_kib: int = 256,
    maintenance: Mapping[str, Setting] | None = None,
    port: Callable[[], int] = free_port,
    hosts: Sequence[str] | None = None,
    history_seconds: float = 5.0,
) -> TestbedPlan:
    """Lay out a federation of ``sites`` sites under ``root`` (new or empty).

    ``maintenance`` sets keys of every site's ``[maintenance]`` table (audit and scrub
    rates), e.g. :data:`FAST_MAINTENANCE`. ``hosts`` gives each site the IP address it
    binds and is reached at (default 127.0.0.1 for all; a partition test puts one site in
    a network namespace of its own).
    """
    if sites < n + 1:
        raise ConfigError(
            f"{sites} sites cannot hold n={n} shares on distinct partners: need at least {n + 1}"
        )
    if not 0 <= trust < sites:
        raise ConfigError(f"each site can trust 0 to {sites - 1} others, not {trust}")
    root = root.absolute()
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root} is not empty; give a new directory for the testbed")
    happy = happy if happy is not None else min(n, k + 1)
    hosts = list(hosts) if hosts is not None else [HOST] * sites
    if len(hosts) != sites:
        raise ConfigError(f"{len(hosts)} hosts given for {sites} sites")
    ca = create_federation_ca(root / "ca", "meshpacs testbed")
    (root / "phrases").mkdir(mode=0o700)
    (root / "logs").mkdir(mode=0o700)
    ids = [f"site-{chr(ord('a') + i)}" if i < 26 else f"site-{i + 1}" for i in range(sites)]
    ports = [(port(), port(), port(), port()) for _ in ids]
    plan = TestbedPlan(str(root), k, n, happy, str(root / "ca"))
    for index, site_id in enumerate(ids):
        dicom_port, dht_port, transport_port, web_port = ports[index]
        host = hosts[index]
        # Two bootstrap peers (never itself), so one of them down does not isolate it.
        seeds = [i for i in (0, 1, 2) if i != index][:2]
        trusted = [ids[(index + step) % sites] for step in range(1, trust + 1)]
        settings: dict[tuple[str, str], Setting] = {
            ("dicom", "bind"): host,
            ("catalog", "stable_after_seconds"): float(stable_seconds),
            ("mesh", "enabled"): True,
            ("mesh", "bind"): host,
            ("mesh", "advertise_host"): host,
            ("mesh", "dht_port"): dht_port,
            ("mesh", "transport_port"): transport_port,
            ("mesh", "bootstrap"): [f"{hosts[seed]}:{ports[seed][1]}" for seed in seeds],
            ("mesh", "trusted_peers"): trusted,
            # Loopback answers in microseconds: a short wait finds stopped sites quickly.
            ("mesh", "dht_timeout_seconds"): 1.0,
            ("backup", "k"): k,
            ("backup", "n"): n,
            ("backup", "happy"): happy,
            ("backup", "segment_kib"): segment_kib,
            ("backup", "pass_interval_seconds"): float(pass_interval),
            ("web", "bind"): host,
            ("web", "port"): web_port,
            ("web", "history_interval_seconds"): float(history_seconds),
        }
        settings.update({("maintenance", key): value for key, value in (maintenance or {}).items()})
        directory = root / "sites" / site_id
        ae_title = f"MESH_{site_id.upper().replace('-', '_')}"[:16]
        created = create_site(directory, site_id, ae_title, dicom_port, settings)
        # Made now, not at the node's first start, so testbed.json can hold the URL.
        token = ensure_token(directory / "state" / TOKEN_FILE)
        web_host = f"[{host}]" if ":" in host else host
        phrase_file = root / "phrases" / f"{site_id}.phrase"
        fd = os.open(phrase_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(created.phrase + "\n")
        identity = NodeIdentity.from_secret(load_site_secret(directory / "site.key"))
        files = SiteFederationFiles.for_site(directory)
        enroll_site(ca, files, identity, site_id)
        kept_cert = root / "certs" / f"{site_id}.pem"  # a copy that outlives the site
        kept_cert.parent.mkdir(mode=0o755, exist_ok=True)
        shutil.copyfile(files.node_cert, kept_cert)
        plan.sites.append(
            TestbedSite(
                site_id=site_id,
                ae_title=ae_title,
                host=host,
                dicom_port=dicom_port,
                dht_port=dht_port,
                transport_port=transport_port,
                config=str(created.config_path),
                data_dir=str(directory),
                phrase_file=str(phrase_file),
                trusted=trusted,
                recover_args={
                    "site-id": site_id,
                    "ca": str(root / "ca" / "ca.pem"),
                    "cert": str(kept_cert),
                    "crl": str(root / "ca" / "crl.pem"),
                    "bootstrap": [f"{hosts[i]}:{ports[i][1]}" for i in range(sites) if i != index],
                    "workdir": str(root / "recovery" / site_id),
                },
                web_port=web_port,
                dashboard_url=f"http://{web_host}:{web_port}/?token={token}",
            )
        )
    plan.save()
    return plan
