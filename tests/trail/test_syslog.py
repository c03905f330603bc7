"""Forwarding to a syslog collector: RFC 5424 records, RFC 5425 framing, over real TLS."""

from __future__ import annotations

import datetime as dt
import re
import socket
import ssl
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshpacs.errors import PeerUnreachable, ProtocolViolation
from meshpacs.trail.log import TrailLog, read_entries
from meshpacs.trail.messages import AuditSource, Participant, application_activity
from meshpacs.trail.syslog import SyslogSender, frame, split_frames, syslog_record
from meshpacs.trail.writer import TrailWriter

KEY = b"k" * 32
RECORD = re.compile(
    rb"<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) - (.*)", re.DOTALL
)  # PRI VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG


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


@dataclass
class Collector:
    port: int
    context: ssl.SSLContext  # the client's, trusting the collector's certificate
    records: list[bytes] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    expected: int = 0


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "collector")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "collector.pem", directory / "collector.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    cert_path, key_path = _self_signed(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.minimum_version = ssl.TLSVersion.TLSv1_2
    server_context.load_cert_chain(cert_path, key_path)
    client_context = ssl.create_default_context(cafile=str(cert_path))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    found = Collector(listener.getsockname()[1], client_context)

    def serve() -> None:
        # Each connection read to its end: a sender that reconnects opens a second one.
        while not found.arrived.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                conn = server_context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                raw.close()  # a client that did not trust us
                continue
            with conn:
                buffer = b""
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    records, buffer = split_frames(buffer + chunk)
                    found.records.extend(records)
                    if len(found.records) >= found.expected:
                        found.arrived.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield found
    listener.close()
    thread.join(10)


def test_records_reach_a_tls_collector_framed(collector: Collector) -> None:
    collector.expected = 3
    sender = SyslogSender("127.0.0.1", collector.port, collector.context)
    sent = [syslog_record(f"<m n='{i}'/>".encode(), hostname="h") for i in range(3)]
    for record in sent:
        sender.send(record)
    assert collector.arrived.wait(10)
    sender.close()
    assert collector.records == sent


def test_the_writer_forwards_exactly_what_it_appended(tmp_path: Path, collector: Collector) -> None:
    collector.expected = 3  # the trail's start (a Security Alert), then the two events
    sender = SyslogSender("127.0.0.1", collector.port, collector.context)
    writer = TrailWriter(
        TrailLog(tmp_path / "trail", KEY), AuditSource("MESH_A", "site-a"), forward=sender
    )
    writer.record(application_activity(writer.application, started=True))
    writer.record(application_activity(writer.application, started=False))
    assert collector.arrived.wait(10)
    sender.close()
    kept = [entry.message for entry in read_entries(tmp_path / "trail", KEY)]
    forwarded = []
    for record in collector.records:
        match = RECORD.fullmatch(record)
        assert match is not None and match.group(6) == b"IHE+RFC-3881"
        forwarded.append(match.group(7))
        assert ET.fromstring(match.group(7)).tag == "AuditMessage"
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
        TrailLog(tmp_path / "trail", KEY), AuditSource("MESH_A", "site-a"), forward=sender
    )
    entry = writer.record(application_activity(Participant("MESH_A"), started=True))
    assert entry.sequence == 2  # after the trail's own start
    assert [e.sequence for e in read_entries(tmp_path / "trail", KEY)] == [1, 2]
