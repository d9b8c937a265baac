"""
Liveness both ways, on a L{Clock}: C{--heartbeat N} sends an empty message
after N seconds of sending nothing, and C{--heartbeat-timeout} drops a peer
heard nothing from, on one timer per connection that messages never move.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.client import ClientFactory, ClientStatus, RetryPolicy, makeClientService
from tcpcomm.handlers import Echo
from tcpcomm.options import Options
from tcpcomm.tap import makeLimits
from tcpcomm.wire.framing import FRAMINGS, LineFraming
from tcpcomm.wire.liveness import TICK
from tcpcomm.wire.protocol import Limits, MessageFactory

from .support import NOON, connect, makeHub


class HeartbeatOutTests(SynchronousTestCase):
    """
    A side with --heartbeat sends an empty message only when it has sent
    nothing for that long.
    """

    def test_afterSilence(self) -> None:
        """An empty message goes out N s after the connection began, and every N s while nothing else is sent."""
        protocol, transport, clock, _ = connect(heartbeat=3, heartbeatTimeout=9)
        clock.advance(2.9)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.1)
        self.assertEqual(transport.value(), b"\n")
        clock.advance(3)
        self.assertEqual(transport.value(), b"\n\n")

    def test_notWhileSending(self) -> None:
        """While messages go out more often than every N s, no heartbeat is sent."""
        protocol, transport, clock, _ = connect(heartbeat=3, heartbeatTimeout=9)
        for _ in range(20):
            clock.advance(2)
            protocol.sendMessage(b"x")
            protocol.dataReceived(b"\n")  # heard from, so never timed out
        self.assertEqual(transport.value(), b"x\n" * 20)

    def test_dueAfterLastSent(self) -> None:
        """The heartbeat goes out N s after the last message sent, not on a fixed beat."""
        protocol, transport, clock, _ = connect(heartbeat=3, heartbeatTimeout=9)
        clock.advance(2.5)
        protocol.sendMessage(b"x")
        clock.advance(2.9)  # 5.4: the fixed beat would have sent at 3
        self.assertEqual(transport.value(), b"x\n")
        clock.advance(0.1)  # 5.5: 3 s after the message
        self.assertEqual(transport.value(), b"x\n\n")

    def test_repliesCount(self) -> None:
        """Replies written while a read is handled count as sent."""
        hub = makeHub(Clock(), handler=Echo)
        protocol, transport, clock, _ = connect(hub=hub, heartbeat=3, heartbeatTimeout=9)
        clock.advance(2)
        protocol.dataReceived(b"ping\n")
        self.assertEqual(transport.value(), b"ping\n")
        clock.advance(2.9)
        self.assertEqual(transport.value(), b"ping\n")
        clock.advance(0.1)
        self.assertEqual(transport.value(), b"ping\n\n")


class HeartbeatTimeoutTests(SynchronousTestCase):
    """
    A side with --heartbeat drops a peer it has heard nothing from for
    --heartbeat-timeout seconds.
    """

    def test_closesAfterTimeout(self) -> None:
        """A peer that sends nothing is aborted at --heartbeat-timeout, counted, and logged as timeout with what to set on the other side."""
        protocol, transport, clock, factory = connect(heartbeat=3, heartbeatTimeout=9)
        clock.advance(8.9)
        self.assertFalse(transport.disconnected)
        with capturedLogs() as events:
            clock.advance(0.1)
        self.assertTrue(transport.disconnected)
        self.assertEqual([e["event"] for e in events], ["timeout"])
        self.assertEqual(
            formatEvent(events[0]),
            "disconnecting 127.0.0.1:40000: heard nothing, heartbeats included, for 9 s "
            "(--heartbeat-timeout); if it is alive, give the other side --heartbeat 3 too",
        )
        self.assertEqual(events[0]["seconds"], 9)
        self.assertEqual(factory.stats.timeouts, 1)

    def test_heartbeatsReset(self) -> None:
        """Empty messages received keep a peer alive however long it says nothing else."""
        protocol, transport, clock, factory = connect(heartbeat=3, heartbeatTimeout=9)
        for _ in range(30):
            clock.advance(8)
            protocol.dataReceived(b"\n")
        self.assertFalse(transport.disconnected)
        self.assertEqual(factory.stats.heartbeatsIn, 30)
        self.assertEqual(factory.stats.timeouts, 0)
        clock.advance(9)
        self.assertTrue(transport.disconnected)

    def test_anyBytesReset(self) -> None:
        """Part of a message counts as hearing from the peer too."""
        protocol, transport, clock, _ = connect(heartbeat=3, heartbeatTimeout=9)
        clock.advance(8)
        protocol.dataReceived(b"par")
        clock.advance(8)
        self.assertFalse(transport.disconnected)
        clock.advance(1)
        self.assertTrue(transport.disconnected)

    def test_sendingIsNotHearing(self) -> None:
        """Heartbeats and messages sent do not keep a silent peer alive."""
        protocol, transport, clock, _ = connect(heartbeat=3, heartbeatTimeout=9)
        clock.advance(4)
        protocol.sendMessage(b"x")
        clock.advance(5)
        self.assertTrue(transport.disconnected)

    def test_idleTimeoutShorter(self) -> None:
        """A shorter --idle-timeout still applies beside the heartbeat timeout, and says so."""
        protocol, transport, clock, _ = connect(heartbeat=3, heartbeatTimeout=9, idleTimeout=5)
        with capturedLogs() as events:
            clock.advance(5)
        self.assertTrue(transport.disconnected)
        self.assertIn("--idle-timeout", events[0]["log_format"])


class TimerTests(SynchronousTestCase):
    """
    Heartbeat timing costs no timer per message: one timer per connection,
    moved only when it fires.
    """

    def test_oneTimerNotMovedByMessages(self) -> None:
        """Messages in and out leave the connection's one timer where it was."""
        hub = makeHub(Clock(), handler=Echo)
        protocol, transport, clock, _ = connect(hub=hub, heartbeat=3, heartbeatTimeout=9)
        [timer] = clock.getDelayedCalls()
        due = timer.getTime()
        for _ in range(1000):
            protocol.dataReceived(b"ping\n")
            protocol.sendMessage(b"x")
        self.assertEqual(clock.getDelayedCalls(), [timer])
        self.assertEqual(timer.getTime(), due)

    def test_firesOncePerInterval(self) -> None:
        """Over a busy minute the timer fires about once per heartbeat interval, not per message."""
        protocol, transport, clock, _ = connect(heartbeat=3, heartbeatTimeout=9)
        timers: list[object] = []  # each new one: the last fired
        for _ in range(600):
            clock.advance(0.1)
            protocol.dataReceived(b"\n")
            protocol.sendMessage(b"x")
            [timer] = clock.getDelayedCalls()
            if not timers or timers[-1] is not timer:
                timers.append(timer)
        fired = timers[1:]
        self.assertLessEqual(len(fired), 60 / 3 + 1)
        self.assertFalse(transport.disconnected)

    def test_noTimerWithoutLiveness(self) -> None:
        """Without heartbeats or an idle timeout a connection has no timer at all."""
        protocol, transport, clock, _ = connect()
        self.assertIsNone(protocol.watchdog)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stopsOnDisconnect(self) -> None:
        """No timer outlives its connection."""
        protocol, transport, clock, _ = connect(heartbeat=3, heartbeatTimeout=9)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(clock.getDelayedCalls(), [])


