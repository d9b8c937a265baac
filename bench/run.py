"""
The tcpcomm benchmark: the installed tcpcomm server, side by side in the
same run with two baselines that do the same work (a bare Twisted
LineOnlyReceiver and an asyncio Protocol, both answering each line at once
with the same line, or relaying it to every other connection).

    python bench/run.py                     # the full run, about 22 minutes
    python bench/run.py --quick             # a short run, about 3 minutes
    python bench/run.py --quick --only flood,accept
    python bench/run.py --profile --only pipe32
    python bench/run.py --report bench/results/RUN.json   # table and plot again

Run it with the Python of the environment tcpcomm is installed in: the
server measured is the ``twistd`` next to that Python, run with its defaults
but for what the benchmark needs (``--handler echo`` or ``broadcast``,
``--reply-delay 0``, port, interface, ``--backlog`` and
``--max-connections``), logging to a file as a daemon does. Each server is
pinned to CPU 0 (``taskset -c 0``); the load generator, a C program
(``bench/loadgen.c``, compiled with gcc into a scratch folder), and this
script run on CPU 1. Results: a table on standard output, a JSON file and an
SVG plot in ``bench/results/``. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import html
import json
import math
import os
import platform
import pstats
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
from collections import Counter
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
# --max-connections is what a workload opens plus this (the warm-up
# connection, and room for one that closes while the next opens).
CONNECTION_MARGIN = 100
# Descriptors the hold row leaves a server for everything but its
# connections: listening socket, epoll, log files, and what tcpcomm keeps for
# its admin connections and headroom.
HOLD_RESERVE = 1000
LOADGEN_RESERVE = 100  # the same, for one load generator process
WAIT = 20.0  # the longest any single wait for a process may take, in seconds
# Log lines that mean something went wrong in a server: a traceback, an
# unhandled error, or a tcpcomm warning or error (refused, oversized, slow
# consumer, handler error, ...).
PROBLEM = re.compile(rb"Traceback|Unhandled [Ee]rror|#(?:warn|error|critical)\]")
TOP = 15  # profile entries printed


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


def _readInt(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def raiseFileLimit(needed: int) -> tuple[int, str]:
    """
    Raise the open-files limit (inherited by every process started) to
    C{needed}, the hard limit too where this process may; return the limit
    now in force and, when it is below C{needed}, why.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    why = ""
    if hard != resource.RLIM_INFINITY and hard < needed:
        ceiling = _readInt("/proc/sys/fs/nr_open") or needed
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, ceiling), min(needed, ceiling)))
        except (OSError, ValueError) as e:
            why = f"ulimit -Hn; raising it was refused, {e}: that takes CAP_SYS_RESOURCE"
        else:
            if ceiling < needed:
                why = f"fs.nr_open is {ceiling:,}"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(needed, soft)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < needed and not why:
        why = "RLIMIT_NOFILE"
    return soft, why


def ephemeralPorts() -> int:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = (int(x) for x in f.read().split())
    return high - low + 1


@dataclass
class HoldPlan:
    """
    How many idle connections the hold row opens, from how many load
    generator processes and loopback source addresses, and why fewer than
    asked for when that is so.
    """

    requested: int
    count: int
    processes: int
    sources: int
    limitedBy: list[str]  # why, in full
    limits: list[str] = field(default_factory=list)  # the same, in a few words

    def text(self) -> str:
        spread = (
            f"{self.count:,} connections from {self.processes} load generator process(es) "
            f"over {self.sources} source addresses (127.0.0.2 and up)"
        )
        if not self.limitedBy:
            return f"hold: {spread}"
        return (
            f"hold: {self.count:,} of the {self.requested:,} connections asked for: "
            + "; ".join(self.limitedBy)
            + f". Running {spread}."
        )


