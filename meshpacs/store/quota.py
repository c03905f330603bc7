"""How much room this node gives each partner site, and for how long it keeps what they send.

The policy is a pure value; the store applies it (see :mod:`meshpacs.store.store`), counting
what a partner has stored *and* what it is still sending, so that parallel transfers
cannot together take more than the quota. A quota of 0 refuses a site everything.

Room is also held only for an owner that is still there: every fragment carries a lease,
``lease_seconds`` from its put, which its owner renews for at most ``max_lease_seconds``
at a time. The cap is what bounds how long a site that left the federation without
deleting anything keeps this node's disk: one renewal can never buy years.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from meshpacs.store.names import validate_site_id

__all__ = ["QuotaPolicy"]


@dataclass(frozen=True)
class QuotaPolicy:
    """Bytes each partner site may keep here: ``overrides[site]``, else ``default_bytes``.

    ``lease_seconds`` is the lease a put gives; ``max_lease_seconds`` the most one renewal
    may ask for (more is cut to it).
    """

    default_bytes: int
    overrides: Mapping[str, int] = field(default_factory=dict)
    lease_seconds: float = 30 * 86400
    max_lease_seconds: float = 90 * 86400

    def __post_init__(self) -> None:
        _check_bytes("default quota", self.default_bytes)
        for site, limit in self.overrides.items():
            validate_site_id(site)
            _check_bytes(f"quota of site {site}", limit)
        _check_seconds("lease_seconds", self.lease_seconds)
        _check_seconds("max_lease_seconds", self.max_lease_seconds)
        if self.lease_seconds > self.max_lease_seconds:
            # A put would then lease for longer than any renewal could keep it.
            raise ValueError("lease_seconds must not be over max_lease_seconds")
        # A read-only copy: the caller's dict changing later must not change the policy.
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))

    def limit_for(self, site: str) -> int:
        return self.overrides.get(site, self.default_bytes)


def _check_bytes(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a whole number of bytes >= 0")


def _check_seconds(what: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number of seconds > 0")
