"""
Keeping connections honest over months: TCP keep-alive, heartbeats, and
closing peers that go silent or never finish a message. Every timer runs on
the injected clock, and nothing here touches the message path unless it is
turned on.
"""

from __future__ import annotations

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


class Watchdog:
    """
    One connection's liveness: heartbeats out after C{heartbeat} seconds of
    sending nothing, and deadlines for silence (C{--heartbeat-timeout} with
    heartbeats, C{--idle-timeout}) and for finishing a message once begun
    (C{--message-timeout}). A peer past a deadline is aborted and counted in
    the side's C{stats}.

    Activity is only noted as timestamps: L{received} is a few assignments
    (the time is the one the read already took) and a write one more. The
    single timer is never moved for them: it wakes at the earliest deadline
    it knew of, finds the timestamps moved on, and sleeps again until the
    new earliest one. So however many messages pass, a connection's timer
    fires about once per heartbeat interval (to send one when it is due),
    and 10,000 idle connections cost 10,000 timer calls per interval, not a
    timer per message.
    """

    __slots__ = (
        "_peer",
        "_clock",
        "_stats",
        "_idle",
        "_message",
        "heartbeat",
        "_heartbeatTimeout",
        "lastData",
        "lastSent",
        "partialSince",
        "_timer",
        "_stopped",
    )

    def __init__(
        self,
        peer: IPeer,
        clock: IReactorTime,
        stats: IStats,
        idleTimeout: float,
        messageTimeout: float,
        heartbeat: float,
        heartbeatTimeout: float = 0.0,
    ) -> None:
        self._peer = peer
        self._clock = clock
        self._stats = stats
        self._idle = idleTimeout
        self._message = messageTimeout
        #: Seconds of sending nothing after which a heartbeat goes out (0: never).
        self.heartbeat = heartbeat
        self._heartbeatTimeout = heartbeatTimeout if heartbeat > 0 else 0.0
        self.lastData = self.lastSent = now = clock.seconds()
        self.partialSince: float | None = None
        self._timer: IDelayedCall | None = None
        self._stopped = False
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
        timer = self._timer
        if timer is not None and timer.active():
            if timer.getTime() <= when:
                return
            timer.cancel()
        self._timer = self._clock.callLater(max(0.0, when - self._clock.seconds()), self._check)

    def _check(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        deadlines = []
        for silence, why in (
            (self._heartbeatTimeout, HEARD_NOTHING),
            (self._idle, "silent for {seconds} s (--idle-timeout)"),
        ):
            if silence > 0:
                if now - self.lastData >= silence:
                    return self._expire(why, silence)
                deadlines.append(self.lastData + silence)
        if self._message > 0 and self.partialSince is not None:
            if now - self.partialSince >= self._message:
                return self._expire(
                    "a message begun {seconds} s ago is still unfinished (--message-timeout)",
                    self._message,
                )
            deadlines.append(self.partialSince + self._message)
        if self.heartbeat > 0:
            if now - self.lastSent >= self.heartbeat:
                self._peer.sendMessage(b"")
                self.lastSent = now
            deadlines.append(self.lastSent + self.heartbeat)
        if deadlines and not self._stopped:
            self._wakeAt(min(deadlines))

    def _expire(self, why: str, seconds: float) -> None:
        self._stats.timeouts += 1
        log.info(
            "disconnecting {peer}: " + why,
            event="timeout",
            peer=self._peer.id,
            seconds=seconds,
            heartbeat=self.heartbeat,
        )
        self._peer.abort()

    def stop(self) -> None:
        """
        The connection is gone: stop the timer.
        """
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


#: Why a peer is dropped for C{--heartbeat-timeout}, and what fixes it when
#: the peer is alive but quiet: heartbeats from its side.
HEARD_NOTHING = (
    "heard nothing, heartbeats included, for {seconds:g} s (--heartbeat-timeout); "
    "if it is alive, give the other side --heartbeat {heartbeat:g} too"
)
