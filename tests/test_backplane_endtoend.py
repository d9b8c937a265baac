"""
The fleet end to end: real C{twistd} servers joined by a real
C{redis-server} (C{--backplane}), clients connected straight to each node
over loopback, and Redis stopped, paused and restarted under them.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import quote

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .processes import (
    WAIT,
    RedisServer,
    Twistd,
    assertCleanLog,
    environment,
    freePort,
    localServer,
    scratch,
)
from .test_admin import call
from .test_readme import recipe, shell

#: The TTL the fleet tests give their nodes: short, so a dead node's
#: clients go quickly; generous bounds around it below.
TTL = 2.0


def waitUntil(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """
    Call C{check} until it returns something true; fail after C{timeout}.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


class Node:
    """
    One server of the fleet: its message port and its admin port.
    """

    def __init__(
        self,
        case: SynchronousTestCase,
        redis: RedisServer,
        name: str,
        *args: str,
        url: str | None = None,
        up: bool = True,
        env: dict[str, str] | None = None,
        ttl: float = TTL,
    ) -> None:
        self.name = name
        self.admin = freePort()
        self.server = localServer(
            case,
            "--admin",
            f"tcp:{self.admin}:interface=127.0.0.1",
            "--backplane",
            url or redis.url,
            "--node-name",
            name,
            "--backplane-ttl",
            str(ttl),
            "--reply-delay",
            "0",
            *args,
            env=env,
        )
        self.port = self.server.listeningPort()
        if up:
            self.server.waitFor(rf"backplane up: .* as node {name}")

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        status, answer, _ = call(self.admin, method, path, body)
        return status, answer

    def clients(self, local: bool = False) -> dict[str, dict[str, Any]]:
        status, answer = self.call("GET", "/clients?local=1" if local else "/clients")
        assert status == 200, (status, answer)
        return {c["id"]: c for c in answer}


class Client:
    """
    A client of one node, on a plain socket: it says its name, and reads lines.
    """

    def __init__(self, case: SynchronousTestCase, node: Node, name: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", node.port), timeout=WAIT)
        case.addCleanup(self.sock.close)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.buffer = b""
        if name is not None:
            self.sock.sendall(b"hello " + name.encode() + b"\n")

    def lines(self, count: int, keep: Callable[[bytes], bool] = lambda line: True) -> list[bytes]:
        """
        The next C{count} lines that C{keep} keeps (bounded wait).
        """
        kept: list[bytes] = []
        deadline = time.monotonic() + WAIT
        while len(kept) < count:
            while b"\n" in self.buffer and len(kept) < count:
                line, self.buffer = self.buffer.split(b"\n", 1)
                if keep(line):
                    kept.append(line)
            if len(kept) >= count:
                break
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"closed after {kept[-3:]!r}")
            self.buffer += chunk
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(kept)} of {count} lines")
        return kept

    def closed(self) -> bool:
        """
        Whether the server closed the connection (bounded wait).
        """
        self.sock.settimeout(WAIT)
        try:
            while self.sock.recv(65536):
                pass
        except OSError:
            return False
        return True


def send(node: Node, clientId: str, text: str) -> tuple[int, Any]:
    return node.call("POST", f"/clients/{quote(clientId, safe='')}/messages", text.encode())


def numbered(line: bytes) -> bool:
    return line.startswith(b"n-")


