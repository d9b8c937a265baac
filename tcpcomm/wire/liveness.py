"""
Keeping connections honest over months: TCP keep-alive, heartbeats, and
closing peers that go silent or never finish a message. Every timer runs on
the injected clock, and nothing here touches the message path unless it is
turned on.
"""

from __future__ import annotations

import heapq
import math
import socket
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from tcpcomm.interfaces import IPeer, IStats

# The namespace its lines had before the package had layers: operators filter on it.
log = Logger(namespace="tcpcomm.liveness")

# Linux's TCP_USER_TIMEOUT (not in every Python's socket module).
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)


def tcpSocket(transport: Any) -> socket.socket | None:
    """
    The TCP socket under C{transport} (under TLS too), or L{None} for other
    transports, such as UNIX sockets and test doubles.
    """
    while transport is not None:
        getHandle = getattr(transport, "getHandle", None)
        handle = getHandle() if getHandle is not None else None
        if isinstance(handle, socket.socket):
            if handle.family in (socket.AF_INET, socket.AF_INET6):
                return handle
            return None
        transport = getattr(transport, "transport", None)
    return None


def tuneSocket(sock: socket.socket, keepalive: float, heartbeat: float) -> None:
    """
    Turn off Nagle's algorithm, turn on TCP keep-alive (first probe after C{keepalive} idle seconds,
    then two more a third of that apart); with heartbeats, have the kernel
    drop the connection when sent data stays unacknowledged for one
    heartbeat interval, which is how a peer that vanished without a FIN is
    noticed within two intervals.
    """
    # Replies leave as one write per read already (see FramedProtocol):
    # Nagle's algorithm would only hold them back for the peer's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if keepalive > 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(keepalive)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(keepalive / 3)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    if heartbeat > 0:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, max(1, int(heartbeat * 1000)))
        except OSError:  # not Linux
            pass


#: Seconds a side's liveness timer rests at least between two wakes: every
#: deadline and heartbeat is handled within this long after it is due.
TICK = 0.1


class LivenessTimers:
    """
    The liveness deadlines of one side's connections, on one reactor timer.

    A reactor timer per connection would cost a reactor turn and an entry
    in the reactor's heap (compared in Python) each time it fires: 10,000
    connections with a heartbeat every 30 s would wake the reactor 333
    times a second. Here each connection's next deadline is one entry in
    this side's own heap (compared in C), and the one reactor timer wakes
    at the earliest deadline but at most once a C{tick}, then handles every
    deadline that has come: at most 10 turns a second however many
    connections there are, and nothing is ever early.

    A connection that asks for an earlier deadline, or goes away, leaves
    its entry behind, to be skipped when it comes up.
    """

    def __init__(self, clock: IReactorTime, tick: float = TICK) -> None:
        self._clock = clock
        self._tick = tick
        #: (when, sequence, watchdog), earliest first; the sequence keeps
        #: watchdogs out of comparisons.
        self._heap: list[tuple[float, int, Watchdog]] = []
        self._sequence = 0
        #: Watchdogs still running.
        self.watching = 0
        self._timer: IDelayedCall | None = None
        self._wakeTime = 0.0
        self._lastWake = -math.inf

    def seconds(self) -> float:
        return self._clock.seconds()

    def started(self) -> None:
        self.watching += 1

    def stopped(self) -> None:
        """
        A watchdog stopped: with none left, stop the timer and forget the
        entries, so that nothing outlives the connections.
        """
        self.watching -= 1
        if self.watching <= 0:
            self.watching = 0
            self._heap.clear()
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None

    def wakeAt(self, watchdog: Watchdog, when: float) -> None:
        """
        Call C{watchdog.wake} once C{when} has come.
        """
        self._sequence += 1
        heapq.heappush(self._heap, (when, self._sequence, watchdog))
        timer = self._timer
        if timer is not None and timer.active() and self._wakeTime <= when:
            return
        self._schedule()

    def _schedule(self) -> None:
        if not self._heap:
            return
        wake = max(self._heap[0][0], self._lastWake + self._tick)
        timer = self._timer
        if timer is not None and timer.active():
            if self._wakeTime <= wake:
                return
            timer.cancel()
        self._wakeTime = wake
        self._timer = self._clock.callLater(max(0.0, wake - self._clock.seconds()), self._wake)

    def _wake(self) -> None:
        self._timer = None
        # The time it was meant for, even if the clock reads a hair less.
        now = max(self._clock.seconds(), self._wakeTime)
        self._lastWake = now
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, watchdog = heapq.heappop(heap)
            if watchdog.due == when:
                try:
                    watchdog.wake(now)
                except Exception:
                    # A bug in one connection must not stop the others' timers.
                    log.failure("liveness check failed", event="liveness-error")
        self._schedule()


