"""
Tests for L{tcpcomm.hub.identity}: hellos, names, tokens, takeover and
flapping, on a L{StringTransport} and a L{Clock}.
"""

from __future__ import annotations

import hashlib
from unittest import mock

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.control.metrics import HubCollector
from tcpcomm.handlers import Echo
from tcpcomm.hub import identity
from tcpcomm.hub.hub import Hub
from tcpcomm.hub.identity import ClientTokens, HelloIdentity, parseHello, tlsIdentity
from tcpcomm.options import ClientOptions, ServerOptions
from tcpcomm.tokens import TokenFileError, isName, readClientTokens
from tcpcomm.wire.framing import FRAMINGS
from tcpcomm.wire.protocol import FramedProtocol, Limits, MessageFactory

from .support import NOON, makeHub

SHA = "sha256:" + hashlib.sha256(b"s3cret").hexdigest()


def helloServer(
    tokens: dict[str, str] | None = None, timeout: float = 10.0, framing: str = "line"
) -> tuple[Hub, MessageFactory, Clock]:
    """
    A server hub with C{--client-id hello} that echoes, and its factory.
    """
    clock = Clock()
    clock.advance(NOON)
    hub = makeHub(clock, delay=0, handler=Echo)
    hub.identify = HelloIdentity(hub, timeout, None if tokens is None else ClientTokens(tokens))
    factory = MessageFactory(FRAMINGS[framing], hub, Limits(maxConnections=10))
    return hub, factory, clock


def dial(factory: MessageFactory, port: int = 40000) -> tuple[FramedProtocol, StringTransport]:
    """
    A client connected from C{127.0.0.1:port}.
    """
    address = IPv4Address("TCP", "127.0.0.1", port)
    protocol = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport


class NameTests(SynchronousTestCase):
    """
    Names are 1 to 128 characters from a small set; hellos have one form.
    """

    def test_valid(self) -> None:
        """Letters, digits and . _ - @ : make a name, up to 128 characters."""
        for name in ["a", "agent:7", "dev-1.eu_west@site", "x" * 128]:
            self.assertTrue(isName(name), name)

    def test_invalid(self) -> None:
        """Empty, too long, spaces, slashes, non-ASCII and newlines are not names."""
        for name in ["", "x" * 129, "a b", "a/b", "é", "a\n", "a%3A"]:
            self.assertFalse(isName(name), name)

    def test_parseHello(self) -> None:
        """hello NAME and hello NAME TOKEN parse; anything else does not."""
        self.assertEqual(parseHello("hello a"), ("a", None))
        self.assertEqual(parseHello("hello a t"), ("a", "t"))
        for text in ["hello", "hello a t x", "HELLO a", "hi a", "hello  a", ""]:
            self.assertIsNone(parseHello(text), text)


