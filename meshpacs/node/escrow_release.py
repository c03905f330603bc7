"""A trusted peer releases the escrow share it holds for a site, on the CA's authorisation.

Run by the peer's administrator (``meshpacs escrow release``) on the peer's machine::

    authorisation ──► verified against this site's installed federation CA (ca.pem)
                      │ names the site being recovered, the request and its key
    records/escrow/<owner>/<escrow_record_id(owner, this site)>
                      │ opened with this site's identity key (from site.key)
                      ▼ re-sealed to the request's key (keys.escrow.seal_release)
    release file (0600)   +  one audit line in state/escrow-audit.log

It reads the held share straight from its file, not through a second ``HeldRecords``
(whose opening sweeps half-written files away, which would race with a running node's
own writes). That read is safe beside a running node: a record is only ever replaced by
renaming a complete, fsynced file over it, so a reader sees the old share or the new one,
whole. So the node may be running or not.

Every attempt is audited, released or refused, with site IDs, request ID and the reason
only (no patient data exists here to leak): one JSON line per attempt, appended and
fsynced, and the same line on the ``meshpacs.audit`` logger.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from meshpacs.backup.escrow import escrow_record_id
from meshpacs.durable import read_bounded, write_all, write_new
from meshpacs.errors import ConfigError, MeshError
from meshpacs.federation import SiteFederationFiles
from meshpacs.federation.authorisation import RecoveryAuthorisation, verify_authorisation
from meshpacs.keys import NodeIdentity
from meshpacs.keys.escrow import MAX_SEALED_SHARE_BYTES, open_share, seal_release
from meshpacs.node.config import NodeConfig
from meshpacs.node.site import load_site_secret
from meshpacs.store.records import owner_directory
from meshpacs.transport.frames import RecordKind

__all__ = ["AUDIT_FILE", "Released", "held_share_path", "release_escrow_share"]

AUDIT_FILE = "escrow-audit.log"
_AUDIT = logging.getLogger("meshpacs.audit")
_RELEASE_MODE = 0o600
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class Released:
    """What was released, for the administrator's screen (the share itself is in the file)."""

    owner_site: str
    releasing_site: str
    request_id: str
    code: str
    expires_at: int
    path: Path


def held_share_path(config: NodeConfig, owner_site: str) -> Path:
    """Where this site keeps ``owner_site``'s escrow share, if it holds one."""
    directory = owner_directory(config.records_dir, RecordKind.ESCROW, owner_site)
    return directory / escrow_record_id(owner_site, config.site.id)


def release_escrow_share(
    config: NodeConfig, authorisation: bytes, out: Path, *, now: float | None = None
) -> Released:
    """Check ``authorisation``, re-seal the held share to its key, write it to ``out``.

    Refuses (and audits why): an authorisation that does not verify against this site's
    federation CA, a site for which this one holds no share, a share that does not open
    with this site's key, and an ``out`` that already exists.
    """
    now = time.time() if now is None else now
    granted: RecoveryAuthorisation | None = None
    try:
        if out.exists():
            raise ConfigError(f"{out} already exists; name a new file for the release")
        ca_cert = SiteFederationFiles.for_site(config.data_dir).federation().ca_certificate
        granted = verify_authorisation(authorisation, ca_cert, now=now)
        release = _reseal(config, granted)
    except MeshError as error:
        _audit(config, now, granted, "refused", str(error))
        raise
    # Audited before the file exists: no release ever leaves without its audit line.
    _audit(config, now, granted, "released", "")
    try:
        _write_release(out, release)
    except MeshError as error:
        _audit(config, now, granted, "refused", str(error))
        raise
    return Released(
        granted.site_id,
        config.site.id,
        granted.request_id.hex(),
        granted.code,
        granted.expires_at,
        out,
    )


def _reseal(config: NodeConfig, granted: RecoveryAuthorisation) -> bytes:
    owner = granted.site_id
    path = held_share_path(config, owner)
    if not path.is_file():
        raise MeshError(
            f"site {config.site.id!r} holds no escrow share of site {owner!r}: it is not a"
            f" trusted peer of site {owner!r}, or that site never deposited one here"
        )
    sealed = read_bounded(path, MAX_SEALED_SHARE_BYTES, "escrow share", MeshError)
    identity = NodeIdentity.from_secret(load_site_secret(config.key_file))
    share = open_share(identity, sealed, owner_site=owner, recipient_site=config.site.id)
    return seal_release(
        share,
        granted.requester_key,
        owner_site=owner,
        releasing_site=config.site.id,
        request_id=granted.request_id,
    )


def _write_release(out: Path, release: bytes) -> None:
    try:
        write_new(out, release, _RELEASE_MODE)
    except FileExistsError:
        raise ConfigError(f"{out} already exists; name a new file for the release") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None


def _audit(
    config: NodeConfig,
    now: float,
    granted: RecoveryAuthorisation | None,
    outcome: str,
    reason: str,
) -> None:
    entry = {
        "time": round(now, 3),
        "event": "escrow-release",
        "outcome": outcome,
        "owner_site": granted.site_id if granted else None,
        "releasing_site": config.site.id,
        "request_id": granted.request_id.hex() if granted else None,
        "reason": reason,
    }
    line = json.dumps(entry, sort_keys=True)
    _AUDIT.info("%s", line)  # the file below is the record; the log line is for collectors
    path = config.state_dir / AUDIT_FILE
    try:
        config.state_dir.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _O_CLOEXEC, 0o600)
        try:
            write_all(fd, (line + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(f"cannot append to the audit log {path}: {exc.strerror or exc}") from None
