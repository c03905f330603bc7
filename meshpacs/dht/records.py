"""Signed DHT records: the only values meshpacs puts into the DHT.

Anyone can STORE anything under any key in a Kademlia DHT, so a value is worth nothing until
its signature, its author's federation certificate and its claims have been checked. Every
record therefore carries its author's certificate and an Ed25519 signature, and
:func:`verify_record` is run on every write into storage and on every value a reader gets
back. Records carry no patient data: site IDs, host names, ports, an AE title, capacity,
and fragment IDs, which are opaque HMACs (``meshpacs.erasure.ids``).

Envelope, format version 1 (integers big-endian)::

    offset      size  field
    0           1     version         = 1; any other value is refused
    1           1     kind            1 node record, 2 provider record
    2           2     cert_length C   1..MAX_CERT_SIZE
    4           C     author_cert     the author's X.509 certificate, DER
    4+C         2     payload_length P  1..MAX_PAYLOAD_SIZE
    6+C         P     payload         per kind, below
    6+C+P       64    signature       Ed25519 over SIGNATURE_LABEL + bytes [0, 6+C+P)

Node record payload (kind 1)::

    1   site_id length S (1..64)      S   site_id (the federation's rule, [a-z0-9-])
    32  cert_fingerprint              SHA-256 of the author's certificate DER
    1   transport_host length (1..253)    transport_host, [A-Za-z0-9.:-]
    2   transport_port (1..65535)
    1   dicom_host length (1..253)        dicom_host, [A-Za-z0-9.:-]
    2   dicom_port (1..65535)
    1   dicom_ae_title length (1..16)     dicom_ae_title, printable ASCII
    8   capacity_bytes    8   seq    8   expires_at (Unix seconds)   all < 2**63

Provider record payload (kind 2)::

    32  fragment_id (raw; its text form is 64 lower-case hex)
    1   holder_site_id length S (1..64)   S   holder_site_id
    8   seq    8   expires_at (Unix seconds)   both < 2**63

Every length is checked against its bound and against the bytes left before anything is
sliced, and the envelope must end exactly after the signature. The largest possible record
is :data:`MAX_RECORD_SIZE` (3,142 bytes), well under the 8,137-byte value the ``kademlia``
STORE RPC can carry; :func:`sign_record` checks it anyway. 63-bit integers fit SQLite's
signed INTEGER column without a second encoding.

**Why the signature covers a label.** The label (``b"meshpacs/v1/dht-record\\n"``) makes a
record signature useless anywhere else the same node key signs (TLS, other formats), and
the other way round. The label has a fixed length, so label + envelope is unambiguous.

**Keys.** A record's DHT key follows from its content, never from the writer's say-so:
``node_key(site_id)`` for node records, ``provider_key(fragment_id)`` for provider records.
Deterministic keys let any member find a site's node record knowing only its site ID, and
a fragment's holders knowing only the fragment ID; storage refuses a record stored under
any other key, so a valid record cannot be replayed onto a key it does not belong to. Each
key is ``SHA-256(label + name)[:20]`` (20 bytes is the ``kademlia`` keyspace) with one
label per kind, so a site ID and a fragment ID can never land on the same key, nor on a
node ID (:func:`meshpacs.keys.identity.node_id_for` uses its own label).
:func:`placement_key` is the one definition of where a bundle's fragments go: the point
of the keyspace whose closest members (``DhtNode.closest_sites``) are asked first.

**Authors.** Membership is the federation's to decide: :func:`verify_record` asks a
:class:`~meshpacs.dht.identity.MemberVerifier` (the node's
:class:`~meshpacs.federation.membership.Federation`) about the author's certificate, so an
expired or revoked certificate, or one from another CA, makes every record it signed
worthless. A node record must name the SHA-256 of that certificate's DER, as the
federation computed it (``Member.fingerprint``): the fingerprint TLS pinning compares.

**Freshness.** A record lives at most :data:`MAX_RECORD_LIFETIME` (7 days; authors
republish before it runs out) plus :data:`CLOCK_SKEW` for a peer whose clock runs ahead.
``seq`` orders an author's records for one key: storage and readers keep the highest.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from enum import StrEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from meshpacs.dht.identity import MemberVerifier, Signer
from meshpacs.errors import FederationError, InvalidRecord, LimitExceeded, NotAMember
from meshpacs.federation.certs import Member
from meshpacs.federation.names import SITE_ID_MAX_LENGTH, site_id_problem
from meshpacs.keys.identity import NODE_ID_SIZE

__all__ = [
    "CLOCK_SKEW",
    "FINGERPRINT_SIZE",
    "KADEMLIA_VALUE_LIMIT",
    "KIND_NODE",
    "KIND_PROVIDER",
    "MAX_CERT_SIZE",
    "MAX_PAYLOAD_SIZE",
    "MAX_RECORD_LIFETIME",
    "MAX_RECORD_SIZE",
    "RECORD_VERSION",
    "SIGNATURE_LABEL",
    "SIGNATURE_SIZE",
    "DhtRecord",
    "NodeRecord",
    "ProviderRecord",
    "RejectReason",
    "SignedRecord",
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

RECORD_VERSION = 1
KIND_NODE = 1
KIND_PROVIDER = 2

# An Ed25519 leaf certificate with a CN and a handful of extensions is 300-600 bytes.
MAX_CERT_SIZE = 2048
MAX_PAYLOAD_SIZE = 1024
SIGNATURE_SIZE = 64
FINGERPRINT_SIZE = 32
_HEADER = struct.Struct(">BBH")
_PAYLOAD_LENGTH = struct.Struct(">H")
MAX_RECORD_SIZE = _HEADER.size + MAX_CERT_SIZE + _PAYLOAD_LENGTH.size + MAX_PAYLOAD_SIZE + 64
# Measured: the largest bytes value a kademlia 2.2.3 STORE RPC carries (rpcudp's 8 KB cap).
KADEMLIA_VALUE_LIMIT = 8137

MAX_RECORD_LIFETIME = 7 * 24 * 3600
CLOCK_SKEW = 600

SIGNATURE_LABEL = b"meshpacs/v1/dht-record\n"
_NODE_KEY_LABEL = b"meshpacs/v1/dht-key/node\n"
_PROVIDER_KEY_LABEL = b"meshpacs/v1/dht-key/provider\n"
_PLACEMENT_KEY_LABEL = b"meshpacs/v1/dht-key/placement\n"

_HOST_MAX = 253  # a DNS name's longest text form
_AE_TITLE_MAX = 16  # PS3.5 VR AE
_FRAGMENT_ID_SIZE = 32
_INT63 = 2**63
_HOST = re.compile(r"[A-Za-z0-9.:-]{1,253}")
_FRAGMENT_HEX = re.compile(r"[0-9a-f]{64}")


class RejectReason(StrEnum):
    """Why a record was ignored: fixed phrases, so rejections can be counted by cause."""

    UNKNOWN_VERSION = "unknown version"
    MALFORMED = "malformed"
    TOO_LARGE = "too large"
    NOT_A_MEMBER = "author not a member"
    MEMBERSHIP_UNKNOWN = "membership cannot be checked"
    BAD_SIGNATURE = "bad signature"
    FINGERPRINT_MISMATCH = "certificate fingerprint is not the author's"
    SITE_NOT_AUTHOR = "site ID is not the author's"
    EXPIRED = "expired"
    TOO_FAR_AHEAD = "expires too far in the future"


@dataclass(frozen=True)
class NodeRecord:
    """Where a member site's node can be reached, and how much room it offers."""

    site_id: str
    cert_fingerprint: bytes
    transport_host: str
    transport_port: int
    dicom_host: str
    dicom_port: int
    dicom_ae_title: str
    capacity_bytes: int
    seq: int
    expires_at: int

    def __post_init__(self) -> None:
        _check_site_id(self.site_id)
        if len(self.cert_fingerprint) != FINGERPRINT_SIZE:
            raise ValueError(f"cert_fingerprint must be {FINGERPRINT_SIZE} bytes")
        for host in (self.transport_host, self.dicom_host):
            if not _HOST.fullmatch(host):
                raise ValueError("host must be 1-253 characters of A-Z a-z 0-9 . : -")
        for port in (self.transport_port, self.dicom_port):
            if not 1 <= port <= 65535:
                raise ValueError("port must be 1..65535")
        title = self.dicom_ae_title
        if not 1 <= len(title) <= _AE_TITLE_MAX or title != title.strip(" "):
            raise ValueError("AE title must be 1-16 characters without spaces at the ends")
        if any(not " " <= c <= "~" for c in title) or "\\" in title:
            raise ValueError("AE title must be printable ASCII without a backslash")
        _check_int63(self.capacity_bytes, self.seq, self.expires_at)

    @property
    def author_site_id(self) -> str:
        return self.site_id


