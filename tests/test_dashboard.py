"""
The dashboard (C{GET /} on C{--admin}) in a real headless Chromium, driven by
Selenium against a real C{twistd} server.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .processes import (
    STOPPED,
    WAIT,
    Twistd,
    assertCleanLog,
    freePort,
    localServer,
    readUntilClosed,
    scratch,
)

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_SELENIUM = False
else:
    HAVE_SELENIUM = True

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPLY = re.compile(rb"^response from server \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\n$")

T = TypeVar("T")


def skipReason() -> str | None:
    """
    Why the browser tests cannot run here, or L{None} if they can.
    """
    if not HAVE_SELENIUM:
        return "selenium is not installed (pip install selenium)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    return None


def dial(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT)


def peerId(sock: socket.socket) -> str:
    """
    The id the server gives the peer at the other end of C{sock}.
    """
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def readLine(sock: socket.socket) -> bytes:
    """
    One line from C{sock}, newline included.
    """
    sock.settimeout(WAIT)
    data = b""
    deadline = time.monotonic() + WAIT
    while not data.endswith(b"\n"):
        if time.monotonic() > deadline:
            raise AssertionError(f"no whole line within {WAIT} s; got {data!r}")
        chunk = sock.recv(1)
        if not chunk:
            raise AssertionError(f"closed after {data!r}")
        data += chunk
    return data


def processesUsing(marker: str) -> list[int]:
    """
    The pids of live processes whose command line mentions C{marker}.
    """
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rpartition(b")")[2].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state not in (b"Z", b"X"):
            pids.append(int(entry))
    return pids


class Browser:
    """
    A headless Chromium under chromedriver, with a scratch folder for its
    profile and home (so nothing lands in the real home, crash reports
    included); stopping it leaves no chromedriver or chromium process behind.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.home = scratch(case)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,900",
            f"--user-data-dir={os.path.join(self.home, 'profile')}",
        ):
            options.add_argument(argument)
        env = dict(os.environ, HOME=self.home)
        env["XDG_CONFIG_HOME"] = os.path.join(self.home, "config")
        env["XDG_CACHE_HOME"] = os.path.join(self.home, "cache")
        self.service = Service(CHROMEDRIVER, env=env)
        self.driver: WebDriver | None = None
        case.addCleanup(self.stop)
        self.driver = webdriver.Chrome(options=options, service=self.service)
        self.driver.set_page_load_timeout(WAIT)
        self.driver.set_script_timeout(WAIT)

    def stop(self) -> None:
        """
        Quit the browser and chromedriver; kill by pid whatever lingers.
        """
        driver, self.driver = self.driver, None
        try:
            if driver is not None:
                driver.quit()
        finally:
            leftovers = processesUsing(self.home)
            deadline = time.monotonic() + WAIT
            while leftovers and time.monotonic() < deadline:
                time.sleep(0.05)
                leftovers = processesUsing(self.home)
            for pid in leftovers:
                os.kill(pid, signal.SIGKILL)
            process = getattr(self.service, "process", None)
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(WAIT)

    @property
    def d(self) -> WebDriver:
        assert self.driver is not None, "the browser was stopped"
        return self.driver

    def wait(self, condition: Callable[[WebDriver], T], message: str = "") -> T:
        """
        Wait (at most L{WAIT} seconds) until C{condition} holds.
        """
        result: T = WebDriverWait(self.d, WAIT, poll_frequency=0.05).until(condition, message)
        return result

    def find(self, selector: str) -> WebElement:
        return self.d.find_element(By.CSS_SELECTOR, selector)

    def rows(self) -> dict[str, list[str]]:
        """
        The clients table: each row's cells by the row's client id.
        """
        rows = self.d.execute_script(
            "return Array.from(document.querySelectorAll('#clients tbody tr'),"
            " tr => [tr.dataset.id, Array.from(tr.cells, td => td.textContent)]);"
        )
        return {rowId: cells for rowId, cells in rows}

    def tail(self) -> list[tuple[str, str, str]]:
        """
        The live tail: (kind, peer, text) of each line.
        """
        lines = self.d.execute_script(
            "return Array.from(document.querySelectorAll('#tail li'), li => [li.dataset.kind,"
            " li.querySelector('.peer').textContent, li.querySelector('.text').textContent]);"
        )
        return [(kind, peer, text.strip()) for kind, peer, text in lines]

    def open(self, url: str) -> None:
        """
        Load the dashboard and wait until its event stream is live.
        """
        self.d.get(url)
        self.wait(
            lambda d: self.find("#status").get_attribute("data-state") == "live",
            "the dashboard's event stream never went live",
        )


