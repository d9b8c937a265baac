"""A tcpcomm server and client talking in memory, through iosim, on one clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.client import ClientFactory, RetryPolicy
from tcpcomm.conversation import DelayedReply, Script
from tcpcomm.framing import FRAMINGS
from tcpcomm.interfaces import IPeer
from tcpcomm.protocol import MessageFactory
from tcpcomm.templates import Template


class PairTests(SynchronousTestCase):
    """
    Server and client hold the tutorial's conversation in every framing.
    """

    def converse(self, framing: str) -> tuple[list[str], list[str]]:
        clock = Clock()
        heard: dict[str, list[str]] = {"server": [], "client": []}

        def script(side: str, greeting: str | None) -> Script:
            return HearingScript(
                heard[side],
                clock=clock,
                encoding="utf-8",
                replyDelay=5,
                reply=Template(f"{side} reply", "utf-8"),
                errorReply=Template(f"{side} error", "utf-8"),
                greeting=None if greeting is None else Template(greeting, "utf-8"),
            )

        serverFactory = MessageFactory(
            FRAMINGS[framing], script("server", None).conversationFor, 1000
        )
        clientFactory = ClientFactory(
            FRAMINGS[framing],
            script("client", "hello").conversationFor,
            1000,
            RetryPolicy(clock, 1, 30, 10),
        )
        server, client, pump = connectedServerAndClient(
            lambda: serverFactory.buildProtocol(None),
            lambda: clientFactory.buildProtocol(None),
            clock=clock,
        )
        pump.flush(advanceClock=False)
        self.assertEqual(len(serverFactory.registry), 1)
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


class HearingScript(Script):
    """
    A script whose conversations also note each message they hear.
    """

    def __init__(self, heard: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.heard = heard

    def conversationFor(self, peer: IPeer) -> DelayedReply:
        return HearingReply(self, peer)


class HearingReply(DelayedReply):
    """
    A L{DelayedReply} that notes what it hears.
    """

    _script: HearingScript

    def messageReceived(self, message: bytes) -> None:
        self._script.heard.append(message.decode())
        super().messageReceived(message)
