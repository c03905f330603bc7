"""The site secret is escrowed t-of-m with the trusted peers, each share only theirs to open."""

from __future__ import annotations

from pathlib import Path

from meshpacs.backup.escrow import escrow_record_id
from meshpacs.errors import WrongKey
from meshpacs.keys import NodeIdentity, SiteSecret, combine
from meshpacs.keys.escrow import open_share
from meshpacs.node.site import load_site_secret

from .conftest import FederationFactory, RunningSite
from .helpers import eventually


def escrow_file(holder: RunningSite, owner: str) -> Path | None:
    found = list(
        (holder.data_dir / "records" / "escrow").glob(
            f"*/{escrow_record_id(owner, holder.site_id)}"
        )
    )
    return found[0] if found else None


async def test_trusted_peers_hold_shares_that_rebuild_the_secret_and_nobody_else_does(
    federation: FederationFactory,
) -> None:
    fed = await federation(4, k=2, n=3)
    owner = fed.site("site-a")
    trusted = [fed.site("site-b"), fed.site("site-c")]
    await eventually(lambda: all(escrow_file(p, "site-a") for p in trusted), 60, "escrow")
    assert escrow_file(fed.site("site-d"), "site-a") is None

    secret = load_site_secret(owner.data_dir / "site.key")
    shares = []
    for peer in trusted:
        identity = NodeIdentity.from_secret(load_site_secret(peer.data_dir / "site.key"))
        sealed = escrow_file(peer, "site-a")
        assert sealed is not None
        data = sealed.read_bytes()
        assert secret.value not in data
        shares.append(open_share(identity, data, owner_site="site-a", recipient_site=peer.site_id))
    assert shares[0].threshold == 2  # a majority of two trusted peers
    assert SiteSecret(combine(shares)) == secret

    # A share opens only with the peer it was sealed to.
    stranger = NodeIdentity.from_secret(load_site_secret(fed.site("site-d").data_dir / "site.key"))
    sealed = escrow_file(trusted[0], "site-a")
    assert sealed is not None
    try:
        open_share(stranger, sealed.read_bytes(), owner_site="site-a", recipient_site="site-b")
    except WrongKey:
        pass
    else:
        raise AssertionError("a share opened with another site's key")
