"""
File descriptors: every connection holds one, and a process may hold no
more than its soft C{RLIMIT_NOFILE}. When the server starts it raises that
to the hard limit (as magic-wormhole's transit relay does); when
C{--max-connections}, the admin API's connections and L{HEADROOM} still do
not fit, it accepts fewer clients, refusing the others as it does over
C{--max-connections}, rather than letting C{accept()} fail with C{EMFILE}
(whereupon Twisted accepts the connections waiting and closes them without
a word).
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.logger import Logger

from tcpcomm.wire.protocol import MessageFactory

try:
    import resource
except ImportError:  # not POSIX: no limit to raise or to respect
    resource = None  # type: ignore[assignment]

log = Logger()

_INFINITY = getattr(resource, "RLIM_INFINITY", -1)

#: Descriptors kept for all but clients and admin connections: standard
#: input, output and error (3), the log file and the next one while it
#: rotates (2), epoll (1), the reactor's waker (2), Twisted's reserved EMFILE
#: descriptor (1), the listening sockets (2 or more) and, later, a database
#: with its journal (3): about 15, doubled for what nobody thought of.
HEADROOM = 32


class FileLimit:
    """
    This process's C{RLIMIT_NOFILE}; tests stand in for it.
    """

    def get(self) -> tuple[int, int] | None:
        """
        The soft and hard limits, or L{None} where there are none.
        """
        if resource is None:
            return None
        return resource.getrlimit(resource.RLIMIT_NOFILE)

    def set(self, soft: int, hard: int) -> None:
        """
        Set the limits; raises L{ValueError} or L{OSError} if refused.
        """
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def raiseSoftLimit(limit: FileLimit, needed: int) -> int | None:
    """
    Raise the soft limit to the hard one; where the system refuses that (as
    macOS does when the hard limit is unlimited), to C{needed}. Return the
    soft limit now in force, or L{None} if there is none.
    """
    limits = limit.get()
    if limits is None or limits[0] == _INFINITY:
        return None
    soft, hard = limits
    wanted = [hard]
    if hard == _INFINITY or soft < needed < hard:
        wanted.append(needed)
    for new in wanted:
        if new != _INFINITY and new <= soft:
            continue
        try:
            limit.set(new, hard)
        except (ValueError, OSError):
            continue
        log.info(
            "raised the open-file limit (RLIMIT_NOFILE) from {before} to {after}",
            event="file-limit-raised",
            before=soft,
            after="unlimited" if new == _INFINITY else new,
        )
        return None if new == _INFINITY else new
    return soft


def clientsAllowed(soft: int, adminConnections: int) -> int:
    """
    How many clients C{soft} descriptors hold, beside C{adminConnections}
    and L{HEADROOM}; at least one.
    """
    return max(1, soft - adminConnections - HEADROOM)


class DescriptorBudget(Service):
    """
    When the server starts: raise the open-file limit, and lower the
    factory's connection limit to what the descriptors allow, saying so once.
    """

    def __init__(
        self, factory: MessageFactory, adminConnections: int, limit: FileLimit | None = None
    ) -> None:
        self._factory = factory
        self._admin = adminConnections
        self._limit = FileLimit() if limit is None else limit

    def startService(self) -> None:
        Service.startService(self)
        configured = self._factory.limits.maxConnections
        if configured is None:
            return
        needed = configured + self._admin + HEADROOM
        soft = raiseSoftLimit(self._limit, needed)
        if soft is None or soft >= needed:
            return
        allowed = clientsAllowed(soft, self._admin)
        log.warn(
            "the open-file limit (RLIMIT_NOFILE) is {soft}, but --max-connections {configured} "
            "with {admin} admin connections and {headroom} other files needs {needed}: "
            "accepting at most {allowed} clients; raise the limit to {needed} or more "
            "(LimitNOFILE= in the systemd unit, ulimit -n in the shell that starts twistd)",
            event="file-limit",
            soft=soft,
            configured=configured,
            admin=self._admin,
            headroom=HEADROOM,
            needed=needed,
            allowed=allowed,
        )
        self._factory.lowerConnectionLimit(allowed, soft)
