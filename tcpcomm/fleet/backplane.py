"""
The Redis backplane of a fleet (C{--backplane redis://HOST:PORT/DB}): each
node records its clients in Redis, and nodes send each other messages on
Redis pub/sub channels.

Two connections, each kept up by a L{ClientService} with backoff: one
sends every command and every publish (so what one node publishes reaches
the others in the order it was sent), the other only subscribes, to the
node's own channel and the fleet's. A subscriber that reconnects is
subscribed again, and the publisher registers every local client again,
every time: txredisapi's protocols do neither by themselves. A probe
published through the node's own channel catches a subscription that is
connected but delivers nothing, and reconnects it.

In Redis, under C{--backplane-prefix} (C{P}):

  - C{P nodes}: a sorted set of the live nodes, scored by when each expires
    (milliseconds of Redis' own clock);
  - C{P node:NAME}: a hash of that node's clients, id to a JSON record
    (C{id}, C{node}, C{peer}, C{tlsSubject}, C{since}, C{uid}), which
    expires C{--backplane-ttl} seconds after the node last refreshed it;
  - channels C{P to:NAME} (one node) and C{P fleet} (all of them).

A message on a channel is a JSON header (its C{kind}, the C{from} node,
the C{rid} of a request that wants a reply, and the kind's own fields), a
newline, and a body of bytes. To add a kind, register what a node does
with it (L{Backplane.handle}), and send it with L{Backplane.publish},
L{Backplane.publishFleet} or, for an answer, L{Backplane.request} (one
node's) or L{Backplane.gather} (every other node's)::

    backplane.handle("shout", lambda header, body: {"received": hub.broadcastHere(body)})
    backplane.gather("shout", {}, message)
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import txredisapi  # type: ignore[import-untyped]
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService, Service
from twisted.internet import defer, protocol
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from tcpcomm.fleet.settings import BackplaneUnavailable, RedisAddress

log = Logger()

#: Seconds any one Redis call, or a reply from another node, may take
#: before the call fails: cross-node calls fail fast, never hang.
CALL_TIMEOUT = 1.0
#: Seconds a new connection has to authenticate, select its database and
#: subscribe before it is dropped and tried again.
CONNECT_TIMEOUT = 5.0
#: The cross-node delivery latency histogram's buckets, in seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


# The scripts run atomically in Redis, on its own clock, so that nodes
# whose clocks differ still agree on which nodes are alive.
_NOW = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', p .. 'nodes', '-inf', now)
"""

#: Record one client of this node; a named client held by another node is
#: taken from it (newest wins), and that node is told: the notice's header
#: is ARGV[6], its body the record replaced. Returns that record, or nil.
REGISTER = (
    "local p, node, id, rec, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])"
    + _NOW
    + """
local old = false
if ARGV[7] == '1' then
  for _, other in ipairs(redis.call('ZRANGE', p .. 'nodes', 0, -1)) do
    if other ~= node then
      local held = redis.call('HGET', p .. 'node:' .. other, id)
      if held then
        redis.call('HDEL', p .. 'node:' .. other, id)
        redis.call('PUBLISH', p .. 'to:' .. other, ARGV[6] .. held)
        old = held
      end
    end
  end
end
redis.call('HSET', p .. 'node:' .. node, id, rec)
redis.call('PEXPIRE', p .. 'node:' .. node, ttl)
redis.call('ZADD', p .. 'nodes', now + ttl, node)
return old
"""
)

#: Forget a client of this node, unless a newer connection took its place.
UNREGISTER = """
local key = ARGV[1] .. 'node:' .. ARGV[2]
local held = redis.call('HGET', key, ARGV[3])
if held and cjson.decode(held)['uid'] == ARGV[4] then
  return redis.call('HDEL', key, ARGV[3])
end
return 0
"""

#: Replace this node's whole record with the clients given (ARGV[4..]: id,
#: record, id, record...): after a reconnect, Redis may have lost any of it.
SYNC = (
    "local p, node, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])"
    + _NOW
    + """
local key = p .. 'node:' .. node
redis.call('DEL', key)
for i = 4, #ARGV, 2 do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', key, ttl)
redis.call('ZADD', p .. 'nodes', now + ttl, node)
return #ARGV / 2 - 1
"""
)

