"""
The small interfaces between the layers: a connection and its conversation
(L{IPeer}, L{IConversation}), what the wire asks of the side it serves
(L{ISide}, L{IStats}), and what a handler sees (L{ISession}, L{IHub},
L{IHandler}).
"""

from __future__ import annotations

from twisted.python.failure import Failure
from zope.interface import Attribute, Interface


class IPeer(Interface):
    """
    One connected peer as a conversation sees it: whole messages out, no sockets.
    """

    id = Attribute("A stable text id of the peer, such as C{'127.0.0.1:40522'}.")
    address = Attribute(
        "The peer's address as people write it: C{host:port}, C{[host]:port}, "
        "C{unix:path}, or C{unix} for the peer of a UNIX socket, which has no name."
    )
    tlsSubject = Attribute("Common name of the peer's TLS certificate, or L{None}.")
    closing = Attribute("Whether L{close} or L{abort} was called: nothing more is read.")
    conversation = Attribute(
        "The L{IConversation} the framing hands messages to; one may hand the connection "
        "over to another (a hello to the session it identified), once."
    )

    def frame(message: bytes) -> bytes:
        """
        C{message} as the framing puts it on the wire.
        """

    def sendMessage(message: bytes) -> None:
        """
        Send one message; the framing adds its delimiter or length prefix.
        """

    def sendFramed(data: bytes, message: bytes) -> None:
        """
        Send C{message}, which C{data} is, already framed with L{frame}.
        """

    def close() -> None:
        """
        Close the connection once everything already sent has been written.
        """

    def abort() -> None:
        """
        Drop the connection at once, discarding anything not yet written.
        """


class IConversation(Interface):
    """
    What one side says on one connection, and when; it never touches sockets.
    """

    def connected() -> None:
        """
        The connection is up and the peer can be sent messages.
        """

    def messagesReceived(messages: list[bytes], now: float) -> None:
        """
        The whole messages of one read, in order, which arrived at C{now}
        (seconds since the epoch); the framing calls this, once per read.
        """

    def inputEnded() -> None:
        """
        The peer closed its sending side; nothing more will arrive, but it
        still reads. Close the connection once owed messages are sent.
        """

    def disconnected(reason: Failure) -> None:
        """
        The connection is gone; nothing may be sent any more.
        """


class IStats(Interface):
    """
    The running totals of a side that its connections and conversations
    add to, each a plain integer: the peers the wire drops or refuses, and
    what sessions skip.
    """

    oversized = Attribute("Peers dropped for a message over C{--max-message-size}.")
    framingErrors = Attribute("Peers dropped for bytes that break the framing.")
    slowConsumers = Attribute("Peers dropped for not reading past C{--max-pending-bytes}.")
    timeouts = Attribute(
        "Peers dropped by C{--heartbeat-timeout}, C{--idle-timeout} or C{--message-timeout}."
    )
    refused = Attribute("Connections refused over the connection limit.")
    handshakeTimeouts = Attribute("Connections not ready within C{--handshake-timeout}, dropped.")
    handshakeEvictions = Attribute("Connections still not ready dropped to make room.")
    heartbeatsIn = Attribute("Empty messages (heartbeats) received.")
    decodeErrors = Attribute("Messages that did not decode.")


class ISide(Interface):
    """
    A side (a server, or a client) as the factory of its connections sees
    it: where a connection gets its conversation, and what the wire needs
    besides.
    """

    clock = Attribute("The L{IReactorTime} to read and schedule time with.")
    stats = Attribute("The side's L{IStats}, where the wire counts the peers it drops.")
    messageLog = Attribute(
        "The side's L{tcpcomm.messagelog.MessageLog}, where connections made and lost are "
        "logged with the messages, in order."
    )

    def conversationFor(peer: IPeer) -> IConversation:
        """
        The conversation of C{peer}, a connection now ready to carry messages.
        """

    def connectionCount() -> int:
        """
        How many connections have their conversation now (what
        C{--max-connections} counts, with those not ready yet).
        """

    def fullReply(now: float) -> bytes:
        """
        What a peer refused over the connection limit is told at C{now},
        unframed.
        """


class ISession(Interface):
    """
    One connection as a handler sees it: text in and out, and how it is doing.
    """

    id = Attribute("The peer's stable text id, such as C{'127.0.0.1:40522'}.")
    address = Attribute("The peer's address as people write it (see L{IPeer.address}).")
    tlsSubject = Attribute("Common name of the peer's TLS certificate, or L{None}.")
    since = Attribute("When the connection was made, in seconds since the epoch.")
    lastMessage = Attribute("When the last message arrived (seconds since the epoch), or L{None}.")
    messagesIn = Attribute("Messages received, heartbeats not counted.")
    messagesOut = Attribute("Messages sent.")
    bytesIn = Attribute("Bytes of the messages received, without framing.")
    bytesOut = Attribute("Bytes of the messages sent, without framing.")

    def send(text: str) -> None:
        """
        Send C{text} now, encoded with C{--encoding}.

        @raise UnicodeEncodeError: if the encoding cannot carry C{text}.
        """

    def sendBytes(message: bytes) -> None:
        """
        Send an already encoded message now.
        """

    def sendLater(delay: float, message: bytes) -> None:
        """
        Send the encoded C{message} after C{delay} seconds. It is owed: a peer
        that stops sending still gets it before the connection closes, and it
        is dropped if the connection is lost first.
        """

    def close() -> None:
        """
        Close the connection once what was sent has been written.
        """

    def abort() -> None:
        """
        Drop the connection at once, discarding anything not yet written.
        """


class IHub(Interface):
    """
    What a handler may do beyond one connection: reach the others.
    """

    clock = Attribute("The L{IReactorTime} to read and schedule time with.")
    texts = Attribute("The side's L{tcpcomm.templates.Texts}: greeting, replies, delay.")

    def sessions() -> list[ISession]:
        """
        Every connected session.
        """

    def get(sessionId: str) -> ISession | None:
        """
        The session with id C{sessionId}, if connected.
        """

    def broadcast(text: str, exclude: ISession | None = None) -> int:
        """
        Send C{text} to every session but C{exclude}; return how many got it.
        """

    def broadcastBytes(message: bytes, exclude: ISession | None = None) -> int:
        """
        Send an encoded message to every session but C{exclude}, framed once
        for all; return how many got it.
        """


class IHandler(Interface):
    """
    The conversation logic of one side, chosen with C{--handler}.

    A handler is made once per process by a factory called with the
    L{IHub}. Its methods are called in the reactor thread and must not
    block; an exception they raise is logged with its traceback, and the
    connection and the process carry on.
    """

    def connected(session: ISession) -> None:
        """
        A connection is up.
        """

    def messageReceived(session: ISession, text: str) -> None:
        """
        C{session}'s peer sent C{text} (already decoded; bytes that do not
        decode are answered with C{--error-reply} and never get here).
        """

    def disconnected(session: ISession, reason: Failure) -> None:
        """
        The connection is gone.
        """


class IFleet(Interface):
    """
    What a server's hub tells the fleet it is part of (C{--backplane}):
    which sessions it holds.
    """

    def joined(session: ISession) -> None:
        """
        C{session} is identified and in the hub's registry.
        """

    def left(session: ISession) -> None:
        """
        C{session} is gone.
        """
