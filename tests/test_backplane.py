"""
Tests for the fleet's pieces that need no Redis: C{--backplane} and its
options, the backplane's messages, timeouts, probe and registry on a
L{Clock} with a stand-in for the Redis connections, and a node's answers
to the others.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.fleet.backplane import (
    FLEET,
    REFRESH,
    REGISTER,
    SYNC,
    Backplane,
    Latency,
    _Readiness,
    decode,
    encode,
)
from tcpcomm.fleet.node import FleetNode
from tcpcomm.fleet.settings import BackplaneUnavailable, RedisAddress, parseRedisURL
from tcpcomm.options import Options

from .processes import scratch
from .support import connect, hubOf


def server(*args: str) -> Any:
    options = Options()
    options.parseOptions(["server", *args])
    return options.subOptions


class RedisURLTests(SynchronousTestCase):
    """
    C{--backplane}'s URLs.
    """

    def test_full(self) -> None:
        """A URL gives host, port, database, TLS and an ACL user and password; its text shows no password."""
        address = parseRedisURL("rediss://fleet:s%40cret@redis.example:6380/3")
        self.assertEqual(address, RedisAddress("redis.example", 6380, 3, True, "fleet", "s@cret"))
        self.assertEqual(str(address), "rediss://fleet@redis.example:6380/3")

    def test_defaults(self) -> None:
        """Without a port or database, they are 6379 and 0."""
        self.assertEqual(parseRedisURL("redis://[::1]"), RedisAddress("::1", 6379, 0, False))

    def test_refused(self) -> None:
        """What is not a Redis URL is refused, saying why."""
        for text, reason in [
            ("http://h:1/0", "redis://"),
            ("redis://:1/0", "names a host"),
            ("redis://h:1/x", "must be a number"),
            ("redis://h:99999/0", "not a Redis URL"),
            ("redis://h:1/0?db=2", "no ?query"),
        ]:
            with self.assertRaises(ValueError) as e:
                parseRedisURL(text)
            self.assertIn(reason, str(e.exception), text)


class BackplaneOptionsTests(SynchronousTestCase):
    """
    The server's fleet options: each bad value named with its option.
    """

    def test_defaults(self) -> None:
        """Without --backplane there is no fleet; with it, the prefix is tcpcomm:, the TTL 30 s and the node is named by host and port."""
        sub = server()
        self.assertIsNone(sub["backplane-address"])
        sub = server("--backplane", "redis://127.0.0.1:6379/0", "-p", "9600")
        self.assertEqual(sub["backplane-address"], RedisAddress("127.0.0.1", 6379, 0, False))
        self.assertEqual(sub["backplane-prefix"], "tcpcomm:")
        self.assertEqual(sub["backplane-ttl"], 30.0)
        self.assertEqual(sub["node-name"], f"{socket.gethostname()}:9600")

    def test_nodeNameFromListen(self) -> None:
        """With --listen, the default node name takes the first endpoint's port."""
        sub = server("--backplane", "redis://h/0", "--listen", "tcp:9601:interface=127.0.0.1")
        self.assertEqual(sub["node-name"], f"{socket.gethostname()}:9601")

    def test_passwordFile(self) -> None:
        """--backplane-password-file's first line is the password, whatever the URL said."""
        path = os.path.join(scratch(self), "password")
        with open(path, "w") as f:
            f.write("from-file\nignored\n")
        sub = server("--backplane", "redis://u:x@h/0", "--backplane-password-file", path)
        self.assertEqual(sub["backplane-address"].password, "from-file")
        self.assertEqual(sub["backplane-address"].username, "u")

    def test_refused(self) -> None:
        """A bad value, or an option that needs --backplane without it, is refused naming the option and the value."""
        missing = os.path.join(scratch(self), "missing")
        for args, words in [
            (["--backplane", "http://h/0"], ["--backplane", "'http://h/0'"]),
            (["--backplane", "redis://h/0", "--backplane-ttl", "0"], ["--backplane-ttl", "0"]),
            (["--backplane", "redis://h/0", "--node-name", "a/b"], ["--node-name", "'a/b'"]),
            (["--backplane", "redis://h/0", "--backplane-prefix", "a b"], ["--backplane-prefix"]),
            (
                ["--backplane", "redis://h/0", "--backplane-password-file", missing],
                ["--backplane-password-file", repr(missing)],
            ),
            (["--node-name", "a"], ["--node-name", "'a'", "needs --backplane"]),
        ]:
            with self.assertRaises(UsageError) as e:
                server(*args)
            for word in words:
                self.assertIn(word, str(e.exception), args)

    def test_queueDirRefused(self) -> None:
        """--queue-dir with --backplane is refused at start, naming both."""
        folder = scratch(self)
        with self.assertRaises(UsageError) as e:
            server("--backplane", "redis://h/0", "--queue-dir", folder)
        self.assertIn(
            f"--queue-dir {folder!r} cannot be combined with --backplane", str(e.exception)
        )


