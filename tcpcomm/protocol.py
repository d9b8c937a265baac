"""
The connection layer shared by every framing: lifecycle, limits, and the
L{IPeer} face a conversation talks to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IHandshakeListener,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpcomm.interfaces import IConversation, IPeer
from tcpcomm.tls import subjectName

if TYPE_CHECKING:
    from tcpcomm.hub import Hub

log = Logger()


@implementer(IPeer, IHalfCloseableProtocol, IHandshakeListener)
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
    #: Over TLS: whether the handshake completed, and the common name of the
    #: certificate the peer presented (L{None} if it presented none).
    secured: bool = False
    tlsSubject: str | None = None

    def connectionMade(self) -> None:
        self.factory.peerConnected(self)
        self.conversation.connected()

    def handshakeCompleted(self) -> None:
        self.secured = True
        self.factory.peerSecured(self)

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
        self.factory.hub.stats.oversized += 1
        log.warn(
            "disconnecting {peer}: message of {size} bytes or more exceeds "
            "--max-message-size {limit}",
            event="oversized",
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

    def __init__(self, protocol: type[FramedProtocol], hub: Hub, maxMessageSize: int) -> None:
        self.protocol = protocol
        self.hub = hub
        self.maxMessageSize = maxMessageSize

    def buildProtocol(self, addr: IAddress | None) -> FramedProtocol:
        p = self.protocol()
        p.factory = self
        p.MAX_LENGTH = self.maxMessageSize
        return p

    def peerConnected(self, peer: FramedProtocol) -> None:
        """
        Name and log a new connection, and give it its conversation.
        """
        peer.id = self.hub.registry.idFor(peer.transport.getPeer())
        peer.conversation = self.hub.conversationFor(peer)
        log.info("connected {peer}", event="connected", peer=peer.id)

    def peerSecured(self, peer: FramedProtocol) -> None:
        """
        The TLS handshake with C{peer} completed: note and log whose
        certificate it presented.
        """
        certificate = peer.transport.getPeerCertificate()  # type: ignore[attr-defined]
        peer.tlsSubject = subjectName(certificate)
        log.info(
            "secured {peer}: certificate {subject}",
            event="secured",
            peer=peer.id,
            subject=peer.tlsSubject,
        )

    def peerLost(self, peer: FramedProtocol, reason: Failure) -> None:
        """
        Log a connection that went away.
        """
        if not peer.secured and hasattr(peer.transport, "getPeerCertificate"):
            log.warn(
                "TLS handshake with {peer} failed: {reason}",
                event="tls-failed",
                peer=peer.id,
                reason=reason.getErrorMessage(),
            )
        log.info(
            "lost {peer}: {reason}", event="lost", peer=peer.id, reason=reason.getErrorMessage()
        )
