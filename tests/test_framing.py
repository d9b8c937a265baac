"""Tests for L{tcpcomm.wire.framing}: bytes in, whole messages out, for every framing."""

from __future__ import annotations

import struct
from typing import Any, cast

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.wire.framing import FRAMINGS
from tcpcomm.wire.protocol import MESSAGES_PER_TURN, FramedProtocol

from .support import Recorder, connect


def frame(framing: str, message: bytes) -> bytes:
    """
    C{message} as C{framing} puts it on the wire.
    """
    if framing == "line":
        return message + b"\n"
    if framing == "netstring":
        return b"%d:%s," % (len(message), message)
    if framing == "int32":
        return struct.pack("!I", len(message)) + message
    return message


class RecordingMixin:
    """
    Connect a protocol whose conversation only records what arrives.
    """

    def receiver(self, framing: str, maxMessageSize: int = 65536):
        protocol, transport, clock, factory = connect(
            framing, maxMessageSize=maxMessageSize, record=True
        )
        return protocol, transport, cast(Recorder, protocol.conversation).messages


class StreamFramingTests(RecordingMixin, SynchronousTestCase):
    """
    The delimited framings find message boundaries whatever the chunking.
    """

    framings = ["line", "netstring", "int32"]

    def test_splitMessage(self) -> None:
        """A message that arrives one byte at a time is delivered once, whole."""
        for framing in self.framings:
            protocol, transport, received = self.receiver(framing)
            for i, byte in enumerate(frame(framing, b"hello world")):
                protocol.dataReceived(bytes([byte]))
                if i < len(frame(framing, b"hello world")) - 1:
                    self.assertEqual(received, [], framing)
            self.assertEqual(received, [b"hello world"], framing)

    def test_mergedMessages(self) -> None:
        """Several messages in one chunk are delivered separately and in order."""
        for framing in self.framings:
            protocol, transport, received = self.receiver(framing)
            protocol.dataReceived(b"".join(frame(framing, m) for m in [b"one", b"two", b"three"]))
            self.assertEqual(received, [b"one", b"two", b"three"], framing)

    def test_splitAcrossBoundary(self) -> None:
        """A chunk that ends inside the second message delivers the first only."""
        for framing in self.framings:
            protocol, transport, received = self.receiver(framing)
            wire = frame(framing, b"first") + frame(framing, b"second")
            protocol.dataReceived(wire[:-3])
            self.assertEqual(received, [b"first"], framing)
            protocol.dataReceived(wire[-3:])
            self.assertEqual(received, [b"first", b"second"], framing)

    def test_emptyMessage(self) -> None:
        """An empty message is a message."""
        for framing in self.framings:
            protocol, transport, received = self.receiver(framing)
            protocol.dataReceived(frame(framing, b""))
            self.assertEqual(received, [b""], framing)

    def test_oversizedDisconnects(self) -> None:
        """A message over the limit is logged and the peer disconnected."""
        for framing in self.framings:
            protocol, transport, received = self.receiver(framing, maxMessageSize=8)
            with capturedLogs() as events:
                protocol.dataReceived(frame(framing, b"x" * 9))
            self.assertTrue(transport.disconnecting, framing)
            self.assertEqual(received, [], framing)
            self.assertEqual(len(events), 1, framing)
            self.assertIn("--max-message-size", events[0]["log_format"])
            self.assertEqual(events[0]["peer"], "127.0.0.1:40000")

    def test_atLimitAccepted(self) -> None:
        """A message of exactly the limit is delivered."""
        for framing in self.framings:
            protocol, transport, received = self.receiver(framing, maxMessageSize=8)
            protocol.dataReceived(frame(framing, b"x" * 8))
            self.assertEqual(received, [b"x" * 8], framing)
            self.assertFalse(transport.disconnecting, framing)

    def test_unfinishedOversizedDisconnects(self) -> None:
        """A peer that streams bytes past the limit without ending a message is cut off."""
        protocol, transport, received = self.receiver("line", maxMessageSize=8)
        protocol.dataReceived(b"x" * 5)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"x" * 5)
        self.assertTrue(transport.disconnecting)

    def test_messagesAfterOversizedDropped(self) -> None:
        """Nothing after an oversized message in the same chunk is delivered."""
        protocol, transport, received = self.receiver("line", maxMessageSize=8)
        protocol.dataReceived(b"ok\n" + b"x" * 20 + b"\nlater\n")
        self.assertEqual(received, [b"ok"])
        self.assertTrue(transport.disconnecting)

    def test_sendMessage(self) -> None:
        """sendMessage frames the message as the framing reads it."""
        for framing in self.framings + ["raw"]:
            protocol, transport, received = self.receiver(framing)
            protocol.sendMessage(b"hi there")
            self.assertEqual(transport.value(), frame(framing, b"hi there"), framing)


