"""
Named clients end to end, with real C{twistd} daemons on loopback: the
README's C{nc} hello, takeover by a second connection, the common name of
an openssl-made client certificate as the id, and a token removed at
SIGHUP.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .certs import Authority
from .processes import (
    WAIT,
    Twistd,
    assertCleanLog,
    environment,
    freePort,
    localServer,
    readUntilClosed,
    scratch,
    signalWhenHandled,
)
from .test_admin import ADMIN_PORT, call
from .test_readme import recipe, twistdArgs
from .test_tls import sClient


def hello(port: int, line: bytes) -> socket.socket:
    """
    A connection to the server on C{port} that has sent C{line}.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(line)
    return sock


def readLine(sock: socket.socket) -> bytes:
    """
    The next line C{sock} receives (bounded by its timeout).
    """
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


class HelloEndToEndTests(SynchronousTestCase):
    """
    A real server with C{--client-id hello}.
    """

    def test_readmeNc(self) -> None:
        """The README's nc hello gets the reply, and the server logs the name and address."""
        if shutil.which("nc") is None:
            raise SkipTest("nc is not installed")
        port = freePort()
        args = twistdArgs(recipe("hello-server"), port)
        self.assertEqual(args[0], "-n")
        server = Twistd(self, *args[1:])
        server.listeningPort()
        result = subprocess.run(
            ["sh", "-c", recipe("hello-nc").replace("9527", str(port))],
            capture_output=True,
            timeout=WAIT,
            env=environment(),
        )
        self.assertRegex(result.stdout, rb"^response from server \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\n$")
        server.waitFor(r"identified agent-7 at 127\.0\.0\.1:\d+")
        server.waitFor(r"message from agent-7: hi")

    def test_takeover(self) -> None:
        """A second connection with the name replaces the first, which is closed and gets
        nothing more; the new one is answered."""
        server = localServer(self, "--client-id", "hello", "--handler", "echo")
        port = server.listeningPort()
        old = hello(port, b"hello agent:7\nfirst\n")
        self.addCleanup(old.close)
        self.assertEqual(readLine(old), b"first\n")
        oldPort = old.getsockname()[1]
        new = hello(port, b"hello agent:7\nsecond\n")
        self.addCleanup(new.close)
        self.assertEqual(readLine(new), b"second\n")
        self.assertEqual(readUntilClosed(old), b"")
        newPort = new.getsockname()[1]
        server.waitFor(
            rf"replaced agent:7 \(was 127\.0\.0\.1:{oldPort}, now 127\.0\.0\.1:{newPort}\)"
        )
        new.sendall(b"third\n")
        self.assertEqual(readLine(new), b"third\n")
        assertCleanLog(self, server.output())

    def test_adminByName(self) -> None:
        """The admin API shows a named client under its id, percent-encoded in the path, with
        its address; after a takeover its sends go to the new connection."""
        server = localServer(self, "--client-id", "hello", "--admin", "tcp:0:interface=127.0.0.1")
        port = server.listeningPort()
        admin = int(server.waitFor(ADMIN_PORT).group(1))
        old = hello(port, b"hello agent:7\n")
        self.addCleanup(old.close)
        server.waitFor("identified agent:7")
        status, client, _ = call(admin, "GET", "/clients/agent%3A7")
        self.assertEqual(status, 200)
        self.assertEqual(client["id"], "agent:7")
        self.assertEqual(client["peer"], f"127.0.0.1:{old.getsockname()[1]}")
        new = hello(port, b"hello agent:7\n")
        self.addCleanup(new.close)
        server.waitFor("replaced agent:7")
        status, body, _ = call(admin, "POST", "/clients/agent%3A7/messages", b"for the new")
        self.assertEqual(status, 200)
        self.assertEqual(readLine(new), b"for the new\n")
        self.assertEqual(readUntilClosed(old), b"")

    def test_refusedAtStart(self) -> None:
        """--client-id hello without tokens on every interface is refused, naming the options."""
        server = Twistd(self, "tcpcomm", "server", "-p", "0", "--client-id", "hello")
        self.assertNotEqual(server.process.wait(WAIT), 0)
        self.assertIn("--client-tokens", server.output())

    def test_tokenRemovedAtReload(self) -> None:
        """A token removed from --client-tokens disconnects its client at SIGHUP; the others
        stay; a tcpcomm client with --name and --token-file is identified."""
        folder = scratch(self)
        tokens = os.path.join(folder, "tokens")
        with open(tokens, "w") as f:
            f.write("a tok-a-1xq\nb tok-b-2xq\nagent-9 tok-9-9xq\n")
        with open(os.path.join(folder, "agent-9.token"), "w") as f:
            f.write("tok-9-9xq\n")
        server = Twistd(
            self,
            "tcpcomm",
            "server",
            "-p",
            "0",
            "-i",
            "127.0.0.1",
            "--client-id",
            "hello",
            "--client-tokens",
            tokens,
            "--handler",
            "echo",
            cwd=folder,
        )
        port = server.listeningPort()
        client = Twistd(
            self,
            "tcpcomm",
            "client",
            "--port",
            str(port),
            "--name",
            "agent-9",
            "--token-file",
            "agent-9.token",
            cwd=folder,
        )
        server.waitFor(r"identified agent-9 at 127\.0\.0\.1:\d+")
        server.waitFor(r"message from agent-9: hello server")
        wrong = hello(port, b"hello a wrong-7zq\n")
        self.addCleanup(wrong.close)
        self.assertEqual(readUntilClosed(wrong), b"error: wrong or missing token for a\n")
        a = hello(port, b"hello a tok-a-1xq\nping\n")
        self.addCleanup(a.close)
        b = hello(port, b"hello b tok-b-2xq\nping\n")
        self.addCleanup(b.close)
        self.assertEqual(readLine(a), b"ping\n")
        self.assertEqual(readLine(b), b"ping\n")
        with open(tokens, "w") as f:
            f.write("b tok-b-2xq\nagent-9 tok-9-9xq\n")
        signalWhenHandled(server.pid, signal.SIGHUP)
        self.assertEqual(readUntilClosed(a), b"")
        server.waitFor(r"disconnecting a: its token was removed or changed")
        b.sendall(b"pong\n")
        self.assertEqual(readLine(b), b"pong\n")
        output = server.output()
        for token in ("wrong-7zq", "tok-a-1xq", "tok-b-2xq", "tok-9-9xq"):
            self.assertNotIn(token, output)
        client.stop()
        assertCleanLog(self, server.output())


