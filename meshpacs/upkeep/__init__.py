"""Keeping a site's backups healthy after they are made: audits, repair, leases, forgetting,
and repair for a trusted site that is down (``delegate``).

Upkeep sits above both ``backup`` (placing shares) and ``recovery`` (gathering them),
because healing a bundle needs both.
"""

from meshpacs.upkeep.auditor import Auditor, AuditResult, AuditSettings, Holders
from meshpacs.upkeep.delegate import DelegatePass, DelegateRepairer, DelegateSettings
from meshpacs.upkeep.forget import ForgetPartners, ForgetPass, Forgetter
from meshpacs.upkeep.leases import LeaseHolders, LeaseRenewal, LeaseRenewer, LeaseSettings
from meshpacs.upkeep.repair import Repairer, RepairPass, RepairSettings

__all__ = [
    "AuditResult",
    "AuditSettings",
    "Auditor",
    "DelegatePass",
    "DelegateRepairer",
    "DelegateSettings",
    "ForgetPartners",
    "ForgetPass",
    "Forgetter",
    "Holders",
    "LeaseHolders",
    "LeaseRenewal",
    "LeaseRenewer",
    "LeaseSettings",
    "RepairPass",
    "RepairSettings",
    "Repairer",
]