class ChunkBoundaryTests(RecordingMixin, SynchronousTestCase):
    """
    A read is split whole, so every way TCP can cut a stream must give the
    same messages: cut at every byte boundary, and byte by byte.
    """

    framings = ["line", "netstring", "int32"]
    messages = [b"hello", b"", b"x" * 300, b"a:b\rc,", b"\x00\xff", b"last"]

    def stream(self, framing: str) -> bytes:
        return b"".join(frame(framing, m) for m in self.messages)

    def test_everyBoundary(self) -> None:
        """Cut in two at any byte, the stream delivers the same messages, in order."""
        for framing in self.framings:
            wire = self.stream(framing)
            for cut in range(len(wire) + 1):
                protocol, transport, received = self.receiver(framing)
                protocol.dataReceived(wire[:cut])
                protocol.dataReceived(wire[cut:])
                self.assertEqual(received, self.messages, (framing, cut))
                self.assertFalse(transport.disconnecting, (framing, cut))

    def test_everyPairOfBoundaries(self) -> None:
        """Cut in three at any two bytes of a short stream, it delivers the same messages."""
        for framing in self.framings:
            wire = b"".join(frame(framing, m) for m in [b"ab", b"", b"cde"])
            for first in range(len(wire) + 1):
                for second in range(first, len(wire) + 1):
                    protocol, transport, received = self.receiver(framing)
                    for chunk in (wire[:first], wire[first:second], wire[second:]):
                        protocol.dataReceived(chunk)
                    self.assertEqual(received, [b"ab", b"", b"cde"], (framing, first, second))

    def test_byteByByte(self) -> None:
        """Fed one byte at a time, the stream delivers the same messages, in order."""
        for framing in self.framings:
            protocol, transport, received = self.receiver(framing)
            for byte in self.stream(framing):
                protocol.dataReceived(bytes([byte]))
            self.assertEqual(received, self.messages, framing)

    def test_crlfCutBetween(self) -> None:
        """A CRLF cut between its CR and its LF still ends the line, without the CR."""
        protocol, transport, received = self.receiver("line", maxMessageSize=5)
        protocol.dataReceived(b"abcde\r")
        protocol.dataReceived(b"\nfg\r\n")
        self.assertEqual(received, [b"abcde", b"fg"])
        self.assertFalse(transport.disconnecting)


class LineFramingTests(RecordingMixin, SynchronousTestCase):
    """
    Line framing: what people type into nc and telnet.
    """

    def test_crlfStripped(self) -> None:
        """A line ending in CRLF arrives without the CR."""
        protocol, transport, received = self.receiver("line")
        protocol.dataReceived(b"telnet\r\nnc\n")
        self.assertEqual(received, [b"telnet", b"nc"])

    def test_innerCarriageReturnKept(self) -> None:
        """Only the CR right before the LF is dropped."""
        protocol, transport, received = self.receiver("line")
        protocol.dataReceived(b"a\rb\r\r\n")
        self.assertEqual(received, [b"a\rb\r"])


class NetstringFramingTests(RecordingMixin, SynchronousTestCase):
    """
    Netstring framing refuses what is not a netstring.
    """

    def test_malformed(self) -> None:
        """A stream that is not netstrings is logged once and the peer disconnected."""
        protocol, transport, received = self.receiver("netstring")
        with capturedLogs() as events:
            protocol.dataReceived(b"3:abc,hello")
            protocol.dataReceived(b"more")
        self.assertEqual(received, [b"abc"])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(events), 1)
        self.assertIn("not a netstring", events[0]["log_format"])


class RawFramingTests(RecordingMixin, SynchronousTestCase):
    """
    Raw framing: each chunk is a message, for peers that send no delimiter.
    """

    def test_chunkIsMessage(self) -> None:
        """Every chunk, delimiters and all, is one message."""
        protocol, transport, received = self.receiver("raw")
        protocol.dataReceived(b"one\ntwo")
        protocol.dataReceived(b"three")
        self.assertEqual(received, [b"one\ntwo", b"three"])

    def test_oversizedChunk(self) -> None:
        """A chunk over the limit disconnects the peer."""
        protocol, transport, received = self.receiver("raw", maxMessageSize=4)
        protocol.dataReceived(b"12345")
        self.assertEqual(received, [])
        self.assertTrue(transport.disconnecting)

    def test_everyFramingRegistered(self) -> None:
        """The four documented framings, and only those, can be chosen."""
        self.assertEqual(sorted(FRAMINGS), ["int32", "line", "netstring", "raw"])


