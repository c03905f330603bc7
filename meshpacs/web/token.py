"""The dashboard's access token: random, kept in ``state/dashboard.token`` (mode 0600).

The dashboard is read-only and PHI-free, but it tells whoever reads it which partners
are down and how far behind the backups are: worth a password on a shared machine. The
token is 32 random bytes (``secrets``) in URL-safe base64, made when the site is laid out
or at the node's first start, and never logged; whoever may read the site's state
directory may open the dashboard. Requests carry it as ``?token=`` or as
``Authorization: Bearer``; it is compared in constant time.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from pathlib import Path

from meshpacs.durable import read_private, write_new
from meshpacs.errors import ConfigError

__all__ = ["TOKEN_FILE", "ensure_token", "read_token"]

TOKEN_FILE = "dashboard.token"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,128}")
_MAX_BYTES = 256


def read_token(path: Path) -> str:
    """The token in ``path``; ``ConfigError`` if missing, open to others or malformed."""
    text = read_private(path, _MAX_BYTES, "dashboard token file").decode("ascii", "replace")
    token = text.strip()
    if not _TOKEN.fullmatch(token):
        raise ConfigError(
            f"dashboard token file {path} does not hold a token; delete it and restart the"
            " node to make a new one"
        )
    return token


def ensure_token(path: Path) -> str:
    """The token in ``path``, made first (mode 0600, never replacing a file) if missing."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Made meanwhile by another process (FileExistsError): use that one.
        with contextlib.suppress(FileExistsError):
            write_new(path, (secrets.token_urlsafe(32) + "\n").encode("ascii"), 0o600)
    return read_token(path)