class FleetTests(SynchronousTestCase):
    """
    Three nodes on one Redis, each holding named clients.
    """

    def setUp(self) -> None:
        self.redis = RedisServer(self)
        self.nodes = [Node(self, self.redis, n, "--client-id", "hello") for n in "abc"]
        self.clients: dict[str, tuple[Node, Client]] = {}
        for i in range(9):
            node = self.nodes[i % 3]
            name = f"agent-{i}"
            self.clients[name] = (node, Client(self, node, name))
        for node in self.nodes:
            waitUntil(partial(lambda n: len(n.clients()) == 9, node), f"node {node.name} sees 9")

    def test_fleetView(self) -> None:
        """With 300 clients spread over three nodes, every node lists all of them, with the node that holds each and its real address; ?local=1 lists its own only."""
        for i in range(9, 300):
            node = self.nodes[i % 3]
            self.clients[f"agent-{i}"] = (node, Client(self, node, f"agent-{i}"))
        for node in self.nodes:
            waitUntil(partial(lambda n: len(n.clients()) == 300, node), f"{node.name} sees 300")
        for node in self.nodes:
            listed = node.clients()
            self.assertEqual(
                {i: (c["node"], c["peer"]) for i, c in listed.items()},
                {n: (holder.name, client.address) for n, (holder, client) in self.clients.items()},
            )
            self.assertEqual(
                set(node.clients(local=True)),
                {n for n, (holder, _) in self.clients.items() if holder is node},
            )
            status, one = node.call("GET", "/clients/agent-1")
            self.assertEqual(
                (status, one["node"], one["peer"]), (200, "b", self.clients["agent-1"][1].address)
            )

    def test_crossNodeOrder(self) -> None:
        """500 numbered messages from node a's API to a client of node b arrive once each, in the order sent, each confirmed with a 200."""
        a = self.nodes[0]
        holder, client = self.clients["agent-1"]
        self.assertEqual(holder.name, "b")
        for i in range(500):
            status, answer = send(a, "agent-1", f"n-{i:03d}")
            self.assertEqual((status, answer), (200, {"id": "agent-1", "node": "b", "sent": 1}))
        got = client.lines(500, numbered)
        self.assertEqual(got, [f"n-{i:03d}".encode() for i in range(500)])
        status, answer = send(a, "nobody", "x")
        self.assertEqual(status, 404, answer)

    def test_crossNodeDisconnect(self) -> None:
        """A disconnect on node c of a client of node a closes it there, and it leaves the fleet view."""
        c = self.nodes[2]
        _, client = self.clients["agent-0"]
        status, answer = c.call("POST", "/clients/agent-0/disconnect")
        self.assertEqual((status, answer["node"]), (200, "a"))
        self.assertTrue(client.closed())
        waitUntil(lambda: "agent-0" not in c.clients(), "agent-0 gone from c's view")
        self.assertEqual(c.call("POST", "/clients/agent-0/disconnect")[0], 404)

    def test_takeoverAcrossNodes(self) -> None:
        """A named client that connects again through another node replaces its old connection on the first (newest wins), everywhere."""
        a, b = self.nodes[0], self.nodes[1]
        first = self.clients["agent-0"][1]
        again = Client(self, b, "agent-0")
        self.assertTrue(first.closed())
        a.server.waitFor(r"replaced agent-0 .*replaced by 127\.0\.0\.1:\d+ on node b")
        for node in self.nodes:
            waitUntil(
                partial(
                    lambda n: n.clients().get("agent-0", {}).get("peer") == again.address, node
                ),
                f"node {node.name} shows agent-0 on b",
            )
        self.assertEqual(
            send(a, "agent-0", "n-1"), (200, {"id": "agent-0", "node": "b", "sent": 1})
        )
        self.assertEqual(again.lines(1, numbered), [b"n-1"])
        for node in self.nodes:
            assertCleanLog(self, node.server.output())

    def test_nodeKilled(self) -> None:
        """A node killed with SIGKILL leaves no ghost: its clients are gone from the others' view within the TTL (with margin), and sends to them are 404."""
        a, c = self.nodes[0], self.nodes[2]
        c.server.stop(signal.SIGKILL)
        started = time.monotonic()
        waitUntil(lambda: len(a.clients()) == 6, "a sees 6 clients", timeout=TTL + 10)
        self.assertLess(time.monotonic() - started, TTL + 10)
        self.assertNotIn("c", {client["node"] for client in a.clients().values()})
        self.assertEqual(send(a, "agent-2", "x")[0], 404)