class TokenTests(SynchronousTestCase):
    """
    Tokens, plain or hashed, compared in constant time.
    """

    def test_plain(self) -> None:
        """A plain token matches only itself, and only for its name."""
        tokens = ClientTokens({"a": "s3cret"})
        self.assertTrue(tokens.check("a", "s3cret"))
        self.assertFalse(tokens.check("a", "s3cre"))
        self.assertFalse(tokens.check("a", None))
        self.assertFalse(tokens.check("b", "s3cret"))

    def test_sha256(self) -> None:
        """A sha256: entry matches the token whose digest it holds."""
        tokens = ClientTokens({"a": SHA})
        self.assertTrue(tokens.check("a", "s3cret"))
        self.assertFalse(tokens.check("a", SHA))
        self.assertFalse(tokens.check("a", "other"))

    def test_constantTime(self) -> None:
        """Both forms are compared with hmac.compare_digest."""
        for entry in ["s3cret", SHA]:
            with mock.patch.object(
                identity.hmac, "compare_digest", wraps=identity.hmac.compare_digest
            ) as compare:
                ClientTokens({"a": entry}).check("a", "s3cret")
            self.assertEqual(compare.call_count, 1)

    def test_readFile(self) -> None:
        """Comments and blank lines are skipped; hex digests are kept in lower case."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# fleet\n\nagent:7 s3cret\nagent:8 " + SHA.upper().replace("SHA256", "sha256"))
        self.assertEqual(readClientTokens(path), {"agent:7": "s3cret", "agent:8": SHA})

    def test_badFiles(self) -> None:
        """A bad line is refused with its number and never its token."""
        for text, reason in [
            ("agent a b\n", "line 1 is not 'NAME TOKEN'"),
            ("a/b tok\n", "line 1: 'a/b' is not a name"),
            ("a t\na u\n", "line 2: 'a' is given a token twice"),
            ("a sha256:abc\n", "line 1: sha256: must be followed by 64 hexadecimal digits"),
            ("a tökén\n", "line 1: the token must be printable ASCII"),
        ]:
            path = self.mktemp()
            with open(path, "w") as f:
                f.write(text)
            with self.assertRaises(TokenFileError) as e:
                readClientTokens(path)
            self.assertIn(reason, str(e.exception))
            self.assertNotIn("tökén", str(e.exception))


class HelloTests(SynchronousTestCase):
    """
    The first message names the client; until then it is nobody.
    """

    def test_helloIdentifies(self) -> None:
        """After its hello a client is registered by its name, its address kept apart."""
        hub, factory, clock = helloServer()
        protocol, transport = dial(factory)
        self.assertEqual(len(hub.registry), 0)
        protocol.dataReceived(b"hello agent:7\n")
        session = hub.get("agent:7")
        assert session is not None
        self.assertEqual(session.id, "agent:7")
        self.assertEqual(session.address, "127.0.0.1:40000")
        self.assertEqual(protocol.id, "agent:7")
        self.assertEqual(transport.value(), b"")

    def test_lostLine(self) -> None:
        """The lost line of a named client has its name as peer and its address apart."""
        hub, factory, clock = helloServer()
        protocol, transport = dial(factory)
        protocol.dataReceived(b"hello a\n")
        with capturedLogs() as events:
            protocol.connectionLost()
        [lost] = [e for e in events if e.get("event") == "lost"]
        self.assertEqual((lost["peer"], lost["address"]), ("a", "127.0.0.1:40000"))
        self.assertEqual(len(hub.registry), 0)

    def test_helloNeverReachesHandler(self) -> None:
        """The hello is not echoed; the messages after it, in the same read, are."""
        hub, factory, clock = helloServer()
        protocol, transport = dial(factory)
        protocol.dataReceived(b"hello a\none\ntwo\n")
        self.assertEqual(transport.value(), b"one\ntwo\n")
        session = hub.get("a")
        assert session is not None
        self.assertEqual(session.messagesIn, 2)

    def test_sessionTakesOverTheFraming(self) -> None:
        """Once identified, the framing hands messages straight to the session."""
        hub, factory, clock = helloServer()
        protocol, transport = dial(factory)
        protocol.dataReceived(b"hello a\n")
        self.assertIs(protocol.conversation, hub.get("a"))

    def test_heartbeatsBeforeHello(self) -> None:
        """Empty messages before the hello are not taken for it."""
        hub, factory, clock = helloServer()
        protocol, transport = dial(factory)
        protocol.dataReceived(b"\n\nhello a\n")
        self.assertIn("a", hub.registry)

    def test_otherFramings(self) -> None:
        """The hello comes in the active framing: a netstring here."""
        hub, factory, clock = helloServer(framing="netstring")
        protocol, transport = dial(factory)
        protocol.dataReceived(b"7:hello a,2:hi,")
        self.assertIn("a", hub.registry)
        self.assertEqual(transport.value(), b"2:hi,")

    def assertRefused(
        self, data: bytes, reply: bytes, why: str, tokens: dict[str, str] | None = None
    ) -> None:
        hub, factory, clock = helloServer(tokens)
        protocol, transport = dial(factory)
        with capturedLogs() as events:
            protocol.dataReceived(data)
        self.assertEqual(transport.value(), b"error: " + reply + b"\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(hub.registry), 0)
        refused = [e for e in events if e.get("event") == "hello-refused"]
        self.assertEqual([e["why"] for e in refused], [why])
        self.assertEqual(refused[0]["address"], "127.0.0.1:40000")
        for event in refused:
            self.assertNotIn("s3cre", repr(event))

    def test_notAHello(self) -> None:
        """A first message that is not a hello is answered with an error, and closed."""
        self.assertRefused(b"hi\n", b"the first message must be: hello NAME [TOKEN]", "no-hello")

    def test_undecodable(self) -> None:
        """A first message that is not UTF-8 is refused the same way."""
        self.assertRefused(b"\xff\n", b"the first message must be: hello NAME [TOKEN]", "no-hello")

    def test_invalidName(self) -> None:
        """An invalid name is refused at once."""
        self.assertRefused(
            b"hello a/b\n",
            b"invalid name; a name is 1 to 128 characters from A-Z a-z 0-9 . _ - @ :",
            "invalid-name",
        )

    def test_wrongToken(self) -> None:
        """With tokens, a wrong token is refused, and neither token is logged."""
        self.assertRefused(
            b"hello a s3crex\n", b"wrong or missing token for a", "wrong-token", {"a": "s3cret"}
        )

    def test_missingToken(self) -> None:
        """With tokens, a hello without one is refused."""
        self.assertRefused(b"hello a\n", b"wrong or missing token for a", "wrong-token", {"a": SHA})

    def test_rightToken(self) -> None:
        """With tokens, the right one (hashed in the file) identifies."""
        hub, factory, clock = helloServer({"a": SHA})
        protocol, transport = dial(factory)
        protocol.dataReceived(b"hello a s3cret\n")
        self.assertIn("a", hub.registry)

    def test_timeout(self) -> None:
        """No hello within --hello-timeout: one error message, then closed; logged."""
        hub, factory, clock = helloServer(timeout=10)
        protocol, transport = dial(factory)
        clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        with capturedLogs() as events:
            clock.advance(0.1)
        self.assertEqual(transport.value(), b"error: no hello within 10 s (--hello-timeout)\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual([e["why"] for e in events if "why" in e], ["hello-timeout"])

    def test_noTimerOnceIdentified(self) -> None:
        """The hello's deadline goes once identified: no timer is left."""
        hub, factory, clock = helloServer(timeout=10)
        protocol, transport = dial(factory)
        protocol.dataReceived(b"hello a\n")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_waitingCountsAgainstTheLimit(self) -> None:
        """Connections still to say hello count against --max-connections, and stop once gone."""
        hub, factory, clock = helloServer()
        protocol, transport = dial(factory)
        self.assertEqual(hub.connectionCount(), 1)
        protocol.dataReceived(b"hello a\n")
        self.assertEqual(hub.connectionCount(), 1)
        other, otherTransport = dial(factory, 40001)
        self.assertEqual(hub.connectionCount(), 2)
        other.dataReceived(b"nope\n")
        other.connectionLost()
        self.assertEqual(hub.connectionCount(), 1)


