"""A real syslog-over-TLS collector on 127.0.0.1 that can go down and come back."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshpacs.trail.syslog import split_frames

RECORD = re.compile(
    rb"<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) - (.*)", re.DOTALL
)  # PRI VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A CA certificate for 127.0.0.1 (its own issuer) and its key, as PEM files."""
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


class Collector:
    """Accepts TLS connections, splits RFC 5425 frames, keeps every record in arrival order.

    ``stop`` closes the listener and every connection (the collector is down; its port
    refuses connections); ``start`` listens again on the same port.
    """

    def __init__(self, cert_path: Path, key_path: Path) -> None:
        self.ca_file = cert_path
        self._server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server.minimum_version = ssl.TLSVersion.TLSv1_2
        self._server.load_cert_chain(cert_path, key_path)
        self.context = ssl.create_default_context(cafile=str(cert_path))  # the client's
        self.records: list[bytes] = []
        self.connections = 0
        self._changed = threading.Condition()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.port = 0

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: same port
        self.port = listener.getsockname()[1]
        listener.settimeout(0.1)  # a close from another thread does not wake accept()
        self._listener = listener
        self._spawn(self._accept, listener)

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._changed:
            connections, self._open = self._open, []
        for conn in connections:
            # The plain socket's shutdown: it wakes the reader thread, and it is not a
            # TLS close_notify (a collector that dies sends none).
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(10)
        self._threads = []

    def wait_for(self, count: int, timeout: float = 15.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.records) >= count, timeout)

    def messages(self) -> list[bytes]:
        """Each record's MSG (the XML), after checking its RFC 5424 header."""
        found = []
        for record in list(self.records):
            match = RECORD.fullmatch(record)
            assert match is not None, record[:80]
            assert match.group(6) == b"IHE+RFC-3881"
            found.append(match.group(7))
        return found

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # stopped
            try:
                raw.settimeout(10)
                conn = self._server.wrap_socket(raw, server_side=True)
                conn.settimeout(None)
            except (ssl.SSLError, OSError):
                raw.close()  # a client that did not trust us
                continue
            with self._changed:
                self.connections += 1
                self._open.append(conn)
            self._spawn(self._read, conn)

    def _read(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                records, buffer = split_frames(buffer + chunk)
                with self._changed:
                    self.records.extend(records)
                    self._changed.notify_all()


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    cert_path, key_path = self_signed(tmp_path)
    running = Collector(cert_path, key_path)
    running.start()
    yield running
    running.stop()
