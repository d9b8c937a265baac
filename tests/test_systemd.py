"""
The systemd units in C{contrib/systemd}: socket activation with a real
C{systemd-socket-activate}, C{systemd-analyze verify} on the unit files, and
each C{ExecStart=} parsed as tcpcomm options.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time

from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tcpcomm.options import Options

from .processes import (
    BIN,
    TWISTD,
    WAIT,
    Twistd,
    assertCleanLog,
    environment,
    freePort,
    readUntilClosed,
    scratch,
)

UNITS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "contrib", "systemd"
)
SERVER = "tcpcomm-server.service"
SOCKET = "tcpcomm-server.socket"
ACTIVATED = "tcpcomm-server-activated.service"
CLIENT = "tcpcomm-client@.service"
ALL = (SERVER, SOCKET, ACTIVATED, CLIENT)
SERVICES = (SERVER, ACTIVATED, CLIENT)
INSTALLED_BIN = "/opt/tcpcomm/bin/"
INSTALLED_TWISTD = INSTALLED_BIN + "twistd"
INSTANCE = "127.0.0.1"  # what %i stands for when a test reads the client template
# Where the units read their settings, and the examples shipped beside them.
CONFIGS = {
    "/etc/tcpcomm/server.toml": os.path.join(UNITS, "server.toml"),
    "/etc/tcpcomm/client.toml": os.path.join(UNITS, "client.toml"),
}

# After a clean shutdown on SIGTERM, twistd re-raises the signal so that its
# parent sees how it ended: the exit status is -SIGTERM (0 on older Twisted).
STOPPED = (0, -signal.SIGTERM)
REPLY = re.compile(rb"^response from server \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\n$")


def readUnit(name: str) -> dict[str, dict[str, list[str]]]:
    """
    The settings of a unit file by section and key, each key's values in
    order; comments dropped, lines ending in a backslash joined.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] = {}
    with open(os.path.join(UNITS, name), encoding="utf-8") as f:
        text = re.sub(r"\\\n", " ", f.read())
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{name}: not a setting: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return sections


def commandWords(name: str, command: str) -> list[str]:
    """
    A unit's command line split into words, with C{%i} as L{INSTANCE},
    C{%%} as C{%}, and each config file as the example shipped for it.
    """
    command = command.lstrip("-@:+!")
    unknown = re.findall(r"%[^i%]", command)
    assert not unknown, f"{name}: specifiers this test does not know: {unknown}"
    words = shlex.split(command.replace("%i", INSTANCE).replace("%%", "%"))
    return [CONFIGS.get(word, word) for word in words]


def execStart(name: str) -> list[str]:
    """
    The one C{ExecStart=} command line of a service, as L{commandWords}.
    """
    commands = readUnit(name)["Service"]["ExecStart"]
    assert len(commands) == 1, f"{name}: {commands!r}"
    return commandWords(name, commands[0])


def tcpcommArguments(name: str) -> tuple[list[str], list[str]]:
    """
    twistd's own arguments in a service's C{ExecStart=}, and tcpcomm's: those
    before and after the word C{tcpcomm}.
    """
    words = execStart(name)
    assert words[0] == INSTALLED_TWISTD, f"{name}: {words[0]!r}"
    assert "tcpcomm" in words, f"{name}: no tcpcomm in {words!r}"
    at = words.index("tcpcomm")
    return words[1:at], words[at + 1 :]


def parsedOptions(case: SynchronousTestCase, name: str) -> Options:
    """
    The tcpcomm options of a service's C{ExecStart=}. A C{systemd:} endpoint
    looks its descriptor up in C{LISTEN_FDS} as it is parsed, which only
    systemd sets, so a loopback port stands in for it here
    (C{test_systemdListen} checks the description itself).
    """
    _, args = tcpcommArguments(name)
    args = ["tcp:0:interface=127.0.0.1" if a.startswith("systemd:") else a for a in args]
    options = Options()
    try:
        options.parseOptions(args)
    except usage.UsageError as e:
        case.fail(f"{name}: {args!r}: {e}")
    return options


def endpointArguments(description: str) -> tuple[str, dict[str, str]]:
    """
    The type of a server endpoint description with no escaped colons, and its
    C{key=value} arguments.
    """
    kind, *rest = description.split(":")
    arguments = {}
    for argument in rest:
        key, _, value = argument.partition("=")
        arguments[key] = value
    return kind, arguments


