"""Decoding and verifying fragments: any k good ones give the plaintext back.

Every fragment is checked before zfec sees any of its blocks: its header must match the
bundle the owner recorded, its size must be exactly what the header implies, its share
roots must hash to the recorded ``set_hash``, its block hashes to its share root, and each
block to its hash as it is read. A fragment that fails any check is rejected with the
reason and replaced by another one; decoding carries on as long as k distinct good shares
remain, and otherwise raises :class:`~meshpacs.errors.Unrecoverable` naming what was
missing and what was rejected. Fragments may come in any order, duplicated, corrupted or
from other bundles.

Memory: k block buffers, one ciphertext and one plaintext segment, whatever the bundle size.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import zfec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshpacs.erasure.layout import (
    GCM_TAG_SIZE,
    HEADER_SIZE,
    BundleRef,
    FragmentHeader,
    Trailer,
    block_hash,
    parse_header,
    parse_trailer,
    segment_aad,
    segment_nonce,
    set_hash,
    share_root,
)
from meshpacs.errors import CorruptFragment, FormatError, LimitExceeded, Unrecoverable, WrongKey

__all__ = [
    "FragmentSource",
    "SegmentDecoder",
    "ShareSet",
    "VerifiedFragment",
    "verify_fragment",
]


class FragmentSource(Protocol):
    """A fragment to read: a seekable binary file, or anything that acts like one."""

    def seek(self, offset: int, whence: int = ..., /) -> int: ...

    def read(self, size: int = ..., /) -> bytes: ...

    def readinto(self, buffer: memoryview, /) -> int: ...


@dataclass(frozen=True)
class VerifiedFragment:
    """A fragment whose every block was checked; ``set_hash`` is what it claims to belong to."""

    header: FragmentHeader
    set_hash: bytes


@dataclass
class _Candidate:
    position: int  # index in the caller's list, to name it in reports
    source: FragmentSource
    header: FragmentHeader
    trailer: Trailer


def _read_header(source: FragmentSource) -> FragmentHeader:
    source.seek(0)
    return parse_header(source.read(HEADER_SIZE))


def _read_trailer(source: FragmentSource, header: FragmentHeader) -> tuple[Trailer, bytes]:
    """The trailer and the set hash it claims, with the fragment's size and root checked."""
    size = source.seek(0, io.SEEK_END)
    if size != header.fragment_size:
        raise CorruptFragment(
            f"fragment is {size} bytes, its header implies {header.fragment_size}", header.share
        )
    source.seek(header.trailer_offset)
    trailer = parse_trailer(header, source.read(header.trailer_size))
    own_root = share_root(header.bundle_id, header.share, trailer.block_hashes)
    if own_root != trailer.share_roots[header.share]:
        raise CorruptFragment("block hashes do not match the share root", header.share)
    return trailer, set_hash(header, trailer.share_roots)


def _read_block(
    source: FragmentSource, header: FragmentHeader, segment: int, buffer: memoryview
) -> memoryview:
    size = header.block_size(segment)
    source.seek(header.block_offset(segment))
    view = buffer[:size]
    got = 0
    while got < size:
        n = source.readinto(view[got:])
        if not n:
            raise CorruptFragment(f"segment {segment} block is cut short", header.share)
        got += n
    return view


def verify_fragment(
    source: FragmentSource, expected_set_hash: bytes | None = None
) -> VerifiedFragment:
    """Check a whole fragment on its own, as a holder does on receipt or an auditor later.

    Without ``expected_set_hash`` this proves the fragment is internally consistent; with
    the hash the owner recorded, it proves the fragment is exactly the one encoded.
    """
    header = _read_header(source)
    trailer, claimed = _read_trailer(source, header)
    if expected_set_hash is not None and claimed != expected_set_hash:
        raise CorruptFragment("share roots do not match the recorded set hash", header.share)
    buffer = memoryview(bytearray(header.block_size(0)))
    for segment in range(header.segment_count):
        block = _read_block(source, header, segment, buffer)
        if (
            block_hash(header.bundle_id, header.share, segment, block)
            != trailer.block_hashes[segment]
        ):
            raise CorruptFragment(f"segment {segment} block does not match its hash", header.share)
    return VerifiedFragment(header, claimed)


