"""Holders as the partner directories of the backup harness, for the upkeep services."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meshpacs.audit.challenge import Challenge, answer
from meshpacs.erasure import verify_fragment
from meshpacs.errors import PeerRefused, PeerUnreachable
from meshpacs.transport.client import FragmentInfo
from meshpacs.transport.frames import RecordKind


@dataclass
class DirHolders:
    """Holders answering audits and fetches from partner directories; ``down`` ones fail.

    A holder answers from whatever bytes its directory has (the transport's own tests
    cover the wire), so a fragment altered, truncated or removed on its disk is exactly
    what the auditor and the repairer must cope with.
    """

    root: Path
    down: set[str] = field(default_factory=set)
    leaving: set[str] = field(default_factory=set)  # answer audits LEAVING, serve reads
    asked: list[tuple[str, Challenge]] = field(default_factory=list)
    fetched: list[tuple[str, str]] = field(default_factory=list)
    renewals: list[tuple[str, int, int]] = field(default_factory=list)  # site, IDs, seconds
    records: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (peer, record ID)

    async def audit(self, site_id: str, fragment_id: str, challenge: Challenge) -> bytes | None:
        self.asked.append((site_id, challenge))
        if site_id in self.down:
            raise PeerUnreachable(f"site {site_id} is down")
        if site_id in self.leaving:
            raise PeerRefused("LEAVING", "this site is leaving the federation")
        path = self.root / site_id / fragment_id
        if not path.exists():
            return None
        with open(path, "rb") as source:
            source.seek(challenge.offset)
            return answer(challenge.nonce, challenge.offset, source.read(challenge.length))

    async def fetch(self, site_id: str, fragment_id: str, dest: Path, size: int) -> None:
        self.fetched.append((site_id, fragment_id))
        if site_id in self.down:
            raise PeerUnreachable(f"site {site_id} is down")
        shutil.copyfile(self.root / site_id / fragment_id, dest)

    async def renew_leases(self, site_id: str, fragment_ids: Sequence[str], seconds: int) -> int:
        """As a holder's store answers: how many of the IDs it has (leases are its own)."""
        self.renewals.append((site_id, len(fragment_ids), seconds))
        if site_id in self.down:
            raise PeerUnreachable(f"site {site_id} is down")
        return sum((self.root / site_id / f).exists() for f in set(fragment_ids))

    async def delete_fragment(self, site_id: str, fragment_id: str) -> bool:
        if site_id in self.down:
            raise PeerUnreachable(f"site {site_id} is down")
        path = self.root / site_id / fragment_id
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed

    async def delete_record(self, site_id: str, kind: RecordKind, record_id: str) -> bool:
        if site_id in self.down:
            raise PeerUnreachable(f"site {site_id} is down")
        return self.records.pop((site_id, record_id), None) is not None

    async def has_fragment(self, site_id: str, fragment_id: str) -> FragmentInfo | None:
        """As a holder's store answers HAS: the size and the set hash it verified."""
        if site_id in self.down:
            raise PeerUnreachable(f"site {site_id} is down")
        path = self.root / site_id / fragment_id
        if not path.exists():
            return None
        with open(path, "rb") as source:
            verified = verify_fragment(source)
        return FragmentInfo(path.stat().st_size, verified.set_hash, verified.header.share)

    async def find_holders(self, fragment_id: str) -> list[str]:
        """What the DHT would say: every site whose directory has the fragment."""
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / fragment_id).exists())
