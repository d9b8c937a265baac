"""
The admin HTTP API (C{--admin}): JSON over C{twisted.web}, in the daemon's
own reactor. The server's lists its clients and sends to, broadcasts to and
disconnects them; the client's tells how its connection is doing and sends
to its server. Both serve C{/healthz}, C{/metrics} and C{/openapi.json}.

One route table (L{serverRoutes}, L{clientRoutes}, and the routes both have
in L{AdminResource}) is the single source of the dispatch and of
C{/openapi.json}. To add a route, add one entry to its table::

    ("GET", "/queues"): Route(
        listQueues,
        Doc(
            "listQueues",
            "The messages waiting for each name.",
            {"200": jsonResponse("The queues.", ref("Queues"))},
            schemas={"Queues": QUEUES_SCHEMA},
        ),
    ),

the handler, then its L{Doc}: a stable operation id, a summary and each
response it gives, with its query parameters (C{parameters=}) and body
(C{requestBody=}, with C{body=True} on the route) if any. A path parameter
(C{{id}}) is described once, in L{tcpcomm.control.openapi.PATH_PARAMETERS};
the 401 of a route that is not C{public} is added for it.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from io import BytesIO
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from tcpcomm.client import ClientStatus
from tcpcomm.control.openapi import (
    CLIENT_SCHEMA,
    DRAIN_SCHEMA,
    HEALTHZ_SCHEMA,
    SEND_ERRORS,
    STATUS_SCHEMA,
    TEXT_BODY,
    Doc,
    allRequired,
    document,
    error,
    jsonResponse,
    ref,
    simpleObject,
    textResponse,
)
from tcpcomm.drain import Drain
from tcpcomm.fleet.settings import BackplaneUnavailable
from tcpcomm.hub.hub import Hub
from tcpcomm.hub.queues import QueueFull, Queues, QueueUnavailable
from tcpcomm.interfaces import ISession
from tcpcomm.wire.address import addressText

if TYPE_CHECKING:
    from tcpcomm.fleet.backplane import Backplane
    from tcpcomm.reload import ReloadStatus

# The namespace its lines had before the package had layers: operators filter on it.
log = Logger(namespace="tcpcomm.admin")


class APIError(Exception):
    """
    An answer other than success: an HTTP status, a message for people, and
    the headers that go with it (C{Allow}, C{WWW-Authenticate}).
    """

    def __init__(
        self, status: int, message: str, headers: dict[bytes, bytes] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


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
    return {
        "id": session.id,
        "peer": session.address,
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


@dataclass(frozen=True)
class Route:
    """
    One entry of a route table: the handler, and what the API knows of the
    route before reading a request's body, and what C{/openapi.json} says
    of it. The table is the one place that says which paths need no token
    and which routes take a body.
    """

    handler: Handler
    doc: Doc
    #: Needs no token: the health check, and the dashboard page, which holds
    #: no data (browsers cannot send a token when opening a page).
    public: bool = False
    #: Takes the message as its body, up to C{--max-message-size} bytes;
    #: the other routes take none.
    body: bool = False


def _target(method: bytes | None, path: bytes | None) -> tuple[str, str]:
    """
    The method and path of a request as the route table spells them.
    """
    text = (path or b"/").decode("utf-8", "replace").rstrip("/") or "/"
    return (method or b"GET").decode("ascii", "replace"), text


def _tooLarge(limit: int, size: int | None = None) -> APIError:
    """
    The 413 for a body over C{limit} bytes (C{size} of them, if declared),
    in the words L{Outgoing} uses for a message too large once encoded.
    """
    if limit == 0:
        return APIError(413, "this route takes no request body")
    given = "is" if size is None else f"is {size} bytes,"
    return APIError(413, f"the message {given} over --max-message-size {limit}")


class AdminResource(Resource):
    """
    Routes requests by method and path, checks the bearer token, and turns
    results and L{APIError}s into responses. L{admit} makes the same checks
    from the request line and headers alone, so that L{AdminChannel} can
    refuse a request before reading its body.

    @ivar token: The token requests must bear, or L{None}; the one place it
        is kept, so that replacing it takes effect on the next request.
    """

    isLeaf = True

    def __init__(
        self,
        routes: dict[tuple[str, str], Route],
        metrics: CollectorRegistry,
        role: str,
        token: str | None,
        maxBody: int,
        dashboard: bytes | None = None,
        reloads: ReloadStatus | None = None,
        drain: Drain | None = None,
        backplane: Backplane | None = None,
    ) -> None:
        super().__init__()

        def healthz(request: Request, params: list[str]) -> tuple[int, Any]:
            health: dict[str, Any] = {"status": "ok"}
            code = 200
            if drain is not None and drain.draining:
                # 503: HAProxy's http-check takes the node down, and sends it no one new.
                health["status"] = "draining"
                health["drain"] = drain.state()
                code = 503
            if reloads is not None:
                health["lastReload"] = {
                    "time": isoTime(reloads.time),
                    "ok": reloads.ok,
                    "error": reloads.error,
                }
            if backplane is not None:
                # Still 200 (unless draining): the node serves its own clients without Redis.
                health["backplane"] = backplane.state()
                if not backplane.up and code == 200:
                    health["status"] = "degraded"
            return code, health

        def openapi(request: Request, params: list[str]) -> tuple[int, Any]:
            body = json.dumps(self.openapi(), indent=1).encode()
            return 200, Raw(b"application/json", body)

        builtIn: dict[tuple[str, str], Route] = {
            ("GET", "/healthz"): Route(
                healthz,
                Doc(
                    "healthz",
                    "Is the daemon up? Never needs a token.",
                    {
                        "200": jsonResponse("Up.", HEALTHZ_SCHEMA),
                        **(
                            {}
                            if drain is None
                            else {
                                "503": jsonResponse(
                                    "Draining (POST /drain): up, but send it no one new.",
                                    HEALTHZ_SCHEMA,
                                )
                            }
                        ),
                    },
                ),
                public=True,
            ),
            ("GET", "/metrics"): Route(
                lambda request, params: (
                    200,
                    Raw(CONTENT_TYPE_LATEST.encode(), generate_latest(metrics)),
                ),
                Doc(
                    "metrics",
                    "Prometheus metrics.",
                    {"200": textResponse("Metrics in Prometheus' text format.", "text/plain")},
                ),
            ),
            ("GET", "/openapi.json"): Route(
                openapi,
                Doc(
                    "openapi",
                    "This document.",
                    {"200": jsonResponse("The OpenAPI document.", {"type": "object"})},
                ),
            ),
        }
        if dashboard is not None:
            page = Raw(b"text/html; charset=utf-8", dashboard)
            builtIn[("GET", "/")] = Route(
                lambda request, params: (200, page),
                Doc(
                    "dashboard",
                    "The dashboard page (it holds no data, so needs no token).",
                    {"200": textResponse("An HTML page.", "text/html")},
                ),
                public=True,
            )
        self.role = role
        self.table = {**builtIn, **routes}
        self._routes = [
            (method, re.compile("^" + re.sub(r"\{\w+\}", "([^/]+)", path) + "$"), route)
            for (method, path), route in self.table.items()
        ]
        self.token = token
        self.maxBody = maxBody

    def admit(self, method: bytes, uri: bytes, headers: Headers, length: int | None) -> int:
        """
        Judge a request whose headers are in, before any of its body is
        read: raise the L{APIError} to answer at once (a missing or wrong
        token; a body larger than its route takes, C{length} being what
        C{Content-Length} declares, L{None} when chunked; a body sent to no
        route at all), or return the most body bytes to accept.
        """
        name, path = _target(method, uri.split(b"?", 1)[0])
        self._authorize(path, headers)
        try:
            route, _ = self._resolve(name, path)
        except APIError:
            if length == 0:
                return 0  # nothing to read: render() answers as for any request
            raise
        limit = self.maxBody if route.body else 0
        if length is not None and length > limit:
            raise _tooLarge(limit, length)
        return limit

    def openapi(self) -> dict[str, Any]:
        """
        The OpenAPI document of the routes, as the token stands now.
        """
        return document(
            self.role,
            [
                (method, path, route.public, route.doc)
                for (method, path), route in self.table.items()
            ],
            self.token is not None,
        )

    def setToken(self, token: str | None) -> None:
        """
        Require C{token} from now on (a reload read the token file again).
        """
        self.token = token

    def render(self, request: Request) -> bytes | int:
        method, path = _target(request.method, request.path)
        try:
            refusal = getattr(request, "refusal", None)
            if refusal is not None:
                raise refusal
            self._authorize(path, request.requestHeaders)
            route, params = self._resolve(method, path)
            result = route.handler(request, params)
            if result is NOT_DONE_YET:
                return NOT_DONE_YET
            if isinstance(result, Deferred):
                self._later(request, result, method, path)
                return NOT_DONE_YET
            return self._answer(request, result)
        except Exception:
            return self._failed(request, Failure(), method, path)

    def _answer(self, request: Request, result: tuple[int, Any]) -> bytes:
        status, body = result
        if isinstance(body, Raw):
            request.setResponseCode(status)
            request.setHeader(b"content-type", body.contentType)
            request.setHeader(b"cache-control", b"no-store")
            return body.body
        return self._json(request, status, body)

    def _failed(self, request: Request, failure: Failure, method: str, path: str) -> bytes:
        error = failure.value
        if isinstance(error, APIError):
            for name, value in error.headers.items():
                request.setHeader(name, value)
            return self._json(request, error.status, {"error": error.message})
        log.failure(
            "admin API failed on {method} {path}",
            failure,
            event="admin-error",
            method=method,
            path=path,
        )
        return self._json(request, 500, {"error": "internal error; see the daemon's log"})

    def _later(self, request: Request, result: Deferred[Any], method: str, path: str) -> None:
        """
        Answer once C{result} fires (a route that waits for a commit),
        unless the client has gone by then.
        """
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(outcome: Any) -> None:
            if isinstance(outcome, Failure):
                body = self._failed(request, outcome, method, path)
            else:
                body = self._answer(request, outcome)
            if not gone:
                request.write(body)
                request.finish()

        result.addBoth(answer)

    def _resolve(self, method: str, path: str) -> tuple[Route, list[str]]:
        """
        The route for C{method} on C{path} and the path's parameters, or the
        L{APIError} (404, or 405 with C{Allow}) that says there is none.
        """
        wanted = "GET" if method == "HEAD" else method
        allowed = []
        for routeMethod, pattern, route in self._routes:
            match = pattern.match(path)
            if match is None:
                continue
            if routeMethod != wanted:
                allowed.append(routeMethod)
                continue
            return route, [unquote(g) for g in match.groups()]
        if allowed:
            raise APIError(
                405,
                f"{method} is not allowed on {path}; use {', '.join(allowed)}",
                {b"allow": ", ".join(allowed).encode()},
            )
        raise APIError(404, f"no such route: {method} {path}")

    def _authorize(self, path: str, headers: Headers) -> None:
        """
        Raise a 401 unless C{path} is public or C{headers} bear the token.
        """
        if self.token is None:
            return
        if any(route.public and pattern.match(path) for _, pattern, route in self._routes):
            return
        given = (headers.getRawHeaders(b"authorization") or [b""])[-1].decode("latin-1")
        scheme, _, credential = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credential.strip().encode(), self.token.encode()
        ):
            raise APIError(
                401,
                "a valid 'Authorization: Bearer <token>' header is required",
                {b"www-authenticate": b'Bearer realm="tcpcomm"'},
            )

    def _json(self, request: Request, status: int, body: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode() + b"\n"


#: One event as L{RecentEvents} keeps it: its sequence number, time, kind,
#: peer and text.
Event = tuple[int, float, str, str, str]


class RecentEvents:
    """
    The hub's one watcher for C{GET /events}: it numbers each event, keeps
    the last L{size} of them (their texts cut to L{maxText} characters), and
    hands each to the readers of the stream. A reader that comes opens with
    the events kept, so the dashboard's tail does not start empty; one that
    comes back with C{Last-Event-ID} gets only those it missed.

    Each event id is this process's mark and the event's number, so that a
    reader coming back after a restart gets every event kept, not none.
    """

    size = 100
    maxText = 1024

    def __init__(self, hub: Hub, clock: IReactorTime) -> None:
        self._clock = clock
        self._events: deque[Event] = deque(maxlen=self.size)
        self._number = 0
        self.mark = secrets.token_hex(4)
        self.readers: list[_Subscriber] = []
        hub.watchers.append(self.watch)

    def watch(self, kind: str, session: ISession, text: str) -> None:
        # On every message of a server with --admin: kept to a few steps.
        self._number += 1
        event = (self._number, self._clock.seconds(), kind, session.id, text)
        if self.readers:
            for reader in list(self.readers):
                reader.send(event)
        if len(text) > self.maxText:
            event = (*event[:4], text[: self.maxText] + "…")
        self._events.append(event)

    def eventId(self, number: int) -> str:
        return f"{self.mark}-{number}"

    def since(self, lastId: str | None) -> list[Event]:
        """
        The events kept that came after the one C{lastId} names: all of them
        if it names none, or one of another process.
        """
        mark, _, number = (lastId or "").strip().partition("-")
        if mark == self.mark and number.isdigit():
            return [e for e in self._events if e[0] > int(number)]
        return list(self._events)


@implementer(IPushProducer)
class _Subscriber:
    """
    One C{GET /events} reader. It is the producer of its stream: while the
    reader does not keep up (the transport paused it), events are dropped,
    not buffered, and the reader is told how many when it catches up. A
    comment every C{keepalive} seconds keeps proxies from closing a quiet
    stream.
    """

    def __init__(
        self,
        recent: RecentEvents,
        request: Request,
        clock: IReactorTime,
        keepalive: float,
        lastId: str | None,
    ) -> None:
        self._recent = recent
        self._request = request
        self._paused = False
        self._dropped = 0
        self._keepalive = LoopingCall(request.write, b": keep-alive\n\n")
        self._keepalive.clock = clock
        request.registerProducer(self, True)
        request.write(b": tcpcomm events\n\n")
        for event in recent.since(lastId):
            self.send(event)
        recent.readers.append(self)
        self._keepalive.start(keepalive, now=False)
        request.notifyFinish().addBoth(self._finished)

    def send(self, event: Event) -> None:
        if self._paused:
            self._dropped += 1
            return
        number, when, kind, peer, text = event
        data = json.dumps({"kind": kind, "peer": peer, "text": text, "time": isoTime(when)})
        self._request.write(
            b"id: %s\ndata: %s\n\n" % (self._recent.eventId(number).encode(), data.encode())
        )

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
        if self in self._recent.readers:
            self._recent.readers.remove(self)
        if self._keepalive.running:
            self._keepalive.stop()


class EventStream:
    """
    C{GET /events}: the traffic and the comings and goings of peers, as
    Server-Sent Events, for the dashboard's live tail; it opens with the
    last events (L{RecentEvents}).
    """

    keepalive = 20.0

    def __init__(self, hub: Hub, clock: IReactorTime) -> None:
        self._clock = clock
        self.recent = RecentEvents(hub, clock)

    def __call__(self, request: Request, params: list[str]) -> object:
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-store")
        lastId = request.getHeader(b"last-event-id")
        _Subscriber(
            self.recent,
            request,
            self._clock,
            self.keepalive,
            None if lastId is None else lastId.decode("ascii", "replace"),
        )
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


def _ttl(request: Request) -> float | None:
    """
    The send's C{?ttl=SECONDS}, if given: how long it may wait for a client
    that is away; a 400 unless it is a positive number.
    """
    given = (request.args or {}).get(b"ttl")
    if not given:
        return None
    text = given[-1].decode("utf-8", "replace")
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise APIError(400, f"ttl must be a positive number of seconds, not {text!r}")
    return seconds


def _local(request: Request) -> bool:
    """
    Whether C{?local=1} asks for this node's clients only.
    """
    given = (request.args or {}).get(b"local")
    if not given:
        return False
    if given[-1] not in (b"0", b"1"):
        raise APIError(400, f"local must be 0 or 1, not {given[-1].decode('utf-8', 'replace')!r}")
    return given[-1] == b"1"


def _unavailable(failure: Failure) -> None:
    """
    The 503 of a cross-node call the backplane could not answer.
    """
    failure.trap(BackplaneUnavailable)
    raise APIError(503, f"the backplane could not say: {failure.getErrorMessage()}")


def serverRoutes(
    hub: Hub,
    outgoing: Outgoing,
    clock: IReactorTime,
    drain: Drain | None = None,
    fleet: Backplane | None = None,
) -> dict[tuple[str, str], Route]:
    """
    The server's routes; C{POST /drain} where there is a C{drain}; with
    C{fleet}, those about clients reach every node's.
    """

    def session(sessionId: str) -> ISession:
        found = hub.get(sessionId)
        if found is None:
            raise APIError(404, f"no client {sessionId!r} is connected")
        return found

    def shown(node: str, clientId: str) -> str:
        # Addresses are only a node's own (unix#1 is on every node).
        return clientId if fleet is None or fleet.named else f"{node}/{clientId}"

    def describeHere(s: ISession) -> dict[str, Any]:
        described = describe(s)
        if fleet is not None:
            described["id"] = shown(fleet.node, s.id)
            described["node"] = fleet.node
        return described

    def describeRecord(record: dict[str, Any]) -> dict[str, Any]:
        """
        A client of another node, as Redis holds it: no traffic counts.
        """
        return {
            "id": shown(record["node"], record["id"]),
            "node": record["node"],
            "peer": record["peer"],
            "tlsSubject": record.get("tlsSubject"),
            "connectedSince": isoTime(record["since"]),
            "lastMessage": None,
            **dict.fromkeys(("messagesIn", "messagesOut", "bytesIn", "bytesOut")),
        }

    def where(given: str) -> tuple[str, str, ISession | None]:
        """
        The node and id that C{given} (C{id}, or C{node/id}) names, and the
        session if it is this node's (node names and ids hold no C{/}).
        """
        assert fleet is not None
        node, slash, clientId = given.partition("/")
        if not slash:
            node, clientId = "", given
        here = hub.get(clientId) if node in ("", fleet.node) else None
        return node, clientId, here

    def remote(given: str) -> Deferred[dict[str, Any] | None] | None:
        """
        The record of the client that another node holds, when C{given} may
        name one (L{None} when it can only be this node's).
        """
        assert fleet is not None
        node, clientId, here = where(given)
        if here is not None or node == fleet.node or (node == "" and not fleet.named):
            return None
        return fleet.locate(clientId, node)

    def listClients(request: Request, params: list[str]) -> Any:
        onlyHere = _local(request)
        here = [describeHere(s) for s in hub.sessions()]
        if fleet is None or onlyHere:
            return 200, here
        node = fleet.node

        def listed(records: list[dict[str, Any]]) -> tuple[int, Any]:
            # This node's own are as its hub has them now.
            return 200, here + [describeRecord(r) for r in records if r["node"] != node]

        return fleet.fleet().addCallbacks(listed, _unavailable)

    def showClient(request: Request, params: list[str]) -> Any:
        if fleet is None:
            return 200, describe(session(params[0]))
        _, clientId, here = where(params[0])
        if here is not None:
            return 200, describeHere(here)
        found = remote(params[0])
        if found is None:
            raise APIError(404, f"no client {params[0]!r} is connected")

        def shownRecord(record: dict[str, Any] | None) -> tuple[int, Any]:
            if record is None:
                raise APIError(404, f"no client {params[0]!r} is connected to any node")
            return 200, describeRecord(record)

        return found.addCallbacks(shownRecord, _unavailable)

    def sendMessage(request: Request, params: list[str]) -> Any:
        ttl = _ttl(request)
        if fleet is not None:
            return sendAcross(params[0], outgoing.fromBody(_body(request)), ttl)
        if ttl is not None and hub.queues is not None and hub.get(params[0]) is None:
            return queue(hub.queues, params[0], outgoing.fromBody(_body(request)), ttl)
        target = session(params[0])
        message = outgoing.fromBody(_body(request))
        target.sendBytes(message)
        log.info("admin: sent a message to {peer}", event="admin-send", peer=target.id)
        return 200, {"id": target.id, "sent": 1}

    def sendAcross(given: str, message: bytes, ttl: float | None) -> Any:
        """
        A send in a fleet: to this node's client at once, else to the node
        that holds it, which confirms the write (or not) within a second.
        """
        assert fleet is not None
        _, clientId, here = where(given)
        if here is not None:
            here.sendBytes(message)
            log.info("admin: sent a message to {peer}", event="admin-send", peer=here.id)
            return 200, {"id": given, "node": fleet.node, "sent": 1}

        def absent() -> Any:
            # Queues stay on the node that was asked, for now.
            if ttl is not None and hub.queues is not None:
                return queue(hub.queues, clientId, message, ttl)
            raise APIError(404, f"no client {given!r} is connected to any node")

        found = remote(given)
        if found is None:
            return absent()

        def located(record: dict[str, Any] | None) -> Any:
            if record is None:
                return absent()
            node = record["node"]

            def confirmed(reply: dict[str, Any]) -> Any:
                if not reply.get("sent"):
                    return absent()
                log.info(
                    "admin: sent a message to {peer} on node {node}",
                    event="admin-send",
                    peer=clientId,
                    node=node,
                )
                return 200, {"id": given, "node": node, "sent": 1}

            return fleet.request(node, "deliver", {"id": clientId}, message).addCallback(confirmed)

        return found.addCallback(located).addErrback(_unavailable)

    def queue(queues: Queues, clientId: str, message: bytes, ttl: float) -> Deferred[Any]:
        """
        Queue a send to a client that is away; answer once it is stored.
        """

        def queued(position: int) -> tuple[int, Any]:
            log.info(
                "admin: queued a message for {peer} (position {position}, ttl {ttl} s)",
                event="admin-queue",
                peer=clientId,
                position=position,
                ttl=ttl,
            )
            return 202, {"id": clientId, "queued": True, "position": position}

        def refused(failure: Failure) -> None:
            if failure.check(QueueUnavailable):
                raise APIError(503, str(failure.value))
            failure.trap(QueueFull)
            error = failure.value
            assert isinstance(error, QueueFull)
            log.warn(
                "admin: refused a message for {peer}: {reason}",
                event="admin-queue-full",
                peer=clientId,
                reason=error.message,
            )
            raise APIError(507, error.message)

        return queues.put(clientId, message, ttl).addCallbacks(queued, refused)

    def listQueues(request: Request, params: list[str]) -> object:
        queues = hub.queues
        if queues is None:
            return 200, {"queues": []}
        # After a restart with --queue-dir, not before the stored queues are read.
        return queues.loaded().addCallback(lambda _: (200, {"queues": queues.summary()}))

    def broadcast(request: Request, params: list[str]) -> tuple[int, Any]:
        message = outgoing.fromBody(_body(request))
        count = hub.broadcastBytes(message)
        log.info("admin: broadcast to {count} client(s)", event="admin-broadcast", count=count)
        return 200, {"received": count}

    def disconnect(request: Request, params: list[str]) -> Any:
        if fleet is None:
            target = session(params[0])
        else:
            _, clientId, here = where(params[0])
            if here is None:
                return disconnectAcross(params[0])
            target = here
        target.close()
        log.info("admin: disconnecting {peer}", event="admin-disconnect", peer=target.id)
        return 200, {"id": params[0] if fleet else target.id, "disconnected": True}

    def disconnectAcross(given: str) -> Any:
        """
        A disconnect of a client that another node holds, if one does.
        """
        assert fleet is not None
        found = remote(given)
        if found is None:
            raise APIError(404, f"no client {given!r} is connected")

        def located(record: dict[str, Any] | None) -> Any:
            if record is None:
                raise APIError(404, f"no client {given!r} is connected to any node")
            node, clientId = record["node"], record["id"]

            def done(reply: dict[str, Any]) -> tuple[int, Any]:
                if not reply.get("disconnected"):
                    raise APIError(404, f"no client {given!r} is connected to any node")
                log.info(
                    "admin: disconnecting {peer} on node {node}",
                    event="admin-disconnect",
                    peer=clientId,
                    node=node,
                )
                return 200, {"id": given, "node": node, "disconnected": True}

            return fleet.request(node, "disconnect", {"id": clientId}).addCallback(done)

        return found.addCallback(located).addErrback(_unavailable)

    def startDrain(request: Request, params: list[str]) -> tuple[int, Any]:
        assert drain is not None
        if not drain.start():
            return 200, {"draining": True, "already": True, **drain.state()}
        log.info("admin: draining", event="admin-drain")
        return 202, {"draining": True, "already": False, **drain.state()}

    absent = error("No such client is connected.")
    clientsLinks = {
        name: {"operationId": name, "parameters": {"id": "$response.body#/0/id"}}
        for name in ("getClient", "sendToClient", "disconnectClient")
    }
    clientSchema = {"Client": CLIENT_SCHEMA}
    TTL_PARAMETER = {
        "name": "ttl",
        "in": "query",
        "required": False,
        "description": "Seconds the message may wait for a client that is not connected; "
        "without it, a send to an absent client is a 404. A bad ttl (not a positive number) "
        "is a 400.",
        "schema": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
    }
    LOCAL_PARAMETER = {
        "name": "local",
        "in": "query",
        "required": False,
        "description": "With --backplane: 1 lists this node's clients only.",
        "schema": {"type": "string", "enum": ["0", "1"]},
    }
    BACKPLANE_503 = error("With --backplane: Redis or the node holding the client did not answer.")
    return {
        ("GET", "/clients"): Route(
            listClients,
            Doc(
                "listClients",
                "Every connected client; with --backplane, of every node (?local=1: this "
                "node's only).",
                {
                    "200": {
                        **jsonResponse("The clients.", {"type": "array", "items": ref("Client")}),
                        "links": clientsLinks,
                    },
                    "400": error("A local that is neither 0 nor 1."),
                    "503": error("With --backplane: Redis could not say (?local=1 still can)."),
                },
                schemas=clientSchema,
                parameters=[LOCAL_PARAMETER],
            ),
        ),
        ("GET", "/clients/{id}"): Route(
            showClient,
            Doc(
                "getClient",
                "One connected client (of any node, with --backplane).",
                {
                    "200": jsonResponse("The client.", ref("Client")),
                    "404": absent,
                    "503": BACKPLANE_503,
                },
                schemas=clientSchema,
            ),
        ),
        ("POST", "/clients/{id}/messages"): Route(
            sendMessage,
            Doc(
                "sendToClient",
                "Send one message to one client; with ttl, queue it for a client that is away.",
                {
                    "200": jsonResponse("Sent.", simpleObject(id="string", sent="integer")),
                    "202": jsonResponse(
                        "The client is away: queued (and stored, with --queue-dir); "
                        "position 1 is delivered first.",
                        allRequired(
                            {
                                "id": {"type": "string"},
                                "queued": {"type": "boolean", "enum": [True]},
                                "position": {"type": "integer", "minimum": 1},
                            }
                        ),
                    ),
                    "404": error("No such client is connected (and no ttl was given)."),
                    "503": error(
                        "The queue store could not be loaded at start; or, with --backplane, "
                        "Redis or the node holding the client did not answer within a second "
                        "(the message may or may not have been written)."
                    ),
                    "507": error(
                        "Queueing it would go over --queue-max-messages, --queue-max-bytes "
                        "or --queue-total-bytes (the message names which)."
                    ),
                    **SEND_ERRORS,
                    "400": error(
                        "A ttl that is not a positive number, or text that cannot be sent: "
                        "empty, not UTF-8, not encodable, or a newline in line framing."
                    ),
                },
                requestBody=TEXT_BODY,
                parameters=[TTL_PARAMETER],
            ),
            body=True,
        ),
        ("GET", "/queues"): Route(
            listQueues,
            Doc(
                "listQueues",
                "The messages waiting for clients that are away.",
                {
                    "200": jsonResponse(
                        "Each client id with messages waiting.",
                        allRequired(
                            {
                                "queues": {
                                    "type": "array",
                                    "items": allRequired(
                                        {
                                            "id": {"type": "string"},
                                            "messages": {"type": "integer", "minimum": 1},
                                            "bytes": {"type": "integer", "minimum": 0},
                                            "oldestAgeSeconds": {"type": "number", "minimum": 0},
                                        }
                                    ),
                                }
                            }
                        ),
                    )
                },
            ),
        ),
        ("POST", "/clients/{id}/disconnect"): Route(
            disconnect,
            Doc(
                "disconnectClient",
                "Close one client's connection (on any node, with --backplane).",
                {
                    "200": jsonResponse(
                        "Closing.", simpleObject(id="string", disconnected="boolean")
                    ),
                    "404": absent,
                    "503": BACKPLANE_503,
                },
            ),
        ),
        ("POST", "/broadcast"): Route(
            broadcast,
            Doc(
                "broadcast",
                "Send one message to every client.",
                {
                    "200": jsonResponse(
                        "Sent; how many clients got it.",
                        allRequired({"received": {"type": "integer", "minimum": 0}}),
                    ),
                    **SEND_ERRORS,
                },
                requestBody=TEXT_BODY,
            ),
            body=True,
        ),
        **(
            {}
            if drain is None
            else {
                ("POST", "/drain"): Route(
                    startDrain,
                    Doc(
                        "drain",
                        "Stop accepting, report draining on /healthz, close the clients evenly "
                        "over --drain-period, then stop as on SIGTERM.",
                        {
                            "202": jsonResponse("Draining from now on.", ref("Drain")),
                            "200": jsonResponse("Already draining: nothing changed.", ref("Drain")),
                        },
                        schemas={"Drain": DRAIN_SCHEMA},
                    ),
                )
            }
        ),
        ("GET", "/events"): Route(
            EventStream(hub, clock),
            Doc(
                "events",
                "Messages in and out and clients coming and going, as Server-Sent Events "
                "(JSON objects with kind, peer, text, time); it opens with the last 100.",
                {"200": textResponse("An endless event stream.", "text/event-stream")},
                parameters=[
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "The id of the last event read: the stream opens "
                        "with the kept events after it only.",
                        "schema": {"type": "string"},
                    }
                ],
            ),
        ),
    }


def clientRoutes(
    hub: Hub, status: ClientStatus, outgoing: Outgoing
) -> dict[tuple[str, str], Route]:
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

    return {
        ("GET", "/status"): Route(
            showStatus,
            Doc(
                "status",
                "How the connection to the server is doing.",
                {"200": jsonResponse("The status.", ref("Status"))},
                schemas={"Status": STATUS_SCHEMA},
            ),
        ),
        ("POST", "/messages"): Route(
            sendMessage,
            Doc(
                "sendToServer",
                "Send one message to the server.",
                {
                    "200": jsonResponse("Sent.", simpleObject(server="string", sent="integer")),
                    "503": error("Not connected to the server right now."),
                    **SEND_ERRORS,
                },
                requestBody=TEXT_BODY,
            ),
            body=True,
        ),
    }


def _errorResponse(status: int, message: str) -> bytes:
    """
    A whole JSON error response, to write straight to a transport before
    closing it: for connections refused before there is a request to answer.
    """
    body = json.dumps({"error": message}).encode() + b"\n"
    return (
        b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())
        + b"Content-Type: application/json\r\nCache-Control: no-store\r\n"
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        + body
    )


class AdminRequest(Request):
    """
    A request whose body is kept in memory, never in a temporary file, and
    never beyond what its route takes (L{AdminResource.admit}): a chunked
    body is cut off, and answered 413, as soon as it grows past that.
    """

    #: Why the channel refused the request before reading its body; what
    #: L{AdminResource.render} answers.
    refusal: APIError | None = None
    #: The most body bytes the request's route takes.
    bodyLimit = 0

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self.finished:
            return  # refused: the rest of what was read is dropped
        assert self.content is not None
        if self.content.tell() + len(data) > self.bodyLimit:
            assert isinstance(self.channel, AdminChannel)
            self.channel.refuse(_tooLarge(self.bodyLimit))
            return
        self.content.write(data)


class AdminChannel(http.HTTPChannel):
    """
    An HTTP channel that never lets a client make the daemon read or wait
    for more than the API needs:

      - each request is judged on its request line and headers
        (L{AdminResource.admit}) before a byte of its body is read or a
        C{100 Continue} sent; a refused one (401, 413, ...) is answered at
        once with C{Connection: close} and the connection closed;
      - a request's line and headers must arrive within C{headersTimeout}
        seconds of the connection or of the previous response, however
        slowly they trickle in (408, or a quiet close if nothing came);
      - a request line over C{MAX_LENGTH} bytes is answered 414, a header
        line over it 431.
    """

    MAX_LENGTH = 8192
    headersTimeout = 5.0
    site: AdminSite

    _refusing = False
    _headersDeadline: IDelayedCall | None = None
    _headBytes = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channels.add(self)
        self._awaitRequest()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.site.channels.discard(self)
        self._stopDeadline()
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._headersDeadline is not None:
            self._headBytes += len(data)
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._stopDeadline()
        request = self.requests[-1]
        try:
            request.bodyLimit = self.site.resource.admit(
                self._command, self._path, request.requestHeaders, self.length
            )
        except APIError as e:
            self.refuse(e)
        else:
            super().allHeadersReceived()

    def refuse(self, error: APIError) -> None:
        """
        Answer the request being received with C{error} now, and close the
        connection once the answer is written: the rest of its body is
        never read.
        """
        self._refusing = True
        self.persistent = False
        request = self.requests[-1]
        request.refusal = error
        request.content = BytesIO()
        request.setHeader(b"connection", b"close")
        request.requestReceived(self._command, self._path, self._version)

    def allContentReceived(self) -> None:
        if not self._refusing:
            super().allContentReceived()

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refusing:
            super().rawDataReceived(data)

    def requestDone(self, request: http.Request) -> None:
        if self.persistent:
            # Before the next request, which may be waiting in the buffer.
            self._awaitRequest()
        super().requestDone(request)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._stopDeadline()
        self._refusing = True
        if self.requests:
            status, what = 431, "a request header line"
        else:
            status, what = 414, "the request line (the URL)"
        assert self.transport is not None
        self.transport.write(_errorResponse(status, f"{what} is over {self.MAX_LENGTH} bytes"))
        self.loseConnection()

    def _awaitRequest(self) -> None:
        self._headBytes = 0
        self._headersDeadline = self.callLater(self.headersTimeout, self._headersTimedOut)

    def _stopDeadline(self) -> None:
        if self._headersDeadline is not None:
            if self._headersDeadline.active():
                self._headersDeadline.cancel()
            self._headersDeadline = None

    def _headersTimedOut(self) -> None:
        self._headersDeadline = None
        self._refusing = True
        assert self.transport is not None
        if self._headBytes == 0:
            # Nothing asked: an idle keep-alive connection, closed quietly.
            self.loseConnection()
            return
        log.info(
            "admin API: closing {peer}: no complete request within {timeout} s",
            event="admin-request-timeout",
            peer=addressText(self.transport.getPeer()),
            timeout=self.headersTimeout,
        )
        # Abort if the peer does not even read the answer, as the idle
        # timeout does.
        self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.transport.write(
            _errorResponse(
                408, f"the request line and headers did not arrive within {self.headersTimeout:g} s"
            )
        )
        self.loseConnection()


class _Full(Protocol):
    """
    What a connection over C{--admin-max-connections} gets: a 503, at once.
    """

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(
            _errorResponse(
                503,
                "too many admin API connections are open (--admin-max-connections); "
                "try again later",
            )
        )
        self.transport.loseConnection()


class AdminSite(Site):
    """
    The admin API's site: L{AdminChannel}s making L{AdminRequest}s, at most
    C{maxConnections} of them open at once, so that admin clients can never
    take the descriptors the message port needs. Request logging is left to
    the routes, which log what changed.
    """

    protocol = AdminChannel  # type: ignore[assignment]
    #: Seconds a request body may stall before the connection is closed.
    idleTimeout = 60.0

    def __init__(
        self, resource: AdminResource, maxConnections: int, reactor: IReactorTime | None = None
    ) -> None:
        super().__init__(
            resource,
            AdminRequest,
            timeout=self.idleTimeout,
            reactor=reactor,
            parsePOSTFormSubmission=False,
        )
        self.resource: AdminResource = resource
        self.maxConnections = maxConnections
        self.channels: set[AdminChannel] = set()

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:  # type: ignore[override]
        # Site's says it builds Twisted's HTTP/1.1-or-2 wrapper; this one
        # builds an AdminChannel, or a _Full.
        if len(self.channels) >= self.maxConnections:
            log.warn(
                "admin API: refused a connection from {peer}: {count} open already "
                "(--admin-max-connections)",
                event="admin-full",
                peer="?" if addr is None else addressText(addr),
                count=len(self.channels),
            )
            return _Full()
        return super().buildProtocol(addr)

    def acceptableProtocols(self) -> list[bytes]:
        return [b"http/1.1"]  # AdminChannel speaks HTTP/1.1 only

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
    maxConnections: int = 64,
    reloads: ReloadStatus | None = None,
    drain: Drain | None = None,
    backplane: Backplane | None = None,
) -> AdminSite:
    """
    The admin site of a server (C{status} is L{None}) or of a client;
    C{/healthz} tells the last reload's time and result from C{reloads},
    and whether the server's C{drain} is under way, and the state of a
    server's C{backplane}.
    """
    if status is None:
        routes = serverRoutes(hub, outgoing, clock, drain, backplane)
        role = "server"
    else:
        routes = clientRoutes(hub, status, outgoing)
        role = "client"
        dashboard = None
    resource = AdminResource(
        routes,
        metrics,
        role,
        token,
        outgoing.maxMessageSize,
        dashboard,
        reloads,
        drain,
        backplane,
    )
    return AdminSite(resource, maxConnections, clock)
