"""
Real C{twistd} subprocesses for the end-to-end tests: started from a
temporary folder (so only the installed package can answer), every wait
bounded, every process stopped by its pid whatever the outcome.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")
WAIT = 15.0  # the longest any single wait may take, in seconds
# After a clean shutdown on SIGTERM, twistd re-raises the signal so that its
# parent sees how it ended: the exit status is -SIGTERM (0 on older Twisted).
STOPPED = (0, -signal.SIGTERM)


def _ephemeralLow() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


#: Ports below the kernel's ephemeral range: no outgoing connection and no
#: bind to port 0 is ever given one, so a port chosen here stays free until
#: the server it was chosen for binds it, however many connections the
#: other test process makes meanwhile (a port the kernel handed out, then
#: freed, did not: seen as "Address already in use" under -j2). Each
#: process draws its own sequence.
_LOW_PORTS = range(10000, _ephemeralLow())
_draw = random.Random(f"{os.getpid()}-{time.monotonic_ns()}")


def freePort() -> int:
    """
    A loopback TCP port nobody listens on right now, and that the kernel
    gives to no one else meanwhile.
    """
    for _ in range(100 if len(_LOW_PORTS) > 1000 else 0):
        port = _draw.choice(_LOW_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scratch(case: SynchronousTestCase) -> str:
    """
    A new temporary folder outside the repository, removed after the test.
    """
    path = tempfile.mkdtemp(prefix="tcpcomm-e2e-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(
    case: SynchronousTestCase, *args: str, timeout: float = WAIT
) -> subprocess.CompletedProcess[str]:
    """
    Run C{twistd args} to completion in a scratch folder.
    """
    if not os.path.exists(TWISTD):
        raise SkipTest(f"no twistd beside {sys.executable}")
    return subprocess.run(
        [TWISTD, *args],
        cwd=scratch(case),
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


class Twistd:
    """
    One C{twistd -n} process whose output goes to a file the test can search.
    """

    def __init__(
        self,
        case: SynchronousTestCase,
        *args: str,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        if not os.path.exists(TWISTD):
            raise SkipTest(f"no twistd beside {sys.executable}")
        self.cwd = cwd or scratch(case)
        self.logPath = os.path.join(self.cwd, f"twistd-{time.monotonic_ns()}.log")
        self._out: IO[bytes] = open(self.logPath, "wb")
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", *args],
            cwd=self.cwd,
            env=environment() if env is None else env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=preexec,
        )
        case.addCleanup(self.stop)

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        with open(self.logPath, encoding="utf-8", errors="replace") as f:
            return f.read()

    def waitFor(self, pattern: str, timeout: float = WAIT, after: int = 0) -> re.Match[str]:
        """
        Wait until the output (from character C{after} on) matches C{pattern}.
        """
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.output(), after)
            if match:
                return match
            if self.process.poll() is not None:
                match = regex.search(self.output(), after)
                if match:
                    return match
                raise AssertionError(
                    f"twistd exited ({self.process.returncode}) before {pattern!r}:\n{self.output()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.output()}")
            time.sleep(0.02)

    def listeningPort(self) -> int:
        """
        The TCP port the server says it listens on.
        """
        return int(self.waitFor(r"listening on (?:[\d.]+|\[[0-9a-f:.]+\]):(\d+)").group(1))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = WAIT) -> int:
        """
        Signal the process by its pid and wait for it; kill it if it lingers.
        """
        if self.process.poll() is None:
            if sig in (signal.SIGTERM, signal.SIGINT):
                signalWhenHandled(self.pid, sig, timeout=5.0)
            else:
                os.kill(self.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout)
        self._out.close()
        return self.process.returncode


def handlesSignal(pid: int, sig: int) -> bool:
    """
    Whether process C{pid} has a handler of its own for C{sig} (Linux's
    C{SigCgt} mask; L{True} where there is no C{/proc} to tell).
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return True
    match = re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.MULTILINE)
    return match is None or bool(int(match.group(1), 16) >> (sig - 1) & 1)


def signalWhenHandled(pid: int, sig: int, timeout: float = WAIT) -> None:
    """
    Send C{sig} to C{pid} once it handles it: twistd logs "listening" before
    its reactor installs the SIGTERM handler, and a signal sent in between
    would end the process without its shutdown.
    """
    deadline = time.monotonic() + timeout
    while not handlesSignal(pid, sig) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(pid, sig)


