"""
Reloading settings on SIGHUP: parse the command line again (which re-reads
C{--config}, the TLS files and the admin token), put in place what a running
process can change, and log what needs a restart. Reloaded values apply to
new connections, messages and timers; nobody is disconnected but the
clients whose C{--client-tokens} token went. A reload that fails keeps every
old setting.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType
from typing import Any

from OpenSSL.SSL import Connection, Context
from twisted.application.service import Service
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python import usage
from zope.interface import implementer

from tcpcomm.options import ClientOptions, ServerOptions

log = Logger()

SideOptions = ServerOptions | ClientOptions


class ReloadStatus:
    """
    When the settings were last loaded and whether that worked, for
    C{/healthz} and the metrics. The start counts as the first load.
    """

    def __init__(self, when: float) -> None:
        self.time = when
        self.ok = True
        self.error: str | None = None


@dataclass
class Live:
    """
    One part of a running process that a reload can change.

    @ivar name: what the log calls it when a file it comes from changed.
    @ivar build: makes the part's value from options, as the start did; the
        options it reads are what the part applies.
    @ivar apply: puts a new value in place; returns why it cannot instead
        (the change waits for a restart), or L{None}.
    @ivar sources: options the value depends on through what the options
        built from them when parsed (files read into C{tls}, C{admin-token}).
    @ivar always: apply on every reload, however the value compares: it
        comes from files read again, such as TLS certificates.
    @ivar describe: what to log of a new value, for parts that come from
        files (L{None}: say nothing unless it changed).
    @ivar keeps: options that must still be as at the start for a new value
        to make sense (a client's TLS settings check the C{--host} it
        connects to): while one differs, the part waits for the restart.
    @ivar current: the value in force.
    @ivar reads: the options C{build} was seen to read.
    """

    name: str
    build: Callable[[Mapping[str, Any]], Any]
    apply: Callable[[Any], str | None]
    sources: Callable[[str], bool] = lambda name: False
    always: bool = False
    describe: Callable[[Any], str] | None = None
    keeps: tuple[str, ...] = ()
    current: Any = None
    reads: set[str] = field(default_factory=set)

    def feeds(self, name: str) -> bool:
        """
        Whether option C{name} goes into this part.
        """
        return name in self.reads or self.sources(name)


class _Reading(Mapping[str, Any]):
    """
    Options that note which of them are read.
    """

    def __init__(self, options: Mapping[str, Any], read: set[str]) -> None:
        self._options = options
        self._read = read

    def __getitem__(self, key: str) -> Any:
        self._read.add(key)
        return self._options[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)


def declared(options: usage.Options) -> list[str]:
    """
    The names of the options a user can give (not what they are parsed into).
    """
    names = [name.rstrip("=") for name in options.longOpt]
    return [name for name in names if name not in ("help", "version")]


def _same(old: Any, new: Any) -> bool:
    try:
        return bool(old == new)
    except Exception:
        return False


class Reloader:
    """
    The settings in force, and how to change them: each L{Live} part is
    built again from the options parsed anew and put in place when it
    differs. An option that changed and that no part reads needs a restart.

    @ivar started: the options the process started with.
    @ivar options: the options in force since the last successful reload.
    @ivar notes: what every reload reminds of (such as C{ssl:} listeners,
        which read their certificate at start only).
    """

    def __init__(self, options: SideOptions, clock: IReactorTime) -> None:
        self.started = self.options = options
        self._clock = clock
        self.status = ReloadStatus(clock.seconds())
        self.parts: list[Live] = []
        self.notes: list[str] = []

    def add(self, part: Live) -> None:
        """
        Reload C{part} from now on; its value now is built from the options
        in force.
        """
        part.current = part.build(_Reading(self.options, part.reads))
        self.parts.append(part)

    def reload(self) -> None:
        """
        Parse the options again and apply them, or log why they cannot be
        and keep the old ones.
        """
        now = self._clock.seconds()
        try:
            new = self.options.reparsed()
            built = [(part, part.build(_Reading(new, part.reads))) for part in self.parts]
        except usage.UsageError as e:
            self._failed(now, str(e))
            return
        except Exception as e:
            log.failure("reload failed", event="reload-error")
            self._failed(now, f"{type(e).__name__}: {e}")
            return
        names = declared(new)
        changed = [n for n in names if not _same(self.options.get(n), new.get(n))]
        applied: list[str] = []
        refused: list[str] = []
        waiting: list[Live] = []
        for part, value in built:
            if not part.always and _same(part.current, value):
                continue
            moved = [n for n in part.keeps if not _same(self.started.get(n), new.get(n))]
            why = f"{part.name} (it follows --{moved[0]})" if moved else part.apply(value)
            if why is not None:
                refused.append(why)
                waiting.append(part)
                continue
            part.current = value
            if part.describe is not None:
                applied.append(part.describe(value))
            elif not any(part.feeds(n) for n in changed):
                applied.append(part.name)  # a file it comes from changed

        def live(name: str) -> bool:
            return any(p.feeds(name) for p in self.parts) and not any(
                p.feeds(name) for p in waiting
            )

        applied = [f"--{n}" for n in changed if live(n)] + applied
        restart = [n for n in names if not live(n) and not _same(self.started.get(n), new.get(n))]
        self.options = new
        self.status.time, self.status.ok, self.status.error = now, True, None
        log.info(
            "reloaded settings: {applied}",
            event="reloaded",
            applied=", ".join(applied) or "nothing changed",
            config=new["config"],
        )
        reasons = [f"--{n} changed" for n in restart] + refused + self.notes
        if reasons:
            log.warn(
                "reload: these take effect only after a restart: {reasons}",
                event="reload-needs-restart",
                reasons="; ".join(reasons),
                options=restart,
            )

    def _failed(self, now: float, reason: str) -> None:
        self.status.time, self.status.ok, self.status.error = now, False, reason
        log.error(
            "reload failed, keeping the settings in force: {reason}",
            event="reload-failed",
            reason=reason,
        )


class ReloadService(Service):
    """
    Reloads on SIGHUP while running. The handler is installed when the
    service starts, since twistd forks after building it, and only hands the
    reload to the reactor (C{callFromThread}, which is safe in a signal
    handler): the reload itself runs in the reactor.

    @ivar reloader: what a reload does.
    """

    def __init__(
        self,
        reloader: Reloader,
        callFromThread: Callable[..., Any] | None,
        installSignal: Callable[[int, Any], Any] = signal.signal,
    ) -> None:
        self.reloader = reloader
        self._callFromThread = callFromThread
        self._install = installSignal
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        if self._callFromThread is not None:  # else a reactor without threads: no signals
            self._previous = self._install(signal.SIGHUP, self._received)

    def stopService(self) -> None:
        super().stopService()
        if self._callFromThread is not None:
            self._install(signal.SIGHUP, self._previous or signal.SIG_DFL)

    def _received(self, number: int, frame: FrameType | None) -> None:
        assert self._callFromThread is not None
        self._callFromThread(self._reloading)

    def _reloading(self) -> None:
        log.info("SIGHUP: reloading settings", event="reloading")
        self.reloader.reload()


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ReloadableServerTLS:
    """
    The server's TLS settings (a L{CertificateOptions}), replaceable by a
    reload: each new connection's handshake uses the current ones, and
    connections already made keep theirs.
    """

    def __init__(self, current: Any) -> None:
        self.current = current

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Connection:
        return self.current.serverConnectionForTLS(tlsProtocol)

    def getContext(self) -> Context:
        return self.current.getContext()


@implementer(IOpenSSLClientConnectionCreator)
class ReloadableClientTLS:
    """
    The client's TLS connection creator, replaceable by a reload: the next
    connection uses the current one.
    """

    def __init__(self, current: Any) -> None:
        self.current = current

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Connection:
        return self.current.clientConnectionForTLS(tlsProtocol)


def describeCertificate(options: Any) -> str:
    """
    The certificate of server TLS settings, as the log names it.
    """
    certificate = getattr(options, "certificate", None)
    if certificate is None:
        return "TLS certificate"
    subject = certificate.get_subject().commonName
    notAfter = (certificate.get_notAfter() or b"").decode("ascii", "replace")
    try:
        until = datetime.strptime(notAfter, "%Y%m%d%H%M%SZ").strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        until = notAfter or "?"
    return f"TLS certificate {subject} (valid until {until})"
