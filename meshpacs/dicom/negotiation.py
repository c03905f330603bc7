"""Which transfer syntax the node accepts for each proposed storage context.

With ``UNRESTRICTED_STORAGE_SERVICE`` (needed so private and new SOP classes are stored
instead of aborting the association), pynetdicom accepts *every* storage-like context with
the first transfer syntax the peer proposed, whatever the node supports
(``presentation.negotiate_unrestricted``): a deflated dataset, or a syntax no one has heard
of, would be accepted. This wraps that negotiation so each storage context is accepted with
the first proposed syntax the node allows, and rejected (result 0x04, transfer syntaxes not
supported) when it proposes none. ``tests/dicom/test_bad_input.py`` fails if it stops
taking effect.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pynetdicom import acse

__all__ = ["install_storage_negotiation"]

_REJECT_TRANSFER_SYNTAX = 0x04
_allowed: frozenset[str] = frozenset()
_MARK = "_meshpacs_storage_negotiation"


def install_storage_negotiation(allowed: Iterable[str]) -> None:
    """Accept storage contexts only in ``allowed`` syntaxes (process-wide, idempotent)."""
    global _allowed
    _allowed = frozenset(allowed)
    original = getattr(acse, "negotiate_unrestricted")  # noqa: B009 - not re-exported
    if getattr(original, _MARK, False):
        return

    def negotiate(rq_contexts: Any, ac_contexts: Any, roles: Any = None) -> Any:
        result, reply_roles = original(rq_contexts, ac_contexts, roles)
        proposed = {cx.context_id: cx for cx in rq_contexts}
        for cx in result:
            if cx.result != 0x00 or cx.context_id not in proposed:
                continue
            _restrict(cx, proposed[cx.context_id].transfer_syntax)
        return result, reply_roles

    setattr(negotiate, _MARK, True)
    setattr(acse, "negotiate_unrestricted", negotiate)  # noqa: B010


def _restrict(cx: Any, offered: list[Any]) -> None:
    if str(cx.transfer_syntax[0]) in _allowed:
        return
    for syntax in offered:
        if str(syntax) in _allowed:
            cx.transfer_syntax = [syntax]
            return
    cx.result = _REJECT_TRANSFER_SYNTAX
