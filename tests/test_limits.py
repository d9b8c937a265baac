"""
Tests for the limits and liveness of connections: --max-connections,
--max-pending-bytes, --idle-timeout, --message-timeout, --heartbeat.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.handlers import Echo
from tcpcomm.options import Options
from tcpcomm.templates import Template, Texts
from tcpcomm.wire.framing import FRAMINGS
from tcpcomm.wire.protocol import Limits, MessageFactory, Refusal

from .support import NOON, connect, hubOf, makeHub
from .test_framing import frame


class MaxConnectionsTests(SynchronousTestCase):
    """
    A server at --max-connections refuses one more with a framed message.
    """

    def test_refusedInEachFraming(self) -> None:
        """The peer over the limit gets --full-reply in its framing and is closed; the others stay."""
        for framing in ["line", "netstring", "int32", "raw"]:
            clock = Clock()
            clock.advance(NOON)
            hub = makeHub(clock)
            hub.texts = Texts(
                encoding="utf-8",
                replyDelay=0,
                reply=Template("r", "utf-8"),
                errorReply=Template("e", "utf-8"),
                fullReply=Template("full", "utf-8"),
            )
            factory = MessageFactory(FRAMINGS[framing], hub, Limits(maxConnections=2))
            kept = []
            for port in (1, 2):
                protocol = factory.buildProtocol(None)
                transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
                protocol.makeConnection(transport)
                kept.append(transport)
            extra = factory.buildProtocol(None)
            self.assertIsInstance(extra, Refusal)
            transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 3))
            with capturedLogs() as events:
                extra.makeConnection(transport)
            self.assertEqual(transport.value(), frame(framing, b"full"), framing)
            self.assertTrue(transport.disconnecting)
            self.assertEqual(events[0]["event"], "refused")
            self.assertEqual(len(hub.registry), 2)
            self.assertEqual(hub.stats.refused, 1)
            self.assertFalse(any(t.disconnecting for t in kept))

    def test_roomAgainAfterLeaving(self) -> None:
        """Once a client leaves, the next one is accepted."""
        hub = makeHub(Clock())
        factory = MessageFactory(FRAMINGS["line"], hub, Limits(maxConnections=1))
        first = factory.buildProtocol(None)
        first.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1)))
        self.assertIsInstance(factory.buildProtocol(None), Refusal)
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        first.connectionLost(Failure(ConnectionDone()))
        self.assertNotIsInstance(factory.buildProtocol(None), Refusal)


class SlowConsumerTests(SynchronousTestCase):
    """
    A peer that does not read is cut off once too much waits for it.
    """

    def test_registeredAsProducer(self) -> None:
        """Each connection is a streaming producer of what it writes."""
        protocol, transport, _, _ = connect()
        self.assertIs(transport.producer, protocol)
        self.assertTrue(transport.streaming)

    def test_pausedKeepsReading(self) -> None:
        """A full transport does not stop reading (TLS pauses producers until its handshake ends)."""
        protocol, transport, _, _ = connect()
        protocol.pauseProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertTrue(protocol.writePaused)
        protocol.resumeProducing()
        self.assertFalse(protocol.writePaused)

    def test_cutAtCap(self) -> None:
        """Past --max-pending-bytes written while paused, the peer is aborted and logged."""
        hub = makeHub(Clock(), handler=Echo)
        protocol, transport, _, _ = connect(hub=hub, maxPendingBytes=100)
        protocol.pauseProducing()
        with capturedLogs() as events:
            for _ in range(9):
                protocol.sendMessage(b"x" * 9)  # 10 bytes a line: 90
            self.assertFalse(transport.disconnected)
            protocol.sendMessage(b"x" * 10)  # 101
            protocol.sendMessage(b"x" * 10)
        self.assertTrue(transport.disconnected)
        self.assertEqual([e["event"] for e in events], ["slow-consumer"])
        self.assertEqual(hub.stats.slowConsumers, 1)

    def test_drainResetsCount(self) -> None:
        """A peer that catches up starts from zero again."""
        protocol, transport, _, _ = connect(maxPendingBytes=100)
        for _ in range(5):
            protocol.pauseProducing()
            protocol.sendMessage(b"x" * 80)
            protocol.resumeProducing()
        self.assertFalse(transport.disconnected)


class TimeoutTests(SynchronousTestCase):
    """
    Silent peers and unfinished messages are closed on the clock.
    """

    def test_idle(self) -> None:
        """A peer silent for --idle-timeout is closed; any bytes count as activity."""
        protocol, transport, clock, factory = connect(idleTimeout=10)
        clock.advance(9.9)
        protocol.dataReceived(b"\n")
        clock.advance(9.9)
        self.assertFalse(transport.disconnected)
        with capturedLogs() as events:
            clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(events[0]["event"], "timeout")
        self.assertIn("--idle-timeout", events[0]["log_format"])
        self.assertEqual(factory.stats.timeouts, 1)

    def test_trickle(self) -> None:
        """A message trickled a byte at a time is cut at --message-timeout, idle or not."""
        for framing in ["line", "netstring", "int32"]:
            protocol, transport, clock, _ = connect(framing, idleTimeout=60, messageTimeout=12)
            wire = frame(framing, b"slowloris")
            for i in range(6):  # one byte every 2 s, from 0 s to 10 s
                if i:
                    clock.advance(2)
                protocol.dataReceived(wire[i : i + 1])
            self.assertFalse(transport.disconnected, framing)
            clock.advance(1.9)
            self.assertFalse(transport.disconnected, framing)
            clock.advance(0.1)
            self.assertTrue(transport.disconnected, framing)

    def test_finishedMessageResets(self) -> None:
        """Messages finished in time, however slowly begun, never trip the timeout."""
        protocol, transport, clock, _ = connect(messageTimeout=5)
        for _ in range(10):
            protocol.dataReceived(b"par")
            clock.advance(4)
            protocol.dataReceived(b"t\n")
            clock.advance(100)
        self.assertFalse(transport.disconnected)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_timersStopOnDisconnect(self) -> None:
        """No timer outlives its connection."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        protocol, transport, clock, _ = connect(idleTimeout=10, messageTimeout=5, heartbeat=3)
        protocol.dataReceived(b"partial")
        self.assertNotEqual(clock.getDelayedCalls(), [])
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])


