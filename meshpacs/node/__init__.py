"""The node: one meshpacs process beside a hospital PACS, and the site directory it runs in.

``config``
    the node's TOML config file as frozen dataclasses, checked with messages that name the
    file and the key; the documented sample that ``meshpacs init`` fills in.
``site``
    creating a site directory (config, data directories, the site key file) and reading
    the key file back.
"""

from __future__ import annotations

from meshpacs.node.config import (
    CatalogConfig,
    Destination,
    DicomConfig,
    LoggingConfig,
    NodeConfig,
    SiteConfig,
    load_config,
    parse_config,
    render_config,
    sample_config,
)
from meshpacs.node.site import CreatedSite, create_site, load_site_secret

__all__ = [
    "CatalogConfig",
    "CreatedSite",
    "Destination",
    "DicomConfig",
    "LoggingConfig",
    "NodeConfig",
    "SiteConfig",
    "create_site",
    "load_config",
    "load_site_secret",
    "parse_config",
    "render_config",
    "sample_config",
]
