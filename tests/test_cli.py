"""
The C{tcpcomm} command line, run as the installed console script against
real C{twistd} daemons with their admin API on loopback.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .processes import (
    BIN,
    WAIT,
    Twistd,
    environment,
    freePort,
    localServer,
    readUntilClosed,
    scratch,
)

TCPCOMM = os.path.join(BIN, "tcpcomm")
ADMIN = "tcp:0:interface=127.0.0.1"


def tcpcomm(
    case: SynchronousTestCase, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """
    Run the console script to completion in a scratch folder, with none of
    the caller's TCPCOMM_* settings.
    """
    if not os.path.exists(TCPCOMM):
        raise SkipTest(f"no tcpcomm console script beside {sys.executable}")
    base = {k: v for k, v in environment().items() if not k.startswith("TCPCOMM_")}
    return subprocess.run(
        [TCPCOMM, *args],
        cwd=scratch(case),
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=WAIT,
        stdin=subprocess.DEVNULL,
    )


def adminURL(process: Twistd) -> str:
    """
    The URL of a daemon's admin API, from the port its log announces.
    """
    port = process.waitFor(r"listening on 127\.0\.0\.1:(\d+) \(admin API").group(1)
    return f"http://127.0.0.1:{port}"


def server(case: SynchronousTestCase, *args: str) -> tuple[Twistd, int, str]:
    """
    A server with an admin API, its message port and the admin URL.
    """
    process = Twistd(
        case,
        "tcpcomm",
        "server",
        "-p",
        "0",
        "-i",
        "127.0.0.1",
        "--reply-delay",
        "0",
        "--admin",
        ADMIN,
        *args,
    )
    port = int(process.waitFor(r"listening on 127\.0\.0\.1:(\d+) \(tcp:").group(1))
    return process, port, adminURL(process)


def dial(case: SynchronousTestCase, process: Twistd, port: int) -> tuple[socket.socket, str]:
    """
    A socket connected to the server, and its id once the server has it.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    case.addCleanup(sock.close)
    peer = f"127.0.0.1:{sock.getsockname()[1]}"
    process.waitFor(re.escape(f"connected {peer}") + r"\n")
    return sock, peer


def readLine(sock: socket.socket) -> bytes:
    """
    What C{sock} receives up to and including a newline (or until EOF).
    """
    sock.settimeout(WAIT)
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1000)
        if not chunk:
            break
        data += chunk
    return data