def seconds(value: str) -> float:
    """
    A systemd time span of seconds (C{15}, C{15s}, C{15 s}) as a number.
    """
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(?:s|sec)?", value)
    assert match, f"not a time span in seconds: {value!r}"
    return float(match.group(1))


def freePort6() -> int:
    """
    An IPv6 loopback TCP port nobody listens on right now; skip the test
    when this machine has no C{::1}.
    """
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            return int(s.getsockname()[1])
    except OSError as e:
        raise SkipTest(f"no IPv6 loopback here: {e}") from None


class Activated(Twistd):
    """
    C{twistd args} started by C{systemd-socket-activate}, which listens on
    C{address} and, on the first connection, execs twistd in its own place
    (the same pid) with the listening socket as descriptor 3, named
    C{tcpcomm}. Output, waiting and stopping are L{Twistd}'s.
    """

    def __init__(self, case: SynchronousTestCase, address: str, *args: str) -> None:
        activate = shutil.which("systemd-socket-activate")
        if activate is None:
            raise SkipTest(
                "systemd-socket-activate is not on PATH (Debian: apt-get install systemd)"
            )
        self.cwd = scratch(case)
        self.logPath = os.path.join(self.cwd, f"activated-{time.monotonic_ns()}.log")
        self._out = open(self.logPath, "wb")
        self.process = subprocess.Popen(
            [activate, "-l", address, "--fdname=tcpcomm", TWISTD, *args],
            cwd=self.cwd,
            env=environment(),
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        case.addCleanup(self.stop)

    def dial(self, family: socket.AddressFamily, host: str, port: int) -> socket.socket:
        """
        A connection to C{host}, once C{systemd-socket-activate} listens there.
        """
        deadline = time.monotonic() + WAIT
        while True:
            sock = socket.socket(family)
            sock.settimeout(WAIT)
            try:
                sock.connect((host, port))
                return sock
            except ConnectionRefusedError:
                sock.close()
            if self.process.poll() is not None:
                raise AssertionError(
                    f"exited ({self.process.returncode}) before listening:\n{self.output()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on {host}:{port} within {WAIT} s")
            time.sleep(0.02)


class SocketActivationTests(SynchronousTestCase):
    """
    A server adopts the listening socket systemd hands it.
    """

    def assertServes(
        self, process: Activated, family: socket.AddressFamily, host: str, port: int
    ) -> str:
        """
        The server answers one line and stops cleanly on SIGTERM; its log.
        """
        try:
            with process.dial(family, host, port) as sock:
                sock.sendall(b"hi\n")
                sock.shutdown(socket.SHUT_WR)
                reply = readUntilClosed(sock)
        except OSError as e:
            process.stop()
            self.fail(f"{e!r}; the server said:\n{process.output()}")
        self.assertRegex(reply, REPLY)
        process.waitFor(r"lost \S+: ")
        self.assertIn(process.stop(), STOPPED)
        log = process.output()
        assertCleanLog(self, log)
        return log

    def test_adoptsInheritedSocket(self) -> None:
        """The server listens on the socket systemd-socket-activate passes as fd name tcpcomm."""
        port = freePort()
        process = Activated(
            self,
            f"127.0.0.1:{port}",
            "-n",
            "--pidfile=",
            "tcpcomm",
            "server",
            "--listen",
            "systemd:domain=INET:name=tcpcomm",
            "--reply-delay",
            "0",
        )
        log = self.assertServes(process, socket.AF_INET, "127.0.0.1", port)
        self.assertIn(f"listening on 127.0.0.1:{port} (systemd:domain=INET:name=tcpcomm)", log)
        self.assertRegex(log, r"message from 127\.0\.0\.1:\d+: hi\n")

    def test_activatedUnitReload(self) -> None:
        """The activated unit's ExecReload commands, run as systemd would, reload the running server."""
        port = freePort6()
        twistdArgs, args = tcpcommArguments(ACTIVATED)
        process = Activated(
            self, f"[::1]:{port}", *twistdArgs, "tcpcomm", *args, "--reply-delay", "0"
        )
        with process.dial(socket.AF_INET6, "::1", port) as sock:
            sock.sendall(b"hi\n")
            sock.settimeout(WAIT)
            self.assertRegex(sock.recv(100), REPLY)
            for command in readUnit(ACTIVATED)["Service"]["ExecReload"]:
                words = commandWords(ACTIVATED, command.replace("$MAINPID", str(process.pid)))
                words[0] = words[0].replace(INSTALLED_BIN, BIN + os.sep)
                result = subprocess.run(
                    words, env=environment(), capture_output=True, text=True, timeout=WAIT
                )
                self.assertEqual(result.returncode, 0, result)
            process.waitFor("reloaded settings: nothing changed")
            sock.sendall(b"again\n")
            self.assertRegex(sock.recv(100), REPLY)
        self.assertIn(process.stop(), STOPPED)
        assertCleanLog(self, process.output())

    def test_activatedUnitCommand(self) -> None:
        """The activated unit's own command line serves an IPv6 socket, the domain it names."""
        port = freePort6()
        twistdArgs, args = tcpcommArguments(ACTIVATED)
        process = Activated(
            self, f"[::1]:{port}", *twistdArgs, "tcpcomm", *args, "--reply-delay", "0"
        )
        log = self.assertServes(process, socket.AF_INET6, "::1", port)
        self.assertIn(f"listening on [::1]:{port} (systemd:domain=INET6:name=tcpcomm)", log)
        self.assertRegex(log, r"message from \[::1\]:\d+: hi\n")


class VerifyTests(SynchronousTestCase):
    """
    C{systemd-analyze verify} finds nothing wrong with the units.
    """

    def verify(self, *names: str, edit: tuple[str, str] | None = None) -> tuple[int, str]:
        """
        Run C{systemd-analyze verify} on copies of the units C{names}, with
        the installed programs' folder replaced by this one (verify checks
        that each command is executable) and C{edit}, a C{(old, new)} text
        replacement, applied; its exit code and output.
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not on PATH (Debian: apt-get install systemd)")
        folder = scratch(self)
        for name in names:
            with open(os.path.join(UNITS, name), encoding="utf-8") as f:
                text = f.read().replace(INSTALLED_BIN, BIN + os.sep)
            if edit is not None:
                text = text.replace(*edit)
            with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
                f.write(text)
        env = environment()
        env["SYSTEMD_LOG_COLOR"] = "0"
        result = subprocess.run(
            [analyze, "verify", *names],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=WAIT,
            stdin=subprocess.DEVNULL,
        )
        return result.returncode, result.stdout + result.stderr

    def mentioned(self, output: str, names: tuple[str, ...]) -> list[str]:
        """
        The output lines about the units C{names} (a template's C{@} instance
        is verified as C{@i}).
        """
        stems = [name.rsplit(".", 1)[0] for name in names]
        return [line for line in output.splitlines() if any(stem in line for stem in stems)]

    def test_verify(self) -> None:
        """Every unit, verified together, exits 0 and has no message about it."""
        code, output = self.verify(*ALL)
        about = self.mentioned(output, ALL)
        # systemd-analyze verify builds a manager of its own in test mode and
        # needs no running systemd. It also loads what the units depend on
        # (network.target, sockets.target, ...) from this machine, so a
        # failure that names none of our units is this machine's, not theirs.
        if code != 0 and not about:
            raise SkipTest(f"systemd-analyze verify cannot run here (exit {code}): {output}")
        self.assertEqual(about, [], output)
        self.assertEqual(code, 0, output)

    def test_verifyNoticesMistakes(self) -> None:
        """The check is not empty: a bad value, which verify only warns about, is reported."""
        with open(os.path.join(UNITS, SOCKET), encoding="utf-8") as f:
            lines = f.read().splitlines()
        line = lines.index("BindIPv6Only=both") + 1
        code, output = self.verify(SOCKET, ACTIVATED, edit=("BindIPv6Only=both", "BindIPv6Only=x"))
        if code != 0 and not self.mentioned(output, (SOCKET, ACTIVATED)):
            raise SkipTest(f"systemd-analyze verify cannot run here (exit {code}): {output}")
        # Only a warning ("Failed to parse ..., ignoring"): the exit code stays 0,
        # which is why test_verify also wants no message about the units at all.
        self.assertIn(f"{SOCKET}:{line}: ", output)


class ExecStartTests(SynchronousTestCase):
    """
    Each service's command line is one twistd accepts.
    """

    def test_twistdArguments(self) -> None:
        """Each service runs twistd in the foreground, with no pidfile, logging to stdout."""
        for name in SERVICES:
            twistdArgs, _ = tcpcommArguments(name)
            self.assertEqual(twistdArgs, ["--nodaemon", "--pidfile=", "--logfile=-"], name)

    def test_tcpcommOptions(self) -> None:
        """The arguments after tcpcomm parse as tcpcomm options, with %i as a host."""
        modes: dict[str, str | None] = {}
        for name in SERVICES:
            options = parsedOptions(self, name)
            modes[name] = options.subCommand
            if name == CLIENT:
                self.assertEqual(options.subOptions["host"], INSTANCE)
        self.assertEqual(modes, {SERVER: "server", ACTIVATED: "server", CLIENT: "client"})

    def test_systemdListen(self) -> None:
        """The activated service adopts the socket's descriptor by name, in the socket's domain."""
        socketUnit = readUnit(SOCKET)["Socket"]
        self.assertEqual(socketUnit["Service"], [ACTIVATED])
        [listenStream] = socketUnit["ListenStream"]
        [fdName] = socketUnit["FileDescriptorName"]
        _, args = tcpcommArguments(ACTIVATED)
        listens = [args[i + 1] for i, arg in enumerate(args) if arg == "--listen"]
        self.assertEqual(len(listens), 1, args)
        self.assertTrue(listens[0].startswith("systemd:domain="), listens[0])
        kind, arguments = endpointArguments(listens[0])
        self.assertEqual((kind, arguments.get("name")), ("systemd", fdName))
        # A bare port or [address]:port is an IPv6 socket; a.b.c.d:port is IPv4.
        ipv4 = re.fullmatch(r"\d+\.\d+\.\d+\.\d+:\d+", listenStream) is not None
        self.assertEqual(arguments, {"domain": "INET" if ipv4 else "INET6", "name": fdName})

    def test_config(self) -> None:
        """Each service reads its side's config file, and the example shipped for it passes check-config."""
        for name in SERVICES:
            _, args = tcpcommArguments(name)
            side = args[0]
            self.assertEqual(args[1:3], ["--config", CONFIGS[f"/etc/tcpcomm/{side}.toml"]], name)
            result = subprocess.run(
                [os.path.join(BIN, "tcpcomm"), "check-config", args[2]],
                env=environment(),
                capture_output=True,
                text=True,
                timeout=WAIT,
                stdin=subprocess.DEVNULL,
            )
            self.assertEqual((result.returncode, result.stderr), (0, ""), name)

    def test_execReload(self) -> None:
        """Reloading checks the config file the service reads, then sends it SIGHUP."""
        for name in SERVICES:
            commands = readUnit(name)["Service"]["ExecReload"]
            _, args = tcpcommArguments(name)
            self.assertEqual(
                [commandWords(name, c) for c in commands],
                [
                    [INSTALLED_BIN + "tcpcomm", "check-config", args[2]],
                    ["/bin/kill", "-HUP", "$MAINPID"],
                ],
                name,
            )

    def test_limitNOFILE(self) -> None:
        """Servers may open a descriptor for every connection they allow, and then some."""
        for name in (SERVER, ACTIVATED):
            [limit] = readUnit(name)["Service"]["LimitNOFILE"]
            maxConnections = parsedOptions(self, name).subOptions["max-connections"]
            self.assertGreater(int(limit), maxConnections + 1000, name)

    def test_stopTimeoutAboveShutdownTimeout(self) -> None:
        """systemd waits longer to stop a server than the server waits for its peers."""
        for name in (SERVER, ACTIVATED):
            service = readUnit(name)["Service"]
            [timeout] = service["TimeoutStopSec"]
            shutdownTimeout = parsedOptions(self, name).subOptions["shutdown-timeout"]
            self.assertGreater(seconds(timeout), shutdownTimeout, name)
            self.assertEqual(service["KillSignal"], ["SIGTERM"], name)

    def test_stopTimeoutAboveDrainPeriod(self) -> None:
        """systemd waits long enough for a stop that drains the server, then closes the rest."""
        for name in (SERVER, ACTIVATED):
            [timeout] = readUnit(name)["Service"]["TimeoutStopSec"]
            options = parsedOptions(self, name).subOptions
            self.assertGreater(
                seconds(timeout), options["drain-period"] + options["shutdown-timeout"], name
            )
