"""
TLS end to end: real twistd servers and clients, certificates minted by the
test, and OpenSSL's own client as an outside peer.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import time

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tcpcomm.client import ClientFactory, ClientStatus, RetryPolicy
from tcpcomm.handlers import Echo
from tcpcomm.options import Options
from tcpcomm.wire.framing import FRAMINGS
from tcpcomm.wire.protocol import FramedProtocol, Limits, MessageFactory, Refusal
from tcpcomm.wire.tls import clientCreator, serverOptions

from .certs import Authority
from .processes import WAIT, Twistd, assertCleanLog, environment, readUntilClosed, scratch
from .support import NOON, hubOf, makeHub
from .test_faults import readLine, waitForCount

OPENSSL = shutil.which("openssl")


def sClient(
    case: SynchronousTestCase, port: int, *args: str, until: bytes, timeout: float = WAIT
) -> bytes:
    """
    Run C{openssl s_client} against C{port}, send one line, and return what
    it printed once C{until} shows up, it exits, or C{timeout} passes.
    """
    if OPENSSL is None:
        raise SkipTest("openssl is not installed")
    process = subprocess.Popen(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-quiet", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=environment(),
    )
    output = b""
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(b"hi\n")
        process.stdin.flush()
        deadline = time.monotonic() + timeout
        while until not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    break
                output += chunk
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        process.wait(WAIT)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
    return output


class TLSTestCase(SynchronousTestCase):
    """
    A CA with a server certificate for this machine and a client certificate,
    and another CA with a client certificate of its own.
    """

    def setUp(self) -> None:
        self.folder = scratch(self)
        self.ca = Authority(self.folder, "test")
        self.serverCert, self.serverKey = self.ca.issue(
            "localhost", ["localhost", "127.0.0.1", "::1"]
        )
        self.clientCert, self.clientKey = self.ca.issue("agent-7", [], client=True)
        self.other = Authority(self.folder, "other")
        self.otherCert, self.otherKey = self.other.issue("intruder", [], client=True)

    def server(self, *args: str) -> tuple[Twistd, int]:
        process = Twistd(
            self,
            "tcpcomm",
            "server",
            "--port",
            "0",
            "--interface",
            "127.0.0.1",
            "--reply-delay",
            "0",
            "--tls-cert",
            self.serverCert,
            "--tls-key",
            self.serverKey,
            *args,
        )
        return process, process.listeningPort()


class ServerTLSTests(TLSTestCase):
    """
    --tls-cert serves TLS, and --tls-client-ca demands client certificates.
    """

    def test_openssl(self) -> None:
        """OpenSSL's client verifies the server, sends a line and reads the reply."""
        process, port = self.server()
        output = sClient(
            self,
            port,
            "-CAfile",
            self.ca.path,
            "-verify_return_error",
            until=b"response from server",
        )
        self.assertIn(b"response from server", output)
        process.waitFor(r"secured 127\.0\.0\.1:\d+: certificate None")
        process.waitFor(r"message from 127\.0\.0\.1:\d+: hi")

    def test_mutualAccepted(self) -> None:
        """With --tls-client-ca, a client certificate from that CA is accepted and its name logged."""
        process, port = self.server("--tls-client-ca", self.ca.path)
        output = sClient(
            self,
            port,
            "-CAfile",
            self.ca.path,
            "-cert",
            self.clientCert,
            "-key",
            self.clientKey,
            until=b"response from server",
        )
        self.assertIn(b"response from server", output)
        process.waitFor(r"secured 127\.0\.0\.1:\d+: certificate agent-7")

    def test_mutualWithoutCertificate(self) -> None:
        """With --tls-client-ca, a client without a certificate is refused in the handshake."""
        process, port = self.server("--tls-client-ca", self.ca.path)
        output = sClient(
            self, port, "-CAfile", self.ca.path, until=b"response from server", timeout=5
        )
        self.assertNotIn(b"response from server", output)
        process.waitFor(r"TLS handshake with 127\.0\.0\.1:\d+ failed")
        self.assertNotIn("message from", process.output())

    def test_mutualOtherCA(self) -> None:
        """With --tls-client-ca, a certificate from another CA is refused in the handshake."""
        process, port = self.server("--tls-client-ca", self.ca.path)
        output = sClient(
            self,
            port,
            "-CAfile",
            self.ca.path,
            "-cert",
            self.otherCert,
            "-key",
            self.otherKey,
            until=b"response from server",
            timeout=5,
        )
        self.assertNotIn(b"response from server", output)
        process.waitFor(r"TLS handshake with 127\.0\.0\.1:\d+ failed")
        self.assertNotIn("message from", process.output())

    def test_plainTCPToTLSPort(self) -> None:
        """Plain text to the TLS port gets no reply, and a TLS client is served meanwhile."""
        process, port = self.server()
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as plain:
            plain.sendall(b"hello, anybody there?\n")  # longer than a TLS record header
            output = sClient(
                self, port, "-CAfile", self.ca.path, "-verify_return_error", until=b"response"
            )
            self.assertIn(b"response from server", output)
            plain.settimeout(WAIT)
            received = b""
            try:
                while chunk := plain.recv(4096):
                    received += chunk
            except ConnectionResetError:
                pass
        self.assertNotIn(b"response", received)
        process.waitFor(r"TLS handshake with 127\.0\.0\.1:\d+ failed")
        assertCleanLog(self, process.output())

    def test_listenSSLString(self) -> None:
        """--listen takes an ssl: endpoint string."""
        process = Twistd(
            self,
            "tcpcomm",
            "server",
            "--reply-delay",
            "0",
            "--listen",
            f"ssl:0:interface=127.0.0.1:privateKey={self.serverKey}:certKey={self.serverCert}",
        )
        port = process.listeningPort()
        output = sClient(
            self, port, "-CAfile", self.ca.path, "-verify_return_error", until=b"response"
        )
        self.assertIn(b"response from server", output)

    def test_listenTLSDirectory(self) -> None:
        """--listen takes Twisted's tls: server string, a folder of PEM files chosen by SNI."""
        pems = os.path.join(self.folder, "pems")
        os.mkdir(pems)
        with open(os.path.join(pems, "localhost.pem"), "wb") as out:
            for path in (self.serverKey, self.serverCert):
                with open(path, "rb") as f:
                    out.write(f.read())
        process = Twistd(
            self,
            "tcpcomm",
            "server",
            "--reply-delay",
            "0",
            "--listen",
            f"tls:{pems}:port=0:interface=127.0.0.1",
        )
        port = process.listeningPort()
        output = sClient(
            self,
            port,
            "-CAfile",
            self.ca.path,
            "-servername",
            "localhost",
            "-verify_return_error",
            until=b"response",
        )
        self.assertIn(b"response from server", output)