class TakeoverTests(SynchronousTestCase):
    """
    A second connection with a connected name replaces the first.
    """

    def test_newestWins(self) -> None:
        """The old connection is closed, logged and counted; the name is the new one's."""
        hub, factory, clock = helloServer()
        old, oldTransport = dial(factory, 40000)
        old.dataReceived(b"hello a\n")
        new, newTransport = dial(factory, 40001)
        with capturedLogs() as events:
            new.dataReceived(b"hello a\n")
        self.assertTrue(oldTransport.disconnecting)
        self.assertIs(hub.get("a"), new.conversation)
        self.assertEqual(hub.stats.takeovers, 1)
        [line] = [e for e in events if e.get("event") == "replaced"]
        self.assertEqual(line["peer"], "a")
        self.assertEqual(line["oldAddress"], "127.0.0.1:40000")
        self.assertEqual(line["address"], "127.0.0.1:40001")

    def test_watchersTold(self) -> None:
        """Watchers (the admin API's events) see the old connection lost as replaced."""
        hub, factory, clock = helloServer()
        seen: list[tuple[str, str, str]] = []
        hub.watchers.append(lambda kind, session, text: seen.append((kind, session.address, text)))
        old, oldTransport = dial(factory, 40000)
        old.dataReceived(b"hello a\n")
        new, newTransport = dial(factory, 40001)
        new.dataReceived(b"hello a\n")
        old.connectionLost()
        self.assertEqual(
            seen,
            [
                ("connected", "127.0.0.1:40000", ""),
                ("connected", "127.0.0.1:40001", ""),
                ("lost", "127.0.0.1:40000", "replaced by 127.0.0.1:40001"),
            ],
        )
        self.assertEqual(hub._replacedBy, {})

    def test_metric(self) -> None:
        """Takeovers are counted in the metrics."""
        hub, factory, clock = helloServer()
        for port in (40000, 40001, 40002):
            protocol, transport = dial(factory, port)
            protocol.dataReceived(b"hello a\n")
        [metric] = [m for m in HubCollector(hub).collect() if m.name == "tcpcomm_takeovers"]
        self.assertEqual(metric.samples[0].value, 2)

    def test_oldNeverGetsNewMessages(self) -> None:
        """Once replaced, the old connection leaving does not unregister the new one,
        and what is sent to the name goes to the new one only."""
        hub, factory, clock = helloServer()
        old, oldTransport = dial(factory, 40000)
        old.dataReceived(b"hello a\n")
        new, newTransport = dial(factory, 40001)
        new.dataReceived(b"hello a\n")
        oldTransport.clear()
        old.dataReceived(b"late\n")  # read after it was closed: dropped
        old.connectionLost()
        session = hub.get("a")
        assert session is not None
        session.send("for a")
        self.assertEqual(hub.broadcast("all"), 1)
        self.assertEqual(oldTransport.value(), b"")
        self.assertEqual(newTransport.value(), b"for a\nall\n")

    def test_flapping(self) -> None:
        """More than 5 takeovers of one name in a minute are logged as flapping, once."""
        hub, factory, clock = helloServer()
        warnings = []
        with capturedLogs() as events:
            for i in range(8):
                protocol, transport = dial(factory, 40000 + i)
                protocol.dataReceived(b"hello a\n")
                clock.advance(5)
            warnings = [e for e in events if e.get("event") == "flapping"]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["peer"], "a")
        self.assertEqual(warnings[0]["count"], 6)

    def test_slowTakeoversAreNotFlapping(self) -> None:
        """Takeovers further apart than a minute's worth are not flapping."""
        hub, factory, clock = helloServer()
        with capturedLogs() as events:
            for i in range(10):
                protocol, transport = dial(factory, 40000 + i)
                protocol.dataReceived(b"hello a\n")
                clock.advance(15)
        self.assertEqual([e for e in events if e.get("event") == "flapping"], [])

    def test_quietNamesForgotten(self) -> None:
        """A name not taken over for a minute is forgotten at the next takeover of any."""
        hub, factory, clock = helloServer()
        for name in [b"a", b"a", b"b", b"b"]:
            protocol, transport = dial(factory)
            protocol.dataReceived(b"hello " + name + b"\n")
        clock.advance(61)
        for name in [b"c", b"c"]:
            protocol, transport = dial(factory)
            protocol.dataReceived(b"hello " + name + b"\n")
        self.assertEqual(list(hub._takeovers), ["c"])


