"""
The connection layer shared by every framing: lifecycle, limits, and the
L{IPeer} face a conversation talks to.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpcomm.interfaces import IConversation, IPeer, ISide, IStats
from tcpcomm.logs import RateLimiter
from tcpcomm.wire.address import PeerIds, addressText
from tcpcomm.wire.eager import canWriteEagerly, writeEagerly
from tcpcomm.wire.liveness import LivenessTimers, Watchdog, tcpSocket, tuneSocket
from tcpcomm.wire.tls import subjectName

# The namespace its lines had before the package had layers: operators filter on it.
log = Logger(namespace="tcpcomm.protocol")

#: Most messages, heartbeats included, that one connection's input may deliver
#: in one reactor turn. Twisted reads up to 64 KiB per connection per turn,
#: and 64 KiB of empty lines is 65,536 messages: past this many, the framing
#: keeps the rest, stops reading, and goes on at the next turn, so one
#: flooding peer leaves the reactor to everyone else in between.
MESSAGES_PER_TURN = 1024

#: What a framing's C{split} makes of the bytes at hand: the whole messages
#: in them (at most L{MESSAGES_PER_TURN}), the bytes left for later, whether
#: it stopped at that bound, and 0, or the size of a message over
#: C{--max-message-size}, or -1 for bytes that break the framing (the
#: messages before them still count).
Split = tuple[list[bytes], bytes, bool, int]


@dataclass(frozen=True)
class Limits:
    """
    What a side allows its peers: message size, unread output, connection
    count (servers), the time a connection may take to become ready (its TLS
    handshake), and the liveness settings (see L{tcpcomm.wire.liveness}).
    """

    maxMessageSize: int = 65536
    maxPendingBytes: int = 1 << 20
    maxConnections: int | None = None
    idleTimeout: float = 0.0
    messageTimeout: float = 0.0
    heartbeat: float = 0.0
    heartbeatTimeout: float = 0.0
    keepalive: float = 0.0
    handshakeTimeout: float = 10.0


@implementer(IPeer, IHalfCloseableProtocol, IHandshakeListener, IPushProducer)
class FramedProtocol(Protocol):
    """
    Base of every framing: a framing subclass implements L{split} and
    L{frame}; this class does the rest. Each read goes to the conversation
    as one list of messages, and the replies written while it handles them
    leave as one write, straight to the socket when nothing is queued (see
    L{tcpcomm.wire.eager}).

    It is also the producer of what it writes: when the transport's buffer
    fills because the peer does not read, the transport pauses it, and it
    counts what it is still asked to send; past C{--max-pending-bytes} it
    drops the peer.
    """

    factory: MessageFactory
    transport: ITransport
    id: str = "?"
    conversation: IConversation
    maxMessageSize: int
    #: Over TLS: whether the handshake completed, and the common name of the
    #: certificate the peer presented (L{None} if it presented none).
    secured: bool = False
    tlsSubject: str | None = None
    #: While the transport's buffer is full: bytes sent since it filled.
    writePaused: bool = False
    pendingBytes: int = 0
    watchdog: Watchdog | None = None
    unregistered: bool = False
    #: Set by L{close} and L{abort}: what is still to be read goes unread.
    closing: bool = False
    #: Whether writes may go straight to the socket (L{tcpcomm.wire.eager}).
    eager: bool = False
    #: What arrived after the last whole message.
    _buffer: bytes = b""
    #: While a read's messages are handled: the replies, written as one.
    _cork: list[bytes] | None = None
    #: Whether the connection can carry messages, and so has its conversation
    #: (over TLS: once the handshake completed).
    isReady: bool = False
    #: Until it is ready: what it waits for; whether it was dropped for not
    #: becoming ready in time (which is logged then).
    waitingFor: str = ""
    abandoned: bool = False
    #: While the messages of a read beyond L{MESSAGES_PER_TURN} wait for later
    #: turns: reading is paused, and more data (TLS hands one read over in
    #: pieces) is only buffered.
    inputHeld: bool = False
    _nextBatch: IDelayedCall | None = None
    _endedWhileHeld: bool = False

    @staticmethod
    def frame(message: bytes) -> bytes:
        """
        C{message} as this framing puts it on the wire.
        """
        raise NotImplementedError()

    def split(self, data: bytes) -> Split:
        """
        The messages in C{data}: everything that arrived and is not yet
        taken (see L{Split}).
        """
        raise NotImplementedError()

    @property
    def address(self) -> str:
        return addressText(self.transport.getPeer())

    def hasPartial(self) -> bool:
        """
        Whether a message has begun to arrive but is not complete.
        """
        return bool(self._buffer)

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return  # the rest of a read goes with a closed connection
        if self.inputHeld:
            self._buffer += data  # taken with the held messages, turn by turn
            return
        self._take(self._buffer + data if self._buffer else data)

    def _take(self, data: bytes) -> None:
        messages, self._buffer, bounded, error = self.split(data)
        watchdog = self.watchdog
        if watchdog is None and self._buffer and self.isReady:
            # With only --message-timeout, an idle connection needs no
            # watchdog: it gets one once a message is left unfinished.
            limits = self.factory.limits
            if limits.messageTimeout > 0:
                watchdog = self._watch(limits)
        if messages or watchdog is not None:
            now = self.factory.clock.seconds()
            if messages:
                self._cork = cork = []  # type: list[bytes]
                self.conversation.messagesReceived(messages, now)
                self._cork = None
                if cork:
                    self._send(self.frameAll(cork))
            if watchdog is not None:
                watchdog.received(bool(self._buffer), now)
        if error > 0:
            self.tooLong(error)
        elif error < 0:
            self.badFraming()
        elif bounded:
            self.holdInput()

    def frameAll(self, messages: list[bytes]) -> bytes:
        """
        C{messages} framed, one after the other, as one write.
        """
        return b"".join(map(self.frame, messages))

    def sendMessage(self, message: bytes) -> None:
        """
        Send C{message}: with the other replies to the read being handled,
        if one is, else now.
        """
        cork = self._cork
        if cork is not None:
            cork.append(message)
        else:
            self._send(self.frame(message))

    def sendFramed(self, data: bytes, message: bytes) -> None:
        """
        Send C{message}, which C{data} is already framed.
        """
        cork = self._cork
        if cork is not None:
            cork.append(message)
        else:
            self._send(data)

    def _send(self, data: bytes) -> None:
        if self.eager:
            writeEagerly(self.transport, data)
        else:
            self.transport.write(data)
        if self.writePaused:
            self.overdue(len(data))
        watchdog = self.watchdog
        if watchdog is not None and watchdog.heartbeat:
            # The next heartbeat is due --heartbeat seconds after this; the
            # watchdog's timer reads it when it wakes, and is not moved.
            watchdog.lastSent = self.factory.clock.seconds()

    def connectionMade(self) -> None:
        factory = self.factory
        factory.peerConnected(self)
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
        limits = factory.limits
        sock = tcpSocket(self.transport)
        if sock is not None:
            tuneSocket(sock, limits.keepalive, limits.heartbeat)
        if canWriteEagerly(self.transport):
            self.eager = True
        if ISSLTransport.providedBy(self.transport):
            factory.peerWaiting(self, "the TLS handshake")  # until handshakeCompleted
        else:
            self.ready()

    def ready(self) -> None:
        """
        The connection can carry messages: its conversation starts, so that
        a handler, a broadcast or the admin API never sees a peer that might
        still fail its TLS handshake.
        """
        if self.transport.disconnecting:  # type: ignore[attr-defined]
            return  # dropped while waiting
        factory = self.factory
        factory.peerReady(self)
        limits = factory.limits
        if limits.idleTimeout > 0 or limits.heartbeat > 0:
            self._watch(limits)
        self.isReady = True
        self.conversation = factory.side.conversationFor(self)
        self.conversation.connected()

    def _watch(self, limits: Limits) -> Watchdog:
        factory = self.factory
        watchdog = self.watchdog = Watchdog(
            self,
            factory.timers,
            factory.stats,
            limits.idleTimeout,
            limits.messageTimeout,
            limits.heartbeat,
            limits.heartbeatTimeout,
        )
        return watchdog

    def overdue(self, size: int) -> None:
        """
        C{size} more bytes were sent while the peer is not reading.
        """
        self.pendingBytes += size
        limit = self.factory.limits.maxPendingBytes
        if self.pendingBytes > limit:
            self.factory.stats.slowConsumers += 1
            log.warn(
                "disconnecting {peer}: it does not read, and {size} bytes wait to be sent "
                "(--max-pending-bytes {limit})",
                event="slow-consumer",
                peer=self.id,
                size=self.pendingBytes,
                limit=limit,
            )
            self.pendingBytes = -(2**62)  # say it once
            self.abort()

    # IPushProducer: the transport's buffer filled, or drained.

    # Reading from the peer goes on while paused: TLS pauses its producer
    # until the handshake is done, and a paused read would stall the
    # handshake itself. A peer that sends without reading is bounded by the
    # count instead.

    def pauseProducing(self) -> None:
        # Twisted calls this on every write while its buffer is full: count
        # from the first.
        if not self.writePaused:
            self.writePaused = True
            self.pendingBytes = 0

    def resumeProducing(self) -> None:
        self.writePaused = False
        self.pendingBytes = 0

    def stopProducing(self) -> None:
        pass

    def handshakeCompleted(self) -> None:
        self.secured = True
        self.factory.peerSecured(self)
        self.ready()

    # The bound on one read's work (see MESSAGES_PER_TURN).

    def holdInput(self) -> None:
        """
        The framing stopped at L{MESSAGES_PER_TURN} with more buffered: stop
        reading, and take the next batch at the next reactor turn.
        """
        if self.transport.disconnecting:  # type: ignore[attr-defined]
            return  # what is held goes with the connection
        if not self.inputHeld:
            self.inputHeld = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        if self._nextBatch is None:
            self._nextBatch = self.factory.clock.callLater(0, self._takeNextBatch)

    def _takeNextBatch(self) -> None:
        self._nextBatch = None
        transport = self.transport
        if transport.disconnecting:  # type: ignore[attr-defined]
            return
        self._take(self._buffer)
        if self._nextBatch is not None or transport.disconnecting:  # type: ignore[attr-defined]
            return
        self.inputHeld = False
        if self._endedWhileHeld:
            # The end of input came after the messages just taken.
            self.conversation.inputEnded()
        else:
            transport.resumeProducing()  # type: ignore[attr-defined]

    def readConnectionLost(self) -> None:
        if not self.isReady:
            self.close()  # it can never become ready now
        elif self.inputHeld:
            self._endedWhileHeld = True
        else:
            self.conversation.inputEnded()

    def writeConnectionLost(self) -> None:
        self.close()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._nextBatch is not None:
            self._nextBatch.cancel()
            self._nextBatch = None
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        if self.isReady:
            self.conversation.disconnected(reason)
        self.factory.peerLost(self, reason)
        if self.isReady:
            # The session and the protocol refer to each other: let go here,
            # so that a closed connection's memory is freed at once rather
            # than by the cycle collector some time later.
            self.isReady = False
            del self.conversation

    def tooLong(self, size: int) -> None:
        """
        The peer sent a message over the limit: say so and hang up on it.
        """
        if self.transport.disconnecting:  # type: ignore[attr-defined]
            return  # already said: the rest of its last chunk is moot
        self.factory.stats.oversized += 1
        log.warn(
            "disconnecting {peer}: message of {size} bytes or more exceeds "
            "--max-message-size {limit}",
            event="oversized",
            peer=self.id,
            size=size,
            limit=self.factory.limits.maxMessageSize,
        )
        self.close()

    def badFraming(self) -> None:
        """
        The peer's bytes break the framing: say so and hang up on it.
        """
        self.factory.stats.framingErrors += 1
        log.warn(
            "disconnecting {peer}: not a netstring, or one longer than --max-message-size {limit}",
            event="bad-framing",
            peer=self.id,
            limit=self.maxMessageSize,
        )
        self.close()

    def close(self) -> None:
        # A registered producer keeps a transport open: TCP once it has
        # paused it, TLS always.
        self.closing = True
        self.transport.loseConnection()
        if not self.unregistered:
            self.unregistered = True
            self.transport.unregisterProducer()  # type: ignore[attr-defined]

    def abort(self) -> None:
        self.closing = True
        self.transport.abortConnection()  # type: ignore[attr-defined]


#: Seconds a refused peer that could not be told at once may take to read
#: it before it is dropped: each one waiting holds a file descriptor.
REFUSAL_TIMEOUT = 10.0


@implementer(IHandshakeListener)
class Refusal(Protocol):
    """
    What a peer over the connection limit gets: one message saying so, in
    its framing, and a closed connection.

    Over plain TCP and UNIX sockets both happen at once, so the descriptor
    is free again before the next connection is accepted: Twisted accepts a
    hundred connections or more per reactor turn, and at the descriptor
    limit holding each refused one until the next turn runs the process out
    of them (then Twisted accepts the connections waiting and closes them
    without a word). Over TLS the message waits for the handshake, which
    gets C{--handshake-timeout} seconds like any other.
    """

    _deadline: IDelayedCall | None = None

    def __init__(
        self,
        message: bytes,
        factory: MessageFactory,
        limit: int,
        cause: str,
        reason: str,
        handshakeTimeout: float = 0,
    ) -> None:
        self._message = message
        self._factory = factory
        self._limit = limit
        self._cause = cause
        self._reason = reason
        self._handshakeTimeout = handshakeTimeout

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        factory = self._factory
        factory.stats.refused += 1
        peer = addressText(transport.getPeer())
        if factory.refusedLines.allow():
            log.warn(
                "refusing {peer}: {reason}",
                event="refused",
                peer=peer,
                limit=self._limit,
                cause=self._cause,
                reason=self._reason,
            )
        message = self._message
        if isinstance(transport, FileDescriptor):
            message = self._sendNow(transport, message)
            if not message:
                return
        transport.write(message)
        transport.loseConnection()
        if ISSLTransport.providedBy(transport) and self._handshakeTimeout > 0:
            self._deadline = factory.clock.callLater(
                self._handshakeTimeout,
                _dropNotReady,
                factory,
                peer,
                transport,
                "the TLS handshake",
                self._handshakeTimeout,
            )
        else:
            self._lingerAtMost(transport)

    def _lingerAtMost(self, transport: ITransport) -> None:
        self._deadline = self._factory.clock.callLater(
            REFUSAL_TIMEOUT,
            transport.abortConnection,  # type: ignore[attr-defined]
        )

    def _sendNow(self, transport: FileDescriptor, message: bytes) -> bytes:
        """
        Send C{message} straight to the socket and close it now; return
        what is left to send the usual way if the socket did not take it all.
        """
        sock = transport.getHandle()  # type: ignore[attr-defined]
        try:
            sent = sock.send(message)
        except BlockingIOError:
            return message
        except OSError:
            sent = len(message)  # the peer is gone already
        if sent < len(message):
            return message[sent:]
        try:
            sock.recv(65536)  # what it already sent: closing with it unread is a reset
        except OSError:
            pass
        # What the reactor calls once a closing connection's buffer is
        # written; called here, it writes nothing and closes the socket.
        transport.connectionLost(Failure(ConnectionDone()))
        return b""

    def handshakeCompleted(self) -> None:
        # The message goes now; the peer has as long to read it as any
        # other refused peer.
        self._stopDeadline()
        assert self.transport is not None
        self._lingerAtMost(self.transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stopDeadline()

    def _stopDeadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None


def _dropNotReady(
    factory: MessageFactory, peer: str, transport: ITransport, waitingFor: str, timeout: float
) -> None:
    """
    Drop a connection that did not become ready within C{--handshake-timeout}.
    """
    factory.stats.handshakeTimeouts += 1
    transport.abortConnection()  # type: ignore[attr-defined]
    if not factory.handshakeLines.allow():
        return
    log.warn(
        "disconnecting {peer}: {waitingFor} did not finish within {timeout} s "
        "(--handshake-timeout)",
        event="handshake-timeout",
        peer=peer,
        waitingFor=waitingFor,
        timeout=timeout,
    )


class MessageFactory(Factory[FramedProtocol]):
    """
    Builds one framing's protocols and gives each its id and, from the
    side it serves, its conversation, within the side's L{Limits}.
    """

    protocol: type[FramedProtocol]
    noisy = False

    def __init__(self, protocol: type[FramedProtocol], side: ISide, limits: Limits) -> None:
        self.protocol = protocol
        self.side = side
        self.clock: IReactorTime = side.clock
        self.stats: IStats = side.stats
        #: The heartbeats and deadlines of every connection, on one timer.
        self.timers = LivenessTimers(self.clock)
        self.ids = PeerIds()
        #: Warnings a storm of connections can repeat at will, at most one
        #: line per 10 s: refused connections, and connections whose
        #: handshake did not finish.
        self.refusedLines = RateLimiter("refused", "refused connections", self.clock)
        self.handshakeLines = RateLimiter(
            "handshake-timeout", "connections dropped before their handshake finished", self.clock
        )
        #: Connections not ready yet (in their TLS handshake), oldest first,
        #: with their deadlines.
        self.waiting: dict[FramedProtocol, IDelayedCall | None] = {}
        #: The most clients the process's file descriptors hold, when that
        #: is fewer than C{--max-connections} (see L{tcpcomm.descriptors}),
        #: and that descriptor limit.
        self._fileCap: int | None = None
        self._fileLimit: int | None = None
        self.setLimits(limits)

    def setLimits(self, limits: Limits) -> None:
        """
        Use C{limits} from now on (a reload): connections made from now on
        get them.
        """
        self.limits = limits
        #: The most clients at once: C{--max-connections}, or fewer when the
        #: file descriptors do not hold that many.
        self.connectionLimit = limits.maxConnections
        if self._fileCap is not None and limits.maxConnections is not None:
            self.connectionLimit = min(limits.maxConnections, self._fileCap)

    def lowerConnectionLimit(self, limit: int, fileLimit: int) -> None:
        """
        Accept at most C{limit} clients, all that C{fileLimit} descriptors hold.
        """
        self._fileCap = limit
        self._fileLimit = fileLimit
        self.setLimits(self.limits)

    def buildProtocol(self, addr: IAddress | None) -> FramedProtocol:
        limits = self.limits
        limit = self.connectionLimit
        if limit is not None and self.side.connectionCount() + len(self.waiting) >= limit:
            if not self.waiting:
                return self._refusal(limit)  # type: ignore[return-value]
            # Connections still in their handshake count, so that every
            # descriptor does, but never lock a client out: the oldest gives
            # up its place.
            self._evictOldest(limit)
        p = self.protocol()
        p.factory = self
        p.maxMessageSize = limits.maxMessageSize
        return p

    def _refusal(self, limit: int) -> Refusal:
        text = self.side.fullReply(self.clock.seconds())
        if self._fileCap is None or limit == self.limits.maxConnections:
            cause, reason = "max-connections", f"--max-connections {limit} reached"
        else:
            cause = "file-limit"
            reason = (
                f"{limit} clients connected, all that RLIMIT_NOFILE {self._fileLimit} allows "
                f"(--max-connections {self.limits.maxConnections})"
            )
        return Refusal(
            self.protocol.frame(text), self, limit, cause, reason, self.limits.handshakeTimeout
        )

    def peerConnected(self, peer: FramedProtocol) -> None:
        """
        Name and log a new connection.
        """
        peer.id = self.ids.idFor(peer.transport.getPeer())
        self.side.messageLog.event(log, "connected {peer}", event="connected", peer=peer.id)

    def peerWaiting(self, peer: FramedProtocol, waitingFor: str) -> None:
        """
        C{peer} is not ready until C{waitingFor} is done (then it calls
        L{FramedProtocol.ready}): drop it if that takes more than
        C{--handshake-timeout}.
        """
        peer.waitingFor = waitingFor
        timeout = self.limits.handshakeTimeout
        self.waiting[peer] = (
            self.clock.callLater(timeout, self._notReadyInTime, peer, timeout)
            if timeout > 0
            else None
        )

    def peerReady(self, peer: FramedProtocol) -> None:
        """
        C{peer} can carry messages now.
        """
        self._stopWaiting(peer)

    def _stopWaiting(self, peer: FramedProtocol) -> None:
        if peer in self.waiting:
            deadline = self.waiting.pop(peer)
            if deadline is not None and deadline.active():
                deadline.cancel()

    def _notReadyInTime(self, peer: FramedProtocol, timeout: float) -> None:
        del self.waiting[peer]
        peer.abandoned = True
        _dropNotReady(self, peer.id, peer.transport, peer.waitingFor, timeout)

    def _evictOldest(self, limit: int) -> None:
        peer = next(iter(self.waiting))
        self._stopWaiting(peer)
        peer.abandoned = True
        self.stats.handshakeEvictions += 1
        peer.abort()
        if not self.handshakeLines.allow():
            return
        log.warn(
            "disconnecting {peer} to make room: --max-connections {limit} reached, and it "
            "is the oldest connection still waiting for {waitingFor}",
            event="handshake-evicted",
            peer=peer.id,
            limit=limit,
            waitingFor=peer.waitingFor,
        )

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
        self._stopWaiting(peer)
        if not peer.secured and not peer.abandoned and ISSLTransport.providedBy(peer.transport):
            log.warn(
                "TLS handshake with {peer} failed: {reason}",
                event="tls-failed",
                peer=peer.id,
                reason=reason.getErrorMessage(),
            )
        self.side.messageLog.event(
            log,
            "lost {peer}: {reason}",
            event="lost",
            peer=peer.id,
            address=peer.address,
            reason=reason.getErrorMessage(),
        )