class ClientTLSTests(TLSTestCase):
    """
    The client's --tls verifies the server and can present a certificate.
    """

    def client(self, port: int, *args: str) -> Twistd:
        return Twistd(
            self,
            "tcpcomm",
            "client",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reply-delay",
            "0.2",
            "--retry-initial",
            "0.2",
            "--retry-max",
            "1",
            *args,
        )

    def test_mutual(self) -> None:
        """A tcpcomm client with a certificate from the CA talks to an mTLS server."""
        server, port = self.server("--tls-client-ca", self.ca.path, "--reply-delay", "0.2")
        client = self.client(
            port,
            "--tls",
            "--tls-ca",
            self.ca.path,
            "--tls-cert",
            self.clientCert,
            "--tls-key",
            self.clientKey,
        )
        server.waitFor(r"secured 127\.0\.0\.1:\d+: certificate agent-7")
        server.waitFor(r"message from 127\.0\.0\.1:\d+: hello server")
        client.waitFor(rf"secured 127\.0\.0\.1:{port}: certificate localhost")
        client.waitFor(rf"message from 127\.0\.0\.1:{port}: response from server")

    def test_wrongHostName(self) -> None:
        """The client refuses a server whose certificate is for another host name, and retries."""
        cert, key = self.ca.issue("elsewhere", ["elsewhere.example"])
        process = Twistd(
            self,
            "tcpcomm",
            "server",
            "--port",
            "0",
            "--interface",
            "127.0.0.1",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        )
        port = process.listeningPort()
        client = self.client(port, "--tls", "--tls-ca", self.ca.path)
        first = client.waitFor(rf"TLS handshake with 127\.0\.0\.1:{port} failed: .*")
        client.waitFor(rf"TLS handshake with 127\.0\.0\.1:{port} failed", after=first.end())
        self.assertNotIn("message from", client.output())
        self.assertNotIn("message from", process.output())

    def test_untrustedServer(self) -> None:
        """A server whose certificate no trusted CA signed is refused."""
        process, port = self.server()
        client = self.client(port, "--tls", "--tls-ca", self.other.path)
        client.waitFor(rf"TLS handshake with 127\.0\.0\.1:{port} failed")
        self.assertNotIn("message from", client.output())

    def test_connectTLSString(self) -> None:
        """--connect takes Twisted's tls: client string."""
        roots = os.path.join(self.folder, "roots")
        os.mkdir(roots)
        shutil.copy(self.ca.path, roots)
        server, port = self.server("--reply-delay", "0.2")
        client = Twistd(
            self,
            "tcpcomm",
            "client",
            "--reply-delay",
            "0.2",
            "--connect",
            f"tls:127.0.0.1:{port}:trustRoots={roots}",
        )
        client.waitFor(rf"message from 127\.0\.0\.1:{port}: response from server")


