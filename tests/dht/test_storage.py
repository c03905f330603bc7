"""RecordStore: kademlia's storage hook over SQLite, keeping only verified, newest records."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshpacs.dht import Ed25519Signer, RecordStore, node_key, provider_key, sign_record
from meshpacs.dht.records import MAX_RECORD_SIZE
from meshpacs.dht.storage import SCHEMA_VERSION
from meshpacs.errors import ConfigError
from meshpacs.federation import Federation

from .helpers import (
    NOW,
    Clock,
    TestFederation,
    fragment_ids,
    node_record,
    provider_record,
)

FRAGMENT = fragment_ids(1, seed=2)[0]


@pytest.fixture
def alpha(federation: TestFederation) -> Ed25519Signer:
    return federation.issue("st-alpha")


@pytest.fixture
def store(tmp_path: Path, verifier: Federation, clock: Clock) -> Iterator[RecordStore]:
    opened = RecordStore(tmp_path / "dht.sqlite", verifier, clock=clock)
    yield opened
    opened.close()


def provider(signer: Ed25519Signer, holder: str, seq: int, **kwargs: float) -> bytes:
    return sign_record(provider_record(FRAGMENT, holder, seq=seq, **kwargs), signer)


def test_keeps_a_verified_record_under_its_own_key(
    store: RecordStore, alpha: Ed25519Signer
) -> None:
    raw = sign_record(node_record(alpha, "st-alpha"), alpha)
    store[node_key("st-alpha")] = raw
    assert store[node_key("st-alpha")] == raw
    assert store.get(node_key("st-alpha")) == raw
    assert store.get(node_key("st-beta")) is None
    with pytest.raises(KeyError):
        store[node_key("st-beta")]
    assert list(store) == [(node_key("st-alpha"), raw)]
    assert len(store) == 1


def test_drops_invalid_values_and_logs_only_the_reason(
    store: RecordStore,
    alpha: Ed25519Signer,
    outsiders: TestFederation,
    caplog: pytest.LogCaptureFixture,
) -> None:
    intruder = outsiders.issue("st-alpha")
    genuine = provider(alpha, "st-alpha", 1)
    forged = bytearray(genuine)
    forged[-70] ^= 0xFF  # inside the payload: the signature no longer matches
    key = provider_key(FRAGMENT)
    caplog.set_level(logging.INFO, logger="meshpacs.dht.storage")
    assert store.put(key, bytes(forged)) is False
    assert store.put(key, provider(intruder, "st-alpha", 5)) is False  # non-member
    assert store.put(key, provider(alpha, "st-beta", 5)) is False  # claims another site
    assert store.put(node_key("st-alpha"), genuine) is False  # valid, but not its key
    assert store.put(key, "text") is False
    assert store.put(key, 42) is False
    assert store.put(key, b"\x01" + bytes(MAX_RECORD_SIZE)) is False
    assert store.put(key.hex(), genuine) is False
    assert store.put(key[:19], genuine) is False
    assert store.get(key) is None and len(store) == 0
    messages = [record.getMessage() for record in caplog.records]
    assert "DHT record dropped: bad signature" in messages
    assert "DHT record dropped: author not a member" in messages
    assert "DHT record dropped: site ID is not the author's" in messages
    assert "DHT record dropped: stored under a key that is not its own" in messages
    assert all("st-alpha" not in message and FRAGMENT not in message for message in messages)
    assert store.put(key, genuine) is True


def test_a_revoked_member_s_records_are_refused(
    store: RecordStore,
    alpha: Ed25519Signer,
    federation: TestFederation,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = provider_key(FRAGMENT)
    assert store.put(key, provider(alpha, "st-alpha", 1))
    federation.revoke(alpha)  # the CA writes a new CRL; the store's Federation re-reads it
    caplog.set_level(logging.INFO, logger="meshpacs.dht.storage")
    assert store.put(key, provider(alpha, "st-alpha", 2)) is False
    own_node = sign_record(node_record(alpha, "st-alpha"), alpha)
    assert store.put(node_key("st-alpha"), own_node) is False
    assert [record.getMessage() for record in caplog.records] == [
        "DHT record dropped: author not a member"
    ] * 2
    assert len(store) == 1  # what it held stays until it expires; readers verify it again


def test_higher_seq_replaces_lower_seq_replay_is_ignored(
    store: RecordStore, alpha: Ed25519Signer, clock: Clock
) -> None:
    key = provider_key(FRAGMENT)
    first, second, third = (provider(alpha, "st-alpha", seq) for seq in (1, 2, 3))
    assert store.put(key, second)
    assert store.put(key, first) is False  # replay of an older record
    assert store[key] == second
    assert store.put(key, third)
    assert store[key] == third
    assert store.put(key, third) is True  # the same record again: kept, time refreshed
    same_seq_other = provider(alpha, "st-alpha", 3, expires_at=NOW + 100)
    assert store.put(key, same_seq_other) is False  # first record with a seq wins
    assert store[key] == third and len(store) == 1


def test_one_slot_per_author_under_a_key(
    store: RecordStore, alpha: Ed25519Signer, federation: TestFederation, clock: Clock
) -> None:
    beta = federation.issue("st-beta")
    key = provider_key(FRAGMENT)
    from_alpha = provider(alpha, "st-alpha", 9)
    from_beta = provider(beta, "st-beta", 1)  # a lower seq, but another author's slot
    assert store.put(key, from_alpha)
    clock.now += 1
    assert store.put(key, from_beta)
    assert store.values_for(key) == [from_beta, from_alpha]  # newest stored first
    assert store[key] == from_beta
    assert store.values_for(key, budget=len(from_beta)) == [from_beta]
    assert sorted(store) == sorted([(key, from_alpha), (key, from_beta)])


def test_values_survive_a_restart(
    tmp_path: Path, verifier: Federation, clock: Clock, alpha: Ed25519Signer
) -> None:
    path = tmp_path / "dht.sqlite"
    first = RecordStore(path, verifier, clock=clock)
    node = sign_record(node_record(alpha, "st-alpha", seq=4), alpha)
    held = provider(alpha, "st-alpha", 2)
    first[node_key("st-alpha")] = node
    first[provider_key(FRAGMENT)] = held
    first.close()

    again = RecordStore(path, verifier, clock=clock)
    try:
        assert len(again) == 2
        assert again[node_key("st-alpha")] == node
        assert again[provider_key(FRAGMENT)] == held
        # The seq it held before the restart still guards against replays.
        assert again.put(provider_key(FRAGMENT), provider(alpha, "st-alpha", 1)) is False
    finally:
        again.close()


def test_expired_records_are_never_returned_and_are_pruned(
    tmp_path: Path, verifier: Federation, clock: Clock, alpha: Ed25519Signer
) -> None:
    path = tmp_path / "dht.sqlite"
    store = RecordStore(path, verifier, clock=clock)
    short = provider(alpha, "st-alpha", 1, expires_at=NOW + 60)
    long = sign_record(node_record(alpha, "st-alpha", expires_at=NOW + 600), alpha)
    store[provider_key(FRAGMENT)] = short
    store[node_key("st-alpha")] = long
    clock.now = NOW + 60
    assert store.get(provider_key(FRAGMENT)) is None
    assert store.values_for(provider_key(FRAGMENT)) == []
    assert list(store) == [(node_key("st-alpha"), long)]
    assert store.prune_expired() == 1
    assert len(store) == 1
    store.close()
    clock.now = NOW + 600
    reopened = RecordStore(path, verifier, clock=clock)  # prunes on open
    assert len(reopened) == 0
    reopened.close()


def test_iter_older_than_follows_storage_time(
    store: RecordStore, alpha: Ed25519Signer, clock: Clock
) -> None:
    key = provider_key(FRAGMENT)
    raw = provider(alpha, "st-alpha", 1, expires_at=NOW + 7200)
    store[key] = raw
    assert list(store.iter_older_than(3600)) == []
    clock.now += 3600
    assert list(store.iter_older_than(3600)) == [(key, raw)]
    store[key] = raw  # stored again (someone republished it): young again
    assert list(store.iter_older_than(3600)) == []


def test_iteration_pages_see_every_slot_once_while_rows_change(
    store: RecordStore, alpha: Ed25519Signer, clock: Clock
) -> None:
    fragments = fragment_ids(600, seed=3)
    records = {
        provider_key(fid): sign_record(
            provider_record(fid, "st-alpha", expires_at=NOW + 7200), alpha
        )
        for fid in fragments
    }
    for key, raw in records.items():
        store[key] = raw
    clock.now += 3600
    seen = []
    for key, raw in store.iter_older_than(3600):
        store[key] = raw  # what the package's republish does between items
        seen.append(key)
    assert sorted(seen) == sorted(records)
    assert dict(store) == records


def test_row_bound(
    tmp_path: Path, verifier: Federation, clock: Clock, alpha: Ed25519Signer
) -> None:
    store = RecordStore(tmp_path / "dht.sqlite", verifier, clock=clock, max_rows=2)
    first, second, third = fragment_ids(3, seed=4)
    short = sign_record(provider_record(first, "st-alpha", expires_at=NOW + 10), alpha)
    assert store.put(provider_key(first), short)
    assert store.put(provider_key(second), sign_record(provider_record(second, "st-alpha"), alpha))
    third_raw = sign_record(provider_record(third, "st-alpha"), alpha)
    assert store.put(provider_key(third), third_raw) is False  # full
    newer = sign_record(provider_record(second, "st-alpha", seq=2), alpha)
    assert store.put(provider_key(second), newer)  # a held slot can still be updated
    clock.now += 10  # the short record expires: room again
    assert store.put(provider_key(third), third_raw)
    assert len(store) == 2
    store.close()


def test_refuses_a_store_written_by_a_newer_schema(tmp_path: Path, verifier: Federation) -> None:
    path = tmp_path / "dht.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError, match="newer"):
        RecordStore(path, verifier)


def test_refuses_a_file_that_is_not_a_database(tmp_path: Path, verifier: Federation) -> None:
    path = tmp_path / "dht.sqlite"
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(ConfigError):
        RecordStore(path, verifier)
