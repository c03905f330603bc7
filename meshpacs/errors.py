"""The one exception tree of meshpacs.

Every error the library raises on purpose is a ``MeshError``, so a daemon can catch one
type at its edges and turn it into a DICOM status, a CLI message or a log line. Messages
never carry PHI (patient names, IDs, UIDs, dates) nor key material: they name fragments by
share number, instances by their position in a bundle, and recovery-phrase groups by
their position.

::

    MeshError
    ├── KeyMaterialError            keys that are malformed or do not fit
    │   ├── PhraseError             a recovery phrase that does not check (names the groups)
    │   ├── ShamirError             escrow shares that cannot be combined
    │   └── WrongKey                a key failed to authenticate (unwrap or decrypt)
    ├── FormatError                 bytes that do not parse as the format they claim
    │   ├── UnknownVersion          a version byte this reader does not know
    │   ├── CorruptFragment         one fragment failed a check (``reason``, ``share``)
    │   ├── CorruptBundle           a decrypted bundle whose index or contents do not add up
    │   └── TrailBroken             an audit trail changed, cut or forged (``entry``, ``reason``)
    ├── LimitExceeded               a length or count over a named bound, refused before allocating
    │   └── QuotaExceeded           a partner's fragments would exceed the room given to it
    ├── InputChanged                an instance did not match the size or digest declared for it
    ├── ConfigError                 a config file, site directory or key file the node cannot use
    ├── Unrecoverable               fewer than k good fragments (``missing``, ``rejected``)
    ├── FederationError             the federation CA, a certificate or the CRL is unusable
    │   └── NotAMember              a peer not certified by the federation CA, or revoked
    ├── InvalidRecord               a DHT record unsigned, forged, expired, replayed (``reason``)
    ├── Forbidden                   a peer asked for what only another site may do
    ├── PlacementError              fewer distinct partner sites than the bundle needs
    ├── TransportError              a node-to-node exchange failed
    │   ├── PeerUnreachable         could not connect, or the peer timed out
    │   ├── PeerRefused             the peer answered with an error (``code``)
    │   └── ProtocolViolation       frames that break the transport protocol
    └── CatalogError                the site catalog could not open, migrate or write
        ├── SchemaTooNew            a catalog written by a newer meshpacs; never downgraded
        └── InvalidQuery            a C-FIND/C-MOVE identifier the catalog cannot match
            └── QueryTooLarge       a query value or UID list over its bound (also a LimitExceeded)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = [
    "CatalogError",
    "ConfigError",
    "CorruptBundle",
    "CorruptFragment",
    "FederationError",
    "Forbidden",
    "FormatError",
    "InputChanged",
    "InvalidQuery",
    "InvalidRecord",
    "KeyMaterialError",
    "LimitExceeded",
    "MeshError",
    "NotAMember",
    "PeerRefused",
    "PeerUnreachable",
    "PhraseError",
    "PlacementError",
    "ProtocolViolation",
    "QueryTooLarge",
    "QuotaExceeded",
    "SchemaTooNew",
    "ShamirError",
    "TrailBroken",
    "TransportError",
    "UnknownVersion",
    "Unrecoverable",
    "WrongKey",
    "brief",
]


class MeshError(Exception):
    """Root of every error meshpacs raises on purpose."""


class KeyMaterialError(MeshError):
    """Key material is malformed, inconsistent or does not fit the data."""


class PhraseError(KeyMaterialError):
    """A recovery phrase that does not check.

    ``bad_groups`` holds the 1-based positions of the groups that failed their own check,
    so the operator knows which group to re-read from the paper copy.
    """

    def __init__(self, message: str, bad_groups: Iterable[int] = ()) -> None:
        super().__init__(message)
        self.bad_groups: tuple[int, ...] = tuple(bad_groups)


class ShamirError(KeyMaterialError):
    """Escrow shares that are too few, inconsistent, or do not reproduce the secret."""


class WrongKey(KeyMaterialError):
    """A key did not authenticate the data: the wrong key, never garbage bytes."""


class FormatError(MeshError):
    """Bytes that do not parse as the format they claim to be."""


class UnknownVersion(FormatError):
    """A version byte this reader does not know; refused rather than guessed at."""

    def __init__(self, what: str, version: int, known: Iterable[int]) -> None:
        known_list = ", ".join(str(v) for v in known)
        super().__init__(f"{what} has format version {version}; this reader knows {known_list}")
        self.what = what
        self.version = version


class CorruptFragment(FormatError):
    """One fragment failed a check and is rejected; the others may still decode."""

    def __init__(self, reason: str, share: int | None = None) -> None:
        where = f"fragment {share}" if share is not None else "fragment"
        super().__init__(f"{where} rejected: {reason}")
        self.reason = reason
        self.share = share


class CorruptBundle(FormatError):
    """A bundle that decrypted but whose index or contents do not add up."""


class TrailBroken(FormatError):
    """The ATNA audit trail does not verify: an entry was changed, removed, inserted,
    reordered or forged, or the log was cut short of what its signed head records.

    ``entry`` is the 1-based position of the first entry that fails (None when the
    problem is the head file or the log as a whole); ``reason`` says what failed.
    """

    def __init__(self, reason: str, entry: int | None = None) -> None:
        where = f"audit trail entry {entry}" if entry is not None else "audit trail"
        super().__init__(f"{where}: {reason}")
        self.reason = reason
        self.entry = entry


class LimitExceeded(MeshError):
    """A length or count over a named bound, refused before anything was allocated."""


class InputChanged(MeshError):
    """An instance read for bundling did not match the size or SHA-256 declared for it."""


class ConfigError(MeshError):
    """A node config file, site directory or site key file the node cannot use as it stands.

    The message names the file and, for a config setting, the key (``dicom.port``), and
    says what to change: these are mistakes an administrator fixes, never tracebacks.
    """


class Unrecoverable(MeshError):
    """Fewer than k good fragments of a bundle could be found.

    ``missing`` lists the share numbers that nobody offered; ``rejected`` maps each
    offered-but-refused fragment (by its position in the input) to the reason.
    """

    def __init__(
        self,
        k: int,
        good: int,
        missing: Iterable[int],
        rejected: Mapping[int, str],
    ) -> None:
        self.k = k
        self.good = good
        self.missing: tuple[int, ...] = tuple(sorted(missing))
        self.rejected: dict[int, str] = dict(rejected)
        parts = [f"need {k} good fragments, have {good}"]
        if self.missing:
            parts.append("missing shares " + ", ".join(str(s) for s in self.missing))
        if self.rejected:
            parts.append(
                "rejected: " + "; ".join(f"#{i}: {why}" for i, why in sorted(self.rejected.items()))
            )
        super().__init__("unrecoverable bundle: " + "; ".join(parts))


class CatalogError(MeshError):
    """The site catalog could not be opened, migrated or written; nothing was committed."""


class SchemaTooNew(CatalogError):
    """The catalog's schema is newer than this reader: refused, because guessing loses data."""

    def __init__(self, found: int, newest: int) -> None:
        super().__init__(
            f"catalog schema version {found} is newer than this meshpacs knows ({newest}); "
            "upgrade meshpacs instead of opening it with an older one"
        )
        self.found = found
        self.newest = newest


