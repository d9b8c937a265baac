"""Tests for L{tcpcomm.handlers}: the built-in handlers and loading your own."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.handlers import BUILT_IN, Broadcast, Chat, Echo, HandlerNotFound, findHandler
from tcpcomm.hub.hub import Hub
from tcpcomm.interfaces import IHandler, IHub, ISession
from tcpcomm.options import Options

from .support import connect, makeHub


def hubWith(handler: object) -> tuple[Hub, list]:
    """
    A hub running C{handler} with three peers connected; each peer as
    (protocol, transport).
    """
    hub = makeHub(Clock(), handler=handler)  # type: ignore[arg-type]
    peers = []
    for port in (1, 2, 3):
        protocol, transport, _, _ = connect(port=port, hub=hub)
        peers.append((protocol, transport))
    return hub, peers


class BuiltInTests(SynchronousTestCase):
    """
    echo, broadcast and chat do what ncat users expect.
    """

    def test_echo(self) -> None:
        """echo sends each message straight back, to its sender only."""
        hub, peers = hubWith(Echo)
        (one, oneWire), (_, twoWire), _ = peers
        one.dataReceived("héllo\n".encode())
        self.assertEqual(oneWire.value(), "héllo\n".encode())
        self.assertEqual(twoWire.value(), b"")

    def test_broadcast(self) -> None:
        """broadcast relays each message to every other peer, not back to its sender."""
        hub, peers = hubWith(Broadcast)
        (one, oneWire), (_, twoWire), (_, threeWire) = peers
        one.dataReceived(b"news\n")
        self.assertEqual(oneWire.value(), b"")
        self.assertEqual(twoWire.value(), b"news\n")
        self.assertEqual(threeWire.value(), b"news\n")

    def test_chat(self) -> None:
        """chat relays each message after the sender's id."""
        hub, peers = hubWith(Chat)
        (one, _), (_, twoWire), _ = peers
        one.dataReceived(b"hi all\n")
        self.assertEqual(twoWire.value(), b"127.0.0.1:1: hi all\n")

    def test_builtInsProvideInterface(self) -> None:
        """Every built-in handler provides IHandler."""
        for name, factory in BUILT_IN.items():
            self.assertTrue(IHandler.providedBy(factory(makeHub(Clock()))), name)


class FailingHandler:
    """
    A user handler with a bug.
    """

    def __init__(self, hub: IHub) -> None:
        self.hub = hub

    def connected(self, session: ISession) -> None:
        pass

    def messageReceived(self, session: ISession, text: str) -> None:
        if text == "boom":
            raise RuntimeError("the handler broke")
        session.send("ok")

    def disconnected(self, session: ISession, reason: object) -> None:
        raise KeyError("also broken")


class FailingHandlerTests(SynchronousTestCase):
    """
    A handler that raises is logged with its traceback; nothing else stops.
    """

    def test_raiseIsLoggedAndContained(self) -> None:
        """The failure is logged; the same connection and the others carry on."""
        hub, peers = hubWith(FailingHandler)
        (one, oneWire), (two, twoWire), _ = peers
        with capturedLogs() as events:
            one.dataReceived(b"boom\nfine\n")
            two.dataReceived(b"fine\n")
        failures = [e for e in events if e.get("log_failure")]
        self.assertEqual(len(failures), 1)
        self.assertEqual(failures[0]["event"], "handler-error")
        self.assertEqual(failures[0]["peer"], "127.0.0.1:1")
        self.assertIn("the handler broke", failures[0]["log_failure"].getTraceback())
        self.assertEqual(oneWire.value(), b"ok\n")
        self.assertEqual(twoWire.value(), b"ok\n")
        self.assertFalse(oneWire.disconnecting)
        self.assertEqual(hub.stats.handlerErrors, 1)
        self.flushLoggedErrors(RuntimeError)


class FindHandlerTests(SynchronousTestCase):
    """
    --handler takes a built-in name or package.module:factory.
    """

    def test_builtIn(self) -> None:
        """Built-in names map to their classes."""
        self.assertIs(findHandler("echo"), Echo)

    def test_userHandler(self) -> None:
        """A dotted module path and attribute load the user's factory."""
        self.assertIs(findHandler("tests.test_handlers:FailingHandler"), FailingHandler)

    def test_badPaths(self) -> None:
        """Each kind of bad name is refused with a message that names it."""
        for name, why in [
            ("nonsense", "neither a built-in"),
            ("no.such.module:Factory", "cannot import no.such.module"),
            ("tests.test_handlers:Missing", "has no Missing"),
            ("tests.test_handlers:BUILT_IN.x", "has no BUILT_IN.x"),
        ]:
            error = self.assertRaises(HandlerNotFound, findHandler, name)
            self.assertIn(repr(name), str(error))
            self.assertIn(why, str(error))

    def test_option(self) -> None:
        """--handler is checked when options are parsed."""
        options = Options()
        options.parseOptions(["server", "--handler", "chat"])
        self.assertIs(options.subOptions["handler"], Chat)
        error = self.assertRaises(
            UsageError, Options().parseOptions, ["server", "--handler", "nope:x"]
        )
        self.assertIn("--handler 'nope:x'", str(error))
