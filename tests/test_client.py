"""Tests for L{tcpcomm.client}: the retry policy and the reconnecting service."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.client import ClientFactory, ClientStatus, RetryPolicy, makeClientService
from tcpcomm.wire.framing import LineFraming
from tcpcomm.wire.protocol import Limits

from .support import NOON, makeHub


def delays(policy: RetryPolicy, count: int) -> list[float]:
    return [policy(1) for _ in range(count)]


class RetryPolicyTests(SynchronousTestCase):
    """
    The delay grows from --retry-initial to --retry-max, with equal jitter.
    """

    def test_growsToCap(self) -> None:
        """With the largest jitter draw the delays double from the initial one up to the cap."""
        policy = RetryPolicy(Clock(), 1, 30, 10, random=lambda: 1.0)
        self.assertEqual(delays(policy, 8), [1, 2, 4, 8, 16, 30, 30, 30])

    def test_jitterIsHalfTheDelay(self) -> None:
        """With the smallest jitter draw each delay is half of the full one."""
        policy = RetryPolicy(Clock(), 1, 30, 10, random=lambda: 0.0)
        self.assertEqual(delays(policy, 7), [0.5, 1, 2, 4, 8, 15, 15])

    def test_neverAboveMax(self) -> None:
        """No delay exceeds --retry-max, whatever the jitter draw."""
        import random

        policy = RetryPolicy(Clock(), 0.1, 3, 10, random=random.Random(7).random)
        self.assertTrue(all(0 < d <= 3 for d in delays(policy, 50)))

    def test_shortConnectionDoesNotReset(self) -> None:
        """A connection closed soon after it opened counts as a failure, so the delay keeps growing."""
        clock = Clock()
        policy = RetryPolicy(clock, 1, 30, 10, random=lambda: 1.0)
        seen = []
        for _ in range(6):
            policy.connected()
            clock.advance(0.01)
            policy.disconnected()
            seen.append(policy(1))
        self.assertEqual(seen, [1, 2, 4, 8, 16, 30])

    def test_longConnectionResets(self) -> None:
        """A connection that stayed up --retry-reset seconds starts the delays afresh."""
        clock = Clock()
        policy = RetryPolicy(clock, 1, 30, 10, random=lambda: 1.0)
        delays(policy, 4)
        policy.connected()
        clock.advance(10)
        policy.disconnected()
        self.assertEqual(delays(policy, 2), [1, 2])


class ClientServiceTests(SynchronousTestCase):
    """
    The client service connects on start, greets, and retries with backoff.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(NOON)
        self.policy = RetryPolicy(self.reactor, 1, 30, 10, random=lambda: 1.0)
        hub = makeHub(self.reactor, greeting="hello {time}")
        self.status = ClientStatus("127.0.0.1:9527")
        self.factory = ClientFactory(
            LineFraming, hub, Limits(maxMessageSize=1024), self.policy, self.status
        )
        from twisted.internet.endpoints import TCP4ClientEndpoint

        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", 9527)
        self.service = makeClientService(endpoint, self.factory, self.reactor)

    def refuse(self) -> None:
        """Refuse the latest connection attempt."""
        connector = self.reactor.connectors[-1]
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))

    def accept(self) -> tuple[Any, StringTransport]:
        """Accept the latest connection attempt."""
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9527))
        assert protocol is not None
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 9527))
        protocol.makeConnection(transport)
        return protocol, transport

    def test_connectsOnlyWhenStarted(self) -> None:
        """Nothing connects before startService."""
        self.assertEqual(self.reactor.tcpClients, [])
        self.service.startService()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.reactor.tcpClients[0][:2], ("127.0.0.1", 9527))

    def test_refusedRetriesWithGrowingDelay(self) -> None:
        """Refused attempts are logged and retried after 1, 2, 4... seconds, forever."""
        self.service.startService()
        with capturedLogs() as events:
            for delay in [1, 2, 4, 8, 16, 30, 30]:
                attempts = len(self.reactor.tcpClients)
                self.refuse()
                self.reactor.advance(delay - 0.001)
                self.assertEqual(len(self.reactor.tcpClients), attempts)
                self.reactor.advance(0.001)
                self.assertEqual(len(self.reactor.tcpClients), attempts + 1)
        refusals = [e for e in events if e.get("log_format", "").startswith("cannot connect")]
        self.assertEqual(len(refusals), 7)
        self.assertEqual(refusals[0]["server"], "127.0.0.1:9527")

    def test_acceptAndCloseBacksOff(self) -> None:
        """A server that accepts and at once hangs up gets the same growing delay as a refusal."""
        self.service.startService()
        for delay in [1, 2, 4, 8, 16, 30]:
            attempts = len(self.reactor.tcpClients)
            protocol, transport = self.accept()
            protocol.connectionLost(Failure(ConnectionDone()))
            self.reactor.advance(delay - 0.001)
            self.assertEqual(len(self.reactor.tcpClients), attempts)
            self.reactor.advance(0.001)
            self.assertEqual(len(self.reactor.tcpClients), attempts + 1)

    def test_retryLine(self) -> None:
        """Each retry is logged with its real number and delay, across connections that die young too; ClientService's own line, which restarts at 1, is left out."""
        self.service.startService()
        with capturedLogs() as events:
            for delay in [1, 2, 4]:
                self.refuse()
                self.reactor.advance(delay)
            for delay in [8, 16]:
                protocol, transport = self.accept()
                protocol.connectionLost(Failure(ConnectionDone()))
                self.reactor.advance(delay)
        retries = [e for e in events if e.get("event") == "retry"]
        self.assertEqual(
            [(e["attempt"], e["delay"]) for e in retries], [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16)]
        )
        self.assertEqual(formatEvent(retries[3]), "retry 4 to connect to 127.0.0.1:9527 in 8.0 s")
        self.assertEqual(
            [e for e in events if "Scheduling retry" in (e.get("log_format") or "")], []
        )

    def test_greetsAndStopsCleanly(self) -> None:
        """On connect the greeting is sent; stopping closes the connection and stops retrying."""
        self.service.startService()
        protocol, transport = self.accept()
        self.assertTrue(transport.value().startswith(b"hello "))
        protocol.dataReceived(b"ping\n")
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        stopped = self.service.stopService()
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_answersServerAfterDelay(self) -> None:
        """Each message from the server is answered with the client's reply after the delay."""
        self.service.startService()
        protocol, transport = self.accept()
        transport.clear()
        protocol.dataReceived(b"response from server\n")
        self.reactor.advance(4.9)
        self.assertEqual(transport.value(), b"")
        self.reactor.advance(0.1)
        self.assertTrue(transport.value().startswith(b"reply "))
