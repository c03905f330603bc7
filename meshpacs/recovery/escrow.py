"""Recovery without the phrase: a release request, then t trusted peers' shares combined.

The recovering machine's side of the escrow path (the procedure is in ``docs/escrow.md``)::

    create_request ──► escrow-request.bin ──► administrator ──► authorisation
         │                                                         │
         └─ escrow.key (0600, never leaves this machine)    each trusted peer
                                                                   │ release file
    regain_secret ◄──────────────────── t release files ◄──────────┘
         │  opens each with escrow.key, combines t shares (Shamir),
         │  and keeps the secret only if it derives the identity key
         ▼  in the site's own certificate
    SiteSecret ──► the recovery runs exactly as from a phrase

Checking the combined secret against the site's certificate is what makes the result
trustworthy: anyone who has the (public) authorisation can seal a made-up share to the
request key, but only the real secret derives the certified identity. Given more than t
releases, every t-subset (of one split) is tried until one rebuilds that identity, so a
damaged or foreign release is set aside and named instead of spoiling the result.

Key file ``escrow.key``, format version 1 (mode 0600, in the recovery's working directory)::

    offset  size  field
    0       1     version        = 1
    1       1     L = len(site_id), 1..64
    2       L     site_id        ASCII
    2+L     16    request_id
    18+L    32    private_key    X25519, raw; from ``secrets``

The regained phrase is written once, to ``recovered-phrase.txt`` (0600) beside it, for the
administrator to copy onto paper: a site rebuilt this way needs its phrase again.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshpacs.durable import fsync_dir, read_private, write_new
from meshpacs.errors import (
    ConfigError,
    FederationError,
    FormatError,
    KeyMaterialError,
    LimitExceeded,
    MeshError,
    ShamirError,
    UnknownVersion,
    WrongKey,
)
from meshpacs.federation.authorisation import (
    REQUEST_ID_SIZE,
    RecoveryRequest,
    encode_request,
)
from meshpacs.federation.certs import certificate_public_key, load_certificate
from meshpacs.federation.names import SITE_ID_MAX_LENGTH, validate_site_id
from meshpacs.keys import NodeIdentity, ShamirShare, SiteSecret, combine
from meshpacs.keys.escrow import (
    MAX_RELEASE_BYTES,
    open_release,
    read_release,
    x25519_private_from_bytes,
    x25519_public_bytes,
)

__all__ = [
    "ESCROW_KEY_FILE",
    "ESCROW_KEY_VERSION",
    "PHRASE_FILE",
    "REQUEST_FILE",
    "CreatedRequest",
    "EscrowKey",
    "Regained",
    "create_request",
    "decode_escrow_key",
    "encode_escrow_key",
    "keep_regained_phrase",
    "load_escrow_key",
    "regain_secret",
]

ESCROW_KEY_VERSION = 1
ESCROW_KEY_FILE = "escrow.key"
REQUEST_FILE = "escrow-request.bin"
PHRASE_FILE = "recovered-phrase.txt"

_KEY_SIZE = 32
_MAX_KEY_FILE = 2 + SITE_ID_MAX_LENGTH + REQUEST_ID_SIZE + _KEY_SIZE
# C(m, t) subsets are tried; trusted peers are a handful, so this is never reached in use.
_MAX_ATTEMPTS = 1000
_DIR_MODE = 0o700
_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644


@dataclass(frozen=True, repr=False)
class EscrowKey:
    """The recovering machine's one-off key for one request; ``repr`` shows no key."""

    site_id: str
    request_id: bytes
    private: X25519PrivateKey

    @property
    def public_key(self) -> bytes:
        return x25519_public_bytes(self.private)

    def __repr__(self) -> str:
        return (
            f"EscrowKey(site_id={self.site_id!r}, request_id={self.request_id.hex()!r}, <redacted>)"
        )


def encode_escrow_key(key: EscrowKey) -> bytes:
    site = key.site_id.encode("ascii")
    raw = key.private.private_bytes_raw()
    return bytes([ESCROW_KEY_VERSION, len(site)]) + site + key.request_id + raw


