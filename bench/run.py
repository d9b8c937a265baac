"""
The tcpcomm benchmark: the installed tcpcomm server, side by side in the
same run with two baselines that do the same work (a bare Twisted
LineOnlyReceiver and an asyncio Protocol, both answering each line at once
with the same line).

    python bench/run.py            # the full run, under ~10 minutes
    python bench/run.py --quick    # a short run, under ~2 minutes

Run it with the Python of the environment tcpcomm is installed in: the
server measured is the ``twistd`` next to that Python. Each server is pinned
to CPU 0 (``taskset -c 0``); the load generator, a C program
(``bench/loadgen.c``, compiled with gcc into a scratch folder), and this
script run on CPU 1. Results: a table on standard output and a JSON file in
``bench/results/``. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")
SERVER_CPU = "0"
LOAD_CPU = "1"
BACKLOG = 1024  # given to every server, so that a burst of connections is not dropped
MAX_CONNECTIONS = 20000  # tcpcomm's --max-connections
WAIT = 20.0  # the longest any single wait for a process may take, in seconds
# Log lines that mean something went wrong in a server: a traceback, an
# unhandled error, or a tcpcomm warning or error (refused, oversized, slow
# consumer, handler error, ...).
PROBLEM = re.compile(rb"Traceback|Unhandled [Ee]rror|#(?:warn|error|critical)\]")


# Processes: every one started is remembered, and stopped by its pid.

_started: list[subprocess.Popen[bytes]] = []


def start(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, **kwargs)
    _started.append(process)
    return process


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """
    Signal C{process} by its pid and wait for it; kill it if it lingers.
    """
    if process.poll() is None:
        os.kill(process.pid, sig)
        try:
            process.wait(WAIT)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(WAIT)
    if process in _started:
        _started.remove(process)
    return process.returncode


def stopAll() -> None:
    for process in list(_started):
        stop(process)


# The machine.


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """
    Whether a socket listens on 127.0.0.1:C{port}, from /proc/net/tcp rather
    than by connecting, so that no server sees an extra connection. The
    kernel lists listening sockets first, so the scan stops at the first
    socket in another state.
    """
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] != "0A":
                return False
            if fields[1] == wanted:
                return True
    return False


def rssKiB(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpuSeconds(pid: int) -> float:
    """
    User and system CPU time of process C{pid}.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busySeconds() -> float:
    """
    CPU time spent busy by the whole machine, all CPUs.
    """
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def loadAverage() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def ourCpuSeconds() -> float:
    self_ = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + children.ru_utime + children.ru_stime


def machine() -> dict[str, Any]:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        memKiB = int(f.readline().split()[1])
    versions = subprocess.run(
        [
            sys.executable,
            "-c",
            "import tcpcomm, twisted; print(tcpcomm.__version__, twisted.__version__)",
        ],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    ).stdout.split()
    commit = subprocess.run(
        ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "host": platform.node(),
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(memKiB / 2**20, 1),
        "kernel": platform.release(),
        "os": _osName(),
        "python": platform.python_version(),
        "tcpcomm": versions[0] if versions else "?",
        "twisted": versions[1] if len(versions) > 1 else "?",
        "commit": commit,
        "twistd": TWISTD,
    }


