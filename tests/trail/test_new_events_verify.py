"""``meshpacs audit verify`` passes on a site trail holding every new kind of event, and
fails once one of them is changed; the throttle's counting, with a clock we move."""

from __future__ import annotations

from pathlib import Path

from meshpacs.node.config import load_config
from meshpacs.node.site import create_site, load_site_secret
from meshpacs.trail import TrailWriter, trail_dir
from meshpacs.trail.log import LOG_FILE
from meshpacs.trail.messages import (
    NODE_AUTHENTICATION,
    AuditSource,
    Outcome,
    Participant,
    StudyCount,
    StudyRef,
    begin_transferring,
    export,
    instances_transferred,
    security_alert,
    user_authentication,
)
from meshpacs.trail.throttle import OTHER_SOURCES, Throttle, suppressed_note

from .test_cli import event_code, events_of, run


def test_verify_passes_on_the_new_events_and_fails_on_a_changed_one(tmp_path: Path) -> None:
    created = create_site(tmp_path / "site", "st-marys", "MESH_STM", 11112, {})
    config = load_config(created.config_path)
    trail = TrailWriter.for_site(
        config.data_dir, load_site_secret(config.key_file), AuditSource("MESH_STM", "st-marys")
    )
    peer = Participant("ROGUE", network_address="192.0.2.1", requestor=True)
    moved = [StudyCount(instances=3)]
    for event in (
        security_alert(trail.application, NODE_AUTHENTICATION, others=(peer,),
                       outcome=Outcome.MINOR_FAILURE, description="refused"),
        user_authentication(peer, trail.application, outcome=Outcome.MINOR_FAILURE),
        begin_transferring(trail.application, Participant("DEST"), moved, others=(peer,)),
        instances_transferred(trail.application, Participant("DEST"), moved, others=(peer,)),
        export(trail.application, Participant("federation partners"), [StudyRef("ab" * 32)],
               others=(Participant("site-b"),)),
    ):  # fmt: skip
        trail.record(event)
    code, out, _ = run("audit", "verify", "--config", created.config_path)
    assert code == 0, out
    assert "6 entries" in out
    assert [event_code(e) for e in events_of(created.config_path)] == [
        "110113", "110113", "110114", "110102", "110104", "110106",
    ]  # fmt: skip
    log = trail_dir(config.data_dir) / LOG_FILE
    data = log.read_bytes()
    log.write_bytes(data.replace(b"site-b", b"site-c", 1))
    assert run("audit", "verify", "--config", created.config_path)[0] == 1


def test_the_throttle_admits_one_a_minute_per_source_and_counts_the_rest() -> None:
    now = [0.0]
    throttle = Throttle(60.0, max_sources=2, clock=lambda: now[0])
    assert throttle.admit("a") == 0
    assert [throttle.admit("a") for _ in range(3)] == [None, None, None]
    assert throttle.admit("b") == 0  # another source is not held back by a's
    now[0] = 59.9
    assert throttle.admit("a") is None
    now[0] = 60.0
    assert throttle.admit("a") == 4  # the four counted since
    assert suppressed_note(4) == "; 4 more like it from the same source since the last one recorded"
    assert suppressed_note(0) == ""
    # The table holds two: b, stale with nothing counted, makes room for c; then a and c
    # are fresh, and newcomers share the one entry of all others.
    assert throttle.admit("c") == 0 and "b" not in throttle._sources
    assert throttle.admit("d") == 0 and OTHER_SOURCES in throttle._sources
    assert throttle.admit("e") is None
    assert len(throttle._sources) == 3