class OutageTests(SynchronousTestCase):
    """
    Two nodes whose Redis goes away: paused (SIGSTOP) and restarted.
    """

    def setUp(self) -> None:
        self.redis = RedisServer(self)
        self.a, self.b = (Node(self, self.redis, n, "--client-id", "hello") for n in "ab")
        self.client = Client(self, self.b, "agent-b")
        waitUntil(lambda: "agent-b" in self.a.clients(), "a sees agent-b")

    def assertLocalTraffic(self) -> None:
        """
        Node b still answers its own client, and sends to it from its own API.
        """
        self.client.sock.sendall(b"ping\n")
        self.assertEqual(len(self.client.lines(1, lambda line: line.startswith(b"response"))), 1)
        self.assertEqual(send(self.b, "agent-b", "n-local")[0], 200)
        self.assertEqual(self.client.lines(1, numbered), [b"n-local"])

    def assertFailsFast(self) -> None:
        """
        A cross-node send is a 503 within a few seconds (about one, on a
        quiet machine), never a hang.
        """
        started = time.monotonic()
        status, answer = send(self.a, "agent-b", "n-lost")
        elapsed = time.monotonic() - started
        self.assertEqual(status, 503, answer)
        self.assertIn("backplane could not say", answer["error"])
        self.assertLess(elapsed, 5.0)

    def assertRecovers(self) -> None:
        """
        Without restarting a node, cross-node sends work again, and the
        fleet view is whole again.
        """
        waitUntil(
            lambda: send(self.a, "agent-b", "n-back")[0] == 200, "a reaches agent-b again", 30
        )
        self.assertEqual(self.client.lines(1, numbered), [b"n-back"])
        waitUntil(lambda: "agent-b" in self.a.clients(), "a sees agent-b again", 30)
        waitUntil(lambda: self.a.call("GET", "/healthz")[1]["status"] == "ok", "a healthy", 30)

    def test_paused(self) -> None:
        """With Redis stopped for 5 s, sends across fail fast, /healthz says degraded, local traffic goes on; then all works again."""
        self.redis.pause()
        try:
            paused = time.monotonic()
            self.assertFailsFast()
            self.assertLocalTraffic()
            health = waitUntil(
                lambda: (h := self.a.call("GET", "/healthz")[1])["status"] == "degraded" and h,
                "a degraded",
            )
            self.assertEqual(health["backplane"]["state"], "degraded")
            self.assertTrue(health["backplane"]["reason"])
            time.sleep(max(0.0, 5.0 - (time.monotonic() - paused)))  # the outage's length
        finally:
            self.redis.resume()
        self.assertRecovers()

    def test_subscriptionKilled(self) -> None:
        """Subscriptions that Redis drops (CLIENT KILL TYPE pubsub) are made again: cross-node sends reach b's client again, without restarting a node."""
        killed = self.redis.command("CLIENT", "KILL", "TYPE", "pubsub")
        self.assertEqual(killed, b":2\r\n")
        waitUntil(
            lambda: (
                self.redis.command("PUBSUB", "NUMSUB", "tcpcomm:to:a", "tcpcomm:to:b").count(b":1")
                == 2
            ),
            "a and b subscribed again",
        )
        self.assertRecovers()

    def test_restarted(self) -> None:
        """With Redis restarted empty (no persistence), sends across fail fast while it is down; then nodes reconnect, subscribe and register their clients again."""
        self.redis.stop()
        self.assertFailsFast()
        self.assertLocalTraffic()
        self.redis.start()
        self.assertRecovers()
        for node in (self.a, self.b):
            assertCleanLog(self, node.server.output())


class AddressIdTests(SynchronousTestCase):
    """
    Clients known by their address (the default) are shown and reached as
    C{node/id}: addresses are only a node's own.
    """

    def test_nodeSlashId(self) -> None:
        """Node a lists b's client as b/ADDRESS, and reaches it by that id."""
        redis = RedisServer(self)
        a, b = Node(self, redis, "a"), Node(self, redis, "b")
        client = Client(self, b)
        shown = f"b/{client.address}"
        waitUntil(lambda: shown in a.clients(), "a lists b's client as b/ADDRESS")
        self.assertEqual(send(a, shown, "n-1"), (200, {"id": shown, "node": "b", "sent": 1}))
        self.assertEqual(client.lines(1, numbered), [b"n-1"])
        self.assertEqual(send(a, client.address, "n-2")[0], 404)  # not a's own
        self.assertEqual(b.clients(local=True)[shown]["peer"], client.address)


