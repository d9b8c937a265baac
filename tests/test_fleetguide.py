"""
The fleet guide (C{docs/fleet.md}) as a person follows it: its fleet script
(C{contrib/fleet/fleet.sh}) run for real on free loopback ports, with a real
C{redis-server}, three C{twistd} nodes and C{haproxy}, then a client through
HAProxy and the guide's C{curl} lines; and the node settings and systemd
drop-in it ships.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import tomllib
from functools import partial

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tcpcomm.options import ServerOptions

from .processes import BIN, TWISTD, WAIT, Twistd, assertCleanLog, environment, freePort, scratch
from .test_backplane_endtoend import waitUntil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(ROOT, "docs", "fleet.md")
SCRIPT = os.path.join(ROOT, "contrib", "fleet", "fleet.sh")
NODE = os.path.join(ROOT, "contrib", "fleet", "node.toml")
DROPIN = os.path.join(ROOT, "contrib", "fleet", "tcpcomm-server-fleet.conf")
UNIT = "tcpcomm-server.service"
NAMES = ("node1", "node2", "node3")
#: The guide's ports (those of the HAProxy sample) and the script's Redis.
FRONT, STATS, NODES, ADMINS, REDIS = 9527, 9540, (9531, 9532, 9533), (9541, 9542, 9543), 6390


def guideRecipe(name: str) -> str:
    """
    The code block that follows C{<!-- recipe: name -->} in the fleet guide.
    """
    with open(GUIDE, encoding="utf-8") as f:
        text = f.read()
    match = re.search(rf"<!-- recipe: {name} -->\n```\w*\n(.*?)```", text, re.DOTALL)
    if match is None:
        raise AssertionError(f"docs/fleet.md has no recipe {name!r}")
    return match.group(1)


def needFleet() -> None:
    """
    Skip unless the programs the script runs are here, and this tcpcomm has
    both the backplane and the PROXY protocol (each lands on its own branch).
    """
    for program in ("redis-server", "redis-cli", "curl", "setsid"):
        if shutil.which(program) is None:
            raise SkipTest(f"{program} is not installed (.ci/run installs redis-server)")
    if shutil.which("haproxy") is None and not os.path.exists("/usr/sbin/haproxy"):
        raise SkipTest("haproxy is not installed (.ci/run installs it)")
    if not os.path.exists(os.path.join(ROOT, "contrib", "haproxy", "haproxy.cfg")):
        raise SkipTest("no contrib/haproxy/haproxy.cfg here (the front's branch adds it)")
    known = {o[0] for o in ServerOptions.optParameters} | {o[0] for o in ServerOptions.optFlags}
    for option in ("backplane", "proxy-protocol"):
        if option not in known:
            raise SkipTest(f"this tcpcomm has no --{option} (it lands on another branch)")


def alive(pid: int) -> bool:
    """
    Whether process C{pid} exists and is not a zombie.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def pidFiles(folder: str) -> dict[str, int]:
    """
    The pid of each process the script started in C{folder/fleet}, from its
    pid files.
    """
    found = {}
    for name in ("redis", *NAMES, "haproxy"):
        path = os.path.join(folder, "fleet", f"{name}.pid")
        if os.path.exists(path):
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
            if text:  # empty only while the script writes it
                found[name] = int(text)
    return found


def killLeft(folder: str) -> None:
    """
    Whatever the outcome (a start that timed out, a stop that failed), no
    process of the fleet outlives the test: each pid file the script still
    has is a process it did not stop.
    """
    for pid in pidFiles(folder).values():
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


