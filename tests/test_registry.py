"""Tests for L{tcpcomm.hub.registry} and how the hub keeps it."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from .support import connect, hubOf, makeHub


class RegistryTests(SynchronousTestCase):
    """
    The hub's registry holds exactly the connected peers.
    """

    def test_addAndRemove(self) -> None:
        """A peer is registered on connect, logged, and forgotten and logged on disconnect."""
        hub = makeHub(Clock())
        registry = hub.registry
        with capturedLogs() as events:
            one, _, _, factory = connect(port=1, hub=hub)
            two, _, _, _ = connect(port=2, hub=hub)
        self.assertIs(hubOf(factory), hub)
        self.assertEqual(len(registry), 2)
        self.assertIn("127.0.0.1:1", registry)
        session = registry.get("127.0.0.1:2")
        assert session is not None
        self.assertIs(session.peer, two)
        self.assertEqual([e["log_format"] for e in events], ["connected {peer}"] * 2)
        with capturedLogs() as events:
            one.connectionLost(Failure(ConnectionDone("bye")))
        self.assertNotIn("127.0.0.1:1", registry)
        self.assertEqual(len(registry), 1)
        self.assertEqual(events[0]["peer"], "127.0.0.1:1")
        self.assertIn("bye", events[0]["reason"])

    def test_registryPerHub(self) -> None:
        """Two hubs do not share peers (no class-level state)."""
        one, _, _, factoryOne = connect(port=1)
        two, _, _, factoryTwo = connect(port=2)
        self.assertEqual([s.peer for s in hubOf(factoryOne).registry], [one])
        self.assertEqual([s.peer for s in hubOf(factoryTwo).registry], [two])

    def test_whenEmpty(self) -> None:
        """whenEmpty fires once the last peer is gone, and at once when none is there."""
        hub = makeHub(Clock())
        registry = hub.registry
        self.successResultOf(registry.whenEmpty())
        peer, _, _, _ = connect(hub=hub)
        waiting = registry.whenEmpty()
        self.assertNoResult(waiting)
        peer.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(waiting)
