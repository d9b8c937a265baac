"""
The connection layer shared by every framing: lifecycle, limits, and the
L{IPeer} face a conversation talks to.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, ITransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpcomm.interfaces import IConversation, IPeer
from tcpcomm.registry import PeerRegistry

log = Logger()


@implementer(IPeer, IHalfCloseableProtocol)
class FramedProtocol(Protocol):
    """
    Base of every framing: a framing subclass turns bytes into messages and
    hands each to C{self.conversation.messageReceived}, and implements
    L{sendMessage}; this class does the rest.
    """

    factory: MessageFactory
    transport: ITransport
    id: str = "?"
    conversation: IConversation
    MAX_LENGTH: int

    def connectionMade(self) -> None:
        self.factory.peerConnected(self)
        self.conversation.connected()

    def readConnectionLost(self) -> None:
        self.conversation.inputEnded()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.conversation.disconnected(reason)
        self.factory.peerLost(self, reason)

    def tooLong(self, size: int) -> None:
        """
        The peer sent a message over the limit: say so and hang up on it.
        """
        log.warn(
            "disconnecting {peer}: message of {size} bytes or more exceeds "
            "--max-message-size {limit}",
            peer=self.id,
            size=size,
            limit=self.MAX_LENGTH,
        )
        self.transport.loseConnection()

    def sendMessage(self, message: bytes) -> None:
        raise NotImplementedError()

    def close(self) -> None:
        self.transport.loseConnection()

    def abort(self) -> None:
        self.transport.abortConnection()  # type: ignore[attr-defined]


class MessageFactory(Factory[FramedProtocol]):
    """
    Builds one framing's protocols and gives each its id and conversation.

    @ivar registry: the peers connected through this factory.
    """

    protocol: type[FramedProtocol]
    noisy = False

    def __init__(
        self,
        protocol: type[FramedProtocol],
        conversationFor: Callable[[IPeer], IConversation],
        maxMessageSize: int,
        registry: PeerRegistry | None = None,
    ) -> None:
        self.protocol = protocol
        self.conversationFor = conversationFor
        self.maxMessageSize = maxMessageSize
        self.registry = PeerRegistry() if registry is None else registry

    def buildProtocol(self, addr: IAddress | None) -> FramedProtocol:
        p = self.protocol()
        p.factory = self
        p.MAX_LENGTH = self.maxMessageSize
        return p

    def peerConnected(self, peer: FramedProtocol) -> None:
        """
        Name, register and log a new connection, and start its conversation.
        """
        peer.id = self.registry.idFor(peer.transport.getPeer())
        peer.conversation = self.conversationFor(peer)
        self.registry.add(peer)
        log.info("connected {peer}", peer=peer.id)

    def peerLost(self, peer: FramedProtocol, reason: Failure) -> None:
        """
        Forget and log a connection that went away.
        """
        self.registry.remove(peer)
        log.info("lost {peer}: {reason}", peer=peer.id, reason=reason.getErrorMessage())
