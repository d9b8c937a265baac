"""
Corked writes: the replies a handler writes while one read is handled leave
as one write; others (timers, broadcasts) leave at once; on a real TCP
connection they go straight to the socket when nothing is queued.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcpcomm.framing import FRAMINGS
from tcpcomm.handlers import Broadcast, Echo
from tcpcomm.protocol import FramedProtocol, Limits, MessageFactory

from .support import NOON, makeHub


class CountingTransport(StringTransport):
    """
    A transport that remembers each write on its own.
    """

    def __init__(self, port: int) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


def connected(
    factory: MessageFactory, port: int = 40000
) -> tuple[FramedProtocol, CountingTransport]:
    protocol = factory.buildProtocol(None)
    transport = CountingTransport(port)
    protocol.makeConnection(transport)
    return protocol, transport


class CorkTests(SynchronousTestCase):
    """
    Replies to one read are written together, in order, in every framing.
    """

    def factory(
        self, framing: str, handler: Any = Echo, clock: Clock | None = None
    ) -> MessageFactory:
        clock = clock or Clock()
        clock.advance(NOON)
        return MessageFactory(FRAMINGS[framing], makeHub(clock, 0, handler=handler), Limits())

    def test_oneWritePerRead(self) -> None:
        """Three messages in one read get their three replies in one write, in order."""
        wire = {
            "line": (b"a\nbb\r\nccc\n", b"a\nbb\nccc\n"),
            "netstring": (b"1:a,2:bb,3:ccc,", b"1:a,2:bb,3:ccc,"),
            "int32": (
                b"\0\0\0\1a\0\0\0\2bb\0\0\0\3ccc",
                b"\0\0\0\1a\0\0\0\2bb\0\0\0\3ccc",
            ),
        }
        for framing, (sent, echoed) in wire.items():
            protocol, transport = connected(self.factory(framing))
            protocol.dataReceived(sent)
            self.assertEqual(transport.writes, [echoed], framing)

    def test_heartbeatsUnanswered(self) -> None:
        """A read of heartbeats alone writes nothing."""
        protocol, transport = connected(self.factory("line"))
        protocol.dataReceived(b"\n\n\n")
        self.assertEqual(transport.writes, [])

    def test_sendOutsideARead(self) -> None:
        """A message sent outside a read (a timer, the admin API) is written at once, alone."""
        protocol, transport = connected(self.factory("line"))
        protocol.conversation.send("late")  # type: ignore[attr-defined]
        protocol.conversation.send("later")  # type: ignore[attr-defined]
        self.assertEqual(transport.writes, [b"late\n", b"later\n"])

    def test_broadcastFramedOnce(self) -> None:
        """A broadcast reaches every other peer framed, with one write each, and frames once."""
        factory = self.factory("netstring", handler=Broadcast)
        pairs = [connected(factory, 40000 + i) for i in range(5)]
        framed: list[bytes] = []
        kind = type(pairs[0][0])
        original = kind.frame

        def counting(message: bytes) -> bytes:
            framed.append(message)
            return original(message)

        kind.frame = staticmethod(counting)  # type: ignore[method-assign]
        self.addCleanup(setattr, kind, "frame", staticmethod(original))
        pairs[0][0].dataReceived(b"2:hi,")
        self.assertEqual(framed, [b"hi"])
        self.assertEqual(pairs[0][1].writes, [])
        for _, transport in pairs[1:]:
            self.assertEqual(transport.writes, [b"2:hi,"])

    def test_closedByHandler(self) -> None:
        """A handler that closes its session mid-read stops the read there; replies before that still go."""

        class CloseOnQuit(Echo):
            def messageReceived(self, session: Any, text: str) -> None:
                if text == "quit":
                    session.close()
                else:
                    super().messageReceived(session, text)

        protocol, transport = connected(self.factory("line", handler=CloseOnQuit))
        protocol.dataReceived(b"one\nquit\ntwo\n")
        self.assertEqual(transport.writes, [b"one\n"])
        self.assertTrue(transport.disconnecting)


class EchoClient(Protocol):
    """
    Sends its lines at once, and fires C{done} with what came back once it
    has C{expected} bytes.
    """

    def __init__(self, lines: bytes, expected: int) -> None:
        self.lines = lines
        self.expected = expected
        self.received = b""
        self.done: Deferred[bytes] = Deferred()
        self.transport: Any = None

    def connectionMade(self) -> None:
        self.transport.write(self.lines)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.expected and not self.done.called:
            self.done.callback(self.received)


class EagerTCPTests(TestCase):
    """
    Over real loopback TCP the protocol writes eagerly and loses nothing.
    """

    timeout = 20

    async def serve(self, handler: Any = Echo, **limits: Any) -> tuple[int, list[FramedProtocol]]:
        hub = makeHub(reactor, 0, handler=handler)  # type: ignore[arg-type]
        factory = MessageFactory(FRAMINGS["line"], hub, Limits(**limits))
        made: list[FramedProtocol] = []
        build = factory.buildProtocol

        def recording(addr: Any) -> FramedProtocol:
            protocol = build(addr)
            made.append(protocol)
            return protocol

        factory.buildProtocol = recording  # type: ignore[method-assign]
        port: Any = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)

        def abortAll() -> None:
            for protocol in made:
                protocol.abort()

        self.addCleanup(abortAll)
        return port.getHost().port, made

    async def test_manyRepliesInOrder(self) -> None:
        """Ten thousand lines sent at once come back in order, written eagerly."""
        port, made = await self.serve()
        lines = b"".join(b"line %d\n" % i for i in range(10000))
        client = EchoClient(lines, len(lines))
        connection: Any = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
            Factory.forProtocol(lambda: client)
        )
        self.addCleanup(connection.transport.loseConnection)
        received = await client.done
        self.assertEqual(received, lines)
        self.assertTrue(made[0].eager)

    async def test_peerThatStopsReading(self) -> None:
        """A peer that stops reading fills the socket, pauses the protocol and is dropped past --max-pending-bytes."""
        port, made = await self.serve(maxPendingBytes=1 << 20)
        client = EchoClient(b"", 1)
        connection: Any = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
            Factory.forProtocol(lambda: client)
        )
        self.addCleanup(connection.transport.loseConnection)
        connection.transport.pauseProducing()  # the client stops reading
        while not made:
            await deferLaterZero()
        server = made[0]
        lost: Deferred[None] = Deferred()
        original = server.connectionLost

        def connectionLost(reason: Any) -> None:
            original(reason)
            lost.callback(None)

        server.connectionLost = connectionLost  # type: ignore[method-assign,assignment]
        chunk = b"x" * 60000
        paused = False
        for _ in range(400):  # 24 MB at most: more than any socket buffer and the cap
            if server.closing:
                break
            server.sendMessage(chunk)
            paused = paused or server.writePaused
        await lost
        self.assertTrue(paused)
        self.assertTrue(server.closing)
        self.assertEqual(server.factory.hub.stats.slowConsumers, 1)


def deferLaterZero() -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, 0.01, lambda: None)