class TLSOptionsTests(TLSTestCase):
    """
    TLS options are checked when parsed, naming the option and the file.
    """

    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_missingFile(self) -> None:
        """A certificate file that does not exist is named."""
        error = self.assertRaises(
            UsageError, self.parse, "server", "--tls-cert", "/nonexistent.pem"
        )
        self.assertIn("--tls-cert '/nonexistent.pem'", str(error))

    def test_notACertificate(self) -> None:
        """A key given as the certificate is refused."""
        error = self.assertRaises(UsageError, self.parse, "server", "--tls-cert", self.serverKey)
        self.assertIn("holds no PEM certificate", str(error))

    def test_keyMismatch(self) -> None:
        """A key that does not belong to the certificate is refused."""
        error = self.assertRaises(
            UsageError,
            self.parse,
            "server",
            "--tls-cert",
            self.serverCert,
            "--tls-key",
            self.clientKey,
        )
        self.assertIn("--tls-key", str(error))

    def test_needsCertificate(self) -> None:
        """--tls-key and --tls-client-ca without --tls-cert are refused."""
        for option in ("--tls-key", "--tls-client-ca"):
            error = self.assertRaises(UsageError, self.parse, "server", option, self.serverKey)
            self.assertIn("needs --tls-cert", str(error))

    def test_clientNeedsTLS(self) -> None:
        """The client's --tls-ca without --tls is refused."""
        error = self.assertRaises(UsageError, self.parse, "client", "--tls-ca", self.ca.path)
        self.assertIn("needs --tls", str(error))

    def test_listenAndTLSCert(self) -> None:
        """--tls-cert with --listen is refused, pointing at ssl: strings."""
        error = self.assertRaises(
            UsageError, self.parse, "server", "--listen", "tcp:0", "--tls-cert", self.serverCert
        )
        self.assertIn("ssl:", str(error))

    def test_keyInCertificateFile(self) -> None:
        """Without --tls-key the key is read from the certificate file."""
        both = os.path.join(self.folder, "both.pem")
        with open(both, "wb") as out:
            for path in (self.serverCert, self.serverKey):
                with open(path, "rb") as f:
                    out.write(f.read())
        self.assertIsNotNone(self.parse("server", "--tls-cert", both).subOptions["tls"])


