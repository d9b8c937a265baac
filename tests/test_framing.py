"""Tests for L{tcpcomm.framing}: bytes in, whole messages out, for every framing."""

from __future__ import annotations

import struct
from typing import cast

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.framing import FRAMINGS

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