#: Keep this node alive; returns how many clients Redis holds for it (to
#: notice a record that lost some), and for the whole fleet.
REFRESH = (
    "local p, node, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])"
    + _NOW
    + """
redis.call('PEXPIRE', p .. 'node:' .. node, ttl)
redis.call('ZADD', p .. 'nodes', now + ttl, node)
local total = 0
for _, other in ipairs(redis.call('ZRANGE', p .. 'nodes', 0, -1)) do
  total = total + redis.call('HLEN', p .. 'node:' .. other)
end
return {redis.call('HLEN', p .. 'node:' .. node), total}
"""
)

#: Every client record of the live nodes.
FLEET = (
    "local p = ARGV[1]"
    + _NOW
    + """
local out = {}
for _, node in ipairs(redis.call('ZRANGE', p .. 'nodes', 0, -1)) do
  for _, rec in ipairs(redis.call('HVALS', p .. 'node:' .. node)) do
    out[#out + 1] = rec
  end
end
return out
"""
)

#: The record of client ARGV[2] on live node ARGV[3] (on any, if empty).
LOCATE = (
    "local p, id, only = ARGV[1], ARGV[2], ARGV[3]"
    + _NOW
    + """
for _, node in ipairs(redis.call('ZRANGE', p .. 'nodes', 0, -1)) do
  if only == '' or only == node then
    local rec = redis.call('HGET', p .. 'node:' .. node, id)
    if rec then return rec end
  end
end
return false
"""
)

#: A node that stops: its record goes at once.
LEAVE = """
redis.call('ZREM', ARGV[1] .. 'nodes', ARGV[2])
return redis.call('DEL', ARGV[1] .. 'node:' .. ARGV[2])
"""

#: The names of the live nodes.
NODES = "local p = ARGV[1]" + _NOW + "return redis.call('ZRANGE', p .. 'nodes', 0, -1)"


def encode(kind: str, sender: str, fields: dict[str, Any], body: bytes = b"") -> bytes:
    """
    One message on a channel: its JSON header, a newline, its body.
    """
    return json.dumps({**fields, "kind": kind, "from": sender}).encode() + b"\n" + body


def decode(message: bytes) -> tuple[dict[str, Any], bytes]:
    """
    The header and body of a message that L{encode} made.

    @raise ValueError: if it is not one.
    """
    head, _, body = message.partition(b"\n")
    header = json.loads(head)
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise ValueError("no kind")
    return header, body


class Latency:
    """
    A histogram of cross-node delivery latencies (request to confirmed
    write), kept as Prometheus keeps one: cumulative counts per bucket.
    """

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.sum += seconds
        for i, bound in enumerate(self.buckets):
            if seconds <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    def cumulative(self) -> Iterator[tuple[str, int]]:
        total = 0
        for bound, count in zip((*self.buckets, math.inf), self.counts, strict=True):
            total += count
            yield ("+Inf" if bound == math.inf else repr(bound)), total


class _Gathering:
    """
    The replies to one fleet-wide request (L{Backplane.gather}), by node,
    and the nodes alive when it was sent, which it waits for.
    """

    def __init__(self, node: str) -> None:
        self.node = node
        self.expected: list[str] | None = None
        self.replies: dict[str, dict[str, Any]] = {}
        self.complete: Callable[[], None] = lambda: None

    def expect(self, names: list[str]) -> None:
        self.expected = [n for n in names if n != self.node]

    def add(self, node: str, fields: dict[str, Any]) -> None:
        if node != self.node:
            self.replies[node] = fields
            self.check()

    def missing(self) -> list[str]:
        return [n for n in self.expected or () if n not in self.replies]

    def check(self) -> None:
        if self.expected is not None and not self.missing():
            self.complete()


class _Factory(protocol.Factory):
    """
    What txredisapi's protocols expect of their factory, for connections
    a L{ClientService} makes: it, not the factory, reconnects.
    """

    noisy = False
    isLazy = False

    def __init__(self, protocolClass: type, address: RedisAddress, backplane: Backplane) -> None:
        self.protocolClass = protocolClass
        self.address = address
        self.backplane = backplane

    def buildProtocol(self, addr: object) -> Any:
        a = self.address
        p = self.protocolClass(
            None,  # no charset: replies are bytes, as messages are
            password=a.password,
            dbid=a.db or None,
            convertNumbers=False,
            username=a.username,
        )
        p.factory = self
        return p

    def stopTrying(self) -> None:
        # txredisapi calls this when AUTH or SELECT fails; the ClientService
        # tries again with backoff, and /healthz says why.
        pass

    def connectionError(self, why: str) -> None:
        self.backplane.trouble(why)