class FakeRedis:
    """
    A stand-in for a txredisapi connection: each command is recorded, and
    answered by the test (or never).
    """

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []
        self.answers: list[Deferred[Any]] = []
        self.transport = StringTransport()
        self.subscriptions: list[list[bytes]] = []

    def execute_command(self, *command: Any) -> Deferred[Any]:
        self.commands.append(command)
        d: Deferred[Any] = Deferred()
        self.answers.append(d)
        return d

    def subscribe(self, channels: list[bytes]) -> Deferred[Any]:
        self.subscriptions.append(channels)
        return succeed(None)

    def settle(self) -> None:
        """
        Answer what was asked so far (registrations, the first probe), and
        let the first probe come back: the backplane is up.
        """
        for answer in self.answers:
            if not answer.called:
                answer.callback(1)
        self.probes = [c[2] for c in self.commands if c[0] == "PUBLISH"]
        del self.commands[:], self.answers[:]

    def published(self) -> list[tuple[bytes, dict[str, Any], bytes]]:
        return [(c[1], *decode(c[2])) for c in self.commands if c[0] == "PUBLISH"]


def makeBackplane(named: bool = True) -> tuple[Backplane, Clock, FakeRedis, FakeRedis]:
    clock = Clock()
    backplane = Backplane(clock, RedisAddress("h", 1, 0, False), "a", "p:", 3.0, named)
    publisher, subscriber = FakeRedis(), FakeRedis()
    backplane.publisherReady(publisher)
    backplane.subscriberReady(subscriber)
    publisher.settle()
    for probe in publisher.probes:
        backplane.received(probe)
    return backplane, clock, publisher, subscriber


