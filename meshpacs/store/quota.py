"""How much room this node gives each partner site: one default, and overrides by site ID.

The policy is a pure value; the store applies it (see :mod:`meshpacs.store.store`), counting
what a partner has stored *and* what it is still sending, so that parallel transfers
cannot together take more than the quota. A quota of 0 refuses a site everything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from meshpacs.store.names import validate_site_id

__all__ = ["QuotaPolicy"]


@dataclass(frozen=True)
class QuotaPolicy:
    """Bytes each partner site may keep here: ``overrides[site]``, else ``default_bytes``."""

    default_bytes: int
    overrides: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_bytes("default quota", self.default_bytes)
        for site, limit in self.overrides.items():
            validate_site_id(site)
            _check_bytes(f"quota of site {site}", limit)
        # A read-only copy: the caller's dict changing later must not change the policy.
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))

    def limit_for(self, site: str) -> int:
        return self.overrides.get(site, self.default_bytes)


def _check_bytes(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a whole number of bytes >= 0")
