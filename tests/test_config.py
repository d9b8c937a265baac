"""
Tests for L{tcpcomm.config}: C{--config FILE} parsed in-process into the
same options as the command line, the command line winning, and every bad
file refused naming the file, the key and the value; and C{tcpcomm
check-config}.
"""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr, redirect_stdout

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from tcpcomm import cli
from tcpcomm.config import ConfigError
from tcpcomm.options import Options

from .processes import run, scratch


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


class ConfigTestCase(SynchronousTestCase):
    """
    Config files written to a scratch folder.
    """

    def write(self, text: str, name: str = "tcpcomm.toml") -> str:
        path = os.path.join(scratch(self), name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path


class MappingTests(ConfigTestCase):
    """
    Each kind of key becomes the option it names.
    """

    def test_values(self) -> None:
        """Numbers, strings, flags and arrays become the options' coerced values."""
        path = self.write(
            "[server]\n"
            "reply-delay = 0.5\n"
            "port = 1234\n"
            'interface = "127.0.0.1"\n'
            'reply = "hi {time}"\n'
            "no-message-log = true\n"
            "max-connections = 7\n"
        )
        sub = parse("server", "--config", path).subOptions
        self.assertEqual(
            (sub["reply-delay"], sub["port"], sub["interface"], sub["max-connections"]),
            (0.5, 1234, "127.0.0.1", 7),
        )
        self.assertEqual(sub["reply"].text, "hi {time}")
        self.assertTrue(sub["no-message-log"])
        self.assertEqual(sub["config"], path)

    def test_falseFlag(self) -> None:
        """A flag set to false is left off."""
        path = self.write("[server]\nno-message-log = false\n")
        self.assertFalse(parse("server", "--config", path).subOptions["no-message-log"])

    def test_listenArray(self) -> None:
        """A repeatable option is an array, each item given once."""
        path = self.write('[server]\nlisten = ["tcp:1:interface=127.0.0.1", "unix:/tmp/t.sock"]\n')
        sub = parse("server", "--config", path).subOptions
        self.assertEqual(
            sub.listenDescriptions(), ["tcp:1:interface=127.0.0.1", "unix:/tmp/t.sock"]
        )

    def test_clientTable(self) -> None:
        """The client reads [client] and leaves [server] alone."""
        path = self.write(
            '[server]\nreply = "server says"\n[client]\nhost = "::1"\nretry-max = 5\n'
            'greeting = "hello"\n'
        )
        sub = parse("client", "--config", path).subOptions
        self.assertEqual(
            (sub["host"], sub["retry-max"], sub["greeting"].text), ("::1", 5.0, "hello")
        )
        self.assertEqual(sub["reply"].text, "response from client {time}")

    def test_commandLineWins(self) -> None:
        """An option given on the command line wins over the file, before or after --config."""
        path = self.write("[server]\nreply-delay = 0.5\nport = 1234\n")
        sub = parse("server", "--reply-delay", "2", "--config", path, "-p", "99").subOptions
        self.assertEqual((sub["reply-delay"], sub["port"]), (2.0, 99))

    def test_commandLineListenReplaces(self) -> None:
        """A --listen on the command line replaces the file's listeners instead of adding to them."""
        path = self.write('[server]\nlisten = ["tcp:1", "tcp:2"]\n')
        sub = parse("server", "--config", path, "--listen", "tcp:3").subOptions
        self.assertEqual(sub.listenDescriptions(), ["tcp:3"])

    def test_argvRemembered(self) -> None:
        """The side's options remember the command line they were parsed from."""
        path = self.write("[server]\nport = 5\n")
        sub = parse("server", "-p", "6", "--config", path).subOptions
        self.assertEqual(sub.argv, ["-p", "6", "--config", path])
        self.assertEqual(sub.reparsed()["port"], 6)

    def test_reparsedReadsAgain(self) -> None:
        """Parsing again reads the file again."""
        path = self.write("[server]\nreply-delay = 1\n")
        sub = parse("server", "--config", path).subOptions
        with open(path, "w") as f:
            f.write("[server]\nreply-delay = 3\n")
        self.assertEqual(sub.reparsed()["reply-delay"], 3.0)


class RefusalTests(ConfigTestCase):
    """
    A bad file stops the start with a message naming the file, the key and
    the value.
    """

    def refused(self, text: str, side: str = "server", *args: str) -> str:
        path = self.write(text)
        error = self.assertRaises(UsageError, parse, side, "--config", path, *args)
        self.assertIn(path, str(error))
        return str(error)

    def test_badValue(self) -> None:
        """A value the option's own coercer refuses names file, key, value and the rule."""
        message = self.refused("[server]\nreply-delay = -1\n")
        self.assertIn("[server] reply-delay = -1: --reply-delay must be a number >= 0", message)

    def test_badValues(self) -> None:
        """Each bad value is refused with its key and value."""
        cases = [
            ("port = 70000", "port = 70000"),
            ('framing = "xml"', 'framing = "xml"'),
            ("reply-delay = nan", "reply-delay = nan"),
            ('listen = ["nope:1"]', 'listen = ["nope:1"]'),
            ('reply = "{who}"', 'reply = "{who}"'),
            ('tls-key = "k.pem"', 'tls-key = "k.pem"'),
        ]
        for line, shown in cases:
            message = self.refused(f"[server]\n{line}\n")
            self.assertIn(f"[server] {shown}: ", message)

    def test_unknownKey(self) -> None:
        """An unknown key is refused, with the option it most looks like."""
        message = self.refused("[server]\nreply_delay = 1\n")
        self.assertIn("[server] reply_delay = 1: not an option", message)
        self.assertIn("did you mean reply-delay?", message)

    def test_twistdOption(self) -> None:
        """twistd's own options are not keys: they go on twistd's command line."""
        message = self.refused('[server]\npidfile = "x.pid"\n')
        self.assertIn('[server] pidfile = "x.pid": not an option', message)
        self.assertIn("twistd's command line", message)

    def test_otherSidesKey(self) -> None:
        """A client option in [client] is fine, in [server] it is unknown."""
        self.refused('[server]\nhost = "a"\n')
        parse("client", "--config", self.write('[client]\nhost = "a"\n'))

    def test_wrongTypes(self) -> None:
        """A flag takes a boolean, a repeatable option an array, the others a string or number."""
        self.assertIn(
            "is a flag: true or false", self.refused('[server]\nno-message-log = "yes"\n')
        )
        self.assertIn("array of strings", self.refused('[server]\nlisten = "tcp:1"\n'))
        self.assertIn("string or a number", self.refused("[server]\nport = true\n"))
        self.assertIn("string or a number", self.refused("[server]\nreply = [1]\n"))

    def test_configKey(self) -> None:
        """A config file cannot name another one."""
        self.assertIn("cannot name another", self.refused('[server]\nconfig = "x.toml"\n'))

    def test_badStructure(self) -> None:
        """Keys outside a table, unknown tables and a missing side table are refused."""
        self.assertIn("outside any table", self.refused("port = 1\n[server]\n"))
        self.assertIn("unknown table [sever] (did you mean [server]?)", self.refused("[sever]\n"))
        self.assertIn("has no [client] table", self.refused("[server]\n", "client"))

    def test_notTOML(self) -> None:
        """A file that is not TOML is refused with where it goes wrong."""
        message = self.refused("[server]\nport = \n")
        self.assertIn("is not valid TOML", message)
        self.assertIn("line 2", message)

    def test_missingFile(self) -> None:
        """A file that cannot be read is refused, naming it."""
        error = self.assertRaises(UsageError, parse, "server", "--config", "/nonexistent.toml")
        self.assertIn("--config '/nonexistent.toml': No such file or directory", str(error))

    def test_overriddenKeyNotBlamed(self) -> None:
        """An error about an option the command line gave does not blame the file's key."""
        path = self.write('[server]\nreply = "fine"\n')
        error = self.assertRaises(UsageError, parse, "server", "--config", path, "--reply", "{who}")
        self.assertNotIsInstance(error, ConfigError)
        self.assertIn("--reply", str(error))
        self.assertIn(path, str(error))

    def test_daemonRefusesToStart(self) -> None:
        """twistd refuses to start on an unknown key or a bad value, naming file, key and value."""
        for text, shown in [
            ("[server]\nreply-dely = 1\n", "[server] reply-dely = 1: not an option"),
            ('[server]\nframing = "xml"\n', '[server] framing = "xml": --framing must be one of'),
        ]:
            path = self.write(text)
            result = run(self, "-n", "--pidfile=", "tcpcomm", "server", "--config", path)
            self.assertNotEqual(result.returncode, 0)
            self.assertIn(f"{path}: {shown}", result.stdout + result.stderr)
            self.assertNotIn("Traceback", result.stdout + result.stderr)


class CheckConfigTests(ConfigTestCase):
    """
    C{tcpcomm check-config FILE} checks a file as the daemon would, starting
    nothing.
    """

    def check(self, path: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main(["check-config", path])
        return code, out.getvalue(), err.getvalue()

    def test_good(self) -> None:
        """A good file exits 0 and says which tables it checked."""
        path = self.write("[server]\nreply-delay = 1\n[client]\nretry-max = 5\n")
        self.assertEqual(self.check(path), (0, f"{path}: [server] and [client] ok\n", ""))

    def test_badValue(self) -> None:
        """A bad value exits 2 with the file, the key and the value."""
        path = self.write("[server]\nreply-delay = 1\n[client]\nport = 0\n")
        code, out, err = self.check(path)
        self.assertEqual((code, out), (2, ""))
        self.assertIn(f"tcpcomm: {path}: [client] port = 0: --port must be", err)

    def test_unknownKey(self) -> None:
        """An unknown key exits 2 naming it."""
        code, _, err = self.check(self.write('[server]\npidfile = "x"\n'))
        self.assertEqual(code, 2)
        self.assertIn('[server] pidfile = "x": not an option', err)

    def test_filesItNames(self) -> None:
        """The files the settings name are read too, as at start."""
        code, _, err = self.check(self.write('[server]\ntls-cert = "/nonexistent.pem"\n'))
        self.assertEqual(code, 2)
        self.assertIn("/nonexistent.pem", err)

    def test_empty(self) -> None:
        """A file with neither table is refused."""
        path = self.write("# nothing\n")
        self.assertEqual(self.check(path)[:2], (2, ""))
        self.assertIn("no [server] or [client] table", self.check(path)[2])

    def test_missing(self) -> None:
        """A file that does not exist is refused."""
        code, _, err = self.check("/nonexistent.toml")
        self.assertEqual(code, 2)
        self.assertIn("/nonexistent.toml", err)