class DashboardTestCase(SynchronousTestCase):
    """
    A real server with an admin API, its dashboard in a headless Chromium.
    """

    def setUp(self) -> None:
        reason = skipReason()
        if reason is not None:
            raise SkipTest(reason)

    def server(self, *args: str, admin: int = 0) -> tuple[Twistd, int, str]:
        """
        Start a server with an admin API (on port C{admin}, 0 for any); return
        it, its message port and the dashboard's URL.
        """
        process = localServer(
            self,
            "--reply-delay",
            "0",
            "--admin",
            f"tcp:{admin}:interface=127.0.0.1",
            *args,
        )
        port = process.listeningPort()
        adminPort = process.waitFor(r"listening on 127\.0\.0\.1:(\d+) \(admin API").group(1)
        return process, port, f"http://127.0.0.1:{adminPort}/"

    def client(self, browser: Browser, port: int) -> tuple[socket.socket, str]:
        """
        Connect a plain socket client and wait for its row; return it and its id.
        """
        sock = dial(port)
        self.addCleanup(sock.close)
        sockId = peerId(sock)
        browser.wait(lambda d: sockId in browser.rows(), f"{sockId} never appeared")
        return sock, sockId


class DashboardTests(DashboardTestCase):
    """
    The dashboard lists clients, sends to them, tails the traffic and kicks.
    """

    def test_sendAndTail(self) -> None:
        """A message sent from the form reaches the client, and the tail shows its traffic."""
        process, port, url = self.server()
        browser = Browser(self)
        browser.open(url)
        sock, sockId = self.client(browser, port)
        self.assertEqual(browser.rows()[sockId][:2], [sockId, sockId])

        Select(browser.find("#target")).select_by_value(sockId)
        browser.find("#text").send_keys("hello from the dashboard ✓")
        browser.find("#send").click()
        self.assertEqual(readLine(sock), "hello from the dashboard ✓\n".encode())
        browser.wait(
            lambda d: browser.find("#result").text == f"sent to {sockId}",
            "no result shown for the send",
        )

        sock.sendall(b"pong\n")
        reply = readLine(sock)
        self.assertRegex(reply, REPLY)

        expected = [
            ("connected", sockId, ""),
            ("out", sockId, "hello from the dashboard ✓"),
            ("in", sockId, "pong"),
            ("out", sockId, reply.decode().rstrip("\n")),
        ]
        browser.wait(
            lambda d: browser.tail() == expected, "the tail lacks the client's pong or the reply"
        )
        bytesOut = len("hello from the dashboard ✓".encode()) + len(reply) - 1
        browser.wait(
            lambda d: browser.rows()[sockId][5:9] == ["1", "2", "4 B", f"{bytesOut} B"],
            "the counters never showed 1 message in and 2 out",
        )

        # A page that goes away mid-stream leaves the daemon's log clean.
        browser.stop()
        self.assertIn(process.stop(), STOPPED)
        assertCleanLog(self, process.output())

    def test_reconnects(self) -> None:
        """When the daemon restarts, the page reconnects its event stream and carries on."""
        admin = freePort()
        first, _, url = self.server(admin=admin)
        browser = Browser(self)
        browser.open(url)
        self.assertIn(first.stop(), STOPPED)
        browser.wait(
            lambda d: browser.find("#status").get_attribute("data-state") == "down",
            "the page did not notice the daemon going away",
        )
        _, port, _ = self.server(admin=admin)
        browser.wait(
            lambda d: browser.find("#status").get_attribute("data-state") == "live",
            "the page did not reconnect",
        )
        sock, sockId = self.client(browser, port)
        browser.wait(
            lambda d: ("connected", sockId, "") in browser.tail(),
            "the new stream does not feed the tail",
        )

    def test_kick(self) -> None:
        """A row's kick button disconnects that client, and only that one, and its row goes."""
        _, port, url = self.server()
        browser = Browser(self)
        browser.open(url)
        kicked, kickedId = self.client(browser, port)
        kept, keptId = self.client(browser, port)

        row = browser.find(f'#clients tbody tr[data-id="{kickedId}"]')
        row.find_element(By.CSS_SELECTOR, "button.kick").click()
        self.assertEqual(readUntilClosed(kicked), b"")
        browser.wait(lambda d: kickedId not in browser.rows(), f"{kickedId}'s row stayed")
        self.assertEqual(list(browser.rows()), [keptId])
        self.assertEqual(browser.find("#result").text, f"disconnected {kickedId}")
        browser.wait(
            lambda d: ("lost", kickedId, "Connection was closed cleanly.") in browser.tail(),
            "the tail does not show the kicked client leaving",
        )

    def test_broadcastAndError(self) -> None:
        """Broadcast reaches every client; an API error is shown as the API words it."""
        _, port, url = self.server("--max-message-size", "16")
        browser = Browser(self)
        browser.open(url)
        first, _ = self.client(browser, port)
        second, _ = self.client(browser, port)

        browser.find("#text").send_keys("to everyone")
        browser.find("#broadcast").click()
        self.assertEqual(readLine(first), b"to everyone\n")
        self.assertEqual(readLine(second), b"to everyone\n")
        browser.wait(
            lambda d: browser.find("#result").text == "broadcast to 2 client(s)",
            "no result shown for the broadcast",
        )

        browser.find("#text").send_keys("x" * 17)
        browser.find("#send").click()
        browser.wait(
            lambda d: (
                browser.find("#result").text
                == "the message is 17 bytes, over --max-message-size 16"
            ),
            "the API's error was not shown",
        )
        self.assertEqual(browser.find("#result").get_attribute("class"), "error")

    def test_token(self) -> None:
        """With --admin-token-file the page asks for the token once and then works."""
        tokenFile = os.path.join(scratch(self), "token")
        with open(tokenFile, "w") as f:
            f.write("s3cret-token\n")
        _, port, url = self.server("--admin-token-file", tokenFile)
        browser = Browser(self)
        browser.d.get(url)
        tokenField = browser.find("#token")
        browser.wait(lambda d: tokenField.is_displayed(), "the token field never showed")
        self.assertEqual(browser.find("#status").get_attribute("data-state"), "auth")
        tokenField.send_keys("s3cret-token")
        browser.find("#token-save").click()
        browser.wait(
            lambda d: browser.find("#status").get_attribute("data-state") == "live",
            "the event stream did not go live with the token",
        )
        sock, sockId = self.client(browser, port)

        # The token lives in sessionStorage: a reload asks for nothing.
        browser.open(url)
        self.assertFalse(browser.find("#token").is_displayed())
        browser.wait(lambda d: sockId in browser.rows(), f"{sockId} missing after a reload")