def _osName() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def raiseFileLimit(needed: int) -> int:
    """
    Raise the open-files limit (inherited by every process started) as far
    as the hard limit allows; return it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(needed, soft)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def ephemeralPorts() -> int:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = (int(x) for x in f.read().split())
    return high - low + 1


# The load generator.


def buildLoadgen(build: str) -> str:
    """
    Compile bench/loadgen.c into C{build} (again only if the source changed).
    """
    source = os.path.join(HERE, "loadgen.c")
    binary = os.path.join(build, "loadgen")
    if not os.path.exists(binary) or os.path.getmtime(binary) < os.path.getmtime(source):
        subprocess.run(
            ["gcc", "-O2", "-Wall", "-Wextra", "-o", binary, source, "-lm"],
            check=True,
        )
    return binary


class Loadgen:
    """
    One run of the load generator on the load CPU, reporting JSON lines.
    """

    def __init__(self, binary: str, mode: str, port: int, **options: float | int) -> None:
        argv = ["taskset", "-c", LOAD_CPU, binary, mode, "--port", str(port)]
        for key, value in options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        self.process = start(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._buffer = b""

    def event(self, timeout: float) -> dict[str, Any]:
        """
        The next JSON line it prints, waiting at most C{timeout} seconds.
        """
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"loadgen: nothing within {timeout} s")
            ready, _, _ = select.select([stdout], [], [], left)
            if ready:
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"loadgen exited: {self.stderr()}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        result: dict[str, Any] = json.loads(line)
        return result

    def tell(self, text: str) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(text.encode())
        stdin.flush()

    def stderr(self) -> str:
        if self.process.poll() is None:
            return ""
        err = self.process.stderr
        return err.read().decode(errors="replace").strip() if err is not None else ""

    def finish(self) -> None:
        stop(self.process)
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


# Servers.


@dataclass
class ServerKind:
    """
    How to run one server under test: C{argv(port, handler)}, whether its
    output is kept (and searched for problems) or discarded, and the
    handlers it has.
    """

    name: str
    argv: Callable[[int, str], list[str]]
    keepsLog: bool = True
    handlers: tuple[str, ...] = ("echo",)


def tcpcommArgv(twistd: str, extra: tuple[str, ...] = ()) -> Callable[[int, str], list[str]]:
    def argv(port: int, handler: str) -> list[str]:
        return [
            twistd,
            "-n",
            "--pidfile=",
            "tcpcomm",
            "server",
            "--handler",
            handler,
            "--framing",
            "line",
            "--reply-delay",
            "0",
            "--port",
            str(port),
            "--interface",
            "127.0.0.1",
            "--backlog",
            str(BACKLOG),
            "--max-connections",
            str(MAX_CONNECTIONS),
            *extra,
        ]

    return argv


def scriptArgv(script: str) -> Callable[[int, str], list[str]]:
    def argv(port: int, handler: str) -> list[str]:
        return [sys.executable, os.path.join(HERE, script), str(port), str(BACKLOG)]

    return argv


def hasOption(twistd: str, option: str) -> bool:
    """
    Whether this twistd's tcpcomm server takes C{option}.
    """
    try:
        shown = subprocess.run(
            [twistd, "tcpcomm", "server", "--help"],
            capture_output=True,
            text=True,
            timeout=WAIT,
            cwd=tempfile.gettempdir(),
            env=environment(),
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return option in shown


def serverKinds(extra: list[str]) -> dict[str, ServerKind]:
    both = ("echo", "broadcast")
    kinds = {
        "tcpcomm": ServerKind("tcpcomm", tcpcommArgv(TWISTD), handlers=both),
        # The same, its log written to /dev/null rather than a file: still
        # formatted, but never stored.
        "tcpcomm-devnull": ServerKind(
            "tcpcomm-devnull", tcpcommArgv(TWISTD), keepsLog=False, handlers=both
        ),
        "twisted": ServerKind("twisted", scriptArgv("twisted_server.py")),
        "asyncio": ServerKind("asyncio", scriptArgv("asyncio_server.py")),
    }
    if hasOption(TWISTD, "--no-message-log"):
        kinds["tcpcomm-nolog"] = ServerKind(
            "tcpcomm-nolog", tcpcommArgv(TWISTD, ("--no-message-log",)), handlers=both
        )
    for item in extra:
        label, sep, rest = item.partition("=")
        twistd, *args = rest.split(",")
        if not sep or not os.path.exists(twistd):
            raise SystemExit(f"--extra-twistd wants LABEL=PATH[,ARG...], not {item!r}")
        kinds[label] = ServerKind(label, tcpcommArgv(twistd, tuple(args)), handlers=both)
    return kinds


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


class Server:
    """
    One running server, pinned to the server CPU, in a scratch folder.
    """

    def __init__(self, kind: ServerKind, handler: str, scratch: str, port: int = 0) -> None:
        self.kind = kind
        self.handler = handler
        self.scratch = scratch
        self.port = port or freePort()
        self.logPath = os.path.join(scratch, f"{kind.name}-{time.monotonic_ns()}.log")
        self.problems = 0
        self.firstProblem = ""
        self.process = self._launch()

    def _launch(self) -> subprocess.Popen[bytes]:
        out: IO[bytes]
        out = open(self.logPath, "ab") if self.kind.keepsLog else open(os.devnull, "wb")
        with out:
            process = start(
                ["taskset", "-c", SERVER_CPU, *self.kind.argv(self.port, self.handler)],
                cwd=self.scratch,
                env=environment(),
                stdout=out,
                stderr=subprocess.STDOUT if self.kind.keepsLog else out,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + WAIT
        while not listening(self.port):
            if process.poll() is not None:
                raise RuntimeError(f"{self.kind.name} exited: {self.tail()}")
            if time.monotonic() > deadline:
                stop(process)
                raise RuntimeError(f"{self.kind.name} not listening after {WAIT} s: {self.tail()}")
            time.sleep(0.005)
        return process

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """
        Kill it at once, as a crash would.
        """
        stop(self.process, signal.SIGKILL)

    def restart(self) -> None:
        self.process = self._launch()

    def tail(self) -> str:
        if not self.kind.keepsLog or not os.path.exists(self.logPath):
            return ""
        with open(self.logPath, "rb") as f:
            f.seek(max(0, os.path.getsize(self.logPath) - 2000))
            return f.read().decode(errors="replace")

    def finish(self) -> None:
        """
        Stop it by its pid, count the problems in its log, delete the log.
        """
        stop(self.process)
        if self.kind.keepsLog and os.path.exists(self.logPath):
            with open(self.logPath, "rb") as f:
                for line in f:
                    if PROBLEM.search(line):
                        self.problems += 1
                        if not self.firstProblem:
                            self.firstProblem = line.decode(errors="replace").strip()[:300]
            os.remove(self.logPath)


@contextmanager
def running(kind: ServerKind, handler: str, scratch: str) -> Iterator[Server]:
    server = Server(kind, handler, scratch)
    try:
        yield server
    finally:
        server.finish()


# Workloads. Each run returns its measurements (numbers), and every run
# records errors, connections left unanswered and the load generator's CPU.


@dataclass
class Settings:
    reps: int
    bigReps: int
    duration: float
    warmup: float
    big: int
    broadcasts: int
    pipelineConns: int = 16
    burst: int = 64
    retryInitial: float = 0.1
    retryMax: float = 1.0


@dataclass
class Workload:
    key: str
    title: str
    metrics: list[tuple[str, str, str]]  # (key, label, unit)
    run: Callable[[ServerKind, str, str, Settings], dict[str, Any]]
    handler: str = "echo"
    throughput: str | None = None  # the metric the 90% target applies to
    big: bool = False  # uses Settings.big connections, repeated bigReps times


def measured(result: dict[str, Any], server: Server, cpu: float, wall: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "errors": int(result.get("errors", 0)) + server.problems,
        "unanswered": int(result.get("unanswered", 0)),
        "loadgen_cpu": round(float(result.get("loadgen_cpu", 0.0)), 3),
        "server_cpu": round(cpu / wall, 3) if wall > 0 else 0.0,
    }
    if result.get("first_error"):
        out["first_error"] = result["first_error"]
    if server.firstProblem:
        out["server_log"] = server.firstProblem
    return out


def runLoad(
    mode: str, conns: int, size: int
) -> Callable[[ServerKind, str, str, Settings], dict[str, Any]]:
    """
    A request/response or pipelined run of C{conns} connections (0: the
    pipelined workloads' number) and messages of C{size} bytes, newline
    included.
    """

    def run(kind: ServerKind, loadgen: str, scratch: str, s: Settings) -> dict[str, Any]:
        options: dict[str, float | int] = {
            "conns": conns or s.pipelineConns,
            "size": size,
            "duration": s.duration,
            "warmup": s.warmup,
            "time_limit": 60,
        }
        if mode == "pipeline":
            options["burst"] = s.burst
        with running(kind, "echo", scratch) as server:
            cpu0, t0 = cpuSeconds(server.pid), time.monotonic()
            gen = Loadgen(loadgen, mode, server.port, **options)
            try:
                result = gen.event(90)
            finally:
                gen.finish()
            cpu, wall = cpuSeconds(server.pid) - cpu0, time.monotonic() - t0
        out = measured(result, server, cpu, wall)
        out["rate"] = result["rate"]
        if mode == "rr":
            out["p50_us"] = result["p50_us"]
            out["p99_us"] = result["p99_us"]
        return out

    return run


def warmUp(port: int) -> None:
    """
    One round trip on one connection, so that what the first connection
    loads is not counted per connection.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"warm-up\n")
        got = b""
        for _ in range(100):
            if got.endswith(b"\n"):
                break
            chunk = sock.recv(100)
            if not chunk:
                break
            got += chunk
    time.sleep(0.3)