class ClientTimeoutTests(SynchronousTestCase):
    """
    A client with --heartbeat notices a server that went quiet, and
    reconnects as after any other lost connection.
    """

    def test_reconnectsAfterTimeout(self) -> None:
        """A server heard nothing from for --heartbeat-timeout is dropped, and the client connects again after its retry delay."""
        reactor = MemoryReactorClock()
        reactor.advance(NOON)
        policy = RetryPolicy(reactor, 1, 30, 10, random=lambda: 1.0)
        hub = makeHub(reactor, greeting="hello {time}")
        factory = ClientFactory(
            LineFraming,
            hub,
            Limits(heartbeat=2, heartbeatTimeout=6),
            policy,
            ClientStatus("127.0.0.1:9527"),
        )
        service = makeClientService(
            TCP4ClientEndpoint(reactor, "127.0.0.1", 9527), factory, reactor
        )
        service.startService()
        self.addCleanup(service.stopService)
        _, _, clientFactory, _, _ = reactor.tcpClients[-1]
        protocol = clientFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9527))
        assert protocol is not None
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 9527))
        protocol.makeConnection(transport)
        greeting = transport.value()
        reactor.advance(2)
        self.assertEqual(transport.value(), greeting + b"\n")  # a heartbeat
        with capturedLogs() as events:
            reactor.advance(4)
        self.assertTrue(transport.disconnected)
        self.assertIn("timeout", [e.get("event") for e in events])
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(len(reactor.tcpClients), 1)
        reactor.advance(1)
        self.assertEqual(len(reactor.tcpClients), 2)


