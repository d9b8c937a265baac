"""
Draining a server (lame duck, as NATS does it): stop listening, tell the
health check so a load balancer sends no one new, close the clients a few
at a time over C{--drain-period} so they reconnect to the other nodes
without a storm, then stop as on SIGTERM.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from tcpcomm.hub.registry import PeerRegistry
from tcpcomm.hub.session import Session

log = Logger()


class Drain(Service):
    """
    The drain of one server: started once (L{start}), by C{POST /drain};
    its state is what C{/healthz}, C{POST /drain} and the metrics tell.

    Every L{interval} seconds it closes its share of the clients, so that
    by any time in the period that share of them is closed, whatever their
    number (three clients over 3 s go at 0, 1 and 2 s); those that leave by
    themselves meanwhile are not made up for by closing others sooner. A
    batch the reactor was too busy to run on time closes what the missed
    ones would have. At the end of the period it calls C{stop} (the
    reactor's), which stops every service as SIGTERM does: what is still
    open is closed, and aborted after C{--shutdown-timeout}.

    @ivar period: Seconds to spread the closing over (C{--drain-period});
        a reload changes it for a drain not started yet.
    """

    #: Seconds between two batches.
    interval = 0.1
    #: How many progress lines a drain logs over its period, at most.
    reports = 10

    def __init__(
        self,
        registry: PeerRegistry,
        listeners: Sequence[IService],
        clock: IReactorTime,
        period: float,
        stop: Callable[[], object],
    ) -> None:
        self._registry = registry
        self._listeners = listeners
        self._clock = clock
        self.period = period
        self._stop = stop
        self._next: IDelayedCall | None = None
        self._closed: set[Session] = set()
        self._batches = 1
        self._tick = -1
        self._nextReport = 0.0
        #: When the drain started (the clock's seconds), or L{None}.
        self.started: float | None = None
        #: The period of the drain under way.
        self.drainPeriod = period
        #: Clients open when the drain started.
        self.clients = 0
        #: Clients the drain has closed so far.
        self.closed = 0

    @property
    def draining(self) -> bool:
        return self.started is not None

    def state(self) -> dict[str, Any]:
        """
        What C{/healthz} and C{POST /drain} say of the drain under way.
        """
        assert self.started is not None
        elapsed = self._clock.seconds() - self.started
        return {
            "periodSeconds": self.drainPeriod,
            "clients": self.clients,
            "closed": self.closed,
            "remaining": len(self._registry),
            "secondsLeft": round(max(0.0, self.drainPeriod - elapsed), 3),
        }

    def start(self) -> bool:
        """
        Begin draining; L{False} (and nothing done) if already draining.
        """
        if self.draining:
            return False
        self.started = self._clock.seconds()
        self.drainPeriod = self.period
        self.clients = len(self._registry)
        for listener in self._listeners:
            maybeDeferred(listener.stopService).addErrback(self._stopListeningFailed)
        log.info(
            "draining: stopped listening; closing {count} client(s) over {period} s, then stopping",
            event="draining",
            count=self.clients,
            period=self.drainPeriod,
        )
        self._batches = max(1, round(self.drainPeriod / self.interval))
        self._tick = -1
        self._nextReport = self._batches / self.reports
        self._batch()
        return True

    def _stopListeningFailed(self, failure: Failure) -> None:
        log.failure("draining: could not stop listening", failure, event="drain-error")

    def _batch(self) -> None:
        """
        Close this batch's share of the clients, or stop once the period is
        over. Batch C{n} is due C{n} intervals after the start; one that
        comes late (a busy reactor) counts as the batch of its time.
        """
        assert self.started is not None
        self._next = None
        elapsed = self._clock.seconds() - self.started
        # A float clock at 1.8e9 s runs a call due at 0.1 s at 0.0999998 s.
        self._tick = max(self._tick + 1, math.floor(elapsed / self.interval + 1e-3))
        still = [s for s in self._registry if s not in self._closed]
        if self._tick >= self._batches or self.drainPeriod == 0:
            self._close(still)
            self._finish(elapsed)
            return
        # After batch n (from 0), (n + 1) / batches of the clients are closed,
        # counting those closed and those still open: a client that left by
        # itself drops out of the count, so no other is closed sooner for it.
        quota = -(-(self.closed + len(still)) * (self._tick + 1) // self._batches)
        self._close(still[: max(0, quota - self.closed)])
        due = (self._tick + 1) * self.interval - elapsed
        self._next = self._clock.callLater(max(0.0, due), self._batch)
        if self._tick >= self._nextReport:
            self._nextReport += self._batches / self.reports
            log.info(
                "draining: closed {closed} of {count} client(s), {left:.1f} s left",
                event="drain-progress",
                closed=self.closed,
                count=self.clients,
                left=(self._batches - self._tick) * self.interval,
            )

    def _close(self, sessions: list[Session]) -> None:
        for session in sessions:
            self._closed.add(session)
            self.closed += 1
            session.close()

    def _finish(self, elapsed: float) -> None:
        log.info(
            "drained: closed {closed} client(s) in {elapsed:.1f} s; stopping",
            event="drained",
            closed=self.closed,
            elapsed=elapsed,
        )
        self._stop()

    def stopService(self) -> None:
        """
        Stopping (SIGTERM, or the drain's own end) ends the pacing: the
        server's stop closes whoever is left.
        """
        Service.stopService(self)
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