class UsageTests(SynchronousTestCase):
    """
    Help, bad options and unreachable daemons give clear messages and exit codes.
    """

    def test_pythonMinusMHelp(self) -> None:
        """python -m tcpcomm --help lists the commands and the exit codes, and exits 0."""
        result = subprocess.run(
            [sys.executable, "-m", "tcpcomm", "--help"],
            cwd=scratch(self),
            env=environment(),
            capture_output=True,
            text=True,
            timeout=WAIT,
            stdin=subprocess.DEVNULL,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        for word in ("clients", "send", "broadcast", "kick", "status", "exit status"):
            self.assertIn(word, result.stdout)

    def test_noCommand(self) -> None:
        """Without a command, argparse's usage error exits 2."""
        result = tcpcomm(self)
        self.assertEqual(result.returncode, 2)
        self.assertIn("usage: tcpcomm", result.stderr)

    def test_daemonDown(self) -> None:
        """With nothing listening at --admin, it exits 3 naming the URL and suggesting --admin."""
        url = f"http://127.0.0.1:{freePort()}"
        result = tcpcomm(self, "--admin", url, "clients")
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertIn(f"cannot reach the tcpcomm admin API at {url}", result.stderr)
        self.assertIn("--admin URL", result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertEqual(result.stdout, "")

    def test_badURL(self) -> None:
        """An --admin that is not an HTTP URL exits 3 and says so."""
        result = tcpcomm(self, "--admin", "ftp://127.0.0.1", "clients")
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertIn("is not an http:// or https:// URL", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_unreadableTokenFile(self) -> None:
        """A --token-file that does not exist exits 2 naming it, before any request."""
        path = os.path.join(scratch(self), "missing-token")
        result = tcpcomm(
            self, "--admin", f"http://127.0.0.1:{freePort()}", "--token-file", path, "clients"
        )
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn(f"tcpcomm: bad token file {path!r}: cannot read it", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_badTokenFile(self) -> None:
        """A token file whose token is not printable ASCII exits 2 as a bad token file, not unreachable."""
        path = os.path.join(scratch(self), "token")
        for token in ("s3cret-tok€n", "s3cret-töken"):
            with open(path, "w", encoding="utf-8") as f:
                f.write(token + "\n")
            result = tcpcomm(
                self, "--admin", f"http://127.0.0.1:{freePort()}", "--token-file", path, "clients"
            )
            self.assertEqual(result.returncode, 2, result.stderr)
            self.assertIn(f"tcpcomm: bad token file {path!r}: ", result.stderr)
            self.assertIn("not printable ASCII", result.stderr)
            self.assertNotIn("cannot reach", result.stderr)
            self.assertNotIn("Traceback", result.stderr)


class ServerCommandTests(SynchronousTestCase):
    """
    clients, send, broadcast and kick against a real server.
    """

    def test_clients(self) -> None:
        """clients says none are connected, then lists one in a table, and --json gives its id."""
        process, port, url = server(self)
        result = tcpcomm(self, "--admin", url, "clients")
        self.assertEqual((result.returncode, result.stdout), (0, "no clients connected\n"))
        sock, peer = dial(self, process, port)
        result = tcpcomm(self, "--admin", url, "clients")
        self.assertEqual(result.returncode, 0, result.stderr)
        header, row, footer = result.stdout.splitlines()
        self.assertEqual(header.split("  ")[0], "ID")
        self.assertIn("TLS SUBJECT", header)
        self.assertTrue(row.startswith(peer + " "), row)
        self.assertEqual(footer, "1 client connected")
        result = tcpcomm(self, "--admin", url, "--json", "clients")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([c["id"] for c in json.loads(result.stdout)], [peer])

    def test_send(self) -> None:
        """send delivers the text as one line to that client."""
        process, port, url = server(self)
        sock, peer = dial(self, process, port)
        result = tcpcomm(self, "--admin", url, "send", peer, "hello, client")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, f"sent to {peer}\n")
        self.assertEqual(readLine(sock), b"hello, client\n")

    def test_sendToUnixClient(self) -> None:
        """send quotes an id such as unix#1 so that it reaches the right client."""
        path = os.path.join(scratch(self), "s")
        process = Twistd(self, "tcpcomm", "server", "--listen", "unix:" + path, "--admin", ADMIN)
        url = adminURL(process)
        sock = socket.socket(socket.AF_UNIX)
        self.addCleanup(sock.close)
        sock.settimeout(WAIT)
        sock.connect(path)
        process.waitFor(r"connected unix#1\n")
        result = tcpcomm(self, "--admin", url, "send", "unix#1", "hi")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(readLine(sock), b"hi\n")

    def test_broadcast(self) -> None:
        """broadcast reaches both connected clients and says 2 received it."""
        process, port, url = server(self)
        first, _ = dial(self, process, port)
        second, _ = dial(self, process, port)
        result = tcpcomm(self, "--admin", url, "broadcast", "to all")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "sent to 2 clients\n")
        self.assertEqual(readLine(first), b"to all\n")
        self.assertEqual(readLine(second), b"to all\n")

    def test_kick(self) -> None:
        """kick closes that client's connection."""
        process, port, url = server(self)
        sock, peer = dial(self, process, port)
        result = tcpcomm(self, "--admin", url, "kick", peer)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, f"disconnecting {peer}\n")
        self.assertEqual(readUntilClosed(sock), b"")

    def test_unknownId(self) -> None:
        """send to an id nobody has exits 1 with the API's message and status on stderr."""
        process, port, url = server(self)
        result = tcpcomm(self, "--admin", url, "send", "127.0.0.1:1", "hi")
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("tcpcomm: no client '127.0.0.1:1' is connected (HTTP 404)", result.stderr)
        self.assertEqual(result.stdout, "")
        self.assertNotIn("Traceback", result.stderr)

    def test_token(self) -> None:
        """A daemon with a token refuses a request without it (exit 1, 401) and takes one with it."""
        folder = scratch(self)
        token = os.path.join(folder, "token")
        with open(token, "w") as f:
            f.write("s3cret-token\n")
        process, port, url = server(self, "--admin-token-file", token)
        result = tcpcomm(self, "--admin", url, "clients")
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn(
            "tcpcomm: a valid 'Authorization: Bearer <token>' header is required (HTTP 401)",
            result.stderr,
        )
        result = tcpcomm(self, "--admin", url, "--token-file", token, "clients")
        self.assertEqual((result.returncode, result.stdout), (0, "no clients connected\n"))
        result = tcpcomm(self, "clients", env={"TCPCOMM_ADMIN": url, "TCPCOMM_TOKEN_FILE": token})
        self.assertEqual((result.returncode, result.stdout), (0, "no clients connected\n"))

    def test_tokenFileByteOrderMark(self) -> None:
        """A token file saved with a UTF-8 byte order mark works for the daemon and the command alike."""
        token = os.path.join(scratch(self), "token")
        with open(token, "w", encoding="utf-8-sig") as f:
            f.write("s3cret-token\r\n")
        process, port, url = server(self, "--admin-token-file", token)
        result = tcpcomm(self, "--admin", url, "--token-file", token, "clients")
        self.assertEqual((result.returncode, result.stdout), (0, "no clients connected\n"))


class ClientCommandTests(SynchronousTestCase):
    """
    status against a real client daemon.
    """

    def test_status(self) -> None:
        """status shows the client connected to its server, and --json says so too."""
        plain = localServer(self)
        port = plain.listeningPort()
        client = Twistd(self, "tcpcomm", "client", "-p", str(port), "--admin", ADMIN)
        url = f"http://127.0.0.1:{client.listeningPort()}"
        client.waitFor(f"connected 127\\.0\\.0\\.1:{port}\\n")
        result = tcpcomm(self, "status", "--admin", url)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, rf"server: +127\.0\.0\.1:{port}\n")
        self.assertRegex(result.stdout, r"state: +connected since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\n")
        result = tcpcomm(self, "--json", "--admin", url, "status")
        self.assertEqual(result.returncode, 0, result.stderr)
        status = json.loads(result.stdout)
        self.assertIs(status["connected"], True)
        self.assertEqual(status["connections"], 1)

    def test_statusWithoutServer(self) -> None:
        """status of a client whose server is down says it is not connected and why."""
        client = Twistd(
            self,
            "tcpcomm",
            "client",
            "-p",
            str(freePort()),
            "--admin",
            ADMIN,
            "--retry-initial",
            "5",
        )
        url = adminURL(client)
        client.waitFor("cannot connect")
        result = tcpcomm(self, "--admin", url, "status")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, r"state: +not connected\n")
        self.assertRegex(result.stdout, r"failed attempts: +[1-9]")


