"""
Messages that wait, end to end: real C{twistd} servers and clients over
loopback, the README's recipe as written, and a queue that outlives a
C{kill -9} of its server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from urllib.parse import quote

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .processes import (
    STOPPED,
    WAIT,
    Twistd,
    assertCleanLog,
    freePort,
    localServer,
    run,
    scratch,
)
from .test_admin import ADMIN_PORT, call
from .test_readme import recipe, shell, twistdArgs


def reusedPortConnection(localPort: int, port: int) -> socket.socket:
    """
    A connection to the server on C{port} from C{localPort}, which may still
    be in TIME_WAIT from an earlier connection: the client's id.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.settimeout(WAIT)
    sock.bind(("127.0.0.1", localPort))
    sock.connect(("127.0.0.1", port))
    return sock


def readLines(sock: socket.socket, count: int, quiet: float = 1.0) -> list[bytes]:
    """
    The first C{count} lines C{sock} receives, then whatever else arrives
    within C{quiet} seconds of them (which should be nothing).
    """
    data = b""
    deadline = time.monotonic() + WAIT
    while data.count(b"\n") < count and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.settimeout(quiet)
    try:
        data += sock.recv(65536)
    except TimeoutError:
        pass
    return data.splitlines()


class QueueRecipeTests(SynchronousTestCase):
    """
    The README's recipe: a ttl send with curl to a client that is away,
    delivered when the tcpcomm client connects.
    """

    def test_recipe(self) -> None:
        """curl queues the message for agent-7 (202), tcpcomm queues lists it, the client named agent-7 gets it on connecting."""
        if shutil.which("curl") is None:
            raise SkipTest("curl is not installed")
        folder = scratch(self)
        port, admin = freePort(), freePort()
        text = recipe("queue").replace("9528", str(admin))
        serverLine, send, listing, clientLine = text.splitlines()
        server = Twistd(self, *twistdArgs(serverLine, port)[1:], cwd=folder)
        server.waitFor(rf"listening on 127\.0\.0\.1:{admin} \(admin API")
        sent = shell(self, send, folder)
        self.assertEqual(
            (sent.returncode, sent.stdout),
            (0, '{"id": "agent-7", "queued": true, "position": 1}\n'),
            sent.stderr,
        )
        listed = shell(self, listing, folder)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertRegex(listed.stdout, r"agent-7\s+1\s+7 B\s+\d+s\n")
        self.assertTrue(listed.stdout.endswith("1 message waiting for 1 client\n"), listed.stdout)
        self.assertTrue(os.path.exists(os.path.join(folder, "queues", "queues.sqlite3")))
        client = Twistd(self, *twistdArgs(clientLine, port)[2:], cwd=folder)
        client.waitFor(rf"message from 127\.0\.0\.1:{port}: restart")
        server.waitFor(r"delivered 1 queued message\(s\) to agent-7")
        empty = shell(self, listing.replace(" queues", " --json queues"), folder)
        self.assertEqual(empty.stdout, '{"queues": []}\n', empty.stderr)
        assertCleanLog(self, server.output())


class DurableQueueTests(SynchronousTestCase):
    """
    With --queue-dir, queued messages outlive a SIGKILL of the server and
    are delivered once, in order.
    """

    def start(self, queueDir: str) -> tuple[Twistd, int, int]:
        """
        A server keeping its queues in C{queueDir}; it, its port and its
        admin port.
        """
        server = localServer(self, "--admin", "tcp:0:interface=127.0.0.1", "--queue-dir", queueDir)
        return server, server.listeningPort(), int(server.waitFor(ADMIN_PORT).group(1))

    def test_survivesKill9(self) -> None:
        """Five messages queued, the server killed with -9 and restarted: each arrives once, in order."""
        queueDir = os.path.join(scratch(self), "queues")
        server, port, admin = self.start(queueDir)
        local = freePort()
        clientId = f"127.0.0.1:{local}"
        path = f"/clients/{quote(clientId, safe='')}/messages?ttl=3600"
        for i in range(5):
            status, body, _ = call(admin, "POST", path, f"message {i}".encode())
            self.assertEqual((status, body["position"]), (202, i + 1), body)
        server.stop(signal.SIGKILL)

        again, port, admin = self.start(queueDir)
        status, listed, _ = call(admin, "GET", "/queues")
        self.assertEqual([(q["id"], q["messages"]) for q in listed["queues"]], [(clientId, 5)])
        with reusedPortConnection(local, port) as sock:
            self.assertEqual(readLines(sock, 5), [f"message {i}".encode() for i in range(5)])
        again.waitFor(rf"delivered 5 queued message\(s\) to 127\.0\.0\.1:{local}")
        again.stop(signal.SIGKILL)

        third, port, admin = self.start(queueDir)
        self.assertEqual(call(admin, "GET", "/queues")[1], {"queues": []})
        with reusedPortConnection(local, port) as sock:
            self.assertEqual(readLines(sock, 0), [])
        assertCleanLog(self, third.output())

    def test_survivesCleanStop(self) -> None:
        """A queue outlives a SIGTERM stop, which closes the database without a traceback."""
        queueDir = os.path.join(scratch(self), "queues")
        server, port, admin = self.start(queueDir)
        status, body, _ = call(admin, "POST", "/clients/agent-7/messages?ttl=3600", b"later")
        self.assertEqual(status, 202, body)
        self.assertIn(server.stop(), STOPPED)
        assertCleanLog(self, server.output())
        again, port, admin = self.start(queueDir)
        listed = call(admin, "GET", "/queues")[1]["queues"]
        self.assertEqual(
            [(q["id"], q["messages"], q["bytes"]) for q in listed], [("agent-7", 1, 5)]
        )
        again.waitFor(r"loaded 1 queued message\(s\) for 1 client\(s\)")

    def test_badQueueDir(self) -> None:
        """twistd refuses a --queue-dir that cannot be made, naming the option, and exits."""
        plain = os.path.join(scratch(self), "plain")
        with open(plain, "w") as f:
            f.write("not a folder")
        result = run(self, "tcpcomm", "server", "--queue-dir", os.path.join(plain, "queues"))
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--queue-dir", result.stdout + result.stderr)
        self.assertIn("cannot hold the queue database", result.stdout + result.stderr)