@dataclass(frozen=True)
class ProviderRecord:
    """Says that ``holder_site_id`` holds the fragment ``fragment_id``."""

    fragment_id: str
    holder_site_id: str
    seq: int
    expires_at: int

    def __post_init__(self) -> None:
        if not _FRAGMENT_HEX.fullmatch(self.fragment_id):
            raise ValueError("fragment_id must be 64 lower-case hex characters")
        _check_site_id(self.holder_site_id)
        _check_int63(self.seq, self.expires_at)

    @property
    def author_site_id(self) -> str:
        return self.holder_site_id


DhtRecord = NodeRecord | ProviderRecord


@dataclass(frozen=True)
class SignedRecord:
    """A parsed envelope whose signature and author have not been checked yet."""

    record: DhtRecord
    cert_der: bytes
    signed_part: bytes
    signature: bytes


@dataclass(frozen=True)
class VerifiedRecord:
    """A record whose signature, author and lifetime were checked at verification time."""

    record: DhtRecord
    author: Member
    key: bytes
    raw: bytes

    @property
    def seq(self) -> int:
        return self.record.seq

    @property
    def expires_at(self) -> int:
        return self.record.expires_at


# --- keys ---------------------------------------------------------------------------------


def node_key(site_id: str) -> bytes:
    """The DHT key of a site's node record."""
    _check_site_id(site_id)
    return _key(_NODE_KEY_LABEL, site_id.encode("ascii"))