class HeartbeatTests(SynchronousTestCase):
    """
    Heartbeats are empty messages: sent on a timer, never answered.
    """

    def test_sent(self) -> None:
        """With --heartbeat, an empty message goes out every interval."""
        protocol, transport, clock, _ = connect(heartbeat=3)
        clock.advance(2.9)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.1)
        self.assertEqual(transport.value(), b"\n")
        clock.advance(3)
        self.assertEqual(transport.value(), b"\n\n")

    def test_receivedIsNotAMessage(self) -> None:
        """An empty message is counted, not logged as a message, not answered, not handled."""
        protocol, transport, clock, factory = connect(delay=0)
        with capturedLogs() as events:
            protocol.dataReceived(b"\n\r\n")
        self.assertEqual(transport.value(), b"")
        self.assertEqual(events, [])
        self.assertEqual(factory.stats.heartbeatsIn, 2)
        self.assertEqual(hubOf(factory).stats.messagesIn, 0)


class LimitOptionsTests(SynchronousTestCase):
    """
    The limit options' defaults, and what they refuse.
    """

    def test_defaults(self) -> None:
        """10000 connections, 1 MiB pending, 60 s message timeout and keep-alive, the rest off."""
        sub = Options()
        sub.parseOptions(["server"])
        o = sub.subOptions
        self.assertEqual(
            (o["max-connections"], o["max-pending-bytes"], o["idle-timeout"]), (10000, 1 << 20, 0)
        )
        self.assertEqual((o["message-timeout"], o["heartbeat"], o["keepalive"]), (60, 0, 60))
        self.assertEqual(o["full-reply"].text, "server full {time}")

    def test_heartbeatNeedsFraming(self) -> None:
        """--heartbeat with --framing raw is refused: raw has no empty message."""
        error = self.assertRaises(
            UsageError, Options().parseOptions, ["client", "--framing", "raw", "--heartbeat", "5"]
        )
        self.assertIn("--heartbeat", str(error))