class FleetRecipeTests(SynchronousTestCase):
    """
    The README's fleet recipe, as written (on free ports, and with a Redis
    of the test's own), and the CLI's node column.
    """

    def test_recipe(self) -> None:
        """Node a shows agent-7 on node b and sends it a message that b confirms; tcpcomm clients names the node."""
        if shutil.which("curl") is None:
            raise SkipTest("curl is not installed")
        folder = scratch(self)
        redis = RedisServer(self)
        ports = {"9527": freePort(), "9528": freePort(), "9537": freePort(), "9538": freePort()}
        text = recipe("fleet").replace("6379", str(redis.port))
        for old, new in ports.items():
            text = text.replace(old, str(new))
        redisLine, nodeA, nodeB, clientLine, show, sendLine = text.splitlines()
        self.assertTrue(redisLine.startswith("redis-server "), redisLine)
        servers = [Twistd(self, *shlex.split(line)[3:], cwd=folder) for line in (nodeA, nodeB)]
        for server, name in zip(servers, "ab", strict=True):
            server.waitFor(rf"backplane up: .* as node {name}")
        client = Twistd(self, *shlex.split(clientLine)[3:], cwd=folder)
        a = ports["9528"]
        waitUntil(lambda: call(a, "GET", "/clients/agent-7")[0] == 200, "a sees agent-7")
        shown = shell(self, show, folder)
        self.assertEqual(shown.returncode, 0, shown.stderr)
        described = json.loads(shown.stdout)
        self.assertEqual((described["id"], described["node"]), ("agent-7", "b"))
        self.assertRegex(described["peer"], r"^127\.0\.0\.1:\d+$")
        sent = shell(self, sendLine, folder)
        self.assertEqual(
            (sent.returncode, sent.stdout), (0, '{"id": "agent-7", "node": "b", "sent": 1}\n')
        )
        client.waitFor(rf"message from 127\.0\.0\.1:{ports['9537']}: restart")
        listed = shell(self, f"tcpcomm --admin 127.0.0.1:{a} clients", folder)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        heading, row = listed.stdout.splitlines()[:2]
        self.assertEqual(heading.split()[:3], ["ID", "NODE", "PEER"])
        self.assertEqual(row.split()[:3], ["agent-7", "b", described["peer"]])
        for server in servers:
            assertCleanLog(self, server.output())


class AuthenticationTests(SynchronousTestCase):
    """
    A Redis that requires a password (an ACL user's).
    """

    def test_passwordFile(self) -> None:
        """With the password in --backplane-password-file the node joins; with a wrong one it still serves its clients, and /healthz says why the backplane is degraded."""
        redis = RedisServer(self, "user fleet on >s3cret ~* &* +@all", "user default off")
        folder = scratch(self)
        good, bad = os.path.join(folder, "good"), os.path.join(folder, "bad")
        for path, password in ((good, "s3cret\n"), (bad, "wrong\n")):
            with open(path, "w") as f:
                f.write(password)
        url = f"redis://fleet@127.0.0.1:{redis.port}/0"
        a = Node(self, redis, "a", "--backplane-password-file", good, url=url)
        self.assertEqual(a.call("GET", "/healthz")[1]["backplane"]["state"], "up")
        b = Node(self, redis, "b", "--backplane-password-file", bad, url=url, up=False)
        health = waitUntil(
            lambda: (
                "auth" in (h := b.call("GET", "/healthz")[1])["backplane"].get("reason", "") and h
            ),
            "b degraded for its password",
        )
        self.assertEqual(health["status"], "degraded")
        self.assertNotIn("wrong", json.dumps(health))
        client = Client(self, b)
        client.sock.sendall(b"ping\n")
        self.assertEqual(len(client.lines(1, lambda line: line.startswith(b"response"))), 1)
        self.assertEqual(send(b, client.address, "n-1")[0], 200)  # its own
        self.assertEqual(client.lines(1, numbered), [b"n-1"])
        self.assertEqual(send(b, "a/127.0.0.1:1", "x")[0], 503)  # a's: Redis cannot say
        # Tried again, with backoff, and never an unhandled error in ClientService.
        b.server.waitFor(r"backplane: dropping a Redis connection not ready|could not auth")
        time.sleep(1.0)  # a few attempts, to see that none breaks the reconnection
        assertCleanLog(self, b.server.output())
        self.assertNotIn("wrong", b.server.output())