def runIdle(kind: ServerKind, loadgen: str, scratch: str, s: Settings) -> dict[str, Any]:
    with running(kind, "echo", scratch) as server:
        warmUp(server.port)
        before = rssKiB(server.pid)
        cpu0, t0 = cpuSeconds(server.pid), time.monotonic()
        gen = Loadgen(loadgen, "idle", server.port, conns=s.big, time_limit=120)
        try:
            ready = gen.event(120)
            time.sleep(0.5)
            after = rssKiB(server.pid)
            gen.tell("close\n")
            result = gen.event(30)
        finally:
            gen.finish()
        cpu, wall = cpuSeconds(server.pid) - cpu0, time.monotonic() - t0
    out = measured(result, server, cpu, wall)
    out["unanswered"] = s.big - int(ready["opened"])
    out["rss_per_conn_b"] = round((after - before) * 1024 / s.big, 1)
    out["rss_before_kib"] = before
    out["rss_after_kib"] = after
    out["open_s"] = ready["open_s"]
    return out


def runBroadcast(kind: ServerKind, loadgen: str, scratch: str, s: Settings) -> dict[str, Any]:
    with running(kind, "broadcast", scratch) as server:
        cpu0, t0 = cpuSeconds(server.pid), time.monotonic()
        gen = Loadgen(
            loadgen, "broadcast", server.port, conns=s.big, count=s.broadcasts, time_limit=180
        )
        try:
            result = gen.event(200)
        finally:
            gen.finish()
        cpu, wall = cpuSeconds(server.pid) - cpu0, time.monotonic() - t0
    out = measured(result, server, cpu, wall)
    out["unanswered"] = s.broadcasts - len(result["times"])
    out["last_ms"] = [round(t * 1000, 2) for t in result["times"]]
    out["first_ms"] = [round(t * 1000, 3) for t in result["first"]]
    return out