class ConfigTests(SynchronousTestCase):
    """
    The identity options are config file keys like any other.
    """

    def test_keys(self) -> None:
        """client-id, hello-timeout and client-tokens set in [server] apply."""
        tokens = self.mktemp()
        with open(tokens, "w") as f:
            f.write("a s3cret\n")
        config = self.mktemp()
        with open(config, "w") as f:
            f.write(
                f'[server]\nclient-id = "hello"\nhello-timeout = 3\nclient-tokens = "{tokens}"\n'
                '[client]\nname = "agent:7"\n'
            )
        server = ServerOptions()
        server.parseOptions(["--config", config])
        self.assertEqual((server["client-id"], server["hello-timeout"]), ("hello", 3.0))
        self.assertEqual(server["client-token-table"], ClientTokens({"a": "s3cret"}))
        client = ClientOptions()
        client.parseOptions(["--config", config])
        self.assertEqual(client["hello"], "hello agent:7")


class TokenReloadTests(SynchronousTestCase):
    """
    A reload of --client-tokens disconnects clients whose token went.
    """

    def test_removedOrChanged(self) -> None:
        """Removed and changed tokens disconnect their clients; kept ones stay."""
        hub, factory, clock = helloServer({"a": "1", "b": "2", "c": "3"})
        transports = {}
        for i, (name, token) in enumerate([("a", "1"), ("b", "2"), ("c", "3")]):
            protocol, transports[name] = dial(factory, 40000 + i)
            protocol.dataReceived(f"hello {name} {token}\n".encode())
        helloIdentity = hub.identify
        assert isinstance(helloIdentity, HelloIdentity)
        with capturedLogs() as events:
            helloIdentity.setTokens(ClientTokens({"a": "1", "b": "22"}))
        self.assertEqual(
            {n: t.disconnecting for n, t in transports.items()}, {"a": False, "b": True, "c": True}
        )
        self.assertEqual(
            sorted(e["peer"] for e in events if e.get("event") == "token-revoked"), ["b", "c"]
        )


class TLSIdentityTests(SynchronousTestCase):
    """
    C{--client-id tls}: the certificate's common name is the id.
    """

    def tlsSession(self, subject: str | None) -> tuple[Hub, FramedProtocol, StringTransport]:
        clock = Clock()
        hub = makeHub(clock)
        hub.identify = tlsIdentity
        factory = MessageFactory(FRAMINGS["line"], hub, Limits())
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        protocol = factory.buildProtocol(address)
        # What the handshake found, before the connection is ready.
        protocol.tlsSubject = subject
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return hub, protocol, transport

    def test_commonNameIsId(self) -> None:
        """A usable common name becomes the id."""
        hub, protocol, transport = self.tlsSession("device-1")
        self.assertIn("device-1", hub.registry)

    def test_noUsableName(self) -> None:
        """No common name, or one that is not a name, is logged and dropped."""
        for subject in [None, "Jane Doe"]:
            with capturedLogs() as events:
                hub, protocol, transport = self.tlsSession(subject)
            self.assertEqual(len(hub.registry), 0)
            self.assertTrue(transport.disconnecting)
            self.assertEqual([e["subject"] for e in events if "subject" in e], [subject])


