"""Test doubles shared by the unit tests: a server and client wired to a Clock."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpcomm.conversation import Script
from tcpcomm.framing import FRAMINGS
from tcpcomm.interfaces import IConversation, IPeer
from tcpcomm.protocol import FramedProtocol, MessageFactory
from tcpcomm.registry import PeerRegistry
from tcpcomm.templates import Template

# 2026-11-28 12:00:00 in whatever zone the tests run: only the shape is checked.
NOON = 1795867200.0


def makeScript(
    clock: Clock, delay: float = 5.0, encoding: str = "utf-8", greeting: str | None = None
) -> Script:
    """
    A script with short, recognisable texts.
    """
    return Script(
        clock=clock,
        encoding=encoding,
        replyDelay=delay,
        reply=Template("reply {time}", encoding),
        errorReply=Template("error {time}", encoding),
        greeting=None if greeting is None else Template(greeting, encoding),
    )


@implementer(IConversation)
class Recorder:
    """
    A conversation that only records what happens to it.
    """

    def __init__(self, peer: IPeer) -> None:
        self.peer = peer
        self.events: list[object] = []
        self.messages: list[bytes] = []

    def connected(self) -> None:
        self.events.append("connected")

    def messageReceived(self, message: bytes) -> None:
        self.messages.append(message)

    def inputEnded(self) -> None:
        self.events.append("inputEnded")

    def disconnected(self, reason: Failure) -> None:
        self.events.append(reason)


def connect(
    framing: str = "line",
    delay: float = 5.0,
    maxMessageSize: int = 65536,
    port: int = 40000,
    clock: Clock | None = None,
    registry: PeerRegistry | None = None,
    record: bool = False,
) -> tuple[FramedProtocol, StringTransport, Clock, MessageFactory]:
    """
    A server-side protocol of C{framing}, connected to a L{StringTransport}
    whose peer is C{127.0.0.1:port}.
    """
    clock = Clock() if clock is None else clock
    clock.advance(NOON)
    conversationFor = Recorder if record else makeScript(clock, delay).conversationFor
    factory = MessageFactory(FRAMINGS[framing], conversationFor, maxMessageSize, registry)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
    protocol.makeConnection(transport)
    return protocol, transport, clock, factory