def turn(clock: Clock) -> None:
    """
    One reactor turn: run the calls due now, but not those they schedule,
    which a reactor leaves to its next turn (C{Clock.advance} runs them too).
    """
    for call in [c for c in clock.calls if c.getTime() <= clock.seconds()]:
        if call.active():
            clock.calls.remove(call)
            call.called = True
            call.func(*call.args, **call.kw)


class MessagesPerTurnTests(SynchronousTestCase):
    """
    One read delivers at most MESSAGES_PER_TURN messages; the rest waits,
    with reading paused, for later reactor turns.
    """

    framings = ["line", "netstring", "int32"]

    def flood(self, framing: str, count: int, **limits: Any) -> tuple[bytes, list[bytes]]:
        """
        C{count} messages, all empty (heartbeats) but every 500th, which
        carries its number so that order shows; the wire and the messages.
        """
        messages = [b"%d" % i if i % 500 == 0 else b"" for i in range(count)]
        return b"".join(frame(framing, m) for m in messages), messages

    def receiver(
        self, framing: str, **limits: Any
    ) -> tuple[FramedProtocol, StringTransport, Clock, list[bytes], list[object]]:
        protocol, transport, clock, _ = connect(framing, record=True, **limits)
        recorder = cast(Recorder, protocol.conversation)
        return protocol, transport, clock, recorder.messages, recorder.events

    def test_boundedAndFinishedLater(self) -> None:
        """A read of 64 KiB of empty lines (and as many netstrings and int32 messages) delivers the bound now, pauses reading, and the rest on later turns, in order."""
        count = 65536
        for framing in self.framings:
            protocol, transport, clock, received, _ = self.receiver(framing)
            wire, messages = self.flood(framing, count)
            protocol.dataReceived(wire)
            self.assertEqual(len(received), MESSAGES_PER_TURN, framing)
            self.assertEqual(transport.producerState, "paused", framing)
            turns = 1
            while clock.getDelayedCalls():
                turn(clock)
                turns += 1
                self.assertLessEqual(len(received), turns * MESSAGES_PER_TURN, framing)
            self.assertEqual(received, messages, framing)
            self.assertEqual(turns, count // MESSAGES_PER_TURN, framing)
            self.assertEqual(transport.producerState, "producing", framing)
            self.assertFalse(protocol.hasPartial(), framing)

    def test_heartbeatsCounted(self) -> None:
        """Heartbeats count against the bound, and a real session counts every one of them in the end."""
        for framing in self.framings:
            protocol, transport, clock, factory = connect(framing, delay=0)
            protocol.dataReceived(frame(framing, b"") * (3 * MESSAGES_PER_TURN))
            self.assertEqual(factory.stats.heartbeatsIn, MESSAGES_PER_TURN, framing)
            turn(clock)
            self.assertEqual(factory.stats.heartbeatsIn, 2 * MESSAGES_PER_TURN, framing)
            turn(clock)
            self.assertEqual(factory.stats.heartbeatsIn, 3 * MESSAGES_PER_TURN, framing)
            self.assertEqual(transport.value(), b"", framing)

    def test_smallReadUntouched(self) -> None:
        """A read of exactly the bound is delivered at once, without pausing or a timer."""
        for framing in self.framings:
            protocol, transport, clock, received, _ = self.receiver(framing)
            protocol.dataReceived(frame(framing, b"x") * MESSAGES_PER_TURN)
            self.assertEqual(len(received), MESSAGES_PER_TURN, framing)
            self.assertEqual(transport.producerState, "producing", framing)
            self.assertEqual(clock.getDelayedCalls(), [], framing)

    def test_badMessageAfterTheBound(self) -> None:
        """A message that breaks a limit behind the bound still disconnects the peer, once everything before it is delivered, and nothing after it is."""
        bad = {
            "line": b"x" * 9 + b"\n",
            "netstring": b"3:abc;",
            "int32": struct.pack("!I", 9) + b"x" * 9,
        }
        for framing in self.framings:
            protocol, transport, clock, received, _ = self.receiver(framing, maxMessageSize=8)
            wire, messages = self.flood(framing, 2 * MESSAGES_PER_TURN + 10)
            protocol.dataReceived(wire + bad[framing] + frame(framing, b"after"))
            self.assertFalse(transport.disconnecting, framing)
            turn(clock)
            self.assertFalse(transport.disconnecting, framing)
            turn(clock)
            self.assertEqual(received, messages, framing)
            self.assertTrue(transport.disconnecting, framing)
            self.assertEqual(clock.getDelayedCalls(), [], framing)

    def test_lineLimitsAcrossTurns(self) -> None:
        """Behind the bound, CRLF is still dropped, a line of exactly the limit still passes, and an over-long unfinished line is only cut once the lines before it are delivered."""
        protocol, transport, clock, received, _ = self.receiver("line", maxMessageSize=8)
        flood = b"\r\n" * (MESSAGES_PER_TURN + 1) + b"12345678\r\n" + b"87654321\n"
        protocol.dataReceived(flood + b"x" * 10)
        self.assertFalse(transport.disconnecting)
        turn(clock)
        self.assertEqual(received, [b""] * (MESSAGES_PER_TURN + 1) + [b"12345678", b"87654321"])
        self.assertTrue(transport.disconnecting)

    def test_halfCloseWaitsForHeldMessages(self) -> None:
        """The end of the peer's input, arriving while messages are held, reaches the conversation after them."""
        for framing in self.framings:
            protocol, transport, clock, received, events = self.receiver(framing)
            wire, messages = self.flood(framing, 2 * MESSAGES_PER_TURN + 1)
            protocol.dataReceived(wire)
            protocol.readConnectionLost()
            self.assertEqual(events, ["connected"], framing)
            turn(clock)
            self.assertEqual(events, ["connected"], framing)
            turn(clock)
            self.assertEqual(received, messages, framing)
            self.assertEqual(events, ["connected", "inputEnded"], framing)
            self.assertEqual(transport.producerState, "paused", framing)  # nothing more to read

    def test_lostWhileHeld(self) -> None:
        """A connection lost while messages are held cancels the next batch; nothing more is delivered."""
        for framing in self.framings:
            protocol, transport, clock, received, events = self.receiver(framing)
            protocol.dataReceived(self.flood(framing, 3 * MESSAGES_PER_TURN)[0])
            protocol.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(clock.getDelayedCalls(), [], framing)
            self.assertEqual(len(received), MESSAGES_PER_TURN, framing)

    def test_closedWhileHeld(self) -> None:
        """A connection closed while messages are held delivers no more and does not read again."""
        for framing in self.framings:
            protocol, transport, clock, received, _ = self.receiver(framing)
            protocol.dataReceived(self.flood(framing, 3 * MESSAGES_PER_TURN)[0])
            protocol.close()
            turn(clock)
            self.assertEqual(len(received), MESSAGES_PER_TURN, framing)
            self.assertEqual(clock.getDelayedCalls(), [], framing)
            self.assertEqual(transport.producerState, "paused", framing)

    def test_moreDataWhileHeld(self) -> None:
        """Data that arrives while messages are held (TLS hands a read over in pieces) waits its turn and keeps its order."""
        for framing in self.framings:
            protocol, transport, clock, received, _ = self.receiver(framing)
            wire, messages = self.flood(framing, 2 * MESSAGES_PER_TURN)
            cut = len(wire) * 3 // 4 + 1  # inside a message
            protocol.dataReceived(wire[:cut])
            protocol.dataReceived(wire[cut:] + frame(framing, b"last"))
            self.assertEqual(len(received), MESSAGES_PER_TURN, framing)
            turn(clock)
            self.assertEqual(len(received), 2 * MESSAGES_PER_TURN, framing)
            turn(clock)
            self.assertEqual(received, messages + [b"last"], framing)
            self.assertEqual(transport.producerState, "producing", framing)

    def test_messageTimeoutAcrossTurns(self) -> None:
        """With --message-timeout, held whole messages are not taken for an unfinished one, while an unfinished one behind them is timed from its arrival."""
        for framing in self.framings:
            protocol, transport, clock, received, _ = self.receiver(framing, messageTimeout=5)
            wire, messages = self.flood(framing, 2 * MESSAGES_PER_TURN)
            protocol.dataReceived(wire)
            turn(clock)
            clock.advance(10)
            self.assertEqual(received, messages, framing)
            self.assertFalse(transport.disconnected, framing)

            protocol, transport, clock, received, _ = self.receiver(framing, messageTimeout=5)
            partial = frame(framing, b"unfinished")[:-1]
            protocol.dataReceived(wire + partial)
            turn(clock)
            clock.advance(4.9)
            self.assertEqual(received, messages, framing)
            self.assertFalse(transport.disconnected, framing)
            clock.advance(0.1)
            self.assertTrue(transport.disconnected, framing)
