"""Names in a federation: site IDs, federation names, and how certificates carry them.

A site ID (``st-marys``) names a hospital's node everywhere: in its config, its node
certificate, DHT records and log lines. It is the one rule for what a site ID may be
(``meshpacs.node.config`` re-exports it): 1-64 characters ``a-z``, ``0-9`` and ``-``, so it
is safe in file names, URIs and messages without quoting.

In a node certificate the site ID is the subject's common name *and* the one URI
subject-alternative name ``urn:meshpacs:site:<site ID>``; the two must agree. A peer is
known by what its certificate says, never by what it claims on the wire.
"""

from __future__ import annotations

import re

from meshpacs.errors import ConfigError

__all__ = [
    "FEDERATION_NAME_MAX_LENGTH",
    "SITE_ID_MAX_LENGTH",
    "SITE_URI_PREFIX",
    "federation_name_problem",
    "site_id_from_uri",
    "site_id_problem",
    "site_uri",
    "validate_federation_name",
    "validate_site_id",
]

SITE_ID_MAX_LENGTH = 64
FEDERATION_NAME_MAX_LENGTH = 64
SITE_URI_PREFIX = "urn:meshpacs:site:"

_SITE_ID = re.compile(r"[a-z0-9-]+")
# Letters, digits, spaces and a little punctuation: it is a certificate's common name,
# shown to administrators, and must not smuggle control characters into their terminals.
_FEDERATION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]*")


def site_id_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a site ID, in words; ``None`` if it is a valid one."""
    if not value:
        return "must not be empty"
    if len(value) > SITE_ID_MAX_LENGTH:
        return f"must be at most {SITE_ID_MAX_LENGTH} characters, not {len(value)}"
    if not _SITE_ID.fullmatch(value):
        return 'may contain only lower-case letters a-z, digits 0-9 and "-", e.g. "st-marys"'
    return None


def validate_site_id(value: str) -> str:
    """Return ``value`` if it is a valid site ID, else raise ``ConfigError`` saying why."""
    problem = site_id_problem(value)
    if problem is not None:
        raise ConfigError(f"site ID {_shown(value)}: {problem}")
    return value


def federation_name_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a federation name; ``None`` if it is a valid one."""
    if not value:
        return "must not be empty"
    if len(value) > FEDERATION_NAME_MAX_LENGTH:
        return f"must be at most {FEDERATION_NAME_MAX_LENGTH} characters, not {len(value)}"
    if not _FEDERATION_NAME.fullmatch(value):
        return (
            'may contain only letters, digits, spaces, ".", "_" and "-", and must start with'
            ' a letter or digit, e.g. "North Region PACS Mesh"'
        )
    return None


def validate_federation_name(value: str) -> str:
    """Return ``value`` if it is a valid federation name, else raise ``ConfigError``."""
    problem = federation_name_problem(value)
    if problem is not None:
        raise ConfigError(f"federation name {_shown(value)}: {problem}")
    return value


def site_uri(site_id: str) -> str:
    """The subject-alternative-name URI of a node certificate for ``site_id``."""
    return SITE_URI_PREFIX + validate_site_id(site_id)


def site_id_from_uri(uri: str) -> str | None:
    """The site ID in a ``urn:meshpacs:site:`` URI, or ``None`` if it is not a valid one."""
    if not uri.startswith(SITE_URI_PREFIX):
        return None
    site_id = uri[len(SITE_URI_PREFIX) :]
    return site_id if site_id_problem(site_id) is None else None


def _shown(value: str) -> str:
    """A user's value quoted for a message, cut short so a pasted blob stays readable."""
    text = value if len(value) <= 60 else value[:57] + "..."
    return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
