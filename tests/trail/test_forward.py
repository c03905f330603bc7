"""The queued forwarder against a real TLS collector: order, outages, a full queue, no waiting."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshpacs.trail.forward import QueuedForwarder
from meshpacs.trail.log import TrailLog, read_entries
from meshpacs.trail.messages import (
    NODE_AUTHENTICATION,
    AuditEvent,
    AuditSource,
    Participant,
    application_activity,
    security_alert,
)
from meshpacs.trail.syslog import SyslogSender
from meshpacs.trail.writer import TrailWriter
from tests.trail.conftest import Collector

KEY = b"f" * 32


def _writer(tmp_path: Path, forward: QueuedForwarder) -> TrailWriter:
    return TrailWriter(
        TrailLog(tmp_path / "trail", KEY), AuditSource("MESH_A", "site-a"), forward=forward
    )


def _event(n: int) -> AuditEvent:
    return security_alert(Participant("MESH_A"), NODE_AUTHENTICATION, description=f"event {n}")


def _kept(tmp_path: Path) -> list[bytes]:
    return [entry.message for entry in read_entries(tmp_path / "trail", KEY)]


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that takes connections into its backlog and never answers a TLS hello."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as listener:
        yield listener.getsockname()[1]


def test_records_from_many_threads_arrive_in_the_trails_order(
    tmp_path: Path, collector: Collector
) -> None:
    writer = _writer(
        tmp_path, QueuedForwarder(SyslogSender("127.0.0.1", collector.port, collector.context))
    )

    def write(first: int) -> None:
        for n in range(first, first + 25):
            writer.record(_event(n))

    threads = [threading.Thread(target=write, args=(i * 100,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert collector.wait_for(101)  # the trail's own start, then 100 events
    writer.close()
    assert collector.messages() == _kept(tmp_path)


def test_a_collector_that_goes_down_and_comes_back_gets_what_waited_and_what_followed(
    tmp_path: Path, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    sender = SyslogSender("127.0.0.1", collector.port, collector.context, timeout=2)
    forward = QueuedForwarder(sender, min_backoff=0.05, max_backoff=0.2)
    writer = _writer(tmp_path, forward)
    with caplog.at_level(logging.WARNING, logger="meshpacs.trail"):
        writer.record(_event(1))
        assert collector.wait_for(2)
        collector.stop()
        for n in range(2, 6):
            writer.record(_event(n))
        deadline = time.monotonic() + 10
        while "unreachable" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        assert forward.pending == 4
        collector.start()
        writer.record(_event(6))
        assert collector.wait_for(7)
        writer.close()
    assert collector.messages() == _kept(tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("audit collector unreachable" in w for w in warnings), warnings
    assert any("reachable again" in w for w in warnings), warnings
    assert not any("event " in w for w in warnings)  # counts, never a message's content


def test_a_full_queue_drops_the_oldest_and_counts_them(
    tmp_path: Path, collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    collector.stop()
    sender = SyslogSender("127.0.0.1", collector.port, collector.context, timeout=2)
    forward = QueuedForwarder(sender, capacity=3, min_backoff=0.3, max_backoff=0.3)
    with caplog.at_level(logging.WARNING, logger="meshpacs.trail"):
        for n in range(6):
            forward.submit(f"record {n}".encode())
        assert forward.dropped == 3 and forward.pending == 3
        collector.start()
        assert collector.wait_for(3)
        forward.close()
    assert collector.records == [b"record 3", b"record 4", b"record 5"]
    assert forward.sent == 3
    assert any("3 dropped" in r.getMessage() for r in caplog.records), caplog.text


def test_submitting_never_waits_for_a_collector_that_hangs(tmp_path: Path, black_hole: int) -> None:
    sender = SyslogSender("127.0.0.1", black_hole, ssl.create_default_context(), timeout=10)
    writer = _writer(tmp_path, QueuedForwarder(sender))
    began = time.monotonic()
    for n in range(50):
        writer.record(_event(n))
    assert time.monotonic() - began < 5  # each send would wait 10 s for the handshake
    began = time.monotonic()
    writer.close(timeout=0.5)
    assert time.monotonic() - began < 3  # and stopping does not wait for it either
    assert len(_kept(tmp_path)) == 51


def test_a_closed_forwarder_takes_no_more(collector: Collector) -> None:
    forward = QueuedForwarder(SyslogSender("127.0.0.1", collector.port, collector.context))
    forward.submit(b"before")
    forward.close()
    forward.submit(b"after")
    assert collector.wait_for(1)
    time.sleep(0.2)
    assert collector.records == [b"before"]


def test_the_application_event_is_forwarded_like_any_other(
    tmp_path: Path, collector: Collector
) -> None:
    writer = _writer(
        tmp_path, QueuedForwarder(SyslogSender("127.0.0.1", collector.port, collector.context))
    )
    writer.record(application_activity(writer.application, started=True))
    assert collector.wait_for(2)
    writer.close()
    assert b"110120" in collector.messages()[1]
