"""Byte layout of a fragment, and the hashes that let anyone check one on its own.

A bundle's plaintext stream (see :mod:`meshpacs.erasure.bundle`) is cut into segments of
``segment_size`` bytes (the last one may be shorter; an empty stream still has one empty
segment so that truncation is always detectable). Each segment is encrypted with
AES-256-GCM under the bundle's data key, padded with zeros to a multiple of k, cut into k
blocks and zfec-encoded into n blocks. **Fragment i** holds block i of every segment, plus
what is needed to verify those blocks without the key.

Fragment, format version 1 (all integers big-endian)::

    offset        size     field
    0             1        version            = 1; a reader refuses any other value
    1             4        magic              b"MPFR"
    5             2        k                  shares needed, 1 <= k <= n
    7             2        n                  shares made, 1 <= n <= 256
    9             2        share              this fragment's share number, 0 <= share < n
    11            4        segment_size       plaintext bytes per segment
    15            8        length             plaintext bytes in the whole bundle stream
    23            16       bundle_id          random, says nothing about the study
    39            B        blocks             block_size(s) bytes for each segment s in order
    39+B          32*S     block_hashes       hash of each of this share's blocks
    39+B+32*S     32*n     share_roots        the share root of every share 0..n-1

    S = max(1, ceil(length / segment_size))
    block_size(s) = ceil((segment_length(s) + 16) / k)     # +16: the GCM tag
    B = sum of block_size(s) over all segments

Every size above follows from the header, so a reader knows the exact fragment size
before it reads a block, and a truncated or padded fragment is refused at once.

Hashes are BLAKE3 (it runs at about 6 GB/s on one core here against 1.8 GB/s for
SHA-256, and hashing 1.75x the data on every encode is the codec's largest cost after zfec),
each prefixed with its own label so that no hash can stand in for another::

    block_hash  = H("meshpacs/v1/block" | bundle_id | share | segment | block)
    share_root  = H("meshpacs/v1/share" | bundle_id | share | block_hashes...)
    set_hash    = H("meshpacs/v1/set"   | header without share | share_roots...)

The owner records ``set_hash`` in its catalog. A fragment whose share roots hash to the
recorded ``set_hash``, whose own block hashes hash to its share root, and whose blocks
match those hashes is authentic, block by block: a holder, an auditor and the decoder
can each reject a bad fragment before zfec sees it (zfec itself detects nothing).

Segment encryption: nonce = 4 zero bytes | segment number (8 bytes); the key is fresh per
bundle, so nonces never repeat under one key. The associated data binds the format
version, bundle id, segment number and count, k, n, segment size and length, so a segment
moved, dropped, or replayed from another bundle or another encoding fails to decrypt.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import blake3

from meshpacs.errors import CorruptFragment, FormatError, LimitExceeded, UnknownVersion

__all__ = [
    "BUNDLE_ID_SIZE",
    "GCM_TAG_SIZE",
    "HASH_SIZE",
    "HEADER_SIZE",
    "MAX_LENGTH",
    "MAX_N",
    "MAX_SEGMENT_SIZE",
    "MIN_SEGMENT_SIZE",
    "VERSION",
    "BundleRef",
    "CodingParams",
    "FragmentHeader",
    "Trailer",
    "block_hash",
    "pack_header",
    "pack_trailer",
    "parse_header",
    "parse_trailer",
    "segment_aad",
    "segment_nonce",
    "set_hash",
    "share_root",
]

VERSION = 1
MAGIC = b"MPFR"
BUNDLE_ID_SIZE = 16
HASH_SIZE = 32
GCM_TAG_SIZE = 16
# zfec's own limit on the number of shares (m <= 256).
MAX_N = 256
# Below 4 KiB the per-segment hash and tag overhead dominates; above 64 MiB one segment
# times n no longer fits the memory bound a node promises per concurrent decode.
MIN_SEGMENT_SIZE = 4 * 1024
MAX_SEGMENT_SIZE = 64 * 1024 * 1024
# A single bundle holds one study; 4 TiB is far past any study and keeps every offset
# computed from a peer's header well inside 64 bits.
MAX_LENGTH = 4 * 1024**4

_HEADER = struct.Struct(">B4sHHHIQ16s")
HEADER_SIZE = _HEADER.size  # 39
_U16 = struct.Struct(">H")
_SEGMENT_REF = struct.Struct(">HI")
_COMMON = struct.Struct(">BHHIQ16s")
_AAD = struct.Struct(">B16sQQHHIQ")


@dataclass(frozen=True)
class CodingParams:
    """How one bundle is cut and spread: k of n shares, segments of ``segment_size``."""

    k: int
    n: int
    segment_size: int

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n <= MAX_N:
            raise ValueError(f"need 1 <= k <= n <= {MAX_N}, got k={self.k} n={self.n}")
        if not MIN_SEGMENT_SIZE <= self.segment_size <= MAX_SEGMENT_SIZE:
            raise ValueError(
                f"segment size must be {MIN_SEGMENT_SIZE}..{MAX_SEGMENT_SIZE} bytes,"
                f" got {self.segment_size}"
            )


@dataclass(frozen=True)
class FragmentHeader:
    """The fixed-size header of one fragment, and every size that follows from it."""

    k: int
    n: int
    share: int
    segment_size: int
    length: int
    bundle_id: bytes
    version: int = VERSION

    @property
    def params(self) -> CodingParams:
        return CodingParams(self.k, self.n, self.segment_size)

    @property
    def segment_count(self) -> int:
        return max(1, -(-self.length // self.segment_size))

    def segment_length(self, segment: int) -> int:
        """Plaintext bytes in ``segment``."""
        if segment < self.segment_count - 1:
            return self.segment_size
        return self.length - self.segment_size * (self.segment_count - 1)

    def block_size(self, segment: int) -> int:
        return -(-(self.segment_length(segment) + GCM_TAG_SIZE) // self.k)

    def block_offset(self, segment: int) -> int:
        full = self.block_size(0)
        return HEADER_SIZE + full * segment

    @property
    def trailer_offset(self) -> int:
        last = self.segment_count - 1
        return self.block_offset(last) + self.block_size(last)

    @property
    def trailer_size(self) -> int:
        return HASH_SIZE * (self.segment_count + self.n)

    @property
    def fragment_size(self) -> int:
        return self.trailer_offset + self.trailer_size

    def for_share(self, share: int) -> FragmentHeader:
        return FragmentHeader(
            self.k, self.n, share, self.segment_size, self.length, self.bundle_id, self.version
        )


@dataclass(frozen=True)
class BundleRef:
    """What the owner records to find and check a bundle's fragments (no key inside)."""

    bundle_id: bytes
    params: CodingParams
    length: int
    set_hash: bytes

    @property
    def header(self) -> FragmentHeader:
        """The header every fragment of this bundle must carry, with share 0."""
        p = self.params
        return FragmentHeader(p.k, p.n, 0, p.segment_size, self.length, self.bundle_id)