def dial(case: SynchronousTestCase, port: int) -> socket.socket:
    """
    A bare TCP connection to C{port} that never starts TLS, closed after the test.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    case.addCleanup(sock.close)
    return sock


def secondsUntilClosed(sock: socket.socket) -> float:
    """
    How long C{sock} stays open without receiving anything (bounded by L{WAIT}).
    """
    started = time.monotonic()
    try:
        received = readUntilClosed(sock)
    except ConnectionResetError:
        received = b""
    if received:
        raise AssertionError(f"received {received!r} before closing")
    return time.monotonic() - started


class HandshakeDeadlineTests(TLSTestCase):
    """
    Connections that never finish their TLS handshake are dropped after
    --handshake-timeout, on both sides, and never lock clients out.
    """

    def tlsClient(self, port: int) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=self.ca.path)
        sock = context.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=WAIT),
            server_hostname="127.0.0.1",
        )
        self.addCleanup(sock.close)
        return sock

    def assertServed(self, sock: ssl.SSLSocket) -> None:
        sock.sendall(b"hi\n")
        self.assertTrue(readLine(sock).startswith(b"response from server"))

    def test_bareTCPDropped(self) -> None:
        """A bare TCP connection to a TLS port is dropped and logged once --handshake-timeout has passed."""
        process, port = self.server("--handshake-timeout", "1")
        elapsed = secondsUntilClosed(dial(self, port))
        self.assertGreater(elapsed, 0.8)
        self.assertLess(elapsed, 9)  # 1 s, with a wide margin for a busy machine
        process.waitFor(
            r"disconnecting 127\.0\.0\.1:\d+: the TLS handshake did not finish within 1\.0 s "
            r"\(--handshake-timeout\)"
        )
        process.waitFor(r"lost 127\.0\.0\.1:\d+")
        self.assertNotIn("TLS handshake with", process.output())  # logged once, as a timeout
        assertCleanLog(self, process.output())

    def test_halfOpenDoNotLockOut(self) -> None:
        """With --max-connections filled by bare TCP connections, a TLS client gets in at once, the rest go at --handshake-timeout, and then another gets in."""
        process, port = self.server("--max-connections", "2", "--handshake-timeout", "2")
        oldest, other = dial(self, port), dial(self, port)
        waitForCount(process, r"connected 127\.0\.0\.1:\d+", 2)
        self.assertServed(self.tlsClient(port))
        process.waitFor(r"event=handshake-evicted|to make room: --max-connections 2 reached")
        self.assertLess(secondsUntilClosed(oldest), 1.5)  # made room at once
        self.assertLess(secondsUntilClosed(other), 9)  # its line may be held back by the rate limit
        self.assertServed(self.tlsClient(port))
        self.assertNotIn("refusing", process.output())
        assertCleanLog(self, process.output())

    def test_refusedBareTCPDropped(self) -> None:
        """A bare TCP connection to a full TLS server, which waits for a handshake to be told so, is dropped at --handshake-timeout."""
        process, port = self.server("--max-connections", "1", "--handshake-timeout", "1")
        client = self.tlsClient(port)
        self.assertServed(client)
        elapsed = secondsUntilClosed(dial(self, port))
        self.assertGreater(elapsed, 0.8)
        self.assertLess(elapsed, 9)
        process.waitFor(r"refusing 127\.0\.0\.1:\d+: --max-connections 1 reached")
        process.waitFor(r"the TLS handshake did not finish within 1\.0 s")
        self.assertServed(client)

    def test_clientGivesUpOnSilentServer(self) -> None:
        """A client whose server accepts TCP but never answers TLS drops the connection at --handshake-timeout and tries again."""
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)  # the kernel accepts; nobody ever answers
            port = listener.getsockname()[1]
            client = Twistd(
                self,
                "tcpcomm",
                "client",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--tls",
                "--tls-ca",
                self.ca.path,
                "--handshake-timeout",
                "1",
                "--retry-initial",
                "0.2",
                "--retry-max",
                "0.5",
            )
            pattern = rf"disconnecting 127\.0\.0\.1:{port}: the TLS handshake did not finish within 1\.0 s"
            first = client.waitFor(pattern)
            client.waitFor(pattern, after=first.end())
        self.assertNotIn("hello server", client.output())
        assertCleanLog(self, client.output())


class TLSProfileTests(TLSTestCase):
    """
    The server's TLS follows a modern profile: TLS 1.2 or newer with AEAD
    ciphers only, or TLS 1.3 only with --tls-min-version 1.3.
    """

    def test_cbcRefused(self) -> None:
        """A TLS 1.2 client offering only a CBC-SHA1 suite (ECDHE-ECDSA-AES128-SHA) is refused in the handshake."""
        process, port = self.server()
        output = sClient(
            self,
            port,
            "-CAfile",
            self.ca.path,
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-SHA",
            until=b"response from server",
            timeout=5,
        )
        self.assertNotIn(b"response from server", output)
        process.waitFor(r"TLS handshake with 127\.0\.0\.1:\d+ failed")
        self.assertNotIn("message from", process.output())

    def test_aeadAccepted(self) -> None:
        """TLS 1.2 clients offering one AEAD suite each (AES-GCM, ChaCha20-Poly1305) are served."""
        process, port = self.server()
        for suite in (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-CHACHA20-POLY1305",
        ):
            output = sClient(
                self,
                port,
                "-CAfile",
                self.ca.path,
                "-verify_return_error",
                "-tls1_2",
                "-cipher",
                suite,
                until=b"response from server",
            )
            self.assertIn(b"response from server", output, suite)

    def test_minVersion13(self) -> None:
        """With --tls-min-version 1.3, a TLS 1.2 client is refused and a TLS 1.3 one served."""
        process, port = self.server("--tls-min-version", "1.3")
        refused = sClient(
            self, port, "-CAfile", self.ca.path, "-tls1_2", until=b"response", timeout=5
        )
        self.assertNotIn(b"response from server", refused)
        process.waitFor(r"TLS handshake with 127\.0\.0\.1:\d+ failed")
        accepted = sClient(
            self, port, "-CAfile", self.ca.path, "-tls1_3", until=b"response from server"
        )
        self.assertIn(b"response from server", accepted)


class InMemoryTLSTestCase(SynchronousTestCase):
    """
    Real TLS in memory: tcpcomm's factories under Twisted's TLS layer, on a
    L{StringTransport} or an iosim pair, with a L{Clock}.
    """

    def setUp(self) -> None:
        folder = self.mktemp()
        os.makedirs(folder)
        self.ca = Authority(folder, "memory")
        self.cert, self.key = self.ca.issue("localhost", ["localhost"])
        self.clock = Clock()
        self.clock.advance(NOON)

    def serverFactory(self, **limits: float) -> MessageFactory:
        return MessageFactory(FRAMINGS["line"], makeHub(self.clock, handler=Echo), Limits(**limits))  # type: ignore[arg-type]

    def clientFactory(self, **limits: float) -> ClientFactory:
        return ClientFactory(
            FRAMINGS["line"],
            makeHub(self.clock),  # answers after 5 s
            Limits(**limits),  # type: ignore[arg-type]
            RetryPolicy(self.clock, 1, 30, 10),
            ClientStatus("server"),
        )

    def bare(
        self,
        factory: MessageFactory,
        port: int,
        context: CertificateOptions | IOpenSSLClientConnectionCreator | None = None,
        client: bool = False,
    ) -> tuple[TLSMemoryBIOProtocol, StringTransport]:
        """
        A TLS connection of C{factory} whose other end never answers.
        """
        tls = TLSMemoryBIOFactory(
            context or serverOptions(self.cert, self.key, None), client, factory, self.clock
        )
        address = IPv4Address("TCP", "127.0.0.1", port)
        protocol = tls.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def pair(
        self,
        server: MessageFactory,
        client: MessageFactory,
        serverContext: CertificateOptions | None = None,
        minVersion: str = "1.2",
    ) -> tuple[TLSMemoryBIOProtocol, TLSMemoryBIOProtocol, IOPump]:
        """
        A tcpcomm server and client connected over TLS in memory, the client
        verifying the server with the modern profile.
        """
        serverTLS = TLSMemoryBIOFactory(
            serverContext or serverOptions(self.cert, self.key, None), False, server, self.clock
        )
        creator = clientCreator("localhost", self.ca.path, None, None, minVersion)
        clientTLS = TLSMemoryBIOFactory(creator, True, client, self.clock)
        s, c, pump = connectedServerAndClient(
            lambda: serverTLS.buildProtocol(None),
            lambda: clientTLS.buildProtocol(None),
            clock=self.clock,
        )
        pump.flush(advanceClock=False)
        return s, c, pump


class ReadyDeadlineTests(InMemoryTLSTestCase):
    """
    A connection is not a session until its TLS handshake completes, and is
    dropped if that takes longer than --handshake-timeout.
    """

    def test_droppedAtDeadline(self) -> None:
        """A peer that never sends a TLS byte is aborted at --handshake-timeout, logged and counted, and was never a session."""
        factory = self.serverFactory(handshakeTimeout=10)
        protocol, transport = self.bare(factory, 1)
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(hubOf(factory).registry), 0)
        self.assertEqual(hubOf(factory).broadcast("news"), 0)
        with capturedLogs() as events:
            self.clock.advance(0.1)
            self.assertTrue(transport.disconnected)  # aborted
            protocol.connectionLost(Failure(ConnectionAborted()))
        self.assertEqual([e["event"] for e in events], ["handshake-timeout", "lost"])
        self.assertEqual(events[0]["peer"], "127.0.0.1:1")
        self.assertEqual(factory.stats.handshakeTimeouts, 1)
        self.assertEqual(hubOf(factory).stats.connectionsTotal, 0)
        self.assertEqual(factory.waiting, {})

    def test_zeroNeverDrops(self) -> None:
        """--handshake-timeout 0 leaves a handshake all the time it takes."""
        factory = self.serverFactory(handshakeTimeout=0)
        _, transport = self.bare(factory, 1)
        self.clock.advance(86400)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_handshakeStartsSession(self) -> None:
        """Once the handshake completes the peer becomes a session and its deadline is cancelled."""
        server = self.serverFactory(handshakeTimeout=10)
        client = self.clientFactory(handshakeTimeout=10)
        s, c, pump = self.pair(server, client)
        self.assertEqual(len(hubOf(server).registry), 1)
        self.assertEqual(len(client.hub.registry), 1)
        self.assertEqual(client.status.connections, 1)
        self.assertEqual(server.waiting, {})
        self.clock.advance(60)
        pump.flush(advanceClock=False)
        self.assertEqual(len(hubOf(server).registry), 1)
        self.assertEqual(server.stats.handshakeTimeouts, 0)
        [session] = client.hub.sessions()
        session.send("ping")
        pump.flush()  # advances the clock by 0: TLS writes wait for the next turn
        self.assertEqual(client.hub.stats.messagesIn, 1)  # the server echoed it

    def test_clientDropsSilentServer(self) -> None:
        """A client whose server never answers its handshake aborts at --handshake-timeout, and it does not count as connected."""
        factory = self.clientFactory(handshakeTimeout=5)
        creator = clientCreator("localhost", self.ca.path, None, None)
        protocol, transport = self.bare(factory, 9527, creator, client=True)
        self.assertTrue(transport.value())  # the ClientHello went out
        with capturedLogs() as events:
            self.clock.advance(5)
        self.assertTrue(transport.disconnected)
        self.assertEqual([e["event"] for e in events], ["handshake-timeout"])
        protocol.connectionLost(Failure(ConnectionAborted()))
        self.assertEqual(factory.status.connections, 0)
        self.assertEqual(len(hubOf(factory).registry), 0)

    def test_oldestEvictedWhenFull(self) -> None:
        """At --max-connections with peers still handshaking, a new connection takes the oldest one's place."""
        factory = self.serverFactory(maxConnections=2, handshakeTimeout=10)
        _, oldest = self.bare(factory, 1)
        self.clock.advance(1)
        _, younger = self.bare(factory, 2)
        with capturedLogs() as events:
            newest, _ = self.bare(factory, 3)
        self.assertTrue(oldest.disconnected)
        self.assertFalse(younger.disconnecting)
        self.assertIsInstance(newest.wrappedProtocol, FramedProtocol)
        self.assertEqual([e["event"] for e in events], ["handshake-evicted", "connected"])
        self.assertEqual(factory.stats.handshakeEvictions, 1)
        self.assertEqual(factory.stats.refused, 0)
        self.assertEqual(len(factory.waiting), 2)

    def test_refusalDroppedAtDeadline(self) -> None:
        """At --max-connections with sessions only, a new TLS peer is refused, and dropped at the deadline if it never handshakes."""
        server = self.serverFactory(maxConnections=1, handshakeTimeout=10)
        self.pair(server, self.clientFactory())
        self.assertEqual(len(hubOf(server).registry), 1)
        protocol, transport = self.bare(server, 2)
        self.assertIsInstance(protocol.wrappedProtocol, Refusal)
        self.clock.advance(10)
        self.assertTrue(transport.disconnected)
        self.assertEqual(server.stats.refused, 1)
        self.assertEqual(server.stats.handshakeTimeouts, 1)
        self.assertEqual(len(hubOf(server).registry), 1)


