"""
The hub of one side: its sessions, its handler, its texts and its numbers.
Handlers reach other sessions through it; the admin API reads it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpcomm.hub.queues import Queues
from tcpcomm.hub.registry import PeerRegistry
from tcpcomm.hub.session import Session, Watcher
from tcpcomm.interfaces import (
    IConversation,
    IFleet,
    IHandler,
    IHub,
    IPeer,
    ISession,
    ISide,
    IStats,
)
from tcpcomm.logs import RateLimiter
from tcpcomm.messagelog import MessageLog
from tcpcomm.templates import Texts

# The namespace its lines had before the package had layers: operators filter on it.
log = Logger(namespace="tcpcomm.hub")

#: More takeovers of one name than this within L{FLAP_WINDOW} seconds is
#: logged as flapping: two clients that share a name.
FLAP_TAKEOVERS = 5
FLAP_WINDOW = 60.0


#: The traffic counters each session keeps, which the side's totals add up.
TRAFFIC = ("messagesIn", "messagesOut", "bytesIn", "bytesOut")


@implementer(IStats)
class Stats:
    """
    Running totals for the metrics: plain integers for the rare events,
    and for the traffic, the sum of each session's own counters (those of
    sessions gone, plus those connected, added up when read), so that a
    message costs the side's totals nothing.
    """

    __slots__ = (
        "_registry",
        "_retired",
        "connectionsTotal",
        "decodeErrors",
        "oversized",
        "framingErrors",
        "handlerErrors",
        "slowConsumers",
        "timeouts",
        "refused",
        "heartbeatsIn",
        "handshakeTimeouts",
        "handshakeEvictions",
        "takeovers",
    )

    def __init__(self, registry: PeerRegistry) -> None:
        self._registry = registry
        self._retired = dict.fromkeys(TRAFFIC, 0)
        self.connectionsTotal = 0
        self.decodeErrors = 0
        self.oversized = 0
        self.framingErrors = 0
        self.handlerErrors = 0
        self.slowConsumers = 0
        self.timeouts = 0
        self.refused = 0
        self.heartbeatsIn = 0
        self.handshakeTimeouts = 0
        self.handshakeEvictions = 0
        self.takeovers = 0

    def retire(self, session: Session) -> None:
        """
        C{session} is ending: keep its traffic in the totals.
        """
        retired = self._retired
        for name in TRAFFIC:
            retired[name] += getattr(session, name)

    def _total(self, name: str) -> int:
        return self._retired[name] + sum(getattr(s, name) for s in self._registry)

    @property
    def messagesIn(self) -> int:
        return self._total("messagesIn")

    @property
    def messagesOut(self) -> int:
        return self._total("messagesOut")

    @property
    def bytesIn(self) -> int:
        return self._total("bytesIn")

    @property
    def bytesOut(self) -> int:
        return self._total("bytesOut")


@implementer(IHub, ISide)
class Hub:
    """
    Sessions, handler and numbers of one side (a server, or a client): the
    L{IHub} of its handler, the L{ISide} of its connections' factory.
    """

    def __init__(
        self,
        clock: IReactorTime,
        texts: Texts,
        handlerFactory: Callable[[IHub], IHandler],
        logMessages: bool = True,
        messageLog: MessageLog | None = None,
    ) -> None:
        self.clock = clock
        self.texts = texts
        #: Whether each message received is logged (C{--no-message-log}).
        self.logMessages = logMessages
        #: Where sessions log each message received.
        self.messageLog = MessageLog(clock) if messageLog is None else messageLog
        self.registry = PeerRegistry()
        self.stats = Stats(self.registry)
        self.watchers: list[Watcher] = []
        #: The messages that wait for clients that are away (a server's).
        self.queues: Queues | None = None
        #: A warning peers can repeat at will, at most one line per peer per
        #: 10 s: undecodable messages.
        self.undecodableLines = RateLimiter(
            "undecodable", "undecodable messages from {peer}", clock
        )
        #: How a new session finds its id (L{tcpcomm.hub.identity}): it
        #: returns the connection's first conversation, which registers the
        #: session once identified; L{None} keeps the address as the id.
        self.identify: Callable[[Session], IConversation] | None = None
        #: Connections still to say who they are, which are not in the
        #: registry yet but count against C{--max-connections}.
        self.unidentified = 0
        #: What the client sends first on every connection, before its
        #: greeting (C{hello NAME [TOKEN]}, from C{--name}), encoded.
        self.hello: bytes | None = None
        #: The recent takeovers of each name, to notice flapping; the name
        #: taken over longest ago first.
        self._takeovers: dict[str, deque[float]] = {}
        self.flappingLines = RateLimiter("flapping", "flapping warnings for {peer}", clock)
        #: Sessions replaced and not yet gone: why, for the watchers' lost event.
        self._replacedBy: dict[Session, str] = {}
        #: The fleet this server is part of (C{--backplane}), told of each
        #: session identified and gone.
        self.fleet: IFleet | None = None
        self.handler = handlerFactory(self)

    # ISide: what the factory of its connections calls.

    def conversationFor(self, peer: IPeer) -> IConversation:
        session = Session(self, peer)
        return session if self.identify is None else self.identify(session)

    def connectionCount(self) -> int:
        # Those still to say who they are hold a descriptor too.
        return len(self.registry) + self.unidentified

    def fullReply(self, now: float) -> bytes:
        full = self.texts.fullReply
        return full.render(now) if full is not None else b"full"

    # Called by sessions.

    def sessionStarted(self, session: Session) -> None:
        """
        C{session} is identified: the one place a session becomes known by
        its id, before any message is sent to it. A session already known
        by that id is replaced and closed (newest wins).
        """
        old = self.registry.get(session.id)
        self.registry.add(session)
        if old is not None and old is not session:
            self._replaced(old, session)
        if self.fleet is not None:
            self.fleet.joined(session)
        if self.hello is not None:
            # Not counted nor shown to watchers: it may hold a token.
            session.peer.sendMessage(self.hello)
        if self.queues is not None:
            # Before the handler hears of it: queued messages go first.
            registry = self.registry
            self.queues.deliver(session, lambda: registry.get(session.id) is session)
        self.stats.connectionsTotal += 1
        if self.watchers:
            self.notify("connected", session, "")
        self._call("connected", session)

    def _replaced(self, old: Session, new: Session) -> None:
        """
        C{new} took C{old}'s id: close C{old}, which the registry no longer
        knows, so it gets nothing meant for C{new}.
        """
        self.stats.takeovers += 1
        name = new.id
        log.info(
            "replaced {peer} (was {oldAddress}, now {address})",
            event="replaced",
            peer=name,
            oldAddress=old.address,
            address=new.address,
        )
        self._replacedBy[old] = f"replaced by {new.address}"
        old.close()
        now = self.clock.seconds()
        since = now - FLAP_WINDOW
        takeovers = self._takeovers
        # Oldest last takeover first: names quiet for a window are forgotten.
        recent = takeovers.pop(name, None) or deque()
        while takeovers:
            first = next(iter(takeovers))
            if takeovers[first][-1] > since:
                break
            del takeovers[first]
        takeovers[name] = recent
        recent.append(now)
        while recent[0] <= since:
            recent.popleft()
        if len(recent) > FLAP_TAKEOVERS and self.flappingLines.allow(name):
            log.warn(
                "{peer} is flapping: {count} takeovers in the last {window:g} s; do two "
                "clients share this name?",
                event="flapping",
                peer=name,
                count=len(recent),
                window=FLAP_WINDOW,
                address=new.address,
            )

    def replacedElsewhere(self, session: ISession, why: str) -> None:
        """
        A newer connection with C{session}'s name registered on another node
        of the fleet: close C{session}, and say C{why} in its lost event.
        """
        local = self.registry.get(session.id)
        if local is None or local is not session:
            return
        self.stats.takeovers += 1
        log.info(
            "replaced {peer} (was {oldAddress}): {why}",
            event="replaced",
            peer=session.id,
            oldAddress=session.address,
            why=why,
        )
        self._replacedBy[local] = why
        local.close()

    def sessionEnded(self, session: Session, reason: Failure) -> None:
        self.stats.retire(session)
        self.registry.remove(session)
        if self.fleet is not None:
            self.fleet.left(session)
        why = self._replacedBy.pop(session, None) if self._replacedBy else None
        if self.watchers:
            self.notify("lost", session, why or reason.getErrorMessage())
        self._call("disconnected", session, reason)

    def _call(self, method: str, session: Session, *args: Any) -> None:
        try:
            getattr(self.handler, method)(session, *args)
        except Exception:
            self.failed(method, session)

    def failed(self, method: str, session: Session) -> None:
        """
        The handler raised in C{method}: log it with its traceback, count it,
        and carry on (called from within the C{except} block).
        """
        self.stats.handlerErrors += 1
        log.failure(
            "handler {handler} failed in {method} for {peer}",
            event="handler-error",
            handler=type(self.handler).__name__,
            method=method,
            peer=session.id,
        )

    def watch(self, direction: str, session: Session, message: bytes) -> None:
        """
        Tell the watchers about a message sent (C{"out"}).
        """
        self.notify(direction, session, message.decode(self.texts.encoding, "replace"))

    def notify(self, direction: str, session: ISession, text: str) -> None:
        """
        Tell the watchers about a message or an event. With C{--admin} this
        runs for every message in and out, and there is one watcher (the
        admin API's recent events): called straight, without a copy of the
        list, which only a watcher that adds or removes one needs.
        """
        watchers = self.watchers
        if len(watchers) == 1:
            watchers[0](direction, session, text)
            return
        for watcher in list(watchers):
            watcher(direction, session, text)

    # IHub: what handlers and the admin API call.

    def sessions(self) -> list[ISession]:
        return list(self.registry)

    def get(self, sessionId: str) -> ISession | None:
        return self.registry.get(sessionId)

    def broadcast(self, text: str, exclude: ISession | None = None) -> int:
        return self.broadcastBytes(text.encode(self.texts.encoding), exclude)

    def broadcastBytes(self, message: bytes, exclude: ISession | None = None) -> int:
        """
        Send an encoded message to every session but C{exclude}; return how
        many got it.
        """
        sent = 0
        framed: dict[type, bytes] = {}  # framed once per framing, for everyone
        for session in self.registry:
            if session is not exclude:
                kind = type(session.peer)
                frame = framed.get(kind)
                if frame is None:
                    frame = framed[kind] = session.peer.frame(message)
                session.sendFramed(frame, message)
                sent += 1
        return sent