@dataclass(frozen=True)
class Trailer:
    """The hashes at the end of a fragment: its own block hashes and all share roots."""

    block_hashes: tuple[bytes, ...]
    share_roots: tuple[bytes, ...]


def pack_header(header: FragmentHeader) -> bytes:
    return _HEADER.pack(
        header.version,
        MAGIC,
        header.k,
        header.n,
        header.share,
        header.segment_size,
        header.length,
        header.bundle_id,
    )


def parse_header(data: bytes) -> FragmentHeader:
    """Parse and bound-check a header; every later offset is then safe to compute."""
    if len(data) < 1:
        raise CorruptFragment("empty fragment")
    if data[0] != VERSION:
        raise UnknownVersion("fragment", data[0], [VERSION])
    if len(data) < HEADER_SIZE:
        raise CorruptFragment(f"header is {len(data)} bytes, expected {HEADER_SIZE}")
    version, magic, k, n, share, segment_size, length, bundle_id = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptFragment("bad magic: not a meshpacs fragment")
    if not 1 <= k <= n <= MAX_N:
        raise CorruptFragment(f"impossible coding parameters k={k} n={n}")
    if share >= n:
        raise CorruptFragment(f"share number {share} out of range for n={n}", share)
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise LimitExceeded(f"fragment segment size {segment_size} outside allowed bounds")
    if length > MAX_LENGTH:
        raise LimitExceeded(f"fragment claims a {length}-byte bundle, over {MAX_LENGTH}")
    return FragmentHeader(k, n, share, segment_size, length, bundle_id, version)


def pack_trailer(trailer: Trailer) -> bytes:
    return b"".join(trailer.block_hashes) + b"".join(trailer.share_roots)


def parse_trailer(header: FragmentHeader, data: bytes) -> Trailer:
    if len(data) != header.trailer_size:
        raise CorruptFragment(
            f"trailer is {len(data)} bytes, expected {header.trailer_size}", header.share
        )
    hashes = [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]
    count = header.segment_count
    return Trailer(tuple(hashes[:count]), tuple(hashes[count:]))


def block_hash(bundle_id: bytes, share: int, segment: int, block: bytes | memoryview) -> bytes:
    hasher = blake3.blake3(b"meshpacs/v1/block" + bundle_id + _SEGMENT_REF.pack(share, segment))
    hasher.update(block)
    digest: bytes = hasher.digest()
    return digest


def share_root(bundle_id: bytes, share: int, block_hashes: tuple[bytes, ...]) -> bytes:
    hasher = blake3.blake3(b"meshpacs/v1/share" + bundle_id + _U16.pack(share))
    for digest in block_hashes:
        hasher.update(digest)
    root: bytes = hasher.digest()
    return root


def set_hash(header: FragmentHeader, share_roots: tuple[bytes, ...]) -> bytes:
    """The one hash the owner records: it pins every share of every segment."""
    if len(share_roots) != header.n:
        raise FormatError(f"{len(share_roots)} share roots for n={header.n}")
    common = _COMMON.pack(
        header.version, header.k, header.n, header.segment_size, header.length, header.bundle_id
    )
    hasher = blake3.blake3(b"meshpacs/v1/set" + common)
    for root in share_roots:
        hasher.update(root)
    digest: bytes = hasher.digest()
    return digest


def segment_nonce(segment: int) -> bytes:
    return bytes(4) + segment.to_bytes(8, "big")


def segment_aad(header: FragmentHeader, segment: int) -> bytes:
    return b"meshpacs/v1/segment" + _AAD.pack(
        header.version,
        header.bundle_id,
        segment,
        header.segment_count,
        header.k,
        header.n,
        header.segment_size,
        header.length,
    )
