"""Setting up a site directory, and reading its key file back.

A site directory holds ``config.toml``, the data directories and ``site.key``, the site
secret. The secret exists in two places only: that file (mode 0600, never group- or
world-readable) and the recovery phrase, which ``create_site`` returns once for the
administrator to write on paper and which is never written to disk by meshpacs.

Key file format, ASCII, exactly three lines::

    meshpacs-site-key v1
    secret <64 lower-case hex digits>
    fingerprint <16 lower-case hex digits>

The fingerprint is checked against the secret on every load, so a damaged file is refused
rather than used to derive wrong keys. Error messages name the file, never its contents.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from meshpacs.durable import (
    fsync_dir,
    read_private,
    remove_created,
    require_new_or_empty,
    write_new,
)
from meshpacs.errors import ConfigError, FormatError, KeyMaterialError, UnknownVersion
from meshpacs.keys.secret import SiteSecret
from meshpacs.node.config import Setting, parse_config, render_config

_NEW_DIRECTORY = (
    "a site is set up only in a new or empty directory, so that an existing site's key is"
    " never overwritten. Choose a new directory"
)

__all__ = [
    "CONFIG_FILE_NAME",
    "KEY_FILE_VERSION",
    "CreatedSite",
    "create_site",
    "load_site_secret",
]

CONFIG_FILE_NAME = "config.toml"
KEY_FILE_VERSION = 1
_KEY_FILE_MAGIC = "meshpacs-site-key"
_KEY_FILE_MODE = 0o600
_CONFIG_FILE_MODE = 0o644  # no secrets in it; the administrators may read it
_DIR_MODE = 0o700  # the data directories hold patient data
_MAX_KEY_FILE_SIZE = 4096
_HEADER = re.compile(re.escape(_KEY_FILE_MAGIC) + r" v([0-9]{1,6})")
_SECRET_LINE = re.compile(r"secret ([0-9a-f]{64})")
_FINGERPRINT_LINE = re.compile(r"fingerprint ([0-9a-f]{16})")


@dataclass(frozen=True)
class CreatedSite:
    """What ``create_site`` made. ``phrase`` is shown to the administrator once, never kept."""

    config_path: Path
    phrase: str = field(repr=False)
    fingerprint: str


def create_site(
    directory: Path,
    site_id: str,
    ae_title: str,
    dicom_port: int = 11112,
    settings: Mapping[tuple[str, str], Setting] | None = None,
    secret: SiteSecret | None = None,
) -> CreatedSite:
    """Set up a new site in ``directory``, which must not exist or be empty.

    Writes ``config.toml`` (the documented sample, with ``data_dir = "."``), creates
    ``instances/``, ``fragments/`` and ``tmp/``, and writes a fresh site secret to
    ``site.key`` (mode 0600, created exclusively, fsynced with its directory); or ``secret``,
    the one a recovery phrase gives back, for a site rebuilt on a new machine. Everything is
    checked before anything is written; if writing fails half-way, what was created is
    removed again. ``config.toml`` is written last, so a directory holding one is complete.
    """
    directory = directory.absolute()
    config_path = directory / CONFIG_FILE_NAME
    text = render_config(site_id, ae_title, ".", dicom_port, settings)
    config = parse_config(text, directory, str(config_path))
    require_new_or_empty(directory, _NEW_DIRECTORY)

    secret = secret if secret is not None else SiteSecret.generate()
    created: list[Path] = []
    try:
        if not directory.exists():
            directory.mkdir(mode=_DIR_MODE, parents=True)
            created.append(directory)
            fsync_dir(directory.parent)
        for path in (config.instances_dir, config.fragments_dir, config.tmp_dir):
            path.mkdir(mode=_DIR_MODE)
            created.append(path)
        write_new(config.key_file, _key_file_text(secret).encode("ascii"), _KEY_FILE_MODE)
        created.append(config.key_file)
        write_new(config_path, text.encode("utf-8"), _CONFIG_FILE_MODE)
        created.append(config_path)
        fsync_dir(directory)
    except OSError as exc:
        remove_created(created)
        raise ConfigError(
            f"cannot create the site in {directory}: {exc.strerror or exc}"
            + (f" ({exc.filename})" if exc.filename else "")
        ) from None
    return CreatedSite(
        config_path=config_path, phrase=secret.to_phrase(), fingerprint=secret.fingerprint
    )


def load_site_secret(path: Path) -> SiteSecret:
    """Read the site secret from a key file written by ``create_site``.

    Refuses a file that group or others may read or write (``ConfigError``, telling the
    administrator to ``chmod 600`` it), a file that is not a meshpacs key file
    (``FormatError``), one of another format version (``UnknownVersion``) and one whose
    fingerprint does not match its secret (``KeyMaterialError``).
    """
    # Read a little past the key file's own bound, so that a file just too long is refused
    # as "not a key file" (FormatError) by the parser, like any other malformed one.
    data = read_private(path, 16 * _MAX_KEY_FILE_SIZE, "site key file")
    return _parse_key_file(data, path)


def _key_file_text(secret: SiteSecret) -> str:
    return (
        f"{_KEY_FILE_MAGIC} v{KEY_FILE_VERSION}\n"
        f"secret {secret.value.hex()}\n"
        f"fingerprint {secret.fingerprint}\n"
    )


def _parse_key_file(data: bytes, path: Path) -> SiteSecret:
    not_a_key_file = FormatError(f"{path} is not a meshpacs site key file")
    if len(data) > _MAX_KEY_FILE_SIZE:
        raise not_a_key_file
    try:
        lines = data.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise not_a_key_file from None
    header = _HEADER.fullmatch(lines[0])
    if header is None:
        raise not_a_key_file
    version = int(header.group(1))
    if version != KEY_FILE_VERSION:
        raise UnknownVersion(f"site key file {path}", version, [KEY_FILE_VERSION])
    if lines[-1] == "":
        lines.pop()
    secret_line = _SECRET_LINE.fullmatch(lines[1]) if len(lines) == 3 else None
    fingerprint_line = _FINGERPRINT_LINE.fullmatch(lines[2]) if len(lines) == 3 else None
    if secret_line is None or fingerprint_line is None:
        raise FormatError(
            f"site key file {path} is damaged (expected a secret line and a fingerprint line);"
            " rebuild it from the recovery phrase"
        )
    secret = SiteSecret(bytes.fromhex(secret_line.group(1)))
    if secret.fingerprint != fingerprint_line.group(1):
        raise KeyMaterialError(
            f"site key file {path} is damaged: its secret does not match its fingerprint;"
            " rebuild it from the recovery phrase"
        )
    return secret
