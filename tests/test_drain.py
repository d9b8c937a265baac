"""
Draining a server, in process on a clock: the pacing of the closing, the
listeners stopped, the stop at the end; C{POST /drain}, C{/healthz} and the
metrics of a draining server; C{--drain-period}; the command's answers.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tcpcomm.cli import parser, showDrain
from tcpcomm.control.admin import AdminSite, Outgoing, makeAdminSite
from tcpcomm.control.metrics import makeRegistry
from tcpcomm.drain import Drain
from tcpcomm.hub.hub import Hub
from tcpcomm.options import ServerOptions
from tcpcomm.reload import ReloadStatus
from tcpcomm.server import makeServerService
from tcpcomm.wire.protocol import FramedProtocol

from .support import NOON, FakeFileLimit, callSite, connect, hubOf, makeHub
from .test_reload import Running


@implementer(IListeningPort)
class RecordingPort:
    """
    A listening port that records whether it was told to stop listening.
    """

    def __init__(self) -> None:
        self.listening = True

    def startListening(self) -> None:
        pass

    def stopListening(self) -> Deferred[None]:
        self.listening = False
        return succeed(None)

    def getHost(self) -> Any:
        return None


@implementer(IStreamServerEndpoint)
class RecordingEndpoint:
    """
    An endpoint whose listening port is a L{RecordingPort}.
    """

    def __init__(self) -> None:
        self.port = RecordingPort()

    def listen(self, factory: object) -> Deferred[IListeningPort]:
        return succeed(self.port)


class Stops:
    """
    What the drain calls at its end instead of the reactor's C{stop}.
    """

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


class DrainTestCase(SynchronousTestCase):
    """
    A hub on a clock with C{count} peers on L{StringTransport}s, and its drain.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOON)
        self.hub = makeHub(self.clock)
        self.stops = Stops()
        self.transports: list[StringTransport] = []
        self.protocols: list[FramedProtocol] = []

    def peers(self, count: int) -> None:
        for _ in range(count):
            port = 40000 + len(self.transports)
            protocol, transport, _, _ = connect(hub=self.hub, clock=self.clock, port=port)
            self.protocols.append(protocol)
            self.transports.append(transport)

    def drain(self, period: float, listeners: list[Any] | None = None) -> Drain:
        drain = Drain(self.hub.registry, listeners or [], self.clock, period, self.stops)
        drain.startService()
        self.began = self.clock.seconds()
        return drain

    def at(self, seconds: float) -> int:
        """
        Move the clock to C{seconds} after the drain began; how many clients
        are closed then. (Batches are due every 100 ms: the tests look
        between two, since at 1.8e9 s a float cannot hold an exact 0.1 s.)
        """
        self.clock.advance(self.began + seconds - self.clock.seconds())
        return self.closed()

    def closed(self) -> int:
        return sum(t.disconnecting for t in self.transports)