class InvalidQuery(CatalogError):
    """A query identifier the catalog cannot match: bad level, malformed date or number.

    The message names the attribute keyword, never the value (which may be PHI).
    """


class QueryTooLarge(InvalidQuery, LimitExceeded):
    """A query value, UID list or result set over its bound, refused before running it."""


class QuotaExceeded(LimitExceeded):
    """Storing this fragment would put a partner site over the room this node gives it."""


class FederationError(MeshError):
    """The federation CA, a node certificate or the revocation list cannot be used."""


class NotAMember(FederationError):
    """A peer whose certificate the federation CA did not issue, or has revoked or let expire.

    The message says which check failed, never what the peer claimed to be beyond its
    certificate's site ID.
    """


class InvalidRecord(MeshError):
    """A DHT record that is unsigned, forged, expired, replayed or from a non-member.

    ``reason`` is a short, fixed phrase (``"bad signature"``, ``"expired"``...) so callers
    can count rejections by cause; such records are ignored, never trusted.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"DHT record ignored: {reason}")
        self.reason = reason


class Forbidden(MeshError):
    """A peer asked for something only another site may do (delete or overwrite its data)."""


class PlacementError(MeshError):
    """Fewer distinct, live partner sites with room than the bundle's placement needs."""


class TransportError(MeshError):
    """A node-to-node exchange failed; the message names the peer by site ID and address."""


class PeerUnreachable(TransportError):
    """The peer could not be reached, or did not answer in time."""


class PeerRefused(TransportError):
    """The peer answered with an error; ``code`` is its status word."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"peer refused ({code}): {message}")
        self.code = code


class ProtocolViolation(TransportError):
    """Frames that break the transport protocol: the connection is closed at once."""


def brief(error: BaseException, limit: int = 300) -> str:
    """One line for a log or a report: the message (or the type's name), cut to ``limit``."""
    text = str(error) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
