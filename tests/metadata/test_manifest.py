"""Repair manifests: the byte layout, sealing to one peer, and the catalog export."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from meshpacs.erasure import BundleRef, CodingParams, fragment_id
from meshpacs.errors import FormatError, LimitExceeded, UnknownVersion, WrongKey
from meshpacs.keys import NodeIdentity, SiteSecret
from meshpacs.metadata.manifest import (
    MAX_HOLDERS,
    RepairManifest,
    decode_manifest,
    encode_manifest,
    export_manifest,
    manifest_record_id,
    open_manifest,
    seal_manifest,
)

from ..backup.helpers import open_site


def identity(seed: int) -> NodeIdentity:
    return NodeIdentity.from_secret(SiteSecret(bytes((seed + i) % 256 for i in range(32))))


def manifest(seed: int = 1, k: int = 2, n: int = 4) -> RepairManifest:
    rng = random.Random(seed)
    ref = BundleRef(rng.randbytes(16), CodingParams(k, n, 4096), 123_456, rng.randbytes(32))
    key = rng.randbytes(32)
    ids = tuple(fragment_id(key, ref.bundle_id, share) for share in range(n))
    holders = tuple((f"site-{share}",) if share % 2 else () for share in range(n))
    return RepairManifest(ref, 3, ("peer-a", "peer-b"), ids, holders)


def test_a_manifest_is_laid_out_as_drawn_and_round_trips() -> None:
    m = manifest()
    data = encode_manifest(m)
    assert data[0] == 1 and data[1:17] == m.ref.bundle_id
    assert struct.unpack(">HHIQ", data[17:33]) == (2, 4, 4096, 123_456)
    assert data[33:65] == m.ref.set_hash
    assert struct.unpack(">HB", data[65:68]) == (3, 2)
    assert data[68:75] == b"\x06peer-a" and data[75:82] == b"\x06peer-b"
    assert data[82:114] == bytes.fromhex(m.fragment_ids[0]) and data[114] == 0  # no holder
    assert data[115:147] == bytes.fromhex(m.fragment_ids[1]) and data[147:155] == b"\x01\x06site-1"
    assert decode_manifest(data) == m


def test_sealed_for_one_peer_only_and_bound_to_owner_and_record() -> None:
    m, peer, other = manifest(), identity(1), identity(2)
    record_id, sealed = seal_manifest(
        m, peer.public_key_bytes, owner_site="site-a", peer_site="peer-a"
    )
    assert record_id == manifest_record_id(m.ref.bundle_id)
    assert m.ref.bundle_id not in sealed and m.fragment_ids[0].encode() not in sealed
    opened = open_manifest(
        peer, sealed, owner_site="site-a", peer_site="peer-a", record_id=record_id
    )
    assert opened == m
    with pytest.raises(WrongKey):
        open_manifest(other, sealed, owner_site="site-a", peer_site="peer-a", record_id=record_id)
    with pytest.raises(WrongKey):  # passed off as another owner's
        open_manifest(peer, sealed, owner_site="site-x", peer_site="peer-a", record_id=record_id)
    with pytest.raises(WrongKey):  # filed under another bundle's name
        open_manifest(peer, sealed, owner_site="site-a", peer_site="peer-a", record_id="0" * 64)
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(WrongKey):
        open_manifest(peer, bytes(flipped), owner_site="site-a", peer_site="peer-a",
                      record_id=record_id)  # fmt: skip
    with pytest.raises(UnknownVersion):
        open_manifest(peer, b"\x09" + sealed[1:], owner_site="site-a", peer_site="peer-a",
                      record_id=record_id)  # fmt: skip


def test_malformed_manifests_are_refused_before_use() -> None:
    data = encode_manifest(manifest())
    for cut in (0, 1, 40, 70, len(data) - 1):
        with pytest.raises(FormatError):
            decode_manifest(data[:cut])
    with pytest.raises(FormatError, match="after its last share"):
        decode_manifest(data + b"\x00")
    with pytest.raises(UnknownVersion):
        decode_manifest(b"\x02" + data[1:])
    bad_k = bytearray(data)
    bad_k[17:19] = (9).to_bytes(2, "big")  # k > n
    with pytest.raises(FormatError):
        decode_manifest(bytes(bad_k))
    too_many = bytearray(data)
    too_many[114] = MAX_HOLDERS + 1
    with pytest.raises(LimitExceeded):
        decode_manifest(bytes(too_many))
    m = manifest()
    with pytest.raises(FormatError):
        RepairManifest(m.ref, 3, m.delegates, m.fragment_ids[:-1], m.holders)
    with pytest.raises(LimitExceeded):
        RepairManifest(m.ref, 3, (), m.fragment_ids, m.holders)


async def test_export_names_every_share_with_the_owners_fragment_ids(tmp_path: Path) -> None:
    async with open_site(tmp_path) as site:
        await site.receive(3, size=20_000)
        report = await site.service(k=2, n=4, happy=4).run_once()
        assert report.stored == 1
        rows = await site.catalog.read(
            lambda db: db.execute(
                "SELECT b.id, p.share, p.holder_site, p.fragment_id FROM bundles b"
                " JOIN placements p ON p.bundle_ref = b.id"
            ).fetchall()
        )
        bundle_ref = rows[0][0]
        found = await site.catalog.read(
            lambda db: export_manifest(
                db,
                bundle_ref,
                fragment_id_key=site.keys.fragment_id,
                delegates=("peer-a",),
                threshold=None,
            )
        )
        assert found is not None
        assert (found.ref.params.k, found.ref.params.n, found.threshold) == (2, 4, 0)
        for _, share, holder, fid in rows:
            assert found.fragment_ids[share] == fid
            assert found.holders[share] == (holder,)
        assert decode_manifest(encode_manifest(found)) == found
        assert (
            await site.catalog.read(
                lambda db: export_manifest(
                    db, 999, fragment_id_key=b"k" * 32, delegates=("p",), threshold=None
                )
            )
            is None
        )


def test_site_fields_take_printable_ascii_as_they_always_did() -> None:
    m = manifest()
    wide = RepairManifest(m.ref, 3, ("Peer A",), m.fragment_ids, m.holders)
    assert decode_manifest(encode_manifest(wide)) == wide  # wider than the site-ID rule
    data = encode_manifest(m)
    for bad in (b"\x06peer\na", b"\x06peer-\xe1", b"\x00", b"\x41"):
        with pytest.raises(FormatError, match="repair manifest delegate"):
            decode_manifest(data[:68] + bad + data[75:])
    for site in ("peer\na", "péer", "", "p" * 65):
        with pytest.raises(FormatError, match="site ID in a repair manifest"):
            encode_manifest(RepairManifest(m.ref, 3, (site,), m.fragment_ids, m.holders))