def runStorm(kind: ServerKind, loadgen: str, scratch: str, s: Settings) -> dict[str, Any]:
    with running(kind, "echo", scratch) as server:
        gen = Loadgen(
            loadgen,
            "storm",
            server.port,
            conns=s.big,
            retry_initial=s.retryInitial,
            retry_max=s.retryMax,
            time_limit=150,
        )
        try:
            ready = gen.event(120)
            if int(ready["errors"]):
                raise RuntimeError(f"storm: could not open every connection: {ready}")
            killedAt = time.monotonic()
            server.kill()
            restartedAt = time.monotonic()
            server.restart()
            listeningAt = time.monotonic()
            cpu0 = cpuSeconds(server.pid)
            result = gen.event(150)
            cpu = cpuSeconds(server.pid) - cpu0
        finally:
            gen.finish()
    lastBack = float(result["last_back"])
    out = measured(result, server, cpu, max(1e-9, lastBack - listeningAt))
    out["unanswered"] = s.big - int(result["back"])
    out["all_back_s"] = round(lastBack - listeningAt, 3)
    out["from_kill_s"] = round(lastBack - killedAt, 3)
    out["restart_s"] = round(listeningAt - restartedAt, 3)
    out["peak_accept_rate"] = result["peak_accept_rate"]
    out["attempts"] = result["attempts"]
    return out


RR_METRICS = [
    ("rate", "round trips/s", "/s"),
    ("p50_us", "p50 latency", "µs"),
    ("p99_us", "p99 latency", "µs"),
]


def workloads() -> list[Workload]:
    return [
        Workload(
            "rr1", "request/response, 1 conn", RR_METRICS, runLoad("rr", 1, 32), throughput="rate"
        ),
        Workload(
            "rr100",
            "request/response, 100 conns",
            RR_METRICS,
            runLoad("rr", 100, 32),
            throughput="rate",
        ),
        Workload(
            "rr1000",
            "request/response, 1000 conns",
            RR_METRICS,
            runLoad("rr", 1000, 32),
            throughput="rate",
        ),
        Workload(
            "pipe32",
            "pipelined bursts, 32 B",
            [("rate", "messages/s", "/s")],
            runLoad("pipeline", 0, 32),
            throughput="rate",
        ),
        Workload(
            "pipe1k",
            "pipelined bursts, 1 KiB",
            [("rate", "messages/s", "/s")],
            runLoad("pipeline", 0, 1024),
            throughput="rate",
        ),
        Workload(
            "idle",
            "idle connections",
            [("rss_per_conn_b", "server RSS per connection", "B")],
            runIdle,
            big=True,
        ),
        Workload(
            "broadcast",
            "broadcast to all",
            [("last_ms", "until the last client has it", "ms")],
            runBroadcast,
            handler="broadcast",
            big=True,
        ),
        Workload(
            "storm",
            "reconnect storm",
            [
                ("all_back_s", "all back, after listening", "s"),
                ("from_kill_s", "all back, after the kill", "s"),
                ("peak_accept_rate", "peak reconnections/s", "/s"),
            ],
            runStorm,
            big=True,
        ),
    ]


