"""Escrow shares sealed to a trusted peer's certificate key: only that peer opens them."""

from __future__ import annotations

import pytest

from meshpacs.errors import FormatError, UnknownVersion, WrongKey
from meshpacs.keys import NodeIdentity, SiteSecret, combine, encode_share, split
from meshpacs.keys.escrow import (
    open_release,
    open_share,
    read_release,
    seal_release,
    seal_share,
    x25519_private_from_bytes,
    x25519_public_bytes,
)

# A release of share x=2 of a 2-of-3 split, sealed to the X25519 key 0x07 * 32 for request
# 00..0f, as the format's first version wrote it: files like it must always open.
RELEASE_V1 = bytes.fromhex(
    "0106736974652d610873742d6d61727973000102030405060708090a0b0c0d0e0f533974833660e7d1eb"
    "45a60a848da44db99745de7ffeb963cf533ba97c064d31a219af7d976a8524db59c6414c37e66080e7eb"
    "cbbca4efd1ba9f1a9bffe875cf2d53b964988b5e03f57835d13b226447da775494b60c23f552eae08674"
    "c79f58b1e2fc169cc07fdffb1ac02844"
)
RELEASED_SHARE = bytes.fromhex(
    "0100010203040506070202002055617b061642a82c19bb546429684bee8a2a153ea3f7f8cc635addf244"
    "c52cbfcb0aad25"
)


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


def test_a_release_written_by_the_first_version_still_reads_and_opens() -> None:
    release = read_release(RELEASE_V1)
    assert (release.owner_site, release.releasing_site) == ("site-a", "st-marys")
    assert release.request_id == bytes(range(16))
    assert release.header == b"\x01\x06site-a\x08st-marys" + bytes(range(16))
    requester = x25519_private_from_bytes(b"\x07" * 32)
    assert encode_share(open_release(release, requester)) == RELEASED_SHARE


def test_a_release_header_is_laid_out_as_drawn_and_refuses_bad_site_ids() -> None:
    [share, *_] = split(SiteSecret.generate().value, 2, 3)
    requester = x25519_private_from_bytes(b"\x09" * 32)
    public = x25519_public_bytes(requester)
    data = seal_release(
        share, public, owner_site="st-marys", releasing_site="b", request_id=b"r" * 16
    )
    assert data[:28] == b"\x01\x08st-marys\x01b" + b"r" * 16
    assert open_release(read_release(data), requester) == share
    for owner in ("", "St-Marys", "x" * 65, "café"):
        with pytest.raises(FormatError, match="owner site"):
            seal_release(share, public, owner_site=owner, releasing_site="b", request_id=b"r" * 16)
    rest = b"r" * 16 + bytes(60)  # request ID and a body long enough: only the sites fail
    for bad in (
        b"\x01",  # cut short before the owner site
        b"\x01\x08st-mar",  # cut short inside it
        b"\x01\x00" + rest,  # an empty owner site
        b"\x01\x41" + b"a" * 65 + rest,  # over 64
        b"\x01\x08ST-MARYS\x01b" + rest,  # not the site-ID rule
        b"\x01\x08st-marys\x01\xff" + rest,  # not ASCII
        b"\x01\x08st-marys",  # no releasing site
    ):
        with pytest.raises(FormatError, match=r"escrow release: (owner|releasing) site"):
            read_release(bad)