class PacingTests(DrainTestCase):
    """
    A drain closes the clients evenly over its period, then stops the server once.
    """

    def test_evenBatches(self) -> None:
        """25 clients over 1 s are closed in ten batches of 2 or 3, the last before the end."""
        self.peers(25)
        self.assertTrue(self.drain(1.0).start())
        seen = [self.at(0.05 + 0.1 * n) for n in range(10)]
        batches = [b - a for a, b in zip([0, *seen], seen, strict=False)]
        self.assertEqual(sum(batches), 25)
        self.assertEqual(sorted(set(batches)), [2, 3])
        self.assertEqual(self.stops.count, 0)
        self.at(1.05)
        self.assertEqual(self.stops.count, 1)
        self.at(3)
        self.assertEqual(self.stops.count, 1)

    def test_oneAtATime(self) -> None:
        """300 clients over the default 30 s: one every 100 ms, half of them by half-time."""
        self.peers(300)
        self.drain(30.0).start()
        self.assertEqual(self.closed(), 1)
        for n in range(1, 150):
            self.assertEqual(self.at(0.05 + 0.1 * n), n + 1)
        self.assertEqual(self.at(29.95), 300)
        self.assertEqual(self.stops.count, 0)
        self.at(30.05)
        self.assertEqual(self.stops.count, 1)

    def test_fewClients(self) -> None:
        """Three clients over 3 s are closed a second apart, not all at once."""
        self.peers(3)
        self.drain(3.0).start()
        seen = [self.at(0.05 + 0.1 * n) for n in range(30)]
        self.assertEqual(seen[0], 1)
        self.assertEqual(seen.index(2), 10)
        self.assertEqual(seen.index(3), 20)
        self.at(3.05)
        self.assertEqual(self.stops.count, 1)

    def test_lateReactor(self) -> None:
        """A reactor that stalls for half the period catches up, then goes on one by one."""
        self.peers(20)
        self.drain(2.0).start()
        self.assertEqual(self.at(1.05), 11)
        self.assertEqual(self.at(1.15), 12)
        self.assertEqual(self.at(1.95), 20)

    def test_leavingClientsNotMadeUpFor(self) -> None:
        """Clients that leave by themselves during the drain do not make the others go sooner."""
        self.peers(10)
        self.drain(1.0).start()
        self.assertEqual(self.at(0.15), 2)
        still = [
            p for p, t in zip(self.protocols, self.transports, strict=True) if not t.disconnecting
        ]
        for protocol in still[:4]:
            protocol.connectionLost(Failure(ConnectionDone()))
        self.assertLessEqual(self.at(0.25), 3)
        self.assertLessEqual(self.at(0.55), 4)
        self.assertEqual(self.at(0.95), 6)

    def test_noPeriod(self) -> None:
        """A drain period of 0 closes every client and stops at once."""
        self.peers(5)
        self.drain(0.0).start()
        self.assertEqual((self.closed(), self.stops.count), (5, 1))

    def test_noClients(self) -> None:
        """A server with no clients still waits out the period, then stops."""
        self.drain(1.0).start()
        self.at(0.95)
        self.assertEqual(self.stops.count, 0)
        self.at(1.05)
        self.assertEqual(self.stops.count, 1)

    def test_startedOnce(self) -> None:
        """A second start is refused and changes nothing."""
        self.peers(10)
        drain = self.drain(1.0)
        self.assertTrue(drain.start())
        self.at(0.55)
        state = drain.state()
        self.assertFalse(drain.start())
        self.assertEqual(drain.state(), state)
        self.at(1.05)
        self.assertEqual(self.stops.count, 1)

    def test_sigtermDuringDrain(self) -> None:
        """Stopping the service (SIGTERM) ends the pacing: the drain never calls stop itself."""
        self.peers(10)
        drain = self.drain(1.0)
        drain.start()
        closed = self.at(0.35)
        drain.stopService()
        self.assertEqual((self.at(3), self.stops.count), (closed, 0))

    def test_logs(self) -> None:
        """The start, the progress and the end are logged with their event names and numbers."""
        self.peers(4)
        with capturedLogs() as events:
            self.drain(1.0).start()
            for n in range(11):
                self.at(0.05 + 0.1 * n)
        names = [e.get("event") for e in events]
        self.assertEqual(names[0], "draining")
        self.assertEqual(events[0]["count"], 4)
        self.assertEqual(events[0]["period"], 1.0)
        self.assertIn("drain-progress", names)
        self.assertLessEqual(names.count("drain-progress"), Drain.reports)
        [done] = [e for e in events if e.get("event") == "drained"]
        self.assertEqual(done["closed"], 4)


