"""
One connection's conversation: decoding, counting, owed sends, and handing
each message to the side's handler, whose failures stay its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpcomm.interfaces import IConversation, IHandler, IPeer, ISession, IStats
from tcpcomm.logs import RateLimiter
from tcpcomm.messagelog import MessageLog
from tcpcomm.templates import Texts

# The namespace its lines had before the package had layers: operators filter on it.
log = Logger(namespace="tcpcomm.session")

#: How many bytes of an undecodable message its log line shows.
LOGGED_BYTES = 64
UNDECODABLE = "undecodable message from {peer}: {data!r} ({reason})"
UNDECODABLE_CUT = "undecodable message from {peer}: {data!r}... ({size} bytes; {reason})"

#: A watcher of the traffic and of peers coming and going: called with
#: C{(kind, session, text)}, kind one of C{in}, C{out}, C{connected}, C{lost}.
Watcher = Callable[[str, ISession, str], None]


class SessionHub(Protocol):
    """
    What a session needs of its side's hub (L{tcpcomm.hub.hub.Hub}), said
    here because the hub imports the sessions it makes, not the other way.
    """

    clock: IReactorTime
    texts: Texts
    handler: IHandler
    logMessages: bool
    messageLog: MessageLog
    watchers: list[Watcher]
    undecodableLines: RateLimiter

    @property
    def stats(self) -> IStats: ...

    def sessionStarted(self, session: Session) -> None: ...

    def sessionEnded(self, session: Session, reason: Failure) -> None: ...

    def failed(self, method: str, session: Session) -> None: ...

    def notify(self, direction: str, session: ISession, text: str) -> None: ...

    def watch(self, direction: str, session: Session, message: bytes) -> None: ...


@implementer(IConversation, ISession)
class Session:
    """
    The conversation of one connection: the framing hands it whole messages,
    it hands decoded text to the hub's handler, and it keeps the numbers the
    admin API shows.
    """

    __slots__ = (
        "hub",
        "peer",
        "id",
        "since",
        "lastMessage",
        "messagesIn",
        "messagesOut",
        "bytesIn",
        "bytesOut",
        "_owed",
        "_inputEnded",
    )

    def __init__(self, hub: SessionHub, peer: IPeer) -> None:
        self.hub = hub
        self.peer = peer
        self.id: str = peer.id
        self.since = hub.clock.seconds()
        self.lastMessage: float | None = None
        self.messagesIn = self.messagesOut = self.bytesIn = self.bytesOut = 0
        # Made on the first delayed send: an empty deque is ~700 bytes, a
        # third of what an idle connection costs.
        self._owed: deque[IDelayedCall] | None = None
        self._inputEnded = False

    @property
    def address(self) -> str:
        return self.peer.address

    @property
    def tlsSubject(self) -> str | None:
        return self.peer.tlsSubject

    # IConversation: what the framing calls.

    def connected(self) -> None:
        self.hub.sessionStarted(self)

    def messagesReceived(self, messages: list[bytes], now: float) -> None:
        """
        The messages of one read, which arrived at C{now}: each decoded,
        logged and handed to the handler, in order. Every message passes
        through here: counts are kept per read, and the loop does only what
        each message needs.
        """
        hub = self.hub
        heartbeats = messages.count(b"")
        if heartbeats:
            # Activity, never a message, never answered.
            hub.stats.heartbeatsIn += heartbeats
            if heartbeats == len(messages):
                return
        self.messagesIn += len(messages) - heartbeats
        size = sum(map(len, messages))
        self.bytesIn += size
        self.lastMessage = now
        encoding = hub.texts.encoding
        handler = hub.handler
        held = logEach = None
        if hub.logMessages:
            held = hub.messageLog.heldLines(size)
            if held is None:
                logEach = hub.messageLog.message
        sessionId = self.id
        peer = self.peer
        for message in messages:
            if not message:
                continue
            try:
                text = message.decode(encoding)
            except UnicodeDecodeError as e:
                self._undecodable(message, e, now)
                continue
            if held is not None:
                held.append((sessionId, text))
            elif logEach is not None:
                logEach(sessionId, text)
            if hub.watchers:
                hub.notify("in", self, text)
            try:
                handler.messageReceived(self, text)
            except Exception:
                hub.failed("messageReceived", self)
            if peer.closing:
                return  # closed by the handler: the rest goes unread

    def _undecodable(self, message: bytes, error: UnicodeDecodeError, now: float) -> None:
        hub = self.hub
        hub.stats.decodeErrors += 1
        size = len(message)
        if hub.undecodableLines.allow(self.id):
            log.warn(
                UNDECODABLE if size <= LOGGED_BYTES else UNDECODABLE_CUT,
                event="undecodable",
                peer=self.id,
                data=message[:LOGGED_BYTES],
                size=size,
                reason=str(error),
            )
        self.sendBytes(hub.texts.errorReply.render(now))

    def inputEnded(self) -> None:
        self._inputEnded = True
        if not self._owed:
            self.peer.close()

    def disconnected(self, reason: Failure) -> None:
        owed, self._owed = self._owed, None
        for call in owed or ():
            if call.active():
                call.cancel()
        self.hub.undecodableLines.forget(self.id)
        self.hub.sessionEnded(self, reason)

    # ISession: what handlers and the admin API call.

    def send(self, text: str) -> None:
        # sendBytes, written out: a handler's every reply comes this way.
        message = text.encode(self.hub.texts.encoding)
        self.peer.sendMessage(message)
        self.messagesOut += 1
        self.bytesOut += len(message)
        if self.hub.watchers:
            self.hub.notify("out", self, text)  # the text it has: no decoding back

    def sendBytes(self, message: bytes) -> None:
        """
        Send an encoded message now.
        """
        self.peer.sendMessage(message)
        self.messagesOut += 1
        self.bytesOut += len(message)
        if self.hub.watchers:
            self.hub.watch("out", self, message)

    def sendFramed(self, framed: bytes, message: bytes) -> None:
        """
        Send C{message}, already framed as C{framed} (a broadcast frames it
        once for everyone).
        """
        self.peer.sendFramed(framed, message)
        self.messagesOut += 1
        self.bytesOut += len(message)
        if self.hub.watchers:
            self.hub.watch("out", self, message)

    def sendLater(self, delay: float, message: bytes) -> None:
        if self._owed is None:
            self._owed = deque()
        self._owed.append(self.hub.clock.callLater(delay, self._sendOwed, message))

    def _sendOwed(self, message: bytes) -> None:
        # Calls due at the same instant may run in any order: drop every
        # finished call from the front, so the queue is empty exactly when
        # nothing is owed.
        owed = self._owed
        assert owed is not None
        while owed and not owed[0].active():
            owed.popleft()
        self.sendBytes(message)
        if self._inputEnded and not owed:
            self.peer.close()

    def close(self) -> None:
        self.peer.close()

    def abort(self) -> None:
        """
        Drop the connection at once.
        """
        self.peer.abort()
