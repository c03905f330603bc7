"""The fragment store: where a node keeps the fragments its partner sites send it.

Partners' fragments are opaque ciphertext named by keyed HMACs; this node checks each one
in full before keeping it, keeps it durably under its ID, accounts it to its owner's
quota, and lets only the owner overwrite or delete it. The transport (the next layer up)
streams fragments in and out through :class:`FragmentStore`. Scrubbing marks rot in the
index (``quarantined``, set by ``FragmentStore.scrub``); every fragment carries a lease
(``lease_expires``) that its owner renews (``meshpacs.upkeep.leases``, over the
transport's RENEW_LEASES) and that the node's expiry pass (``meshpacs.node.expiry``) acts
on once it has run out for longer than the grace.

- :mod:`~meshpacs.store.names`: fragment and site IDs, checked before they touch a path.
- :mod:`~meshpacs.store.quota`: how much room each partner gets.
- :mod:`~meshpacs.store.index`: the SQLite index and the per-owner usage it keeps.
- :mod:`~meshpacs.store.durable`: temp files, renames and removals made durable.
- :mod:`~meshpacs.store.pending`: a fragment streaming in, checked as it comes.
- :mod:`~meshpacs.store.reconcile`: what an open repairs after a crash, and why.
- :mod:`~meshpacs.store.store`: the store itself: put, has, read, delete, usage.
"""

from meshpacs.store.index import FragmentState, StoredFragment
from meshpacs.store.names import validate_fragment_id, validate_site_id
from meshpacs.store.pending import PendingFragment
from meshpacs.store.quota import QuotaPolicy
from meshpacs.store.reconcile import ReconcileReport
from meshpacs.store.store import (
    DEFAULT_MAX_FRAGMENT_BYTES,
    MAX_LIST,
    MAX_READ_BYTES,
    MAX_RENEW,
    FragmentStore,
    ScrubFinding,
)

__all__ = [
    "DEFAULT_MAX_FRAGMENT_BYTES",
    "MAX_LIST",
    "MAX_READ_BYTES",
    "MAX_RENEW",
    "FragmentState",
    "FragmentStore",
    "PendingFragment",
    "QuotaPolicy",
    "ReconcileReport",
    "ScrubFinding",
    "StoredFragment",
    "validate_fragment_id",
    "validate_site_id",
]