# Summaries.


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float] | None:
        if not self.values:
            return None
        return {
            "median": statistics.median(self.values),
            "min": min(self.values),
            "max": max(self.values),
        }


def fmt(value: float, unit: str) -> str:
    if unit == "B" or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if unit != "/s" else f"{value:.0f}"


def cellText(summary: dict[str, float] | None, unit: str) -> str:
    if summary is None:
        return "n/a"
    return (
        f"{fmt(summary['median'], unit)} ({fmt(summary['min'], unit)}–{fmt(summary['max'], unit)})"
    )


def table(report: dict[str, Any], names: list[str]) -> str:
    reference = "twisted" if "twisted" in names else None
    header = ["workload", "metric", *names]
    if reference:
        header += [f"{n}/twisted" for n in names if n != reference]
    header += ["loadgen CPU max", "errors"]
    rows = [header, ["---"] * len(header)]
    for w in report["workloads"]:
        for key, label, unit in w["metrics"]:
            row = [w["title"], f"{label} ({unit})"]
            summaries = {n: w["servers"].get(n, {}).get("summary", {}).get(key) for n in names}
            row += [cellText(summaries[n], unit) for n in names]
            if reference:
                for n in names:
                    if n == reference:
                        continue
                    a, b = summaries[n], summaries[reference]
                    row.append(
                        f"{a['median'] / b['median']:.0%}" if a and b and b["median"] else ""
                    )
            cpus = [
                r["loadgen_cpu"] for n in names for r in w["servers"].get(n, {}).get("runs", [])
            ]
            row.append(f"{max(cpus):.0%}" if cpus else "")
            errors = sum(
                r["errors"] + r["unanswered"]
                for n in names
                for r in w["servers"].get(n, {}).get("runs", [])
            )
            row.append(str(errors))
            rows.append(row)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


BASELINES = ("twisted", "asyncio")


