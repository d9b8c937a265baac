"""Tests for L{tcpcomm.options}: every option, its default, and refusals that name it."""

from __future__ import annotations

import os

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm.options import Options
from tcpcomm.server import systemBacklog
from tcpcomm.templates import Template

from .processes import scratch


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


class DefaultsTests(SynchronousTestCase):
    """
    The defaults are the original tutorial's behaviour.
    """

    def test_server(self) -> None:
        """The server listens on 9527 on every IPv4 address, with the system's longest backlog, and replies after 5 s."""
        sub = parse("server").subOptions
        backlog = systemBacklog()
        self.assertEqual(
            (sub["port"], sub["interface"], sub["backlog"], sub["reply-delay"], sub["framing"]),
            (9527, "", backlog, 5.0, "line"),
        )
        self.assertEqual((sub["encoding"], sub["max-message-size"]), ("utf-8", 65536))
        self.assertEqual(sub["reply"].text, "response from server {time}")
        self.assertEqual(sub["error-reply"].text, "server error {time}")
        self.assertEqual(sub.listenDescriptions(), [f"tcp:port=9527:backlog={backlog}:interface="])

    def test_client(self) -> None:
        """The client reaches 127.0.0.1:9527 and backs off from 1 s to 30 s."""
        sub = parse("client").subOptions
        self.assertEqual(
            (sub["host"], sub["port"], sub["timeout"], sub["retry-initial"], sub["retry-max"]),
            ("127.0.0.1", 9527, 30.0, 1.0, 30.0),
        )
        self.assertEqual(sub["greeting"].text, "hello server, this is the client {time}")
        self.assertEqual(sub["reply"].text, "response from client {time}")
        self.assertEqual(sub["error-reply"].text, "client error {time}")
        self.assertIsNone(sub["connect"])

    def test_queues(self) -> None:
        """Queues wait in memory, up to 1000 messages and 1 MiB per id and 64 MiB in all."""
        sub = parse("server").subOptions
        self.assertEqual(
            (sub["queue-max-messages"], sub["queue-max-bytes"], sub["queue-total-bytes"]),
            (1000, 1 << 20, 64 << 20),
        )
        self.assertIsNone(sub["queue-dir"])
        self.assertIsNone(sub["queue-database"])

    def test_templatesCompiled(self) -> None:
        """Texts become templates in the chosen encoding."""
        sub = parse("server", "--encoding", "latin-1", "--reply", "é {time}").subOptions
        self.assertIsInstance(sub["reply"], Template)
        self.assertEqual(sub["reply"].encoding, "iso8859-1")


class ValuesTests(SynchronousTestCase):
    """
    Good values are taken as given.
    """

    def test_shortOptions(self) -> None:
        """-p and -i on the server, -h and -p on the client."""
        self.assertEqual(
            parse(
                "server", "-p", "0", "-i", "::", "--backlog", "50"
            ).subOptions.listenDescriptions(),
            [r"tcp:port=0:backlog=50:interface=\:\:"],
        )
        sub = parse("client", "-h", "::1", "-p", "1").subOptions
        self.assertEqual((sub["host"], sub["port"]), ("::1", 1))

    def test_listenRepeatable(self) -> None:
        """Each --listen is kept, and they replace --port."""
        sub = parse(
            "server", "--listen", "tcp:1", "--listen", "unix:/tmp/x.sock", "-p", "5"
        ).subOptions
        self.assertEqual(sub.listenDescriptions(), ["tcp:1", "unix:/tmp/x.sock"])

    def test_bindAddress(self) -> None:
        """--bind-address takes HOST:PORT and [IPV6]:PORT."""
        self.assertEqual(
            parse("client", "--bind-address", "127.0.0.1:0").subOptions["bind-address"],
            ("127.0.0.1", 0),
        )
        self.assertEqual(
            parse("client", "--bind-address", "[::1]:5").subOptions["bind-address"], ("::1", 5)
        )

    def test_zeroDelay(self) -> None:
        """A reply delay of 0 is allowed."""
        self.assertEqual(parse("server", "--reply-delay", "0").subOptions["reply-delay"], 0)


class RefusalTests(SynchronousTestCase):
    """
    Bad values are refused with a message that names the option and the value.
    """

    cases = [
        (["server", "--port", "70000"], "--port", "70000"),
        (["server", "--port", "x"], "--port", "x"),
        (["client", "--port", "0"], "--port", "0"),
        (["server", "--reply-delay", "-1"], "--reply-delay", "-1"),
        (["server", "--reply-delay", "nan"], "--reply-delay", "nan"),
        (["client", "--reply-delay", "inf"], "--reply-delay", "inf"),
        (["server", "--framing", "xml"], "--framing", "xml"),
        (["server", "--encoding", "klingon"], "--encoding", "klingon"),
        (["server", "--encoding", "utf-16"], "--encoding", "utf-16"),
        (["server", "--max-message-size", "0"], "--max-message-size", "0"),
        (["server", "--backlog", "0"], "--backlog", "0"),
        (["server", "--listen", "nope:1"], "--listen", "nope:1"),
        (["server", "--listen", "tcp:port=x"], "--listen", "tcp:port=x"),
        (["server", "--reply", "{who}"], "--reply", "{who}"),
        (["server", "--error-reply", "{"], "--error-reply", "{"),
        (["server", "--encoding", "ascii", "--reply", "é"], "--reply", "é"),
        (["client", "--greeting", "{0}"], "--greeting", "{0}"),
        (["client", "--timeout", "0"], "--timeout", "0"),
        (["client", "--retry-initial", "0"], "--retry-initial", "0"),
        (["client", "--retry-initial", "5", "--retry-max", "2"], "--retry-max", "2"),
        (["client", "--connect", "tcp:"], "--connect", "tcp:"),
        (["client", "--bind-address", "nohost"], "--bind-address", "nohost"),
        (["client", "--bind-address", "h:99999"], "--bind-address", "h:99999"),
        (["server", "--queue-max-messages", "0"], "--queue-max-messages", "0"),
        (["server", "--queue-max-bytes", "lots"], "--queue-max-bytes", "lots"),
        (["server", "--queue-total-bytes", "-1"], "--queue-total-bytes", "-1"),
    ]

    def test_refused(self) -> None:
        """Each bad value raises UsageError naming the option and the value."""
        for args, option, value in self.cases:
            error = self.assertRaises(UsageError, parse, *args)
            self.assertIn(option, str(error), args)
            self.assertIn(value, str(error), args)

    def test_badQueueDir(self) -> None:
        """A --queue-dir that cannot be made (under a plain file) is refused, naming it."""
        plain = os.path.join(scratch(self), "plain")
        with open(plain, "w") as f:
            f.write("not a folder")
        path = os.path.join(plain, "queues")
        error = self.assertRaises(UsageError, parse, "server", "--queue-dir", path)
        self.assertIn(f"--queue-dir {path!r}", str(error))

    def test_noMode(self) -> None:
        """Without server or client the user is told to choose."""
        error = self.assertRaises(UsageError, parse)
        self.assertIn("server", str(error))

    def test_newlineInLineFraming(self) -> None:
        """A text with a newline cannot be a line, but can be a netstring."""
        self.assertRaises(UsageError, parse, "server", "--reply", "a\nb")
        parse("server", "--framing", "netstring", "--reply", "a\nb")