def provider_key(fragment_id: str) -> bytes:
    """The DHT key of a fragment's provider records."""
    if not _FRAGMENT_HEX.fullmatch(fragment_id):
        raise ValueError("fragment_id must be 64 lower-case hex characters")
    return _key(_PROVIDER_KEY_LABEL, bytes.fromhex(fragment_id))


def placement_key(bundle_id: bytes) -> bytes:
    """The keyspace point whose closest members hold a bundle's fragments.

    ``SHA-256(b"meshpacs/v1/dht-key/placement\n" + bundle_id)[:20]``; the one definition
    of placement for all of meshpacs (``DhtNode.closest_sites`` takes it).
    """
    if not bundle_id:
        raise ValueError("a placement key needs a bundle ID")
    return _key(_PLACEMENT_KEY_LABEL, bundle_id)


def record_key(record: DhtRecord) -> bytes:
    """The one DHT key a record may be stored under."""
    if isinstance(record, NodeRecord):
        return node_key(record.site_id)
    return provider_key(record.fragment_id)


def cert_fingerprint(cert_der: bytes) -> bytes:
    """SHA-256 of a certificate's DER: what node records and TLS pinning compare.

    The raw bytes of the federation's ``Member.fingerprint`` (which is hex) for the same
    certificate; an author puts it in its node record.
    """
    return hashlib.sha256(cert_der).digest()


def _key(label: bytes, name: bytes) -> bytes:
    return hashlib.sha256(label + name).digest()[:NODE_ID_SIZE]


