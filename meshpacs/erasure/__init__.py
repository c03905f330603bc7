"""The bundle codec: instances in, k-of-n encrypted fragments out, exact bytes back.

Data flows one way through the modules:

- :mod:`~meshpacs.erasure.bundle`: instances and their index as one plaintext stream.
- :mod:`~meshpacs.erasure.layout`: the fragment's byte layout and the hashes that check it.
- :mod:`~meshpacs.erasure.encoder`: segment, encrypt (AES-256-GCM), zfec-encode, hash.
- :mod:`~meshpacs.erasure.decoder`: verify fragments, pick k good ones, decode, decrypt.
- :mod:`~meshpacs.erasure.regenerate`: lost shares rebuilt from k good ones, keyless (repair).
- :mod:`~meshpacs.erasure.codec`: the two front-door functions tying those together.
- :mod:`~meshpacs.erasure.ids`: keyed, opaque fragment IDs.
"""

from meshpacs.erasure.bundle import (
    BundleIndex,
    IndexEntry,
    InstanceChunk,
    InstanceEnd,
    InstanceSource,
    bundle_length,
)
from meshpacs.erasure.codec import (
    BundleDecoder,
    decode_bundle,
    decode_bundle_to_memory,
    encode_bundle,
)
from meshpacs.erasure.decoder import FragmentSource, SegmentDecoder, ShareSet, verify_fragment
from meshpacs.erasure.encoder import EncodedBundle, SegmentEncoder, Writable, encode_stream
from meshpacs.erasure.ids import fragment_id
from meshpacs.erasure.layout import BundleRef, CodingParams, FragmentHeader
from meshpacs.erasure.regenerate import regenerate_shares

__all__ = [
    "BundleDecoder",
    "BundleIndex",
    "BundleRef",
    "CodingParams",
    "EncodedBundle",
    "FragmentHeader",
    "FragmentSource",
    "IndexEntry",
    "InstanceChunk",
    "InstanceEnd",
    "InstanceSource",
    "SegmentDecoder",
    "SegmentEncoder",
    "ShareSet",
    "Writable",
    "bundle_length",
    "decode_bundle",
    "decode_bundle_to_memory",
    "encode_bundle",
    "encode_stream",
    "fragment_id",
    "regenerate_shares",
    "verify_fragment",
]