class Watchdog:
    """
    One connection's liveness: heartbeats out after C{heartbeat} seconds of
    sending nothing, and deadlines for silence (C{--heartbeat-timeout} with
    heartbeats, C{--idle-timeout}) and for finishing a message once begun
    (C{--message-timeout}). A peer past a deadline is aborted and counted in
    the side's C{stats}.

    Activity is only noted as timestamps: L{received} is a few assignments
    (the time is the one the read already took) and a write one more. The
    deadline on the side's L{LivenessTimers} is never moved for them: it
    comes, the watchdog finds the timestamps moved on, and asks for the new
    earliest one. So however many messages pass, a connection is woken
    about once per heartbeat interval (to send one when it is due), not
    once per message.
    """

    __slots__ = (
        "_peer",
        "_timers",
        "_stats",
        "_idle",
        "_message",
        "heartbeat",
        "_heartbeatTimeout",
        "lastData",
        "lastSent",
        "partialSince",
        "due",
        "_stopped",
    )

    def __init__(
        self,
        peer: IPeer,
        timers: LivenessTimers,
        stats: IStats,
        idleTimeout: float,
        messageTimeout: float,
        heartbeat: float,
        heartbeatTimeout: float = 0.0,
    ) -> None:
        self._peer: IPeer | None = peer
        self._timers = timers
        self._stats = stats
        self._idle = idleTimeout
        self._message = messageTimeout
        #: Seconds of sending nothing after which a heartbeat goes out (0: never).
        self.heartbeat = heartbeat
        self._heartbeatTimeout = heartbeatTimeout if heartbeat > 0 else 0.0
        self.lastData = self.lastSent = now = timers.seconds()
        self.partialSince: float | None = None
        #: When it is to be woken next, if it is.
        self.due: float | None = None
        self._stopped = False
        timers.started()
        deadlines = [now + d for d in (heartbeat, idleTimeout, self._heartbeatTimeout) if d > 0]
        if deadlines:
            self._wakeAt(min(deadlines))

    def received(self, partial: bool, now: float) -> None:
        """
        Bytes arrived at C{now}; C{partial} if a message is now begun but
        unfinished. On the message path: no timer work unless a message is
        left unfinished.
        """
        self.lastData = now
        if not partial:
            self.partialSince = None
        elif self.partialSince is None:
            self.partialSince = now
            if self._message > 0:
                self._wakeAt(now + self._message)

    def _wakeAt(self, when: float) -> None:
        due = self.due
        if due is None or when < due:
            self.due = when
            self._timers.wakeAt(self, when)

    def wake(self, now: float) -> None:
        """
        A deadline it asked for has come at C{now}: drop the peer if it is
        past one, send a heartbeat if one is due, and ask for the next.
        """
        self.due = None
        if self._stopped:
            return
        deadlines = []
        for silence, why in (
            (self._heartbeatTimeout, HEARD_NOTHING),
            (self._idle, "silent for {seconds} s (--idle-timeout)"),
        ):
            if silence > 0:
                deadline = self.lastData + silence
                if now >= deadline:
                    return self._expire(why, silence)
                deadlines.append(deadline)
        if self._message > 0 and self.partialSince is not None:
            deadline = self.partialSince + self._message
            if now >= deadline:
                return self._expire(
                    "a message begun {seconds} s ago is still unfinished (--message-timeout)",
                    self._message,
                )
            deadlines.append(deadline)
        if self.heartbeat > 0:
            if now >= self.lastSent + self.heartbeat:
                assert self._peer is not None
                self._peer.sendMessage(b"")
                self.lastSent = now
            deadlines.append(self.lastSent + self.heartbeat)
        if deadlines and not self._stopped:
            self._wakeAt(min(deadlines))

    def _expire(self, why: str, seconds: float) -> None:
        peer = self._peer
        assert peer is not None
        self._stats.timeouts += 1
        log.info(
            "disconnecting {peer}: " + why,
            event="timeout",
            peer=peer.id,
            seconds=seconds,
            heartbeat=self.heartbeat,
        )
        peer.abort()

    def stop(self) -> None:
        """
        The connection is gone: its entry on the timers is skipped when it
        comes up, and holds nothing of the connection.
        """
        if not self._stopped:
            self._stopped = True
            self._peer = None
            self.due = None
            self._timers.stopped()


#: Why a peer is dropped for C{--heartbeat-timeout}, and what fixes it when
#: the peer is alive but quiet: heartbeats from its side.
HEARD_NOTHING = (
    "heard nothing, heartbeats included, for {seconds:g} s (--heartbeat-timeout); "
    "if it is alive, give the other side --heartbeat {heartbeat:g} too"
)
