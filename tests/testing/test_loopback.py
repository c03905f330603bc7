"""Test ports come from below the ephemeral range, so no outgoing connection takes one."""

from __future__ import annotations

import socket

from meshpacs.testing.loopback import _ephemeral_low, free_port


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(port < _ephemeral_low() for port in ports)
    for port in ports[:5]:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", port))
            udp.bind(("127.0.0.1", port))


def test_an_outgoing_connection_never_lands_on_a_handed_out_port() -> None:
    taken = {free_port() for _ in range(20)}
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        clients = [socket.create_connection(server.getsockname()) for _ in range(64)]
        try:
            assert not {c.getsockname()[1] for c in clients} & taken
        finally:
            for client in clients:
                client.close()