def planHold(requested: int, openFiles: int, why: str) -> HoldPlan:
    """
    The largest count up to C{requested} that fits: the server holds one
    descriptor per connection (the load generators too, split into
    processes of at most C{openFiles} each), the kernel two in all, and each
    source address only the ephemeral port range.
    """
    count = requested
    limitedBy: list[str] = []
    limits: list[str] = []

    def cap(most: int, short: str, reason: str) -> None:
        nonlocal count
        most = max(0, most // 1000 * 1000)
        if most < count:
            count = most
            limits.append(short)
            limitedBy.append(reason)

    cap(
        openFiles - HOLD_RESERVE,
        f"{openFiles:,} descriptors per process",
        f"a process may open {openFiles:,} descriptors here ({why or 'RLIMIT_NOFILE'}), and "
        f"the server needs one per connection and {HOLD_RESERVE:,} for the rest",
    )
    fileMax, allocated = _readInt("/proc/sys/fs/file-max"), _readInt("/proc/sys/fs/file-nr")
    if fileMax is not None and allocated is not None:
        cap(
            (fileMax - allocated - 10000) // 2,
            "fs.file-max",
            f"the system allows {fileMax:,} open files in all (fs.file-max), two per connection",
        )
    with open("/proc/meminfo") as f:
        available = next(
            (int(line.split()[1]) for line in f if line.startswith("MemAvailable:")), None
        )
    if available is not None:
        # Client and server socket, kernel and user space: well under 16 KiB.
        cap(
            available // 16,
            "memory",
            f"{available // 1024:,} MiB of memory is available, 16 KiB each",
        )
    usable = int(ephemeralPorts() * 0.9)
    cap(usable * 250, "ports", f"250 source addresses of {usable:,} ports each")
    sources = max(4, math.ceil(count / usable))
    processes = max(1, math.ceil(count / max(1, openFiles - LOADGEN_RESERVE)))
    return HoldPlan(requested, count, processes, sources, limitedBy, limits)


# The load generator.


def buildLoadgen(build: str) -> str:
    """
    Compile bench/loadgen.c into C{build}, once per version of the source:
    the binary is named after the source's hash, so that checkouts sharing
    the build folder (the default is the same for every worktree) never run
    each other's load generator, as comparing modification times would.
    """
    source = os.path.join(HERE, "loadgen.c")
    with open(source, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    binary = os.path.join(build, f"loadgen-{digest}")
    if not os.path.exists(binary):
        partial = f"{binary}.{os.getpid()}"
        subprocess.run(
            ["gcc", "-O2", "-Wall", "-Wextra", "-o", partial, source, "-lm"],
            check=True,
        )
        os.replace(partial, binary)  # whole, even if another run builds it too
    return binary


class Loadgen:
    """
    One run of the load generator on the load CPU, reporting JSON lines.
    """

    def __init__(self, binary: str, mode: str, port: int, **options: float | str) -> None:
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
                    # Its output ends a moment before it does: wait, for its error.
                    self.process.wait(WAIT)
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
class Launch:
    """
    What one start of a server is given.
    """

    port: int
    handler: str  # echo or broadcast
    maxConnections: int
    logPath: str  # the log file, for servers that write one
    profilePath: str | None  # where cProfile writes its statistics, when asked
    extra: tuple[str, ...] = ()  # the workload's own server options (tcpcomm only)


@dataclass
class ServerKind:
    """
    How to run one server under test, and whether its output is kept (and
    searched for problems) or discarded.
    """

    name: str
    argv: Callable[[Launch], list[str]]
    keepsLog: bool = True
    heartbeats: bool = True  # takes --heartbeat (tcpcomm does, the baselines do not)


def tcpcommArgv(
    twistd: str, extra: tuple[str, ...] = (), logfile: bool = True
) -> Callable[[Launch], list[str]]:
    """
    tcpcomm with its defaults but for what the benchmark needs; its log in
    a file (C{--logfile}, which twistd rotates at 1 MB as a daemon's is),
    or with C{logfile=False} on standard output.
    """

    def argv(launch: Launch) -> list[str]:
        twistdOptions = ["-n", "--pidfile="]
        if logfile:
            twistdOptions += ["--logfile", launch.logPath]
        if launch.profilePath:
            twistdOptions += ["--profile", launch.profilePath, "--profiler", "cprofile"]
            twistdOptions += ["--savestats"]
        return [
            twistd,
            *twistdOptions,
            "tcpcomm",
            "server",
            "--handler",
            launch.handler,
            "--reply-delay",
            "0",
            "--port",
            str(launch.port),
            "--interface",
            "127.0.0.1",
            "--backlog",
            str(BACKLOG),
            "--max-connections",
            str(launch.maxConnections),
            *extra,
            *launch.extra,
        ]

    return argv


def scriptArgv(script: str) -> Callable[[Launch], list[str]]:
    def argv(launch: Launch) -> list[str]:
        profile = ["-m", "cProfile", "-o", launch.profilePath] if launch.profilePath else []
        return [
            sys.executable,
            *profile,
            os.path.join(HERE, script),
            str(launch.port),
            str(BACKLOG),
            launch.handler,
        ]

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
    kinds = {
        "tcpcomm": ServerKind("tcpcomm", tcpcommArgv(TWISTD)),
        # The same, logging to standard output sent to /dev/null rather than
        # to a file: still formatted, but never stored.
        "tcpcomm-devnull": ServerKind(
            "tcpcomm-devnull", tcpcommArgv(TWISTD, logfile=False), keepsLog=False
        ),
        "twisted": ServerKind("twisted", scriptArgv("twisted_server.py"), heartbeats=False),
        "asyncio": ServerKind("asyncio", scriptArgv("asyncio_server.py"), heartbeats=False),
    }
    if hasOption(TWISTD, "--no-message-log"):
        kinds["tcpcomm-nolog"] = ServerKind(
            "tcpcomm-nolog", tcpcommArgv(TWISTD, ("--no-message-log",))
        )
    for item in extra:
        label, sep, rest = item.partition("=")
        twistd, *args = rest.split(",")
        if not sep or not os.path.exists(twistd):
            raise SystemExit(f"--extra-twistd wants LABEL=PATH[,ARG...], not {item!r}")
        kinds[label] = ServerKind(label, tcpcommArgv(twistd, tuple(args)))
    return kinds


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def pySpy() -> str | None:
    """
    py-spy, beside this Python or on the PATH.
    """
    beside = os.path.join(BIN, "py-spy")
    return beside if os.path.exists(beside) else shutil.which("py-spy")


class Server:
    """
    One running server, pinned to the server CPU, in a scratch folder; with
    C{profiler} (C{"py-spy"} or C{"cprofile"}), profiled while it runs.
    """

    def __init__(
        self,
        kind: ServerKind,
        handler: str,
        scratch: str,
        maxConnections: int,
        profiler: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.kind = kind
        self.extra = extra
        self.handler = handler
        self.scratch = scratch
        self.maxConnections = maxConnections
        self.port = freePort()
        stem = os.path.join(scratch, f"{kind.name}-{time.monotonic_ns()}")
        self.logPath = stem + ".log"
        self.profiler = profiler
        self.profilePath = stem + ".pstats" if profiler == "cprofile" else None
        self.spyPath = stem + ".spy"
        self.spy: subprocess.Popen[bytes] | None = None
        self.profile: dict[str, Any] | None = None
        self.problems = 0
        self.firstProblem = ""
        self.process = self._launch()
        if profiler == "py-spy":
            try:
                self._attach()
            except Exception:
                stop(self.process)
                raise

    def _launch(self) -> subprocess.Popen[bytes]:
        launch = Launch(
            self.port,
            self.handler,
            self.maxConnections,
            self.logPath,
            self.profilePath,
            self.extra,
        )
        out: IO[bytes]
        out = open(self.logPath + ".out", "ab") if self.kind.keepsLog else open(os.devnull, "wb")
        with out:
            process = start(
                ["taskset", "-c", SERVER_CPU, *self.kind.argv(launch)],
                cwd=self.scratch,
                env=environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
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

    def _attach(self) -> None:
        """
        Start py-spy on the server (on the load CPU, never the server's),
        and wait until it samples.
        """
        spy = pySpy()
        assert spy is not None
        errPath = self.spyPath + ".err"
        with open(errPath, "wb") as err:
            self.spy = start(
                ["taskset", "-c", LOAD_CPU, spy, "record", "--pid", str(self.pid)]
                + ["--nonblocking", "--rate", "500", "--function", "--format", "raw"]
                + ["--output", self.spyPath],
                stdout=err,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and self.spy.poll() is None:
            with open(errPath, "rb") as f:
                if b"Sampling" in f.read():
                    return
            time.sleep(0.05)
        with open(errPath, "rb") as f:
            shown = f.read().decode(errors="replace").strip()
        raise RuntimeError(f"py-spy did not start sampling: {shown}")

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

    def logFiles(self) -> list[str]:
        """
        Its log, the files twistd rotated it into, and its standard output.
        """
        return sorted(glob.glob(glob.escape(self.logPath) + "*"))

    def tail(self) -> str:
        shown = []
        for path in (self.logPath + ".out", self.logPath):
            if os.path.exists(path):
                with open(path, "rb") as f:
                    f.seek(max(0, os.path.getsize(path) - 2000))
                    shown.append(f.read().decode(errors="replace"))
        return "\n".join(shown)

    def finish(self) -> None:
        """
        Stop it (and its profiler) by its pid, read the profile, count the
        problems in its log, delete the log.
        """
        if self.spy is not None:
            stop(self.spy, signal.SIGINT)  # py-spy writes what it sampled
            if os.path.exists(self.spyPath):
                self.profile = pySpyProfile(self.spyPath)
        stop(self.process)
        if self.profilePath and os.path.exists(self.profilePath):
            self.profile = cProfileProfile(self.profilePath)
        for path in self.logFiles():
            with open(path, "rb") as f:
                for line in f:
                    if PROBLEM.search(line):
                        self.problems += 1
                        if not self.firstProblem:
                            self.firstProblem = line.decode(errors="replace").strip()[:300]
            os.remove(path)


# Profiles: where a message's time goes, as the share of the server's
# samples (py-spy) or time (cProfile) spent in each function itself ("self")
# and in it and what it calls ("total").


def pySpyProfile(path: str) -> dict[str, Any]:
    """
    The top entries of py-spy's collapsed stacks (C{--format raw}: one line
    per distinct stack, its frames from the outermost, then its samples).
    """
    own: Counter[str] = Counter()
    within: Counter[str] = Counter()
    samples = 0
    with open(path, errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")
            samples += n
            own[frames[-1]] += n
            for frame in set(frames):
                within[frame] += n
    return {
        "profiler": "py-spy",
        "samples": samples,
        "raw": path,
        "entries": _entries(own, within, samples),
    }


def cProfileProfile(path: str) -> dict[str, Any]:
    """
    The top entries of cProfile's statistics. cProfile times by the wall
    clock, so the poller's wait is left out of the total.
    """
    stats: dict[tuple[str, int, str], tuple[Any, ...]]
    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    own: Counter[str] = Counter()
    within: Counter[str] = Counter()
    for (filename, line, name), (_, _, tottime, cumtime, _) in stats.items():
        if name.startswith("<method 'poll' of") or name.startswith("<method 'select' of"):
            continue
        where = f"{name} ({_short(filename)}:{line})" if line else name
        own[where] += tottime
        within[where] = max(within[where], cumtime)
    total = sum(own.values())
    return {
        "profiler": "cprofile",
        "seconds": round(total, 3),
        "raw": path,
        "entries": _entries(own, within, total),
    }


def _short(filename: str) -> str:
    """
    A source file's name from its package down, as py-spy shows it.
    """
    if filename.startswith(ROOT + os.sep):
        return os.path.relpath(filename, ROOT)
    return re.sub(r"^.*/(?:site-packages|lib/python3\.\d+)/", "", filename)


def _entries(own: Counter[str], within: Counter[str], total: float) -> list[dict[str, Any]]:
    if not total:
        return []
    return [
        {
            "function": function,
            "self": round(value / total, 4),
            "total": round(min(within[function], total) / total, 4),
        }
        for function, value in own.most_common(TOP)
    ]


def profileText(profile: dict[str, Any]) -> str:
    unit = "samples" if profile["profiler"] == "py-spy" else "s"
    amount = profile.get("samples", profile.get("seconds"))
    lines = [
        f"{profile['workload']} on {profile['server']}: {profile['profiler']}, {amount:,} {unit}; "
        f"server CPU {profile.get('cpu_us_per_msg', '?')} µs per message in this run",
        f"{'self':>6} {'total':>6} {'µs/msg':>7}  function (file:line); µs/msg: self's part",
    ]
    for e in profile["entries"]:
        us = e.get("us_per_msg")
        shown = f"{us:.2f}" if us is not None else ""
        lines.append(f"{e['self']:>6.1%} {e['total']:>6.1%} {shown:>7}  {e['function']}")
    return "\n".join(lines)


# Workloads. Each run returns its measurements (numbers), and every run
# records errors, connections left unanswered, the load generator's CPU and
# the server's: how busy it was, and its CPU time per message.


@dataclass
class Settings:
    reps: int
    bigReps: int
    duration: float
    warmup: float
    big: int
    broadcasts: int
    fleetSends: int = 2000  # the fleetsend row's sends to each client
    hold: HoldPlan | None = None
    pipelineConns: int = 16
    burst: int = 64
    floodConns: int = 100
    retryInitial: float = 0.1
    retryMax: float = 1.0


@dataclass
class Context:
    """
    What every run is given: the load generator, a scratch folder for the
    servers, the settings, and the profiler when profiling.
    """

    loadgen: str
    scratch: str
    settings: Settings
    profiler: str | None = None

    @contextmanager
    def server(
        self,
        kind: ServerKind,
        handler: str = "echo",
        maxConnections: int | None = None,
        extra: tuple[str, ...] = (),
    ) -> Iterator[Server]:
        """
        A fresh server for one run, allowed the 10,000-connection workloads'
        connections unless told otherwise, with the workload's C{extra}
        options; stopped whatever happens.
        """
        limit = maxConnections or self.settings.big + CONNECTION_MARGIN
        server = Server(kind, handler, self.scratch, limit, self.profiler, extra)
        try:
            yield server
        finally:
            server.finish()


@dataclass
class Workload:
    key: str
    title: str  # formatted with big= and hold= (the connections of those workloads)
    metrics: list[tuple[str, str, str]]  # (key, label, unit)
    run: Callable[[ServerKind, Context], dict[str, Any]]
    throughput: str | None = None  # the metric the 90% target applies to
    big: bool = False  # many connections: repeated bigReps times
    profilable: bool = True  # the server keeps one process throughout
    tcpcommOnly: bool = False  # the baselines cannot run it: shown as n/a


CPU_METRIC = ("cpu_us_per_msg", "server CPU per message", "µs")


def serverCpu(result: dict[str, Any]) -> float:
    """
    The server's CPU seconds over what the load generator measured.
    """
    cpu = float(result.get("server_cpu_s", -1))
    if cpu < 0:
        raise RuntimeError("the load generator could not read the server's CPU time")
    return cpu


def measured(
    result: dict[str, Any], server: Server, cpu: float, wall: float, messages: float
) -> dict[str, Any]:
    """
    What every run records, with the server's C{cpu} seconds over C{wall}
    seconds in which it handled C{messages} messages.
    """
    out: dict[str, Any] = {
        "errors": int(result.get("errors", 0)) + server.problems,
        "unanswered": int(result.get("unanswered", 0)),
        "loadgen_cpu": round(float(result.get("loadgen_cpu", 0.0)), 3),
        "server_cpu": round(cpu / wall, 3) if wall > 0 else 0.0,
        "cpu_us_per_msg": round(cpu * 1e6 / messages, 2) if messages > 0 else None,
    }
    if result.get("first_error"):
        out["first_error"] = result["first_error"]
    if server.firstProblem:
        out["server_log"] = server.firstProblem
    if server.profile is not None:
        profile = dict(server.profile, cpu_us_per_msg=out["cpu_us_per_msg"])
        for e in profile["entries"]:
            if out["cpu_us_per_msg"] is not None:
                e["us_per_msg"] = round(e["self"] * out["cpu_us_per_msg"], 2)
        out["profile"] = profile
    return out


def loadOnce(ctx: Context, mode: str, port: int, timeout: float, **options: float | int) -> Any:
    """
    One load generator run to its result.
    """
    gen = Loadgen(ctx.loadgen, mode, port, **options)
    try:
        return gen.event(timeout)
    finally:
        gen.finish()


def runLoad(mode: str, conns: int, size: int) -> Callable[[ServerKind, Context], dict[str, Any]]:
    """
    A request/response or pipelined run of C{conns} connections (0: the
    pipelined workloads' number) and messages of C{size} bytes, newline
    included.
    """

    def run(kind: ServerKind, ctx: Context) -> dict[str, Any]:
        s = ctx.settings
        options: dict[str, float | int] = {
            "conns": conns or s.pipelineConns,
            "size": size,
            "duration": s.duration,
            "warmup": s.warmup,
            "time_limit": 60,
        }
        if mode == "pipeline":
            options["burst"] = s.burst
        with ctx.server(kind) as server:
            result = loadOnce(ctx, mode, server.port, 90, server_pid=server.pid, **options)
        out = measured(result, server, serverCpu(result), s.duration, result["ops"])
        out["rate"] = result["rate"]
        if mode == "rr":
            out["p50_us"] = result["p50_us"]
            out["p99_us"] = result["p99_us"]
        return out

    return run


def runFlood(kind: ServerKind, ctx: Context) -> dict[str, Any]:
    """
    Request/response over C{floodConns} connections, first alone, then (on
    the same server) beside one more connection that writes empty lines as
    fast as the server takes them, from the warm-up to the end of the
    window. The server's CPU per message counts the empty lines written in
    the window as messages too.
    """
    s = ctx.settings
    with ctx.server(kind) as server:
        options: dict[str, float | int] = {
            "conns": s.floodConns,
            "size": 32,
            "duration": s.duration,
            "warmup": s.warmup,
            "time_limit": 60,
            "server_pid": server.pid,
        }
        calm = loadOnce(ctx, "rr", server.port, 90, **options)
        flooded = loadOnce(ctx, "rr", server.port, 90, flood=1, **options)
    messages = flooded["ops"] + flooded["flood_lines"]
    out = measured(flooded, server, serverCpu(flooded), s.duration, messages)
    out["errors"] += int(calm["errors"])
    out["unanswered"] += int(calm["unanswered"])
    out["loadgen_cpu"] = max(out["loadgen_cpu"], round(float(calm["loadgen_cpu"]), 3))
    out["calm_rate"] = calm["rate"]
    out["calm_p50_us"] = calm["p50_us"]
    out["calm_p99_us"] = calm["p99_us"]
    out["rate"] = flooded["rate"]
    out["p50_us"] = flooded["p50_us"]
    out["p99_us"] = flooded["p99_us"]
    out["flood_rate"] = flooded["flood_rate"]
    out["flooders_lost"] = flooded["flooders_lost"]
    return out


def warmUp(port: int, first: bytes = b"") -> None:
    """
    One round trip on one connection (after C{first}, a hello), so that
    what the first connection loads is not counted per connection.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(first + b"warm-up\n")
        got = b""
        for _ in range(100):
            if got.endswith(b"\n"):
                break
            chunk = sock.recv(100)
            if not chunk:
                break
            got += chunk
    time.sleep(0.3)


def runIdle(kind: ServerKind, ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    with ctx.server(kind) as server:
        warmUp(server.port)
        before = rssKiB(server.pid)
        cpu0, t0 = cpuSeconds(server.pid), time.monotonic()
        gen = Loadgen(ctx.loadgen, "idle", server.port, conns=s.big, time_limit=120)
        try:
            ready = gen.event(120)
            cpu, wall = cpuSeconds(server.pid) - cpu0, time.monotonic() - t0
            time.sleep(0.5)
            after = rssKiB(server.pid)
            gen.tell("close\n")
            result = gen.event(30)
        finally:
            gen.finish()
    out = measured(result, server, cpu, wall, s.big)
    out["unanswered"] = s.big - int(ready["opened"])
    out["rss_per_conn_b"] = round((after - before) * 1024 / s.big, 1)
    out["rss_before_kib"] = before
    out["rss_after_kib"] = after
    out["open_s"] = ready["open_s"]
    return out


def queueForNames(adminPort: int, prefix: str, count: int) -> float:
    """
    One message queued (C{?ttl=}) for each of C{count} names C{PREFIX-N}
    through the admin API, on one kept-alive HTTP connection; the seconds
    it took.
    """
    import http.client

    start = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", adminPort, timeout=30)
    try:
        for n in range(count):
            connection.request("POST", f"/clients/{prefix}-{n}/messages?ttl=3600", b"queued")
            answer = connection.getresponse()
            answer.read()
            if answer.status != 202:
                raise RuntimeError(f"queueing for {prefix}-{n}: HTTP {answer.status}")
    finally:
        connection.close()
    return time.monotonic() - start


def adminJSON(adminPort: int, path: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{adminPort}{path}", timeout=30) as answer:
        return json.load(answer)


def runHello(kind: ServerKind, ctx: Context) -> dict[str, Any]:
    """
    C{big} named clients (C{--client-id hello}), each with one message
    queued for it beforehand, connect, each sending C{hello agent-N} and
    then one message: the time until every one is identified and answered
    (its queued message comes first), and the server's RSS then. Every
    queued message must have been delivered.
    """
    s = ctx.settings
    adminPort = freePort()
    extra = ("--client-id", "hello", "--admin", f"tcp:{adminPort}:interface=127.0.0.1")
    with ctx.server(kind, extra=extra) as server:
        warmUp(server.port, b"hello warm-up\n")
        queued_s = queueForNames(adminPort, "agent", s.big)
        before = rssKiB(server.pid)
        cpu0, t0 = cpuSeconds(server.pid), time.monotonic()
        gen = Loadgen(
            ctx.loadgen,
            "idle",
            server.port,
            conns=s.big,
            time_limit=120,
            hello="agent",
            expect_first="queued",
        )
        try:
            ready = gen.event(120)
            cpu, wall = cpuSeconds(server.pid) - cpu0, time.monotonic() - t0
            time.sleep(0.5)
            after = rssKiB(server.pid)
            left = adminJSON(adminPort, "/queues")["queues"]
            gen.tell("close\n")
            result = gen.event(30)
        finally:
            gen.finish()
    out = measured(result, server, cpu, wall, s.big)
    out["unanswered"] = s.big - int(ready["opened"])
    out["errors"] += len(left)  # a queued message not delivered
    out["queued_s"] = round(queued_s, 3)
    out["hello_s"] = ready["open_s"]
    out["rss_mib"] = round(after / 1024, 1)
    out["rss_per_conn_b"] = round((after - before) * 1024 / s.big, 1)
    return out


#: The heartbeat row: idle connections to a server with --heartbeat, whose
#: CPU is measured over two intervals (every connection sends and receives
#: two heartbeats in it), after the connections settle; and its target.
HEARTBEAT_CONNS = 10000
HEARTBEAT_S = 30
HEARTBEAT_WINDOW = 2 * HEARTBEAT_S
HEARTBEAT_SETTLE = 2.0
HEARTBEAT_TARGET_PCT = 1.0


def runHeartbeat(kind: ServerKind, ctx: Context) -> dict[str, Any]:
    """
    C{HEARTBEAT_CONNS} idle connections (whatever --quick says) to a server
    with --heartbeat 30, each answering every heartbeat with one, as a
    client with the same --heartbeat would send its own, so that nobody
    reaches --heartbeat-timeout: the server's CPU over C{HEARTBEAT_WINDOW}
    seconds of that, as a share of one CPU.
    """
    if not kind.heartbeats:
        return {"errors": 0, "unanswered": 0, "loadgen_cpu": 0.0, "skipped": "no --heartbeat"}
    extra = ("--heartbeat", str(HEARTBEAT_S))
    limit = HEARTBEAT_CONNS + CONNECTION_MARGIN
    with ctx.server(kind, maxConnections=limit, extra=extra) as server:
        warmUp(server.port)
        gen = Loadgen(
            ctx.loadgen,
            "idle",
            server.port,
            conns=HEARTBEAT_CONNS,
            heartbeats=1,
            time_limit=HEARTBEAT_WINDOW + 180,
        )
        try:
            ready = gen.event(120)
            if ready.get("event") != "ready":
                raise RuntimeError(f"heartbeat: not every connection opened: {ready}")
            time.sleep(HEARTBEAT_SETTLE)
            cpu0, t0 = cpuSeconds(server.pid), time.monotonic()
            time.sleep(HEARTBEAT_WINDOW)
            cpu, wall = cpuSeconds(server.pid) - cpu0, time.monotonic() - t0
            gen.tell("close\n")
            result = gen.event(30)
        finally:
            gen.finish()
    beats = int(result["heartbeats"])
    # Each heartbeat the load generator got, the server sent, and had back.
    out = measured(result, server, cpu, wall, 2 * beats)
    out["unanswered"] = HEARTBEAT_CONNS - int(result["still_open"])
    out["idle_cpu_pct"] = round(100 * cpu / wall, 3)
    out["heartbeats"] = beats
    out["window_s"] = round(wall, 1)
    return out


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def runHold(kind: ServerKind, ctx: Context) -> dict[str, Any]:
    """
    The hold plan's count of idle connections (each answered once), opened
    by its load generator processes at once, from its source addresses:
    the time until all are answered, and the server's RSS then.
    """
    plan = ctx.settings.hold
    assert plan is not None
    if plan.count < 1:
        raise RuntimeError(plan.text())
    gens: list[Loadgen] = []
    with ctx.server(kind, maxConnections=plan.count + CONNECTION_MARGIN) as server:
        warmUp(server.port)
        before = rssKiB(server.pid)
        cpu0, t0 = cpuSeconds(server.pid), time.monotonic()
        try:
            for i, conns in enumerate(split(plan.count, plan.processes)):
                gens.append(
                    Loadgen(
                        ctx.loadgen,
                        "idle",
                        server.port,
                        conns=conns,
                        sources=plan.sources,
                        seed=i + 1,
                        time_limit=300,
                    )
                )
            readies = [gen.event(300) for gen in gens]
            wall = time.monotonic() - t0
            cpu = cpuSeconds(server.pid) - cpu0
            failed = [r for r in readies if r.get("event") != "ready"]
            if failed:
                raise RuntimeError(f"hold: not every connection opened: {failed[0]}")
            time.sleep(0.5)
            after = rssKiB(server.pid)
            for gen in gens:
                gen.tell("close\n")
            results = [gen.event(60) for gen in gens]
        finally:
            for gen in gens:
                gen.finish()
    merged = {
        "errors": sum(int(r["errors"]) for r in results),
        "loadgen_cpu": max(float(r["loadgen_cpu"]) for r in results),
        "first_error": next((r["first_error"] for r in results if r["first_error"]), ""),
    }
    opened = sum(int(r["opened"]) for r in readies)
    out = measured(merged, server, cpu, wall, plan.count)
    out["unanswered"] = plan.count - opened
    out["connections"] = plan.count
    out["accept_s"] = round(wall, 3)
    out["accept_rate"] = round(opened / wall, 1) if wall > 0 else 0.0
    out["rss_mib"] = round(after / 1024, 1)
    out["rss_per_conn_b"] = round((after - before) * 1024 / plan.count, 1)
    out["rss_before_kib"] = before
    out["rss_after_kib"] = after
    out["open_s"] = [r["open_s"] for r in readies]
    return out


def runAccept(kind: ServerKind, ctx: Context) -> dict[str, Any]:
    """
    10,000 connections, at most 256 at a time, each accepted and answered
    once: connect, send one line, read the answer, close.
    """
    s = ctx.settings
    with ctx.server(kind) as server:
        result = loadOnce(
            ctx, "churn", server.port, 150, conns=s.big, time_limit=120, server_pid=server.pid
        )
    out = measured(result, server, serverCpu(result), float(result["churn_s"]), s.big)
    out["rate"] = result["rate"]
    out["churn_s"] = result["churn_s"]
    return out


def runBroadcast(kind: ServerKind, ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    with ctx.server(kind, "broadcast") as server:
        result = loadOnce(
            ctx,
            "broadcast",
            server.port,
            200,
            conns=s.big,
            count=s.broadcasts,
            time_limit=180,
            server_pid=server.pid,
        )
    delivered = len(result["times"]) * s.big
    out = measured(result, server, serverCpu(result), sum(result["times"]) or 1.0, delivered)
    out["unanswered"] = s.broadcasts - len(result["times"])
    out["last_ms"] = [round(t * 1000, 2) for t in result["times"]]
    out["first_ms"] = [round(t * 1000, 3) for t in result["first"]]
    return out


def runStorm(kind: ServerKind, ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    with ctx.server(kind) as server:
        gen = Loadgen(
            ctx.loadgen,
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
    out = measured(result, server, cpu, max(1e-9, lastBack - listeningAt), s.big)
    out["unanswered"] = s.big - int(result["back"])
    out["all_back_s"] = round(lastBack - listeningAt, 3)
    out["from_kill_s"] = round(lastBack - killedAt, 3)
    out["restart_s"] = round(listeningAt - restartedAt, 3)
    out["peak_accept_rate"] = result["peak_accept_rate"]
    out["attempts"] = result["attempts"]
    return out


# The fleet rows: two tcpcomm nodes on one redis-server (--backplane), all
# three pinned to the server CPU.


@contextmanager
def fleet(
    kind: ServerKind, ctx: Context, handler: str, extra: tuple[str, ...] = ()
) -> Iterator[tuple[Server, Server, int]]:
    """
    A redis-server of the run's own (no persistence) and nodes C{a} and
    C{b} on it, C{a} with an admin API (its port is the third item);
    stopped whatever happens.
    """
    redisServer = shutil.which("redis-server")
    if redisServer is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    redisPort = freePort()
    redis = start(
        ["taskset", "-c", SERVER_CPU, redisServer, "--port", str(redisPort)]
        + ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", ctx.scratch],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    nodes: list[Server] = []
    try:
        deadline = time.monotonic() + WAIT
        while not listening(redisPort):
            if redis.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.01)
        adminPort = freePort()
        limit = ctx.settings.big + CONNECTION_MARGIN
        url = f"redis://127.0.0.1:{redisPort}/0"
        for name, admin in (("a", (f"--admin=tcp:{adminPort}:interface=127.0.0.1",)), ("b", ())):
            options = ("--backplane", url, "--node-name", name, *admin, *extra)
            nodes.append(Server(kind, handler, ctx.scratch, limit, None, options))
        for node in nodes:
            waitForLog(node, b"backplane up")
        yield nodes[0], nodes[1], adminPort
    finally:
        for node in nodes:
            node.finish()
        stop(redis)


def waitForLog(server: Server, text: bytes) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for path in server.logFiles():
            with open(path, "rb") as f:
                if text in f.read():
                    return
        time.sleep(0.02)
    raise RuntimeError(f"{server.kind.name}: no {text!r} in its log within {WAIT} s")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def runFleetSend(kind: ServerKind, ctx: Context) -> dict[str, Any]:
    """
    Sequential sends through node a's admin API (one kept-alive HTTP
    connection) to a named client of a, then to one of b: each timed from
    the request to the answer, which for b's comes once b confirmed the
    write through Redis. Every message must arrive.
    """
    import http.client

    count = ctx.settings.fleetSends
    with fleet(kind, ctx, "echo", ("--client-id", "hello")) as (a, b, adminPort):
        sockets = {}
        for name, node in (("agent-a", a), ("agent-b", b)):
            sock = socket.create_connection(("127.0.0.1", node.port), timeout=WAIT)
            sock.sendall(f"hello {name}\n".encode())
            sockets[name] = sock
        try:
            deadline = time.monotonic() + WAIT
            while len(adminJSON(adminPort, "/clients")) < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError("the fleet does not list both clients")
                time.sleep(0.05)
            connection = http.client.HTTPConnection("127.0.0.1", adminPort, timeout=30)
            latencies: dict[str, list[float]] = {}
            errors = 0
            try:
                for name in sockets:
                    times = latencies[name] = []
                    for n in range(count):
                        sent = time.monotonic()
                        connection.request("POST", f"/clients/{name}/messages", b"m%d" % n)
                        answer = connection.getresponse()
                        answer.read()
                        times.append(time.monotonic() - sent)
                        errors += answer.status != 200
            finally:
                connection.close()
            unanswered = 0
            for sock in sockets.values():
                got = b""
                sock.settimeout(WAIT)
                while got.count(b"\n") < count:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                unanswered += count - got.count(b"\n")
        finally:
            for sock in sockets.values():
                sock.close()
    out: dict[str, Any] = {
        "errors": errors + a.problems + b.problems,
        "unanswered": unanswered,
        "loadgen_cpu": 0.0,
        "cpu_us_per_msg": None,
    }
    for label, name in (("same", "agent-a"), ("cross", "agent-b")):
        out[f"{label}_p50_us"] = round(percentile(latencies[name], 0.5) * 1e6, 1)
        out[f"{label}_p99_us"] = round(percentile(latencies[name], 0.99) * 1e6, 1)
    firstProblem = a.firstProblem or b.firstProblem
    if firstProblem:
        out["server_log"] = firstProblem
    return out


def runFleetBroadcast(kind: ServerKind, ctx: Context) -> dict[str, Any]:
    """
    The broadcast row over two nodes: the load generator's receivers split
    between a and b, its sender on a; the broadcast handler relays each
    message to b through Redis. Timed until the last receiver has it.
    """
    s = ctx.settings
    with fleet(kind, ctx, "broadcast") as (a, b, _):
        cpu0 = cpuSeconds(a.pid) + cpuSeconds(b.pid)
        result = loadOnce(
            ctx,
            "broadcast",
            a.port,
            200,
            port2=b.port,
            conns=s.big,
            count=s.broadcasts,
            time_limit=180,
        )
        cpu = cpuSeconds(a.pid) + cpuSeconds(b.pid) - cpu0
    delivered = len(result["times"]) * s.big
    out = measured(result, a, cpu, sum(result["times"]) or 1.0, delivered)
    out["errors"] += b.problems
    if b.firstProblem and "server_log" not in out:
        out["server_log"] = b.firstProblem
    # Both nodes' CPU, over opening and warming up too: not per message.
    out["cpu_us_per_msg"] = None
    del out["server_cpu"]
    out["unanswered"] = s.broadcasts - len(result["times"])
    out["last_ms"] = [round(t * 1000, 2) for t in result["times"]]
    out["first_ms"] = [round(t * 1000, 3) for t in result["first"]]
    return out


RR_METRICS = [
    ("rate", "round trips/s", "/s"),
    ("p50_us", "p50 latency", "µs"),
    ("p99_us", "p99 latency", "µs"),
]


def workloads() -> list[Workload]:
    rr = [
        Workload(
            f"rr{n}",
            f"request/response, {n} conn{'s' if n > 1 else ''}",
            RR_METRICS,
            runLoad("rr", n, 32),
            throughput="rate",
        )
        for n in (1, 10, 100, 1000)
    ]
    return rr + [
        Workload(
            "flood",
            "request/response, 100 conns + 1 flooding empty lines",
            [
                ("calm_p50_us", "p50 latency, no flooder", "µs"),
                ("calm_p99_us", "p99 latency, no flooder", "µs"),
                ("p50_us", "p50 latency, one peer flooding", "µs"),
                ("p99_us", "p99 latency, one peer flooding", "µs"),
                ("rate", "round trips/s, one peer flooding", "/s"),
                ("flood_rate", "empty lines/s the server read", "/s"),
            ],
            runFlood,
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
            "{big:,} idle connections",
            [("rss_per_conn_b", "server RSS per connection", "B")],
            runIdle,
            big=True,
        ),
        Workload(
            "hello",
            "{big:,} named clients connect (hello), each with one queued message",
            [
                ("queued_s", "one message queued for each (POST ?ttl=)", "s"),
                ("hello_s", "until all are identified, got it and are answered", "s"),
                ("rss_mib", "server RSS", "MiB"),
            ],
            runHello,
            big=True,
            tcpcommOnly=True,
        ),
        Workload(
            "hold",
            "{hold:,} idle connections held",
            [
                ("accept_s", "until all are accepted and answered", "s"),
                ("accept_rate", "accepted and answered/s", "/s"),
                ("rss_mib", "server RSS", "MiB"),
                ("rss_per_conn_b", "server RSS per connection", "B"),
            ],
            runHold,
            big=True,
        ),
        Workload(
            "heartbeat",
            f"{HEARTBEAT_CONNS:,} idle connections, --heartbeat {HEARTBEAT_S}",
            [("idle_cpu_pct", "server CPU while idle, of one CPU", "%")],
            runHeartbeat,
            big=True,
        ),
        Workload(
            "accept",
            "{big:,} connections accepted and answered once",
            [
                ("rate", "connections/s", "/s"),
                ("churn_s", "all done", "s"),
            ],
            runAccept,
            big=True,
        ),
        Workload(
            "broadcast",
            "broadcast to {big:,}",
            [("last_ms", "until the last client has it", "ms")],
            runBroadcast,
            big=True,
        ),
        Workload(
            "fleetsend",
            "fleet: sends through node a's admin API, {fleetSends:,} to a's client, then to b's",
            [
                ("same_p50_us", "p50, client on a (same node)", "µs"),
                ("same_p99_us", "p99, client on a (same node)", "µs"),
                ("cross_p50_us", "p50, client on b (through Redis)", "µs"),
                ("cross_p99_us", "p99, client on b (through Redis)", "µs"),
            ],
            runFleetSend,
            tcpcommOnly=True,
            profilable=False,
        ),
        Workload(
            "fleetcast",
            "fleet: broadcast to {big:,} over 2 nodes",
            [("last_ms", "until the last client has it", "ms")],
            runFleetBroadcast,
            big=True,
            tcpcommOnly=True,
            profilable=False,
        ),
        Workload(
            "storm",
            "reconnect storm, {big:,} clients",
            [
                ("all_back_s", "all back, after listening", "s"),
                ("from_kill_s", "all back, after the kill", "s"),
                ("peak_accept_rate", "peak reconnections/s", "/s"),
            ],
            runStorm,
            big=True,
            profilable=False,
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


REFERENCE = "twisted"
BASELINES = ("twisted", "asyncio")


def summarize(entry: dict[str, Any]) -> None:
    """
    Each server's median, minimum and maximum of every metric over its
    runs, and each median's ratio to bare Twisted's.
    """
    for data in entry["servers"].values():
        summary = {}
        for key, _, _ in entry["metrics"]:
            cell = Cell()
            for r in data["runs"]:
                value = r.get(key)
                if isinstance(value, list):
                    cell.values.extend(value)
                elif value is not None:
                    cell.values.append(float(value))
            summary[key] = cell.summary()
        data["summary"] = summary
    reference = entry["servers"].get(REFERENCE, {}).get("summary", {})
    for data in entry["servers"].values():
        ratios = {}
        for key, _, _ in entry["metrics"]:
            mine, base = data["summary"].get(key), reference.get(key)
            if mine and base and base["median"]:
                ratios[key] = round(mine["median"] / base["median"], 3)
        data["ratio_to_twisted"] = ratios


def fmt(value: float, unit: str) -> str:
    if unit == "B" or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if unit != "/s" else f"{value:.0f}"


def ratioText(ratio: float) -> str:
    return f"{ratio:.2f}×" if ratio < 10 else f"{ratio:,.0f}×"


def table(report: dict[str, Any], names: list[str]) -> str:
    """
    One row per workload and metric (the server's CPU per message last):
    each server's median, and its ratio to bare Twisted's.
    """
    header = ["workload", "measure", *names, "loadgen CPU max", "errors"]
    rows = [header, ["---"] * len(header)]
    for w in report["workloads"]:
        runs = [r for n in names for r in w["servers"].get(n, {}).get("runs", [])]
        cpus = [r["loadgen_cpu"] for r in runs]
        errors = sum(r["errors"] + r["unanswered"] for r in runs)
        for key, label, unit in w["metrics"]:
            row = [w["title"], f"{label} ({unit})"]
            for n in names:
                data = w["servers"].get(n, {})
                summary = data.get("summary", {}).get(key)
                ratio = data.get("ratio_to_twisted", {}).get(key)
                if summary is None:
                    row.append("n/a")
                elif n == REFERENCE or ratio is None:
                    row.append(fmt(summary["median"], unit))
                else:
                    row.append(f"{fmt(summary['median'], unit)} ({ratioText(ratio)})")
            row.append(f"{max(cpus):.0%}" if cpus else "")
            row.append(str(errors))
            rows.append(row)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def targets(report: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    """
    The issues' targets, for each tcpcomm server measured: each met or
    missed, and by how much.
    """
    out: list[dict[str, Any]] = []
    for name in names:
        if name in BASELINES:
            continue
        out += _targetsOf(report, name)
    return out


def _median(report: dict[str, Any], workload: str, name: str, key: str) -> float | None:
    for w in report["workloads"]:
        if w["key"] == workload:
            summary = w["servers"].get(name, {}).get("summary", {}).get(key)
            return float(summary["median"]) if summary else None
    return None


#: The fast-path issue's targets, as (server, workload, least ratio of its
#: "rate" to bare Twisted's): tcpcomm with its defaults (each message
#: logged), and with --no-message-log.
RATIO_TARGETS = [
    ("tcpcomm", "rr100", 1.4),
    ("tcpcomm", "rr1000", 1.4),
    ("tcpcomm", "pipe32", 1.0),
    ("tcpcomm", "pipe1k", 1.0),
    ("tcpcomm", "accept", 0.6),
    ("tcpcomm-nolog", "pipe32", 1.5),
    ("tcpcomm-nolog", "pipe1k", 1.4),
]

#: At most this much server RSS per idle connection, and this long for a
#: broadcast to reach the last of its clients.
RSS_TARGET = 1536
BROADCAST_TARGET_MS = 100.0


def _targetsOf(report: dict[str, Any], name: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    titles = {w["key"]: w["title"] for w in report["workloads"]}
    for server, workload, least in RATIO_TARGETS:
        mine = _median(report, workload, name, "rate") if server == name else None
        base = _median(report, workload, REFERENCE, "rate")
        if not mine or not base:
            continue
        ratio = mine / base
        out.append(
            {
                "server": name,
                "target": f"{titles[workload]}: at least {least:g}x bare Twisted",
                "value": f"{ratio:.2f}x ({mine:,.0f} vs {base:,.0f} /s)",
                "met": ratio >= least,
                "by": f"{ratio - least:+.2f}x",
            }
        )
    last = _median(report, "broadcast", name, "last_ms")
    if last is not None:
        out.append(
            {
                "server": name,
                "target": f"{titles['broadcast']}: the last has it within {BROADCAST_TARGET_MS:g} ms",
                "value": f"{last:,.1f} ms",
                "met": last < BROADCAST_TARGET_MS,
                "by": f"{last - BROADCAST_TARGET_MS:+,.1f} ms",
            }
        )
    flooded = _median(report, "flood", name, "p50_us")
    if flooded is not None:
        out.append(
            {
                "server": name,
                "target": "with one peer flooding empty lines, the others' p50 under 10 ms",
                "value": f"{flooded / 1000:,.2f} ms (without the flooder "
                f"{(_median(report, 'flood', name, 'calm_p50_us') or 0) / 1000:,.2f} ms)",
                "met": flooded < 10000,
                "by": f"{(flooded - 10000) / 1000:+,.2f} ms",
            }
        )
    idleCpu = _median(report, "heartbeat", name, "idle_cpu_pct")
    if idleCpu is not None:
        out.append(
            {
                "server": name,
                "target": f"{titles['heartbeat']}: under {HEARTBEAT_TARGET_PCT:g}% of one CPU",
                "value": f"{idleCpu:.2f}%",
                "met": idleCpu < HEARTBEAT_TARGET_PCT,
                "by": f"{idleCpu - HEARTBEAT_TARGET_PCT:+.2f}%",
            }
        )
    rss = _median(report, "idle", name, "rss_per_conn_b")
    if rss is not None:
        out.append(
            {
                "server": name,
                "target": f"at most {RSS_TARGET / 1024:g} KiB server RSS per idle connection",
                "value": f"{rss:,.0f} B",
                "met": rss <= RSS_TARGET,
                "by": f"{rss - RSS_TARGET:+,.0f} B",
            }
        )
    hold = report["settings"].get("hold")
    held = [
        r
        for w in report["workloads"]
        if w["key"] == "hold"
        for r in w["servers"].get(name, {}).get("runs", [])
    ]
    if hold and held:
        ok = [r for r in held if "failed" not in r and r["unanswered"] == 0 and not r["errors"]]
        count = min(int(r.get("connections", 0)) for r in ok) if ok else 0
        out.append(
            {
                "server": name,
                "target": f"hold {hold['requested']:,} idle connections",
                "value": f"{count:,} held"
                + (
                    f" (the most that fits: {', '.join(hold['limits'])})"
                    if hold.get("limits")
                    else ""
                ),
                "met": count >= hold["requested"],
                "by": f"{count - hold['requested']:+,}",
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


# The plot: round trips/s against connections, drawn as SVG by hand (no
# plotting library to install).

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
PLOTTED = (("rr1", 1), ("rr10", 10), ("rr100", 100), ("rr1000", 1000))


def _niceStep(span: float) -> float:
    raw = span / 5 or 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def plotSVG(report: dict[str, Any], names: list[str]) -> str | None:
    """
    Median round trips/s of request/response over 1, 10, 100 and 1000
    connections, one line per server; None without two of those workloads.
    """
    byKey = {w["key"]: w for w in report["workloads"]}
    xs = [n for key, n in PLOTTED if key in byKey]
    if len(xs) < 2:
        return None
    series = []
    for name in names:
        points = []
        for key, n in PLOTTED:
            summary = byKey.get(key, {}).get("servers", {}).get(name, {}).get("summary", {})
            if summary.get("rate"):
                points.append((n, float(summary["rate"]["median"])))
        if points:
            series.append((name, points))
    if not series:
        return None
    width, height = 720, 440
    left, right, top, bottom = 80, 170, 50, 60
    top_ = max(y for _, points in series for _, y in points)
    step = _niceStep(top_)
    ymax = step * math.ceil(top_ * 1.05 / step)
    lo, hi = math.log10(min(xs)), math.log10(max(xs))

    def px(x: float) -> float:
        return left + (math.log10(x) - lo) / (hi - lo) * (width - left - right)

    def py(y: float) -> float:
        return height - bottom - y / ymax * (height - top - bottom)

    m = report.get("machine", {})
    subtitle = (
        f"{report.get('date', '')[:10]}, {m.get('cpu', '?')} ({m.get('cpus', '?')} CPUs), "
        f"tcpcomm {m.get('tcpcomm', '?')} at {m.get('commit', '?')}"
        + (", quick run" if report.get("settings", {}).get("quick") else "")
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="15">Request/response, 32 B: round trips/s '
        "against connections</text>",
        f'<text x="{left}" y="40" fill="#555">{html.escape(subtitle)}</text>',
    ]
    y = 0.0
    while y <= ymax + step / 2:
        out.append(
            f'<line x1="{left}" y1="{py(y):.1f}" x2="{width - right}" y2="{py(y):.1f}" '
            'stroke="#ddd"/>'
        )
        out.append(f'<text x="{left - 8}" y="{py(y) + 4:.1f}" text-anchor="end">{y:,.0f}</text>')
        y += step
    for x in xs:
        out.append(
            f'<line x1="{px(x):.1f}" y1="{top}" x2="{px(x):.1f}" y2="{height - bottom}" '
            'stroke="#eee"/>'
        )
        out.append(
            f'<text x="{px(x):.1f}" y="{height - bottom + 18}" text-anchor="middle">{x:,}</text>'
        )
    out.append(
        f'<text x="{(left + width - right) / 2:.0f}" y="{height - 18}" text-anchor="middle">'
        "connections (log scale)</text>"
    )
    out.append(
        f'<text x="18" y="{(top + height - bottom) / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 18 {(top + height - bottom) / 2:.0f})">round trips/s '
        "(median)</text>"
    )
    for i, (name, points) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in points:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{colour}"/>')
        ly = top + 10 + i * 20
        out.append(
            f'<line x1="{width - right + 15}" y1="{ly}" x2="{width - right + 40}" y2="{ly}" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
        out.append(f'<text x="{width - right + 46}" y="{ly + 4}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


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


def printReport(report: dict[str, Any], names: list[str], output: str) -> None:
    """
    The table, the targets, the profiles' top entries, and the plot
    written beside the JSON file.
    """
    m = report["machine"]
    st = report["settings"]
    print(
        f"\ntcpcomm {m['tcpcomm']}, Twisted {m['twisted']}, Python {m['python']}, "
        f"{m['cpu']} ({m['cpus']} CPUs), {m['os']}; servers on CPU {SERVER_CPU}, "
        f"load generator on CPU {LOAD_CPU}; median of {st['reps']} runs "
        f"({st['reps_10k']} for the many-connection rows), (its ratio to bare Twisted's)"
        + ("; PROFILED: the profiler disturbs these figures" if st.get("profiler") else "")
        + "\n"
    )
    print(table(report, names))
    print()
    for t in report["targets"]:
        print(
            f"- {'MET   ' if t['met'] else 'MISSED'} {t['server']}: {t['target']}: "
            f"{t['value']} {t['by']}".rstrip()
        )
    for profile in report.get("profiles", []):
        print()
        print(profileText(profile))
    svg = plotSVG(report, names)
    plotted = ""
    if svg is not None:
        plotted = os.path.splitext(output)[0] + ".svg"
        with open(plotted, "w") as f:
            f.write(svg)
    if "load_before" in report:
        print(
            f"\nload average before {report['load_before']}, after {report['load_after']}; "
            f"CPU used by other processes (and kernel work not charged to ours): "
            f"{report['other_cpu']:.0%} of one CPU; {report['seconds']:.0f} s"
        )
    print(f"results: {output}" + (f", plot: {plotted}" if plotted else ""))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run (about 3 minutes)")
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
        metavar="NAME[,NAME]",
        help="comma-separated workloads: " + ", ".join(w.key for w in workloads()),
    )
    parser.add_argument("--reps", type=int, help="repetitions of the throughput workloads")
    parser.add_argument("--duration", type=float, help="seconds measured per throughput run")
    parser.add_argument(
        "--connections", type=int, help="connections of the 10,000-connection workloads"
    )
    parser.add_argument(
        "--hold",
        type=int,
        default=100000,
        metavar="N",
        help="idle connections the hold row asks for (default 100,000; it runs at the largest "
        "count this machine allows, and says why when that is fewer)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile each server instead, once per workload (default rr100,pipe32): print "
        "and save where a message's time goes",
    )
    parser.add_argument(
        "--profiler",
        choices=("py-spy", "cprofile"),
        help="py-spy (default when installed: pip install py-spy) or cProfile inside the "
        "server process",
    )
    parser.add_argument(
        "--report",
        metavar="JSON",
        help="print the table and draw the plot of a saved run again, without running",
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

    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        saved["targets"] = targets(saved, saved["names"])  # judged by today's targets
        printReport(saved, saved["names"], args.report)
        return 0

    settings = (
        Settings(
            reps=2, bigReps=1, duration=1.0, warmup=0.3, big=2000, broadcasts=3, fleetSends=500
        )
        if args.quick
        else Settings(reps=5, bigReps=3, duration=3.0, warmup=0.5, big=10000, broadcasts=5)
    )
    if args.profile:
        settings.reps = settings.bigReps = 1
    if args.reps:
        settings.reps = args.reps
        settings.bigReps = min(settings.bigReps, args.reps)
    if args.duration:
        settings.duration = args.duration
    if args.connections:
        settings.big = args.connections
    if args.hold < 1:
        parser.error(f"--hold must be at least 1, not {args.hold}")

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
    if args.profile and not only:
        only = ["rr100", "pipe32"]
    selected = [w for w in workloads() if not only or w.key in only]
    profiler = None
    if args.profile:
        selected = [w for w in selected if w.profilable]
        profiler = args.profiler or ("py-spy" if pySpy() else "cprofile")
        if profiler == "py-spy" and not pySpy():
            parser.error("py-spy is not installed: pip install py-spy, or --profiler cprofile")
    if not os.path.exists(TWISTD):
        parser.error(f"no twistd beside {sys.executable}: run this with tcpcomm's Python")
    for tool in ("taskset", "gcc"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is needed")
    if (os.cpu_count() or 1) < 2:
        parser.error("two CPUs are needed: one for the server, one for the load generator")

    holding = any(w.key == "hold" for w in selected)
    needed = max(settings.big + 200, args.hold + HOLD_RESERVE if holding else 0)
    if any(w.key == "heartbeat" for w in selected):
        needed = max(needed, HEARTBEAT_CONNS + 200)
    limit, why = raiseFileLimit(needed)
    if limit < settings.big + 100:
        settings.big = limit - 100
        print(f"open-files limit {limit}: using {settings.big} connections", file=sys.stderr)
    if ephemeralPorts() < settings.big + 1000:
        print(f"only {ephemeralPorts()} ephemeral ports", file=sys.stderr)
    if holding:
        settings.hold = planHold(args.hold, limit, why)
        print(settings.hold.text(), file=sys.stderr)

    # This script shares the load generator's CPU, never the server's.
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    os.makedirs(args.build_dir, exist_ok=True)
    ctx = Context(
        buildLoadgen(args.build_dir),
        tempfile.mkdtemp(prefix="servers-", dir=args.build_dir),
        settings,
        profiler,
    )

    if args.wait_idle > 0:
        deadline = time.monotonic() + args.wait_idle
        while loadAverage()[0] >= 0.3 and time.monotonic() < deadline:
            time.sleep(5)

    output = args.output or os.path.join(
        HERE,
        "results",
        f"{datetime.date.today().isoformat()}-{platform.node()}"
        f"{'-quick' if args.quick else ''}{'-profile' if profiler else ''}.json",
    )
    plan = settings.hold
    report: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "names": names,
        "settings": {
            "quick": args.quick,
            "reps": settings.reps,
            "reps_10k": settings.bigReps,
            "duration_s": settings.duration,
            "warmup_s": settings.warmup,
            "connections_10k": settings.big,
            "pipeline": f"{settings.pipelineConns} connections, bursts of {settings.burst}",
            "flood": f"{settings.floodConns} request/response connections and 1 flooder",
            "backlog": BACKLOG,
            "max_connections": f"the workload's connections + {CONNECTION_MARGIN}",
            "retry": f"{settings.retryInitial}-{settings.retryMax} s, doubling, jitter",
            "open_files": limit,
            "hold": None
            if plan is None
            else {
                "requested": plan.requested,
                "connections": plan.count,
                "loadgens": plan.processes,
                "sources": plan.sources,
                "limited_by": plan.limitedBy,
                "limits": plan.limits,
            },
            "profiler": profiler,
        },
        "load_before": loadAverage(),
        "workloads": [],
        "profiles": [],
    }
    started = time.monotonic()
    busy0, ours0 = busySeconds(), ourCpuSeconds()
    try:
        for w in selected:
            metrics = [*w.metrics, CPU_METRIC]
            entry: dict[str, Any] = {
                "key": w.key,
                "title": w.title.format(
                    big=settings.big, hold=plan.count if plan else 0, fleetSends=settings.fleetSends
                ),
                "metrics": metrics,
                "throughput": w.throughput,
                "servers": {},
            }
            report["workloads"].append(entry)
            reps = settings.bigReps if w.big else settings.reps
            if w.key in ("broadcast", "fleetcast"):
                reps = 1  # one connection set; the repetitions are its broadcasts
            for rep in range(reps):
                # Rotate the order, so that no server always goes first.
                order = names[rep % len(names) :] + names[: rep % len(names)]
                for name in order:
                    if w.tcpcommOnly and not name.startswith("tcpcomm"):
                        continue
                    label = f"{w.key} {name} {rep + 1}/{reps}"
                    print(f"  {label} ...", end="", flush=True, file=sys.stderr)
                    try:
                        result = w.run(kinds[name], ctx)
                    except Exception as e:  # recorded, and the run goes on
                        result = {
                            "errors": 1,
                            "unanswered": 0,
                            "loadgen_cpu": 0.0,
                            "failed": str(e),
                        }
                    profile = result.pop("profile", None)
                    if profile is not None:
                        report["profiles"].append(
                            saveProfile(profile, w.key, name, os.path.splitext(output)[0])
                        )
                    print(f" {_brief(result, metrics)}", file=sys.stderr)
                    entry["servers"].setdefault(name, {"runs": []})["runs"].append(result)
            summarize(entry)
    finally:
        stopAll()
        shutil.rmtree(ctx.scratch, ignore_errors=True)
    wall = time.monotonic() - started
    other = (busySeconds() - busy0) - (ourCpuSeconds() - ours0)
    report["load_after"] = loadAverage()
    report["seconds"] = round(wall, 1)
    report["other_cpu"] = round(max(0.0, other) / wall, 3)
    report["targets"] = targets(report, names)

    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    with open(output, "w") as f:
        f.write(compactJSON(report) + "\n")
    printReport(report, names, output)
    return 0


def saveProfile(profile: dict[str, Any], workload: str, server: str, stem: str) -> dict[str, Any]:
    """
    Keep a profile's top entries (text) and its raw data in C{stem}/.
    """
    os.makedirs(stem, exist_ok=True)
    profile = dict(profile, workload=workload, server=server)
    raw = profile.pop("raw")
    kept = os.path.join(stem, f"{workload}-{server}{os.path.splitext(raw)[1]}")
    shutil.copyfile(raw, kept)
    profile["raw"] = os.path.relpath(kept, ROOT)
    text = os.path.join(stem, f"{workload}-{server}.txt")
    with open(text, "w") as f:
        f.write(profileText(profile) + "\n")
    profile["top"] = os.path.relpath(text, ROOT)
    return profile


def _brief(result: dict[str, Any], metrics: list[tuple[str, str, str]]) -> str:
    if "failed" in result:
        return f"FAILED: {result['failed']}"
    parts = []
    for key, _, unit in metrics:
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
