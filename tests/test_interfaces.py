"""
Tests that the objects each layer hands the others provide, in full, the
interfaces of L{tcpcomm.interfaces} they are seen through.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.exceptions import BrokenImplementation
from zope.interface.verify import verifyObject

from tcpcomm.interfaces import IConversation, IHub, IPeer, ISession, ISide, IStats
from tcpcomm.wire.framing import FRAMINGS

from .support import connect, hubOf, makeHub


class InterfaceTests(SynchronousTestCase):
    """
    Connections, sessions, hubs and their totals have every method and
    attribute their interfaces name.
    """

    def test_peer(self) -> None:
        """The connection of every framing provides IPeer."""
        for framing in FRAMINGS:
            protocol, _, _, _ = connect(framing)
            self.assertTrue(verifyObject(IPeer, protocol), framing)

    def test_session(self) -> None:
        """A session provides ISession to handlers and IConversation to its connection."""
        protocol, _, _, _ = connect()
        self.assertTrue(verifyObject(ISession, protocol.conversation))
        self.assertTrue(verifyObject(IConversation, protocol.conversation))

    def test_hub(self) -> None:
        """A hub provides IHub to its handler and ISide to its connections' factory."""
        _, _, _, factory = connect()
        hub = hubOf(factory)
        self.assertTrue(verifyObject(IHub, hub))
        self.assertTrue(verifyObject(ISide, hub))
        self.assertTrue(verifyObject(IStats, hub.stats))

    def test_attributesChecked(self) -> None:
        """A missing attribute fails the check, so the tests above check attributes too."""
        hub = makeHub(Clock())
        del hub.texts
        self.assertRaises(BrokenImplementation, verifyObject, IHub, hub)
