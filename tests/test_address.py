"""Tests for L{tcpcomm.wire.address}: addresses as people write them, and peer ids."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.wire.address import PeerIds, addressText

from .support import connect


class AddressTextTests(SynchronousTestCase):
    """
    Addresses read as people write them.
    """

    def test_ipv4(self) -> None:
        """An IPv4 address is host:port."""
        self.assertEqual(addressText(IPv4Address("TCP", "10.0.0.1", 5)), "10.0.0.1:5")

    def test_ipv6(self) -> None:
        """An IPv6 address is [host]:port."""
        self.assertEqual(addressText(IPv6Address("TCP", "::1", 5)), "[::1]:5")

    def test_unix(self) -> None:
        """A named UNIX socket is unix:path, and the unnamed peer of one is unix."""
        self.assertEqual(addressText(UNIXAddress(b"/run/x.sock")), "unix:/run/x.sock")
        self.assertEqual(addressText(UNIXAddress(None)), "unix")

    def test_peerAddress(self) -> None:
        """A connection's and its session's address is its peer's, as people write it."""
        protocol, _, _, _ = connect(port=40522)
        self.assertEqual(protocol.address, "127.0.0.1:40522")
        self.assertEqual(protocol.conversation.address, "127.0.0.1:40522")  # type: ignore[attr-defined]


class PeerIdTests(SynchronousTestCase):
    """
    Peer ids are stable and readable.
    """

    def test_ipv4(self) -> None:
        """An IPv4 peer is host:port."""
        self.assertEqual(PeerIds().idFor(IPv4Address("TCP", "10.0.0.1", 5)), "10.0.0.1:5")

    def test_ipv6(self) -> None:
        """An IPv6 peer is [host]:port."""
        self.assertEqual(PeerIds().idFor(IPv6Address("TCP", "::1", 5)), "[::1]:5")

    def test_unnamed(self) -> None:
        """Peers without a name (UNIX sockets) get distinct serial ids."""
        ids = PeerIds()
        first = ids.idFor(UNIXAddress(None))
        second = ids.idFor(UNIXAddress(None))
        self.assertNotEqual(first, second)
        self.assertTrue(first.startswith("unix#"), first)
