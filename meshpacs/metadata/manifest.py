"""Repair manifests: what a trusted peer needs to repair a bundle while its owner is down.

The catalog record a site sends its trusted peers is sealed under the site's own catalog
key: a peer keeps it but cannot read it. To rebuild lost shares in the owner's absence
(:mod:`meshpacs.upkeep.delegate`), a peer needs a little more, and nothing about
patients: per bundle, its coding parameters and set hash (to check and regenerate
shares, keylessly), the fragment ID of every share (keyed HMACs only the owner can
compute) and the sites that held each. That is a **repair manifest**, sealed to the one
peer it is for, like an escrow share (:func:`meshpacs.keys.escrow.seal_to_identity`).

Manifest, format version 1 (big-endian)::

    offset  size  field
    0       1     version        = 1
    1       16    bundle_id
    17      2     k
    19      2     n
    21      4     segment_size
    25      8     length         bundle stream bytes
    33      32    set_hash
    65      2     threshold      the owner's repair threshold; 0 = halfway (repair_threshold)
    67      1     D              delegates, 1..MAX_DELEGATES, in the order they act
    68      ...   D sites        each: 1-byte length (1..64) | ASCII site ID
    ...     ...   n shares       each: 32-byte fragment ID | 1-byte H (0..MAX_HOLDERS) |
                                       H sites, each 1-byte length | ASCII site ID

Sealed manifest, as stored at the peer::

    0       1     version        = 1
    1       ...   body           seal_to_identity(manifest, peer's certificate key, context)

    context = LABEL | owner_site | 0x00 | peer_site | 0x00 | record_id

The record ID is ``SHA-256("meshpacs/v1/repair-manifest-id" | bundle_id)`` in hex: stable,
so a newer manifest replaces the older one at the peer. Binding both sites and the record
ID in the context means a manifest cannot be passed off as another bundle's, another
owner's, or as meant for another peer.

Pure functions over bytes and frozen dataclasses; :func:`export_manifest` reads the rows.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from meshpacs.erasure import BundleRef, CodingParams, fragment_id
from meshpacs.errors import FormatError, LimitExceeded, UnknownVersion
from meshpacs.keys import NodeIdentity
from meshpacs.keys.escrow import open_for_identity, seal_to_identity
from meshpacs.keys.fields import PRINTABLE_ASCII, SITE_FIELD_MAX, site_field, take_site_field

__all__ = [
    "MANIFEST_VERSION",
    "MAX_DELEGATES",
    "MAX_HOLDERS",
    "MAX_MANIFEST_BYTES",
    "RepairManifest",
    "decode_manifest",
    "encode_manifest",
    "export_manifest",
    "manifest_record_id",
    "open_manifest",
    "seal_manifest",
]

MANIFEST_VERSION = 1
MAX_DELEGATES = 16
MAX_HOLDERS = 8
_SITE_MAX = SITE_FIELD_MAX
_HEAD = struct.Struct(">16sHHIQ32sHB")
_FID = 32
# n = 256 shares with 8 holders of 64-character site IDs each, and 16 delegates: ~140 KB.
MAX_MANIFEST_BYTES = (
    _HEAD.size + MAX_DELEGATES * (1 + _SITE_MAX) + 256 * (_FID + 1 + MAX_HOLDERS * (1 + _SITE_MAX))
)
_LABEL = b"meshpacs/v1/repair-manifest"
_ID_LABEL = b"meshpacs/v1/repair-manifest-id"


@dataclass(frozen=True)
class RepairManifest:
    """One bundle as a delegate sees it: no key, no patient, no UID."""

    ref: BundleRef
    threshold: int
    delegates: tuple[str, ...]
    fragment_ids: tuple[str, ...]  # share -> its fragment ID (64 hex)
    holders: tuple[tuple[str, ...], ...]  # share -> sites recorded as holding it

    def __post_init__(self) -> None:
        n = self.ref.params.n
        if len(self.fragment_ids) != n or len(self.holders) != n:
            raise FormatError("a manifest names a fragment ID and holders for every share")
        if not 1 <= len(self.delegates) <= MAX_DELEGATES:
            raise LimitExceeded(f"a manifest names 1..{MAX_DELEGATES} delegates")
        if any(len(sites) > MAX_HOLDERS for sites in self.holders):
            raise LimitExceeded(f"a manifest names at most {MAX_HOLDERS} holders per share")
        if not 0 <= self.threshold <= n:
            raise FormatError("a manifest's threshold is 0..n")
        for name in self.fragment_ids:
            if len(name) != 2 * _FID or name != name.lower():
                raise FormatError("a manifest's fragment IDs are 64 lower-case hex digits")


def manifest_record_id(bundle_id: bytes) -> str:
    return hashlib.sha256(_ID_LABEL + bundle_id).hexdigest()


def _site(site: str) -> bytes:
    return site_field(site, "a site ID in a repair manifest", PRINTABLE_ASCII)


def encode_manifest(manifest: RepairManifest) -> bytes:
    ref, p = manifest.ref, manifest.ref.params
    parts = [
        bytes([MANIFEST_VERSION]),
        _HEAD.pack(
            ref.bundle_id,
            p.k,
            p.n,
            p.segment_size,
            ref.length,
            ref.set_hash,
            manifest.threshold,
            len(manifest.delegates),
        ),
        *(_site(site) for site in manifest.delegates),
    ]
    for name, sites in zip(manifest.fragment_ids, manifest.holders, strict=True):
        parts.append(bytes.fromhex(name) + bytes([len(sites)]))
        parts.extend(_site(site) for site in sites)
    return b"".join(parts)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.offset = 0

    def take(self, size: int, what: str) -> bytes:
        end = self.offset + size
        if end > len(self._data):
            raise FormatError(f"repair manifest is cut short in {what}")
        chunk = self._data[self.offset : end]
        self.offset = end
        return chunk

    def site(self, what: str) -> str:
        site, self.offset = take_site_field(
            self._data, self.offset, f"repair manifest {what}", PRINTABLE_ASCII
        )
        return site

    def sites(self, count: int, what: str) -> tuple[str, ...]:
        return tuple(self.site(what) for _ in range(count))


def decode_manifest(data: bytes) -> RepairManifest:
    if len(data) > 1 + MAX_MANIFEST_BYTES:
        raise LimitExceeded(f"a repair manifest is at most {MAX_MANIFEST_BYTES} bytes")
    if not data:
        raise FormatError("empty repair manifest")
    if data[0] != MANIFEST_VERSION:
        raise UnknownVersion("repair manifest", data[0], [MANIFEST_VERSION])
    reader = _Reader(data)
    reader.take(1, "version")
    head = _HEAD.unpack(reader.take(_HEAD.size, "header"))
    bundle_id, k, n, segment_size, length, set_hash, threshold, count = head
    try:
        params = CodingParams(k, n, segment_size)
    except ValueError as error:
        raise FormatError(f"repair manifest: {error}") from None
    delegates = reader.sites(count, "delegate")
    ids: list[str] = []
    holders: list[tuple[str, ...]] = []
    for _ in range(n):
        ids.append(reader.take(_FID, "fragment ID").hex())
        held = reader.take(1, "holder count")[0]
        if held > MAX_HOLDERS:
            raise LimitExceeded(f"a manifest names at most {MAX_HOLDERS} holders per share")
        holders.append(reader.sites(held, "holder"))
    if reader.offset != len(data):
        raise FormatError("repair manifest has bytes after its last share")
    ref = BundleRef(bundle_id, params, length, set_hash)
    return RepairManifest(ref, threshold, delegates, tuple(ids), tuple(holders))


def _context(owner_site: str, peer_site: str, record_id: str) -> bytes:
    return b"\x00".join(
        [_LABEL + owner_site.encode("ascii"), peer_site.encode("ascii"), record_id.encode()]
    )


def seal_manifest(
    manifest: RepairManifest, peer_ed25519: bytes, *, owner_site: str, peer_site: str
) -> tuple[str, bytes]:
    """The record ID and the sealed manifest for ``peer_site`` (its certificate's key)."""
    record_id = manifest_record_id(manifest.ref.bundle_id)
    context = _context(owner_site, peer_site, record_id)
    sealed = seal_to_identity(encode_manifest(manifest), peer_ed25519, context)
    return record_id, bytes([MANIFEST_VERSION]) + sealed


def open_manifest(
    identity: NodeIdentity, data: bytes, *, owner_site: str, peer_site: str, record_id: str
) -> RepairManifest:
    """The manifest sealed to ``identity``; ``WrongKey`` if not for it or altered."""
    if len(data) > 2 * MAX_MANIFEST_BYTES:
        raise LimitExceeded("sealed repair manifest is over its size bound")
    if not data:
        raise FormatError("empty sealed repair manifest")
    if data[0] != MANIFEST_VERSION:
        raise UnknownVersion("sealed repair manifest", data[0], [MANIFEST_VERSION])
    context = _context(owner_site, peer_site, record_id)
    manifest = decode_manifest(open_for_identity(identity, data[1:], context, "repair manifest"))
    if manifest_record_id(manifest.ref.bundle_id) != record_id:
        raise FormatError("repair manifest is filed under another bundle's record ID")
    return manifest


def export_manifest(
    db: sqlite3.Connection,
    bundle_ref: int,
    *,
    fragment_id_key: bytes,
    delegates: Sequence[str],
    threshold: int | None,
) -> RepairManifest | None:
    """The manifest of a settled bundle (stored or degraded), or None for any other."""
    row = db.execute(
        "SELECT bundle_id, k, n, segment_size, length, set_hash FROM bundles"
        " WHERE id = ? AND state IN ('stored', 'degraded')",
        (bundle_ref,),
    ).fetchone()
    if row is None:
        return None
    bundle_id, k, n, segment_size, length, set_hash = row
    ref = BundleRef(bytes(bundle_id), CodingParams(k, n, segment_size), length, bytes(set_hash))
    holders: list[list[str]] = [[] for _ in range(n)]
    for share, site in db.execute(
        "SELECT share, holder_site FROM placements WHERE bundle_ref = ?"
        " ORDER BY share, stored_at DESC",
        (bundle_ref,),
    ):
        if len(holders[share]) < MAX_HOLDERS:
            holders[share].append(str(site))
    ids = tuple(fragment_id(fragment_id_key, ref.bundle_id, share) for share in range(n))
    return RepairManifest(
        ref,
        min(threshold or 0, n),  # repair_threshold keeps any configured value within n
        tuple(delegates),
        ids,
        tuple(tuple(sites) for sites in holders),
    )
