"""
The README's deployment recipes, run as written (only the port is changed,
to a free one, and twistd is the one installed beside these tests).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .processes import TWISTD, WAIT, Twistd, environment, freePort, scratch

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
