"""Repair's codec: the shares a bundle lost, rebuilt from any k good ones, without its key.

Encryption comes before erasure coding (see :mod:`~meshpacs.erasure.layout`), so the k
primary blocks of a segment are ciphertext: zfec-decoding k verified shares gives them
back, and zfec-encoding them again gives any other share, byte for byte the one first
made. Whoever holds k good fragments and the recorded :class:`~meshpacs.erasure.BundleRef`
can therefore repair a bundle; it never needs, and never sees, the data key.

A regenerated fragment is checked before it is handed back: its header is the bundle's
with its share number, and its blocks must hash to the share root that every source
fragment's trailer carries (and that the recorded ``set_hash`` pins). A fragment that does
not is never written whole: :class:`~meshpacs.errors.CorruptFragment` is raised and the
caller discards its outputs.

Memory: k source blocks and one block per regenerated share, whatever the bundle size.
"""

from __future__ import annotations

from collections.abc import Sequence

import zfec

from meshpacs.erasure.decoder import FragmentSource, ShareSet
from meshpacs.erasure.encoder import Writable
from meshpacs.erasure.layout import (
    BundleRef,
    Trailer,
    block_hash,
    pack_header,
    pack_trailer,
    share_root,
)
from meshpacs.errors import CorruptFragment

__all__ = ["regenerate_shares"]


def regenerate_shares(
    ref: BundleRef,
    fragments: Sequence[FragmentSource],
    shares: Sequence[int],
    outputs: Sequence[Writable],
) -> dict[int, str]:
    """Write fragment ``shares[i]`` of the bundle to ``outputs[i]``, from k good ``fragments``.

    Returns the fragments refused on the way (by position in ``fragments``, with why);
    :class:`~meshpacs.errors.Unrecoverable` when fewer than k good ones remain.
    """
    header = ref.header
    wanted = tuple(shares)
    if len(wanted) != len(outputs):
        raise ValueError(f"{len(wanted)} shares wanted but {len(outputs)} outputs given")
    if not wanted or len(set(wanted)) != len(wanted) or not all(0 <= s < header.n for s in wanted):
        raise ValueError(f"shares to regenerate must be distinct, in 0..{header.n - 1}: {wanted}")
    sources = ShareSet(ref, fragments)
    encoder = zfec.Encoder(header.k, header.n)
    hashes: list[list[bytes]] = [[] for _ in wanted]
    for share, output in zip(wanted, outputs, strict=True):
        output.write(pack_header(header.for_share(share)))
    for segment in range(header.segment_count):
        primaries = tuple(sources.primaries(segment))
        blocks = encoder.encode(primaries, wanted)
        for i, (share, block) in enumerate(zip(wanted, blocks, strict=True)):
            hashes[i].append(block_hash(ref.bundle_id, share, segment, block))
            outputs[i].write(block)
    roots = sources.share_roots
    for share, own in zip(wanted, hashes, strict=True):
        if share_root(ref.bundle_id, share, tuple(own)) != roots[share]:
            raise CorruptFragment("regenerated share does not match its recorded root", share)
    for output, own in zip(outputs, hashes, strict=True):
        output.write(pack_trailer(Trailer(tuple(own), roots)))
    return dict(sources.rejected)
