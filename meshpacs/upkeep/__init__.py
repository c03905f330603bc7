"""Keeping a site's backups healthy after they are made: audits now, repair to come.

Upkeep sits above both ``backup`` (placing shares) and ``recovery`` (gathering them),
because healing a bundle needs both.
"""

from meshpacs.upkeep.auditor import Auditor, AuditResult, AuditSettings, Holders

__all__ = ["AuditResult", "AuditSettings", "Auditor", "Holders"]