def targets(report: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    """
    The issue's targets, for each tcpcomm server measured: each met or
    missed, and by how much.
    """
    out: list[dict[str, Any]] = []
    for name in names:
        if name in BASELINES:
            continue
        out += _targetsOf(report, name)
    return out


def _targetsOf(report: dict[str, Any], name: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    byKey = {w["key"]: w for w in report["workloads"]}
    for w in report["workloads"]:
        key = w.get("throughput")
        if not key:
            continue
        mine = w["servers"].get(name, {}).get("summary", {}).get(key)
        base = w["servers"].get("twisted", {}).get("summary", {}).get(key)
        if not mine or not base:
            continue
        ratio = mine["median"] / base["median"]
        out.append(
            {
                "server": name,
                "target": f"{w['title']}: at least 90% of bare Twisted",
                "value": f"{ratio:.0%} ({mine['median']:,.0f} vs {base['median']:,.0f} /s)",
                "met": ratio >= 0.9,
                "by": f"{(ratio - 0.9) * 100:+.0f} points",
            }
        )
    idle = byKey.get("idle", {}).get("servers", {}).get(name, {}).get("summary", {})
    if idle.get("rss_per_conn_b"):
        rss = idle["rss_per_conn_b"]["median"]
        out.append(
            {
                "server": name,
                "target": "at most 2 KiB server RSS per idle connection",
                "value": f"{rss:,.0f} B",
                "met": rss <= 2048,
                "by": f"{rss - 2048:+,.0f} B",
            }
        )
    errors = unanswered = runs = 0
    for w in report["workloads"]:
        for r in w["servers"].get(name, {}).get("runs", []):
            errors += r["errors"]
            unanswered += r["unanswered"]
            runs += 1
    if runs:
        out.append(
            {
                "server": name,
                "target": "every connection answered, no errors",
                "value": f"{errors} errors, {unanswered} unanswered in {runs} runs",
                "met": errors == 0 and unanswered == 0,
                "by": "",
            }
        )
    return out


def compactJSON(value: Any, depth: int = 0) -> str:
    """
    JSON laid out over lines down to the runs of each server, each run on
    one line: small, and readable in a diff.
    """
    pad = " " * (depth + 1)
    if isinstance(value, dict) and depth < 4 and not ("errors" in value or "median" in value):
        items = [f"{pad}{json.dumps(k)}: {compactJSON(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}" if items else "{}"
    if isinstance(value, list) and depth < 4 and any(isinstance(v, dict) for v in value):
        items = [pad + compactJSON(v, depth + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + " " * depth + "]"
    return json.dumps(value, ensure_ascii=False)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run (under ~2 minutes)")
    parser.add_argument(
        "--servers",
        help="comma-separated, from tcpcomm, tcpcomm-nolog (--no-message-log), tcpcomm-devnull "
        "(its log to /dev/null), twisted, asyncio and --extra-twistd labels "
        "(default: tcpcomm, tcpcomm-nolog if the installed tcpcomm has it, twisted, asyncio)",
    )
    parser.add_argument(
        "--extra-twistd",
        action="append",
        default=[],
        metavar="LABEL=PATH[,ARG...]",
        help="also measure the tcpcomm server of another twistd (a scratch install), with these "
        "extra server options, as LABEL",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated workloads: rr1, rr100, rr1000, pipe32, pipe1k, idle, broadcast, storm",
    )
    parser.add_argument("--reps", type=int, help="repetitions of the throughput workloads")
    parser.add_argument("--duration", type=float, help="seconds measured per throughput run")
    parser.add_argument(
        "--connections", type=int, help="connections of the 10,000-connection workloads"
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for the 1-minute load average to fall below 0.3",
    )
    parser.add_argument("--build-dir", default=os.path.join(tempfile.gettempdir(), "tcpcomm-bench"))
    parser.add_argument("--output", help="the JSON file (default bench/results/<date>-<host>.json)")
    args = parser.parse_args()

    settings = (
        Settings(reps=2, bigReps=1, duration=1.0, warmup=0.3, big=2000, broadcasts=3)
        if args.quick
        else Settings(reps=5, bigReps=3, duration=3.0, warmup=0.5, big=10000, broadcasts=5)
    )
    if args.reps:
        settings.reps = args.reps
        settings.bigReps = min(settings.bigReps, args.reps)
    if args.duration:
        settings.duration = args.duration
    if args.connections:
        settings.big = args.connections

    kinds = serverKinds(args.extra_twistd)
    if args.servers:
        names = [n for n in args.servers.split(",") if n]
    else:
        names = [n for n in ("tcpcomm", "tcpcomm-nolog", "twisted", "asyncio") if n in kinds]
    for n in names:
        if n not in kinds:
            parser.error(f"unknown server {n!r}: one of {', '.join(kinds)}")
    known = [w.key for w in workloads()]
    only = [k for k in args.only.split(",") if k]
    for key in only:
        if key not in known:
            parser.error(f"unknown workload {key!r}: one of {', '.join(known)}")
    selected = [w for w in workloads() if not only or w.key in only]
    if not os.path.exists(TWISTD):
        parser.error(f"no twistd beside {sys.executable}: run this with tcpcomm's Python")
    for tool in ("taskset", "gcc"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is needed")
    if (os.cpu_count() or 1) < 2:
        parser.error("two CPUs are needed: one for the server, one for the load generator")

    limit = raiseFileLimit(settings.big + 200)
    if limit < settings.big + 100:
        settings.big = limit - 100
        print(f"open-files limit {limit}: using {settings.big} connections", file=sys.stderr)
    if ephemeralPorts() < settings.big + 1000:
        print(f"only {ephemeralPorts()} ephemeral ports", file=sys.stderr)

    # This script shares the load generator's CPU, never the server's.
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    os.makedirs(args.build_dir, exist_ok=True)
    loadgen = buildLoadgen(args.build_dir)
    scratch = tempfile.mkdtemp(prefix="servers-", dir=args.build_dir)

    if args.wait_idle > 0:
        deadline = time.monotonic() + args.wait_idle
        while loadAverage()[0] >= 0.3 and time.monotonic() < deadline:
            time.sleep(5)

    report: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "quick": args.quick,
            "reps": settings.reps,
            "reps_10k": settings.bigReps,
            "duration_s": settings.duration,
            "warmup_s": settings.warmup,
            "connections_10k": settings.big,
            "pipeline": f"{settings.pipelineConns} connections, bursts of {settings.burst}",
            "backlog": BACKLOG,
            "retry": f"{settings.retryInitial}-{settings.retryMax} s, doubling, jitter",
            "open_files": limit,
        },
        "load_before": loadAverage(),
        "workloads": [],
    }
    started = time.monotonic()
    busy0, ours0 = busySeconds(), ourCpuSeconds()
    try:
        for w in selected:
            entry: dict[str, Any] = {
                "key": w.key,
                "title": w.title,
                "metrics": w.metrics,
                "throughput": w.throughput,
                "servers": {},
            }
            report["workloads"].append(entry)
            participants = [n for n in names if w.handler in kinds[n].handlers]
            reps = settings.bigReps if w.big else settings.reps
            if w.key == "broadcast":
                reps = 1  # one connection set; the repetitions are its broadcasts
            for rep in range(reps):
                # Rotate the order, so that no server always goes first.
                order = (
                    participants[rep % len(participants) :]
                    + participants[: rep % len(participants)]
                )
                for name in order:
                    label = f"{w.key} {name} {rep + 1}/{reps}"
                    print(f"  {label} ...", end="", flush=True, file=sys.stderr)
                    try:
                        result = w.run(kinds[name], loadgen, scratch, settings)
                    except Exception as e:  # recorded, and the run goes on
                        result = {
                            "errors": 1,
                            "unanswered": 0,
                            "loadgen_cpu": 0.0,
                            "failed": str(e),
                        }
                    print(f" {_brief(result, w)}", file=sys.stderr)
                    entry["servers"].setdefault(name, {"runs": []})["runs"].append(result)
            for data in entry["servers"].values():
                summary = {}
                for key, _, _ in w.metrics:
                    cell = Cell()
                    for r in data["runs"]:
                        value = r.get(key)
                        if isinstance(value, list):
                            cell.values.extend(value)
                        elif value is not None:
                            cell.values.append(float(value))
                    summary[key] = cell.summary()
                data["summary"] = summary
    finally:
        stopAll()
        shutil.rmtree(scratch, ignore_errors=True)
    wall = time.monotonic() - started
    other = (busySeconds() - busy0) - (ourCpuSeconds() - ours0)
    report["load_after"] = loadAverage()
    report["seconds"] = round(wall, 1)
    report["other_cpu"] = round(max(0.0, other) / wall, 3)
    report["targets"] = targets(report, names)

    output = args.output or os.path.join(
        HERE,
        "results",
        f"{datetime.date.today().isoformat()}-{platform.node()}{'-quick' if args.quick else ''}.json",
    )
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        f.write(compactJSON(report) + "\n")

    m = report["machine"]
    print(
        f"\ntcpcomm {m['tcpcomm']}, Twisted {m['twisted']}, Python {m['python']}, "
        f"{m['cpu']} ({m['cpus']} CPUs), {m['os']}; servers on CPU {SERVER_CPU}, "
        f"load generator on CPU {LOAD_CPU}; median (min–max) of {settings.reps} runs "
        f"({settings.bigReps} for {settings.big:,} connections)\n"
    )
    print(table(report, names))
    print()
    for t in report["targets"]:
        print(
            f"- {'MET   ' if t['met'] else 'MISSED'} {t['server']}: {t['target']}: "
            f"{t['value']} {t['by']}".rstrip()
        )
    print(
        f"\nload average before {report['load_before']}, after {report['load_after']}; "
        f"CPU used by other processes (and kernel work not charged to ours): "
        f"{report['other_cpu']:.0%} of one CPU; {wall:.0f} s; {output}"
    )
    return 0


def _brief(result: dict[str, Any], w: Workload) -> str:
    if "failed" in result:
        return f"FAILED: {result['failed']}"
    parts = []
    for key, _, unit in w.metrics:
        value = result.get(key)
        if isinstance(value, list):
            parts.append(f"{key}={','.join(fmt(v, unit) for v in value)}")
        elif value is not None:
            parts.append(f"{key}={fmt(float(value), unit)}")
    parts.append(f"errors={result['errors']} loadgen={result['loadgen_cpu']:.0%}")
    if "server_cpu" in result:
        parts.append(f"server={result['server_cpu']:.0%}")
    return " ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
