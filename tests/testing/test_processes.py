"""The child-process helpers: free ports that an outgoing connection cannot take first."""

from __future__ import annotations

import socket

from aether_django.testing.processes import find_free_port, port_is_free


def _ephemeral_range() -> tuple[int, int]:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
        low, high = (int(part) for part in ports.read().split())
    return low, high


def test_a_free_port_is_outside_the_range_outgoing_connections_take_theirs_from():
    """A port is picked some time before the server binds it. Picked from the kernel's
    ephemeral range (``bind(("", 0))``), it could meanwhile become the local port of an
    outgoing connection, such as a route another server of the same cluster opens, and
    the server then exited at start-up with 'address already in use'."""
    low, high = _ephemeral_range()
    for _ in range(200):
        port = find_free_port()
        assert not low <= port <= high, port


def test_free_ports_handed_out_one_after_another_are_distinct():
    """Ports picked for a cluster are all picked before any server binds one."""
    ports = [find_free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)


def test_a_free_port_can_be_listened_on_and_a_listened_one_is_not_free():
    port = find_free_port()
    assert port_is_free(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert not port_is_free(port)