def decode_escrow_key(data: bytes, what: str = "escrow key file") -> EscrowKey:
    if len(data) > _MAX_KEY_FILE or len(data) < 2:
        raise FormatError(f"{what} is not an escrow key file")
    if data[0] != ESCROW_KEY_VERSION:
        raise UnknownVersion(what, data[0], [ESCROW_KEY_VERSION])
    length = data[1]
    if len(data) != 2 + length + REQUEST_ID_SIZE + _KEY_SIZE:
        raise FormatError(f"{what} is damaged (wrong length)")
    try:
        site_id = validate_site_id(data[2 : 2 + length].decode("ascii"))
    except (UnicodeDecodeError, ConfigError):
        raise FormatError(f"{what} is damaged (site ID)") from None
    request_id = data[2 + length : 2 + length + REQUEST_ID_SIZE]
    private = x25519_private_from_bytes(data[2 + length + REQUEST_ID_SIZE :])
    return EscrowKey(site_id, request_id, private)


@dataclass(frozen=True)
class CreatedRequest:
    request: RecoveryRequest
    request_path: Path
    key_path: Path


def create_request(workdir: Path, site_id: str, now: int) -> CreatedRequest:
    """A new request for ``site_id``: its key (0600) and request file, in ``workdir``.

    The key file is written first and exclusively: a request never exists without its
    key, and a pending request's key is never overwritten.
    """
    validate_site_id(site_id)
    private = x25519_private_from_bytes(secrets.token_bytes(_KEY_SIZE))
    key = EscrowKey(site_id, secrets.token_bytes(REQUEST_ID_SIZE), private)
    request = RecoveryRequest(site_id, key.request_id, key.public_key, now)
    key_path, request_path = workdir / ESCROW_KEY_FILE, workdir / REQUEST_FILE
    try:
        workdir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        write_new(key_path, encode_escrow_key(key), _PRIVATE_MODE)
    except FileExistsError:
        raise ConfigError(
            f"{key_path} already holds the key of an earlier request; use that request, or"
            " remove the file if that request is abandoned, or choose another --workdir"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot write {key_path}: {exc.strerror or exc}") from None
    try:
        request_path.unlink(missing_ok=True)  # an abandoned request's, whose key is gone
        write_new(request_path, encode_request(request), _PUBLIC_MODE)
        fsync_dir(workdir)
    except OSError as exc:
        key_path.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {request_path}: {exc.strerror or exc}") from None
    return CreatedRequest(request, request_path, key_path)


def load_escrow_key(path: Path) -> EscrowKey:
    """The key file written by ``create_request``; refused if others may read it."""
    return decode_escrow_key(read_private(path, _MAX_KEY_FILE, "escrow key file"), str(path))


# --- combining the releases ---------------------------------------------------------------


@dataclass(frozen=True)
class Regained:
    """The rebuilt secret, and which release files went into it."""

    secret: SiteSecret
    threshold: int
    used: tuple[str, ...]
    set_aside: tuple[str, ...]

    def __repr__(self) -> str:
        return f"Regained(<secret redacted>, threshold={self.threshold}, used={self.used!r})"


@dataclass(frozen=True)
class _Opened:
    label: str
    releasing_site: str
    share: ShamirShare


def _named(label: str, error: MeshError) -> MeshError:
    """``error`` again, its message prefixed with the file it is about (same family)."""
    message = f"escrow release {label}: {error}"
    for family in (WrongKey, ShamirError, LimitExceeded, FormatError, FederationError):
        if isinstance(error, family):
            return family(message)
    return KeyMaterialError(message)


def _open_one(key: EscrowKey, label: str, data: bytes) -> _Opened:
    try:
        if len(data) > MAX_RELEASE_BYTES:
            raise LimitExceeded(f"over {MAX_RELEASE_BYTES} bytes; it is not a release")
        release = read_release(data)
        if release.owner_site != key.site_id:
            raise KeyMaterialError(
                f"it releases site {release.owner_site!r}'s share, not {key.site_id!r}'s"
            )
        if release.request_id != key.request_id:
            raise KeyMaterialError(
                f"it answers request {release.request_id.hex()}, not this one"
                f" ({key.request_id.hex()}): it was made with another authorisation"
            )
        share = open_release(release, key.private)
    except MeshError as error:
        raise _named(label, error) from None
    return _Opened(label, release.releasing_site, share)


def _distinct(opened: Sequence[_Opened]) -> list[_Opened]:
    """One entry per share x; the same share given twice counts once."""
    by_x: dict[int, _Opened] = {}
    for item in opened:
        seen = by_x.setdefault(item.share.x, item)
        if seen.share.y != item.share.y:
            raise ShamirError(
                f"escrow releases {seen.label} and {item.label} hold different shares under"
                f" the same number {item.share.x}; one of them is damaged or forged"
            )
    return list(by_x.values())


def _try_split(group: list[_Opened], expected: bytes) -> tuple[SiteSecret, list[_Opened]] | None:
    threshold = group[0].share.threshold
    for attempt, subset in enumerate(itertools.combinations(group, threshold)):
        if attempt >= _MAX_ATTEMPTS:
            break
        try:
            secret = SiteSecret(combine([item.share for item in subset]))
        except KeyMaterialError:
            continue  # a damaged share among these: another subset may do without it
        if NodeIdentity.from_secret(secret).public_key_bytes == expected:
            return secret, list(subset)
    return None


def regain_secret(
    key: EscrowKey, releases: Sequence[tuple[str, bytes]], cert_pem: bytes
) -> Regained:
    """The site secret from ``releases`` (label, bytes), checked against the site's certificate.

    Every release must be for ``key``'s site and request and open with ``key``, else the
    error names its label and why. Then at least ``threshold`` releases of one split must
    rebuild a secret whose identity key is the one ``cert_pem`` certifies.
    """
    if not releases:
        raise ShamirError("no escrow release given")
    expected = certificate_public_key(load_certificate(cert_pem, "the site's node certificate"))
    opened = [_open_one(key, label, data) for label, data in releases]
    splits: dict[bytes, list[_Opened]] = {}
    for item in opened:
        splits.setdefault(item.share.split_id, []).append(item)
    groups = sorted((_distinct(g) for g in splits.values()), key=len, reverse=True)
    threshold = groups[0][0].share.threshold
    usable = [g for g in groups if len(g) >= g[0].share.threshold]
    if not usable:
        raise ShamirError(_too_few(groups, len(splits) > 1))
    for group in usable:
        found = _try_split(group, expected)
        if found is not None:
            secret, used = found
            labels = {item.label for item in used}
            return Regained(
                secret,
                used[0].share.threshold,
                tuple(item.label for item in used),
                tuple(label for label, _ in releases if label not in labels),
            )
    names = ", ".join(label for label, _ in releases)
    raise KeyMaterialError(
        f"the escrow shares in {names} do not rebuild this site's secret (need {threshold}"
        " that agree): a release is damaged or forged, or the certificate given with --cert"
        " is not this site's; ask the peers for fresh releases"
    )


def _too_few(groups: Sequence[Sequence[_Opened]], several_splits: bool) -> str:
    best = groups[0]
    threshold = best[0].share.threshold
    given = ", ".join(f"{item.label} (from {item.releasing_site})" for item in best)
    message = (
        f"{threshold} escrow releases from different trusted peers are needed (a majority of"
        f" the site's trusted peers), {len(best)} given: {given}; ask another trusted peer"
    )
    if several_splits:
        message += (
            "; the releases come from different escrow splits (the site re-escrowed while"
            " some peers were away), and only releases of one split combine"
        )
    return message


def keep_regained_phrase(workdir: Path, secret: SiteSecret) -> tuple[Path, bool]:
    """Write the recovery phrase to ``workdir/recovered-phrase.txt`` (0600) once.

    Returns the path and whether it was written now (``False``: a previous run wrote it).
    """
    path = workdir / PHRASE_FILE
    try:
        workdir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        write_new(path, (secret.to_phrase() + "\n").encode("ascii"), _PRIVATE_MODE)
        fsync_dir(workdir)
    except FileExistsError:
        return path, False
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path, True
