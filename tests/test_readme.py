"""
The README's deployment recipes, run as written (only the port is changed,
to a free one, and twistd is the one installed beside these tests).
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

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .processes import TWISTD, WAIT, Twistd, environment, freePort, scratch, waitForFile

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def recipe(name: str, kind: str = "recipe", language: str = "sh") -> str:
    """
    The code block that follows C{<!-- recipe: name -->} in the README.
    """
    with open(README, encoding="utf-8") as f:
        text = f.read()
    match = re.search(rf"<!-- {kind}: {name} -->\n```{language}\n(.*?)```", text, re.DOTALL)
    if match is None:
        raise AssertionError(f"README has no {kind} {name!r}")
    return match.group(1)


def twistdArgs(command: str, port: int) -> list[str]:
    """
    The arguments after C{twistd} in a one-line README command, with port
    9527 replaced by C{port}.
    """
    words = shlex.split(command.replace("9527", str(port)))
    assert words[0] == "twistd", words
    return words[1:]


class RecipeTests(SynchronousTestCase):
    """
    What the README tells operators to type works.
    """

    def test_certificatesAndMutualTLS(self) -> None:
        """The openssl recipe makes certificates the mTLS server and client commands accept."""
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
        self.assertEqual(serverArgs[0], "-n")
        server = Twistd(self, *serverArgs[1:], cwd=folder)
        server.listeningPort()
        client = Twistd(self, *twistdArgs(recipe("mtls-client"), port)[2:], cwd=folder)
        server.waitFor(r"secured \S+: certificate agent-7")
        server.waitFor(r"message from \S+: hello server")
        client.waitFor(rf"secured 127\.0\.0\.1:{port}: certificate localhost")
        self.assertTrue(os.path.exists(TWISTD))


class HandlerExampleTests(SynchronousTestCase):
    """
    The README's example handler works as shown.
    """

    def test_shout(self) -> None:
        """The example Shout handler answers in capitals and announces arrivals."""
        folder = scratch(self)
        with open(os.path.join(folder, "myhandlers.py"), "w") as f:
            f.write(recipe("handler", kind="example", language="python"))
        env = environment()
        env["PYTHONPATH"] = "."
        server = Twistd(
            self,
            "tcpcomm",
            "server",
            "--handler",
            "myhandlers:Shout",
            "-p",
            "0",
            "-i",
            "127.0.0.1",
            cwd=folder,
            env=env,
        )
        port = server.listeningPort()
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as first:
            first.settimeout(WAIT)
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as second:
                self.assertRegex(first.recv(100), rb"^127\.0\.0\.1:\d+ joined\n$")
                second.sendall(b"quiet please\n")
                second.settimeout(WAIT)
                self.assertEqual(second.recv(100), b"QUIET PLEASE\n")


def shell(case: SynchronousTestCase, command: str, folder: str) -> subprocess.CompletedProcess[str]:
    """
    Run a README command line with C{sh} in C{folder}, finding the installed
    programs first on C{PATH} as the README says to set it up.
    """
    env = environment()
    env["PATH"] = os.path.dirname(TWISTD) + os.pathsep + env.get("PATH", "")
    return subprocess.run(
        ["sh", "-e", "-c", command],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
        stdin=subprocess.DEVNULL,
    )


class ConfigExampleTests(SynchronousTestCase):
    """
    The README's config file example and the commands that use it.
    """

    def test_config(self) -> None:
        """check-config accepts the example, and a server and a client run from it talk."""
        folder = scratch(self)
        port = freePort()
        with open(os.path.join(folder, "tcpcomm.toml"), "w") as f:
            f.write(recipe("config", kind="example", language="toml").replace("9527", str(port)))
        check, serverLine, clientLine = recipe("config").splitlines()
        checked = shell(self, check, folder)
        self.assertEqual(checked.returncode, 0, checked.stderr)
        self.assertEqual(checked.stdout, "tcpcomm.toml: [server] and [client] ok\n")
        server = Twistd(self, *twistdArgs(serverLine, port)[1:], cwd=folder)
        self.assertEqual(server.listeningPort(), port)
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.settimeout(WAIT)
            sock.sendall(b"hi\n")
            self.assertRegex(sock.recv(100), rb"^hello from the hub \d{4}-")
        client = Twistd(self, *twistdArgs(clientLine, port)[2:], cwd=folder)
        client.waitFor(rf"message from 127\.0\.0\.1:{port}: hello from the hub")
        self.assertNotIn("message from", server.output())  # no-message-log = true


class AdminTokenRecipeTests(SynchronousTestCase):
    """
    The README's admin token recipe makes a token file the daemon and curl use.
    """

    def test_token(self) -> None:
        """The token file the recipe makes is required, and curl with it gets the clients."""
        for program in ("openssl", "curl"):
            if shutil.which(program) is None:
                raise SkipTest(f"{program} is not installed")
        folder = scratch(self)
        port, adminPort = freePort(), freePort()
        make, serverLine, curl = recipe("admin-token").replace("9528", str(adminPort)).splitlines()
        made = shell(self, make, folder)
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertEqual(os.stat(os.path.join(folder, "admin-token")).st_mode & 0o077, 0)
        server = Twistd(self, *twistdArgs(serverLine, port)[1:], cwd=folder)
        server.waitFor(rf"listening on 127\.0\.0\.1:{adminPort} \(admin API")
        answered = shell(self, curl, folder)
        self.assertEqual((answered.returncode, answered.stdout), (0, "[]\n"), answered.stderr)
        refused = shell(self, curl.replace("$(cat admin-token)", "wrong"), folder)
        self.assertIn("a valid 'Authorization: Bearer <token>' header is required", refused.stdout)


class DaemonRecipeTests(SynchronousTestCase):
    """
    The README's daemon recipe works as written, in folders of its own.
    """

    def test_daemons(self) -> None:
        """The recipe makes its folders, starts both daemons, reloads the server and stops both."""
        folder = scratch(self)
        port = freePort()
        text = (
            recipe("daemons")
            .replace("/run/tcpcomm", os.path.join(folder, "run"))
            .replace("/var/log/tcpcomm", os.path.join(folder, "log"))
            .replace("9527", str(port))
        )
        lines = [line.split("#")[0].strip() for line in text.splitlines()]
        pidfiles = [os.path.join(folder, "run", f"{name}.pid") for name in ("server", "client")]
        logs = [os.path.join(folder, "log", f"{name}.log") for name in ("server", "client")]
        self.addCleanup(stopByPidfiles, pidfiles)
        for line in lines[:3]:
            result = shell(self, line, folder)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        waitForFile(logs[1], rf"message from 127\.0\.0\.1:{port}: response from server")
        hangUp, stopClient, stopServer = lines[3:]
        self.assertEqual(shell(self, hangUp, folder).returncode, 0)
        waitForFile(logs[0], "reloaded settings: nothing changed")
        for line, pidfile, log in zip(
            (stopClient, stopServer), pidfiles[::-1], logs[::-1], strict=True
        ):
            self.assertTrue(os.path.exists(pidfile), pidfile)
            self.assertEqual(shell(self, line, folder).returncode, 0)
            waitForFile(log, "Server Shut Down")
        deadline = time.monotonic() + WAIT
        while any(map(os.path.exists, pidfiles)) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual([p for p in pidfiles if os.path.exists(p)], [])


def stopByPidfiles(pidfiles: list[str]) -> None:
    """
    Kill what still runs of the daemons whose pidfiles remain.
    """
    for pidfile in pidfiles:
        try:
            with open(pidfile) as f:
                os.kill(int(f.read()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


class SocatTests(SynchronousTestCase):
    """
    The README's socat line waits long enough for the default reply.
    """

    def test_socat(self) -> None:
        """socat -t 6 gets the reply that a default server sends 5 s after the line."""
        if shutil.which("socat") is None:
            raise SkipTest("socat is not installed")
        with open(README, encoding="utf-8") as f:
            [command] = re.findall(r"`(socat -t 6 [^`]*)`", f.read())
        server = Twistd(self, "tcpcomm", "server", "-p", "0", "-i", "127.0.0.1", cwd=scratch(self))
        port = server.listeningPort()
        result = subprocess.run(
            shlex.split(command.replace("9527", str(port))),
            input="hi\n",
            capture_output=True,
            text=True,
            timeout=WAIT,
            env=environment(),
        )
        self.assertRegex(result.stdout, r"^response from server \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\n$")