def waitForFile(path: str, pattern: str, timeout: float = WAIT) -> re.Match[str]:
    """
    Wait until the file at C{path} exists and matches C{pattern}.
    """
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            match = re.search(pattern, text)
            if match:
                return match
        time.sleep(0.02)
    raise AssertionError(f"no {pattern!r} in {path} within {timeout} s:\n{text}")


#: A server on a free loopback port: the start of most servers the tests run.
LOCAL_SERVER = ("tcpcomm", "server", "-p", "0", "-i", "127.0.0.1")


def localServer(case: SynchronousTestCase, *args: str, **kwargs: Any) -> Twistd:
    """
    C{twistd -n tcpcomm server} on a free loopback port, with C{args}.
    """
    return Twistd(case, *LOCAL_SERVER, *args, **kwargs)


class Daemon:
    """
    A daemonized C{twistd} (no C{-n}) with its own pidfile and logfile in
    C{folder}, stopped by its pid after the test.
    """

    def __init__(self, case: SynchronousTestCase, folder: str, name: str, *args: str) -> None:
        self.pidfile = os.path.join(folder, f"{name}.pid")
        self.logfile = os.path.join(folder, f"{name}.log")
        result = run(case, "--pidfile", self.pidfile, "--logfile", self.logfile, *args)
        case.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        waitForFile(self.pidfile, r"^\d+")
        with open(self.pidfile) as f:
            self.pid = int(f.read())
        case.addCleanup(self.stop)

    def log(self) -> str:
        with open(self.logfile, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        """
        SIGTERM the daemon and wait (bounded) for its pidfile to go; kill it
        if it lingers.
        """
        try:
            signalWhenHandled(self.pid, signal.SIGTERM, timeout=5.0)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + WAIT
        while os.path.exists(self.pidfile) and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return
        os.kill(self.pid, signal.SIGKILL)


def readUntilClosed(sock: socket.socket, timeout: float = WAIT) -> bytes:
    """
    Everything C{sock} receives until the other side closes it.
    """
    sock.settimeout(timeout)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    raise AssertionError(f"still open after {timeout} s; got {b''.join(chunks)!r}")


def assertCleanLog(case: SynchronousTestCase, text: str) -> None:
    """
    The log shows no traceback and no unhandled error.
    """
    for bad in ("Traceback", "Unhandled error", "Unhandled Error"):
        case.assertNotIn(bad, text)


class RedisServer:
    """
    A C{redis-server} of the test's own on a free loopback port, its
    configuration (with C{settings}, lines of C{redis.conf}) and data in a
    scratch folder, without persistence;
    stopped by its pid after the test (woken first if paused).
    """

    def __init__(
        self, case: SynchronousTestCase, *settings: str, tls: tuple[str, str] | None = None
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SkipTest("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.folder = scratch(case)
        self.port = freePort()
        self.config = os.path.join(self.folder, "redis.conf")
        #: With C{tls} (a certificate and key PEM): TLS only, on L{port}.
        self.tls = tls
        if tls is not None:
            settings = (
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {tls[0]}",
                f"tls-key-file {tls[1]}",
                "tls-auth-clients no",
                *settings,
            )
        with open(self.config, "w") as f:
            f.write(
                f"port {self.port}\nbind 127.0.0.1\ndir {self.folder}\n"
                'save ""\nappendonly no\ndaemonize no\n' + "".join(f"{line}\n" for line in settings)
            )
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.start()
        case.addCleanup(self.stop)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def _answers(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as plain:
            s: socket.socket = plain
            if self.tls is not None:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                s = context.wrap_socket(plain)
            s.sendall(b"PING\r\n")
            return s.recv(100).startswith((b"+PONG", b"-NOAUTH"))

    def start(self) -> None:
        """
        Start it (again, on the same port) and wait until it takes commands.
        """
        log = open(os.path.join(self.folder, f"redis-{time.monotonic_ns()}.log"), "wb")
        self.process = subprocess.Popen(
            [self.binary, self.config],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"redis-server exited ({self.process.returncode})")
            try:
                if self._answers():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"redis-server not answering on {self.port} within {WAIT} s")

    def command(self, *words: str) -> bytes:
        """
        One command (plain TCP only), and the first bytes of its answer.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=WAIT) as s:
            s.sendall(" ".join(words).encode() + b"\r\n")
            return s.recv(65536)

    def pause(self) -> None:
        """
        SIGSTOP it: connections stay open, nothing is answered.
        """
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        """
        Stop it by its pid, and wait (bounded); kill it if it lingers.
        """
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if self.paused:
            os.kill(process.pid, signal.SIGCONT)
            self.paused = False
        process.terminate()
        try:
            process.wait(WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(WAIT)
