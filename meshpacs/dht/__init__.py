"""Discovery over a Kademlia DHT (the ``kademlia`` package), trusting only signed records.

::

    identity.py   MemberVerifier, Signer: Protocols the federation's ``Federation`` and the
                  node's ``NodeIdentity`` (via ``Ed25519Signer.from_identity``) satisfy
    records.py    sans-I/O: the signed envelope, node and provider records, their DHT keys,
                  verify_record (signature, membership, site, lifetime)
    storage.py    RecordStore: kademlia's storage hook over SQLite; verified, newest-seq
                  records only, kept across restarts
    network.py    DhtNode: the one interface the rest of meshpacs uses (publish, find,
                  closest sites), over the package's internals

Members are :class:`meshpacs.federation.Member` and a node's DHT ID is
:func:`meshpacs.keys.node_id_for` of its certified key (``Member.node_id``): the DHT
defines neither.

The DHT holds no patient data: node records name sites, addresses, an AE title and
capacity; provider records name opaque fragment IDs (HMACs) and the site holding them.
"""

from __future__ import annotations

from meshpacs.dht.identity import Ed25519Signer, MemberVerifier, Signer
from meshpacs.dht.network import DhtNode
from meshpacs.dht.records import (
    DhtRecord,
    NodeRecord,
    ProviderRecord,
    RejectReason,
    VerifiedRecord,
    cert_fingerprint,
    decode_record,
    node_key,
    placement_key,
    provider_key,
    record_key,
    sign_record,
    verify_record,
)
from meshpacs.dht.storage import RecordStore

__all__ = [
    "DhtNode",
    "DhtRecord",
    "Ed25519Signer",
    "MemberVerifier",
    "NodeRecord",
    "ProviderRecord",
    "RecordStore",
    "RejectReason",
    "Signer",
    "VerifiedRecord",
    "cert_fingerprint",
    "decode_record",
    "node_key",
    "placement_key",
    "provider_key",
    "record_key",
    "sign_record",
    "verify_record",
]