class BackplaneTests(SynchronousTestCase):
    """
    The backplane on a clock, its Redis connections stood in for.
    """

    def test_message(self) -> None:
        """A message is a JSON header with its kind and sender, a newline, and its body as bytes."""
        header, body = decode(encode("deliver", "a", {"id": "x"}, b"two\nlines"))
        self.assertEqual(
            (header, body), ({"id": "x", "kind": "deliver", "from": "a"}, b"two\nlines")
        )
        with self.assertRaises(ValueError):
            decode(b'{"no": "kind"}\n')

    def test_notConnected(self) -> None:
        """Without a connection to Redis, a call fails at once, saying why."""
        backplane = Backplane(Clock(), RedisAddress("h", 1, 0, False), "a")
        failure = self.failureResultOf(backplane.call("PING"), BackplaneUnavailable)
        self.assertEqual(failure.getErrorMessage(), "not connected to Redis yet")

    def test_callTimeout(self) -> None:
        """A Redis call not answered within a second fails, and the backplane is degraded."""
        backplane, clock, publisher, _ = makeBackplane()
        d = backplane.call("PING")
        clock.advance(0.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        self.failureResultOf(d, BackplaneUnavailable)
        self.assertEqual(backplane.state()["state"], "degraded")
        self.assertIn("did not answer within 1 s", backplane.state()["reason"])

    def test_callWaitingBehindOthers(self) -> None:
        """A call that times out while Redis answered others within the second (a burst of
        registrations ahead of it) fails, but the backplane stays up."""
        backplane, clock, publisher, _ = makeBackplane()
        behind = backplane.call("PING")
        clock.advance(0.5)
        ahead = backplane.call("PING")
        publisher.answers[-1].callback(b"PONG")
        self.successResultOf(ahead)
        clock.advance(0.6)
        self.failureResultOf(behind, BackplaneUnavailable)
        self.assertEqual(backplane.state()["state"], "up")
        clock.advance(2)
        silent = backplane.call("PING")
        clock.advance(1.1)
        self.failureResultOf(silent, BackplaneUnavailable)
        self.assertEqual(backplane.state()["state"], "degraded")

    def test_redisRefuses(self) -> None:
        """An error Redis answers (an ACL that forbids the command) is a backplane that could not say, not an internal error."""
        import txredisapi  # type: ignore[import-untyped]

        backplane, _, publisher, _ = makeBackplane()
        d = backplane.call("EVAL", "return 1", 0)
        publisher.answers[-1].errback(txredisapi.ResponseError("NOPERM no permission"))
        failure = self.failureResultOf(d, BackplaneUnavailable)
        self.assertEqual(failure.getErrorMessage(), "Redis: NOPERM no permission")

    def test_subscribesOnEveryConnect(self) -> None:
        """Each new subscribing connection subscribes to the node's own channel and the fleet's: a reconnect never leaves it deaf."""
        backplane, _, _, first = makeBackplane()
        second = FakeRedis()
        backplane.subscriberLost(first, Failure(Exception("gone")))
        self.assertFalse(backplane.subscribed)
        backplane.subscriberReady(second)
        self.assertEqual(first.subscriptions, [[b"p:to:a", b"p:fleet"]])
        self.assertEqual(second.subscriptions, [[b"p:to:a", b"p:fleet"]])
        self.assertTrue(backplane.subscribed)

    def test_registersAgainOnConnect(self) -> None:
        """A new publishing connection registers every local client again (Redis may have lost them)."""
        backplane, _, first, _ = makeBackplane()
        backplane.record("x", "127.0.0.1:1", None, 5.0)
        second = FakeRedis()
        backplane.publisherLost(first, Failure(Exception("gone")))
        backplane.publisherReady(second)
        command = second.commands[0]
        self.assertEqual(command[:5], ("EVAL", SYNC, 0, "p:", "a"))
        self.assertEqual(command[6], "x")
        self.assertEqual(json.loads(command[7])["peer"], "127.0.0.1:1")

    def test_refreshResyncs(self) -> None:
        """A refresh that finds fewer of this node's clients in Redis than it holds registers them all again."""
        backplane, _, publisher, _ = makeBackplane()
        backplane.record("x", "127.0.0.1:1", None, 5.0)
        del publisher.commands[:]
        backplane.refresh()
        self.assertEqual(publisher.commands[-1][1], REFRESH)
        publisher.answers[-1].callback([0, 4])
        self.assertEqual(backplane.fleetClients, 4)
        self.assertEqual(publisher.commands[-1][1], SYNC)

    def test_register(self) -> None:
        """A named client is registered with takeover; an address is not taken from other nodes."""
        for named, flag in [(True, "1"), (False, "0")]:
            backplane, _, publisher, _ = makeBackplane(named)
            uid = backplane.record("x", "127.0.0.1:1", None, 5.0)
            command = publisher.commands[-1]
            self.assertEqual(command[1], REGISTER)
            self.assertEqual(json.loads(command[6])["uid"], uid)
            self.assertEqual(command[-1], flag)

    def test_request(self) -> None:
        """A request publishes to the node's channel, and fires with the fields of its reply; the latency is counted."""
        backplane, clock, publisher, _ = makeBackplane()
        d = backplane.request("b", "deliver", {"id": "x"}, b"hi")
        channel, header, body = publisher.published()[-1]
        self.assertEqual(
            (channel, header["kind"], header["id"], body), (b"p:to:b", "deliver", "x", b"hi")
        )
        publisher.answers[-1].callback(1)
        clock.advance(0.02)
        backplane.received(encode("reply", "b", {"to": header["rid"], "result": {"sent": 1}}))
        self.assertEqual(self.successResultOf(d), {"sent": 1})
        self.assertEqual(dict(backplane.latency.cumulative())["0.025"], 1)

    def test_requestUnanswered(self) -> None:
        """A request the node does not answer within a second fails; one no node listens to fails at once."""
        backplane, clock, publisher, _ = makeBackplane()
        d = backplane.request("b", "deliver", {"id": "x"})
        publisher.answers[-1].callback(1)
        clock.advance(1.1)
        failure = self.failureResultOf(d, BackplaneUnavailable)
        self.assertIn("node 'b' did not answer within 1 s", failure.getErrorMessage())
        d = backplane.request("gone", "deliver", {"id": "x"})
        publisher.answers[-1].callback(0)
        self.assertIn(
            "not listening", self.failureResultOf(d, BackplaneUnavailable).getErrorMessage()
        )

    def test_handlerReplies(self) -> None:
        """A message of a kind a handler was added for is handed to it, and what it returns is the reply to its sender."""
        backplane, _, publisher, _ = makeBackplane()
        backplane.handle("double", lambda header, body: {"twice": body.decode() * 2})
        backplane.handle("note", lambda header, body: None)
        backplane.received(encode("note", "c", {}, b"x"))
        self.assertEqual(publisher.published(), [])
        backplane.received(encode("double", "c", {"rid": 7}, b"ab"))
        channel, header, _ = publisher.published()[-1]
        self.assertEqual(
            (channel, header["to"], header["result"]), (b"p:to:c", 7, {"twice": "abab"})
        )
        self.assertEqual(backplane.messagesIn, 2)  # replies and probes are not counted

    def test_probe(self) -> None:
        """A probe that comes back through the subscription keeps the backplane up; one that does not drops the subscription to make it again."""
        backplane, clock, publisher, subscriber = makeBackplane()
        self.assertTrue(backplane.up)  # the first probe came back
        backplane.probe()
        channel, header, _ = publisher.published()[-1]
        self.assertEqual((channel, header["kind"]), (b"p:to:a", "probe"))
        clock.advance(3.1)
        self.assertFalse(backplane.up)
        self.assertIn("probe did not come back", backplane.state()["reason"])
        self.assertTrue(subscriber.transport.disconnecting)

    def test_scriptsUsePrefix(self) -> None:
        """The fleet view is read with the node's prefix, so fleets can share one Redis."""
        backplane, _, publisher, _ = makeBackplane()
        backplane.fleet()
        self.assertEqual(publisher.commands[-1][:4], ("EVAL", FLEET, 0, "p:"))

    def test_latency(self) -> None:
        """The latency histogram counts cumulatively per bucket, as Prometheus reads one."""
        latency = Latency((0.1, 1.0))
        for seconds in (0.05, 0.5, 5.0):
            latency.observe(seconds)
        self.assertEqual(list(latency.cumulative()), [("0.1", 1), ("1.0", 2), ("+Inf", 3)])
        self.assertAlmostEqual(latency.sum, 5.55)


class FleetNodeTests(SynchronousTestCase):
    """
    What a node does with the others' messages about its clients.
    """

    def setUp(self) -> None:
        self.protocol, self.transport, clock, factory = connect(delay=0)
        self.hub = hubOf(factory)
        self.backplane, _, self.publisher, _ = makeBackplane()
        self.replaced: list[tuple[Any, str]] = []
        self.node = FleetNode(
            self.hub, self.backplane, lambda s, why: self.replaced.append((s, why))
        )
        self.session = self.hub.sessions()[0]
        self.node.joined(self.session)

    def test_deliver(self) -> None:
        """A send from another node is written to the client it names, or answered as not here."""
        self.assertEqual(self.node.deliver({"id": self.session.id}, b"hi"), {"sent": 1})
        self.assertIn(b"hi\n", self.transport.value())
        self.assertEqual(self.node.deliver({"id": "nobody"}, b"hi"), {"sent": 0})

    def test_disconnect(self) -> None:
        """A disconnect from another node closes the client it names."""
        self.assertEqual(self.node.disconnect({"id": self.session.id}, b""), {"disconnected": True})
        self.assertTrue(self.transport.disconnecting)

    def test_replaced(self) -> None:
        """A takeover elsewhere replaces this node's connection only if it is the one registered then."""
        uid = self.backplane.records[self.session.id]["uid"]
        by = {"peer": "127.0.0.1:9", "node": "b"}
        self.node.replaced({"id": self.session.id, "by": by}, json.dumps({"uid": "a#99"}).encode())
        self.assertEqual(self.replaced, [])
        self.node.replaced({"id": self.session.id, "by": by}, json.dumps({"uid": uid}).encode())
        self.assertEqual(self.replaced, [(self.session, "replaced by 127.0.0.1:9 on node b")])

    def test_left(self) -> None:
        """A client gone is forgotten in Redis, by the uid of its own connection."""
        uid = self.backplane.records[self.session.id]["uid"]
        self.node.left(self.session)
        self.assertEqual(self.publisher.commands[-1][-2:], (self.session.id, uid))
        self.assertNotIn(self.session.id, self.backplane.records)


class ReadinessTests(SynchronousTestCase):
    """
    How a Redis connection gets ready, and how soon one that never does is
    tried again.
    """

    def test_backsOffWhileNeverReady(self) -> None:
        """Connections that are made but never ready (a wrong password) back off, although ClientService counts each as a success; one that gets ready resets it."""
        clock = Clock()
        readied: list[object] = []

        def ready(p: object) -> Deferred[None]:
            readied.append(p)
            return succeed(None)

        readiness = _Readiness(ready, clock, jitter=lambda: 0.0)
        never = FakeRedis()
        never.whenConnected = Deferred  # type: ignore[attr-defined]
        never.connected = 1  # type: ignore[attr-defined]
        delays = []
        for _ in range(4):
            readiness.prepare(never)
            delays.append(readiness.retryDelay(1))  # ClientService says: first attempt
        self.assertEqual(delays, sorted(delays))
        self.assertGreater(delays[-1], delays[0] * 3)
        clock.advance(5.1)
        self.assertTrue(never.transport.disconnecting)  # not ready in 5 s: dropped
        good = FakeRedis()
        good.whenConnected = lambda: succeed(good)  # type: ignore[attr-defined]
        readiness.prepare(good)
        self.assertEqual(readied, [good])
        self.assertEqual(readiness.retryDelay(1), delays[0])
