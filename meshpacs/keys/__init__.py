"""Keys of a meshpacs site: one secret to keep, everything else derived or wrapped.

::

    SiteSecret (32 random bytes)
    │   kept as a recovery phrase on paper (phrase.py)
    │   and/or escrowed as Shamir t-of-n shares with trusted peers (shamir.py)
    │
    └── HKDF-SHA256, one label per purpose (secret.py: SiteKeys.derive)
        ├── fragment_id          HMAC key naming fragments, unlinkable by the peers storing them
        ├── key_wrap             wraps each bundle's data key (wrap.py)
        │   └── data key         random per bundle, stored wrapped next to the bundle
        ├── catalog              encrypts the site catalog for trusted peers
        ├── node_identity_seed   seed of the node's key pairs (identity.py: NodeIdentity)
        │   ├── Ed25519          signs certificate requests and DHT records; names the node
        │   └── X25519           other sites encrypt escrow shares to it
        ├── audit trail          seals the ATNA audit trail (secret.py: audit_trail_key)
        └── fingerprint          non-secret ID to confirm a typed phrase belongs to the site

Why this shape: a site that loses everything but its phrase (or ``threshold`` escrow
shares) can derive every key again and unwrap every bundle's data key, with nothing else
backed up; and a leaked data key exposes one bundle, a leaked subkey one purpose.
"""

from __future__ import annotations

from meshpacs.keys.identity import NodeIdentity, node_id_for, verify_signature
from meshpacs.keys.phrase import decode_phrase, encode_phrase
from meshpacs.keys.secret import SiteKeys, SiteSecret
from meshpacs.keys.shamir import (
    ShamirShare,
    combine,
    decode_share,
    encode_share,
    interpolate,
    split,
)
from meshpacs.keys.wrap import DATA_KEY_SIZE, unwrap_data_key, wrap_data_key

__all__ = [
    "DATA_KEY_SIZE",
    "NodeIdentity",
    "ShamirShare",
    "SiteKeys",
    "SiteSecret",
    "combine",
    "decode_phrase",
    "decode_share",
    "encode_phrase",
    "encode_share",
    "interpolate",
    "node_id_for",
    "split",
    "unwrap_data_key",
    "verify_signature",
    "wrap_data_key",
]
