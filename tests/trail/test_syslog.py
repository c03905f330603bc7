"""Forwarding to a syslog collector: RFC 5424 records, RFC 5425 framing, over real TLS."""

from __future__ import annotations

import datetime as dt
import re
import socket
import ssl
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from meshpacs.errors import PeerUnreachable, ProtocolViolation
from meshpacs.trail.forward import QueuedForwarder
from meshpacs.trail.log import TrailLog, read_entries
from meshpacs.trail.messages import AuditSource, Participant, application_activity
from meshpacs.trail.syslog import SyslogSender, frame, split_frames, syslog_record
from meshpacs.trail.writer import TrailWriter
from tests.trail.conftest import RECORD, Collector

KEY = b"k" * 32


def test_frames_split_back_whole_and_keep_the_rest() -> None:
    records = [b"one", b"two words", b"x" * 1000]
    stream = b"".join(frame(r) for r in records)
    assert frame(b"one") == b"3 one"
    assert split_frames(stream) == (records, b"")
    got, rest = split_frames(stream[:-10])
    assert got == records[:2] and rest == stream[len(frame(b"one") + frame(b"two words")) : -10]
    assert split_frames(b"12") == ([], b"12")  # the length still arriving


@pytest.mark.parametrize("bad", [b"x3 abc", b"03 abc", b"99999999999 a", b"-1 a"])
def test_a_frame_length_that_is_not_one_is_refused(bad: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        split_frames(bad)


def test_a_record_has_the_atna_header_and_the_xml_as_its_message() -> None:
    when = dt.datetime(2025, 1, 2, 3, 4, 5, 600000, tzinfo=dt.UTC)
    record = syslog_record(b"<AuditMessage/>", hostname="node 1\n", procid="77", at=when)
    match = RECORD.fullmatch(record)
    assert match is not None
    pri, stamp, host, app, procid, msgid, msg = match.groups()
    assert int(pri) == 10 * 8 + 5  # authpriv.notice
    assert stamp == b"2025-01-02T03:04:05.600Z"
    assert (host, app, procid, msgid) == (b"node_1_", b"meshpacs", b"77", b"IHE+RFC-3881")
    assert msg == b"<AuditMessage/>"


def test_records_reach_a_tls_collector_framed(collector: Collector) -> None:
    sender = SyslogSender("127.0.0.1", collector.port, collector.context)
    sent = [syslog_record(f"<m n='{i}'/>".encode(), hostname="h") for i in range(3)]
    for record in sent:
        sender.send(record)
    assert collector.wait_for(3)
    sender.close()
    assert collector.records == sent


def test_a_restarted_collector_gets_the_next_record_on_a_new_connection(
    collector: Collector,
) -> None:
    sender = SyslogSender("127.0.0.1", collector.port, collector.context)
    sender.send(b"first")
    assert collector.wait_for(1)
    collector.stop()
    collector.start()
    # The old connection is dead but writable: without the check before sending, this
    # record would vanish into it without an error.
    sender.send(b"second")
    assert collector.wait_for(2)
    sender.close()
    assert collector.records == [b"first", b"second"] and collector.connections == 2


def test_records_one_after_another_share_one_connection(collector: Collector) -> None:
    sender = SyslogSender("127.0.0.1", collector.port, collector.context)
    for n in range(1, 6):
        sender.send(f"record {n}".encode())
        assert collector.wait_for(n)
        time.sleep(0.02)  # the TLS 1.3 session tickets the collector sent have arrived
    sender.close()
    # Readable is not closed: a TLS 1.3 server's session tickets arrive after the
    # handshake, and once took for a hang-up they cost a new connection for every record.
    assert collector.connections == 1, collector.connections


def test_the_writer_forwards_exactly_what_it_appended(tmp_path: Path, collector: Collector) -> None:
    forward = QueuedForwarder(SyslogSender("127.0.0.1", collector.port, collector.context))
    writer = TrailWriter(
        TrailLog(tmp_path / "trail", KEY), AuditSource("MESH_A", "site-a"), forward=forward
    )
    writer.record(application_activity(writer.application, started=True))
    writer.record(application_activity(writer.application, started=False))
    # the trail's start (a Security Alert), then the two events
    assert collector.wait_for(3)
    writer.close()
    kept = [entry.message for entry in read_entries(tmp_path / "trail", KEY)]
    forwarded = collector.messages()
    assert all(ET.fromstring(m).tag == "AuditMessage" for m in forwarded)
    assert forwarded == kept


def test_a_collector_that_is_not_trusted_is_refused(collector: Collector) -> None:
    untrusting = ssl.create_default_context()  # the system CAs: not the collector's own
    sender = SyslogSender("127.0.0.1", collector.port, untrusting, timeout=5)
    with pytest.raises(PeerUnreachable, match=re.escape("syslog collector 127.0.0.1")):
        sender.send(b"<AuditMessage/>")
    assert collector.records == []


def test_an_unreachable_collector_does_not_stop_the_trail(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nobody listens there
    sender = SyslogSender("127.0.0.1", port, ssl.create_default_context(), timeout=2)
    writer = TrailWriter(
        TrailLog(tmp_path / "trail", KEY),
        AuditSource("MESH_A", "site-a"),
        forward=QueuedForwarder(sender),
    )
    entry = writer.record(application_activity(Participant("MESH_A"), started=True))
    assert entry.sequence == 2  # after the trail's own start
    assert [e.sequence for e in read_entries(tmp_path / "trail", KEY)] == [1, 2]
    writer.close(timeout=0.5)
