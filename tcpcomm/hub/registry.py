"""Who is connected right now: one registry per side, owned by its hub."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count
from typing import TYPE_CHECKING

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress

if TYPE_CHECKING:
    from tcpcomm.hub.session import Session


def addressText(address: IAddress) -> str:
    """
    An address as people write it: C{host:port}, C{[host]:port} for IPv6,
    C{unix:path} for a named UNIX socket.
    """
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, UNIXAddress):
        if not address.name:
            return "unix"  # the peer of a UNIX socket has no name of its own
        name = address.name.decode() if isinstance(address.name, bytes) else address.name
        return f"unix:{name}"
    return str(address)


class PeerRegistry:
    """
    The connected sessions by id, and a way to wait until none are left.
    """

    def __init__(self) -> None:
        self._peers: dict[str, Session] = {}
        self._serials = count(1)
        self._emptyWaiters: list[Deferred[None]] = []

    def idFor(self, address: IAddress) -> str:
        """
        A stable id for a peer at C{address}: C{host:port} for TCP
        (C{[host]:port} for IPv6), C{unix#serial} for a UNIX socket peer (which
        has no name), C{kind#serial} for anything else.
        """
        if isinstance(address, (IPv4Address, IPv6Address)):
            return addressText(address)
        kind = "unix" if isinstance(address, UNIXAddress) else type(address).__name__.lower()
        return f"{kind}#{next(self._serials)}"

    def add(self, peer: Session) -> None:
        """
        Remember C{peer} under its id.
        """
        self._peers[peer.id] = peer

    def remove(self, peer: Session) -> None:
        """
        Forget C{peer}; wake whoever waits for the registry to empty.
        """
        if self._peers.get(peer.id) is peer:
            del self._peers[peer.id]
        if not self._peers and self._emptyWaiters:
            waiters, self._emptyWaiters = self._emptyWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def get(self, peerId: str) -> Session | None:
        """
        The peer with id C{peerId}, if connected.
        """
        return self._peers.get(peerId)

    def whenEmpty(self) -> Deferred[None]:
        """
        A L{Deferred} that fires once no peer is connected.
        """
        if not self._peers:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._emptyWaiters.append(waiter)
        return waiter

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peerId: object) -> bool:
        return peerId in self._peers

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._peers.values()))