class ClientProfileTests(InMemoryTLSTestCase):
    """
    The client's --tls follows the same profile as the server.
    """

    def legacyServer(self, **options: object) -> CertificateOptions:
        identity = serverOptions(self.cert, self.key, None)
        return CertificateOptions(
            privateKey=identity.privateKey,
            certificate=identity.certificate,
            lowerMaximumSecurityTo=TLSVersion.TLSv1_2,
            **options,  # type: ignore[arg-type]
        )

    def test_refusesCBCServer(self) -> None:
        """A server that offers only ECDHE-ECDSA-AES128-SHA on TLS 1.2 is refused."""
        server, client = self.serverFactory(), self.clientFactory()
        context = self.legacyServer(
            acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString("ECDHE-ECDSA-AES128-SHA")
        )
        self.pair(server, client, context)
        self.assertEqual(len(client.hub.registry), 0)
        self.assertEqual(client.status.connections, 0)

    def test_tls12ServerAccepted(self) -> None:
        """A TLS 1.2 server with AEAD suites is accepted by default."""
        server, client = self.serverFactory(), self.clientFactory()
        self.pair(server, client, self.legacyServer())
        self.assertEqual(len(client.hub.registry), 1)

    def test_minVersion13RefusesTLS12Server(self) -> None:
        """With --tls-min-version 1.3 the client refuses a TLS 1.2 server."""
        server, client = self.serverFactory(), self.clientFactory()
        self.pair(server, client, self.legacyServer(), minVersion="1.3")
        self.assertEqual(len(client.hub.registry), 0)