class ClientHelloTests(SynchronousTestCase):
    """
    The client sends its hello first, before its greeting.
    """

    def test_helloBeforeGreeting(self) -> None:
        """On every connection the hello goes before the greeting, uncounted."""
        clock = Clock()
        hub = makeHub(clock, greeting="hi there")
        hub.hello = b"hello agent:7 tok"
        factory = MessageFactory(FRAMINGS["line"], hub, Limits())
        for port in (40000, 40001):
            protocol, transport = dial(factory, port)
            self.assertEqual(transport.value(), b"hello agent:7 tok\nhi there\n")
            session = hub.get(protocol.id)
            assert session is not None
            self.assertEqual(session.messagesOut, 1)
            protocol.connectionLost()


class IdentityOptionTests(SynchronousTestCase):
    """
    The options refuse identities that cannot work, naming option and value.
    """

    def refused(self, options: usage.Options, argv: list[str]) -> str:
        with self.assertRaises(usage.UsageError) as e:
            options.parseOptions(argv)
        return str(e.exception)

    def test_defaults(self) -> None:
        """--client-id is address, --hello-timeout 10 s, no tokens."""
        options = ServerOptions()
        options.parseOptions([])
        self.assertEqual(
            (options["client-id"], options["hello-timeout"], options["client-token-table"]),
            ("address", 10.0, None),
        )

    def test_badChoice(self) -> None:
        """An unknown --client-id names the option and the value."""
        self.assertIn("--client-id", self.refused(ServerOptions(), ["--client-id", "cn"]))

    def test_tlsNeedsClientCA(self) -> None:
        """--client-id tls without --tls-client-ca is refused."""
        self.assertIn("--tls-client-ca", self.refused(ServerOptions(), ["--client-id", "tls"]))

    def test_helloNotRaw(self) -> None:
        """--client-id hello cannot be used with --framing raw."""
        message = self.refused(
            ServerOptions(), ["--client-id", "hello", "--framing", "raw", "-i", "127.0.0.1"]
        )
        self.assertIn("--framing raw", message)

    def test_helloWithoutTokensOnlyLocally(self) -> None:
        """Without tokens, hello needs every listener on loopback or a UNIX socket."""
        self.assertIn("--client-tokens", self.refused(ServerOptions(), ["--client-id", "hello"]))
        message = self.refused(
            ServerOptions(),
            ["--client-id", "hello", "--listen", "unix:/tmp/x.sock", "--listen", "tcp:1"],
        )
        self.assertIn("--client-tokens", message)
        for argv in [
            ["-i", "127.0.0.1"],
            ["-i", "::1"],
            ["--listen", "unix:/tmp/x.sock", "--listen", "tcp:1:interface=127.0.0.1"],
        ]:
            options = ServerOptions()
            options.parseOptions(["--client-id", "hello", *argv])

    def test_tokensFile(self) -> None:
        """With tokens, hello may listen anywhere; a bad file names the option."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("a s3cret\n")
        options = ServerOptions()
        options.parseOptions(["--client-id", "hello", "--client-tokens", path])
        self.assertEqual(options["client-token-table"], ClientTokens({"a": "s3cret"}))
        message = self.refused(
            ServerOptions(), ["--client-id", "hello", "--client-tokens", path + ".missing"]
        )
        self.assertIn(f"--client-tokens {path + '.missing'!r}: cannot read it", message)
        self.assertIn("--client-id hello", self.refused(ServerOptions(), ["--client-tokens", path]))

    def test_clientName(self) -> None:
        """--name and --token-file make the client's hello."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("s3cret\n")
        options = ClientOptions()
        options.parseOptions(["--name", "agent:7", "--token-file", path])
        self.assertEqual(options["hello"], "hello agent:7 s3cret")
        options = ClientOptions()
        options.parseOptions([])
        self.assertIsNone(options["hello"])

    def test_clientBadName(self) -> None:
        """A bad --name, a --token-file alone or a bad one is refused, naming the option."""
        self.assertIn("--name 'a b'", self.refused(ClientOptions(), ["--name", "a b"]))
        self.assertIn("needs --name", self.refused(ClientOptions(), ["--token-file", "x"]))
        message = self.refused(ClientOptions(), ["--name", "a", "--token-file", "/nonexistent"])
        self.assertIn("--token-file '/nonexistent': cannot read it", message)