class ListenerTests(SynchronousTestCase):
    """
    A drain stops the message listeners at once and leaves the other services running.
    """

    def test_stopsListening(self) -> None:
        """Every message listener stops listening when the drain starts, not before."""
        clock = Clock()
        _, _, _, factory = connect(clock=clock)
        endpoints = [RecordingEndpoint(), RecordingEndpoint()]
        top = makeServerService(
            [(e, f"test {i}") for i, e in enumerate(endpoints)],
            factory,
            hubOf(factory).registry,
            clock,
            10,
            0,
            FakeFileLimit(),
        )
        other = MultiService()
        other.setServiceParent(top)
        drain = Drain(hubOf(factory).registry, top.listeners, clock, 1.0, Stops())
        drain.setServiceParent(top)
        top.startService()
        self.assertEqual([e.port.listening for e in endpoints], [True, True])
        drain.start()
        self.assertEqual([e.port.listening for e in endpoints], [False, False])
        self.assertTrue(other.running)


class ServerTests(SynchronousTestCase):
    """
    The server C{tap.makeService} builds can drain: through its admin API, on
    its reactor, with the period of its options, which a reload changes.
    """

    def test_drainedServer(self) -> None:
        """POST /drain stops the listener, closes the clients over the reloaded period, then stops."""
        folder = self.mktemp()
        os.makedirs(folder)
        config = os.path.join(folder, "server.toml")
        with open(config, "w") as f:
            f.write("[server]\ndrain-period = 5\n")
        server = Running(
            self, "server", "--config", config, "--admin", "tcp:9528:interface=127.0.0.1"
        )
        [drain] = [s for s in server.service if isinstance(s, Drain)]
        [listener] = [
            s
            for s in server.service
            if isinstance(s, StreamServerEndpointService) and s.factory is server.factory
        ]
        [site] = [f for _, f, _, _ in server.reactor.tcpServers if isinstance(f, AdminSite)]
        transports = [server.connect(40000 + n)[1] for n in range(4)]
        with open(config, "w") as f:
            f.write("[server]\ndrain-period = 1\n")
        server.reloader.reload()
        self.assertEqual(callSite(site, "POST", "/drain")[0], 202)
        self.assertFalse(listener.running)
        self.assertEqual(drain.drainPeriod, 1.0)
        server.reactor.advance(0.95)
        self.assertEqual([t.disconnecting for t in transports], [True] * 4)
        self.assertFalse(server.reactor.hasStopped)
        server.reactor.advance(0.1)
        self.assertTrue(server.reactor.hasStopped)


