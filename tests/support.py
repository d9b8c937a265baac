"""Test doubles shared by the unit tests: a server and client wired to a Clock."""

from __future__ import annotations

import json
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpcomm.descriptors import FileLimit
from tcpcomm.handlers import DelayedReply, HandlerFactory
from tcpcomm.hub.hub import Hub
from tcpcomm.interfaces import IConversation, IPeer
from tcpcomm.templates import Template, Texts
from tcpcomm.wire.framing import FRAMINGS
from tcpcomm.wire.protocol import FramedProtocol, Limits, MessageFactory

# 2026-11-28 12:00:00 in whatever zone the tests run: only the shape is checked.
NOON = 1795867200.0


def makeHub(
    clock: Clock,
    delay: float = 5.0,
    encoding: str = "utf-8",
    greeting: str | None = None,
    handler: HandlerFactory = DelayedReply,
) -> Hub:
    """
    A hub with short, recognisable texts.
    """
    texts = Texts(
        encoding=encoding,
        replyDelay=delay,
        reply=Template("reply {time}", encoding),
        errorReply=Template("error {time}", encoding),
        greeting=None if greeting is None else Template(greeting, encoding),
    )
    return Hub(clock, texts, handler)


def hubOf(factory: MessageFactory) -> Hub:
    """
    The hub C{factory} makes conversations with (the tests' factories all
    serve a L{Hub}).
    """
    hub = factory.side
    assert isinstance(hub, Hub), hub
    return hub


class RecordingHub(Hub):
    """
    A hub whose connections only record what happens to them.
    """

    def conversationFor(self, peer: IPeer) -> Recorder:
        return Recorder(peer)


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

    def messagesReceived(self, messages: list[bytes], now: float) -> None:
        self.messages.extend(messages)

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
    hub: Hub | None = None,
    record: bool = False,
    **limits: Any,
) -> tuple[FramedProtocol, StringTransport, Clock, MessageFactory]:
    """
    A server-side protocol of C{framing} on C{hub} (a new one by default),
    connected to a L{StringTransport} whose peer is C{127.0.0.1:port}.
    """
    if clock is None:
        clock = cast(Clock, hub.clock) if hub is not None else Clock()
    if clock.seconds() == 0:
        clock.advance(NOON)
    if hub is None:
        hub = makeHub(clock, delay)
        if record:
            hub = RecordingHub(clock, hub.texts, DelayedReply)
    factory = MessageFactory(
        FRAMINGS[framing], hub, Limits(maxMessageSize=maxMessageSize, **limits)
    )
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
    protocol.makeConnection(transport)
    return protocol, transport, clock, factory


class FakeFileLimit(FileLimit):
    """
    An RLIMIT_NOFILE of C{soft}/C{hard} (-1 is unlimited, as on Linux) that
    refuses any soft limit over C{ceiling} (as macOS does past OPEN_MAX).
    """

    def __init__(self, soft: int = 1024, hard: int = 1024, ceiling: int | None = None) -> None:
        self.limits: tuple[int, int] | None = (soft, hard)
        self.ceiling = ceiling

    def get(self) -> tuple[int, int] | None:
        return self.limits

    def set(self, soft: int, hard: int) -> None:
        if self.ceiling is not None and (soft == -1 or soft > self.ceiling):
            raise ValueError(f"not allowed: {soft}")
        self.limits = (soft, hard)


def callSite(
    site: Any,
    method: str,
    path: str,
    body: bytes | None = None,
    token: str | None = None,
    port: int = 50000,
) -> tuple[int, Any, dict[str, str]]:
    """
    One HTTP/1.1 request to an admin C{site} over a L{StringTransport} from
    C{127.0.0.1:port}: the status, the body (decoded JSON, or text) and the
    headers (names as HTTP spells them, C{Content-Type}), as a real client
    sees them.
    """
    address = IPv4Address("TCP", "127.0.0.1", port)
    channel = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if token is not None:
        head.append(f"Authorization: Bearer {token}")
    if body is not None:
        head += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}"]
    channel.dataReceived("\r\n".join(head).encode() + b"\r\n\r\n" + (body or b""))
    raw = transport.value()
    channel.connectionLost(Failure(ConnectionDone()))
    top, _, content = raw.partition(b"\r\n\r\n")
    statusLine, *lines = top.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers["-".join(w.capitalize() for w in name.strip().split("-"))] = value.strip()
    if headers.get("Content-Type", "").startswith("application/json"):
        return int(statusLine.split()[1]), json.loads(content), headers
    return int(statusLine.split()[1]), content.decode("utf-8", "replace"), headers
