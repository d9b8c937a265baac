"""
Eager writes over real loopback TCP: bytes go to the socket at once when
nothing is queued, and otherwise keep Twisted's order, buffering and
producer behaviour.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcpcomm.wire.eager import ATTRIBUTES, canWriteEagerly, writeEagerly


class Collector(Protocol):
    """
    Keeps what arrives, and fires C{done} with it once C{expected} bytes came.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.chunks: list[bytes] = []
        self.transport: Any = None
        self.size = 0
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size >= self.expected and not self.done.called:
            self.done.callback(b"".join(self.chunks))


class Sender(Protocol):
    """
    The server side: hands its transport to the test once connected.
    """

    def __init__(self, ready: Deferred[Sender]) -> None:
        self.ready = ready
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.ready.callback(self)

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


class EagerTCPTests(TestCase):
    """
    Eager writes on a real TCP connection.
    """

    timeout = 20

    async def pair(self, expected: int) -> tuple[Sender, Collector]:
        ready: Deferred[Sender] = Deferred()
        port: Any = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: Sender(ready))
        )
        self.addCleanup(port.stopListening)
        collector = Collector(expected)
        client: Any = await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(lambda: collector)
        )
        self.addCleanup(client.transport.loseConnection)
        sender = await ready
        return sender, collector

    async def test_tcpConnectionsLookAsExpected(self) -> None:
        """Twisted's TCP connections still queue as eager writes assume (if not, update tcpcomm.wire.eager)."""
        sender, collector = await self.pair(3)
        transport: Any = sender.transport
        self.assertEqual([n for n in ATTRIBUTES if not hasattr(transport, n)], [])
        self.assertTrue(canWriteEagerly(transport))
        self.assertEqual((transport.dataBuffer, transport._tempDataLen), (b"", 0))
        transport.write(b"abc")  # Twisted's write only queues, in these two attributes
        self.assertEqual((transport.dataBuffer, transport._tempDataLen), (b"", 3))
        received = await collector.done
        self.assertEqual(received, b"abc")
        self.assertEqual((transport.dataBuffer, transport._tempDataLen), (b"", 0))

    async def test_sentAtOnce(self) -> None:
        """A write with nothing queued is in the kernel before the next reactor turn."""
        sender, collector = await self.pair(5)
        transport: Any = sender.transport
        writeEagerly(transport, b"hello")
        self.assertEqual((transport.dataBuffer, transport._tempDataLen), (b"", 0))
        received = await collector.done
        self.assertEqual(received, b"hello")

    async def test_partialSendKeepsOrder(self) -> None:
        """What the kernel does not take is queued, and later writes line up behind it."""
        big = bytes(range(256)) * (16 * 1024)  # 4 MiB: more than the socket buffers hold
        sender, collector = await self.pair(len(big) + 3)
        transport: Any = sender.transport

        def write(data: bytes) -> None:
            writeEagerly(transport, data)

        collector.transport.pauseProducing()  # the peer does not read for now
        write(big)
        self.assertTrue(transport.dataBuffer or transport._tempDataLen)
        write(b"end")
        collector.transport.resumeProducing()
        received = await collector.done
        self.assertEqual(received, big + b"end")

    async def test_fullSocketPausesProducer(self) -> None:
        """A peer that stops reading fills the transport, which pauses its producer as usual."""
        sender, collector = await self.pair(1)
        transport: Any = sender.transport
        paused: list[bool] = []

        class Producer:
            def pauseProducing(self) -> None:
                paused.append(True)

            def resumeProducing(self) -> None:
                pass

            def stopProducing(self) -> None:
                pass

        transport.registerProducer(Producer(), True)
        collector.transport.pauseProducing()

        def write(data: bytes) -> None:
            writeEagerly(transport, data)

        for _ in range(200):
            write(b"x" * 65536)
            if paused:
                break
        self.assertTrue(paused)
        transport.unregisterProducer()

    async def test_failedSendLeftToTwisted(self) -> None:
        """A send to a reset connection ends it through Twisted's own path, once."""
        sender, collector = await self.pair(1)
        transport: Any = sender.transport
        collector.transport.socket.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        collector.transport.abortConnection()

        def write(data: bytes) -> None:
            writeEagerly(transport, data)

        for _ in range(10):
            write(b"x" * 1024)
        await sender.lost
        self.assertFalse(transport.connected)


class FallbackTests(SynchronousTestCase):
    """
    Transports that are not plain TCP get Twisted's own write.
    """

    def test_testDouble(self) -> None:
        """A StringTransport is not written to eagerly."""
        self.assertFalse(canWriteEagerly(StringTransport()))

    def test_tls(self) -> None:
        """A TLS transport (TLSMemoryBIOProtocol) is not written to eagerly."""
        tls = TLSMemoryBIOProtocol.__new__(TLSMemoryBIOProtocol)
        self.assertFalse(canWriteEagerly(tls))
