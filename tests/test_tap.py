"""Tests for L{tcpcomm.tap} and the twistd plugin that points at it."""

from __future__ import annotations

from twisted.application.internet import ClientService
from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm import tap
from tcpcomm.options import Options


def build(*args: str) -> tuple[MultiService, MemoryReactorClock]:
    options = Options()
    options.parseOptions(list(args))
    reactor = MemoryReactorClock()
    return tap.makeService(options, reactor), reactor


class MakeServiceTests(SynchronousTestCase):
    """
    makeService wires services but starts nothing.
    """

    def test_serverListensOnStart(self) -> None:
        """The server listens on --port/--interface/--backlog, only once started."""
        service, reactor = build("server", "-p", "4000", "-i", "127.0.0.1", "--backlog", "9")
        self.assertIsInstance(service, MultiService)
        self.assertEqual(reactor.tcpServers, [])
        service.startService()
        self.assertEqual([(s[0], s[2], s[3]) for s in reactor.tcpServers], [(4000, 9, "127.0.0.1")])

    def test_clientConnectsOnStart(self) -> None:
        """The client is a ClientService that connects to --host/--port once started."""
        service, reactor = build("client", "-h", "127.0.0.1", "-p", "4000", "--timeout", "7")
        self.assertIsInstance(list(service)[0], ClientService)
        self.assertEqual(reactor.tcpClients, [])
        service.startService()
        self.assertEqual([(c[0], c[1], c[3]) for c in reactor.tcpClients], [("127.0.0.1", 4000, 7)])

    def test_clientConnectDescription(self) -> None:
        """--connect replaces --host and --port."""
        service, reactor = build("client", "--connect", "tcp:host=127.0.0.2:port=4001")
        service.startService()
        self.assertEqual([c[:2] for c in reactor.tcpClients], [("127.0.0.2", 4001)])


class PluginTests(SynchronousTestCase):
    """
    twistd finds tcpcomm through the plugin, which only delegates.
    """

    def test_plugin(self) -> None:
        """The plugin named tcpcomm points at tcpcomm.tap."""
        from twisted import plugins

        makers = {p.tapname: p for p in getPlugins(IServiceMaker, plugins)}
        self.assertIn("tcpcomm", makers)
        self.assertIs(makers["tcpcomm"].options, tap.Options)
        self.assertIs(makers["tcpcomm"].makeService, tap.makeService)
