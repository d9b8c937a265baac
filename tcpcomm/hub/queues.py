"""
Messages that wait: a bounded queue per client id for sends with a ttl to a
client that is away, handed over, in send order, when it identifies.

The queues live in memory; a L{QueueStore} makes them durable (the SQLite
one of L{tcpcomm.hub.queuestore}), and every store call returns a
L{Deferred}, so that the store may work in a thread of its own. A message
leaves the store (committed) before it is written to the connection:
delivery is at most once, never twice. In a fleet, L{SharedQueues} keeps
them in a L{SharedStore} (Redis) instead, where every node finds them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpcomm.interfaces import IPeer
from tcpcomm.logs import RateLimiter

log = Logger()


@dataclass(slots=True)
class Waiting:
    """
    One message that waits for C{clientId}, until C{expires} (seconds since
    the epoch); C{seq} orders every message of every queue.
    """

    seq: int
    clientId: str
    message: bytes
    queued: float
    expires: float


class QueueFull(Exception):
    """
    A send refused because it would take a queue over C{bound} (an
    option's name); nothing queued is dropped to make room.
    """

    def __init__(self, bound: str, message: str) -> None:
        super().__init__(message)
        self.bound = bound
        self.message = message


class QueueUnavailable(Exception):
    """
    A send refused because the store could not be loaded at start.
    """


class QueueStore(Protocol):
    """
    Where queued messages are kept beyond the process, if anywhere; each
    call's L{Deferred} fires once the change is committed.
    """

    def load(self) -> Deferred[list[Waiting]]: ...

    def add(self, entry: Waiting) -> Deferred[None]: ...

    def remove(self, seqs: list[int]) -> Deferred[None]: ...


class MemoryStore:
    """
    No store: queues live in the process's memory only and die with it.
    """

    def load(self) -> Deferred[list[Waiting]]:
        return succeed([])

    def add(self, entry: Waiting) -> Deferred[None]:
        return succeed(None)

    def remove(self, seqs: list[int]) -> Deferred[None]:
        return succeed(None)


class Recipient(Protocol):
    """
    What a queue needs of a session (L{tcpcomm.hub.session.Session}): its
    id, its peer, and a way to send.
    """

    id: str
    peer: IPeer

    def sendBytes(self, message: bytes) -> None: ...


@implementer(IPeer)
class _Held:
    """
    Stands in for a session's peer while its queue is handed over: whatever
    else is sent to the session meanwhile (a reply, a broadcast, an admin
    send) waits here, so that it reaches the client after the queued
    messages; only a client with messages waiting, or one that connects
    while the store loads, has one.
    """

    def __init__(self, peer: IPeer) -> None:
        self.peer = peer
        self.sends: list[tuple[bytes, bytes | None]] = []
        self.closeAsked = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.peer, name)

    @property
    def closing(self) -> bool:
        return self.closeAsked or bool(self.peer.closing)

    def frame(self, message: bytes) -> bytes:
        return bytes(self.peer.frame(message))

    def sendMessage(self, message: bytes) -> None:
        self.sends.append((message, None))

    def sendFramed(self, data: bytes, message: bytes) -> None:
        self.sends.append((message, data))

    def close(self) -> None:
        self.closeAsked = True

    def abort(self) -> None:
        self.peer.abort()

    def release(self) -> None:
        """
        Write what waited, in order, to the real peer; close it if asked.
        """
        peer = self.peer
        for message, data in self.sends:
            if data is None:
                peer.sendMessage(message)
            else:
                peer.sendFramed(data, message)
        self.sends = []
        if self.closeAsked:
            peer.close()


def _after(d: Deferred[Any]) -> Deferred[None]:
    """
    A L{Deferred} that fires once C{d} has, leaving C{d}'s result alone.
    """
    waiter: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        waiter.callback(None)
        return result

    d.addBoth(fire)
    return waiter


class Queues:
    """
    Every client id's waiting messages, oldest first, within the bounds:
    C{maxMessages} and C{maxBytes} per id, C{totalBytes} for all of them.
    The counters are what the metrics show.
    """

    def __init__(
        self,
        clock: IReactorTime,
        store: QueueStore | None = None,
        maxMessages: int = 1000,
        maxBytes: int = 1 << 20,
        totalBytes: int = 64 << 20,
    ) -> None:
        self.clock = clock
        self.store: QueueStore = MemoryStore() if store is None else store
        self.maxMessages = maxMessages
        self.maxBytes = maxBytes
        self.totalBytes = totalBytes
        self._waiting: dict[str, deque[Waiting]] = {}
        self._bytes: dict[str, int] = {}
        self.waitingBytes = 0
        self.waitingMessages = 0
        self.queued = self.delivered = self.expired = self.refused = 0
        self._nextSeq = 1
        self._loading = self._ready = self._unavailable = False
        self._waiters: list[Deferred[None]] = []
        #: The hand-over under way for each id, which the next waits for.
        self._handing: dict[str, Deferred[Any]] = {}

    def start(self) -> Deferred[None]:
        """
        Load what the store kept (the counts and bytes, so the bounds hold
        across a restart); sends and hand-overs wait for it.
        """
        self._load()
        return self._whenLoaded()

    def loaded(self) -> Deferred[None]:
        """
        A L{Deferred} that fires once what the store kept is loaded (or
        could not be): what is listed before then would be incomplete.
        """
        return self._whenLoaded()

    def _load(self) -> None:
        if not self._loading:
            self._loading = True
            self.store.load().addCallback(self._fill).addErrback(self._loadFailed)

    def _whenLoaded(self) -> Deferred[None]:
        self._load()
        if self._ready:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def _loaded(self) -> None:
        self._ready = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _fill(self, entries: list[Waiting]) -> None:
        for entry in entries:
            self._append(entry)
            self._nextSeq = max(self._nextSeq, entry.seq + 1)
        self._loaded()
        if entries:
            log.info(
                "loaded {count} queued message(s) for {ids} client(s)",
                event="queues-loaded",
                count=len(entries),
                ids=len(self._waiting),
            )

    def _loadFailed(self, failure: Failure) -> None:
        log.failure("could not load the queues", failure, event="queues-load-failed")
        # Serve on without queues rather than hang, and never write over
        # what could not be read.
        self._unavailable = True
        self._loaded()

    # Bookkeeping.

    def _append(self, entry: Waiting) -> int:
        queue = self._waiting.get(entry.clientId)
        if queue is None:
            queue = self._waiting[entry.clientId] = deque()
        queue.append(entry)
        size = len(entry.message)
        self._bytes[entry.clientId] = self._bytes.get(entry.clientId, 0) + size
        self.waitingBytes += size
        self.waitingMessages += 1
        return len(queue)

    def _take(self, clientId: str, keep: Callable[[Waiting], bool]) -> list[Waiting]:
        """
        Remove and return the entries of C{clientId} that C{keep} refuses.
        """
        queue = self._waiting.get(clientId)
        if not queue:
            return []
        taken = [e for e in queue if not keep(e)]
        if not taken:
            return []
        rest = deque(e for e in queue if keep(e))
        size = sum(len(e.message) for e in taken)
        self.waitingBytes -= size
        self.waitingMessages -= len(taken)
        if rest:
            self._waiting[clientId] = rest
            self._bytes[clientId] -= size
        else:
            del self._waiting[clientId]
            del self._bytes[clientId]
        return taken

    def _sweep(self, clientIds: Iterable[str]) -> None:
        """
        Drop (and count) the expired messages of C{clientIds}.
        """
        now = self.clock.seconds()
        gone: list[Waiting] = []
        for clientId in list(clientIds):
            gone += self._take(clientId, lambda e: e.expires > now)
        if gone:
            self.expired += len(gone)
            self.store.remove([e.seq for e in gone]).addErrback(self._storeFailed, "remove")

    def _storeFailed(self, failure: Failure, what: str) -> None:
        log.failure("queue store failed to {what}", failure, event="queue-store-error", what=what)

    # What the admin API calls.

    def put(self, clientId: str, message: bytes, ttl: float) -> Deferred[int]:
        """
        Queue C{message} for C{clientId} for C{ttl} seconds; the result is
        its position in that queue (1 is next), once stored, or a
        L{QueueFull} failure.
        """
        return self._whenLoaded().addCallback(lambda _: self._put(clientId, message, ttl))

    def _put(self, clientId: str, message: bytes, ttl: float) -> Deferred[int]:
        if self._unavailable:
            raise QueueUnavailable("the queue store could not be loaded; see the server's log")
        size = len(message)
        self._sweep([clientId])
        if self.waitingBytes + size > self.totalBytes:
            self._sweep(list(self._waiting))
        count = len(self._waiting.get(clientId, ()))
        held = self._bytes.get(clientId, 0)
        refusal = None
        if count + 1 > self.maxMessages:
            refusal = QueueFull(
                "--queue-max-messages",
                f"the queue of {clientId!r} holds {count} messages, the most "
                f"--queue-max-messages {self.maxMessages} allows",
            )
        elif held + size > self.maxBytes:
            refusal = QueueFull(
                "--queue-max-bytes",
                f"the queue of {clientId!r} holds {held} bytes; {size} more would be over "
                f"--queue-max-bytes {self.maxBytes}",
            )
        elif self.waitingBytes + size > self.totalBytes:
            refusal = QueueFull(
                "--queue-total-bytes",
                f"the queues hold {self.waitingBytes} bytes; {size} more would be over "
                f"--queue-total-bytes {self.totalBytes}",
            )
        if refusal is not None:
            self.refused += 1
            raise refusal
        now = self.clock.seconds()
        entry = Waiting(self._nextSeq, clientId, message, now, now + ttl)
        self._nextSeq += 1
        # In memory at once, so that a hand-over that starts before the store
        # commits includes it: the store works through its calls in order.
        position = self._append(entry)
        self.queued += 1

        def failed(failure: Failure) -> Failure:
            self._take(clientId, lambda e: e is not entry)
            self.queued -= 1
            return failure

        return self.store.add(entry).addCallbacks(lambda _: position, failed)

    def listing(self) -> Deferred[list[dict[str, Any]]]:
        """
        The L{summary}, once what the store kept is loaded.
        """
        return self._whenLoaded().addCallback(lambda _: self.summary())

    def summary(self) -> list[dict[str, Any]]:
        """
        What C{GET /queues} shows: each id with messages waiting, how many,
        their bytes, and the age of the oldest, in seconds.
        """
        self._sweep(list(self._waiting))
        now = self.clock.seconds()
        return [
            {
                "id": clientId,
                "messages": len(queue),
                "bytes": self._bytes[clientId],
                "oldestAgeSeconds": round(max(0.0, now - queue[0].queued), 3),
            }
            for clientId, queue in sorted(self._waiting.items())
        ]

    # What the hub calls.

    def deliver(self, session: Recipient, stillConnected: Callable[[], bool]) -> None:
        """
        C{session} has identified: hand it its queue, unexpired messages in
        send order, each removed from the store before it is written, and
        everything else sent to it meanwhile only after them.
        """
        clientId = session.id
        busy = self._handing.get(clientId)
        if self._ready and busy is None and clientId not in self._waiting:
            return
        # After the load, and after a hand-over to an earlier connection with
        # this id (replaced by this one), which may give its messages back.
        before = self._whenLoaded() if busy is None else _after(busy)
        self._handOverAfter(before, session, stillConnected, self._handOver)

    def _handOverAfter(
        self,
        before: Deferred[Any],
        session: Recipient,
        stillConnected: Callable[[], bool],
        handOver: Callable[[Recipient, _Held, Callable[[], bool]], object],
    ) -> None:
        # Hold what else is sent to session, run handOver once before has
        # fired, and keep it as this id's hand-over under way meanwhile.
        clientId = session.id
        held = _Held(session.peer)
        session.peer = held
        done = before.addCallback(lambda _: handOver(session, held, stillConnected))
        self._handing[clientId] = done

        def finished(result: object) -> object:
            if self._handing.get(clientId) is done:
                del self._handing[clientId]
            return result

        done.addBoth(finished).addErrback(
            lambda failure: log.failure(
                "handing over the queue of {peer} failed",
                failure,
                event="queue-handover-error",
                peer=clientId,
            )
        )

    def _handOver(
        self, session: Recipient, held: _Held, stillConnected: Callable[[], bool]
    ) -> Deferred[None] | None:
        now = self.clock.seconds()
        entries = self._take(session.id, lambda e: False)
        if not entries:
            self._release(session, held)
            return None
        live = [e for e in entries if e.expires > now]
        self.expired += len(entries) - len(live)

        def removed(_: object) -> None:
            if not stillConnected():
                # Gone before a byte of it was written: it waits again.
                self._restore(live)
                session.peer = held.peer
                return
            session.peer = held.peer
            for entry in live:
                session.sendBytes(entry.message)
            self.delivered += len(live)
            if live:
                log.info(
                    "delivered {count} queued message(s) to {peer}",
                    event="queue-delivered",
                    count=len(live),
                    peer=session.id,
                )
            held.release()

        def failed(failure: Failure) -> None:
            self._storeFailed(failure, "remove delivered messages")
            self._restore(live)
            self._release(session, held)

        return self.store.remove([e.seq for e in entries]).addCallbacks(removed, failed)

    def _release(self, session: Recipient, held: _Held) -> None:
        session.peer = held.peer
        held.release()

    def _restore(self, entries: list[Waiting]) -> None:
        """
        Put back entries taken out for a hand-over that did not happen,
        before anything queued since, and store them again.
        """
        if not entries:
            return
        clientId = entries[0].clientId
        later = self._take(clientId, lambda e: False)
        for entry in [*entries, *later]:
            self._append(entry)
        for entry in entries:
            self.store.add(entry).addErrback(self._storeFailed, "store a message again")


class QueueService(Service):
    """
    Loads the queues when the server starts (after twistd forks, as the
    store's worker thread must).
    """

    def __init__(self, queues: Queues) -> None:
        self.queues = queues

    def startService(self) -> None:
        super().startService()
        self.queues.start()


class QueueElsewhere(Exception):
    """
    A send to queue refused because a node of the fleet holds the client
    now (C{node}): send it there instead.
    """

    def __init__(self, node: str) -> None:
        super().__init__(f"node {node!r} holds the client")
        self.node = node


#: A message kept in a shared store: (message, queued, expires), in seconds.
SharedEntry = tuple[bytes, float, float]


class SharedStore(Protocol):
    """
    Queues kept where every node of a fleet finds them (Redis: the
    L{tcpcomm.fleet.queuestore.RedisQueueStore}); each call is atomic
    there, and answers in plain data.
    """

    def put(
        self,
        clientId: str,
        message: bytes,
        ttl: float,
        maxMessages: int,
        maxBytes: int,
        totalBytes: int,
    ) -> Deferred[dict[str, Any]]: ...

    def take(self, clientId: str) -> Deferred[tuple[float, list[SharedEntry]]]: ...

    def restore(self, clientId: str, entries: list[SharedEntry]) -> Deferred[Any]: ...

    def summary(self) -> Deferred[tuple[float, list[tuple[str, int, int, float]]]]: ...


class SharedQueues(Queues):
    """
    The queues of a fleet: kept in a L{SharedStore}, not in this node's
    memory, so that a client gets what waited for it through any node; the
    bounds are checked there, in the step that adds. Every client that
    identifies asks the store for its queue, its other messages held
    meanwhile (a hand-over fails within the store's timeout, then they go).
    The counters are this node's, but C{waitingMessages} and
    C{waitingBytes}, the fleet's as last seen.
    """

    def __init__(
        self,
        clock: IReactorTime,
        shared: SharedStore,
        maxMessages: int = 1000,
        maxBytes: int = 1 << 20,
        totalBytes: int = 64 << 20,
    ) -> None:
        super().__init__(clock, None, maxMessages, maxBytes, totalBytes)
        self.shared = shared
        #: While Redis is away every client that identifies fails its
        #: hand-over: one line per 10 s says so.
        self.handOverLines = RateLimiter(
            "queue-handover-failed", "failed queue hand-overs", clock, keyName="server"
        )

    def _seen(self, answer: dict[str, Any]) -> None:
        self.expired += answer["expired"]
        self.waitingMessages, self.waitingBytes = answer["messages"], answer["bytes"]

    def put(self, clientId: str, message: bytes, ttl: float) -> Deferred[int]:
        def stored(answer: dict[str, Any]) -> int:
            if "elsewhere" in answer:
                raise QueueElsewhere(answer["elsewhere"])
            self._seen(answer)
            if "queued" in answer:
                self.queued += 1
                return int(answer["queued"])
            self.refused += 1
            bound, held, size = answer["full"], answer["held"], len(message)
            if bound == "--queue-max-messages":
                text = (
                    f"the queue of {clientId!r} holds {held} messages, the most "
                    f"--queue-max-messages {self.maxMessages} allows"
                )
            elif bound == "--queue-max-bytes":
                text = (
                    f"the queue of {clientId!r} holds {held} bytes; {size} more would be over "
                    f"--queue-max-bytes {self.maxBytes}"
                )
            else:
                text = (
                    f"the queues hold {held} bytes; {size} more would be over "
                    f"--queue-total-bytes {self.totalBytes}"
                )
            raise QueueFull(bound, text + " (fleet-wide)")

        return self.shared.put(
            clientId, message, ttl, self.maxMessages, self.maxBytes, self.totalBytes
        ).addCallback(stored)

    def listing(self) -> Deferred[list[dict[str, Any]]]:
        def listed(
            result: tuple[float, list[tuple[str, int, int, float]]],
        ) -> list[dict[str, Any]]:
            now, rows = result
            return [
                {
                    "id": clientId,
                    "messages": messages,
                    "bytes": size,
                    "oldestAgeSeconds": round(max(0.0, now - queued), 3),
                }
                for clientId, messages, size, queued in sorted(rows)
            ]

        return self.shared.summary().addCallback(listed)

    def deliver(self, session: Recipient, stillConnected: Callable[[], bool]) -> None:
        busy = self._handing.get(session.id)
        before: Deferred[None] = succeed(None) if busy is None else _after(busy)
        self._handOverAfter(before, session, stillConnected, self._takeShared)

    def _takeShared(
        self, session: Recipient, held: _Held, stillConnected: Callable[[], bool]
    ) -> Deferred[None]:
        clientId = session.id

        def taken(result: tuple[float, list[SharedEntry]]) -> None:
            now, entries = result
            live = [e for e in entries if e[2] > now]
            self.expired += len(entries) - len(live)
            if live and not stillConnected():
                # Gone before a byte of it was written: it waits again.
                self.shared.restore(clientId, live).addErrback(
                    self._storeFailed, "store messages again"
                )
                live = []
            session.peer = held.peer
            for message, _, _ in live:
                session.sendBytes(message)
            self.delivered += len(live)
            if live:
                log.info(
                    "delivered {count} queued message(s) to {peer}",
                    event="queue-delivered",
                    count=len(live),
                    peer=clientId,
                )
            held.release()

        def failed(failure: Failure) -> None:
            # Nothing was taken: it waits for the next connection.
            if not self.handOverLines.allow(None):
                self._release(session, held)
                return
            log.warn(
                "could not hand over the queue of {peer}: {reason}",
                event="queue-handover-failed",
                peer=clientId,
                reason=failure.getErrorMessage(),
            )
            self._release(session, held)

        return self.shared.take(clientId).addCallbacks(taken, failed)
