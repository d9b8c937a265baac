"""
The client side's services: a L{ClientService} whose backoff does not reset
on connections that die young, and an endpoint that logs why it failed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import ILogObserver, LogEvent, Logger, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpcomm.hub.hub import Hub
from tcpcomm.wire.protocol import FramedProtocol, Limits, MessageFactory

log = Logger()


class RetryPolicy:
    """
    Exponential backoff with equal jitter for L{ClientService}.

    The n-th retry in a row waits a random time between half and all of
    C{min(initial * 2**n, maximum)}. L{ClientService} counts every successful
    connection as a fresh start; a server that accepts and at once hangs up
    would then be retried at the initial delay forever. So this policy keeps
    its own count, and resets it only for a connection that stayed up at
    least C{resetAfter} seconds; and it logs each retry with that count
    (L{ClientService}'s own line would say "retry 1" every time).
    """

    #: The server retried, as the retry line names it (L{ClientFactory} sets it).
    server = "the server"

    def __init__(
        self,
        clock: IReactorTime,
        initial: float,
        maximum: float,
        resetAfter: float,
        random: Callable[[], float] = random.random,
    ) -> None:
        self._clock = clock
        self._base = backoffPolicy(initial, maximum, factor=2, jitter=lambda: 0.0)
        self._resetAfter = resetAfter
        self._random = random
        self._failures = 0
        self._connectedAt: float | None = None

    def __call__(self, attempt: int) -> float:
        base = self._base(self._failures)
        self._failures += 1
        delay = base / 2 + base / 2 * self._random()
        log.info(
            "retry {attempt} to connect to {server} in {delay:.1f} s",
            event="retry",
            attempt=self._failures,
            server=self.server,
            delay=round(delay, 3),
        )
        return delay

    def connected(self) -> None:
        """
        A connection is up: time how long it lives.
        """
        self._connectedAt = self._clock.seconds()

    def disconnected(self) -> None:
        """
        The connection is gone; if it lived long enough, start afresh.
        """
        if self._connectedAt is not None:
            if self._clock.seconds() - self._connectedAt >= self._resetAfter:
                self._failures = 0
            self._connectedAt = None


class ClientStatus:
    """
    How the client's connection is doing, for C{GET /status} and the metrics.

    @ivar server: the server, as the options named it.
    @ivar connections: connections made so far (each after the first is a
        reconnection).
    @ivar failedAttempts: connection attempts that failed.
    @ivar lastError: why the last attempt failed or the last connection
        ended, if one did.
    """

    def __init__(self, server: str) -> None:
        self.server = server
        self.connections = 0
        self.failedAttempts = 0
        self.lastError: str | None = None

    @property
    def reconnects(self) -> int:
        return max(self.connections - 1, 0)


class ClientFactory(MessageFactory):
    """
    A L{MessageFactory} that tells the retry policy and the status when
    connections come and go.
    """

    def __init__(
        self,
        protocol: type[FramedProtocol],
        hub: Hub,
        limits: Limits,
        retryPolicy: RetryPolicy,
        status: ClientStatus,
    ) -> None:
        super().__init__(protocol, hub, limits)
        #: The side as a hub, not only an ISide: the client's service
        #: closes its session through it on stop.
        self.hub = hub
        self.retryPolicy = retryPolicy
        self.status = status
        retryPolicy.server = status.server

    def peerReady(self, peer: FramedProtocol) -> None:
        # Only now is it a connection: one whose TLS handshake never
        # finishes must not reset the backoff.
        self.retryPolicy.connected()
        self.status.connections += 1
        super().peerReady(peer)

    def peerLost(self, peer: FramedProtocol, reason: Failure) -> None:
        self.retryPolicy.disconnected()
        self.status.lastError = reason.getErrorMessage()
        super().peerLost(peer, reason)


@implementer(IStreamClientEndpoint)
class LoggingEndpoint:
    """
    A client endpoint that logs each failed attempt with its reason, which
    L{ClientService} does not, and notes it in the status.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, status: ClientStatus) -> None:
        self._endpoint = endpoint
        self._status = status

    def __repr__(self) -> str:
        return self._status.server

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        def failed(reason: Failure) -> Failure:
            if reason.check(CancelledError, ConnectingCancelledError):  # stopping
                return reason
            self._status.failedAttempts += 1
            self._status.lastError = reason.getErrorMessage()
            log.warn(
                "cannot connect to {server}: {reason}",
                event="connect-failed",
                server=self._status.server,
                reason=self._status.lastError,
            )
            return reason

        return self._endpoint.connect(factory).addErrback(failed)


@implementer(ILogObserver)
class _WithoutRetryLine:
    """
    Every event but L{ClientService}'s retry line, to the global publisher.
    """

    LINE = "Scheduling retry {attempt} to connect {endpoint} in {delay} seconds."

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_format") != self.LINE:
            globalLogPublisher(event)


class _ClosingClientService(ClientService):
    """
    Closes the connection through its session on stop, so that the
    protocol stops producing first; and leaves out L{ClientService}'s retry
    line, whose count restarts on every connection: L{RetryPolicy} logs the
    real one.
    """

    _log = Logger(observer=_WithoutRetryLine())

    def __init__(self, hub: Hub, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hub = hub

    def stopService(self) -> Any:
        result = super().stopService()
        for session in self._hub.sessions():
            session.close()
        return result


def makeClientService(
    endpoint: IStreamClientEndpoint, factory: ClientFactory, clock: IReactorTime
) -> ClientService:
    """
    A service that keeps one connection to C{endpoint} for as long as it runs.
    """
    return _ClosingClientService(
        factory.hub,
        LoggingEndpoint(endpoint, factory.status),
        factory,
        retryPolicy=factory.retryPolicy,
        clock=clock,
    )
