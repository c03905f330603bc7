"""Sealed study records: everything a recovering site needs, readable only with its key."""

from __future__ import annotations

import secrets

import pytest

from meshpacs.errors import FormatError, UnknownVersion, WrongKey
from meshpacs.metadata import Catalog, ledger
from meshpacs.metadata.ledger import BundlePlan
from meshpacs.metadata.replica import (
    export_study,
    export_unplaced,
    open_record,
    seal_record,
    study_record_id,
)

from .helpers import FakeClock, make_record

KEY = secrets.token_bytes(32)


async def protected_study(catalog: Catalog, clock: FakeClock) -> int:
    await catalog.add_instances(
        [make_record("1.2.3.4.1", data=b"one"), make_record("1.2.3.4.2", data=b"two")]
    )
    clock.advance(61)
    await catalog.mark_stable(60)
    ref = await catalog.read(ledger.next_queued_study)
    assert ref is not None
    plan = BundlePlan(k=2, n=3, segment_size=4096, max_bundle_bytes=10**6)
    [bundle] = await catalog.write(
        lambda db: ledger.plan_bundles(db, ref, plan, lambda: (b"B" * 16, b"wrapped"), 1.0)
    )
    await catalog.write(lambda db: ledger.record_encoded(db, bundle, 99, b"h" * 32))
    await catalog.write(lambda db: ledger.record_placement(db, bundle, 0, "site-b", "f" * 64, 2))
    return ref


async def test_a_study_record_round_trips_with_bundles_and_placements(
    catalog: Catalog, clock: FakeClock
) -> None:
    ref = await protected_study(catalog, clock)
    record = await catalog.read(lambda db: export_study(db, ref))
    record_id, sealed = seal_record(KEY, "site-a", record)
    assert record_id == study_record_id(KEY, "1.2.3.1")
    back = open_record(KEY, "site-a", record_id, sealed)
    assert back == record
    doc = back.document
    assert doc["patient"]["name"] == "Test^Patient"
    assert [i["sop_instance_uid"] for i in doc["instances"]] == ["1.2.3.4.1", "1.2.3.4.2"]
    [bundle] = doc["bundles"]
    assert bundle["bundle_id"] == (b"B" * 16).hex()
    assert bundle["wrapped_key"] == b"wrapped".hex()
    assert [m["position"] for m in bundle["members"]] == [0, 1]
    assert bundle["placements"][0]["holder_site"] == "site-b"


async def test_sealed_bytes_carry_no_phi(catalog: Catalog, clock: FakeClock) -> None:
    ref = await protected_study(catalog, clock)
    record = await catalog.read(lambda db: export_study(db, ref))
    record_id, sealed = seal_record(KEY, "site-a", record)
    for secret in [b"Test^Patient", b"PID1", b"1.2.3.1", b"1.2.3.4.1", b"ACC1", b"20240102"]:
        assert secret not in sealed
        assert secret.decode() not in record_id


async def test_tampered_wrong_key_wrong_site_or_id_are_refused(
    catalog: Catalog, clock: FakeClock
) -> None:
    ref = await protected_study(catalog, clock)
    record = await catalog.read(lambda db: export_study(db, ref))
    record_id, sealed = seal_record(KEY, "site-a", record)
    flipped = bytearray(sealed)
    flipped[-20] ^= 1
    with pytest.raises(WrongKey):
        open_record(KEY, "site-a", record_id, bytes(flipped))
    with pytest.raises(WrongKey):
        open_record(secrets.token_bytes(32), "site-a", record_id, sealed)
    with pytest.raises(WrongKey):
        open_record(KEY, "site-b", record_id, sealed)
    with pytest.raises(WrongKey):
        open_record(KEY, "site-a", "0" * 64, sealed)
    with pytest.raises(UnknownVersion):
        open_record(KEY, "site-a", record_id, b"\x09" + sealed[1:])
    with pytest.raises(FormatError):
        open_record(KEY, "site-a", record_id, sealed[:10])


async def test_a_bundle_of_unparsed_instances_has_a_record_of_its_own(
    catalog: Catalog, clock: FakeClock
) -> None:
    await catalog.add_instances(
        [make_record("1.2.3.9.1", data=b"junk", placed=False, parse_error="unreadable")]
    )
    plan = BundlePlan(k=2, n=3, segment_size=4096, max_bundle_bytes=10**6)
    [bundle] = await catalog.write(
        lambda db: ledger.plan_unplaced(db, plan, lambda: (b"U" * 16, b"w"), 5.0, clock() + 1)
    )
    record = await catalog.read(lambda db: export_unplaced(db, bundle))
    assert record.study_uid == f"unplaced-{(b'U' * 16).hex()}"
    assert [i["sop_instance_uid"] for i in record.document["instances"]] == ["1.2.3.9.1"]
    record_id, sealed = seal_record(KEY, "site-a", record)
    assert open_record(KEY, "site-a", record_id, sealed) == record
