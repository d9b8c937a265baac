"""Tests for L{tcpcomm.hub.session} with the default handler: timed replies on a clock."""

from __future__ import annotations

import time

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.templates import TIME_FORMAT

from .support import NOON, connect, makeHub


def stamp(seconds: float) -> bytes:
    """
    The local time at C{seconds}, as the templates write it.
    """
    return time.strftime(TIME_FORMAT, time.localtime(seconds)).encode()


class DelayedReplyTests(SynchronousTestCase):
    """
    Each message is answered after the reply delay, by the clock.
    """

    def test_replyAfterDelay(self) -> None:
        """No reply before the delay has passed, one reply exactly when it has."""
        protocol, transport, clock, factory = connect(delay=5)
        protocol.dataReceived(b"hi\n")
        clock.advance(4.999)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.001)
        self.assertEqual(transport.value(), b"reply " + stamp(NOON) + b"\n")

    def test_zeroDelayRepliesAtOnce(self) -> None:
        """A delay of 0 replies within the same call, with no timer."""
        protocol, transport, clock, factory = connect(delay=0)
        protocol.dataReceived(b"hi\n")
        self.assertEqual(transport.value(), b"reply " + stamp(NOON) + b"\n")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_delaysDoNotSerialise(self) -> None:
        """Messages arriving together are all answered one delay later, not one after another."""
        protocol, transport, clock, factory = connect(delay=1)
        protocol.dataReceived(b"a\nb\nc\n")
        clock.advance(1)
        self.assertEqual(transport.value().count(b"\n"), 3)

    def test_replyCarriesArrivalTime(self) -> None:
        """{time} is the local time at which the message arrived."""
        protocol, transport, clock, factory = connect(delay=5)
        clock.advance(3)
        protocol.dataReceived(b"hi\n")
        clock.advance(5)
        self.assertEqual(transport.value(), b"reply " + stamp(NOON + 3) + b"\n")

    def test_logsMessageWithPeer(self) -> None:
        """Each decoded message is logged with its text and the peer's id."""
        protocol, transport, clock, factory = connect()
        with capturedLogs() as events:
            protocol.dataReceived("héllo\n".encode())
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["text"], "héllo")
        self.assertEqual(events[0]["peer"], "127.0.0.1:40000")

    def test_undecodableGetsErrorReply(self) -> None:
        """Bytes that do not decode are logged with their repr and answered at once with the error text."""
        protocol, transport, clock, factory = connect(delay=5)
        with capturedLogs() as events:
            protocol.dataReceived(b"\xff\xfe\n")
        self.assertEqual(transport.value(), b"error " + stamp(NOON) + b"\n")
        self.assertEqual(events[0]["data"], b"\xff\xfe")
        self.assertEqual(events[0]["log_level"].name, "warn")
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"fine\n")
        clock.advance(5)
        self.assertTrue(transport.value().endswith(b"reply " + stamp(NOON + 5 - 5) + b"\n"))

    def test_disconnectCancelsPending(self) -> None:
        """Replies still owed when the connection is lost are cancelled, not written."""
        protocol, transport, clock, factory = connect(delay=5)
        protocol.dataReceived(b"a\nb\n")
        self.assertEqual(len(clock.getDelayedCalls()), 2)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(10)
        self.assertEqual(transport.value(), b"")

    def test_halfCloseGetsOwedRepliesThenClose(self) -> None:
        """A peer that stops sending still gets every owed reply, then the connection closes."""
        protocol, transport, clock, factory = connect(delay=5)
        protocol.dataReceived(b"a\n")
        clock.advance(2)
        protocol.dataReceived(b"b\n")
        protocol.readConnectionLost()
        self.assertFalse(transport.disconnecting)
        clock.advance(3)
        self.assertEqual(transport.value().count(b"\n"), 1)
        self.assertFalse(transport.disconnecting)
        clock.advance(2)
        self.assertEqual(transport.value().count(b"\n"), 2)
        self.assertTrue(transport.disconnecting)

    def test_halfCloseWithNothingOwedCloses(self) -> None:
        """A peer that stops sending and is owed nothing is disconnected at once."""
        protocol, transport, clock, factory = connect(delay=0)
        protocol.dataReceived(b"a\n")
        protocol.readConnectionLost()
        self.assertEqual(transport.value().count(b"\n"), 1)
        self.assertTrue(transport.disconnecting)

    def test_sameInstantRepliesAllSent(self) -> None:
        """Replies due at the same instant are all sent, and close follows the last."""
        protocol, transport, clock, factory = connect(delay=5)
        protocol.dataReceived(b"a\nb\nc\n")
        protocol.readConnectionLost()
        clock.advance(5)
        self.assertEqual(transport.value().count(b"\n"), 3)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])


class GreetingTests(SynchronousTestCase):
    """
    A hub with a greeting (the client's) says it on connect.
    """

    def test_greetingOnConnect(self) -> None:
        """The greeting, with the connect time, is the first thing sent."""
        clock = Clock()
        clock.advance(NOON)
        protocol, transport, _, _ = connect(hub=makeHub(clock, greeting="hello {time}"))
        self.assertEqual(transport.value(), b"hello " + stamp(NOON) + b"\n")


class MessageLogTests(SynchronousTestCase):
    """
    --no-message-log keeps messages out of the log, and nothing else.
    """

    def test_quiet(self) -> None:
        """With message logging off, a message is answered but not logged."""
        hub = makeHub(Clock(), delay=0)
        hub.logMessages = False
        protocol, transport, _, _ = connect(hub=hub)
        with capturedLogs() as events:
            protocol.dataReceived(b"hi\n")
        self.assertEqual(events, [])
        self.assertTrue(transport.value().startswith(b"reply "))