class LiveViewTests(DashboardTestCase):
    """
    The traffic chart, the waiting messages and a tail that opens with the last events.
    """

    def test_tailOpensWithRecent(self) -> None:
        """A page opened after some traffic shows that traffic in its tail at once."""
        process, port, url = self.server()
        sock = dial(port)
        self.addCleanup(sock.close)
        sockId = peerId(sock)
        sock.sendall(b"early\n")
        reply = readLine(sock).decode().rstrip("\n")
        browser = Browser(self)
        browser.open(url)
        expected = [("connected", sockId, ""), ("in", sockId, "early"), ("out", sockId, reply)]
        browser.wait(lambda d: browser.tail()[:3] == expected, "the tail did not open with them")

    def test_chart(self) -> None:
        """The chart samples /metrics: one connection, and messages in and out per second."""
        process, port, url = self.server()
        browser = Browser(self)
        browser.open(url)
        sock, _ = self.client(browser, port)
        browser.wait(
            lambda d: browser.find("#now-connections").text == "1", "the chart never showed 1"
        )
        for _ in range(5):
            sock.sendall(b"ping\n")
            readLine(sock)
        rates = "return samples.map(s => [s.inRate, s.outRate]);"
        browser.wait(
            lambda d: any(i and o for i, o in d.execute_script(rates)),
            "no sample counted messages in and out",
        )
        painted = browser.d.execute_script(
            "const c = document.getElementById('chart-messages');"
            "const p = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let n = 0; for (let i = 3; i < p.length; i += 4) if (p[i]) n++; return n;"
        )
        self.assertGreater(painted, 100)

    def test_queues(self) -> None:
        """GET /queues is shown one row per name, with whether it is connected; a 404 says there are none."""
        _, port, url = self.server()
        browser = Browser(self)
        browser.open(url)
        sock, sockId = self.client(browser, port)
        browser.d.execute_script(
            "renderQueues({queues: [{id: arguments[0], messages: 2, bytes: 10,"
            " oldestAgeSeconds: 3}, {id: 'agent-7', messages: 1, bytes: 2048,"
            " oldestAgeSeconds: 600}]});",
            sockId,
        )
        rows = browser.d.execute_script(
            "return Array.from(document.querySelectorAll('#queues tbody tr'),"
            " tr => Array.from(tr.cells, td => td.textContent));"
        )
        self.assertEqual(
            rows, [[sockId, "yes", "2", "10 B", "3 s"], ["agent-7", "no", "1", "2048 B", "10 min"]]
        )
        # A daemon without queues answers 404; the page says so and carries on.
        browser.d.execute_async_script(
            "const done = arguments[arguments.length - 1], real = window.fetch;"
            "window.fetch = (path, init) => path === '/queues'"
            ' ? Promise.resolve(new Response(\'{"error": "no such route: GET /queues"}\','
            " {status: 404, headers: {'Content-Type': 'application/json'}}))"
            " : real(path, init);"
            "queuesMissing = false; refreshQueues().then(done);"
        )
        self.assertEqual(
            browser.find("#queues-note").text,
            "This daemon keeps no queues (it has no GET /queues).",
        )
        self.assertFalse(browser.find("#queues").is_displayed())
        self.assertEqual(browser.find("#status").get_attribute("data-state"), "live")
