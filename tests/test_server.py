"""Tests for L{tcpcomm.server}: listening and stopping, on a memory reactor."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.registry import PeerRegistry
from tcpcomm.server import DisconnectAllService, makeServerService

from .support import connect


class DisconnectAllServiceTests(SynchronousTestCase):
    """
    Stopping the server closes every peer, and does not wait forever.
    """

    def test_closesEveryPeer(self) -> None:
        """Every peer is told to close; the stop completes when all are gone."""
        registry = PeerRegistry()
        clock = Clock()
        peers = [connect(port=p, registry=registry, clock=clock) for p in (1, 2)]
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
        registry = PeerRegistry()
        clock = Clock()
        protocol, transport, _, _ = connect(registry=registry, clock=clock)
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


class MakeServerServiceTests(SynchronousTestCase):
    """
    Listeners are built from endpoint descriptions and start only with the service.
    """

    def test_listensOnStartOnly(self) -> None:
        """Nothing listens until the service starts; then every description is listened on."""
        reactor = MemoryReactorClock()
        registry = PeerRegistry()
        _, _, _, factory = connect(registry=registry)
        service = makeServerService(
            ["tcp:9527:interface=127.0.0.1:backlog=7", "tcp:9528"], factory, registry, reactor, 10
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
        registry = PeerRegistry()
        protocol, transport, _, factory = connect(registry=registry)
        service = makeServerService(["tcp:9527"], factory, registry, reactor, 10)
        children = list(service)
        self.assertIsInstance(children[0], DisconnectAllService)
        self.assertEqual(len(children), 2)
        service.startService()
        service.stopService()
        self.assertTrue(transport.disconnecting)