# --- encoding -----------------------------------------------------------------------------


def sign_record(record: DhtRecord, signer: Signer) -> bytes:
    """The signed envelope of ``record`` by ``signer``; ready to publish."""
    cert = signer.cert_der
    if not 1 <= len(cert) <= MAX_CERT_SIZE:
        raise LimitExceeded(f"author certificate is {len(cert)} bytes; at most {MAX_CERT_SIZE}")
    kind = KIND_NODE if isinstance(record, NodeRecord) else KIND_PROVIDER
    payload = _encode_payload(record)
    signed_part = (
        _HEADER.pack(RECORD_VERSION, kind, len(cert))
        + cert
        + _PAYLOAD_LENGTH.pack(len(payload))
        + payload
    )
    raw = signed_part + signer.sign(SIGNATURE_LABEL + signed_part)
    # Cannot trip while the field bounds hold (MAX_RECORD_SIZE is under half of
    # KADEMLIA_VALUE_LIMIT, a test checks it); kept so a future field cannot silently
    # produce a value the DHT's STORE RPC refuses.
    if len(raw) > MAX_RECORD_SIZE:
        raise LimitExceeded(f"DHT record is {len(raw)} bytes; at most {MAX_RECORD_SIZE}")
    return raw


def _encode_payload(record: DhtRecord) -> bytes:
    if isinstance(record, NodeRecord):
        return b"".join(
            (
                _short(record.site_id),
                record.cert_fingerprint,
                _short(record.transport_host),
                record.transport_port.to_bytes(2, "big"),
                _short(record.dicom_host),
                record.dicom_port.to_bytes(2, "big"),
                _short(record.dicom_ae_title),
                struct.pack(">QQQ", record.capacity_bytes, record.seq, record.expires_at),
            )
        )
    return b"".join(
        (
            bytes.fromhex(record.fragment_id),
            _short(record.holder_site_id),
            struct.pack(">QQ", record.seq, record.expires_at),
        )
    )


def _short(text: str) -> bytes:
    data = text.encode("ascii")
    return bytes([len(data)]) + data


# --- decoding -----------------------------------------------------------------------------


class _Malformed(Exception):
    """Internal: the bytes do not parse; surfaces as ``InvalidRecord("malformed")``."""


