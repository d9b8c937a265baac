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
import subprocess
import time

from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.usage import UsageError
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tcpcomm.client import ClientFactory, ClientStatus, RetryPolicy
from tcpcomm.framing import FRAMINGS
from tcpcomm.handlers import Echo
from tcpcomm.options import Options
from tcpcomm.protocol import Limits, MessageFactory
from tcpcomm.tls import clientCreator, serverOptions

from .certs import Authority
from .processes import WAIT, Twistd, assertCleanLog, environment, scratch
from .support import NOON, makeHub

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
    Real TLS in memory: tcpcomm's factories under Twisted's TLS layer, on an
    iosim pair, with a L{Clock}.
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
    --tls-min-version is checked when parsed.
    """

    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_badValues(self) -> None:
        """A bad --tls-min-version is refused, naming the option and the value."""
        for args, text in [
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