class HeartbeatOptionTests(SynchronousTestCase):
    """
    --heartbeat-timeout defaults to three intervals, and is refused where it
    could not work.
    """

    def parse(self, *args: str) -> Any:
        options = Options()
        options.parseOptions(list(args))
        return options.subOptions

    def test_defaultThreeIntervals(self) -> None:
        """Without --heartbeat-timeout, a side with --heartbeat 20 times out after 60 s; without heartbeats, never."""
        for side in ("server", "client"):
            self.assertEqual(self.parse(side, "--heartbeat", "20")["heartbeat-timeout"], 60)
            self.assertEqual(self.parse(side)["heartbeat-timeout"], 0)

    def test_given(self) -> None:
        """A --heartbeat-timeout over --heartbeat is kept and reaches the limits."""
        options = self.parse("server", "--heartbeat", "5", "--heartbeat-timeout", "7.5")
        limits = makeLimits(options, client=False)
        self.assertEqual((limits.heartbeat, limits.heartbeatTimeout), (5, 7.5))

    def test_notMoreThanInterval(self) -> None:
        """A --heartbeat-timeout of --heartbeat or less is refused, naming both values."""
        for value in ("5", "4", "0"):
            error = self.assertRaises(
                UsageError,
                self.parse,
                "client",
                "--heartbeat",
                "5",
                "--heartbeat-timeout",
                value,
            )
            self.assertIn(
                f"--heartbeat-timeout {value} must be more than --heartbeat 5", str(error)
            )

    def test_needsHeartbeat(self) -> None:
        """A --heartbeat-timeout without --heartbeat is refused: --idle-timeout does that."""
        error = self.assertRaises(UsageError, self.parse, "server", "--heartbeat-timeout", "9")
        self.assertIn("--heartbeat-timeout 9 needs --heartbeat", str(error))

    def test_notANumber(self) -> None:
        """A bad value is refused naming the option and the value."""
        for value in ("soon", "-1", "nan"):
            error = self.assertRaises(
                UsageError,
                self.parse,
                "server",
                "--heartbeat",
                "5",
                "--heartbeat-timeout",
                value,
            )
            self.assertIn("--heartbeat-timeout", str(error))
            self.assertIn(repr(value), str(error))

    def test_configKey(self) -> None:
        """heartbeat-timeout is a config file key like any other option."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[client]\nheartbeat = 10\nheartbeat-timeout = 25\n")
        options = self.parse("client", "--config", path)
        self.assertEqual((options["heartbeat"], options["heartbeat-timeout"]), (10, 25))

    def test_configKeyRefused(self) -> None:
        """A config file's heartbeat-timeout of --heartbeat or less is refused, naming that key, not the heartbeat one the message also names."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[server]\nheartbeat = 10\nheartbeat-timeout = 10\n")
        error = self.assertRaises(UsageError, self.parse, "server", "--config", path)
        self.assertIn("[server] heartbeat-timeout = 10: --heartbeat-timeout 10 must", str(error))


class LivenessTimersTests(SynchronousTestCase):
    """
    A side's connections share one reactor timer, which wakes at most once
    a tick and is never early.
    """

    def connectMany(self, count: int, **limits: Any) -> tuple[list[Any], Clock, MessageFactory]:
        clock = Clock()
        clock.advance(NOON)
        hub = makeHub(clock)
        factory = MessageFactory(FRAMINGS["line"], hub, Limits(**limits))
        connections = []
        for port in range(1, count + 1):
            protocol = factory.buildProtocol(None)
            transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
            protocol.makeConnection(transport)
            connections.append((protocol, transport))
            clock.advance(0.01)  # each due at its own time
        return connections, clock, factory

    def test_oneTimerPerSide(self) -> None:
        """A hundred connections with heartbeats wait on a single reactor timer."""
        connections, clock, _ = self.connectMany(100, heartbeat=3, heartbeatTimeout=9)
        self.assertEqual(len(clock.getDelayedCalls()), 1)

    def test_oncePerTickNeverEarly(self) -> None:
        """Heartbeats due every 0.01 s are sent in wakes at least a tick apart, each within a tick of being due, none early."""
        connections, clock, _ = self.connectMany(100, heartbeat=3, heartbeatTimeout=9)
        wakes: list[float] = []
        sentAt: dict[int, float] = {}
        timer = None
        while len(sentAt) < len(connections):
            clock.advance(0.001)
            current = clock.getDelayedCalls()[0]
            if current is not timer:
                timer = current
                wakes.append(clock.seconds())
            for i, (_, transport) in enumerate(connections):
                if i not in sentAt and transport.value() == b"\n":
                    sentAt[i] = clock.seconds()
        gaps = [b - a for a, b in zip(wakes, wakes[1:], strict=False)]
        self.assertGreaterEqual(min(gaps), TICK - 1e-6)
        for i in range(len(connections)):
            due = NOON + 0.01 * i + 3
            self.assertGreaterEqual(sentAt[i], due - 1e-6)
            self.assertLess(sentAt[i], due + TICK + 0.002)

    def test_failureIsolated(self) -> None:
        """A connection whose heartbeat fails is logged, and the others' timers go on."""
        connections, clock, _ = self.connectMany(3, heartbeat=3, heartbeatTimeout=9)
        broken, _ = connections[0]

        def fail(message: bytes) -> None:
            raise RuntimeError("broken")

        broken.sendMessage = fail
        with capturedLogs() as events:
            for _ in range(10):
                clock.advance(0.5)
        [failed] = [e for e in events if e.get("event") == "liveness-error"]
        self.assertTrue(failed["log_failure"].check(RuntimeError))
        self.flushLoggedErrors(RuntimeError)
        for _, transport in connections[1:]:
            self.assertEqual(transport.value(), b"\n")

    def test_lastStopClears(self) -> None:
        """Once every connection is gone, no timer and no entry is left."""
        connections, clock, factory = self.connectMany(5, heartbeat=3, heartbeatTimeout=9)
        for protocol, _ in connections:
            protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(factory.timers.watching, 0)
