"""Depositing the site secret's escrow shares with the trusted peers.

The secret is split t-of-m (m = the trusted peers, t = a majority of them) and each share
is sealed to its peer's certificate key (:mod:`meshpacs.keys.escrow`) and put on that
peer as an escrow record. Shares never touch this site's disk: if the node stops before
every peer has its share, the next start splits again and deposits to all of them, since
shares of two different splits do not combine. ``state/escrow.json`` remembers which
peers hold a share of the current split (no share, no secret in it), so a node whose
trusted peers did not change deposits once, not at every start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from meshpacs.errors import MeshError
from meshpacs.keys import ShamirShare, SiteSecret, split
from meshpacs.keys.escrow import seal_share
from meshpacs.transport.client import PartnerConnection
from meshpacs.transport.frames import RecordKind

__all__ = ["EscrowDepositor", "escrow_record_id", "majority"]

_log = logging.getLogger("meshpacs.backup")
_LABEL = b"meshpacs/v1/escrow-record"


def majority(peers: int) -> int:
    return peers // 2 + 1


def escrow_record_id(owner_site: str, recipient_site: str) -> str:
    """The name a peer keeps our share under: one per (owner, recipient), replaced on re-split."""
    return hashlib.sha256(
        _LABEL + owner_site.encode() + b"\x00" + recipient_site.encode()
    ).hexdigest()


class EscrowDepositor:
    """Keeps one complete, current split of the site secret with the trusted peers."""

    def __init__(
        self,
        *,
        site_id: str,
        secret: SiteSecret,
        trusted: Sequence[str],
        connect: Callable[[str], Awaitable[PartnerConnection]],
        state_path: Path,
    ) -> None:
        self._site_id = site_id
        self._secret = secret
        self._trusted = sorted(trusted)
        self._connect = connect
        self._state_path = state_path
        self._threshold = majority(len(self._trusted))
        self._shares: dict[str, ShamirShare] | None = None  # peer -> its share, this run only

    def _settled(self) -> bool:
        try:
            state = json.loads(self._state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return bool(
            state.get("peers") == self._trusted
            and state.get("threshold") == self._threshold
            and state.get("deposited") == self._trusted
        )

    def _save(self, deposited: list[str]) -> None:
        self._state_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = self._state_path.with_suffix(".tmp")
        document = {"peers": self._trusted, "threshold": self._threshold, "deposited": deposited}
        temp.write_text(json.dumps(document), encoding="utf-8")
        os.replace(temp, self._state_path)

    async def ensure_deposited(self) -> bool:
        """Deposit what is missing; True once every trusted peer holds a current share."""
        if not self._trusted or self._settled():
            return True
        if self._shares is None:
            shares = split(self._secret.value, self._threshold, len(self._trusted))
            self._shares = dict(zip(self._trusted, shares, strict=True))
            self._save([])
        deposited: list[str] = []
        for peer in self._trusted:
            try:
                await self._deposit(peer)
            except MeshError as error:
                _log.warning("escrow share for trusted peer %s waits: %s", peer, error)
                continue
            deposited.append(peer)
        if deposited == self._trusted:
            self._save(deposited)
            self._shares = None
            _log.info(
                "site secret escrowed: %d-of-%d shares with the trusted peers",
                self._threshold,
                len(self._trusted),
            )
            return True
        return False

    async def _deposit(self, peer: str) -> None:
        assert self._shares is not None
        share = self._shares[peer]
        async with await self._connect(peer) as conn:
            sealed = seal_share(
                share, conn.member.public_key, owner_site=self._site_id, recipient_site=peer
            )
            await conn.put_record(RecordKind.ESCROW, escrow_record_id(self._site_id, peer), sealed)