class _Publisher(txredisapi.RedisProtocol):
    def connectionLost(self, why: Failure) -> None:
        super().connectionLost(why)
        self.factory.backplane.publisherLost(self, why)


class _Subscriber(txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern: object, channel: bytes, message: bytes) -> None:
        self.factory.backplane.received(message)

    def connectionLost(self, why: Failure) -> None:
        super().connectionLost(why)
        self.factory.backplane.subscriberLost(self, why)


#: What a node does with one kind of message: given its header and body,
#: the reply's fields (or a Deferred of them), when the sender asked for one.
KindHandler = Callable[[dict[str, Any], bytes], Any]


class Backplane:
    """
    One node's side of the backplane: its two Redis connections, its
    clients' records, and the messages it sends and answers.

    @ivar up: Whether both connections are ready and the last probe came
        back through the subscription.
    @ivar reason: Why not, for C{/healthz}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        address: RedisAddress,
        node: str,
        prefix: str = "tcpcomm:",
        ttl: float = 30.0,
        named: bool = True,
        callTimeout: float = CALL_TIMEOUT,
    ) -> None:
        self.clock = clock
        self.address = address
        self.node = node
        self.prefix = prefix
        self.ttl = ttl
        #: Whether client ids are names (C{--client-id hello} or C{tls}), which
        #: identify one client fleet-wide; addresses are only a node's own.
        self.named = named
        self.callTimeout = callTimeout
        # When Redis last answered a call: a call that times out while
        # others are answered only waited in line.
        self._lastAnswer = float("-inf")
        self.ownChannel = f"{prefix}to:{node}".encode()
        self.fleetChannel = f"{prefix}fleet".encode()
        self.up = False
        self.reason = "not connected to Redis yet"
        self.publisher: Any = None
        self.subscriber: Any = None
        self.subscribed = False
        #: Whether this node is stopping (L{leave}): connections lost then are
        #: not trouble.
        self.leaving = False
        self._handlers: dict[str, KindHandler] = {}
        self._pending: dict[int, Deferred[dict[str, Any]]] = {}
        #: The replies gathered so far for each fleet-wide request (L{gather}).
        self._gathering: dict[int, _Gathering] = {}
        self._requests = 0
        self._probe: tuple[int, Any] | None = None
        #: Every local client's record, by id: what is registered again
        #: after a reconnect.
        self.records: dict[str, dict[str, Any]] = {}
        self._uids = 0
        self.messagesIn = 0
        self.messagesOut = 0
        self.fleetClients = 0
        self.latency = Latency()
        self.handle("reply", self._reply)
        self.handle("probe", self._probed)

    # Messages.

    def handle(self, kind: str, handler: KindHandler) -> None:
        """
        Do C{handler(header, body)} with every message of C{kind} this node
        receives; if its sender asked for a reply, what it returns (fields,
        or a Deferred of them) is sent back.
        """
        self._handlers[kind] = handler

    def publish(
        self, node: str, kind: str, fields: dict[str, Any], body: bytes = b""
    ) -> Deferred[int]:
        """
        Send a message to node C{node}; fires with how many subscribers got
        it (0: the node is not listening).
        """
        return self._publish(f"{self.prefix}to:{node}".encode(), kind, fields, body)

    def publishFleet(self, kind: str, fields: dict[str, Any], body: bytes = b"") -> Deferred[int]:
        """
        Send a message to every node, this one too.
        """
        return self._publish(self.fleetChannel, kind, fields, body)

    def _publish(
        self, channel: bytes, kind: str, fields: dict[str, Any], body: bytes
    ) -> Deferred[int]:
        d = self.call("PUBLISH", channel, encode(kind, self.node, fields, body))
        if kind not in ("reply", "probe"):
            self.messagesOut += 1
        return d

    def request(
        self,
        node: str,
        kind: str,
        fields: dict[str, Any],
        body: bytes = b"",
        timeout: float | None = None,
    ) -> Deferred[dict[str, Any]]:
        """
        Send a message to C{node} and wait for its reply's fields, at most
        C{timeout} seconds (L{CALL_TIMEOUT}): it fails with
        L{BackplaneUnavailable} when Redis or the node could not say.
        """
        self._requests += 1
        rid = self._requests
        waiting: Deferred[dict[str, Any]] = Deferred()
        self._pending[rid] = waiting
        started = self.clock.seconds()

        def unheard(failure: Failure) -> Failure:
            if failure.check(defer.TimeoutError):
                return Failure(
                    BackplaneUnavailable(f"node {node!r} did not answer within {timeout:g} s")
                )
            return failure

        def done(result: object) -> object:
            self._pending.pop(rid, None)
            if not isinstance(result, Failure):
                self.latency.observe(self.clock.seconds() - started)
            return result

        timeout = self.callTimeout if timeout is None else timeout
        waiting.addTimeout(timeout, self.clock)
        waiting.addErrback(unheard).addBoth(done)

        def sent(receivers: int) -> None:
            if receivers == 0 and not waiting.called:
                waiting.errback(BackplaneUnavailable(f"node {node!r} is not listening"))

        def failed(failure: Failure) -> None:
            if not waiting.called:
                waiting.errback(failure)

        self.publish(node, kind, {**fields, "rid": rid}, body).addCallbacks(sent, failed)
        return waiting

    def gather(
        self,
        kind: str,
        fields: dict[str, Any],
        body: bytes = b"",
        timeout: float | None = None,
    ) -> Deferred[tuple[dict[str, dict[str, Any]], list[str]]]:
        """
        Send a message to every node (this one ignores it, and answers for
        itself), and gather the others' replies for at most C{timeout}
        seconds (L{CALL_TIMEOUT}), or until every node alive when it was
        sent has answered: fires with each reply's fields by node, and the
        names of the live nodes that did not answer; fails with
        L{BackplaneUnavailable} when Redis could not say.
        """
        timeout = self.callTimeout if timeout is None else timeout
        self._requests += 1
        rid = self._requests
        gathering = _Gathering(self.node)
        self._gathering[rid] = gathering
        done: Deferred[tuple[dict[str, dict[str, Any]], list[str]]] = Deferred()

        def finish(failure: Failure | None = None) -> None:
            self._gathering.pop(rid, None)
            if timer.active():
                timer.cancel()
            if done.called:
                return
            if failure is not None:
                done.errback(failure)
            else:
                done.callback((gathering.replies, gathering.missing()))

        timer = self.clock.callLater(timeout, finish)
        gathering.complete = finish

        def listed(names: list[str]) -> Deferred[int]:
            gathering.expect(names)
            return self.publishFleet(kind, {**fields, "rid": rid}, body)

        def sent(receivers: int) -> None:
            gathering.check()

        self.nodes().addCallback(listed).addCallbacks(sent, finish)
        return done

    def received(self, message: bytes) -> None:
        """
        A message arrived on one of this node's channels.
        """
        try:
            header, body = decode(message)
        except ValueError:
            log.warn(
                "backplane: ignored a message that is not one: {message!r}",
                event="backplane-bad-message",
                message=message[:200],
            )
            return
        kind = header["kind"]
        if kind not in ("reply", "probe") and header.get("from") != self.node:
            # Not its own, back from the fleet channel: those are not cross-node.
            self.messagesIn += 1
        handler = self._handlers.get(kind)
        if handler is None:
            log.warn(
                "backplane: no handler for {kind!r} messages (from {sender})",
                event="backplane-unknown-kind",
                kind=kind,
                sender=header.get("from"),
            )
            return
        result = maybeDeferred(handler, header, body)
        rid, sender = header.get("rid"), header.get("from")
        if rid is not None and isinstance(sender, str):
            # A handler that returns None sends no reply (as a node does to
            # its own fleet-wide requests).
            result.addCallback(
                lambda fields: (
                    None
                    if fields is None
                    else self.publish(sender, "reply", {"to": rid, "result": fields})
                )
            )
        result.addErrback(
            lambda f: log.failure(
                "backplane: handling a {kind!r} message failed",
                f,
                event="backplane-handler-error",
                kind=kind,
            )
        )

    def _reply(self, header: dict[str, Any], body: bytes) -> None:
        gathering = self._gathering.get(header.get("to", -1))
        if gathering is not None:
            gathering.add(str(header.get("from")), header.get("result") or {})
            return
        waiting = self._pending.get(header.get("to", -1))
        if waiting is not None and not waiting.called:
            waiting.callback(header.get("result") or {})

    # Redis calls.

    def call(self, *command: Any) -> Deferred[Any]:
        """
        Run one Redis command on the publishing connection, within
        C{callTimeout} seconds, or fail with L{BackplaneUnavailable}.
        """
        publisher = self.publisher
        if publisher is None:
            return fail(BackplaneUnavailable(self.reason))
        try:
            d: Deferred[Any] = publisher.execute_command(*command)
        except Exception as e:
            return fail(BackplaneUnavailable(f"Redis: {e}"))

        def answered(result: object) -> object:
            self._lastAnswer = self.clock.seconds()
            return result

        def failed(failure: Failure) -> Failure:
            if failure.check(defer.TimeoutError):
                reason = f"Redis did not answer within {self.callTimeout:g} s"
                if self.clock.seconds() - self._lastAnswer > self.callTimeout:
                    self.trouble(reason)
                # Else Redis answered other calls meanwhile: this one waited
                # behind them (a burst of connections registering), which
                # fails it, but is no trouble with Redis.
                return Failure(BackplaneUnavailable(reason))
            if failure.check(txredisapi.RedisError):
                # Lost connections, and errors Redis answers (an ACL that
                # forbids EVAL, a read-only replica, out of memory).
                return Failure(BackplaneUnavailable(f"Redis: {failure.getErrorMessage()}"))
            return failure

        return d.addTimeout(self.callTimeout, self.clock).addCallbacks(answered, failed)

    def script(self, source: str, *args: Any) -> Deferred[Any]:
        return self.call("EVAL", source, 0, self.prefix, *args)

    # The registry.

    def record(self, clientId: str, peer: str, tlsSubject: str | None, since: float) -> str:
        """
        A local client identified: record it in Redis (taking its name from
        another node, if it is named); returns its uid, which tells this
        connection from a later one with the same id.
        """
        self._uids += 1
        uid = f"{self.node}#{self._uids}"
        record = {
            "id": clientId,
            "node": self.node,
            "peer": peer,
            "tlsSubject": tlsSubject,
            "since": since,
            "uid": uid,
        }
        self.records[clientId] = record
        notice = encode("replaced", self.node, {"id": clientId, "by": record})
        self.script(
            REGISTER,
            self.node,
            clientId,
            json.dumps(record),
            int(self.ttl * 1000),
            notice,
            "1" if self.named else "0",
        ).addErrback(self._registryFailed, "register", clientId)
        return uid

    def forget(self, clientId: str, uid: str) -> None:
        """
        The local client C{clientId} of connection C{uid} is gone.
        """
        held = self.records.get(clientId)
        if held is None or held["uid"] != uid:
            return
        del self.records[clientId]
        self.script(UNREGISTER, self.node, clientId, uid).addErrback(
            self._registryFailed, "unregister", clientId
        )

    def _registryFailed(self, failure: Failure, what: str, clientId: str) -> None:
        # Not lost: the next refresh notices and registers everyone again.
        failure.trap(BackplaneUnavailable)
        if not self.up:
            return  # said once already, by trouble(): not once per client
        log.info(
            "backplane: could not {what} {peer}: {reason}",
            event="backplane-registry-error",
            what=what,
            peer=clientId,
            reason=failure.getErrorMessage(),
        )

    def sync(self) -> Deferred[Any]:
        """
        Register every local client again, replacing what Redis holds for
        this node.
        """
        args: list[str] = []
        for clientId, record in self.records.items():
            args += [clientId, json.dumps(record)]
        return self.script(SYNC, self.node, int(self.ttl * 1000), *args)

    def refresh(self) -> Deferred[None]:
        """
        Keep this node's record alive, and register everyone again if Redis
        lost any of it (a restart without persistence, an expiry during an
        outage, a takeover answered late).
        """

        def counted(counts: list[int]) -> Deferred[Any] | None:
            mine, total = counts
            self.fleetClients = total
            if mine != len(self.records):
                return self.sync()
            return None

        def failed(failure: Failure) -> None:
            failure.trap(BackplaneUnavailable)

        return (
            self.script(REFRESH, self.node, int(self.ttl * 1000))
            .addCallback(counted)
            .addErrback(failed)
        )

    def leave(self) -> Deferred[None]:
        """
        This node is stopping: take its record out of Redis now, so that
        the fleet view does not show its clients until the TTL; within a
        second, or not at all (then they expire).
        """
        self.records.clear()  # those that end from now on are not unregistered one by one
        self.leaving = True

        def failed(failure: Failure) -> None:
            failure.trap(BackplaneUnavailable)

        return self.script(LEAVE, self.node).addCallbacks(lambda _: None, failed)

    def fleet(self) -> Deferred[list[dict[str, Any]]]:
        """
        The records of every client of every live node.
        """
        return self.script(FLEET).addCallback(lambda records: [json.loads(r) for r in records])

    def locate(self, clientId: str, node: str = "") -> Deferred[dict[str, Any] | None]:
        """
        The record of client C{clientId} (on C{node} only, if given), or
        L{None} if no live node holds it.
        """
        return self.script(LOCATE, clientId, node).addCallback(
            lambda found: None if found is None else json.loads(found)
        )

    def nodes(self) -> Deferred[list[str]]:
        """
        The names of the live nodes.
        """
        return self.script(NODES).addCallback(lambda names: [n.decode() for n in names])

    # Connections.

    def trouble(self, reason: str) -> None:
        """
        Something went wrong with Redis: say so on C{/healthz} until the
        next probe comes back.
        """
        if self.leaving:
            # Its own stop closes the connections: nothing has gone wrong.
            self.up, self.reason = False, "stopping"
            return
        if self.up or reason != self.reason:
            log.warn(
                "backplane degraded: {reason}",
                event="backplane-degraded",
                reason=reason,
                redis=str(self.address),
            )
        self.up = False
        self.reason = reason

    def _recovered(self) -> None:
        if not self.up:
            log.info(
                "backplane up: {redis} as node {node}",
                event="backplane-up",
                redis=str(self.address),
                node=self.node,
            )
        self.up = True
        self.reason = ""

    def publisherReady(self, publisher: Any) -> Deferred[Any]:
        self.publisher = publisher
        # Redis may have lost this node's record while it was away.
        return self.sync().addCallback(lambda _: self.probe())

    def publisherLost(self, publisher: Any, why: Failure) -> None:
        if self.publisher is publisher:
            self.publisher = None
            self.trouble(f"lost the connection to Redis: {why.getErrorMessage()}")

    def subscriberReady(self, subscriber: Any) -> Deferred[Any]:
        self.subscriber = subscriber
        d: Deferred[Any] = subscriber.subscribe([self.ownChannel, self.fleetChannel])
        d.addTimeout(CONNECT_TIMEOUT, self.clock)

        def subscribed(_: object) -> None:
            self.subscribed = True
            log.info(
                "backplane: subscribed to {channels}",
                event="backplane-subscribed",
                channels=[self.ownChannel.decode(), self.fleetChannel.decode()],
            )
            self.probe()

        return d.addCallback(subscribed)

    def subscriberLost(self, subscriber: Any, why: Failure) -> None:
        if self.subscriber is subscriber:
            self.subscriber = None
            self.subscribed = False
            self.trouble(f"lost the subscription: {why.getErrorMessage()}")

    def probe(self, timeout: float = 3.0) -> None:
        """
        Publish a probe through this node's own channel: if it does not
        come back within C{timeout} seconds while the subscription seems
        connected, that subscription is dropped and made again.
        """
        if self.publisher is None or not self.subscribed:
            return
        if self._probe is not None and self._probe[1].active():
            return  # one at a time
        self._requests += 1
        nonce = self._requests

        def lost() -> None:
            self._probe = None
            self.trouble(f"a probe did not come back through the subscription within {timeout:g} s")
            subscriber = self.subscriber
            if subscriber is not None and subscriber.transport is not None:
                subscriber.transport.abortConnection()

        self._probe = (nonce, self.clock.callLater(timeout, lost))
        self.publish(self.node, "probe", {"nonce": nonce}).addErrback(
            lambda f: f.trap(BackplaneUnavailable)
        )

    def _probed(self, header: dict[str, Any], body: bytes) -> None:
        probe = self._probe
        if (
            probe is not None
            and header.get("nonce") == probe[0]
            and header.get("from") == self.node
        ):
            if probe[1].active():
                probe[1].cancel()
            self._probe = None
            if self.publisher is not None and self.subscribed:
                self._recovered()

    def state(self) -> dict[str, Any]:
        """
        What C{/healthz} says of the backplane.
        """
        state = {"state": "up" if self.up else "degraded", "redis": str(self.address)}
        if not self.up:
            state["reason"] = self.reason
        return {**state, "node": self.node}

    def endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        a = self.address
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            reactor, a.host, a.port, timeout=CONNECT_TIMEOUT
        )
        if a.tls:
            endpoint = wrapClientTLS(optionsForClientTLS(a.host), endpoint)
        return endpoint


class _Ticks(Service):
    """
    The backplane's timers: the refresh (a third of the TTL) and the probe;
    and, on stopping, the node leaving the fleet.
    """

    def __init__(self, backplane: Backplane, probeInterval: float) -> None:
        self.backplane = backplane
        self._calls = [
            (LoopingCall(backplane.refresh), backplane.ttl / 3),
            (LoopingCall(backplane.probe), probeInterval),
        ]
        for call, _ in self._calls:
            call.clock = backplane.clock

    def startService(self) -> None:
        super().startService()
        for call, interval in self._calls:
            call.start(interval, now=False)

    def stopService(self) -> Deferred[None]:
        for call, _ in self._calls:
            if call.running:
                call.stop()
        super().stopService()
        # Stopped before the connections (a MultiService stops its last
        # child first), so the publisher still carries this.
        return self.backplane.leave()


class _Readiness:
    """
    One Redis connection's way to ready: a L{ClientService}
    C{prepareConnection} that returns at once, then waits (bounded) for the
    connection to authenticate and select its database, and does C{ready}
    (subscribe, register); a connection that fails on the way is dropped.

    Not a Deferred handed to C{ClientService}: Twisted 26.10's loses its
    state machine (C{NoTransition}) when a connection is lost while that
    Deferred is pending, as after a wrong password. And since
    C{ClientService} forgets its failed attempts on every connection made,
    the retry policy counts those never ready itself, as txredisapi's own
    pool slots do, so a wrong password backs off instead of spinning.
    """

    def __init__(
        self,
        ready: Callable[[Any], Deferred[Any]],
        clock: IReactorTime,
        jitter: Callable[[], float] = lambda: random.random() * 0.2,
    ) -> None:
        self._ready = ready
        self._clock = clock
        # Up to 0.2 s of jitter, so that a fleet does not reconnect in step.
        self._policy = backoffPolicy(initialDelay=0.2, maxDelay=5.0, jitter=jitter)
        self.rejected = 0

    def retryDelay(self, attempt: int) -> float:
        return float(self._policy(max(attempt, self.rejected)))

    def prepare(self, p: Any) -> None:
        self.rejected += 1
        d: Deferred[Any] = p.whenConnected()
        d.addTimeout(CONNECT_TIMEOUT, self._clock)
        d.addCallback(self._ready)

        def usable(_: object) -> None:
            self.rejected = 0

        def failed(failure: Failure) -> None:
            if p.connected and p.transport is not None:
                log.info(
                    "backplane: dropping a Redis connection not ready: {reason}",
                    event="backplane-not-ready",
                    reason=failure.getErrorMessage(),
                )
                p.transport.abortConnection()

        d.addCallbacks(usable, failed)


def backplaneService(
    backplane: Backplane, reactor: Any, probeInterval: float = 5.0
) -> MultiService:
    """
    The services that keep C{backplane}'s connections and timers going.
    """
    top = MultiService()
    for protocolClass, ready in [
        (_Publisher, backplane.publisherReady),
        (_Subscriber, backplane.subscriberReady),
    ]:
        readiness = _Readiness(ready, reactor)
        ClientService(
            backplane.endpoint(reactor),
            _Factory(protocolClass, backplane.address, backplane),
            retryPolicy=readiness.retryDelay,
            clock=reactor,
            prepareConnection=readiness.prepare,
        ).setServiceParent(top)
    _Ticks(backplane, probeInterval).setServiceParent(top)
    return top