class _Reader:
    """A cursor that refuses to read past the end: every slice is bounds-checked first."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, size: int) -> bytes:
        if size > len(self._data) - self._at:
            raise _Malformed
        chunk = self._data[self._at : self._at + size]
        self._at += size
        return chunk

    @property
    def position(self) -> int:
        return self._at

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def short_text(self, limit: int) -> str:
        length = self.uint(1)
        if not 1 <= length <= limit:
            raise _Malformed
        try:
            return self.take(length).decode("ascii")
        except UnicodeDecodeError:
            raise _Malformed from None

    def end(self) -> None:
        if self._at != len(self._data):
            raise _Malformed


def decode_record(raw: bytes) -> SignedRecord:
    """Parse an envelope without trusting it; ``InvalidRecord`` if it does not parse."""
    if not isinstance(raw, bytes):
        raise InvalidRecord(RejectReason.MALFORMED)
    if len(raw) > MAX_RECORD_SIZE:
        raise InvalidRecord(RejectReason.TOO_LARGE)
    if raw[:1] != bytes([RECORD_VERSION]):
        raise InvalidRecord(RejectReason.MALFORMED if not raw else RejectReason.UNKNOWN_VERSION)
    try:
        return _decode(raw)
    except (_Malformed, ValueError):
        raise InvalidRecord(RejectReason.MALFORMED) from None


def _decode(raw: bytes) -> SignedRecord:
    reader = _Reader(raw)
    _version, kind, cert_length = _HEADER.unpack(reader.take(_HEADER.size))
    if kind not in (KIND_NODE, KIND_PROVIDER) or not 1 <= cert_length <= MAX_CERT_SIZE:
        raise _Malformed
    cert = reader.take(cert_length)
    payload_length = reader.uint(_PAYLOAD_LENGTH.size)
    if not 1 <= payload_length <= MAX_PAYLOAD_SIZE:
        raise _Malformed
    payload = reader.take(payload_length)
    signed_end = reader.position
    signature = reader.take(SIGNATURE_SIZE)
    reader.end()
    record = _decode_node(payload) if kind == KIND_NODE else _decode_provider(payload)
    return SignedRecord(record, cert, raw[:signed_end], signature)


def _decode_node(payload: bytes) -> NodeRecord:
    reader = _Reader(payload)
    site_id = reader.short_text(SITE_ID_MAX_LENGTH)
    fingerprint = reader.take(FINGERPRINT_SIZE)
    transport_host = reader.short_text(_HOST_MAX)
    transport_port = reader.uint(2)
    dicom_host = reader.short_text(_HOST_MAX)
    dicom_port = reader.uint(2)
    ae_title = reader.short_text(_AE_TITLE_MAX)
    capacity, seq, expires_at = struct.unpack(">QQQ", reader.take(24))
    reader.end()
    # The dataclass checks every field's form (and raises ValueError, turned into malformed).
    return NodeRecord(
        site_id,
        fingerprint,
        transport_host,
        transport_port,
        dicom_host,
        dicom_port,
        ae_title,
        capacity,
        seq,
        expires_at,
    )


def _decode_provider(payload: bytes) -> ProviderRecord:
    reader = _Reader(payload)
    fragment_id = reader.take(_FRAGMENT_ID_SIZE).hex()
    holder = reader.short_text(SITE_ID_MAX_LENGTH)
    seq, expires_at = struct.unpack(">QQ", reader.take(16))
    reader.end()
    return ProviderRecord(fragment_id, holder, seq, expires_at)


# --- verification -------------------------------------------------------------------------


def verify_record(raw: bytes, verifier: MemberVerifier, now: float) -> VerifiedRecord:
    """Check everything a record claims; ``InvalidRecord(reason)`` on the first failure.

    Order: parse (cheap, bounded), then membership and signature (the costly checks, done
    once the bytes are known to be well formed), then the claims the signature vouches for.
    """
    signed = decode_record(raw)
    try:
        author = verifier.verify(signed.cert_der, now)
    except NotAMember:
        raise InvalidRecord(RejectReason.NOT_A_MEMBER) from None
    except FederationError:
        # Our own CA certificate or revocation list is stale or unusable: fail closed,
        # under a reason of its own so the log points at the federation files, not peers.
        raise InvalidRecord(RejectReason.MEMBERSHIP_UNKNOWN) from None
    try:
        public_key = Ed25519PublicKey.from_public_bytes(author.public_key)
        public_key.verify(signed.signature, SIGNATURE_LABEL + signed.signed_part)
    except InvalidSignature:
        raise InvalidRecord(RejectReason.BAD_SIGNATURE) from None
    record = signed.record
    if record.author_site_id != author.site_id:
        raise InvalidRecord(RejectReason.SITE_NOT_AUTHOR)
    if isinstance(record, NodeRecord) and record.cert_fingerprint.hex() != author.fingerprint:
        raise InvalidRecord(RejectReason.FINGERPRINT_MISMATCH)
    if record.expires_at <= now:
        raise InvalidRecord(RejectReason.EXPIRED)
    if record.expires_at > now + MAX_RECORD_LIFETIME + CLOCK_SKEW:
        raise InvalidRecord(RejectReason.TOO_FAR_AHEAD)
    return VerifiedRecord(record, author, record_key(record), raw)


# --- field checks -------------------------------------------------------------------------


def _check_site_id(site_id: str) -> None:
    problem = site_id_problem(site_id)
    if problem is not None:
        raise ValueError(f"site ID {problem}")


def _check_int63(*values: int) -> None:
    if any(not 0 <= value < _INT63 for value in values):
        raise ValueError("capacity, seq and expires_at must be 0 <= value < 2**63")