class TLSTests(SynchronousTestCase):
    """
    C{rediss://}: the backplane over TLS, the server's certificate verified.
    """

    def test_rediss(self) -> None:
        """Two nodes join over rediss:// (trusting the test's CA through SSL_CERT_FILE) and reach each other's clients; /metrics counts it."""
        from .certs import Authority

        authority = Authority(scratch(self), "fleet")
        redis = RedisServer(self, tls=authority.issue("redis", ["127.0.0.1"]))
        env = environment()
        env["SSL_CERT_FILE"] = authority.path
        a, b = (Node(self, redis, n, "--client-id", "hello", env=env) for n in "ab")
        client = Client(self, b, "agent-t")
        waitUntil(lambda: "agent-t" in a.clients(), "a sees agent-t")
        self.assertEqual(send(a, "agent-t", "n-1")[0], 200)
        self.assertEqual(client.lines(1, numbered), [b"n-1"])
        self.assertTrue(a.call("GET", "/healthz")[1]["backplane"]["redis"].startswith("rediss://"))
        metrics = a.call("GET", "/metrics")[1]
        for line in [
            "tcpcomm_backplane_up 1.0",
            "tcpcomm_backplane_messages_sent_total 1.0",
            'tcpcomm_backplane_delivery_seconds_bucket{le="1.0"} 1.0',
            "tcpcomm_backplane_delivery_seconds_count 1.0",
        ]:
            self.assertIn(line + "\n", metrics)
        promtool = shutil.which("promtool")
        if promtool is not None:
            checked = subprocess.run(
                [promtool, "check", "metrics"],
                input=metrics,
                capture_output=True,
                text=True,
                timeout=WAIT,
            )
            self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)

    def test_untrusted(self) -> None:
        """A Redis whose certificate is not trusted is not joined: the node says why on /healthz and serves its clients."""
        from .certs import Authority

        authority = Authority(scratch(self), "fleet")
        redis = RedisServer(self, tls=authority.issue("redis", ["127.0.0.1"]))
        a = Node(self, redis, "a", up=False)
        waitUntil(
            lambda: (
                "certificate verify failed"
                in a.call("GET", "/healthz")[1]["backplane"].get("reason", "")
            ),
            "a says it cannot verify Redis",
        )
        health = a.call("GET", "/healthz")[1]
        self.assertEqual(health["backplane"]["state"], "degraded")
        client = Client(self, a)
        client.sock.sendall(b"ping\n")
        self.assertEqual(len(client.lines(1, lambda line: line.startswith(b"response"))), 1)
        assertCleanLog(self, a.server.output())


class StopTests(SynchronousTestCase):
    """
    A node stopped on purpose leaves the fleet at once.
    """

    def test_sigterm(self) -> None:
        """A node stopped with SIGTERM takes its clients out of the fleet view long before its TTL (60 s), and logs no traceback."""
        redis = RedisServer(self)
        a, b = (Node(self, redis, n, "--client-id", "hello", ttl=60) for n in "ab")
        Client(self, b, "agent-s")
        waitUntil(lambda: "agent-s" in a.clients(), "a sees agent-s")
        started = time.monotonic()
        b.server.stop()
        waitUntil(lambda: "agent-s" not in a.clients(), "agent-s gone from a's view", timeout=10)
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(send(a, "agent-s", "x")[0], 404)
        assertCleanLog(self, b.server.output())