class ProfileOptionsTests(TLSTestCase):
    """
    --handshake-timeout and --tls-min-version are checked when parsed.
    """

    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self) -> None:
        """Both sides default to a 10 s handshake deadline and TLS 1.2 or newer."""
        for side in ("server", "client"):
            options = self.parse(side).subOptions
            self.assertEqual(
                (options["handshake-timeout"], options["tls-min-version"]), (10.0, "1.2")
            )

    def test_badValues(self) -> None:
        """A bad --handshake-timeout or --tls-min-version is refused, naming the option and the value."""
        for args, text in [
            (("--handshake-timeout", "-1"), "--handshake-timeout must be a number >= 0, not '-1'"),
            (
                ("--handshake-timeout", "soon"),
                "--handshake-timeout must be a number >= 0, not 'soon'",
            ),
            (("--tls-min-version", "1.1"), "--tls-min-version must be one of 1.2, 1.3; not '1.1'"),
        ]:
            for side in ("server", "client"):
                error = self.assertRaises(UsageError, self.parse, side, *args)
                self.assertIn(text, str(error))

    def test_minVersionNeedsTLS(self) -> None:
        """--tls-min-version 1.3 without the TLS it applies to is refused rather than ignored."""
        for args, text in [
            (("server",), "--tls-min-version '1.3' needs --tls-cert"),
            (("server", "--listen", "tcp:0"), "not to --listen endpoint strings"),
            (("client",), "--tls-min-version '1.3' needs --tls"),
            (("client", "--connect", "tcp:host=127.0.0.1:port=1"), "not to --connect endpoint"),
        ]:
            error = self.assertRaises(UsageError, self.parse, *args, "--tls-min-version", "1.3")
            self.assertIn(text, str(error))
