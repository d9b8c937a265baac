"""
Tests for L{tcpcomm.descriptors}: raising the open-file limit at start, and
accepting no more clients than the descriptors hold.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.descriptors import HEADROOM, DescriptorBudget, raiseSoftLimit
from tcpcomm.options import Options
from tcpcomm.tap import adminConnections
from tcpcomm.templates import Template, Texts
from tcpcomm.wire.framing import FRAMINGS
from tcpcomm.wire.protocol import REFUSAL_TIMEOUT, Limits, MessageFactory, Refusal

from .support import NOON, FakeFileLimit, makeHub

INFINITY = -1  # resource.RLIM_INFINITY on Linux


def serverFactory(maxConnections: int = 10000) -> MessageFactory:
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
    return MessageFactory(FRAMINGS["line"], hub, Limits(maxConnections=maxConnections))


def peer(factory: MessageFactory, port: int) -> tuple[object, StringTransport]:
    """
    What C{factory} builds for a connection from 127.0.0.1:C{port}, connected.
    """
    address = IPv4Address("TCP", "127.0.0.1", port)
    protocol = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport


class RaiseSoftLimitTests(SynchronousTestCase):
    """
    The soft limit goes up to the hard one, or as far as the system lets it.
    """

    def test_toHard(self) -> None:
        """A soft limit under the hard one is raised to it, and the log says so."""
        limit = FakeFileLimit(1024, 524288)
        with capturedLogs() as events:
            self.assertEqual(raiseSoftLimit(limit, 10096), 524288)
        self.assertEqual(limit.limits, (524288, 524288))
        self.assertEqual(
            [(e["event"], e["before"], e["after"]) for e in events],
            [("file-limit-raised", 1024, 524288)],
        )

    def test_toNeeded(self) -> None:
        """Where the hard limit is unlimited but the system refuses that (macOS), the soft one goes to what is needed."""
        limit = FakeFileLimit(256, INFINITY, ceiling=10240)
        self.assertEqual(raiseSoftLimit(limit, 10096), 10096)
        self.assertEqual(limit.limits, (10096, INFINITY))

    def test_refused(self) -> None:
        """When every raise is refused, the soft limit stays, silently."""
        limit = FakeFileLimit(256, 4096, ceiling=256)
        with capturedLogs() as events:
            self.assertEqual(raiseSoftLimit(limit, 10096), 256)
        self.assertEqual(events, [])

    def test_alreadyHard(self) -> None:
        """A soft limit already at the hard one is left alone, without a log line."""
        limit = FakeFileLimit(4096, 4096)
        with capturedLogs() as events:
            self.assertEqual(raiseSoftLimit(limit, 10096), 4096)
        self.assertEqual(events, [])

    def test_none(self) -> None:
        """Without limits (not POSIX, or unlimited), there is nothing to respect."""
        limit = FakeFileLimit()
        limit.limits = None
        self.assertIsNone(raiseSoftLimit(limit, 10096))
        self.assertIsNone(raiseSoftLimit(FakeFileLimit(INFINITY, INFINITY), 10096))


class DescriptorBudgetTests(SynchronousTestCase):
    """
    When the server starts, --max-connections is lowered to what the
    descriptors hold, with one warning.
    """

    def start(self, factory: MessageFactory, admin: int, limit: FakeFileLimit) -> list[dict]:
        with capturedLogs() as events:
            DescriptorBudget(factory, admin, limit).startService()
        return [e for e in events if e["event"] == "file-limit"]

    def test_fits(self) -> None:
        """When --max-connections, the admin connections and the headroom fit, nothing changes."""
        factory = serverFactory(10000)
        warnings = self.start(factory, 64, FakeFileLimit(1024, 10000 + 64 + HEADROOM))
        self.assertEqual(warnings, [])
        self.assertEqual(factory.connectionLimit, 10000)

    def test_lowered(self) -> None:
        """Under a hard limit of 256 with the admin API on, 256 - 64 - 32 = 160 clients are accepted, and a warning names both numbers and what to do."""
        factory = serverFactory(10000)
        warnings = self.start(factory, 64, FakeFileLimit(256, 256))
        self.assertEqual(factory.connectionLimit, 256 - 64 - HEADROOM)
        self.assertEqual(len(warnings), 1)
        warning = warnings[0]
        self.assertEqual(
            (warning["soft"], warning["needed"], warning["allowed"]), (256, 10096, 160)
        )
        for text in ("--max-connections", "LimitNOFILE=", "ulimit -n"):
            self.assertIn(text, warning["log_format"])

    def test_withoutAdmin(self) -> None:
        """Without an admin API, only the headroom is kept back."""
        factory = serverFactory(10000)
        self.start(factory, 0, FakeFileLimit(256, 256))
        self.assertEqual(factory.connectionLimit, 256 - HEADROOM)

    def test_atLeastOne(self) -> None:
        """However small the limit, one client is still let in."""
        factory = serverFactory(10000)
        self.start(factory, 64, FakeFileLimit(64, 64))
        self.assertEqual(factory.connectionLimit, 1)

    def test_refusedAndCounted(self) -> None:
        """Clients over the lowered limit get --full-reply, are counted as refused, and the log names the descriptor limit; room comes back when one leaves."""
        factory = serverFactory(10000)
        self.start(factory, 0, FakeFileLimit(40, 40))
        allowed = 40 - HEADROOM
        kept = [peer(factory, port) for port in range(1, allowed + 1)]
        with capturedLogs() as events:
            extra, transport = peer(factory, 99)
        self.assertIsInstance(extra, Refusal)
        self.assertEqual(transport.value(), b"full\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(factory.stats.refused, 1)
        self.assertEqual((events[0]["event"], events[0]["cause"]), ("refused", "file-limit"))
        self.assertIn("RLIMIT_NOFILE 40", events[0]["reason"])
        self.assertFalse(any(t.disconnecting for _, t in kept))
        kept[0][0].connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
        self.assertNotIsInstance(peer(factory, 100)[0], Refusal)

    def test_configuredLimitNamed(self) -> None:
        """Under --max-connections itself, the refusal says so."""
        factory = serverFactory(1)
        peer(factory, 1)
        with capturedLogs() as events:
            peer(factory, 2)
        self.assertEqual(events[0]["cause"], "max-connections")
        self.assertEqual(events[0]["reason"], "--max-connections 1 reached")

    def test_adminConnections(self) -> None:
        """The admin API's connections count only when --admin is given."""
        options = Options()
        options.parseOptions(["server"])
        self.assertEqual(adminConnections(options.subOptions), 0)
        options = Options()
        options.parseOptions(["server", "--admin", "tcp:0:interface=127.0.0.1"])
        self.assertEqual(
            adminConnections(options.subOptions),
            options.subOptions.get("admin-max-connections", 64),
        )


class RefusalTests(SynchronousTestCase):
    """
    A refused peer cannot hold its descriptor for long.
    """

    def test_deadline(self) -> None:
        """A refusal that cannot be written at once (over TLS, the handshake comes first) is dropped after REFUSAL_TIMEOUT."""
        factory = serverFactory(1)
        peer(factory, 1)
        _, transport = peer(factory, 2)
        self.assertFalse(transport.disconnected)
        clock = factory.clock
        clock.advance(REFUSAL_TIMEOUT)  # type: ignore[attr-defined]
        self.assertTrue(transport.disconnected)

    def test_deadlineCancelled(self) -> None:
        """A refusal that closes in time leaves no timer behind."""
        factory = serverFactory(1)
        peer(factory, 1)
        refusal, _ = peer(factory, 2)
        refusal.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
        self.assertEqual(factory.clock.getDelayedCalls(), [])
