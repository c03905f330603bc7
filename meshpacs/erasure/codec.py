"""Instances in, fragments out, and back: the bundle codec's front door.

``encode_bundle`` streams instances through the bundle format, encryption and zfec into
n fragment outputs; ``decode_bundle`` takes any fragments, uses k good ones and yields the
instances' exact bytes as events, each instance's SHA-256 checked against the index.
Both keep memory bounded by the segment size, never by the study size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from meshpacs.erasure.bundle import (
    BundleEvent,
    BundleParser,
    BundleStream,
    IndexEntry,
    InstanceChunk,
    InstanceEnd,
    InstanceSource,
)
from meshpacs.erasure.decoder import FragmentSource, SegmentDecoder
from meshpacs.erasure.encoder import EncodedBundle, Writable, encode_stream
from meshpacs.erasure.layout import BundleRef, CodingParams

__all__ = [
    "BundleDecoder",
    "DecodedInstance",
    "decode_bundle",
    "decode_bundle_to_memory",
    "encode_bundle",
]

DecodedInstance = tuple[IndexEntry, bytes]


def encode_bundle(
    instances: Sequence[InstanceSource],
    params: CodingParams,
    outputs: Sequence[Writable],
    *,
    bundle_id: bytes | None = None,
    data_key: bytes | None = None,
) -> EncodedBundle:
    """Pack, encrypt and erasure-code ``instances`` into ``params.n`` fragment outputs."""
    stream = BundleStream(instances)
    return encode_stream(
        stream, stream.length, params, outputs, bundle_id=bundle_id, data_key=data_key
    )


class BundleDecoder:
    """Decodes one bundle into events; ``rejected`` tells which fragments were refused, and why.

    An :class:`InstanceEnd` is only produced once that instance's bytes matched its
    SHA-256, so a consumer writes chunks to a temporary place and keeps the instance only
    on its ``InstanceEnd``. Chunks are views into a reused buffer: consume each at once.
    Raises :class:`~meshpacs.errors.Unrecoverable` as soon as fewer than k good fragments
    remain, at construction or while decoding.
    """

    def __init__(
        self, ref: BundleRef, data_key: bytes, fragments: Sequence[FragmentSource]
    ) -> None:
        self._segments = SegmentDecoder(ref, data_key, fragments)
        self._length = ref.length

    @property
    def rejected(self) -> dict[int, str]:
        return self._segments.rejected

    def events(self) -> Iterator[BundleEvent]:
        parser = BundleParser(self._length)
        for segment in self._segments.segments():
            yield from parser.feed(segment)
        parser.close()


def decode_bundle(
    ref: BundleRef, data_key: bytes, fragments: Sequence[FragmentSource]
) -> Iterator[BundleEvent]:
    """Events of the bundle, from any k good fragments among ``fragments`` (see BundleDecoder)."""
    return BundleDecoder(ref, data_key, fragments).events()


def decode_bundle_to_memory(
    ref: BundleRef, data_key: bytes, fragments: Sequence[FragmentSource]
) -> list[DecodedInstance]:
    """All instances at once: for small bundles, tests and the self-test only."""
    out: list[DecodedInstance] = []
    parts: list[bytes] = []
    for event in decode_bundle(ref, data_key, fragments):
        if isinstance(event, InstanceChunk):
            parts.append(bytes(event.data))
        elif isinstance(event, InstanceEnd):
            out.append((event.entry, b"".join(parts)))
            parts = []
    return out
