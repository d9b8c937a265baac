"""
Draining a real C{twistd} server with C{tcpcomm drain}: it refuses new
connections at once, says so on C{/healthz}, closes its tcpcomm clients
(which retry) spread over C{--drain-period}, and exits.
"""

from __future__ import annotations

import socket
import time

from twisted.trial.unittest import SynchronousTestCase

from .processes import WAIT, Twistd, assertCleanLog, localServer
from .test_admin import ADMIN_PORT, call
from .test_cli import tcpcomm

#: Clients of the drained server, and the period they are closed over.
CLIENTS = 6
PERIOD = 4.0


class DrainEndToEndTests(SynchronousTestCase):
    """
    A server with C{CLIENTS} tcpcomm clients, drained over C{PERIOD} seconds.
    """

    def setUp(self) -> None:
        self.server = localServer(
            self,
            "--reply-delay",
            "1",
            "--admin",
            "tcp:0:interface=127.0.0.1",
            "--drain-period",
            f"{PERIOD:g}",
        )
        self.port = int(self.server.waitFor(r"listening on 127\.0\.0\.1:(\d+) \(tcp:").group(1))
        self.admin = int(self.server.waitFor(ADMIN_PORT).group(1))
        self.clients = [
            Twistd(
                self,
                "tcpcomm",
                "client",
                "--port",
                str(self.port),
                "--reply-delay",
                "1",
                "--retry-initial",
                "0.5",
                "--retry-max",
                "1",
            )
            for _ in range(CLIENTS)
        ]
        self.ids = self.waitForClients(CLIENTS)

    def waitForClients(self, count: int, timeout: float = 4 * WAIT) -> set[str]:
        """
        The ids of the server's clients once there are C{count} of them.
        """
        deadline = time.monotonic() + timeout
        while True:
            clients = call(self.admin, "GET", "/clients")[1]
            if len(clients) == count:
                return {c["id"] for c in clients}
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(clients)} of {count} clients within {timeout} s")
            time.sleep(0.1)

    def watchClosings(self, timeout: float) -> dict[str, float]:
        """
        When (seconds from now) each client left the server, polling
        C{/clients} until the admin API stops answering with the server.
        """
        start = time.monotonic()
        gone: dict[str, float] = {}
        while time.monotonic() - start < timeout:
            try:
                clients = call(self.admin, "GET", "/clients")[1]
            except OSError:
                return gone  # the server has stopped
            now = time.monotonic() - start
            for clientId in self.ids - {c["id"] for c in clients} - set(gone):
                gone[clientId] = now
            time.sleep(0.05)
        raise AssertionError(f"the server still answers {timeout} s after the drain: {gone}")

    def test_drain(self) -> None:
        """A drained server refuses newcomers, closes its clients over the period, and exits 0."""
        url = f"http://127.0.0.1:{self.admin}"
        first = tcpcomm(self, "--admin", url, "drain")
        self.assertEqual(first.returncode, 0, first.stderr)
        self.assertEqual(
            first.stdout.strip(),
            f"draining: stopped listening; closing {CLIENTS} clients over {PERIOD:g} s, "
            "then stopping",
        )
        status, health, _ = call(self.admin, "GET", "/healthz")
        self.assertEqual((status, health["status"]), (503, "draining"))
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", self.port), timeout=WAIT).close()
        again = tcpcomm(self, "--admin", url, "drain")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertRegex(again.stdout, rf"^already draining: closed \d of {CLIENTS} clients")

        gone = self.watchClosings(PERIOD + 2 * WAIT)
        self.server.process.wait(WAIT)
        self.assertEqual(self.server.process.returncode, 0, self.server.output())

        self.assertEqual(set(gone), self.ids)
        times = sorted(gone.values())
        # Evenly: one every PERIOD / CLIENTS seconds from the start, so the
        # first soon, the last well into the period, and not in one burst.
        self.assertLess(times[0], PERIOD / 2, times)
        self.assertGreater(times[-1] - times[0], PERIOD * 0.4, times)
        self.assertGreaterEqual(len({round(t, 1) for t in times}), CLIENTS // 2, times)
        output = self.server.output()
        self.assertIn(f"drained: closed {CLIENTS} client(s)", output)
        assertCleanLog(self, output)
        for client in self.clients:
            client.waitFor(r"retry \d+ to connect to 127\.0\.0\.1")
            assertCleanLog(self, client.output())
