"""A tcpcomm server and client talking in memory, through iosim, on one clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tcpcomm.client import ClientFactory, ClientStatus, RetryPolicy
from tcpcomm.handlers import DelayedReply
from tcpcomm.hub.hub import Hub
from tcpcomm.interfaces import IHandler, ISession
from tcpcomm.templates import Template, Texts
from tcpcomm.wire.framing import FRAMINGS
from tcpcomm.wire.protocol import Limits, MessageFactory


class PairTests(SynchronousTestCase):
    """
    Server and client hold the tutorial's conversation in every framing.
    """

    def converse(self, framing: str) -> tuple[list[str], list[str]]:
        clock = Clock()
        heard: dict[str, list[str]] = {"server": [], "client": []}

        def hub(side: str, greeting: str | None) -> Hub:
            texts = Texts(
                encoding="utf-8",
                replyDelay=5,
                reply=Template(f"{side} reply", "utf-8"),
                errorReply=Template(f"{side} error", "utf-8"),
                greeting=None if greeting is None else Template(greeting, "utf-8"),
            )
            return Hub(clock, texts, lambda hub: Hearing(DelayedReply(hub), heard[side]))

        serverHub = hub("server", None)
        serverFactory = MessageFactory(FRAMINGS[framing], serverHub, Limits(1000))
        clientFactory = ClientFactory(
            FRAMINGS[framing],
            hub("client", "hello"),
            Limits(1000),
            RetryPolicy(clock, 1, 30, 10),
            ClientStatus("server"),
        )
        server, client, pump = connectedServerAndClient(
            lambda: serverFactory.buildProtocol(None),
            lambda: clientFactory.buildProtocol(None),
            clock=clock,
        )
        pump.flush(advanceClock=False)
        self.assertEqual(len(serverHub.registry), 1)
        for _ in range(4):
            clock.advance(5)
            pump.flush(advanceClock=False)
        return heard["server"], heard["client"]

    def test_conversation(self) -> None:
        """The client greets, then each side answers the other 5 s later, in every framing."""
        for framing in ["line", "netstring", "int32"]:
            server, client = self.converse(framing)
            self.assertEqual(server, ["hello", "client reply", "client reply"], framing)
            self.assertEqual(client, ["server reply", "server reply"], framing)


@implementer(IHandler)
class Hearing:
    """
    A handler that notes what it hears, then lets another handle it.
    """

    def __init__(self, inner: IHandler, heard: list[str]) -> None:
        self.inner = inner
        self.heard = heard

    def connected(self, session: ISession) -> None:
        self.inner.connected(session)

    def messageReceived(self, session: ISession, text: str) -> None:
        self.heard.append(text)
        self.inner.messageReceived(session, text)

    def disconnected(self, session: ISession, reason: Failure) -> None:
        self.inner.disconnected(session, reason)