class TLSNameEndToEndTests(SynchronousTestCase):
    """
    C{--client-id tls} with the README's openssl-made certificates.
    """

    def test_commonNameIsId(self) -> None:
        """The client certificate's common name is the id the server logs messages under."""
        if shutil.which("openssl") is None:
            raise SkipTest("openssl is not installed")
        folder = scratch(self)
        made = subprocess.run(
            ["sh", "-e", "-c", recipe("certificates")],
            cwd=folder,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=WAIT * 2,
        )
        self.assertEqual(made.returncode, 0, made.stderr)
        port = freePort()
        serverArgs = twistdArgs(recipe("mtls-server"), port)
        server = Twistd(self, *serverArgs[1:], "--client-id", "tls", cwd=folder)
        server.listeningPort()
        Twistd(self, *twistdArgs(recipe("mtls-client"), port)[2:], cwd=folder)
        server.waitFor(r"secured 127\.0\.0\.1:\d+: certificate agent-7")
        server.waitFor(r"message from agent-7: hello server")
        assertCleanLog(self, server.output())

    def test_noUsableNameRefusedInHandshake(self) -> None:
        """A certificate whose common name is no client name fails the handshake, logged;
        the server goes on serving named clients."""
        folder = scratch(self)
        ca = Authority(folder, "test")
        serverCert, serverKey = ca.issue("localhost", ["localhost", "127.0.0.1"])
        badCert, badKey = ca.issue("Jane Doe", [], client=True)
        goodCert, goodKey = ca.issue("agent-8", [], client=True)
        server = Twistd(
            self,
            "tcpcomm",
            "server",
            "-p",
            "0",
            "-i",
            "127.0.0.1",
            "--reply-delay",
            "0",
            "--tls-cert",
            serverCert,
            "--tls-key",
            serverKey,
            "--tls-client-ca",
            ca.path,
            "--client-id",
            "tls",
        )
        port = server.listeningPort()
        tls = ("-CAfile", ca.path)
        output = sClient(
            self, port, *tls, "-cert", badCert, "-key", badKey, until=b"response from server"
        )
        self.assertNotIn(b"response from server", output)
        server.waitFor(r"refusing \S+: its certificate's common name 'Jane Doe' is not a usable id")
        server.waitFor(r"TLS handshake with 127\.0\.0\.1:\d+ failed")
        output = sClient(
            self, port, *tls, "-cert", goodCert, "-key", goodKey, until=b"response from server"
        )
        self.assertIn(b"response from server", output)
        server.waitFor(r"message from agent-8: hi")
        self.assertNotIn("message from 127.0.0.1", server.output())