class FleetScriptTests(SynchronousTestCase):
    """
    The guide's fleet script starts a fleet a client can use through HAProxy,
    and stops every process of it.
    """

    def setUp(self) -> None:
        needFleet()
        self.folder = scratch(self)
        self.addCleanup(killLeft, self.folder)
        self.front, self.stats, self.redis = freePort(), freePort(), freePort()
        self.nodes = [freePort() for _ in NAMES]
        self.admins = [freePort() for _ in NAMES]
        self.env = environment()
        self.env["PATH"] = BIN + os.pathsep + self.env.get("PATH", "")
        self.env.update(
            FRONT_PORT=str(self.front),
            STATS_PORT=str(self.stats),
            NODE_PORTS=" ".join(map(str, self.nodes)),
            ADMIN_PORTS=" ".join(map(str, self.admins)),
            REDIS_PORT=str(self.redis),
            TWISTD=TWISTD,
            WAIT=str(int(3 * WAIT)),
        )

    def ports(self, text: str) -> str:
        """
        The guide's C{text} with its ports replaced by this test's and the
        script named by its path.
        """
        mapping = {FRONT: self.front, STATS: self.stats, REDIS: self.redis}
        mapping.update(zip(NODES, self.nodes, strict=True))
        mapping.update(zip(ADMINS, self.admins, strict=True))
        text = text.replace("contrib/fleet/fleet.sh", SCRIPT)
        return re.sub(r"\b\d{4}\b", lambda m: str(mapping.get(int(m.group()), m.group())), text)

    def sh(self, command: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
        """
        Run one guide command line with C{sh} in the scratch folder.
        """
        return subprocess.run(
            ["sh", "-e", "-c", command],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def pids(self) -> dict[str, int]:
        return pidFiles(self.folder)

    def clients(self, admin: int, local: bool = False) -> dict[str, str]:
        """
        The clients a node's C{GET /clients} lists, by id, with their node.
        """
        done = self.sh(f"curl -sf http://127.0.0.1:{admin}/clients{'?local=1' if local else ''}")
        if done.returncode != 0:
            return {}
        return {c["id"]: c["node"] for c in json.loads(done.stdout)}

    def listing(self, admin: int, everyone: set[str]) -> dict[str, str] | None:
        """
        A node's fleet view once it lists exactly C{everyone}.
        """
        view = self.clients(admin)
        return view if set(view) == everyone else None

    def statusUp(self) -> bool:
        """
        Whether the script's C{status} says every process runs and HAProxy
        sees every node up.
        """
        done = self.sh(f"{SCRIPT} status fleet")
        return done.returncode == 0 and done.stdout.endswith("UP: node1 node2 node3 \n")

    def test_guide(self) -> None:
        """The guide's commands start a fleet, reach a client across nodes through HAProxy, and stop every process."""
        start, clientLine, listLine, sendLine, stop = self.ports(guideRecipe("fleet")).splitlines()
        started = self.sh(start, timeout=10 * WAIT)
        pids = self.pids()
        self.assertEqual(started.returncode, 0, started.stdout + started.stderr)
        self.assertEqual(set(pids), {"redis", *NAMES, "haproxy"})
        self.assertIn(f"fleet up in {os.path.join(self.folder, 'fleet')}", started.stdout)
        # On a loaded machine a health check may time out once after the
        # start saw all three up (a node is out only after two): wait.
        waitUntil(self.statusUp, "status: every process running and every node up", 3 * WAIT)

        words = shlex.split(clientLine)
        self.assertEqual(words[:3], ["twistd", "-n", "--pidfile="])
        first = Twistd(self, *words[3:], cwd=self.folder)
        first.waitFor(rf"connected 127\.0\.0\.1:{self.front}\b", timeout=3 * WAIT)
        others = [
            Twistd(self, *[w.replace("agent-1", name) for w in words[3:]], cwd=self.folder)
            for name in ("agent-2", "agent-3")
        ]
        everyone = {"agent-1", "agent-2", "agent-3"}

        # Every node lists the whole fleet, each client on one node.
        views = [
            waitUntil(partial(self.listing, admin, everyone), f"{admin} lists {everyone}", 3 * WAIT)
            for admin in self.admins
        ]
        self.assertEqual(views[1:], views[:1] * 2)
        self.assertLessEqual(set(views[0].values()), set(NAMES))
        local: dict[str, str] = {}
        for name, admin in zip(NAMES, self.admins, strict=True):
            mine = self.clients(admin, local=True)
            self.assertEqual(set(mine.values()) | {name}, {name})
            local.update(mine)
        self.assertEqual(local, views[0])
        listed = self.sh(self.ports(listLine))
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertEqual({c["id"] for c in json.loads(listed.stdout)}, everyone)

        # The guide's send, through a node that does not hold agent-1.
        holder = views[0]["agent-1"]
        other = next(a for n, a in zip(NAMES, self.admins, strict=True) if n != holder)
        sendLine = re.sub(r"127\.0\.0\.1:\d+/", f"127.0.0.1:{other}/", sendLine)
        sent = self.sh(sendLine)
        self.assertEqual(
            (sent.returncode, json.loads(sent.stdout)),
            (0, {"id": "agent-1", "node": holder, "sent": 1}),
        )
        first.waitFor(rf"message from 127\.0\.0\.1:{self.front}: restart", timeout=3 * WAIT)

        for client in (first, *others):
            client.stop()
        stopped = self.sh(stop, timeout=5 * WAIT)
        self.assertEqual(stopped.returncode, 0, stopped.stdout + stopped.stderr)
        waitUntil(
            lambda: not [n for n, pid in pids.items() if alive(pid)],
            "every process of the fleet gone",
            timeout=WAIT,
        )
        self.assertEqual(self.pids(), {})
        self.assertEqual(self.sh(f"{SCRIPT} status fleet").returncode, 1)
        for name in NAMES:
            with open(os.path.join(self.folder, "fleet", f"{name}.log"), encoding="utf-8") as f:
                assertCleanLog(self, f.read())

    def test_refusesRunningFleet(self) -> None:
        """A second start in a folder whose fleet runs says so and fails, leaving that fleet running."""
        self.addCleanup(self.sh, f"{SCRIPT} stop fleet", 5 * WAIT)
        started = self.sh(f"{SCRIPT} start fleet", timeout=10 * WAIT)
        pids = self.pids()
        self.assertEqual(started.returncode, 0, started.stdout + started.stderr)
        again = self.sh(f"{SCRIPT} start fleet", timeout=10 * WAIT)
        self.assertEqual(again.returncode, 1)
        self.assertIn("redis already runs", again.stderr)
        self.assertEqual(self.pids(), pids)
        self.assertTrue(all(alive(pid) for pid in pids.values()), pids)


class WaitTests(SynchronousTestCase):
    """
    The script's bounded waits name what did not happen.
    """

    def test_nodeThatCannotStart(self) -> None:
        """A node that exits at once (its port taken) fails the start within the wait, naming the node, and stop cleans up."""
        needFleet()
        folder = scratch(self)
        env = environment()
        env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
        ports = [freePort() for _ in range(9)]
        env.update(
            FRONT_PORT=str(ports[0]),
            STATS_PORT=str(ports[1]),
            NODE_PORTS=f"{ports[2]} {ports[2]} {ports[3]}",
            ADMIN_PORTS=f"{ports[4]} {ports[5]} {ports[6]}",
            REDIS_PORT=str(ports[7]),
            TWISTD=TWISTD,
            WAIT=str(int(2 * WAIT)),
        )

        def run(command: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [SCRIPT, command, "fleet"],
                cwd=folder,
                env=env,
                capture_output=True,
                text=True,
                timeout=10 * WAIT,
                stdin=subprocess.DEVNULL,
            )

        self.addCleanup(killLeft, folder)
        self.addCleanup(run, "stop")
        begun = time.monotonic()
        started = run("start")
        self.assertEqual(started.returncode, 1, started.stdout + started.stderr)
        self.assertRegex(
            started.stderr, r"node[12]: GET /healthz answering 200 on port \d+ did not"
        )
        self.assertLess(time.monotonic() - begun, 8 * WAIT)
        stopped = run("stop")
        self.assertEqual(stopped.returncode, 0, stopped.stderr)
        self.assertEqual(run("status").returncode, 1)


class ArgumentTests(SynchronousTestCase):
    """
    The script refuses what it cannot use before it starts anything.
    """

    def refused(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        folder = scratch(self)
        done = subprocess.run(
            [SCRIPT, *args],
            cwd=folder,
            env={**environment(), **env},
            capture_output=True,
            text=True,
            timeout=WAIT,
            stdin=subprocess.DEVNULL,
        )
        self.assertEqual(done.returncode, 2, done.stdout + done.stderr)
        self.assertEqual(done.stdout, "")
        self.assertEqual(sorted(os.listdir(folder)), ["fleet"] if len(args) > 1 else [])
        self.assertEqual(os.listdir(os.path.join(folder, "fleet")) if len(args) > 1 else [], [])
        return done

    def test_usage(self) -> None:
        """Without a command and a folder, or with an unknown command, it prints its usage."""
        self.assertIn("usage: ", self.refused("start").stderr)
        self.assertIn("usage: ", self.refused("restart", "fleet").stderr)

    def test_badNumbers(self) -> None:
        """A port or WAIT that is not a whole number is named, as is a wrong count of node ports."""
        self.assertIn(
            "not a whole number (a port, or WAIT in seconds): '4.5'",
            self.refused("start", "fleet", WAIT="4.5").stderr,
        )
        self.assertIn("'95x1'", self.refused("start", "fleet", FRONT_PORT="95x1").stderr)
        self.assertIn(
            "name three ports each, not '9531 9532'",
            self.refused("start", "fleet", NODE_PORTS="9531 9532").stderr,
        )


class NodeSettingsTests(SynchronousTestCase):
    """
    The guide's settings for a node under systemd: C{contrib/fleet/node.toml}
    and the drop-in C{contrib/fleet/tcpcomm-server-fleet.conf} for
    C{contrib/systemd/tcpcomm-server.service}.
    """

    def verify(self, edit: tuple[str, str] = ("", "")) -> tuple[int, str]:
        """
        C{systemd-analyze verify} of the server unit with the drop-in (with
        C{edit} applied to it) beside it, the installed programs' folder
        replaced by this one; its exit code and output.
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not on PATH (Debian: apt-get install systemd)")
        folder = scratch(self)
        os.mkdir(os.path.join(folder, f"{UNIT}.d"))
        for source, target in (
            (os.path.join(ROOT, "contrib", "systemd", UNIT), UNIT),
            (DROPIN, f"{UNIT}.d/fleet.conf"),
        ):
            with open(source, encoding="utf-8") as f:
                text = f.read().replace("/opt/tcpcomm/bin/", BIN + os.sep)
            if target != UNIT:
                text = text.replace(*edit)
            with open(os.path.join(folder, target), "w", encoding="utf-8") as f:
                f.write(text)
        env = environment()
        env["SYSTEMD_LOG_COLOR"] = "0"
        result = subprocess.run(
            [analyze, "verify", UNIT],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=WAIT,
            stdin=subprocess.DEVNULL,
        )
        output = result.stdout + result.stderr
        if result.returncode != 0 and "tcpcomm" not in output:
            raise SkipTest(f"systemd-analyze verify cannot run here: {output}")
        return result.returncode, output

    def test_verify(self) -> None:
        """The server unit with the fleet drop-in verifies with no message about either."""
        code, output = self.verify()
        self.assertEqual([line for line in output.splitlines() if "tcpcomm" in line], [], output)
        self.assertEqual(code, 0, output)

    def test_verifyReadsDropIn(self) -> None:
        """The check reads the drop-in: a bad value in it is reported."""
        code, output = self.verify(("TimeoutStopSec=45s", "TimeoutStopSec=4x5s"))
        self.assertIn("fleet.conf:", output)

    def test_stopTimeout(self) -> None:
        """systemd waits longer for a stop than the node's drain and shutdown take together."""
        with open(DROPIN, encoding="utf-8") as f:
            [seconds] = re.findall(r"^TimeoutStopSec=(\d+)s$", f.read(), re.MULTILINE)
        with open(NODE, "rb") as f:
            server = tomllib.load(f)["server"]
        self.assertGreater(int(seconds), server["drain-period"] + server["shutdown-timeout"])

    def test_checkConfig(self) -> None:
        """check-config accepts node.toml, its credentials and Redis password in place."""
        needFleet()
        folder = scratch(self)
        with open(NODE, encoding="utf-8") as f:
            text = f.read().replace("/run/credentials/tcpcomm-server.service", folder)
        for name, content in (
            ("client-tokens", "agent-1 0123456789abcdef\n"),
            ("admin-token", "fedcba9876543210\n"),
            ("redis-password", "secret\n"),
        ):
            with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
                f.write(content)
        path = os.path.join(folder, "server.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        result = subprocess.run(
            [os.path.join(BIN, "tcpcomm"), "check-config", path],
            env=environment(),
            capture_output=True,
            text=True,
            timeout=WAIT,
            stdin=subprocess.DEVNULL,
        )
        self.assertEqual((result.returncode, result.stderr), (0, ""))