class UnixSocketTests(SynchronousTestCase):
    """
    --admin unix:PATH reaches a daemon whose admin API listens on a UNIX socket.
    """

    def server(self, *args: str) -> tuple[Twistd, int, str]:
        """
        A server with its admin API on a UNIX socket in a scratch folder:
        it, its message port and the socket's path.
        """
        path = os.path.join(scratch(self), "admin.sock")
        process = Twistd(
            self,
            "tcpcomm",
            "server",
            "-p",
            "0",
            "-i",
            "127.0.0.1",
            "--admin",
            "unix:" + path,
            *args,
        )
        port = int(process.waitFor(r"listening on 127\.0\.0\.1:(\d+) \(tcp:").group(1))
        process.waitFor(r"\(admin API unix:")
        return process, port, path

    def test_commands(self) -> None:
        """clients, send and kick work through the socket, given as the daemon's own --admin string."""
        process, port, path = self.server()
        admin = "unix:" + path
        result = tcpcomm(self, "--admin", admin, "clients")
        self.assertEqual((result.returncode, result.stdout), (0, "no clients connected\n"))
        sock, peer = dial(self, process, port)
        result = tcpcomm(self, "--admin", admin, "--json", "clients")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([c["id"] for c in json.loads(result.stdout)], [peer])
        result = tcpcomm(self, "send", peer, "over the socket", env={"TCPCOMM_ADMIN": admin})
        self.assertEqual((result.returncode, result.stdout), (0, f"sent to {peer}\n"))
        self.assertEqual(readLine(sock), b"over the socket\n")
        result = tcpcomm(self, "--admin", f"unix:address={path}:mode=600", "kick", peer)
        self.assertEqual((result.returncode, result.stdout), (0, f"disconnecting {peer}\n"))
        self.assertEqual(readUntilClosed(sock), b"")

    def test_token(self) -> None:
        """A daemon with a token on its socket refuses a request without it and takes one with it."""
        token = os.path.join(scratch(self), "token")
        with open(token, "w") as f:
            f.write("s3cret-token\n")
        process, port, path = self.server("--admin-token-file", token)
        result = tcpcomm(self, "--admin", "unix:" + path, "clients")
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("(HTTP 401)", result.stderr)
        result = tcpcomm(self, "--admin", "unix:" + path, "--token-file", token, "clients")
        self.assertEqual((result.returncode, result.stdout), (0, "no clients connected\n"))

    def test_noSocket(self) -> None:
        """A socket that does not exist exits 3 naming it and the reason, without a traceback."""
        path = os.path.join(scratch(self), "missing.sock")
        result = tcpcomm(self, "--admin", "unix:" + path, "clients")
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertIn(
            f"cannot reach the tcpcomm admin API at unix:{path} (GET /clients): ", result.stderr
        )
        self.assertIn("No such file or directory", result.stderr)
        self.assertNotIn("Traceback", result.stderr)

    def test_notHTTP(self) -> None:
        """A UNIX socket that is a message port, not an admin API, exits 3 and says so."""
        path = os.path.join(scratch(self), "messages.sock")
        process = Twistd(self, "tcpcomm", "server", "--listen", "unix:" + path)
        process.waitFor(r"listening on .*\(unix:")
        result = tcpcomm(self, "--admin", "unix:" + path, "--timeout", "3", "clients")
        self.assertEqual(result.returncode, 3, result.stderr)
        self.assertIn(f"at unix:{path}", result.stderr)
        self.assertNotIn("Traceback", result.stderr)