class RouteTests(DrainTestCase):
    """
    C{POST /drain}, C{/healthz}, the metrics and the document of a server that can drain.
    """

    def setUp(self) -> None:
        super().setUp()
        self.theDrain = Drain(self.hub.registry, [], self.clock, 30.0, self.stops)
        self.theDrain.startService()
        self.began = self.clock.seconds()  # what a POST /drain now starts from
        reloads = ReloadStatus(self.clock.seconds())
        self.site = makeAdminSite(
            self.hub,
            makeRegistry(self.hub, None, reloads, self.theDrain),
            Outgoing("utf-8", "line", 32),
            self.clock,
            None,
            reloads=reloads,
            drain=self.theDrain,
        )

    def call(self, method: str, path: str) -> tuple[int, Any, dict[str, str]]:
        return callSite(self.site, method, path)

    def metric(self, name: str) -> float:
        text = self.call("GET", "/metrics")[1]
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    return float(sample.value)
        raise AssertionError(f"no {name} in {text}")

    def test_drain(self) -> None:
        """POST /drain answers 202 with the drain's numbers and logs the admin action."""
        self.peers(3)
        with capturedLogs() as events:
            status, body, _ = self.call("POST", "/drain")
        self.assertEqual(status, 202)
        self.assertEqual(
            body,
            {
                "draining": True,
                "already": False,
                "periodSeconds": 30.0,
                "clients": 3,
                "closed": 1,
                "remaining": 3,
                "secondsLeft": 30.0,
            },
        )
        self.assertIn("admin-drain", [e.get("event") for e in events])

    def test_drainTwice(self) -> None:
        """A second POST /drain says it is already draining (200) and changes nothing."""
        self.peers(3)
        self.call("POST", "/drain")
        self.at(10.05)
        status, body, _ = self.call("POST", "/drain")
        self.assertEqual((status, body["already"], body["closed"]), (200, True, 2))
        self.assertAlmostEqual(body["secondsLeft"], 19.95, places=2)
        self.at(30.05)
        self.assertEqual(self.stops.count, 1)

    def test_healthzWhileDraining(self) -> None:
        """/healthz is 200 ok before a drain, and 503 draining (still served) during one."""
        status, body, _ = self.call("GET", "/healthz")
        self.assertEqual((status, body["status"]), (200, "ok"))
        self.assertNotIn("drain", body)
        self.call("POST", "/drain")
        status, body, _ = self.call("GET", "/healthz")
        self.assertEqual((status, body["status"]), (503, "draining"))
        self.assertEqual(body["drain"]["periodSeconds"], 30.0)
        self.assertTrue(body["lastReload"]["ok"])

    def test_metrics(self) -> None:
        """tcpcomm_draining is 1 once draining, and tcpcomm_drain_closed_total counts closings."""
        self.peers(4)
        self.assertEqual(self.metric("tcpcomm_draining"), 0)
        self.call("POST", "/drain")
        self.at(15.05)
        self.assertEqual(self.metric("tcpcomm_draining"), 1)
        self.assertEqual(self.metric("tcpcomm_drain_closed_total"), 3)

    def test_documented(self) -> None:
        """/openapi.json describes POST /drain and the 503 of /healthz."""
        spec = self.call("GET", "/openapi.json")[1]
        self.assertEqual(set(spec["paths"]["/drain"]["post"]["responses"]), {"200", "202"})
        self.assertIn("503", spec["paths"]["/healthz"]["get"]["responses"])

    def test_clientHasNoDrain(self) -> None:
        """A client daemon's admin API has no /drain route."""
        from tcpcomm.client import ClientStatus

        hub: Hub = makeHub(self.clock)
        site = makeAdminSite(
            hub,
            makeRegistry(hub),
            Outgoing("utf-8", "line", 32),
            self.clock,
            None,
            ClientStatus("x"),
        )
        self.assertEqual(callSite(site, "POST", "/drain")[0], 404)


class OptionTests(SynchronousTestCase):
    """
    C{--drain-period} checks its own value.
    """

    def test_default(self) -> None:
        """The drain period is 30 s unless given."""
        options = ServerOptions()
        options.parseOptions([])
        self.assertEqual(options["drain-period"], 30.0)
        options = ServerOptions()
        options.parseOptions(["--drain-period", "2.5"])
        self.assertEqual(options["drain-period"], 2.5)

    def test_bad(self) -> None:
        """A negative or non-numeric period is refused, naming the option and the value."""
        for value in ["-1", "soon", "nan"]:
            options = ServerOptions()
            with self.assertRaises(usage.UsageError) as raised:
                options.parseOptions(["--drain-period", value])
            self.assertIn(
                f"--drain-period must be a number >= 0, not {value!r}", str(raised.exception)
            )


class CommandTests(SynchronousTestCase):
    """
    C{tcpcomm drain} posts to C{/drain} and says what the server does.
    """

    def test_parsed(self) -> None:
        """The drain command takes no argument, and the global options after it."""
        args = parser({}).parse_args(["drain", "--admin", "127.0.0.1:9528"])
        self.assertEqual(args.admin, "127.0.0.1:9528")
        self.assertIs(args.show, showDrain)

    def test_started(self) -> None:
        """The first drain says how many clients go over how long."""
        answer = {"already": False, "clients": 3, "closed": 0, "periodSeconds": 30.0}
        self.assertEqual(
            showDrain(answer, argparse.Namespace()),
            "draining: stopped listening; closing 3 clients over 30 s, then stopping",
        )

    def test_already(self) -> None:
        """A second drain says how far the first has got."""
        answer = {"already": True, "clients": 1, "closed": 1, "secondsLeft": 12.5}
        self.assertEqual(
            showDrain(answer, argparse.Namespace()),
            "already draining: closed 1 of 1 client, stopping in 12.5 s",
        )