class ShareSet:
    """k verified shares of one bundle, read segment by segment, any failing one replaced.

    The part of decoding that needs no key: the decoder decrypts what it yields, and
    repair re-encodes it into the shares that were lost.
    """

    def __init__(self, ref: BundleRef, fragments: Sequence[FragmentSource]) -> None:
        self.ref = ref
        self.header = ref.header
        self.rejected: dict[int, str] = {}
        self._offered: set[int] = set()
        self._candidates = [c for i, f in enumerate(fragments) if (c := self._admit(i, f))]
        # Primaries first: with all k primaries zfec decode is a copy.
        self._candidates.sort(key=lambda c: (c.header.share, c.position))
        self._active: list[_Candidate] = []
        self._zfec = zfec.Decoder(self.header.k, self.header.n)
        block = self.header.block_size(0)
        self._blocks = [memoryview(bytearray(block)) for _ in range(self.header.k)]
        self._fill_active()

    @property
    def share_roots(self) -> tuple[bytes, ...]:
        """Every share's root, as the recorded set hash pins them."""
        return self._active[0].trailer.share_roots

    def primaries(self, segment: int) -> Sequence[memoryview | bytes]:
        """The k primary blocks of ``segment``: the ciphertext, cut in k, zero padded.

        Valid until the next call.
        """
        blocks = self._gather(segment)
        shares = tuple(c.header.share for c in self._active)
        if shares == tuple(range(self.header.k)):
            return blocks
        decoded: Sequence[memoryview | bytes] = self._zfec.decode(tuple(blocks), shares)
        return decoded

    def _admit(self, position: int, source: FragmentSource) -> _Candidate | None:
        try:
            header = _read_header(source)
            self._offered.add(header.share)
            # Compared with the recorded bundle before the trailer is read, so a hostile
            # header cannot make us read a trailer sized by its own claims.
            if header != self.header.for_share(header.share):
                raise CorruptFragment("belongs to another bundle or encoding", header.share)
            trailer, claimed = _read_trailer(source, header)
            if claimed != self.ref.set_hash:
                raise CorruptFragment(
                    "share roots do not match the recorded set hash", header.share
                )
        except (FormatError, LimitExceeded) as exc:
            self.rejected[position] = str(exc)
            return None
        except OSError as exc:
            self.rejected[position] = f"unreadable: {exc.strerror or exc}"
            return None
        return _Candidate(position, source, header, trailer)

    def _fill_active(self) -> None:
        shares = {c.header.share for c in self._active}
        for candidate in self._candidates:
            if len(self._active) == self.header.k:
                return
            if candidate.header.share not in shares and candidate not in self._active:
                self._active.append(candidate)
                shares.add(candidate.header.share)
        if len(self._active) < self.header.k:
            raise Unrecoverable(
                k=self.header.k,
                good=len(self._active),
                missing=set(range(self.header.n)) - self._offered,
                rejected=self.rejected,
            )

    def _reject(self, candidate: _Candidate, reason: str) -> None:
        self.rejected[candidate.position] = f"fragment {candidate.header.share} rejected: {reason}"
        self._active.remove(candidate)
        self._candidates.remove(candidate)
        self._fill_active()

    def _gather(self, segment: int) -> list[memoryview]:
        """k verified blocks of ``segment``, replacing any fragment that fails."""
        while True:
            blocks = []
            for slot, candidate in enumerate(self._active):
                try:
                    block = _read_block(
                        candidate.source, candidate.header, segment, self._blocks[slot]
                    )
                except (CorruptFragment, OSError) as exc:
                    self._reject(candidate, getattr(exc, "reason", None) or str(exc))
                    break
                expected = candidate.trailer.block_hashes[segment]
                if (
                    block_hash(self.ref.bundle_id, candidate.header.share, segment, block)
                    != expected
                ):
                    self._reject(candidate, f"segment {segment} block does not match its hash")
                    break
                blocks.append(block)
            else:
                return blocks


class SegmentDecoder:
    """Yields a bundle's plaintext segments from any k good fragments among those given."""

    def __init__(
        self, ref: BundleRef, data_key: bytes, fragments: Sequence[FragmentSource]
    ) -> None:
        self.ref = ref
        self.header = ref.header
        self._shares = ShareSet(ref, fragments)
        self._aead = AESGCM(data_key)
        block = self.header.block_size(0)
        self._cipher = memoryview(bytearray(block * self.header.k))
        self._plain = memoryview(bytearray(self.header.segment_length(0)))

    @property
    def rejected(self) -> dict[int, str]:
        """Fragments refused so far, by their position in the caller's list, with why."""
        return self._shares.rejected

    def segments(self) -> Iterator[memoryview]:
        """Each segment's plaintext in order; a view valid until the next one is produced."""
        for segment in range(self.header.segment_count):
            yield self._decode_segment(segment)

    def _decode_segment(self, segment: int) -> memoryview:
        primaries = self._shares.primaries(segment)
        size = self.header.block_size(segment)
        for i, block in enumerate(primaries):
            self._cipher[i * size : (i + 1) * size] = block
        length = self.header.segment_length(segment)
        plain = self._plain[:length]
        try:
            self._aead.decrypt_into(
                segment_nonce(segment),
                self._cipher[: length + GCM_TAG_SIZE],
                segment_aad(self.header, segment),
                plain,
            )
        except InvalidTag:
            # The blocks matched the recorded set hash, so the ciphertext is authentic:
            # only the key can be wrong.
            raise WrongKey(
                f"segment {segment} does not decrypt: wrong data key for this bundle"
            ) from None
        return plain
