"""Escrow shares sealed to a trusted peer's certificate key: only that peer opens them."""

from __future__ import annotations

import pytest

from meshpacs.errors import FormatError, UnknownVersion, WrongKey
from meshpacs.keys import NodeIdentity, SiteSecret, combine, split
from meshpacs.keys.escrow import open_share, seal_share


def identity() -> NodeIdentity:
    return NodeIdentity.from_secret(SiteSecret.generate())


def test_t_of_m_peers_open_their_shares_and_rebuild_the_secret() -> None:
    secret = SiteSecret.generate()
    peers = {f"peer-{i}": identity() for i in range(3)}
    shares = split(secret.value, 2, 3)
    sealed = {
        name: seal_share(share, peer.public_key_bytes, owner_site="owner", recipient_site=name)
        for (name, peer), share in zip(peers.items(), shares, strict=True)
    }
    opened = [
        open_share(peers[name], sealed[name], owner_site="owner", recipient_site=name)
        for name in ("peer-0", "peer-2")
    ]
    assert SiteSecret(combine(opened)) == secret
    for name, data in sealed.items():
        assert secret.value not in data and shares[int(name[-1])].y not in data


def test_another_peer_a_wrong_binding_or_an_altered_share_cannot_open_it() -> None:
    peer, other = identity(), identity()
    [share] = split(SiteSecret.generate().value, 1, 1)
    sealed = seal_share(share, peer.public_key_bytes, owner_site="owner", recipient_site="p")
    with pytest.raises(WrongKey):
        open_share(other, sealed, owner_site="owner", recipient_site="p")
    with pytest.raises(WrongKey):
        open_share(peer, sealed, owner_site="someone-else", recipient_site="p")
    with pytest.raises(WrongKey):
        open_share(peer, sealed, owner_site="owner", recipient_site="q")
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(WrongKey):
        open_share(peer, bytes(flipped), owner_site="owner", recipient_site="p")
    with pytest.raises(UnknownVersion):
        open_share(peer, b"\x07" + sealed[1:], owner_site="owner", recipient_site="p")
    with pytest.raises(FormatError):
        open_share(peer, sealed[:30], owner_site="owner", recipient_site="p")
    assert open_share(peer, sealed, owner_site="owner", recipient_site="p") == share
