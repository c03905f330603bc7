"""Encoding: a plaintext stream in, n fragments out, one segment in memory at a time.

:class:`SegmentEncoder` is the pure core: it turns one segment into n verified-able blocks
and, at the end, the n trailers. :func:`encode_stream` drives it over a readable stream
and n writable outputs; nothing here opens a file or a socket.

The data key is fresh for every bundle (``secrets``), never derived from the content:
convergent encryption would let anyone holding a guessed study confirm it (Tahoe-LAFS
``docs/convergence-secret.rst``), and DICOM headers are mostly guessable.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import zfec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshpacs.erasure.layout import (
    BUNDLE_ID_SIZE,
    GCM_TAG_SIZE,
    BundleRef,
    CodingParams,
    FragmentHeader,
    Trailer,
    block_hash,
    pack_header,
    pack_trailer,
    segment_aad,
    segment_nonce,
    set_hash,
    share_root,
)
from meshpacs.errors import InputChanged

__all__ = ["EncodedBundle", "Readable", "SegmentEncoder", "Writable", "encode_stream"]

DATA_KEY_SIZE = 32


class Readable(Protocol):
    def readinto(self, buffer: memoryview) -> int: ...


class Writable(Protocol):
    def write(self, data: bytes | memoryview, /) -> int: ...


@dataclass(frozen=True)
class EncodedBundle:
    """What the owner must record to find, verify and decrypt the bundle later.

    ``data_key`` is secret: the catalog keeps it only wrapped by the site's key-wrap key.
    ``set_hash`` pins every block of every fragment.
    """

    ref: BundleRef
    share_roots: tuple[bytes, ...]
    data_key: bytes = field(repr=False)


class SegmentEncoder:
    """Encrypts and erasure-codes one bundle, segment by segment, in order."""

    def __init__(
        self,
        params: CodingParams,
        length: int,
        *,
        bundle_id: bytes | None = None,
        data_key: bytes | None = None,
    ) -> None:
        self.bundle_id = bundle_id or secrets.token_bytes(BUNDLE_ID_SIZE)
        self.data_key = data_key or secrets.token_bytes(DATA_KEY_SIZE)
        if len(self.bundle_id) != BUNDLE_ID_SIZE or len(self.data_key) != DATA_KEY_SIZE:
            raise ValueError("bundle id must be 16 bytes and data key 32 bytes")
        self.header = FragmentHeader(
            params.k, params.n, 0, params.segment_size, length, self.bundle_id
        )
        self._aead = AESGCM(self.data_key)
        self._zfec = zfec.Encoder(params.k, params.n)
        self._next_segment = 0
        self._hashes: list[list[bytes]] = [[] for _ in range(params.n)]
        full = self.header.block_size(0) * params.k
        self._cipher = bytearray(full)

    def headers(self) -> list[bytes]:
        """The header of each fragment, to be written before its blocks."""
        return [pack_header(self.header.for_share(i)) for i in range(self.header.n)]

    def encode_segment(self, plaintext: memoryview) -> list[memoryview | bytes]:
        """Blocks 0..n-1 of the next segment; valid until the next call."""
        h = self.header
        segment = self._next_segment
        if segment >= h.segment_count:
            raise InputChanged("more segments than the declared bundle length allows")
        if len(plaintext) != h.segment_length(segment):
            raise InputChanged(f"segment {segment} has {len(plaintext)} bytes, expected more")
        block = h.block_size(segment)
        cipher = memoryview(self._cipher)[: block * h.k]
        written = len(plaintext) + GCM_TAG_SIZE
        self._aead.encrypt_into(
            segment_nonce(segment), plaintext, segment_aad(h, segment), cipher[:written]
        )
        cipher[written:] = bytes(len(cipher) - written)  # zfec needs equal blocks: zero pad
        primaries = tuple(cipher[i * block : (i + 1) * block] for i in range(h.k))
        blocks: list[memoryview | bytes] = list(self._zfec.encode(primaries))
        for share, data in enumerate(blocks):
            self._hashes[share].append(block_hash(self.bundle_id, share, segment, data))
        self._next_segment += 1
        return blocks

    def finish(self) -> tuple[list[bytes], EncodedBundle]:
        """The trailer of each fragment, and the record the owner keeps."""
        h = self.header
        if self._next_segment != h.segment_count:
            raise InputChanged(
                f"bundle stream ended after {self._next_segment} of {h.segment_count} segments"
            )
        hashes = [tuple(share_hashes) for share_hashes in self._hashes]
        roots = tuple(share_root(self.bundle_id, i, hashes[i]) for i in range(h.n))
        trailers = [pack_trailer(Trailer(hashes[i], roots)) for i in range(h.n)]
        record = EncodedBundle(
            ref=BundleRef(self.bundle_id, h.params, h.length, set_hash(h, roots)),
            share_roots=roots,
            data_key=self.data_key,
        )
        return trailers, record


def encode_stream(
    source: Readable,
    length: int,
    params: CodingParams,
    outputs: Sequence[Writable],
    *,
    bundle_id: bytes | None = None,
    data_key: bytes | None = None,
) -> EncodedBundle:
    """Encode ``length`` bytes read from ``source`` into ``params.n`` fragment outputs.

    Memory stays near ``segment_size * (2 + n/k)`` whatever ``length`` is.
    """
    if len(outputs) != params.n:
        raise ValueError(f"need {params.n} outputs, got {len(outputs)}")
    encoder = SegmentEncoder(params, length, bundle_id=bundle_id, data_key=data_key)
    for output, header in zip(outputs, encoder.headers(), strict=True):
        output.write(header)
    buffer = memoryview(bytearray(params.segment_size))
    for segment in range(encoder.header.segment_count):
        want = encoder.header.segment_length(segment)
        got = _read_exactly(source, buffer[:want])
        if got != want:
            raise InputChanged(f"bundle stream ended {want - got} bytes early")
        for output, block in zip(outputs, encoder.encode_segment(buffer[:want]), strict=True):
            output.write(block)
    if source.readinto(memoryview(bytearray(1))):
        raise InputChanged("bundle stream is longer than its declared length")
    trailers, record = encoder.finish()
    for output, trailer in zip(outputs, trailers, strict=True):
        output.write(trailer)
    return record


def _read_exactly(source: Readable, buffer: memoryview) -> int:
    """Raw files may return short reads; keep going until full or end of stream."""
    filled = 0
    while filled < len(buffer):
        got = source.readinto(buffer[filled:])
        if not got:
            break
        filled += got
    return filled
