"""Tests for L{tcpcomm.server}: listening and stopping, on a memory reactor."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tcpcomm.descriptors import DescriptorBudget
from tcpcomm.hub.registry import PeerRegistry
from tcpcomm.options import Options
from tcpcomm.server import (
    DisconnectAllService,
    listeningService,
    makeServerService,
    systemBacklog,
)

from .support import FakeFileLimit, connect, hubOf, makeHub


class DisconnectAllServiceTests(SynchronousTestCase):
    """
    Stopping the server closes every peer, and does not wait forever.
    """

    def test_closesEveryPeer(self) -> None:
        """Every peer is told to close; the stop completes when all are gone."""
        clock = Clock()
        hub = makeHub(clock)
        registry = hub.registry
        peers = [connect(port=p, hub=hub) for p in (1, 2)]
        service = DisconnectAllService(registry, clock, timeout=10)
        service.startService()
        stopped = service.stopService()
        assert stopped is not None
        self.assertTrue(all(t.disconnecting for _, t, _, _ in peers))
        self.assertNoResult(stopped)
        for protocol, _, _, _ in peers:
            protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_abortsAfterTimeout(self) -> None:
        """A peer still there after the timeout is aborted."""
        clock = Clock()
        hub = makeHub(clock)
        registry = hub.registry
        protocol, transport, _, _ = connect(hub=hub)
        service = DisconnectAllService(registry, clock, timeout=10)
        service.startService()
        stopped = service.stopService()
        assert stopped is not None
        with capturedLogs() as events:
            clock.advance(10)
        self.assertTrue(transport.disconnected)  # StringTransport's abortConnection
        self.assertIn("aborting", events[0]["log_format"])
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)

    def test_noPeers(self) -> None:
        """With nobody connected, stopping is immediate."""
        service = DisconnectAllService(PeerRegistry(), Clock(), timeout=10)
        service.startService()
        self.assertIsNone(service.stopService())


def listeners(reactor: Any, *descriptions: str) -> list[tuple[IStreamServerEndpoint, str]]:
    return [(serverFromString(reactor, d), d) for d in descriptions]


@implementer(IStreamServerEndpoint)
class BusyEndpoint:
    """
    An endpoint whose port is always taken.
    """

    def listen(self, factory: object) -> Deferred[IListeningPort]:
        return fail(CannotListenError("127.0.0.1", 9527, OSError("Address already in use")))


class ListeningServiceTests(SynchronousTestCase):
    """
    A listener that cannot listen fails loudly.
    """

    def test_busyPortRaises(self) -> None:
        """startService raises when the port is taken, so twistd exits non-zero."""
        _, _, _, factory = connect()
        service = listeningService(BusyEndpoint(), "tcp:9527", factory)
        self.assertRaises(CannotListenError, service.startService)


class MakeServerServiceTests(SynchronousTestCase):
    """
    Listeners are built from endpoint descriptions and start only with the service.
    """

    def test_listensOnStartOnly(self) -> None:
        """Nothing listens until the service starts; then every description is listened on."""
        reactor = MemoryReactorClock()
        _, _, _, factory = connect()
        registry = hubOf(factory).registry
        service = makeServerService(
            listeners(reactor, "tcp:9527:interface=127.0.0.1:backlog=7", "tcp:9528"),
            factory,
            registry,
            reactor,
            10,
            0,
            FakeFileLimit(),
        )
        self.assertEqual(reactor.tcpServers, [])
        with capturedLogs() as events:
            service.startService()
        self.assertEqual(
            [(p, i, b) for p, _, b, i in reactor.tcpServers],
            [(9527, "127.0.0.1", 7), (9528, "", 50)],
        )
        listening = [e for e in events if e.get("log_format", "").startswith("listening on")]
        self.assertEqual(len(listening), 2)
        self.assertIs(reactor.tcpServers[0][1], factory)

    def test_stopClosesPeersAfterListeners(self) -> None:
        """Stopping stops the listeners first (MultiService stops in reverse), then closes peers."""
        reactor = MemoryReactorClock()
        protocol, transport, _, factory = connect()
        registry = hubOf(factory).registry
        service = makeServerService(
            listeners(reactor, "tcp:9527"), factory, registry, reactor, 10, 0, FakeFileLimit()
        )
        children = list(service)
        self.assertEqual([type(c) for c in children[:2]], [DescriptorBudget, DisconnectAllService])
        self.assertEqual(len(children), 3)
        service.startService()
        service.stopService()
        self.assertTrue(transport.disconnecting)


class SystemBacklogTests(SynchronousTestCase):
    """
    The default --backlog is the longest the system allows.
    """

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_somaxconn(self) -> None:
        """Linux's net.core.somaxconn is read from its /proc file."""
        self.assertEqual(systemBacklog(self.write("4096\n")), 4096)

    def test_fallback(self) -> None:
        """Without a readable number there, Python's socket.SOMAXCONN is used."""
        self.assertEqual(systemBacklog(self.mktemp()), socket.SOMAXCONN)
        self.assertEqual(systemBacklog(self.write("lots\n")), socket.SOMAXCONN)

    def test_portOnly(self) -> None:
        """The default applies to --port; --listen strings keep their own backlog."""
        options = Options()
        options.parseOptions(["server", "--listen", "tcp:9527", "--listen", "tcp:9528:backlog=7"])
        self.assertEqual(
            options.subOptions.listenDescriptions(), ["tcp:9527", "tcp:9528:backlog=7"]
        )
        options = Options()
        options.parseOptions(["server"])
        self.assertIn(f":backlog={systemBacklog()}:", options.subOptions.listenDescriptions()[0])
