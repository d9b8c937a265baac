"""Who is connected right now: one registry per side, owned by its hub."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed

if TYPE_CHECKING:
    from tcpcomm.hub.session import Session


class PeerRegistry:
    """
    The connected sessions by id, and a way to wait until none are left.
    """

    def __init__(self) -> None:
        self._peers: dict[str, Session] = {}
        self._emptyWaiters: list[Deferred[None]] = []

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