class UnixSocketParsingTests(SynchronousTestCase):
    """
    --admin takes the daemon's UNIX endpoint strings, in process.
    """

    def test_forms(self) -> None:
        """unix:PATH, unix:address=PATH with options, and an escaped colon all give the path."""
        from tcpcomm.cli import unixSocket

        self.assertEqual(unixSocket("unix:/run/tcpcomm/admin.sock"), "/run/tcpcomm/admin.sock")
        self.assertEqual(unixSocket("unix:address=/run/a.sock:mode=660:lockfile=1"), "/run/a.sock")
        self.assertEqual(unixSocket("unix:/tmp/a\\:b.sock:mode=600"), "/tmp/a:b.sock")
        self.assertEqual(unixSocket("unix:admin.sock"), "admin.sock")
        self.assertIsNone(unixSocket("http://127.0.0.1:9528"))
        self.assertIsNone(unixSocket("127.0.0.1:9528"))

    def test_noPath(self) -> None:
        """unix: with no path is a usage error naming the option and the value."""
        from tcpcomm.cli import USAGE, Failed, unixSocket

        for text in ("unix:", "unix:mode=660"):
            error = self.assertRaises(Failed, unixSocket, text)
            self.assertEqual(error.status, USAGE)
            self.assertIn(f"--admin {text!r} names no socket", error.message)

    def test_otherEndpointsRefused(self) -> None:
        """A tcp: endpoint string is still refused, now pointing at unix:PATH too."""
        from tcpcomm.cli import UNREACHABLE, Failed, adminURL

        error = self.assertRaises(Failed, adminURL, "tcp:9528")
        self.assertEqual(error.status, UNREACHABLE)
        self.assertIn("unix:PATH", error.message)
