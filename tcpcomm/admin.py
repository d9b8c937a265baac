"""
The admin HTTP API (C{--admin}): JSON over C{twisted.web}, in the daemon's
own reactor. The server's lists its clients and sends to, broadcasts to and
disconnects them; the client's tells how its connection is doing and sends
to its server. Both serve C{/healthz}, C{/metrics} and C{/openapi.json}.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from tcpcomm.client import ClientStatus
from tcpcomm.hub import Hub
from tcpcomm.interfaces import ISession
from tcpcomm.openapi import openapi
from tcpcomm.registry import addressText
from tcpcomm.session import Session

if TYPE_CHECKING:
    from tcpcomm.reload import ReloadStatus

log = Logger()


class APIError(Exception):
    """
    An answer other than success: an HTTP status and a message for people.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def isoTime(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat()


class Outgoing:
    """
    Turns text from an API call into one message the peers can take, or
    says why it cannot be.
    """

    def __init__(self, encoding: str, framing: str, maxMessageSize: int) -> None:
        self.encoding = encoding
        self.framing = framing
        self.maxMessageSize = maxMessageSize

    def fromBody(self, body: bytes) -> bytes:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise APIError(400, "the request body must be UTF-8 text") from None
        if self.framing == "line" and "\n" in text:
            raise APIError(400, "a message cannot hold a newline in --framing line")
        try:
            message = text.encode(self.encoding)
        except UnicodeEncodeError as e:
            raise APIError(400, f"the text cannot be encoded as {self.encoding}: {e}") from None
        if len(message) > self.maxMessageSize:
            raise APIError(
                413,
                f"the message is {len(message)} bytes, over --max-message-size "
                f"{self.maxMessageSize}",
            )
        return message


def describe(session: ISession) -> dict[str, Any]:
    """
    What C{GET /clients} says of one session.
    """
    assert isinstance(session, Session)
    return {
        "id": session.id,
        "peer": addressText(session.peer.transport.getPeer()),  # type: ignore[attr-defined]
        "tlsSubject": session.tlsSubject,
        "connectedSince": isoTime(session.since),
        "lastMessage": isoTime(session.lastMessage),
        "messagesIn": session.messagesIn,
        "messagesOut": session.messagesOut,
        "bytesIn": session.bytesIn,
        "bytesOut": session.bytesOut,
    }


@dataclass(frozen=True)
class Raw:
    """
    A response body that is not JSON.
    """

    contentType: bytes
    body: bytes


#: A route's handler: given the request and the path's parameters, it
#: returns C{(status, JSON-able body or Raw)}, or C{NOT_DONE_YET}.
Handler = Callable[[Request, list[str]], Any]

#: Paths that need no token: the health check, and the dashboard page,
#: which holds no data (browsers cannot send a token when opening a page).
PUBLIC = frozenset({"/healthz", "/"})


class AdminResource(Resource):
    """
    Routes requests by method and path, checks the bearer token, and turns
    results and L{APIError}s into responses.
    """

    isLeaf = True

    def __init__(
        self,
        routes: dict[tuple[str, str], Handler],
        metrics: CollectorRegistry,
        spec: dict[str, Any],
        token: str | None,
        dashboard: bytes | None = None,
        reloads: ReloadStatus | None = None,
    ) -> None:
        super().__init__()
        specBody = json.dumps(spec, indent=1).encode()

        def healthz(request: Request, params: list[str]) -> tuple[int, Any]:
            if reloads is None:
                return 200, {"status": "ok"}
            lastReload = {"time": isoTime(reloads.time), "ok": reloads.ok, "error": reloads.error}
            return 200, {"status": "ok", "lastReload": lastReload}

        builtIn: dict[tuple[str, str], Handler] = {
            ("GET", "/healthz"): healthz,
            ("GET", "/metrics"): lambda request, params: (
                200,
                Raw(CONTENT_TYPE_LATEST.encode(), generate_latest(metrics)),
            ),
            ("GET", "/openapi.json"): lambda request, params: (
                200,
                Raw(b"application/json", specBody),
            ),
        }
        if dashboard is not None:
            page = Raw(b"text/html; charset=utf-8", dashboard)
            builtIn[("GET", "/")] = lambda request, params: (200, page)
        self._routes = [
            (method, re.compile("^" + re.sub(r"\{\w+\}", "([^/]+)", path) + "$"), handler)
            for (method, path), handler in {**builtIn, **routes}.items()
        ]
        self._token = token

    def setToken(self, token: str | None) -> None:
        """
        Require C{token} from now on (a reload read the token file again).
        """
        self._token = token

    def render(self, request: Request) -> bytes | int:
        path = (request.path or b"/").decode("utf-8", "replace").rstrip("/") or "/"
        method = (request.method or b"GET").decode("ascii", "replace")
        wanted = "GET" if method == "HEAD" else method
        try:
            if path not in PUBLIC:
                self._authorize(request)
            allowed = []
            for routeMethod, pattern, handler in self._routes:
                match = pattern.match(path)
                if match is None:
                    continue
                if routeMethod != wanted:
                    allowed.append(routeMethod)
                    continue
                result = handler(request, [unquote(g) for g in match.groups()])
                if result is NOT_DONE_YET:
                    return NOT_DONE_YET
                status, body = result
                if isinstance(body, Raw):
                    request.setResponseCode(status)
                    request.setHeader(b"content-type", body.contentType)
                    request.setHeader(b"cache-control", b"no-store")
                    return body.body
                return self._json(request, status, body)
            if allowed:
                request.setHeader(b"allow", ", ".join(allowed).encode())
                raise APIError(405, f"{method} is not allowed on {path}; use {', '.join(allowed)}")
            raise APIError(404, f"no such route: {method} {path}")
        except APIError as e:
            return self._json(request, e.status, {"error": e.message})
        except Exception:
            log.failure("admin API failed on {method} {path}", method=method, path=path)
            return self._json(request, 500, {"error": "internal error; see the daemon's log"})

    def _authorize(self, request: Request) -> None:
        if self._token is None:
            return
        given = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, credential = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credential.strip().encode(), self._token.encode()
        ):
            request.setHeader(b"www-authenticate", b'Bearer realm="tcpcomm"')
            raise APIError(401, "a valid 'Authorization: Bearer <token>' header is required")

    def _json(self, request: Request, status: int, body: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode() + b"\n"


@implementer(IPushProducer)
class _Subscriber:
    """
    One C{GET /events} reader. It is the producer of its stream: while the
    reader does not keep up (the transport paused it), events are dropped,
    not buffered, and the reader is told how many when it catches up. A
    comment every C{keepalive} seconds keeps proxies from closing a quiet
    stream.
    """

    def __init__(self, hub: Hub, request: Request, clock: IReactorTime, keepalive: float) -> None:
        self._hub = hub
        self._request = request
        self._clock = clock
        self._paused = False
        self._dropped = 0
        self._keepalive = LoopingCall(request.write, b": keep-alive\n\n")
        self._keepalive.clock = clock
        request.registerProducer(self, True)
        request.write(b": tcpcomm events\n\n")
        hub.watchers.append(self.watch)
        self._keepalive.start(keepalive, now=False)
        request.notifyFinish().addBoth(self._finished)

    def watch(self, kind: str, session: ISession, text: str) -> None:
        if self._paused:
            self._dropped += 1
            return
        event = {"kind": kind, "peer": session.id, "text": text}
        event["time"] = isoTime(self._clock.seconds())
        self._request.write(b"data: " + json.dumps(event).encode() + b"\n\n")

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._dropped:
            self._request.write(
                b": %d events dropped while the reader was behind\n\n" % self._dropped
            )
            self._dropped = 0

    def stopProducing(self) -> None:
        self._paused = True

    def _finished(self, result: object) -> None:
        if self.watch in self._hub.watchers:
            self._hub.watchers.remove(self.watch)
        if self._keepalive.running:
            self._keepalive.stop()


class EventStream:
    """
    C{GET /events}: the traffic and the comings and goings of peers, as
    Server-Sent Events, for the dashboard's live tail.
    """

    keepalive = 20.0

    def __init__(self, hub: Hub, clock: IReactorTime) -> None:
        self._hub = hub
        self._clock = clock

    def __call__(self, request: Request, params: list[str]) -> object:
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-store")
        _Subscriber(self._hub, request, self._clock, self.keepalive)
        return NOT_DONE_YET


def _body(request: Request) -> bytes:
    """
    The request's body: the message, which may not be empty (an HTTP client
    cannot tell an empty body from none, and to peers an empty message is
    a keep-alive, not a message).
    """
    body = request.content.read() if request.content is not None else b""
    if not body:
        raise APIError(400, "the message is the request body, and it is empty")
    return body


def serverRoutes(
    hub: Hub, outgoing: Outgoing, clock: IReactorTime
) -> dict[tuple[str, str], Handler]:
    """
    The server's routes.
    """

    def session(sessionId: str) -> Session:
        found = hub.get(sessionId)
        if found is None:
            raise APIError(404, f"no client {sessionId!r} is connected")
        assert isinstance(found, Session)
        return found

    def listClients(request: Request, params: list[str]) -> tuple[int, Any]:
        return 200, [describe(s) for s in hub.sessions()]

    def showClient(request: Request, params: list[str]) -> tuple[int, Any]:
        return 200, describe(session(params[0]))

    def sendMessage(request: Request, params: list[str]) -> tuple[int, Any]:
        target = session(params[0])
        message = outgoing.fromBody(_body(request))
        target.sendBytes(message)
        log.info("admin: sent a message to {peer}", event="admin-send", peer=target.id)
        return 200, {"id": target.id, "sent": 1}

    def broadcast(request: Request, params: list[str]) -> tuple[int, Any]:
        message = outgoing.fromBody(_body(request))
        count = hub.broadcastBytes(message)
        log.info("admin: broadcast to {count} client(s)", event="admin-broadcast", count=count)
        return 200, {"received": count}

    def disconnect(request: Request, params: list[str]) -> tuple[int, Any]:
        target = session(params[0])
        target.close()
        log.info("admin: disconnecting {peer}", event="admin-disconnect", peer=target.id)
        return 200, {"id": target.id, "disconnected": True}

    return {
        ("GET", "/clients"): listClients,
        ("GET", "/clients/{id}"): showClient,
        ("POST", "/clients/{id}/messages"): sendMessage,
        ("POST", "/clients/{id}/disconnect"): disconnect,
        ("POST", "/broadcast"): broadcast,
        ("GET", "/events"): EventStream(hub, clock),
    }


def clientRoutes(
    hub: Hub, status: ClientStatus, outgoing: Outgoing
) -> dict[tuple[str, str], Handler]:
    """
    The client's routes.
    """

    def showStatus(request: Request, params: list[str]) -> tuple[int, Any]:
        sessions = hub.sessions()
        current = sessions[0] if sessions else None
        return 200, {
            "connected": current is not None,
            "server": status.server,
            "since": isoTime(current.since) if current is not None else None,
            "connections": status.connections,
            "reconnects": status.reconnects,
            "failedAttempts": status.failedAttempts,
            "lastError": status.lastError,
            "messagesIn": hub.stats.messagesIn,
            "messagesOut": hub.stats.messagesOut,
        }

    def sendMessage(request: Request, params: list[str]) -> tuple[int, Any]:
        message = outgoing.fromBody(_body(request))
        sessions = hub.sessions()
        if not sessions:
            raise APIError(503, f"not connected to {status.server}; try again later")
        sessions[0].sendBytes(message)
        log.info("admin: sent a message to {peer}", event="admin-send", peer=sessions[0].id)
        return 200, {"server": status.server, "sent": 1}

    return {("GET", "/status"): showStatus, ("POST", "/messages"): sendMessage}


class AdminSite(Site):
    """
    A site that leaves request logging to the routes, which log what changed.
    """

    def log(self, request: http.Request) -> None:
        pass


def makeAdminSite(
    hub: Hub,
    metrics: CollectorRegistry,
    outgoing: Outgoing,
    clock: IReactorTime,
    token: str | None,
    status: ClientStatus | None = None,
    dashboard: bytes | None = None,
    reloads: ReloadStatus | None = None,
) -> Site:
    """
    The admin site of a server (C{status} is L{None}) or of a client;
    C{/healthz} tells the last reload's time and result from C{reloads}.
    """
    if status is None:
        routes = serverRoutes(hub, outgoing, clock)
        spec = openapi("server", token is not None)
    else:
        routes = clientRoutes(hub, status, outgoing)
        spec = openapi("client", token is not None)
        dashboard = None
    return AdminSite(AdminResource(routes, metrics, spec, token, dashboard, reloads))
