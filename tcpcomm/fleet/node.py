"""
One server as a node of the fleet: it records its sessions through the
backplane, and does what other nodes ask of the clients it holds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcpcomm.fleet.backplane import Backplane
from tcpcomm.fleet.settings import BackplaneUnavailable
from tcpcomm.interfaces import IFleet, IHub, ISession

log = Logger()


@implementer(IFleet)
class FleetNode:
    """
    The hub's L{IFleet}: each session identified is recorded in Redis, and
    forgotten when it goes; the hub's broadcasts are relayed to the other
    nodes; the C{deliver}, C{disconnect}, C{replaced} and C{broadcast}
    messages of other nodes act on the sessions of this one.
    """

    def __init__(
        self,
        hub: IHub,
        backplane: Backplane,
        replace: Callable[[ISession, str], None],
    ) -> None:
        self.hub = hub
        self.backplane = backplane
        self._replace = replace
        self._uids: dict[ISession, str] = {}
        backplane.handle("deliver", self.deliver)
        backplane.handle("disconnect", self.disconnect)
        backplane.handle("replaced", self.replaced)
        backplane.handle("broadcast", self.broadcastHere)

    def joined(self, session: ISession) -> None:
        self._uids[session] = self.backplane.record(
            session.id, session.address, session.tlsSubject, session.since
        )

    def left(self, session: ISession) -> None:
        uid = self._uids.pop(session, None)
        if uid is not None:
            self.backplane.forget(session.id, uid)

    def broadcast(self, message: bytes) -> None:
        """
        A handler's broadcast, sent here already: relay it to every other
        node's clients (at most once; lost if Redis is away).
        """
        self.backplane.publishFleet("broadcast", {}, message).addErrback(self._relayFailed)

    def _relayFailed(self, failure: Failure) -> None:
        failure.trap(BackplaneUnavailable)
        if self.backplane.up:  # else trouble() said it already, once
            log.info(
                "backplane: could not relay a broadcast: {reason}",
                event="backplane-relay-error",
                reason=failure.getErrorMessage(),
            )

    def broadcastHere(self, header: dict[str, Any], body: bytes) -> dict[str, Any] | None:
        """
        Another node's broadcast (a handler's, or the admin API's): to every
        client of this one; how many got it, if that node asked. A node's
        own, which it sent its clients itself, is ignored.
        """
        if header.get("from") == self.backplane.node:
            return None
        return {"received": self.hub.broadcastHere(body)}

    def deliver(self, header: dict[str, Any], body: bytes) -> dict[str, Any]:
        """
        Another node's send to a client of this one: written, or not here.
        """
        session = self.hub.get(str(header.get("id")))
        if session is None:
            return {"sent": 0}
        session.sendBytes(body)
        log.info(
            "backplane: sent a message to {peer} for node {sender}",
            event="backplane-send",
            peer=session.id,
            sender=header.get("from"),
        )
        return {"sent": 1}

    def disconnect(self, header: dict[str, Any], body: bytes) -> dict[str, Any]:
        """
        Another node's disconnect of a client of this one.
        """
        session = self.hub.get(str(header.get("id")))
        if session is None:
            return {"disconnected": False}
        session.close()
        log.info(
            "backplane: disconnecting {peer} for node {sender}",
            event="backplane-disconnect",
            peer=session.id,
            sender=header.get("from"),
        )
        return {"disconnected": True}

    def replaced(self, header: dict[str, Any], body: bytes) -> None:
        """
        A connection with the name of a client of this node registered on
        another node: newest wins, so this one closes.
        """
        try:
            old = json.loads(body)
        except ValueError:
            return
        session = self.hub.get(str(header.get("id")))
        if session is None or self._uids.get(session) != old.get("uid"):
            return  # gone already, or a newer connection of this node
        by = header.get("by") or {}
        self._replace(session, f"replaced by {by.get('peer')} on node {by.get('node')}")
